"""The conda channel through the appliance's NGINX config, and a real conda client on it.

py-rattler (the library under pixi) solves and installs into a prefix from `http://127.0.0.1:PORT/conda`:
`app` needs `lib >=1,<3`, lib 1.0, 2.0 and 3.0 exist, so the newest compatible lib 2.0 must be chosen;
once from repodata.json and once from the CEP 16 shards (the access log shows which, and that the
shards of unrelated names were never fetched); after `provision remove lib 2.0` it is no longer chosen.
A full `conda` binary cannot be bootstrapped here without the internet (README).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.appliance import conda_sample as cs
from provisioner.cli import main
from provisioner.repo import channels
from provisioner.repo.conda import repodata as rdata
from provisioner.repo.engine import Repository
from tests.fixtures.nginx import LocalIndex, _start, _stop

rattler = pytest.importorskip("rattler")
pytestmark = pytest.mark.clients

FILLER = [f"unrelated{i}" for i in range(6)]


@pytest.fixture(scope="module")
def channel_index(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[LocalIndex]:
    base = tmp_path_factory.mktemp("conda-index")
    pkgs = base / "pkgs"
    files = [cs.build_package(pkgs, "lib", v) for v in ("1.0", "2.0", "3.0")]
    files.append(cs.build_package(pkgs, "app", "1.0", depends=["lib >=1,<3"], fmt=".tar.bz2"))
    files += [cs.build_package(pkgs, name, "1.0") for name in FILLER]
    files.append(cs.build_package(pkgs, "native", "1.0", subdir="linux-64"))
    channels.publish(Repository.open(str(base / "repo")), files)
    index = _start(base / "repo", base)
    yield index
    code, err = _stop(index)
    assert code == 0, err.decode(errors="replace")


async def _records(index: LocalIndex, cache: Path, specs: list[str], *, sharded: bool) -> list:
    """What rattler's gateway solves `specs` to through the served channel (its caches in `cache`)."""
    gateway = rattler.Gateway(
        cache_dir=cache, default_config=rattler.SourceConfig(sharded_enabled=sharded), show_progress=False
    )
    return await rattler.solve(
        [rattler.Channel(f"{index.root_url}/conda")],
        specs,
        gateway=gateway,
        platforms=["linux-64", "noarch"],
        virtual_packages=[],
    )


def _solve_and_install(index: LocalIndex, tmp: Path, *, sharded: bool) -> dict[str, str]:
    """name -> version installed into a fresh prefix, with fresh caches."""

    async def go() -> dict[str, str]:
        cache = tmp / "cache"
        records = await _records(index, cache, ["app"], sharded=sharded)
        prefix = tmp / "env"
        await rattler.install(records, prefix, cache_dir=cache / "pkgs", show_progress=False)
        installed = {}
        for meta in (prefix / "conda-meta").glob("*.json"):
            doc = json.loads(meta.read_text())
            installed[doc["name"]] = doc["version"]
            for path in doc["files"]:
                assert (prefix / path).is_file()
        return installed

    tmp.mkdir(parents=True)
    return asyncio.run(go())


def _paths(index: LocalIndex, mark: int) -> list[str]:
    return [path for _method, path, _status in index.requests(since=mark)]


@pytest.mark.parametrize("sharded", [False, True], ids=["repodata.json", "shards"])
def test_rattler_solves_and_installs_the_newest_compatible_version(
    channel_index: LocalIndex, tmp_path: Path, sharded: bool
) -> None:
    mark = channel_index.log_mark()
    installed = _solve_and_install(channel_index, tmp_path / "run", sharded=sharded)
    assert installed == {"app": "1.0", "lib": "2.0"}
    assert (tmp_path / "run/env/share/lib/VERSION").read_text() == "lib 2.0\n"
    paths = _paths(channel_index, mark)
    assert {"/conda/noarch/lib-2.0-0.conda", "/conda/noarch/app-1.0-0.tar.bz2"} <= set(paths)
    assert not any(
        p.endswith((".conda", ".tar.bz2")) and "lib-2.0" not in p and "app-1.0" not in p for p in paths
    )
    assert all(
        status < 400 or path.endswith(".bz2") for _m, path, status in channel_index.requests(since=mark)
    )
    if sharded:
        assert "/conda/noarch/repodata_shards.msgpack.zst" in paths
        assert not any("repodata.json" in p for p in paths)
        shards = [p for p in paths if "/shards/" in p]
        assert len(shards) == 2  # app's and lib's: never the unrelated names'
    else:
        assert "/conda/noarch/repodata.json.zst" in paths
        assert not any("shards" in p for p in paths)


def test_a_removed_package_is_no_longer_chosen(tmp_path: Path, nginx_bin: str) -> None:
    repo = tmp_path / "repo"
    pkgs = tmp_path / "pkgs"
    files = [cs.build_package(pkgs, "lib", v) for v in ("1.0", "2.0")]
    files.append(cs.build_package(pkgs, "app", "1.0", depends=["lib"]))
    channels.publish(Repository.open(str(repo)), files)
    index = _start(repo, tmp_path)
    try:
        assert _solve_and_install(index, tmp_path / "before", sharded=True)["lib"] == "2.0"
        result = CliRunner().invoke(main, ["remove", "--repo", str(repo), "--yes", "lib", "2.0"])
        assert result.exit_code == 0, result.output
        for sharded in (False, True):
            got = _solve_and_install(index, tmp_path / f"after-{sharded}", sharded=sharded)
            assert got == {"app": "1.0", "lib": "1.0"}
        assert (repo / "conda/noarch/lib-2.0-0.conda").is_file()  # lock files naming it still install
    finally:
        _stop(index)


# --- what NGINX serves under /conda/ ------------------------------------------------------------------


def test_content_types_and_caching(channel_index: LocalIndex) -> None:
    repodata = channel_index.get("/conda/noarch/repodata.json", {"Accept-Encoding": "gzip"})
    assert repodata.status == 200 and repodata.header("content-type") == "application/json"
    assert repodata.header("content-encoding") == "gzip"
    assert repodata.header("cache-control") == "max-age=0, must-revalidate" and repodata.header("etag")
    etag = repodata.header("etag")
    assert channel_index.get("/conda/noarch/repodata.json", {"If-None-Match": etag}).status == 304
    for path in ("/conda/noarch/repodata.json.zst", "/conda/noarch/repodata_shards.msgpack.zst"):
        r = channel_index.get(path, {"Accept-Encoding": "gzip"})
        assert r.status == 200 and r.header("content-type") == "application/zstd", path
        assert (
            r.header("content-encoding") is None and r.header("cache-control") == "max-age=0, must-revalidate"
        )
    for path in ("/conda/noarch/lib-1.0-0.conda", "/conda/noarch/app-1.0-0.tar.bz2"):
        r = channel_index.get(path, {"Accept-Encoding": "gzip"})
        assert r.status == 200 and r.header("content-type") == "application/octet-stream", path
        assert r.header("content-encoding") is None
        assert r.header("cache-control") == "public, max-age=31536000, immutable"
    shard = next(Path(channel_index.repo, "conda/noarch/shards").iterdir()).name
    r = channel_index.get(f"/conda/noarch/shards/{shard}")
    assert r.status == 200 and r.header("cache-control") == "public, max-age=31536000, immutable"
    channeldata = channel_index.get("/conda/channeldata.json")
    assert json.loads(channeldata.body)["subdirs"] == ["linux-64", "noarch"]


@pytest.mark.parametrize("subdir", ["osx-arm64", "win-64", "linux-aarch64", "emscripten-wasm32"])
def test_every_known_subdir_answers_a_valid_repodata(channel_index: LocalIndex, subdir: str) -> None:
    r = channel_index.get(f"/conda/{subdir}/repodata.json")
    assert r.status == 200 and r.header("content-type") == "application/json"
    assert r.body == rdata.dumps(rdata.Repodata(subdir))  # what the publisher would write, byte for byte
    assert r.header("cache-control") == "max-age=0, must-revalidate"
    # The variants it has not got answer 404, which is how clients learn to use repodata.json.
    assert channel_index.get(f"/conda/{subdir}/repodata.json.zst").status == 404
    assert channel_index.get(f"/conda/{subdir}/repodata_shards.msgpack.zst").status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/conda/",
        "/conda/noarch/",
        "/conda/noarch/shards/",
        "/conda/linux-65/repodata.json",
        "/conda/noarch/nothing-1.0-0.conda",
        "/conda/noarch/repodata.json.bz2",
        "/conda/.pypapo.lock",
        "/conda/noarch/.pypapo-tmp-x",
        "/conda/noarch/shards/notahash.msgpack.zst",
    ],
)
def test_nothing_but_the_channel_and_no_listing(channel_index: LocalIndex, path: str) -> None:
    r = channel_index.get(path)
    assert r.status in (400, 404), (path, r.status)
    assert b"Index of" not in r.body


def test_the_channel_is_503_never_empty_when_the_mount_is_gone(serve_repo, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    index = serve_repo(mountpoint)
    for path in (
        "/conda/noarch/repodata.json",
        "/conda/osx-64/repodata.json",
        "/conda/channeldata.json",
        "/conda/noarch/repodata_shards.msgpack.zst",
        "/conda/noarch/x-1.0-0.conda",
        "/conda/",
    ):
        r = index.get(path)
        assert r.status == 503, path
        assert r.header("retry-after") and r.header("cache-control") == "no-store"
    assert os.listdir(mountpoint) == []


def test_strict_priority_keeps_a_private_name_from_the_public_channel(tmp_path: Path, nginx_bin: str) -> None:
    """What `provision client-config --tool conda` promises, and where it stops: pypapo's channel first
    with strict priority wins a name it has even against a higher version in the public channel (a
    conda-forge stand-in served the same way); a name it lacks comes from the public channel."""
    ours, public = tmp_path / "ours", tmp_path / "public"
    channels.publish(Repository.open(str(ours)), [cs.build_package(tmp_path / "p1", "acme-lib", "1.0")])
    attacker = [cs.build_package(tmp_path / "p2", n, "99.0") for n in ("acme-lib", "acme-unpublished")]
    channels.publish(Repository.open(str(public)), attacker)
    servers = [_start(ours, tmp_path), _start(public, tmp_path)]
    try:
        urls = [f"{s.root_url}/conda" for s in servers]

        async def pick(spec: str, priority: str) -> str:
            gateway = rattler.Gateway(cache_dir=tmp_path / f"c-{spec}-{priority}", show_progress=False)
            records = await rattler.solve(
                [rattler.Channel(u) for u in urls],
                [spec],
                gateway=gateway,
                platforms=["linux-64", "noarch"],
                virtual_packages=[],
                channel_priority=getattr(rattler.ChannelPriority, priority),
            )
            return next(str(r.url) for r in records if r.name.normalized == spec)

        assert asyncio.run(pick("acme-lib", "Strict")).startswith(urls[0])
        # Without strict priority the higher public version wins: the confusion strict priority stops.
        assert asyncio.run(pick("acme-lib", "Disabled")).startswith(urls[1])
        # The limit: a name pypapo's channel does not have is taken from the public one.
        assert asyncio.run(pick("acme-unpublished", "Strict")).startswith(urls[1])
    finally:
        for server in servers:
            _stop(server)


# --- an index document with no bytes (startup/page-guard.js.j2) -------------------------------------
# The publisher never writes one, but an object can become 0 bytes on the bucket (a hand upload, another
# tool, a truncation): conda and pixi would fail to parse it, or take the subdir for empty. NGINX answers
# 503 naming it, and /healthz/conda (the channel's health) fails while a subdir the channel lists is
# broken for every conda user. /healthz (the machine's, for the balancer and readiness) does not: pip
# users are served meanwhile, and no new machine could fix a document of the bucket.

CHANNEL_INDEX = (
    "conda/noarch/repodata.json",
    "conda/noarch/repodata.json.zst",
    "conda/noarch/repodata_shards.msgpack.zst",
    "conda/linux-64/repodata.json",
    "conda/channeldata.json",
)


def _small_channel(base: Path) -> Path:
    repo = base / "repo"
    pkgs = base / "pkgs"
    files = [cs.build_package(pkgs, "lib", v) for v in ("1.0", "2.0")]
    files.append(cs.build_package(pkgs, "native", "1.0", subdir="linux-64"))
    channels.publish(Repository.open(str(repo)), files)
    return repo


def _healthz(index: LocalIndex) -> tuple[int, bytes]:
    """The channel's health."""
    r = index.get("/healthz/conda")
    return r.status, r.body


def _machine_health(index: LocalIndex) -> tuple[int, bytes]:
    r = index.get("/healthz")
    return r.status, r.body


def test_a_zero_byte_channel_index_is_503_and_unhealthy_until_rewritten(serve_repo, tmp_path: Path) -> None:
    repo = _small_channel(tmp_path)
    index = serve_repo(repo)
    assert _healthz(index) == (200, b"ok\n")
    for name in CHANNEL_INDEX:
        path = repo / name
        good = path.read_bytes()
        with open(path, "r+b") as fh:  # truncated in place, as another writer would leave it
            fh.truncate(0)
        for method in ("GET", "HEAD"):  # rattler asks with HEAD whether a .zst exists
            r = index.get(f"/{name}", method=method)
            assert r.status == 503, (name, method, r.status)
            assert r.header("content-type") == "text/plain; charset=utf-8" and r.header("cache-control") == (
                "no-store"
            )
        assert index.get(f"/{name}").body == (
            f"pypapo: {name} is empty (0 bytes): the repository needs `provision reindex`\n".encode()
        )
        assert _healthz(index) == (
            503,
            f"unavailable: {name} is empty (0 bytes) (run `provision reindex` on the repository)\n".encode(),
        ), name
        # The bucket's fault, shared by every replica, and conda's only: the machine stays healthy for
        # the balancer, readiness and the tunnel, and the Python index is served.
        assert _machine_health(index) == (200, b"ok\n"), name
        assert index.get("/livez").status == 200
        assert index.get("/simple/", {"Accept": "text/html"}).status == 200
        path.write_bytes(good)  # rewritten (reindex, the next publish): served again, no restart
        r = index.get(f"/{name}")
        assert (r.status, r.body) == (200, good), name
        assert _healthz(index) == (200, b"ok\n")


def test_a_zero_byte_shard_is_503_for_its_name_only(serve_repo, tmp_path: Path) -> None:
    """A shard is one name's records (as a project page is one project's): 503, served immutable it
    would stay in every cache for a year; the channel's health is untouched."""
    repo = _small_channel(tmp_path)
    index = serve_repo(repo)
    shard = next((repo / "conda/noarch/shards").iterdir())
    shard.write_bytes(b"")
    name = shard.relative_to(repo).as_posix()
    r = index.get(f"/{name}")
    assert (r.status, r.body) == (
        503,
        f"pypapo: {name} is empty (0 bytes): the repository needs `provision reindex`\n".encode(),
    )
    assert r.header("cache-control") == "no-store"
    assert _healthz(index) == (200, b"ok\n")
    assert index.get("/conda/noarch/shards/" + "0" * 64 + ".msgpack.zst").status == 404  # absent: 404


def test_a_zero_byte_package_is_503_not_an_empty_file_cached_for_a_year(serve_repo, tmp_path: Path) -> None:
    """A package is served immutable for a year, as a wheel is: one that became 0 bytes is a 503 naming
    it, which no cache keeps; repaired, it serves again with its caching."""
    repo = _small_channel(tmp_path)
    index = serve_repo(repo)
    package = next(p for p in (repo / "conda/noarch").iterdir() if p.name.endswith((".conda", ".tar.bz2")))
    good = package.read_bytes()
    package.write_bytes(b"")
    name = package.relative_to(repo).as_posix()
    r = index.get(f"/{name}")
    assert (r.status, r.header("cache-control")) == (503, "no-store")
    assert r.body == f"pypapo: {name} is empty (0 bytes): the repository needs `provision reindex`\n".encode()
    package.write_bytes(good)
    r = index.get(f"/{name}")
    assert (r.status, r.body, r.header("cache-control")) == (200, good, "public, max-age=31536000, immutable")


def test_a_missing_repodata_of_a_listed_subdir_fails_health(serve_repo, tmp_path: Path) -> None:
    """The empty document NGINX answers for a subdir nothing was published into would hide every package
    of one channeldata.json lists (its repodata.json deleted by hand): /healthz/conda says so. The request
    itself still gets the empty document: judging it there would cost a read of channeldata.json on a
    request every client on a platform with no packages makes (measured: 0.13x the requests/s)."""
    repo = _small_channel(tmp_path)
    index = serve_repo(repo)
    (repo / "conda/linux-64/repodata.json").unlink()
    why = "conda/linux-64/repodata.json is missing (conda/channeldata.json lists linux-64)"
    unhealthy = f"unavailable: {why} (run `provision reindex` on the repository)\n"
    assert _healthz(index) == (503, unhealthy.encode())
    assert _machine_health(index) == (200, b"ok\n")
    # Rewritten, healthy again; a subdir the channel does not list is a valid empty one.
    (repo / "conda/linux-64/repodata.json").write_bytes(rdata.dumps(rdata.Repodata("linux-64")))
    assert _healthz(index) == (200, b"ok\n")
    r = index.get("/conda/osx-arm64/repodata.json")
    assert (r.status, r.body) == (200, rdata.dumps(rdata.Repodata("osx-arm64")))


def test_health_never_reads_a_huge_channeldata(serve_repo, tmp_path: Path) -> None:
    """A hand-uploaded channeldata.json of gigabytes must not cost every health check its size."""
    repo = _small_channel(tmp_path)
    with open(repo / "conda/channeldata.json", "r+b") as fh:
        fh.truncate(65 * 1024 * 1024)  # sparse: the size is what counts
    index = serve_repo(repo)
    assert _healthz(index) == (
        503,
        b"unavailable: conda/channeldata.json is too large to check (over 64 MiB) (run `provision"
        b" reindex` on the repository)\n",
    )


@pytest.mark.parametrize(
    ("channeldata", "health"),
    [
        # Subdirs are looked up only among those conda knows: never a path out of the channel.
        (b'{"channeldata_version":1,"packages":{},"subdirs":["../simple","noarch"]}\n', (200, b"ok\n")),
        (b'{"channeldata_version":1,', (503, b"unavailable: conda/channeldata.json is not JSON")),
        (b'{"packages":{}}', (503, b"unavailable: conda/channeldata.json has no list of subdirs")),
    ],
    ids=["traversal", "truncated", "no-subdirs"],
)
def test_health_reads_only_the_subdirs_conda_knows_from_channeldata(
    serve_repo, tmp_path: Path, channeldata: bytes, health: tuple[int, bytes]
) -> None:
    repo = _small_channel(tmp_path)
    (repo / "simple/repodata.json").write_bytes(b"")  # what "../simple" would find, if it were looked at
    (repo / "conda/channeldata.json").write_bytes(channeldata)
    index = serve_repo(repo)
    status, body = _healthz(index)
    assert status == health[0] and body.startswith(health[1]), body


def _solve(index: LocalIndex, cache: Path) -> list[str]:
    """The versions of lib solved through the served channel, from repodata (not shards)."""
    return [str(r.version) for r in asyncio.run(_records(index, cache, ["lib"], sharded=False))]


def test_rattler_gets_a_clear_error_for_a_zero_byte_repodata_then_the_rewritten_channel(
    serve_repo, tmp_path: Path
) -> None:
    """Before the guard: "failed to parse repodata.json: EOF while parsing" for a 0-byte repodata.json,
    and "zstd stream did not finish" for a 0-byte .zst beside a good repodata.json."""
    repo = _small_channel(tmp_path)
    index = serve_repo(repo)
    noarch = repo / "conda/noarch"
    good = {p: p.read_bytes() for p in (noarch / "repodata.json", noarch / "repodata.json.zst")}
    # Only the .zst broken: its HEAD says 503, and rattler takes repodata.json instead.
    (noarch / "repodata.json.zst").write_bytes(b"")
    assert _solve(index, tmp_path / "c1") == ["2.0"]
    # Both broken: an error naming the status and the URL, never an empty channel or a parse error.
    (noarch / "repodata.json").write_bytes(b"")
    with pytest.raises(Exception, match=r"503 Service Temporarily Unavailable.*/conda/noarch/repodata\.json"):
        _solve(index, tmp_path / "c2")
    for path, data in good.items():
        path.write_bytes(data)
    assert _solve(index, tmp_path / "c2") == ["2.0"]  # the same cache: nothing empty was kept

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


def _solve_and_install(index: LocalIndex, tmp: Path, *, sharded: bool) -> dict[str, str]:
    """name -> version installed into a fresh prefix, with fresh caches."""

    async def go() -> dict[str, str]:
        cache = tmp / "cache"
        gateway = rattler.Gateway(
            cache_dir=cache, default_config=rattler.SourceConfig(sharded_enabled=sharded), show_progress=False
        )
        records = await rattler.solve(
            [rattler.Channel(f"{index.root_url}/conda")],
            ["app"],
            gateway=gateway,
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
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

"""`provision mirror` against a real upstream index on loopback (`provision serve`, with its access log).

The upstream carries pub-a 1.0 (wheel + sdist, requires pub-b), pub-b 1.0 and 2.0 (2.0 yanked
upstream, "broken"), and pub-native 1.0 with platform wheels and an sdist. Every hostile case ends
with the target repository byte-for-byte as it was.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provisioner.appliance import sample
from provisioner.appliance.serve import free_port
from provisioner.cli import main
from provisioner.repo.engine import Repository
from provisioner.repo.upstream import Upstream, UpstreamError
from tests.fixtures.nginx import LocalIndex, _start, _stop
from tests.fixtures.proxy import ForwardProxy, Servers, certificate, forward_proxy, tls_front

BIN = Path(sys.executable).parent
NATIVE = [
    "pub_native-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "pub_native-1.0-cp311-cp311-win_amd64.whl",
    "pub_native-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
    "pub_native-1.0-cp311-cp311-macosx_11_0_arm64.whl",
]


def build_upstream(repo: Path, dists: Path) -> None:
    files = [
        sample.build_wheel(dists, "pub-a", "1.0", requires_dist=["pub-b"]),
        sample.build_sdist(dists, "pub-a", "1.0", requires_dist=["pub-b"]),
        sample.build_wheel(dists, "pub-b", "1.0", requires_python=">=3.8"),
        sample.build_wheel(dists, "pub-b", "2.0"),
        sample.build_sdist(dists, "pub-native", "1.0"),
    ]
    for name in NATIVE:
        path = dists / name
        path.write_bytes(sample.wheel_bytes("pub-native", "1.0"))
        files.append(path)
    upstream = Repository.open(str(repo))
    upstream.publish(files)
    upstream.set_yanked("pub-b", "2.0", "broken")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[LocalIndex]:
    base = tmp_path_factory.mktemp("upstream")
    build_upstream(base / "repo", base / "dists")
    index = _start(base / "repo", base)
    yield index
    code, err = _stop(index)
    assert code == 0, err.decode(errors="replace")


@pytest.fixture
def own_upstream(serve_repo: Callable[[Path], LocalIndex], tmp_path: Path) -> LocalIndex:
    """An upstream this test may change (publish, yank, tamper)."""
    build_upstream(tmp_path / "own-upstream", tmp_path / "own-dists")
    return serve_repo(tmp_path / "own-upstream")


def mirror(repo: Path | str, index_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["mirror", "--repo", str(repo), "--from", index_url, *args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(result: Result, *words: str) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def state(repo: Path, project: str) -> dict:
    return json.loads((repo / "simple" / project / "index.json").read_bytes())


def dist_downloads(index: LocalIndex, mark: int) -> list[str]:
    return [p for _m, p, _s in index.requests(mark) if p.endswith((".whl", ".tar.gz", ".zip"))]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A repository that already holds a private project."""
    repo = tmp_path / "pypapo"
    Repository.open(str(repo)).publish([sample.build_wheel(tmp_path / "private", "acme-lib", "1.0")])
    return repo


# --- the happy path -------------------------------------------------------------------------------------


def test_mirror_brings_the_whole_closure_with_the_upstream_state(upstream: LocalIndex, target: Path) -> None:
    out = ok(mirror(target, upstream.url, "pub-a"))
    assert "added 3 files" in out and "of 2 projects" in out
    up_a, up_b = state(upstream.repo, "pub-a"), state(upstream.repo, "pub-b")
    a, b = state(target, "pub-a"), state(target, "pub-b")
    assert a["_mirror"] == {"from": upstream.url} and b["_mirror"] == {"from": upstream.url}
    assert [f["filename"] for f in a["files"]] == [f["filename"] for f in up_a["files"]]
    assert [f["filename"] for f in b["files"]] == ["pub_b-1.0-py3-none-any.whl"]  # 2.0 is yanked
    for mine, theirs in [(a["files"][0], up_a["files"][0]), (b["files"][0], up_b["files"][0])]:
        for key in ("hashes", "upload-time", "requires-python", "core-metadata", "size", "yanked"):
            assert mine.get(key) == theirs.get(key), key
    wheel = "pub_b-1.0-py3-none-any.whl.metadata"
    assert (target / "simple/pub-b" / wheel).read_bytes() == (
        upstream.repo / "simple/pub-b" / wheel
    ).read_bytes()
    listing = ok(CliRunner().invoke(main, ["list", "--repo", str(target)])).splitlines()
    assert listing == [
        "acme-lib",
        f"pub-a  (mirrored from {upstream.url})",
        f"pub-b  (mirrored from {upstream.url})",
    ]

    # A re-run downloads nothing and says so.
    mark = upstream.log_mark()
    before = snapshot(target)
    out = ok(mirror(target, upstream.url, "pub-a"))
    assert out.startswith(f"nothing new from {upstream.url}: 3 files already present")
    assert dist_downloads(upstream, mark) == []
    assert snapshot(target) == before


def test_a_pinned_yanked_version_keeps_its_reason(upstream: LocalIndex, tmp_path: Path) -> None:
    ok(mirror(tmp_path / "r", upstream.url, "pub-b==2.0"))
    (entry,) = state(tmp_path / "r", "pub-b")["files"]
    assert entry["yanked"] == "broken"


def test_new_versions_and_yanks_follow_the_upstream(own_upstream: LocalIndex, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    ok(mirror(repo, own_upstream.url, "pub-b<2"))
    up = Repository.open(str(own_upstream.repo))
    up.set_yanked("pub-b", "1.0", "security")
    up.publish([sample.build_wheel(tmp_path / "later", "pub-b", "1.5")])
    mark = own_upstream.log_mark()
    out = ok(mirror(repo, own_upstream.url, "pub-b<2"))
    assert "added 1 file (" in out and "yank state of 1 file updated from upstream" in out
    assert dist_downloads(own_upstream, mark) == ["/simple/pub-b/pub_b-1.5-py3-none-any.whl"]
    files = {f["filename"]: f["yanked"] for f in state(repo, "pub-b")["files"]}
    assert files == {"pub_b-1.0-py3-none-any.whl": "security", "pub_b-1.5-py3-none-any.whl": False}


def test_narrowing_by_python_platform_and_no_sdist(upstream: LocalIndex, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    out = ok(
        mirror(
            repo,
            upstream.url,
            "pub-native",
            "--python-version",
            "3.11",
            "--platform",
            "linux_x86_64",
            "--no-sdist",
        )
    )
    assert "4 left out" in out
    assert [f["filename"] for f in state(repo, "pub-native")["files"]] == [NATIVE[0]]
    ok(mirror(repo, upstream.url, "pub-native", "--platform", "macosx", "--platform", "win_amd64"))
    names = {f["filename"] for f in state(repo, "pub-native")["files"]}
    assert names == {NATIVE[0], NATIVE[1], NATIVE[3], "pub_native-1.0.tar.gz"}


def test_dry_run_writes_nothing(upstream: LocalIndex, target: Path) -> None:
    before = snapshot(target)
    mark = upstream.log_mark()
    out = ok(mirror(target, upstream.url, "pub-a", "--dry-run"))
    assert "would add 3 files" in out and "would add pub_a-1.0.tar.gz" in out
    assert snapshot(target) == before
    assert dist_downloads(upstream, mark) == []


# --- private names are never shadowed ---------------------------------------------------------------------


def test_a_privately_published_name_is_never_mirrored(upstream: LocalIndex, tmp_path: Path) -> None:
    """pub-b is ours here: mirroring pub-a (which needs pub-b) must not bring the public pub-b in."""
    repo = tmp_path / "r"
    Repository.open(str(repo)).publish([sample.build_wheel(tmp_path / "mine", "pub-b", "0.1")])
    before = snapshot(repo)
    refused(mirror(repo, upstream.url, "pub-a"), "pub-b is published privately", "refusing to mirror it")
    assert snapshot(repo) == before


def test_publishing_into_a_mirrored_project_needs_the_flag(upstream: LocalIndex, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    ok(mirror(repo, upstream.url, "pub-b<2"))
    before = snapshot(repo)
    mine = sample.build_wheel(tmp_path / "mine", "pub-b", "1.1")
    publish = ["publish", "--repo", str(repo), str(mine)]
    refused(CliRunner().invoke(main, publish), "pub-b is mirrored from", "--into-mirrored")
    assert snapshot(repo) == before
    ok(CliRunner().invoke(main, [*publish, "--into-mirrored"]))
    assert "pub_b-1.1-py3-none-any.whl" in {f["filename"] for f in state(repo, "pub-b")["files"]}


# --- every byte is verified -----------------------------------------------------------------------------


def test_a_tampered_upstream_file_refuses_the_whole_run(own_upstream: LocalIndex, target: Path) -> None:
    """pub-b's wheel no longer matches the sha256 its index lists: not even pub-a is written."""
    wheel = own_upstream.repo / "simple/pub-b/pub_b-1.0-py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[-30] ^= 0xFF
    wheel.write_bytes(bytes(data))
    before = snapshot(target)
    refused(mirror(target, own_upstream.url, "pub-a"), "pub_b-1.0-py3-none-any.whl", "sha256", "refusing")
    assert snapshot(target) == before


def test_a_lock_whose_hash_differs_from_the_index_refuses_everything(
    upstream: LocalIndex, target: Path
) -> None:
    lock = target.parent / "requirements.txt"
    wrong = "0" * 64
    good = state(upstream.repo, "pub-a")["files"][0]["hashes"]["sha256"]
    lock.write_text(f"pub-a==1.0 --hash=sha256:{good}\npub-b==1.0 --hash=sha256:{wrong}\n")
    before = snapshot(target)
    refused(mirror(target, upstream.url, "--lock", str(lock)), "pub-b==1.0", "lock's hashes")
    assert snapshot(target) == before


# --- bad input: one line, nothing written -----------------------------------------------------------------


class _Index(http.server.BaseHTTPRequestHandler):
    """An index that answers every GET with `page()` as PEP 691 JSON."""

    def page(self) -> bytes:
        raise NotImplementedError

    def do_GET(self) -> None:
        body = self.page()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Garbage(_Index):
    def page(self) -> bytes:
        return b"<<< definitely not an index >>>"


@pytest.fixture
def garbage_index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()


def test_bad_input_is_one_line_and_writes_nothing(
    upstream: LocalIndex, target: Path, garbage_index: str
) -> None:
    before = snapshot(target)
    down = f"http://127.0.0.1:{free_port()}/simple/"
    no_hash = target.parent / "nohash.txt"
    no_hash.write_text("pub-a==1.0\n")
    unpinned = target.parent / "unpinned.txt"
    unpinned.write_text("pub-a>=1 --hash=sha256:" + "1" * 64 + "\n")
    elsewhere = target.parent / "uv.lock"
    elsewhere.write_text(
        'version = 1\n[[package]]\nname = "pub-a"\nversion = "1.0"\n'
        'source = { registry = "https://evil.example/simple" }\n'
        'wheels = [{ url = "https://evil.example/pub_a-1.0-py3-none-any.whl", hash = "sha256:'
        + "2" * 64
        + '" }]\n'
    )
    for result, words in [
        (mirror(target, upstream.url, "no-such-project"), ("no project no-such-project on",)),
        (mirror(target, upstream.url, "pub-b>=9"), ("cannot resolve pub-b>=9",)),
        (mirror(target, down, "pub-a"), ("cannot reach", "--from")),
        (mirror(target, garbage_index, "pub-a"), ("answered garbage for pub-a",)),
        (mirror(target, upstream.url, "--lock", str(no_hash)), ("pub-a==1.0 has no --hash",)),
        (mirror(target, upstream.url, "--lock", str(unpinned)), ("not pinned with ==",)),
        (
            mirror(target, upstream.url, "--lock", str(elsewhere)),
            ("locked from https://evil.example/simple",),
        ),
        (mirror(target, "ftp://example/simple", "pub-a"), ("must be an http(s) index URL",)),
        (mirror(target, upstream.url), ("nothing to mirror",)),
    ]:
        refused(result, *words)
    assert snapshot(target) == before


def test_a_lock_file_pointing_at_another_host_is_refused(
    upstream: LocalIndex, target: Path, tmp_path: Path
) -> None:
    """Same index, but the lock's file URL is not where the index serves that file."""
    entry = state(upstream.repo, "pub-b")["files"][0]
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n[[packages]]\nname = "pub-b"\nversion = "1.0"\n'
        f'index = "{upstream.url}"\n'
        f'wheels = [{{ url = "https://evil.example/{entry["filename"]}",'
        f' hashes = {{ sha256 = "{entry["hashes"]["sha256"]}" }} }}]\n'
    )
    before = snapshot(target)
    refused(mirror(target, upstream.url, "--lock", str(lock)), "points at https://evil.example/")
    assert snapshot(target) == before


# --- lock files as real tools write them ------------------------------------------------------------------


def _tool_env(tmp_path: Path) -> dict[str, str]:
    from tests.appliance.test_clients import clean_env

    return clean_env(
        tmp_path,
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        UV_PYTHON=sys.executable,
        POETRY_CACHE_DIR=str(tmp_path / "poetry-cache"),
        POETRY_CONFIG_DIR=str(tmp_path / "poetry-config"),
        POETRY_DATA_DIR=str(tmp_path / "poetry-data"),
        POETRY_NO_INTERACTION="1",
    )


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("kind", ["uv.lock", "pylock.toml", "poetry.lock", "requirements.txt"])
def test_lock_files_are_taken_as_they_are(upstream: LocalIndex, tmp_path: Path, kind: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = _tool_env(tmp_path)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["pub-a"]\n\n'
        f'[[tool.uv.index]]\nname = "up"\nurl = "{upstream.url}"\ndefault = true\n\n'
        "[tool.poetry]\npackage-mode = false\n\n"
        f'[[tool.poetry.source]]\nname = "up"\nurl = "{upstream.url}"\npriority = "primary"\n'
    )
    uv = str(BIN / "uv")
    if kind == "uv.lock":
        _run([uv, "lock"], project, env)
    elif kind == "pylock.toml":
        _run([uv, "lock"], project, env)
        _run(
            [uv, "export", "--format", "pylock.toml", "-o", "pylock.toml", "--no-emit-project"], project, env
        )
    elif kind == "poetry.lock":
        _run([str(BIN / "poetry"), "lock"], project, env)
    else:
        (project / "requirements.in").write_text("pub-a\n")
        _run(
            [uv, "pip", "compile", "--universal", "--generate-hashes", "--index-url", upstream.url,
             "requirements.in", "-o", "requirements.txt"],
            project, env,
        )  # fmt: skip
    repo = tmp_path / "r"
    mark = upstream.log_mark()
    out = ok(mirror(repo, upstream.url, "--lock", str(project / kind)))
    assert "added 3 files" in out, out
    assert {f["filename"] for f in state(repo, "pub-a")["files"]} == {
        "pub_a-1.0-py3-none-any.whl",
        "pub_a-1.0.tar.gz",
    }
    assert [f["filename"] for f in state(repo, "pub-b")["files"]] == ["pub_b-1.0-py3-none-any.whl"]
    # A lock is not resolved again: the mirror read two pages and downloaded three files.
    assert sorted(dist_downloads(upstream, mark)) == [
        "/simple/pub-a/pub_a-1.0-py3-none-any.whl",
        "/simple/pub-a/pub_a-1.0.tar.gz",
        "/simple/pub-b/pub_b-1.0-py3-none-any.whl",
    ]


# --- behind a company proxy ---------------------------------------------------------------------------


def _behind(
    monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, tmp_path: Path, *cas: Path, url: str | None = None
) -> None:
    """This process (and what it runs) behind `proxy` (at `url`, if another spelling of it), trusting
    `cas` alone (uv and Python both read SSL_CERT_FILE)."""
    if cas:
        bundle = tmp_path / "trusted.pem"
        bundle.write_text("".join(ca.read_text() for ca in cas))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, url if url and value == proxy.url else value)


@pytest.mark.parametrize("proxy_scheme", ["http", "https"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_behind_a_company_proxy_the_mirror_goes_through_it(
    upstream: LocalIndex,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: Servers,
    scheme: str,
    proxy_scheme: str,
) -> None:
    """A company network: the index is reachable only through the proxy `https_proxy`/`http_proxy`
    name (pypi.invalid resolves nowhere; the proxy knows it). uv resolved through it, and then every
    download went straight to the index and failed (`cannot reach`), as no admin behind one could mirror.
    A proxy spoken to over TLS (`https://`, as pip and uv take it) was refused with one line."""
    nginx = ("127.0.0.1", upstream.port)
    cas: list[Path] = []
    tls = None
    if proxy_scheme == "https":
        tls, proxy_ca = certificate(tmp_path, "localhost")
        cas.append(proxy_ca)
    if scheme == "https":
        port, ca = tls_front(servers, tmp_path, "pypi.invalid", nginx)
        cas.append(ca)
        proxy = forward_proxy(servers, {("pypi.invalid", 443): ("127.0.0.1", port)}, tls)
    else:
        proxy = forward_proxy(servers, {("pypi.invalid", 80): nginx}, tls)
    assert proxy.url.startswith(f"{proxy_scheme}://")
    _behind(monkeypatch, proxy, tmp_path, *cas)
    repo = tmp_path / "r"
    out = ok(mirror(repo, f"{scheme}://pypi.invalid/simple/", "pub-a"))
    assert "added" in out, out
    assert {f["filename"] for f in state(repo, "pub-b")["files"]} >= {"pub_b-1.0-py3-none-any.whl"}
    ours = [a for a in proxy.asked if a.startswith("CONNECT") or ".whl" in a or ".tar.gz" in a]
    if scheme == "https":
        assert ours and set(ours) == {"CONNECT pypi.invalid:443"}
    else:
        assert "GET http://pypi.invalid/simple/pub-a/pub_a-1.0-py3-none-any.whl" in ours, proxy.asked


def test_through_an_https_proxy_one_tunnel_serves_every_request(
    upstream: LocalIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> None:
    """TLS inside TLS: the index's TLS runs over the proxy's, and a response read to its end leaves
    the tunnel open for the next request, as a socket would (closing it cost a new tunnel and a
    retry's back-off per request)."""
    tls, proxy_ca = certificate(tmp_path, "localhost")
    port, ca = tls_front(servers, tmp_path, "pypi.invalid", ("127.0.0.1", upstream.port))
    proxy = forward_proxy(servers, {("pypi.invalid", 443): ("127.0.0.1", port)}, tls)
    _behind(
        monkeypatch, proxy, tmp_path, proxy_ca, ca, url=proxy.url.replace("https://", "https://team:pr%40xy@")
    )
    index = Upstream("https://pypi.invalid/simple/")
    page = index.project("pub-a")
    for f in page.files:
        assert hashlib.sha256(index.fetch(f.url)).hexdigest() == f.sha256
    assert index.project("pub-b").files
    assert proxy.asked == ["CONNECT pypi.invalid:443"]
    # The proxy's credentials (in its URL, percent-decoded) go to it, inside its TLS.
    assert proxy.authorizations == ["Basic " + base64.b64encode(b"team:pr@xy").decode()]
    # Its certificate is checked as any server's: one this machine does not trust is refused.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
        Upstream("https://pypi.invalid/simple/").project("pub-a")


class _Recording(_Index):
    """Records each request's Authorization; `redirect`: answer with a redirect to it, else a page."""

    redirect = ""
    seen: list[tuple[str, str | None]]

    def page(self) -> bytes:
        return json.dumps({"meta": {"api-version": "1.0"}, "name": "pub-a", "files": []}).encode()

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if not self.redirect:
            super().do_GET()
            return
        self.send_response(302)
        self.send_header("Location", self.redirect + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_an_https_index_s_credentials_never_follow_a_redirect_to_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> None:
    """`--from https://user:token@host/simple/` whose page redirects to http:// on the same host: the
    token went along in clear to whoever is on the path (requests strips it on such a downgrade)."""
    secure_seen: list[tuple[str, str | None]] = []
    plain_seen: list[tuple[str, str | None]] = []
    secure = type("Secure", (_Recording,), {"redirect": "http://pypi.invalid", "seen": secure_seen})
    plain = type("Plain", (_Recording,), {"seen": plain_seen})
    backends = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (secure, plain)]
    for b in backends:
        threading.Thread(target=b.serve_forever, daemon=True).start()
    try:
        port, ca = tls_front(servers, tmp_path, "pypi.invalid", ("127.0.0.1", backends[0].server_port))
        proxy = forward_proxy(
            servers,
            {
                ("pypi.invalid", 443): ("127.0.0.1", port),
                ("pypi.invalid", 80): ("127.0.0.1", backends[1].server_port),
            },
        )
        _behind(monkeypatch, proxy, tmp_path, ca)
        assert Upstream("https://team:s3cret@pypi.invalid/simple/").project("pub-a").files == ()
    finally:
        for b in backends:
            b.shutdown()
    basic = "Basic " + base64.b64encode(b"team:s3cret").decode()
    assert secure_seen == [("/simple/pub-a/", basic)]
    assert plain_seen == [("/simple/pub-a/", None)]


def test_a_proxy_that_cannot_reach_the_index_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> None:
    proxy = forward_proxy(servers, {})  # it reaches nothing: 502 to every CONNECT
    _behind(monkeypatch, proxy, tmp_path)
    with pytest.raises(UpstreamError) as err:
        Upstream("https://pypi.invalid/simple/").project("pub-a")
    assert str(err.value).startswith(
        f"cannot reach https://pypi.invalid/simple/ through the proxy {proxy.url} (https_proxy) ("
    )
    assert str(err.value).endswith("check --from, the network and the proxy")
    monkeypatch.setenv("https_proxy", "socks5://proxy.example:1080")
    with pytest.raises(UpstreamError, match="not an http:// or https:// proxy address"):
        Upstream("https://pypi.invalid/simple/").project("pub-a")


# --- both backends ------------------------------------------------------------------------------------


def test_mirror_into_either_backend_and_a_lock_read_from_gcs(
    upstream: LocalIndex, repo, fake_gcs, tmp_path: Path
) -> None:
    """The same run into a directory and into a bucket (fake-gcs-server through the real client); the
    lock comes from gs:// as the scheduled build reads it; a refusal leaves every object as it was."""
    entries = {
        f["filename"]: f["hashes"]["sha256"]
        for p in ("pub-a", "pub-b")
        for f in state(upstream.repo, p)["files"]
    }
    lock_bucket = fake_gcs.create_bucket()
    text = (
        f"pub-a==1.0 --hash=sha256:{entries['pub_a-1.0-py3-none-any.whl']}"
        f" --hash=sha256:{entries['pub_a-1.0.tar.gz']}\n"
        f"pub-b==1.0 --hash=sha256:{entries['pub_b-1.0-py3-none-any.whl']}\n"
    )
    fake_gcs.client().bucket(lock_bucket).blob("locks/requirements.txt").upload_from_string(text)
    lock = f"gs://{lock_bucket}/locks/requirements.txt"
    out = ok(mirror(repo.location, upstream.url, "--lock", lock))
    assert "added 3 files" in out
    stored = repo.snapshot()
    assert json.loads(stored["simple/pub-a/index.json"])["_mirror"] == {"from": upstream.url}
    assert (
        stored["simple/pub-b/pub_b-1.0-py3-none-any.whl"]
        == (upstream.repo / "simple/pub-b/pub_b-1.0-py3-none-any.whl").read_bytes()
    )
    assert ok(mirror(repo.location, upstream.url, "--lock", lock)).startswith("nothing new")
    mine = sample.build_wheel(tmp_path / "mine", "pub-native", "0.1")
    ok(CliRunner().invoke(main, ["publish", "--repo", repo.location, str(mine)]))
    before = repo.snapshot()
    refused(mirror(repo.location, upstream.url, "pub-native"), "pub-native is published privately")
    refused(mirror(repo.location, upstream.url, "--lock", f"gs://{lock_bucket}/nope.txt"), "no such object")
    assert repo.snapshot() == before

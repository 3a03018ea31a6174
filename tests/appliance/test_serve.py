"""The served index over HTTP, through a real `provision serve` (Debian's nginx, the VM's config)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from packaging.version import Version
from pypi_simple import DistributionPackage, IndexPage, ProjectPage, RepositoryPage

from provisioner.appliance import sample
from provisioner.repo.engine import Repository
from tests.fixtures.nginx import LocalIndex, http_request, publish_demo_set
from tests.fixtures.proxy import ForwardProxy

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
UV_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
JSON = "application/vnd.pypi.simple.v1+json"


def wheel(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


# --- PEP 503 / 691 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, JSON),
        (UV_ACCEPT, JSON),
        (None, "text/html; charset=utf-8"),
        ("*/*", "text/html; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        (JSON, JSON),
        ("application/vnd.pypi.simple.latest+json", JSON),
        # q-values decide, not the order.
        ("text/html, application/vnd.pypi.simple.v1+json;q=0.5", "text/html; charset=utf-8"),
        ("text/html;q=0.4, application/vnd.pypi.simple.v1+json;q=0.5", JSON),
        ("application/vnd.pypi.simple.v1+json;q=0.25, text/html;q=0.3", "text/html; charset=utf-8"),
        ("application/vnd.pypi.simple.v1+json; q=0, text/html; q=0.1", "text/html; charset=utf-8"),
        (
            "application/vnd.pypi.simple.v1+html, application/vnd.pypi.simple.v1+json;q=0.9",
            "text/html; charset=utf-8",
        ),
        # Equal preference: JSON.
        ("text/html, application/vnd.pypi.simple.v1+json", JSON),
        ("application/json", "text/html; charset=utf-8"),
    ],
)
def test_content_negotiation_on_accept(demo_index: LocalIndex, accept: str | None, expected: str) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    for path in ("/simple/", "/simple/pypapo-chain-b/"):
        r = demo_index.get(path, headers)
        assert r.status == 200
        assert r.header("content-type") == expected
        assert "Accept" in (r.header("vary") or "")
        if expected == JSON:
            assert json.loads(r.body)["meta"]["api-version"] == "1.1"
        else:
            assert RepositoryPage.from_html(r.body).repository_version == "1.1"


def _fields(p: DistributionPackage) -> tuple:
    """What a client learns of a file, whichever representation it read (no attribute in HTML and
    `false` in JSON both mean: no metadata file)."""
    return (
        p.filename,
        p.url,
        p.version,
        p.digests,
        p.requires_python,
        bool(p.has_metadata),
        p.metadata_digests,
        p.is_yanked,
        p.yanked_reason,
    )


@pytest.mark.parametrize("project", ["pypapo-chain-b", "pypapo-chain-c", "pypapo-yank-me", "mixed-case-name"])
def test_served_pages_read_by_an_independent_client_library(demo_index: LocalIndex, project: str) -> None:
    """pypi-simple (not our renderer) reads the served HTML and JSON: both say the same thing, and
    every hash, metadata hash and yank matches the bytes served next to the page."""
    path = f"/simple/{project}/"
    html = demo_index.get(path, {"Accept": "text/html"}).body
    doc = json.loads(demo_index.get(path, {"Accept": JSON}).body)
    from_html = ProjectPage.from_html(project, html)
    from_json = ProjectPage.from_json_data(doc)
    assert from_html.repository_version == from_json.repository_version == "1.1"
    assert from_json.project == project
    assert [_fields(p) for p in from_html.packages] == [_fields(p) for p in from_json.packages]
    assert from_html.packages, project
    for p in from_json.packages:
        served = demo_index.get(path + p.url).body
        assert p.digests == {"sha256": hashlib.sha256(served).hexdigest()}
        if p.filename.endswith(".whl"):
            metadata = demo_index.get(path + p.url + ".metadata").body
            assert p.metadata_digests == {"sha256": hashlib.sha256(metadata).hexdigest()}
        else:
            assert p.has_metadata is False and demo_index.get(path + p.url + ".metadata").status == 404
        assert p.is_yanked == (p.filename == wheel("pypapo-yank-me", "2.0"))
        assert p.yanked_reason == ("broken on purpose" if p.is_yanked else None)
    # PEP 714: the legacy names next to the new ones, in both representations (pypi-simple reads
    # only the new ones).
    for f in doc["files"]:
        assert f["dist-info-metadata"] == f["core-metadata"]
    for link in RepositoryPage.from_html(html).links:
        assert link.attrs.get("data-dist-info-metadata") == link.attrs.get("data-core-metadata")
    assert doc["versions"] == sorted({p.version for p in from_json.packages}, key=Version)


def test_served_root_lists_every_project_in_both_representations(demo_index: LocalIndex) -> None:
    expected = ["mixed-case-name", "pypapo-chain-a", "pypapo-chain-b", "pypapo-chain-c", "pypapo-yank-me"]
    html = IndexPage.from_html(demo_index.get("/simple/", {"Accept": "text/html"}).body)
    doc = json.loads(demo_index.get("/simple/", {"Accept": JSON}).body)
    assert html.projects == expected
    assert IndexPage.from_json_data(doc).projects == expected
    assert [link.url for link in RepositoryPage.from_html(demo_index.get("/simple/").body).links] == [
        f"{name}/" for name in expected
    ]


def test_project_json_is_the_engines_and_links_resolve(demo_index: LocalIndex) -> None:
    page = json.loads(demo_index.get("/simple/pypapo-chain-b/", {"Accept": JSON}).body)
    assert page["name"] == "pypapo-chain-b"
    for f in page["files"]:
        # Relative URLs resolve against the page; the metadata file sits next to the distribution.
        assert demo_index.get(f"/simple/pypapo-chain-b/{f['url']}").status == 200
        assert demo_index.get(f"/simple/pypapo-chain-b/{f['url']}.metadata").status == 200


def test_index_at_root_as_well(demo_index: LocalIndex) -> None:
    for accept in (PIP_ACCEPT, "text/html"):
        at_simple = demo_index.get("/simple/", {"Accept": accept})
        at_root = demo_index.get("/", {"Accept": accept})
        assert at_root.status == 200
        assert at_root.body == at_simple.body
        assert at_root.header("content-type") == at_simple.header("content-type")
    project = demo_index.get("/pypapo-chain-c/", {"Accept": "text/html"})
    assert project.status == 200
    assert [p.filename for p in ProjectPage.from_html("pypapo-chain-c", project.body).packages] == [
        "pypapo_chain_c-1.0-py3-none-any.whl",
        "pypapo_chain_c-1.0.tar.gz",
    ]
    assert demo_index.get("/pypapo-chain-c/pypapo_chain_c-1.0.tar.gz").status == 200


def test_redirects_are_relative_to_the_request(demo_index: LocalIndex) -> None:
    """Relative Location headers: they resolve against whatever URL the client used (tunnel port,
    path prefix), so the index never sends a client to a /simple/ that is not its own."""
    for path, location, lands in [
        ("/simple", "simple/", "/simple/"),
        ("/simple?x=1", "simple/?x=1", "/simple/"),
        ("/simple/pypapo-chain-c", "./pypapo-chain-c/", "/simple/pypapo-chain-c/"),
        # Non-normalized names reach the normalized project.
        ("/simple/Mixed.Case_Name/", "../mixed-case-name/", "/simple/mixed-case-name/"),
        ("/simple/Mixed.Case_Name", "./mixed-case-name/", "/simple/mixed-case-name/"),
        ("/simple/PYPAPO_Chain__C/", "../pypapo-chain-c/", "/simple/pypapo-chain-c/"),
        ("/simple/pypapo.chain-.c", "./pypapo-chain-c/", "/simple/pypapo-chain-c/"),
        (
            "/simple/PyPaPo_Chain_C/pypapo_chain_c-1.0.tar.gz",
            "../pypapo-chain-c/pypapo_chain_c-1.0.tar.gz",
            "/simple/pypapo-chain-c/pypapo_chain_c-1.0.tar.gz",
        ),
        ("/Mixed_Case.NAME/", "../mixed-case-name/", "/mixed-case-name/"),
        ("/pypapo-chain-c", "./pypapo-chain-c/", "/pypapo-chain-c/"),
    ]:
        r = demo_index.get(path)
        assert r.status == 301, path
        assert r.header("location") == location, path
        assert urllib.parse.urljoin(path, location).split("?")[0] == lands, path
        assert demo_index.get(lands).status == 200, lands


@pytest.mark.parametrize(
    "path",
    [
        "/simple/Acme%0d%0aSet-Cookie:%20x=1/",  # header injection through the decoded URI
        "/simple/http:%2f%2fevil.example",  # a scheme would make the relative redirect absolute
        "/simple/javascript:alert(1)",
        "/simple/Foo_Bar/a/b",  # nothing is that deep
        "/simple/_/",
    ],
)
def test_redirects_never_carry_anything_but_a_name(demo_index: LocalIndex, path: str) -> None:
    r = demo_index.get(path)
    assert r.status == 404, (path, r.status, r.headers)
    assert "set-cookie" not in r.headers and "location" not in r.headers


def test_non_normalized_name_reaches_project_by_following_redirects(demo_index: LocalIndex) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{demo_index.root_url}/simple/Mixed.Case_Name/") as resp:
        assert resp.status == 200
        assert resp.url.endswith("/simple/mixed-case-name/")
        packages = ProjectPage.from_html("mixed-case-name", resp.read()).packages
        assert [p.filename for p in packages] == ["mixed_case_name-1.0-py3-none-any.whl"]


# --- caching, compression, ranges -------------------------------------------------------------------


def test_cache_control_and_etag(demo_index: LocalIndex) -> None:
    page = demo_index.get("/simple/pypapo-chain-c/")
    assert page.header("cache-control") == "max-age=0, must-revalidate"
    etag = page.header("etag")
    assert etag
    again = demo_index.get("/simple/pypapo-chain-c/", {"If-None-Match": etag})
    assert again.status == 304

    for name in (wheel("pypapo-chain-c", "1.0"), wheel("pypapo-chain-c", "1.0") + ".metadata"):
        r = demo_index.get(f"/simple/pypapo-chain-c/{name}")
        assert r.status == 200
        assert r.header("cache-control") == "public, max-age=31536000, immutable"
        assert r.header("etag")
        assert "Accept" not in (r.header("vary") or "")


def test_content_types_of_files(demo_index: LocalIndex) -> None:
    base = "/simple/pypapo-chain-c/"
    sdist = demo_index.get(base + "pypapo_chain_c-1.0.tar.gz", {"Accept-Encoding": "gzip"})
    assert sdist.header("content-type") == "application/octet-stream"
    assert sdist.header("content-encoding") is None  # never re-encoded: pip would unpack it
    assert sdist.body == (demo_index.repo / "simple/pypapo-chain-c/pypapo_chain_c-1.0.tar.gz").read_bytes()
    assert demo_index.get(base + wheel("pypapo-chain-c", "1.0")).header("content-type") == (
        "application/octet-stream"
    )
    meta = demo_index.get(base + wheel("pypapo-chain-c", "1.0") + ".metadata")
    assert meta.header("content-type") == "text/plain; charset=utf-8"
    assert meta.body.startswith(b"Metadata-Version:")


def test_pages_are_gzipped_when_asked(demo_index: LocalIndex) -> None:
    plain = demo_index.get("/simple/pypapo-chain-b/", {"Accept": JSON})
    zipped = demo_index.get("/simple/pypapo-chain-b/", {"Accept": JSON, "Accept-Encoding": "gzip"})
    assert zipped.header("content-encoding") == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    assert "Accept-Encoding" in (zipped.header("vary") or "")


def test_range_requests_on_files(demo_index: LocalIndex) -> None:
    path = "/simple/pypapo-chain-c/" + wheel("pypapo-chain-c", "1.0")
    full = (demo_index.repo / path.lstrip("/")).read_bytes()
    r = demo_index.get(path, {"Range": "bytes=10-29"})
    assert r.status == 206
    assert r.body == full[10:30]
    assert r.header("content-range") == f"bytes 10-29/{len(full)}"
    tail = demo_index.get(path, {"Range": f"bytes=-{22}"})
    assert tail.status == 206
    assert tail.body == full[-22:]  # how lazy wheel readers find the zip's central directory


# --- hardening --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_only_get_and_head(demo_index: LocalIndex, method: str) -> None:
    target = "/simple/pypapo-chain-c/" + wheel("pypapo-chain-c", "1.0")
    before = (demo_index.repo / target.lstrip("/")).read_bytes()
    r = http_request(demo_index.port, target, method=method, body=b"x" if method in ("POST", "PUT") else b"")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"
    assert (demo_index.repo / target.lstrip("/")).read_bytes() == before
    head = demo_index.get(target, method="HEAD")
    assert head.status == 200
    assert head.body == b""


def test_no_server_version(demo_index: LocalIndex) -> None:
    r = demo_index.get("/simple/")
    assert r.header("server") == "nginx"
    assert b"nginx/" not in demo_index.get("/no-such-page/").body


@pytest.fixture
def secrets_next_to_repo(demo_index: LocalIndex) -> bytes:
    """A file outside the repository and dotfiles inside it: none may be served."""
    marker = b"pypapo-secret-must-not-leak"
    (demo_index.repo.parent / "secret.txt").write_bytes(marker)
    (demo_index.repo / ".pypapo.lock").write_bytes(marker)
    (demo_index.repo / "simple" / ".hidden").write_bytes(marker)
    (demo_index.repo / "simple" / "pypapo-chain-c" / ".git").mkdir(exist_ok=True)
    (demo_index.repo / "simple" / "pypapo-chain-c" / ".git" / "config").write_bytes(marker)
    (demo_index.repo / "outside-simple.txt").write_bytes(marker)
    return marker


@pytest.mark.parametrize(
    "path",
    [
        "/.pypapo.lock",
        "/simple/.pypapo.lock",
        "/simple/.hidden",
        "/.hidden",
        "/simple/pypapo-chain-c/.git/config",
        "/outside-simple.txt",
        "/simple/../outside-simple.txt",
        "/simple/../../secret.txt",
        "/simple/%2e%2e/outside-simple.txt",
        "/simple/%2e%2e/%2e%2e/secret.txt",
        "/simple/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/simple/pypapo-chain-c/..%2f..%2f..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/simple/pypapo-chain-c/%2e%2e/%2e%2e/.pypapo.lock",
        "/simple/%2e/.pypapo.lock",
        "/simple/pypapo-chain-c/..;/..;/secret.txt",
        "/simple/..\\..\\secret.txt",
        "//etc/passwd",
        "/simple//etc/passwd",
        "/simple/%00/../.pypapo.lock",
    ],
)
def test_nothing_outside_the_index(demo_index: LocalIndex, secrets_next_to_repo: bytes, path: str) -> None:
    r = demo_index.get(path)
    assert r.status in (301, 400, 403, 404), (path, r.status)
    assert secrets_next_to_repo not in r.body
    assert b"root:" not in r.body
    if r.status == 301:  # a normalization redirect stays on this index and leads nowhere secret
        location = urllib.parse.urljoin(path, r.header("location") or "")
        # A path on this server (the index at /simple/ or its mirror at /), never another host.
        assert location.startswith("/") and not location.startswith("//")
        assert secrets_next_to_repo not in demo_index.get(location).body


def test_huge_headers_are_refused(demo_index: LocalIndex) -> None:
    big = demo_index.get("/simple/", {"X-Filler": "a" * 20000})
    assert big.status in (400, 431, 494)
    many = http_request(demo_index.port, "/simple/", headers={f"X-Filler-{i}": "b" * 4000 for i in range(12)})
    assert many.status in (400, 431, 494)
    long_url = demo_index.get("/simple/" + "a" * 20000 + "/")
    assert long_url.status in (400, 414)
    # A normal client's headers still pass.
    ok = demo_index.get("/simple/", {"User-Agent": "pip/25.0 " + '{"ci":null}' * 50, "Accept": PIP_ACCEPT})
    assert ok.status == 200


def test_request_body_is_refused(demo_index: LocalIndex) -> None:
    r = http_request(demo_index.port, "/simple/", method="GET", body=b"x" * 4096)
    assert r.status == 413


def test_healthz_ok_when_the_index_is_there(demo_index: LocalIndex) -> None:
    r = demo_index.get("/healthz")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.header("cache-control") == "no-store"


# --- mount gone -------------------------------------------------------------------------------------


def _assert_unavailable(index: LocalIndex) -> None:
    for path in (
        "/simple/",
        "/",
        "/simple/pypapo-chain-c/",
        "/pypapo-chain-c/",
        "/healthz",
        "/healthz/conda",
    ):
        r = index.get(path, {"Accept": PIP_ACCEPT})
        assert r.status == 503, path
    r = index.get("/simple/pypapo-chain-c/" + wheel("pypapo-chain-c", "1.0"))
    assert r.status == 503
    assert b"unavailable" in index.get("/healthz").body
    assert index.get("/livez").status == 503  # a lost mount is this machine's: the autohealer may act
    assert index.get("/simple/").header("retry-after")


def test_empty_mountpoint_is_503_never_an_empty_index(serve_repo, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    index = serve_repo(mountpoint)
    _assert_unavailable(index)


def test_repository_vanishing_while_served_turns_503(serve_repo, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    assert index.get("/simple/pypapo-chain-c/").status == 200
    # What a dead gcsfuse looks like from NGINX: the tree under the mountpoint is gone.
    hidden = tmp_path / "hidden"
    (repo / "simple").rename(hidden)
    _assert_unavailable(index)
    hidden.rename(repo / "simple")
    assert index.get("/simple/pypapo-chain-c/").status == 200


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount")
def test_real_unmount_turns_503(serve_repo, tmp_path: Path) -> None:
    """A real mount over the mountpoint, then a lazy unmount (what fusermount3 -uz does)."""
    source = tmp_path / "bucket"
    publish_demo_set(source, tmp_path / "dists")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mountpoint)]).returncode != 0:
        pytest.skip("bind mounts are not permitted here")
    try:
        index = serve_repo(mountpoint)
        assert index.get("/simple/pypapo-chain-c/").status == 200
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        _assert_unavailable(index)
        subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mountpoint)], check=True)
        assert index.get("/simple/pypapo-chain-c/").status == 200
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


# --- a page with no bytes ---------------------------------------------------------------------------
# The engine never writes one, but an object can become 0 bytes on the bucket (a hand upload, another
# tool, a truncation): NGINX answers 503 with the reason, never an empty index with 200.

ROOT_PATHS = ("/simple/", "/", "/simple/index.html", "/simple/index.json", "/index.html")


@pytest.mark.parametrize("page", ["simple/index.html", "simple/index.json"])
def test_a_zero_byte_root_page_is_503_and_unhealthy_until_rewritten(
    serve_repo, tmp_path: Path, page: str
) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    good = (repo / page).read_bytes()
    with open(repo / page, "r+b") as fh:  # truncated in place, as another writer would leave it
        fh.truncate(0)
    for accept in (PIP_ACCEPT, UV_ACCEPT, "text/html", None):
        for path in ROOT_PATHS:
            r = index.get(path, {"Accept": accept} if accept else None)
            assert r.status == 503, (path, accept, r.status, r.body)
            assert f"{page} is empty (0 bytes)".encode() in r.body, r.body
            assert "provision reindex" in r.body.decode()
            assert r.header("content-type") == "text/plain; charset=utf-8"  # not the page's type
            assert r.header("cache-control") == "no-store"
    health = index.get("/healthz")
    assert health.status == 503
    assert health.body == (
        f"unavailable: {page} is empty (0 bytes) (run `provision reindex` on the repository)\n".encode()
    )
    # ... yet the machine is live: the page is in the bucket all replicas share, recreating it is no fix
    assert (index.get("/livez").status, index.get("/livez").body) == (200, b"live\n")
    # ... and the conda channel's audience is not pip's: its health is its own.
    assert (index.get("/healthz/conda").status, index.get("/healthz/conda").body) == (200, b"ok\n")
    # One broken root is no reason to withhold the projects: their pages and files still serve.
    assert index.get("/simple/pypapo-chain-c/", {"Accept": PIP_ACCEPT}).status == 200
    assert index.get("/simple/pypapo-chain-c/" + wheel("pypapo-chain-c", "1.0")).status == 200

    (repo / page).write_bytes(good)  # rewritten (reindex, the next publish): served again, no restart
    assert index.get("/healthz").body == b"ok\n"
    for accept, expected in ((PIP_ACCEPT, JSON), ("text/html", "text/html; charset=utf-8")):
        for path in ("/simple/", "/"):
            r = index.get(path, {"Accept": accept})
            assert (r.status, r.header("content-type")) == (200, expected), (path, accept)
            assert r.body


def test_a_missing_root_json_beside_its_html_is_503_and_unhealthy(serve_repo, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    (repo / "simple/index.json").unlink()
    index = serve_repo(repo)
    assert index.process.stderr is not None
    os.set_blocking(index.process.stderr.fileno(), False)  # what serve printed before nginx came up
    warning = (index.process.stderr.read() or b"").decode()
    assert f"warning: {repo / 'simple/index.json'} missing or empty" in warning, warning
    assert "provision reindex --repo" in warning
    r = index.get("/simple/", {"Accept": PIP_ACCEPT})
    assert (r.status, r.body) == (
        503,
        b"pypapo: simple/index.json is missing: the repository needs `provision reindex`\n",
    )
    assert index.get("/healthz").status == 503


@pytest.mark.parametrize(
    ("page", "accept"), [("index.json", PIP_ACCEPT), ("index.json", UV_ACCEPT), ("index.html", "text/html")]
)
def test_a_zero_byte_project_page_is_503_until_rewritten(
    serve_repo, tmp_path: Path, page: str, accept: str
) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    path = repo / "simple/pypapo-chain-c" / page
    good = path.read_bytes()
    path.write_bytes(b"")
    for url in ("/simple/pypapo-chain-c/", f"/simple/pypapo-chain-c/{page}", "/pypapo-chain-c/"):
        r = index.get(url, {"Accept": accept})
        assert (r.status, r.body) == (
            503,
            f"pypapo: simple/pypapo-chain-c/{page} is empty (0 bytes): the repository needs "
            "`provision reindex`\n".encode(),
        ), url
        assert r.header("content-type") == "text/plain; charset=utf-8"
    # The other projects, the root and the health check are untouched by one project's page.
    assert index.get("/simple/pypapo-chain-b/", {"Accept": accept}).status == 200
    assert index.get("/simple/", {"Accept": accept}).status == 200
    assert index.get("/healthz").body == b"ok\n"
    path.write_bytes(good)
    r = index.get("/simple/pypapo-chain-c/", {"Accept": accept})
    assert r.status == 200 and r.body == good


def test_a_page_that_does_not_exist_is_404_not_503(demo_index: LocalIndex) -> None:
    """The guard judges pages that exist: a missing one is what NGINX says of any missing file. A 503
    would have pip retry it, and look like an outage."""
    for path in ("/simple/no-such/index.json", "/simple/no-such/index.html", "/no-such/index.json"):
        r = demo_index.get(path, {"Accept": PIP_ACCEPT})
        assert r.status == 404, (path, r.status, r.body)


def test_pip_says_503_for_a_zero_byte_project_page(serve_repo, tmp_path: Path) -> None:
    """Real pip sees a 503 for the page (says so with -vv; its short summary is "from versions: none"
    either way), and downloads nothing."""
    from tests.appliance.test_clients import clean_env

    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    (repo / "simple/pypapo-chain-c/index.json").write_bytes(b"")
    env = clean_env(tmp_path)
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "--isolated", "download", "--no-cache-dir", "--no-deps", "-vv",
            "--retries", "0", "--dest", str(tmp_path / "out"), "--index-url", index.url, "pypapo-chain-c",
        ],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert '"GET /simple/pypapo-chain-c/ HTTP/1.1" 503' in proc.stdout, proc.stdout
    assert ("GET", "/simple/pypapo-chain-c/", 503) in index.requests()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_zero_byte_file_is_503_not_an_empty_file_cached_for_a_year(serve_repo, tmp_path: Path) -> None:
    """A distribution or .metadata file that became 0 bytes on the bucket is served, when it serves,
    as immutable for a year: a browser or a proxy on the way would keep the empty file after the
    repair. It is a 503 naming the file, which no cache keeps; repaired, it serves again."""
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    name = wheel("pypapo-chain-c", "1.0")
    for broken in (
        repo / "simple/pypapo-chain-c" / name,
        repo / "simple/pypapo-chain-c" / f"{name}.metadata",
    ):
        kept = broken.read_bytes()
        broken.write_bytes(b"")
        r = index.get(f"/simple/pypapo-chain-c/{broken.name}")
        assert (r.status, r.header("cache-control")) == (503, "no-store"), r.status
        assert r.body == (
            f"pypapo: simple/pypapo-chain-c/{broken.name} is empty (0 bytes): the repository needs "
            "`provision reindex`\n".encode()
        )
        broken.write_bytes(kept)
        r = index.get(f"/simple/pypapo-chain-c/{broken.name}")
        assert (r.status, r.body) == (200, kept)
        assert r.header("cache-control") == "public, max-age=31536000, immutable"
    assert index.get("/simple/pypapo-chain-c/no-such-1.0-py3-none-any.whl").status == 404


# --- the CLI ----------------------------------------------------------------------------------------


def test_serve_without_nginx_says_how_to_install(tmp_path: Path) -> None:
    from tests.fixtures.nginx import PROVISION

    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    # Hide the real binary: find_nginx also looks at fixed paths, so run with those paths shadowed.
    proc = subprocess.run(
        [
            os.fspath(Path(PROVISION).with_name("python")),
            "-c",
            "import provisioner.appliance.serve as s; s.NGINX_CANDIDATES = (); "
            "import sys; from provisioner.cli import main; sys.argv=['provision','serve','--repo','.'];"
            " main()",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "apt-get install nginx" in lines[0]


def test_serve_without_njs_says_how_to_install(tmp_path: Path) -> None:
    """nginx without its njs module cannot load the appliance's config: one line naming the package."""
    from tests.fixtures.nginx import PROVISION

    proc = subprocess.run(
        [
            os.fspath(Path(PROVISION).with_name("python")),
            "-c",
            f"import provisioner.appliance.serve as s; s.NJS_MODULE_PATH = {str(tmp_path / 'none.so')!r}; "
            "import sys; from provisioner.cli import main; sys.argv=['provision','serve','--repo','.'];"
            " main()",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "apt-get install libnginx-mod-http-js" in lines[0]


def test_port_in_use_is_one_clear_line(demo_index: LocalIndex, tmp_path: Path) -> None:
    from tests.fixtures.nginx import PROVISION

    proc = subprocess.run(
        [PROVISION, "serve", "--repo", str(demo_index.repo), "--port", str(demo_index.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen on 127.0.0.1:{demo_index.port}")
    assert "--port" in proc.stderr


def test_a_proxy_in_the_environment_is_never_asked_for_nginx_s_health(
    nginx_bin: str, tmp_path: Path, proxy: ForwardProxy
) -> None:
    """Behind a corporate proxy (http_proxy set, localhost not in no_proxy), `provision serve`
    asked the proxy whether its own nginx was up: any answer of the proxy's passed for nginx's (and
    one that cannot be reached failed the serve after 15 s)."""
    from provisioner.appliance.serve import free_port
    from tests.fixtures.nginx import PROVISION

    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    port = free_port()
    proc = subprocess.Popen(
        [PROVISION, "serve", "--repo", str(repo), "--port", str(port)],
        env={**os.environ, **proxy.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"serving {repo} at http://127.0.0.1:{port}/simple/")
        assert http_request(port, "/simple/pypapo-chain-c/").status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert proxy.asked == []
    # The user's own pip would ask the proxy: serve says how to keep it off.
    assert "no_proxy does not name 127.0.0.1" in err and "export no_proxy=127.0.0.1,localhost,::1" in err


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_vm_config_serves_as_an_unprivileged_user() -> None:
    """The VM runs NGINX as a DynamicUser: its config must need no root (no `user`, private paths)."""
    import tempfile

    from provisioner.appliance.render import (
        JOURNAL_ACCESS_LOG,
        NGINX_CONFIG_PATH,
        NGINX_RUNTIME_DIR,
        PAGE_GUARD_PATH,
        ApplianceConfig,
        render_vm_files,
    )
    from provisioner.appliance.serve import free_port
    from tests.fixtures.nginx import _wait_for

    port = free_port()
    cfg = ApplianceConfig(bucket="b-1", port=port, mount_path="/mnt/pypapo-test")
    base = Path(tempfile.mkdtemp(prefix="pypapo-unpriv-", dir="/tmp"))
    proc = None
    try:
        base.chmod(0o755)
        repo, runtime = base / "repo", base / "run"
        publish_demo_set(repo, base / "dists")
        runtime.mkdir()
        shutil.chown(runtime, "nobody")
        subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
        vm_files = render_vm_files(cfg)
        (base / "page-guard.js").write_text(vm_files[PAGE_GUARD_PATH])
        conf = (
            vm_files[NGINX_CONFIG_PATH]
            .replace(NGINX_RUNTIME_DIR, str(runtime))
            .replace(cfg.mount_path, str(repo))
            .replace(JOURNAL_ACCESS_LOG, "/dev/null")
            .replace(PAGE_GUARD_PATH, str(base / "page-guard.js"))
        )
        (base / "nginx.conf").write_text(conf)
        (base / "nginx.conf").chmod(0o644)
        proc = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/sbin/nginx",
             "-e", "stderr", "-c", str(base / "nginx.conf"), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        _wait_for(port, proc)  # type: ignore[arg-type]
        r = http_request(port, "/simple/pypapo-chain-c/", headers={"Accept": PIP_ACCEPT})
        assert r.status == 200
        assert r.header("content-type") == JSON
    finally:
        if proc is not None:
            proc.terminate()
            _out, err = proc.communicate(timeout=20)
            assert b"[emerg]" not in err and b"[warn]" not in err, err
        shutil.rmtree(base, ignore_errors=True)


# --- behind a reverse proxy under a path prefix ------------------------------------------------------


def test_redirects_work_behind_a_path_prefix(demo_index: LocalIndex, prefix_proxy, tmp_path: Path) -> None:
    """/pypi/ -> the index: every redirect lands on the index under /pypi/, never on /simple/."""
    import urllib.request

    proxy = prefix_proxy(demo_index.port, "/pypi/")
    for path, lands in [
        ("/pypi/simple", "/pypi/simple/"),
        ("/pypi/simple/Acme_Lib/", "/pypi/simple/acme-lib/"),  # no such project: still under /pypi/
        ("/pypi/simple/Mixed.Case_Name/", "/pypi/simple/mixed-case-name/"),
        ("/pypi/simple/pypapo-chain-c", "/pypi/simple/pypapo-chain-c/"),
        ("/pypi/Mixed_Case.NAME", "/pypi/mixed-case-name/"),
    ]:
        r = proxy.get(path)
        assert r.status == 301, (path, r.status)
        assert urllib.parse.urljoin(path, r.header("location") or "") == lands, path
    for path, lands in [
        ("/pypi/simple", "/pypi/simple/"),
        ("/pypi/simple/Mixed.Case_Name/", "/pypi/simple/mixed-case-name/"),
        ("/pypi/simple/PYPAPO_Chain__C", "/pypi/simple/pypapo-chain-c/"),
    ]:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}{path}") as resp:
            assert resp.status == 200
            assert urllib.parse.urlsplit(resp.url).path == lands
    # A real client through the prefix, given the index URL without its trailing slash.
    target = tmp_path / "target"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "--isolated", "install", "--no-cache-dir", "--no-deps",
            "--target", str(target), "--index-url", f"http://127.0.0.1:{proxy.port}/pypi/simple",
            "MIXED_case.Name",
        ],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "mixed_case_name").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker user is chosen only when serve runs as root")
def test_serve_as_root_runs_unprivileged_workers(tmp_path: Path) -> None:
    """`provision serve` run as root: its NGINX workers are `nobody` for a readable root-owned repository."""
    from provisioner.appliance.serve import running

    top = Path(tempfile.mkdtemp(prefix="pypapo-serve-root-", dir="/var/tmp"))
    try:
        top.chmod(0o755)
        repo = top / "repo"
        publish_demo_set(repo, tmp_path / "dists")
        with running(repo, port=0, quiet=True) as server:
            with urllib.request.urlopen(f"{server.url}pypapo-chain-c/", timeout=10) as resp:
                assert resp.status == 200
            master = server.process.pid
            workers = [
                int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _ppid(p) == master
            ]  # fmt: skip
            assert workers, "no nginx worker processes"
            for pid in workers:
                uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
                assert uid != 0, f"nginx worker {pid} runs as root"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_ctrl_c_with_a_stalled_download_stops_within_nginx_s_own_shutdown_timeout(
    serve_repo, tmp_path: Path
) -> None:
    """A client that stopped reading mid-download (a laptop gone to sleep through the tunnel) must not
    hold a graceful stop until send_timeout: NGINX closes it after worker_shutdown_timeout (5 s),
    before `provision serve` falls back to SIGTERM (at 10 s). The same config stops the VM's unit."""
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(sample.wheel_bytes("big", "1.0", extra_files={"big/blob.bin": os.urandom(16_000_000)}))
    repo = tmp_path / "repo"
    Repository.open(str(repo)).publish([wheel])
    index = serve_repo(repo)
    with socket.create_connection(("127.0.0.1", index.port), timeout=10) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /simple/big/{wheel.name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")  # then it reads no more
        started = time.monotonic()
        index.process.send_signal(signal.SIGINT)
        index.process.wait(30)
        took = time.monotonic() - started
    assert index.process.returncode == 0
    assert took < 9, f"provision serve took {took:.1f} s to stop with a stalled download"

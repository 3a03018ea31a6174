"""The site as nginx serves it (the VM's config through `provision serve`): headers, types, gzip, the
503 rule, and the browse URL that `provision serve` prints."""

from __future__ import annotations

import gzip
import signal
import subprocess
from pathlib import Path

import pytest

from provisioner.appliance.serve import free_port
from provisioner.repo.engine import Repository
from provisioner.repo.site import paging
from provisioner.repo.site.render import content_security_policy
from tests.fixtures.nginx import PROVISION, LocalIndex, publish_demo_set


def test_site_headers_and_content_types(demo_index: LocalIndex) -> None:
    page = demo_index.get("/ui/")
    assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
    csp = page.header("content-security-policy") or ""
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp  # fmt: skip
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.header("x-content-type-options") == "nosniff"
    assert page.header("referrer-policy") == "no-referrer"
    assert page.header("cache-control") == "max-age=0, must-revalidate"
    assert b"pypapo-yank-me" in page.body
    types = {
        "/ui/site.css": "text/css; charset=utf-8",
        "/ui/site.js": "text/javascript; charset=utf-8",
        "/ui/search-0.json": "application/json; charset=utf-8",
        "/ui/favicon.svg": "image/svg+xml",
        "/ui/pypapo-yank-me/": "text/html; charset=utf-8",
    }
    for path, ctype in types.items():
        r = demo_index.get(path)
        assert (r.status, r.header("content-type")) == (200, ctype), path
        assert r.header("content-security-policy") == csp and r.header("x-content-type-options") == "nosniff"
    gz = demo_index.get("/ui/", headers={"Accept-Encoding": "gzip"})
    assert gz.header("content-encoding") == "gzip"
    assert gzip.decompress(gz.body) == page.body
    # The site is beside the index, which is unchanged (pip and poetry see no difference).
    assert demo_index.get("/simple/pypapo-yank-me/").header("content-security-policy") is None
    r = demo_index.get("/ui")
    assert (r.status, r.header("location")) == (301, "/ui/")
    assert demo_index.get("/ui/no-such-project/").status == 404
    assert demo_index.get("/ui/.pypapo.lock").status == 404


def test_site_answers_503_when_the_mount_is_gone(serve_repo, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    assert index.get("/ui/").status == 200
    hidden = tmp_path / "hidden"
    (repo / "simple").rename(hidden)  # what a dead gcsfuse looks like: the sentinel is gone
    for path in ("/ui/", "/ui/site.css", "/ui/pypapo-yank-me/"):
        r = index.get(path)
        assert r.status == 503 and r.header("retry-after"), path
    hidden.rename(repo / "simple")
    assert index.get("/ui/").status == 200


# The engine never writes one, but a site file can become 0 bytes on the bucket (a hand upload, another
# tool, a truncation): a browser would show a blank page (or an unstyled one, a search that finds nothing).
# The pages are served from their NAME.gz (what the 503 names: the object to look at).
SITE_FILES = {
    "/ui/": "ui/index.html.gz",
    "/ui/search-0.json": "ui/search-0.json.gz",
    "/ui/older-1.html": "ui/older-1.html.gz",
    "/ui/pypapo-yank-me/": "ui/pypapo-yank-me/index.html.gz",
    "/ui/site.css": "ui/site.css",
    "/ui/site.js": "ui/site.js",
}


def _paged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo set's repository, its list in pages of two (older pages too)."""
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    Repository.open(str(repo)).reindex()
    return repo


def test_a_zero_byte_site_file_is_503_until_rewritten(
    serve_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _paged(tmp_path, monkeypatch)
    index = serve_repo(repo)
    for url, name in SITE_FILES.items():
        path = repo / name
        good = path.read_bytes()
        with open(path, "r+b") as fh:
            fh.truncate(0)
        for request in {url, f"/{name.removesuffix('.gz')}"}:
            r = index.get(request)
            assert (r.status, r.body) == (
                503,
                f"pypapo: {name} is empty (0 bytes): the repository needs `provision reindex`\n".encode(),
            ), request
            assert r.header("content-type") == "text/plain; charset=utf-8"
        # One page of the site is no reason to call the index unhealthy, nor to withhold the rest.
        assert (index.get("/healthz").status, index.get("/simple/").status) == (200, 200)
        other = "/ui/pypapo-chain-c/"
        assert index.get(other).status == 200
        path.write_bytes(good)
        r = index.get(url, headers={"Accept-Encoding": "gzip"} if name.endswith(".gz") else None)
        assert (r.status, r.body) == (200, good), url  # (the stored bytes, gzip'd or not)
        assert r.header("content-security-policy") == content_security_policy()
    # What is not there is still a 404, not a 503.
    for url in ("/ui/no-such-project/index.html", "/ui/no-such-project/"):
        assert index.get(url).status == 404, url


# The site's pages are stored gzip'd (NAME.gz): nginx's gzip_static and gunzip serve each client its form.
SITE_PAGES = {
    "/ui/": ("ui/index.html.gz", "text/html; charset=utf-8"),
    "/ui/index.html": ("ui/index.html.gz", "text/html; charset=utf-8"),
    "/ui/older-1.html": ("ui/older-1.html.gz", "text/html; charset=utf-8"),
    "/ui/search-0.json": ("ui/search-0.json.gz", "application/json; charset=utf-8"),
    "/ui/pypapo-yank-me/": ("ui/pypapo-yank-me/index.html.gz", "text/html; charset=utf-8"),
    "/ui/pypapo-yank-me/index.html": ("ui/pypapo-yank-me/index.html.gz", "text/html; charset=utf-8"),
}


def test_the_gzipd_pages_are_served_gzipd_to_a_browser_and_plain_to_a_client_without_gzip(
    serve_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _paged(tmp_path, monkeypatch)
    assert not (repo / "ui" / "index.html").exists() and not (repo / "ui" / "search-0.json").exists()
    index = serve_repo(repo)
    browser = {"Accept-Encoding": "gzip, deflate, br"}
    for url, (name, ctype) in SITE_PAGES.items():
        stored = (repo / name).read_bytes()
        gz = index.get(url, headers=browser)
        assert (gz.status, gz.header("content-encoding"), gz.body) == (200, "gzip", stored), url
        plain = index.get(url)  # no Accept-Encoding: curl, a script, a proxy that strips it
        want = (200, None, gzip.decompress(stored))
        assert (plain.status, plain.header("content-encoding"), plain.body) == want, url
        for r in (gz, plain):
            assert r.header("content-type") == ctype, url
            assert r.header("content-security-policy") == content_security_policy(), url
            assert r.header("vary") == "Accept-Encoding", url  # a cache keeps the two apart
            assert (r.header("x-content-type-options"), r.header("x-frame-options")) == ("nosniff", "DENY")
            assert r.header("cache-control") == "max-age=0, must-revalidate", url
        # A browser revalidates (ETag): 304 while the page is unchanged.
        etag = gz.header("etag")
        assert etag
        again = index.get(url, headers={**browser, "If-None-Match": etag})
        assert (again.status, again.body) == (304, b""), url
    # No listing of ui/, no way to the stored name's own type, nothing for a project that is not there.
    for url in ("/ui/no-such-project/", "/ui/no-such-project/index.html", "/ui/older-99.html"):
        assert index.get(url, headers=browser).status == 404, url
    # Nor the engine's own objects under ui/: a page by its stored name (served that way it is
    # untyped, and its 0-byte guard is bypassed), a release-info cache, the remote-images setting.
    (repo / "ui" / "remote-images").write_bytes(b"on\n")
    internal = [
        p
        for p in (repo / "ui").rglob("*")
        if p.is_file() and p.name not in ("site.css", "site.js", "favicon.svg")
    ]
    caches = [p for p in internal if p.name.endswith(".whl.json")]
    assert caches and any(p.name.endswith(".gz") for p in internal)
    for path in internal:
        url = "/ui/" + path.relative_to(repo / "ui").as_posix()
        assert index.get(url, headers=browser).status == 404, url


def test_a_site_an_older_pypapo_stored_plain_is_served_until_rewritten(serve_repo, tmp_path: Path) -> None:
    """After a rollout of this version's appliance, a bucket whose site an older pypapo wrote (plain
    pages, until the first publish or reindex of this version) keeps being served as it is."""
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    for packed in [p for p in (repo / "ui").rglob("*.gz")]:
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    index = serve_repo(repo)
    for url in ("/ui/", "/ui/pypapo-yank-me/", "/ui/search-0.json"):
        r = index.get(url)
        assert r.status == 200 and r.body, url
    (repo / "ui" / "index.html").write_bytes(b"")
    r = index.get("/ui/")
    reason = b"pypapo: ui/index.html is empty (0 bytes): the repository needs `provision reindex`\n"
    assert (r.status, r.body) == (503, reason)


def test_the_policy_allows_https_images_exactly_while_the_repository_shows_them(
    serve_repo, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    index = serve_repo(repo)
    paths = ("/ui/", "/ui/site.css", "/ui/pypapo-yank-me/", "/ui/search-0.json")

    def headers() -> set[tuple[str, str | None, str | None, str | None, str | None]]:
        out = set()
        for path in paths:
            r = index.get(path)
            assert r.status == 200, path
            csp = r.header("content-security-policy")
            out.add((csp, r.header("x-content-type-options"), r.header("x-frame-options"),
                     r.header("referrer-policy"), r.header("cache-control")))  # fmt: skip
        return out

    base = ("nosniff", "DENY", "no-referrer", "max-age=0, must-revalidate")
    assert headers() == {(content_security_policy(), *base)}
    assert "img-src 'self';" in content_security_policy()
    Repository.open(str(repo)).reindex(site_remote_images=True)
    # Every other header stays (the switch is an nginx `if`, whose block inherits them).
    assert headers() == {(content_security_policy(remote_images=True), *base)}
    assert "img-src 'self' https:;" in content_security_policy(remote_images=True)
    Repository.open(str(repo)).reindex(site_remote_images=False)
    assert headers() == {(content_security_policy(), *base)}


def test_serve_prints_the_browse_url(nginx_bin: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_demo_set(repo, tmp_path / "dists")
    port = free_port()
    proc = subprocess.Popen(
        [
            PROVISION,
            "serve",
            "--repo",
            str(repo),
            "--port",
            str(port),
            "--access-log",
            str(tmp_path / "a.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[1] == f"browse: http://127.0.0.1:{port}/ui/"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)

"""The site in a real browser: Debian's headless Chromium against `provision serve` (Debian's nginx with
the appliance's config) over a repository the engine wrote.

The list shows the projects and search filters them as you type; a project page shows the README's
headings and the yanked version with its reason; every link resolves; a hostile README runs nothing
and makes no request outside the server (the browser's own network log, a canary server the README
points at, and nginx's access log all say so); the pages pass axe-core (from the npm registry,
installed by bootstrap) and our own checks of labels, headings and contrast. Screenshots of the list
and a project page, light and dark, land in tests/artifacts/.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import ipaddress
import itertools
import re
import ssl
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from provisioner.appliance import sample
from provisioner.repo.engine import Repository
from tests.fixtures.nginx import http_request
from tests.repo.test_site import HOSTILE_MARKDOWN

pytestmark = pytest.mark.timeout(300)

AXE = Path(__file__).resolve().parents[2] / ".venv" / "npm" / "node_modules" / "axe-core" / "axe.min.js"

README = """# Acme tools

[![PyPI version](https://img.shields.io/pypi/v/acme-tools.svg)](https://example.com/acme)
[![](https://codecov.io/gh/acme/acme-tools/graph/badge.svg)](https://example.com/acme/coverage)

Command-line tools for acme.

## Installation

Use the snippets on this page.

## Usage

```python
import acme_tools
acme_tools.run()
```

> [!WARNING]
> Run it on a copy of your data first.
"""


class _Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 - shared by the server's handler instances

    def do_GET(self) -> None:
        _Canary.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canary() -> Iterator[tuple[str, list[str]]]:
    """A loopback server standing in for "anywhere outside pypapo": it must never be asked for anything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    _Canary.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Canary.hits
    server.shutdown()


def _wheel(dest: Path, name: str, version: str, **meta: object) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / sample.wheel_filename(name, version)
    path.write_bytes(sample.wheel_bytes(name, version, metadata=sample.core_metadata(name, version, **meta)))  # type: ignore[arg-type]
    return path


@pytest.fixture
def site_repo(tmp_path: Path, canary: tuple[str, list[str]]) -> Path:
    outside, _hits = canary
    repo, dists = tmp_path / "repo", tmp_path / "dists"
    hostile = HOSTILE_MARKDOWN.replace("https://tracker.invalid", outside).replace(
        "https://evil.invalid", outside
    )
    files = [
        _wheel(dists, "acme-core", "1.0", summary="The acme core library",
               description="Core\n====\n\nRun ``acme-core --check`` first.\n"),
        *[
            _wheel(
                dists,
                "acme-tools",
                f"1.{i}",
                summary="Command-line tools for acme",
                requires_python=">=3.9",
                requires_dist=["acme-core>=1", "requests>=2"],
                description=README,
                description_content_type="text/markdown",
                headers=["License-Expression: MIT", "Project-URL: Source, https://example.com/acme",
                         "Keywords: cli,automation"],
            )
            for i in range(3)
        ],
        _wheel(dists, "hostile", "1.0", summary="Nothing to see", description=hostile,
               description_content_type="text/markdown",
               headers=[f"Project-URL: Tracker, {outside}/link", "Project-URL: Js, javascript:alert(1)"]),
        sample.build_sdist(dists, "acme-core", "1.0"),
    ]  # fmt: skip
    r = Repository.open(str(repo))
    r.publish(files)
    r.set_yanked("acme-tools", "1.2", "broke the --json output")
    return repo


def _visible_projects(b: object) -> list[str]:
    """The rows shown: the page's own (`id="p-NAME"`) or the search's, rendered from the shards."""
    return [
        li.get_attribute("data-name") or li.get_attribute("id")[2:]
        for li in b.find_elements("css selector", "#projects > li, #results > li")  # type: ignore[attr-defined]
        if li.is_displayed()
    ]


def _shown(b: object, want: list[str], count: str | None = None) -> None:
    """Wait (the search loads its shards on first use; until then it filters the page's rows) until
    exactly `want` is shown, and the count says `count`."""
    from selenium.webdriver.support.ui import WebDriverWait

    def now(d: object) -> tuple[list[str], str | None]:
        text = d.find_element("id", "count").text if count is not None else None  # type: ignore[attr-defined]
        return _visible_projects(d), text

    try:
        WebDriverWait(b, 10).until(lambda d: now(d) == (want, count))
    except Exception:  # the assertion names what is shown instead
        assert now(b) == (want, count)


def _no_trouble(b: object, root: str) -> None:
    """No dialog, no console error, no request for anything but the server's own URLs."""
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = b.switch_to.alert.text  # type: ignore[attr-defined]
    assert b.execute_script("return window.__pwned === undefined")  # type: ignore[attr-defined]
    errors = [m for m in b.console() if m["level"] in ("SEVERE", "WARNING")]  # type: ignore[attr-defined]
    assert errors == []
    # Network requests only (not chrome:// nor data: URLs, which the browser answers itself).
    network = [u for u in b.requested_urls() if u.startswith(("http", "ws", "ftp"))]  # type: ignore[attr-defined]
    outside = [u for u in network if not u.startswith(root + "/")]
    assert outside == []


def test_the_list_and_search(site_repo: Path, serve_repo, browser) -> None:
    index = serve_repo(site_repo)
    b = browser()
    b.get(f"{index.root_url}/ui/")
    assert b.title == "Projects · pypapo"
    # Newest upload first: the last published project is on top.
    assert _visible_projects(b) == ["hostile", "acme-tools", "acme-core"]
    assert "acme-tools 1.1" in b.find_element("id", "p-acme-tools").text  # 1.2 is yanked
    search = b.find_element("id", "q")
    search.send_keys("acme")
    _shown(b, ["acme-tools", "acme-core"], "2 of 3 projects match")
    search.send_keys(" core")
    _shown(b, ["acme-core"])
    search.clear()
    search.send_keys("automation")  # a keyword, from the search index (not on the page)
    _shown(b, ["acme-tools"])
    from selenium.webdriver.common.keys import Keys

    search.send_keys(Keys.ENTER)  # Enter opens the first match
    assert urlsplit(b.current_url).path == "/ui/acme-tools/"
    b.back()
    b.find_element("tag name", "body").send_keys("/")  # "/" focuses the search box
    assert b.switch_to.active_element.get_attribute("id") == "q"
    b.switch_to.active_element.send_keys(Keys.ESCAPE)  # Esc clears: the page's own rows again
    _shown(b, ["hostile", "acme-tools", "acme-core"])
    _no_trouble(b, index.root_url)


@pytest.fixture
def paged_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Eleven projects in a list of pages of two (the head up to four rows): the head, and older
    pages the engine sealed as they were published, one project republished from the oldest."""
    from provisioner.repo.site import paging

    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    repo, dists = tmp_path / "repo", tmp_path / "dists"
    r = Repository.open(str(repo))
    for i in range(11):
        keywords = ["Keywords: needle"] if i == 0 else []
        # The shards are untrusted data too: a summary with markup must show as text in the results.
        summary = f"Project number {i}" + (' <img src=x onerror="window.__pwned = 1">' if i == 5 else "")
        r.publish([_wheel(dists, f"proj-{i:02d}", "1.0", summary=summary, headers=keywords)])
    r.publish([_wheel(dists, "proj-03", "2.0", summary="Project number 3, again")])
    assert len(_older_pages(repo)) >= 3
    return repo


def _older_pages(repo: Path) -> list[str]:
    """The URLs of the older pages, newest first, as the head lists them (sealed by the publishes:
    `older-<n>-<random>.html`)."""
    from provisioner.repo.site import paging

    cut = paging.head_layout(gzip.decompress((repo / "ui" / "index.html.gz").read_bytes()))
    assert cut is not None
    return [f"/ui/older-{page}.html" for page in reversed(cut.ids)]


def _newest_first() -> list[str]:
    return ["proj-03"] + [f"proj-{i:02d}" for i in range(10, -1, -1) if i != 3]


def test_search_finds_projects_on_every_page(paged_repo: Path, serve_repo, browser) -> None:
    from selenium.webdriver.common.keys import Keys

    index = serve_repo(paged_repo)
    b = browser()
    b.get(f"{index.root_url}/ui/")
    head = _visible_projects(b)
    assert head == _newest_first()[: len(head)] and "proj-00" not in head
    search = b.find_element("id", "q")
    search.send_keys("needle")  # a keyword of the oldest project, on the oldest page
    _shown(b, ["proj-00"], "1 of 11 projects match")
    assert not b.find_element("css selector", ".pp-pages").is_displayed()  # results span every page
    b.screenshot("site-list-search-older")
    search.clear()
    search.send_keys("project number")
    _shown(b, _newest_first())  # every project, newest upload first, from every page
    sneaky = b.find_element("css selector", '#results li[data-name="proj-05"]')
    assert 'Project number 5 <img src=x onerror="window.__pwned = 1">' in sneaky.text
    assert sneaky.find_elements("css selector", "img") == []
    search.send_keys(Keys.ENTER)
    assert urlsplit(b.current_url).path == "/ui/proj-03/"
    # The same from an older page: the shards are beside it, links relative.
    b.get(index.root_url + _older_pages(paged_repo)[-1])  # the oldest
    if AXE.exists():  # an older page passes as the head does
        b.execute_script(AXE.read_text())
        result = b.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations));"
        )
        assert [(v["id"], [n["target"] for n in v["nodes"]][:3]) for v in result] == []
    b.find_element("id", "q").send_keys("proj-10")
    _shown(b, ["proj-10"])
    b.find_element("css selector", "#results a").click()
    assert urlsplit(b.current_url).path == "/ui/proj-10/"
    _no_trouble(b, index.root_url)
    paths = {path for _m, path, _s in index.requests()}
    assert {f"/ui/search-{k:x}.json" for k in range(16)} <= paths


def test_every_page_of_the_list_without_javascript(paged_repo: Path, serve_repo, browser) -> None:
    """Older projects, reached by their links (rel=next) from the head to the oldest page and back
    (rel=prev): every project once, newest upload first, with no script at all."""
    index = serve_repo(paged_repo)
    b = browser()
    b.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    b.get(f"{index.root_url}/ui/")
    seen: list[str] = []
    pages = []
    while True:
        pages.append(urlsplit(b.current_url).path)
        assert not b.find_element("css selector", ".pp-search").is_displayed()
        seen += _visible_projects(b)
        older = b.find_elements("css selector", ".pp-pages a[rel=next]")
        if not older:
            break
        older[0].click()
    assert seen == _newest_first()
    assert pages == ["/ui/", *_older_pages(paged_repo)]
    b.screenshot("site-list-older-page-nojs")
    back = []
    while newer := b.find_elements("css selector", ".pp-pages a[rel=prev]"):
        newer[0].click()
        back.append(urlsplit(b.current_url).path)
    assert back == pages[-2::-1]


def test_a_project_page(site_repo: Path, serve_repo, browser) -> None:
    index = serve_repo(site_repo)
    b = browser()
    b.get(f"{index.root_url}/ui/acme-tools/")
    assert b.find_element("tag name", "h1").text == "acme-tools 1.1"
    headings = [h.text for h in b.find_elements("css selector", ".pp-readme h1, .pp-readme h2")]
    assert headings == ["Acme tools", "Installation", "Usage"]
    # An admonition (GitHub's `> [!WARNING]`, reST's `.. warning::`) is a box with its title, as on PyPI.
    warning = b.find_element("css selector", ".pp-readme .admonition.warning")
    assert warning.text == "Warning\nRun it on a copy of your data first."
    assert (
        warning.get_attribute("role") == "note"
        and warning.value_of_css_property("border-left-width") == "4px"
    )
    yanked = b.find_element("id", "v-1.2")
    assert "yanked" in yanked.text and "Yanked: broke the --json output" in yanked.text
    # The install snippet names the URL the page was reached at (the script fills it in).
    assert f"--index-url {index.url} acme-tools" in b.find_element("css selector", ".pp-quick code").text
    _no_trouble(b, index.root_url)
    # reStructuredText's ``inline literal`` is code, as on PyPI (not prose).
    b.get(f"{index.root_url}/ui/acme-core/")
    literal = b.find_element("css selector", ".pp-readme p .literal")
    assert literal.text == "acme-core --check" and "monospace" in literal.value_of_css_property("font-family")


def test_every_link_resolves(site_repo: Path, serve_repo, browser) -> None:
    index = serve_repo(site_repo)
    b = browser()
    seen: set[str] = set()
    for page in ("/ui/", "/ui/acme-tools/", "/ui/acme-core/", "/ui/hostile/"):
        b.get(index.root_url + page)
        for a in b.find_elements("tag name", "a"):
            href = a.get_attribute("href")  # resolved by the browser, as a click would
            if href and href.startswith(index.root_url):  # (sanitized links have no href)
                seen.add(href.split("#")[0])
    assert f"{index.root_url}/ui/acme-core/" in seen  # dependency link
    assert any(u.endswith(".whl") for u in seen) and any(u.endswith(".tar.gz") for u in seen)
    for url in sorted(seen):
        status = http_request(index.port, urlsplit(url).path).status
        assert status == 200, url


def test_a_hostile_readme_runs_nothing_and_asks_nobody(
    site_repo: Path,
    serve_repo,
    browser,
    canary: tuple[str, list[str]],
) -> None:
    index = serve_repo(site_repo)
    mark = index.log_mark()
    b = browser()
    b.get(f"{index.root_url}/ui/hostile/")
    assert b.find_element("css selector", ".pp-readme h1").text == "Totally normal"
    for el in b.find_elements("css selector", ".pp-readme p, .pp-readme a, .pp-readme details"):
        b.execute_script("arguments[0].scrollIntoView()", el)
        if el.is_displayed():
            el.click()  # a click on every link and summary: nothing may run or navigate away
            if urlsplit(b.current_url).path != "/ui/hostile/":
                b.back()
    _no_trouble(b, index.root_url)
    _outside, hits = canary
    assert hits == []
    paths = {path for _method, path, _status in index.requests(since=mark)}
    assert paths <= {"/ui/hostile/", "/ui/site.css", "/ui/site.js", "/ui/favicon.svg"}, paths


def _contrast(fg: str, bg: str) -> float:
    def lum(css: str) -> float:
        r, g, b = (int(x) / 255 for x in re.findall(r"[\d.]+", css)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_accessible_in_light_and_dark(site_repo: Path, serve_repo, browser, dark: bool) -> None:
    index = serve_repo(site_repo)
    b = browser()
    b.set_dark(dark)
    scheme = "dark" if dark else "light"
    for page, shot in (("/ui/", "list"), ("/ui/acme-tools/", "project")):
        b.get(index.root_url + page)
        assert b.execute_script("return matchMedia('(prefers-color-scheme: dark)').matches") is dark
        # Our own checks: one h1, no skipped heading level, every input labelled, text contrast >= 4.5.
        levels = [int(h.tag_name[1]) for h in b.find_elements("css selector", "h1, h2, h3, h4, h5, h6")]
        assert levels.count(1) >= 1 and levels[0] == 1
        assert all(b2 - a2 <= 1 for a2, b2 in itertools.pairwise(levels)), levels
        for field in b.find_elements("css selector", "input"):
            fid = field.get_attribute("id")
            assert b.find_elements("css selector", f"label[for='{fid}']") or field.get_attribute("aria-label")
        bg = b.execute_script("return getComputedStyle(document.body).backgroundColor")
        for selector in ("body", "a", ".pp-muted", ".pp-version", "time", ".pp-yanked"):
            for el in b.find_elements("css selector", selector)[:3]:
                fg = el.value_of_css_property("color")
                own = el.value_of_css_property("background-color")
                back = own if not own.endswith(", 0)") and own != "transparent" else bg
                assert _contrast(fg, back) >= 4.5, (page, scheme, selector, fg, back)
        if AXE.exists():
            b.execute_script(AXE.read_text())
            result = b.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations));"
            )
            assert [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result] == []
        b.screenshot(f"site-{shot}-{scheme}")
    b.set_viewport(390, 844)
    b.get(index.root_url + "/ui/acme-tools/")
    assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    b.screenshot(f"site-project-phone-{scheme}", full_page=False)
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed ({AXE}); `bash bootstrap` installs it from npm")


def test_long_unbroken_metadata_never_scrolls_the_page_sideways(tmp_path: Path, serve_repo, browser) -> None:
    """What real projects carry (sqlalchemy's `mariadb!=1.1.10,!=1.1.2,!=1.1.5,>=1.0.1; extra ==
    "mariadb-connector"`): a line with no break in it, in the sidebar's narrow column."""
    repo = tmp_path / "repo"
    long_req = 'mariadb!=1.1.10,!=1.1.2,!=1.1.5,>=1.0.1; extra == "mariadb-connector"'
    other = 'psycopg[binary]!=3.1.15,>=3.0.7; extra == "postgresql-psycopgbinary"'
    Repository.open(str(repo)).publish([
        _wheel(tmp_path / "d", "acme-db", "2.0", summary="A database toolkit", requires_python=">=3.11",
               requires_dist=[long_req, other],
               headers=["Project-URL: Changelog-for-every-release-since-the-first, https://example.com/"
                        "docs/changelog/every/release/since/the/first/one/ever/made.html",
                        "Keywords: postgresql-psycopgbinary-asyncio-aiosqlite-sqlcipher-pymysql"]),
    ])  # fmt: skip
    index = serve_repo(repo)
    b = browser()
    for width in (390, 820, 1024, 1280):
        b.set_viewport(width)
        b.get(f"{index.root_url}/ui/acme-db/")
        assert long_req in b.find_element("css selector", ".pp-deps").text
        wide = b.execute_script("return document.documentElement.scrollWidth")
        assert wide <= width, f"at {width} px the page is {wide} px wide"
    b.screenshot("site-project-long-metadata-1280", full_page=False)


def test_readable_without_javascript(site_repo: Path, serve_repo, browser) -> None:
    index = serve_repo(site_repo)
    b = browser()
    b.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    b.get(f"{index.root_url}/ui/")
    assert _visible_projects(b) == ["hostile", "acme-tools", "acme-core"]
    assert not b.find_element("css selector", ".pp-search").is_displayed()  # no dead search box
    b.get(f"{index.root_url}/ui/acme-tools/")
    assert "Yanked: broke the --json output" in b.find_element("id", "v-1.2").text


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


class _ImageHost(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 - shared by the server's handler instances
    png = b""

    def do_GET(self) -> None:
        _ImageHost.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host(tmp_path: Path) -> Iterator[tuple[str, list[str], str]]:
    """An https server on loopback standing in for a README's remote image host: (base URL, paths it
    was asked for, the Chromium flag that trusts its self-signed certificate and no other)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "image-host.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    trust = (
        "--ignore-certificate-errors-spki-list=" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _ImageHost.hits, _ImageHost.png = [], _png_1x1()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", _ImageHost.hits, trust
    server.shutdown()


def test_remote_images_load_only_once_the_repository_opts_in(
    tmp_path: Path, serve_repo, browser, image_host: tuple[str, list[str], str]
) -> None:
    host, hits, trust = image_host
    repo = tmp_path / "repo"
    text = f"# Pictures\n\n![the diagram]({host}/diagram.png)\n"
    Repository.open(str(repo)).publish(
        [
            _wheel(
                tmp_path / "dists",
                "pictures",
                "1.0",
                description=text,
                description_content_type="text/markdown",
            )
        ]
    )
    index = serve_repo(repo)
    b = browser(args=(trust,))

    def loaded() -> list[int]:
        b.get(f"{index.root_url}/ui/pictures/")
        assert b.find_element("css selector", ".pp-readme h1").text == "Pictures"
        return [
            b.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : -1", img)
            for img in b.find_elements("css selector", ".pp-readme img")
        ]

    # The default: no image on the page but its alt text (no broken-image icon), nothing asked of the host.
    assert loaded() == []
    shown = b.find_element("css selector", ".pp-readme p > [role='img']")
    assert (shown.text, shown.get_attribute("aria-label")) == ("the diagram", "the diagram")
    _no_trouble(b, index.root_url)
    assert hits == []

    # Opted in: the page carries the image and the policy lets the browser fetch it.
    Repository.open(str(repo)).reindex(site_remote_images=True)
    assert loaded() == [1]
    assert hits == ["/diagram.png"]
    assert [m for m in b.console() if m["level"] in ("SEVERE", "WARNING")] == []

    # A page still carrying the image once the setting is gone (a stale page: say, the setting removed
    # by hand): nginx's policy alone keeps the browser from asking the host.
    (repo / "ui" / "remote-images").unlink()
    hits.clear()
    assert loaded() == [0]
    assert hits == []
    assert any("Content Security Policy" in m["message"] for m in b.console())

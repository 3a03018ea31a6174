"""The site under ui/: READMEs rendered as PyPI renders them and made inert, pages that follow every
change of the engine, and a reindex that rebuilds them (tests/appliance/test_site_browser.py opens them
in a real browser)."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path

import pytest
import readme_renderer.markdown

from provisioner.appliance import sample
from provisioner.repo import layout
from provisioner.repo.engine import Repository
from provisioner.repo.site import apart, paging, readme, render
from provisioner.repo.site.packed import pack
from provisioner.repo.site.render import ListEntry, loads_aggregate
from tests.fixtures.gcs import RepoHandle

# Everything a README can try; none of it may survive as markup that runs, loads or submits.
HOSTILE_MARKDOWN = """# Totally normal

<script>window.__pwned = 1; alert(1)</script>
<img src="x" onerror="window.__pwned = 2">
<img src="https://tracker.invalid/pixel.png" alt="pixel">
<svg onload="window.__pwned = 3"><script>alert(3)</script></svg>
<iframe src="javascript:alert(4)"></iframe>
<iframe srcdoc="<script>parent.__pwned = 5</script>"></iframe>
<form action="https://evil.invalid/"><input name="password">
<button formaction="javascript:alert(6)">go</button></form>
<a href="javascript:alert(7)">click</a> <a href="JaVaScRiPt:alert(8)">CLICK</a>
<a href="jav&#x09;ascript:alert(9)">tab</a> <a href="data:text/html,<script>alert(10)</script>">data</a>
<a href="vbscript:msgbox(11)">vb</a>
<object data="https://evil.invalid/x.swf"></object><embed src="https://evil.invalid/x.swf">
<style>body { background: url(https://evil.invalid/bg.png) }</style>
<link rel="stylesheet" href="https://evil.invalid/x.css">
<meta http-equiv="refresh" content="0; url=https://evil.invalid/">
<base href="https://evil.invalid/">
<p style="background:url(https://evil.invalid/s.png)" onclick="alert(12)" onmouseover="alert(13)">hover</p>
<math><mi xlink:href="javascript:alert(14)">x</mi></math>
<details open ontoggle="window.__pwned = 15"><summary>s</summary></details>
<input autofocus onfocus="window.__pwned = 16">
<video><source onerror="window.__pwned = 17"></video>
<noscript><p title="</noscript><img src=x onerror=alert(18)>"></p></noscript>
<template><script>alert(19)</script></template>
<p class="pp-yanked pp-warn">a fake warning styled like the page</p>
<div id="q">an id that would clobber the search box</div>
<abbr title="<aside onclick=alert(22) x">t</abbr>
<abbr title='<pre onfocus=alert(23) autofocus '>p</abbr>
<aside class="admonition note pp-top" role="alert" onclick="alert(24)">a note dressed as the bar</aside>
<img alt="<script>alert(25)</script>" onerror="alert(25)"> <img alt='a" onmouseover="alert(26)' src="x">

[markdown js](javascript:alert(20)) ![remote](https://tracker.invalid/md.png)
[ref js][r]

[r]: javascript:alert(21)
"""

HOSTILE_RST = """Title
=====

.. raw:: html

   <script>alert(1)</script>

`js <javascript:alert(2)>`_

.. image:: https://tracker.invalid/rst.png
"""


class _Markup(HTMLParser):
    """Every element and attribute of a fragment (text, escaped markup included, is just text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


ALLOWED_TAGS = set(readme._TAGS)
ALLOWED_ATTRS = {"id", "href", "title", "rel", "alt", "width", "height", "align", "class", "colspan",
                 "rowspan", "start", "src", "open", "tabindex", "role"}  # fmt: skip


def inert_problems(fragment: str) -> list[str]:
    parser = _Markup()
    parser.feed(fragment)
    problems = []
    for tag, attrs in parser.tags:
        if tag == "span" and attrs.keys() == {"class", "role", "aria-label"} and attrs["class"] == "pp-noimg":
            if attrs["role"] != "img":
                problems.append(f"<span role={attrs['role']!r}>")
            continue  # ours (no README class, role or aria-label passes): an image not shown, as its alt
        if tag not in ALLOWED_TAGS:
            problems.append(f"<{tag}>")
        for name, value in attrs.items():
            if name not in ALLOWED_ATTRS:
                problems.append(f"<{tag} {name}>")
            if name in ("href", "src") and not value.startswith(("https://example.com", "#", "mailto:")):
                problems.append(f"<{tag} {name}={value!r}>")
            if name == "id" and not value.startswith(readme.ID_PREFIX):
                problems.append(f"<{tag} id={value!r}>")
            if name == "class" and "pp-" in value:
                problems.append(f"<{tag} class={value!r}>")
            if name == "role" and value != "note":  # ours, on a README's admonitions
                problems.append(f"<{tag} role={value!r}>")
    return problems


@pytest.mark.parametrize(("text", "kind"), [(HOSTILE_MARKDOWN, "text/markdown"), (HOSTILE_RST, "text/x-rst")])
def test_a_hostile_readme_renders_inert(text: str, kind: str) -> None:
    out = readme.render(text, kind)
    assert inert_problems(out) == []
    assert "Title" in out or "Totally normal" in out  # the text itself is still there
    assert inert_problems('<a href="javascript:x" onclick="y">') != []  # the check itself can fail


# READMEs whose rendering costs time quadratic in their size (measured at 250 kB, the most a
# README is rendered at: minutes, 9 s, 5 s, 3.5 s), or fails: each is shown as plain text, with why.
INTRICATE = {
    "blockquotes on one line": (">" * 100 + " deep", "text/markdown", "nests more than 32 levels"),
    "raw HTML nested": ("<div>" * 100 + "deep", "text/markdown", "nests more than 32 levels"),
    "inline HTML nested": ("a <b>" * 100, "text/markdown", "nests more than 32 levels"),
    # `<div/>` opens a div in HTML (self-closing is SVG's and MathML's); `</span>` closes no div.
    "raw HTML self-closed": ("<div/>" * 5000, "text/markdown", "nests more than 32 levels"),
    "raw HTML misclosed": ("<span><div></span>" * 100, "text/markdown", "nests more than 32 levels"),
    # What the tokenizer reads as one tag: `<` and `>` in quoted values, a name that starts with `=`.
    "raw HTML quoting '<'": ("a " + '<div title="<">' * 100, "text/markdown", "nests more than 32 levels"),
    "raw HTML quoting '>'": ("a " + "<div title='>'>" * 100, "text/markdown", "nests more than 32 levels"),
    "raw HTML named '='": ('<div ="">' * 100, "text/markdown", "nests more than 32 levels"),
    # Outside a table html5ever ignores `<td>`: it closes none of the divs before it.
    "table cells outside a table": ("a<div><div><td>" * 100, "text/markdown", "nests more than 32 levels"),
    "SVG of unquoted values": ("<svg>" + "<g a=b/>" * 100, "text/markdown", "nests more than 32 levels"),
    "e-mail addresses on one line": (
        "a@b.c " * 2000,
        "text/markdown",
        "has more than 1,000 links on one line",
    ),
    "links on one line": ("https://a.b<" * 2000, "text/markdown", "has more than 1,000 links on one line"),
    # A comment, `<script>`, `<?`... is one block to its end, blank lines and all.
    "an HTML comment left open": (
        "<!--\n\n" + "<a\n\n" * 3000,
        "text/markdown",
        "has more than 2,000 lines of HTML",
    ),
    # The parser opens a formatting element again in whatever follows what closed it (`</p>`).
    "a <b> left open per paragraph": ("a <b>x\n\n" * 40, "text/markdown", "nests more than 32 levels"),
    "tags in a block of HTML": ("<div>" + "<" * 15000, "text/markdown", "has more than 10,000 tags"),
    "lines of raw HTML": ("<p>\n" * 2500, "text/markdown", "has more than 2,000 lines of HTML in a row"),
    "a table of columns": (
        "|" + "a|" * 1500 + "\n|" + "-|" * 1500 + "\n",
        "text/markdown",
        "has a table row of more than 1,000 cells",
    ),
    # The renderer numbers the ids of headings alike by trying each number in turn: 64,000 took minutes.
    "headings of one name": ("## Usage\n" * 4000, "text/markdown", "has too many headings of the same name"),
    "headings after a tab": (
        "- \t# Usage\n" * 4000,
        "text/markdown",
        "has too many headings of the same name",
    ),
    "headings underlined by '- '": (
        "Usage\n- \n" * 4000,
        "text/markdown",
        "has too many headings of the same name",
    ),
    "headings alike": (
        "".join(f"# {v}\n" for v in ("a", "A", "a 1", "[a](x)", "&#97;", "*a*", "a-2") * 600),
        "text/markdown",
        "has too many headings of the same name",
    ),
    "footnotes by the thousand": (
        "a [#]_\n\n" * 1500 + ".. [#] a note\n" * 1500,
        "text/x-rst",
        "has more than 1,000 footnotes and citations",
    ),
    # A billion laughs: substitutions of substitutions (five levels of ten took 37 s, eight hang).
    "substitutions within substitutions": (
        "|s0|\n\n"
        + "".join(f".. |s{i}| replace:: " + " ".join([f"|s{i + 1}|"] * 10) + "\n" for i in range(4))
        + ".. |s4| replace:: laugh\n",
        "text/x-rst",
        "has substitutions that expand more than 2,000 times",
    ),
    "a long substitution used often": (
        ".. |a| replace:: " + "x" * 9000 + "\n\n" + "|a|\n" * 1000,
        "text/x-rst",
        "has substitutions that expand more than 2,000 times or to more than 2,000,000 characters",
    ),
    "a long link used often": (
        ".. _a: https://example.com/" + "x" * 9000 + "\n\n" + "a_\n" * 1000,
        "text/x-rst",
        "has hyperlink references that may expand to more than 2,000,000 characters",
    ),
    # Each reference to a footnote is a link, and each a link back: 256 kB made a 10 MB page.
    "footnote references": ("[^1]: " + "[^1]" * 62000, "text/markdown", "renders to more than 2,000,000"),
    # docutils recurses once per level: RecursionError, and PyPI shows a README that fails as text.
    "reStructuredText indented": ("".join("  " * i + "- a\n\n" for i in range(250)), "text/x-rst", ""),
}


@pytest.fixture
def python_s_recursion_limit() -> Iterator[None]:
    """Python's default recursion limit, which `provision` runs with, while docutils recurses (in
    the suite a test library, celpy, raises it for the whole process, and 250 levels then render)."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(before)


@pytest.mark.usefixtures("python_s_recursion_limit")
@pytest.mark.parametrize("case", sorted(INTRICATE))
def test_a_readme_whose_rendering_would_take_minutes_or_fail_is_shown_as_text(case: str) -> None:
    text, kind, why = INTRICATE[case]
    out = readme.render(text, kind)
    assert out.count("<pre") == 1 and "</pre>" in out and inert_problems(out) == []
    if why:
        assert f"This README {why}" in out.split("<pre", 1)[0], out[:300]
    # Within the bounds the same constructs render as usual (no real README is refused).
    assert readme.render(">" * 30 + " fine", "text/markdown").count("<blockquote>") == 30
    assert readme.render("<div>" * 30 + "fine", "text/markdown").count("<div") == 30
    assert "<pre" not in readme.render("Run `prog <command>` " * 100, "text/markdown")
    assert readme.render("a [#]_\n\n" * 50 + ".. [#] a note\n" * 50, "text/x-rst").count("a note") == 50
    linked = ".. _pypapo: https://example.com/pypapo\n\n" + "Use pypapo_.\n\n" * 500
    assert readme.render(linked, "text/x-rst").count('href="https://example.com/pypapo"') == 500
    named = ".. |name| replace:: pypapo\n\n" + "Use |name|.\n\n" * 500
    assert readme.render(named, "text/x-rst").count("Use pypapo.") == 500
    changelog = "".join(f"## 1.{i}.0\n\n### Bug fixes\n\n- x\n\n### Features\n\n- y\n\n" for i in range(1500))
    assert readme.render(changelog, "text/markdown").count("<h3") == 3000


# READMEs as people write them, whose raw HTML is left open where HTML closes it: each renders.
LOOSE = {
    "placeholders in prose": "\n\n".join(f"Step {i}: put <name> in <path>." for i in range(60)),
    "centred badges": "\n\n".join(
        '<p align="center"><a href="https://example.com/"><img src="b.svg"></a>' for _ in range(60)
    ),
    "a table without end tags": "<table>" + "<tr><td>a<td>b" * 200 + "</table>",
    "a list without end tags": "<ul>" + "<li>item" * 200 + "</ul>",
    "questions and answers": "\n\n".join(
        "<details><summary>Q</summary>\n\n*A*\n\n</details>" for _ in range(60)
    ),
    "comments, then blocks of HTML": "<!-- one -->\n\n<!--\ntwo\n-->\n\n"
    + "<p align=center>x</p>\n\n" * 2500,
    "anchors left open": "\n\n".join(f'<a name="s{i}"/>\n\n## Section {i}' for i in range(60)),
    "bold closed in each paragraph": "\n\n".join("a <b>bold</b> and <i>it</i>" for _ in range(100)),
    "an SVG drawing": "<svg>" + '<path d="M0 0"/>' * 200 + "</svg>",
}


@pytest.mark.parametrize("case", sorted(LOOSE))
def test_a_readme_whose_html_is_left_open_renders_as_pypi_renders_it(case: str) -> None:
    """A `<placeholder>` left open in each paragraph was counted as one level more each time: 33
    of them showed a README as plain text, as nested too deep."""
    out = readme.render("# Title\n\n" + LOOSE[case], "text/markdown")
    assert "plain text" not in out and "<pre" not in out, out[:300]
    assert ">Title</h1>" in out and inert_problems(out) == []


@pytest.mark.usefixtures("python_s_recursion_limit")
def test_a_readme_that_does_not_render_fails_neither_the_publish_nor_the_reindex(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    """reStructuredText nested 250 levels made docutils raise RecursionError: the publish failed
    with a traceback after the index was written (a project the site did not show), and so did
    every reindex of the repository after it."""
    text, kind, _why = INTRICATE["reStructuredText indented"]
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "deep", "1.0", description=text, description_content_type=kind)])
    page = _site(dir_repo)["ui/deep/index.html"].decode()
    assert "<pre" in page and "- a" in page
    assert r.reindex().projects == 1
    assert "deep" in _consistent(_site(dir_repo))


def test_a_readme_that_overflowed_the_renderer_s_stack_fails_neither_the_publish_nor_the_reindex(
    tmp_path: Path,
) -> None:
    """40,000 e-mail addresses on one line: comrak links each one a recursion deeper, its stack
    overflowed and `provision publish` died of SIGSEGV after the index was written; so did every
    `provision reindex` after it. (In a process of its own: that death would be the suite's.)"""
    repo = tmp_path / "repo"
    text = "# Contacts\n\n" + "a@b.c " * 40000
    wheel = _wheel(tmp_path, "mails", "1.0", description=text, description_content_type="text/markdown")
    for args in (["publish", "--repo", str(repo), str(wheel)], ["reindex", "--repo", str(repo)]):
        proc = subprocess.run(
            [sys.executable, "-c", "from provisioner.cli import main; main()", *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (args[0], proc.returncode, proc.stderr[-2000:])
    page = _tree(repo)["ui/mails/index.html"].decode()
    assert "This README has more than 1,000 links on one line" in page


class PanicException(BaseException):  # pyo3's name: what is recognized
    """What pyo3 raises for a panic in Rust code (pyo3_runtime.PanicException): no Exception."""


def test_a_panic_in_a_rust_renderer_fails_neither_the_publish_nor_the_reindex(
    dir_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """comrak and nh3 are Rust: a panic there (comrak has fixed several) is a BaseException, which
    no renderer's fallback catches; the publish failed after the index was written."""

    def panics(_text: str) -> str:
        raise PanicException("index out of bounds: the len is 0 but the index is 0")

    monkeypatch.setitem(readme_renderer.markdown.variants, "GFM", panics)
    text = "# Boom\n\n<b>bold</b> & co\n"
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "boom", "1.0", description=text, description_content_type="text/markdown")])
    page = _site(dir_repo)["ui/boom/index.html"].decode()
    assert "This README made its renderer fail: it is shown as plain text." in page
    assert "<pre># Boom\n\n&lt;b&gt;bold&lt;/b&gt; &amp; co\n</pre>" in page
    shutil.rmtree(Path(dir_repo.location) / "ui" / "boom")  # the page and its release-info cache
    assert r.reindex().projects == 1
    assert "shown as plain text" in _site(dir_repo)["ui/boom/index.html"].decode()
    with pytest.raises(KeyboardInterrupt):  # anything else still goes through
        monkeypatch.setitem(readme_renderer.markdown.variants, "GFM", _interrupt)
        readme.render("# Other", "text/markdown")


def _interrupt(_text: str) -> str:
    raise KeyboardInterrupt


# 200 kB of one-line definitions: docutils takes 3-8 s over them, and nothing refuses them.
SLOW_RST = "Terms\n=====\n\n" + "a\n b\n" * 40_000


def test_a_readme_docutils_renders_too_slowly_is_stopped_and_shown_as_text(
    dir_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docutils is pure Python and slow, and fuzzing found 200 kB READMEs that took it 31 s, in
    the publish and in every reindex: nothing in the process could stop it. A long one renders in a
    child that the deadline (here 0.5 s) kills."""
    monkeypatch.setattr(apart, "RST_SECONDS", 0.5)
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "slow", "1.0", description=SLOW_RST, description_content_type="text/x-rst")])
    note = "This README took docutils more than 0.5 s to render: it is shown as plain text."
    page = _site(dir_repo)["ui/slow/index.html"].decode()
    assert note in page and "<dt>a</dt>" not in page and "<pre" in page
    assert r.reindex().projects == 1
    assert note in _site(dir_repo)["ui/slow/index.html"].decode()


def test_a_readme_that_exhausts_the_renderer_s_memory_is_shown_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docutils copies a README many times over; the child that renders a long one has an address
    space of its own (here 16 MB, too little even to import it): the README is shown as text."""
    text = "Title\n=====\n\n" + "A paragraph of *prose*.\n\n" * 2000
    assert len(text) > apart.RST_APART and "<h1" in readme.render(text, "text/x-rst")
    monkeypatch.setattr(apart, "RST_MEMORY", 16 << 20)
    out = readme.render(text, "text/x-rst")
    assert out.startswith("<pre") and "A paragraph of *prose*." in out and "<em>" not in out


def _wheel(dest: Path, name: str, version: str, **meta: object) -> Path:
    text = sample.core_metadata(name, version, **meta)  # type: ignore[arg-type]
    path = dest / sample.wheel_filename(name, version)
    dest.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sample.wheel_bytes(name, version, metadata=text))
    return path


def _served(objects: Mapping[str, bytes]) -> dict[str, bytes]:
    """The site's objects as nginx serves them: each page under its URL's name, uncompressed (it
    must be a whole gzip file), and none left plain (the version before's are deleted)."""
    ui = {k: v for k, v in objects.items() if k.startswith("ui/")}
    assert not [k for k in ui if layout.is_unpacked_page(k)], sorted(ui)
    packed = {k for k in ui if layout.is_packed(k)}
    plain = {k: v for k, v in ui.items() if k not in packed}
    return plain | {k.removesuffix(layout.PACKED): gzip.decompress(ui[k]) for k in packed}


def _site(repo: RepoHandle) -> dict[str, bytes]:
    return _served(repo.snapshot())


def _tree(root: Path) -> dict[str, bytes]:
    """`_site` of a directory repository, read from its files."""
    files = [p for p in (root / "ui").rglob("*") if p.is_file()]
    return _served({str(p.relative_to(root)): p.read_bytes() for p in files})


def _entries(site: dict[str, bytes]) -> dict[str, ListEntry]:
    """Every project's entry, from the search shards."""
    out: dict[str, ListEntry] = {}
    for k in range(paging.SHARDS):
        shard = loads_aggregate(site[f"ui/search-{k:x}.json"])
        assert all(paging.shard_of(n) == k for n in shard)
        out |= shard
    return out


def _walk(pages: dict[str, bytes]) -> list[tuple[str, str]]:
    """The list's rows (key: upload time, name) through every page (by id), head first, checking
    that each page is in form, links its neighbours, and holds only rows of its range."""
    head = paging.parse_page(pages[paging.HEAD])
    assert head is not None and head.layout is not None
    cut = head.layout
    keys = []
    for page_id in [paging.HEAD, *reversed(cut.ids)]:
        page = paging.parse_page(pages[page_id])
        assert page is not None, page_id
        assert (page.newer, page.older) == cut.neighbours(page_id), page_id
        for row in page.rows:
            k = paging.row_key(row)
            assert k is not None and cut.locate(k) == page_id
            keys.append(k)
    return keys


def _listed(site: dict[str, bytes]) -> list[tuple[str, str]]:
    """`_walk` over a repository's site; every older page object is linked (none left over)."""
    pages = {paging.HEAD: site["ui/index.html"]}
    pages |= {n[len("ui/older-") : -len(".html")]: v for n, v in site.items() if n.startswith("ui/older-")}
    cut = paging.head_layout(pages[paging.HEAD])
    assert cut is not None and set(pages) == {paging.HEAD, *cut.ids}
    return _walk(pages)


def _consistent(site: dict[str, bytes]) -> dict[str, ListEntry]:
    """The list shows every project of the shards exactly once, newest upload first, each row as
    its entry renders; the entries."""
    entries = _entries(site)
    assert _listed(site) == sorted((paging.key(e) for e in entries.values()), reverse=True)
    pages = b"".join(v for n, v in site.items() if n == "ui/index.html" or n.startswith("ui/older-"))
    for e in entries.values():
        assert pages.count(render.list_row(e).encode()) == 1, e
    assert "ui/projects.json" not in site
    return entries


def test_a_readme_of_megabytes_is_shown_as_the_beginning_of_its_text_not_rendered(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    """Metadata may hold 4 MB of README. Rendered, 4 MB of Python in a code block took 17 s of the
    publish and made a 39 MB page (a span per token); past `readme.README_MAX` characters the page
    shows the beginning as plain text and says why, and stays a page a tunnel carries."""
    code = "".join(
        f"def f{i}(x):\n    return [x * n for n in range({i})]  # <script>\n" for i in range(60_000)
    )
    text = f"# Big\n\n```python\n{code}```\n\nTHE-END-MARKER\n"
    assert 3_000_000 < len(text.encode()) < 4 * 1024 * 1024  # within what metadata may hold
    big = _wheel(tmp_path, "big", "1.0", description=text, description_content_type="text/markdown")
    Repository.open(dir_repo.location).publish([big])
    page = _site(dir_repo)["ui/big/index.html"].decode()
    assert f"This README is {len(text):,} characters long" in page
    assert "def f0(x):" in page and "THE-END-MARKER" not in page
    assert len(page) < 2 * readme.README_MAX  # the text escaped, and the page around it
    assert inert_problems(page.split('<article class="pp-readme">', 1)[1].split("</article>", 1)[0]) == []
    # Just under the limit, a README is rendered as usual.
    small = f"# Small\n\n{'word ' * ((readme.README_MAX - 20) // 5)}"
    assert "<h1" in readme.render(small, "text/markdown") and "characters long" not in readme.render(
        small, None
    )


def test_a_summary_or_keywords_of_megabytes_do_not_weigh_on_every_visitor(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    """The list and the search shards are what every visitor loads: a release's summary (PyPI
    refuses one over 512 characters) and keywords are kept to `render.SUMMARY_MAX` and
    `render.KEYWORDS_MAX` there and on its page; the other projects' rows are as they were."""
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "plain", "1.0", summary="A plain project")])
    before = _site(dir_repo)
    huge = _wheel(
        tmp_path, "huge", "1.0", summary="S" * 1_000_000, headers=["Keywords: " + ",".join(["kw"] * 200_000)]
    )
    r.publish([huge])
    site = _site(dir_repo)
    for name in ("ui/index.html", layout.ui_shard(paging.shard_of("huge")).removesuffix(layout.PACKED)):
        assert len(site[name]) < len(before.get(name, b"")) + 3 * (
            render.SUMMARY_MAX + render.KEYWORDS_MAX
        ), name
    entries = _consistent(site)
    assert entries["huge"].summary == "S" * (render.SUMMARY_MAX - 1) + "\u2026"
    assert 0 < len(", ".join(entries["huge"].keywords)) <= render.KEYWORDS_MAX
    assert entries["plain"].summary == "A plain project"
    page = site["ui/huge/index.html"].decode()
    assert "S" * (render.SUMMARY_MAX - 1) + "\u2026" in page and "S" * render.SUMMARY_MAX not in page


def test_the_site_follows_publish_yank_unyank_and_remove(repo: RepoHandle, tmp_path: Path) -> None:
    r = Repository.open(repo.location)
    core = _wheel(tmp_path, "acme-core", "1.0", summary="The core", description="Core\n====\n")
    tools = [
        _wheel(
            tmp_path,
            "acme-tools",
            f"1.{i}",
            summary=f"Tools {i}",
            requires_python=">=3.9",
            requires_dist=["acme-core>=1", "requests"],
            description=f"# Tools {i}\n\n## Usage\n",
            description_content_type="text/markdown",
            headers=["License-Expression: MIT", "Project-URL: Source, https://example.com/src",
                     "Project-URL: Bad, javascript:alert(1)", "Keywords: acme,cli"],
        )
        for i in range(3)
    ]  # fmt: skip
    r.publish([core, *tools])
    site = _site(repo)
    page = site["ui/acme-tools/index.html"].decode()
    assert '<h1 id="readme-user-content-tools-2">Tools 2</h1>' in page  # the latest release's README
    assert "<dd><code>&gt;=3.9</code></dd>" in page and "<dd>MIT</dd>" in page
    assert 'href="https://example.com/src"' in page and "javascript:" not in page
    assert '<a href="../acme-core/">acme-core</a>&gt;=1' in page  # a dependency pypapo holds: linked
    assert "<code>requests</code>" in page  # one it does not hold: not linked
    assert 'href="../../simple/acme-tools/acme_tools-1.0-py3-none-any.whl#sha256=' in page
    agg = _consistent(site)
    assert (agg["acme-tools"].version, agg["acme-tools"].summary) == ("1.2", "Tools 2")
    assert agg["acme-tools"].keywords == ("acme", "cli")

    r.set_yanked("acme-tools", "1.2", "broke the CLI")
    site = _site(repo)
    page = site["ui/acme-tools/index.html"].decode()
    assert "Yanked: broke the CLI" in page
    assert '<h1 id="readme-user-content-tools-1">Tools 1</h1>' in page  # now the latest non-yanked
    assert '<a href="../acme-core/">acme-core</a>&gt;=1' in page  # spliced: links looked up one by one
    assert "<code>requests</code>" in page
    assert _consistent(site)["acme-tools"].version == "1.1"

    r.set_yanked("acme-tools", "1.2", None, yanked=False)
    assert _consistent(_site(repo))["acme-tools"].version == "1.2"

    r.remove("acme-core")
    site = _site(repo)
    assert "ui/acme-core/index.html" not in site
    assert set(_consistent(site)) == {"acme-tools"}
    assert "acme-core" not in site["ui/index.html"].decode()


def test_reindex_rebuilds_the_site_and_leaves_a_current_one_alone(repo: RepoHandle, tmp_path: Path) -> None:
    r = Repository.open(repo.location)
    r.publish([_wheel(tmp_path, f"proj-{i}", "1.0", description=f"# P{i}\n") for i in range(3)])
    r.set_yanked("proj-1", "1.0", "nope")
    before = _site(repo)
    assert r.reindex().pages_written == 0  # nothing changed: nothing written
    from provisioner.repo.store import open_store

    store = open_store(repo.location)
    for name in (layout.UI_LIST, layout.ui_shard(3), layout.ui_project("proj-0"), "ui/site.js"):
        store.delete(name)
    _data, gen = store.read(layout.ui_project("proj-2"))
    store.write(layout.ui_project("proj-2"), pack(b"<p>stale</p>"), if_generation_match=gen)
    gone = pack(b"<p>a project that no longer exists</p>")
    store.write(layout.ui_project("gone"), gone, if_generation_match=0)
    # The release-info caches: a corrupt one is rendered anew, one of a file that is gone deleted.
    _data, gen = store.read("ui/proj-1/proj_1-1.0-py3-none-any.whl.json")
    store.write("ui/proj-1/proj_1-1.0-py3-none-any.whl.json", b"{", if_generation_match=gen)
    store.write("ui/proj-0/proj_0-0.1-py3-none-any.whl.json", b"{}", if_generation_match=0)
    r.reindex()
    assert _site(repo) == before


class _Reads:
    """A store that records the names it reads."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.read_names: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def read(self, name: str) -> tuple[bytes, int]:
        self.read_names.append(name)
        return self._store.read(name)  # type: ignore[attr-defined]


def test_a_warm_reindex_of_a_bucket_downloads_no_page_its_listing_vouches_for(
    gcs_repo: RepoHandle, tmp_path: Path
) -> None:
    """GCS lists each object's md5: a reindex compares the pages it renders (the index's and the
    site's, gzip'd the same way each time) with that, instead of downloading them, half of its
    requests. A page changed behind its back, even to other bytes of the same size, is rewritten."""
    from provisioner.repo.store import open_store

    r = Repository.open(gcs_repo.location)
    r.publish([_wheel(tmp_path, f"proj-{i}", "1.0", description=f"# P{i}\n") for i in range(3)])
    before = gcs_repo.snapshot()
    reads = _Reads(open_store(gcs_repo.location))
    assert Repository(reads).reindex().pages_written == 0  # type: ignore[arg-type]
    pages = {layout.project_html(f"proj-{i}") for i in range(3)} | {
        layout.ui_project(f"proj-{i}") for i in range(3)
    }
    assert not pages & set(reads.read_names)
    assert {layout.project_json(f"proj-{i}") for i in range(3)} <= set(reads.read_names)  # the state is read
    store = open_store(gcs_repo.location)
    html, gen = store.read(layout.project_html("proj-1"))
    store.write(layout.project_html("proj-1"), html.replace(b"proj", b"PROJ"), if_generation_match=gen)
    _page, gen = store.read(layout.ui_project("proj-2"))
    store.write(layout.ui_project("proj-2"), pack(b"<p>stale</p>"), if_generation_match=gen)
    assert Repository.open(gcs_repo.location).reindex().pages_written == 2
    assert gcs_repo.snapshot() == before


@pytest.mark.parametrize("torn", ["empty", "truncated", "another release's", "garbage"])
def test_a_release_info_cache_a_crash_left_torn_is_rendered_again(
    dir_repo: RepoHandle, tmp_path: Path, torn: str
) -> None:
    """Release-info caches are written without fsync (`WriteItem(durable=False)`): a crash can
    leave one empty, cut short or holding other bytes. Every reader checks it against its stamps
    (renderers, the metadata file's sha256, the setting) and renders the README again."""
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "demo", "1.0", description="# Demo\n\nthe real readme\n")])
    r.publish([_wheel(tmp_path, "other", "1.0", description="# Other\n\nnot this one\n")])
    before = _site(dir_repo)
    cache = Path(dir_repo.location, "ui/demo/demo-1.0-py3-none-any.whl.json")
    good = cache.read_bytes()
    other = Path(dir_repo.location, "ui/other/other-1.0-py3-none-any.whl.json").read_bytes()
    cache.write_bytes(
        {
            "empty": b"",
            "truncated": good[: len(good) // 2],
            "another release's": other,
            "garbage": b"\0" * 512,
        }[torn]
    )
    page = Path(dir_repo.location, layout.ui_project("demo"))
    page.unlink()
    # A new process (nothing remembered): a yank renders the page, reading the cache.
    Repository.open(dir_repo.location).set_yanked("demo", "1.0", "reads the cache")
    text = gzip.decompress(page.read_bytes()).decode()
    assert "the real readme" in text and "not this one" not in text
    assert cache.read_bytes() == good  # rendered anew and stored again
    Repository.open(dir_repo.location).set_yanked("demo", "1.0", None, yanked=False)
    assert _site(dir_repo) == before
    cache.write_bytes(good[:-3])
    page.unlink()
    r.reindex()
    assert _site(dir_repo) == before


def test_a_release_info_cache_from_other_rendering_code_is_not_used(tmp_path: Path) -> None:
    """The caches are stamped with the source of the code that renders a README: a pypapo that
    renders one differently (this session's admonition boxes did, and nothing was bumped) finds
    every cache of the one before stale, and its reindex renders them anew."""
    tree = tmp_path / "tree"
    shutil.copytree(Path(readme.__file__).parents[3] / "provisioner", tree / "provisioner",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    code = "from provisioner.repo.site import render; print(render.RENDERER)"

    def stamp() -> str:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert stamp() == render.RENDERER  # the same code: the same stamp (caches stand)
    changed = tree / "provisioner/repo/site/readme.py"
    changed.write_text(changed.read_text().replace('ID_PREFIX = "readme-"', 'ID_PREFIX = "r-"'))
    assert stamp() != render.RENDERER


def test_a_site_from_before_the_site_existed_is_built_by_the_next_publish(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "old", "1.0")])
    for page in Path(dir_repo.location, "ui").rglob("*"):
        if page.is_file():
            page.unlink()
    r.publish([_wheel(tmp_path, "new", "1.0")])
    assert set(_consistent(_site(dir_repo))) == {"old", "new"}


def _publish_at_once(repo: RepoHandle, wheels: list[Path]) -> None:
    """One publisher (its own Repository) per wheel, all in threads at once."""
    location = repo.location
    threads = [threading.Thread(target=lambda w=w: Repository.open(location).publish([w])) for w in wheels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_publishers_leave_every_project_on_the_list(dir_repo: RepoHandle, tmp_path: Path) -> None:
    wheels = [_wheel(tmp_path / str(i), f"racer-{i}", "1.0") for i in range(8)]
    Repository.open(dir_repo.location).initialize()
    _publish_at_once(dir_repo, wheels)
    site = _site(dir_repo)
    assert set(_consistent(site)) == {f"racer-{i}" for i in range(8)}
    assert all(f"ui/racer-{i}/index.html" in site for i in range(8))


def test_a_mirrored_project_says_where_it_came_from(dir_repo: RepoHandle, tmp_path: Path) -> None:
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, "upstream-thing", "1.0")])
    assert "Mirrored from" not in _site(dir_repo)["ui/upstream-thing/index.html"].decode()
    # What `provision mirror` records in the project JSON (model.MIRROR_KEY), through the one writer.
    r.writer.update_project("upstream-thing", lambda s: s.mirrored("https://pypi.org/simple/"))
    page = _site(dir_repo)["ui/upstream-thing/index.html"].decode()
    assert "Mirrored from <code>https://pypi.org/simple/</code>" in page


def test_the_site_rendered_in_worker_processes_equals_the_one_rendered_in_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.repo.site import writer

    r = Repository.open(str(tmp_path / "repo"))
    r.publish([_wheel(tmp_path / "d", f"p-{i}", "1.0", description=f"# P {i}\n") for i in range(5)])
    threads = {str(p): p.read_bytes() for p in (tmp_path / "repo" / "ui").rglob("*") if p.is_file()}
    for page in (tmp_path / "repo" / "ui").rglob("*"):
        if page.is_file():
            page.unlink()
    monkeypatch.setattr(writer, "PROCESS_MIN", 1)
    monkeypatch.setattr(writer, "cpu_count", lambda: 2)
    monkeypatch.setattr(writer, "RENDER_CHUNK", 2)
    assert r.site is not None
    r.site.rebuild()  # the site's own rebuild (a reindex renders its pages in its own pass)
    procs = {str(p): p.read_bytes() for p in (tmp_path / "repo" / "ui").rglob("*") if p.is_file()}
    assert procs == threads


def test_a_reindex_whose_index_stands_renders_a_missing_site_in_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site's first reindex (or one after its pages were deleted) renders every README though
    no wheel needs reading: that is work for the worker processes too, as parsing is (one process
    took 11.2 s for 2,000 projects on two cores, the workers 8.1). With the pages in place, the
    next reindex has no such work and stays in one process."""
    from provisioner.repo import reindex as reindexing

    root = tmp_path / "repo"
    r = Repository.open(str(root))
    r.publish([_wheel(tmp_path / "d", f"p-{i}", "1.0", description=f"# P {i}\n") for i in range(3)])
    published = _tree(root)
    for page in (root / "ui").rglob("*"):
        if page.is_file():
            page.unlink()
    pooled: list[int] = []
    in_processes = reindexing._rebuild_in_processes
    monkeypatch.setattr(reindexing, "_rebuild_in_processes", lambda *a: pooled.append(1) or in_processes(*a))
    monkeypatch.setattr(reindexing, "cpu_count", lambda: 2)
    monkeypatch.setattr(reindexing, "PROCESS_POOL_MIN", 2 * reindexing.BESIDE_WORK)  # 3 pages to render
    result = Repository.open(str(root)).reindex()
    assert result.hashed == 0  # every wheel vouched for by its fingerprint
    assert pooled == [1]
    site = _tree(root)
    assert {n: d for n, d in site.items() if n.startswith("ui/p-")} == {
        n: d for n, d in published.items() if n.startswith("ui/p-")
    }
    assert "<p># P 2</p>" in site["ui/p-2/index.html"].decode()  # its README (reStructuredText)
    Repository.open(str(root)).reindex()
    assert pooled == [1]  # nothing to render anew: no workers started


@pytest.mark.parametrize("processes", [True, False])
def test_a_reindex_from_scratch_renders_the_site_publish_wrote_in_its_own_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    """Reindex renders the site's pages in its own pass (worker processes, or threads), from the
    metadata it has just read: the same bytes as the site's own rebuild renders from the JSON. A
    directory whose one file turns out invalid is no project: the page that depends on it is
    rendered again, without its link."""
    from provisioner.repo import reindex as reindexing
    from provisioner.repo.site import writer

    root = tmp_path / "repo"
    r = Repository.open(str(root))
    wheels = [
        _wheel(tmp_path / "d", f"p-{i}", "1.0", description=f"# P {i}\n", requires_dist=["p-0", "requests"])
        for i in range(5)
    ]
    wheels.append(_wheel(tmp_path / "d", "p-1", "2.0", description="# newer\n\n```python\nx = 1\n```\n"))
    wheels.append(_wheel(tmp_path / "d", "needs-ghost", "1.0", requires_dist=["ghost>=1", "p-1"]))
    r.publish(wheels)
    # From scratch, as the benchmark does: no index page, no site; and a directory whose one file
    # is no wheel (reindex ignores it).
    for page in [*(root / "simple").rglob("index.*"), *(p for p in (root / "ui").rglob("*") if p.is_file())]:
        page.unlink()
    (root / "simple" / "ghost").mkdir()
    (root / "simple" / "ghost" / "ghost-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    pooled: list[int] = []
    if processes:
        monkeypatch.setattr(reindexing, "PROCESS_POOL_MIN", 1)
        monkeypatch.setattr(reindexing, "cpu_count", lambda: 2)
        monkeypatch.setattr(reindexing, "REBUILD_CHUNK", 2)
        in_processes = reindexing._rebuild_in_processes
        monkeypatch.setattr(
            reindexing, "_rebuild_in_processes", lambda *a: pooled.append(1) or in_processes(*a)
        )
    rendered: list[str] = []
    real = writer._render_chunk

    def render_chunk(*args: object) -> object:
        rendered.extend(state.name for state in args[-1])  # type: ignore[attr-defined]
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "_render_chunk", render_chunk)
    result = Repository.open(str(root)).reindex()
    assert [i.split(":")[0] for i in result.ignored] == ["simple/ghost/ghost-1.0-py3-none-any.whl"]
    assert pooled == ([1] if processes else [])
    assert rendered == ["needs-ghost"]  # the site rendered only the page whose link changed
    site = _tree(root)
    assert '<a href="../p-0/">p-0</a>' in site["ui/p-3/index.html"].decode()
    assert "ghost" in site["ui/needs-ghost/index.html"].decode()
    assert 'href="../ghost/"' not in site["ui/needs-ghost/index.html"].decode()
    # The site's own rebuild, every page rendered from the JSON the reindex wrote: the same bytes.
    for page in (root / "ui").rglob("*"):
        if page.is_file():
            page.unlink()
    rendered.clear()
    assert r.site is not None
    r.site.rebuild()
    assert sorted(rendered) == sorted(
        s.removeprefix("ui/").split("/")[0] for s in site if s.endswith("/index.html") and s.count("/") == 2
    )
    assert _tree(root) == site


def test_a_page_written_during_the_reindex_that_lost_to_a_publisher_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reindex writes the site's pages while its pass goes on; a publisher that rewrote one in
    between wins it, and the page, the list and the aggregate end as the publisher's state says."""
    from provisioner.repo.site import writer

    root = tmp_path / "repo"
    r = Repository.open(str(root))
    r.publish([_wheel(tmp_path / "d", f"p-{i}", "1.0", description=f"# P {i}\n") for i in range(3)])
    for page in (root / "simple").rglob("index.*"):
        page.unlink()  # every entry anew (upload times from the files): every page is written again
    real = writer._ahead_writer
    lost: list[str] = []

    class Racing:
        """The site's writing thread, with a publish of p-1 2.0 before its first batch."""

        def submit(self, fn: object, items: list) -> object:
            if not lost:
                lost.append("raced")
                Repository.open(str(root)).publish(
                    [_wheel(tmp_path / "e", "p-1", "2.0", description="# two\n")]
                )

            def write(items: list = items) -> list[int]:
                out = fn(items)  # type: ignore[operator]
                lost.extend(item.name for item, gen in zip(items, out, strict=True) if not gen)
                return out

            return real().submit(write)

    monkeypatch.setattr(writer, "_ahead_writer", Racing)
    Repository.open(str(root)).reindex()
    assert layout.ui_project("p-1") in lost  # the publisher's page won over the one written ahead
    site = _tree(root)
    assert '<span class="pp-version">2.0</span>' in site["ui/p-1/index.html"].decode()
    assert loads_aggregate(site[f"ui/search-{paging.shard_of('p-1'):x}.json"])["p-1"].version == "2.0"
    # What the site's own rebuild renders from the JSON: the same pages (the cache of p-1 1.0, a
    # file that still exists, may stay: a rebuild renders only the latest release's).
    for page in (root / "ui").rglob("*"):
        if page.is_file():
            page.unlink()
    assert r.site is not None
    r.site.rebuild()
    again = _tree(root)
    assert again == {k: v for k, v in site.items() if k != "ui/p-1/p_1-1.0-py3-none-any.whl.json"}


def _random_entry(rng: random.Random, name: str) -> ListEntry:
    summary = rng.choice(["", "plain", 'quotes " & <tags> \u00e9\u4e2d', "back\\slash"])
    uploaded = (
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:{rng.randint(0, 59):02d}.000000Z"
    )
    version = rng.choice(["", "1.0", f"2.{rng.randint(0, 99)}"])
    return ListEntry(
        name, summary, version, uploaded, rng.randint(1, 40), tuple(rng.sample(["a", "b", "c"], 2))
    )


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_moves_and_seals_keep_every_row_once_in_order(rows: int) -> None:
    """The pure logic of the paged list: each change rewrites the pages it reads (asked for by
    `apply`), the head seals its oldest rows past 2N, and the list stays every project once, in
    order, whatever the changes (publishes to the top, upload times back in time, new projects,
    removals, ties)."""
    rng = random.Random(rows)
    entries = {n: _random_entry(rng, n) for n in (f"p-{i:02d}" for i in range(12))}
    store = paging.paginate(entries.values(), rows=rows)
    assert _walk(store) == sorted((paging.key(e) for e in entries.values()), reverse=True)
    clock = 0
    for step in range(400):
        name = f"p-{rng.randrange(16):02d}"
        old = entries.get(name)
        roll = rng.random()
        if roll < 0.5:
            clock += 1
            new: ListEntry | None = _random_entry(rng, name)._replace(uploaded=f"2027-{clock:06d}")
        elif roll < 0.8:
            new = _random_entry(rng, name)  # anywhere in the order (a remove, a mirror's old times)
        elif roll < 0.9 and old is not None:
            new = old._replace(version="", summary="yanked")  # a yank: the row stays where it is
        else:
            new = None
        change = [paging.Change(name, old, new)]
        read: dict[str, bytes] = {paging.HEAD: store[paging.HEAD]}
        for _ in range(5):
            plan = paging.apply(read, change, rows=rows)
            if not isinstance(plan, set):
                break
            assert plan - read.keys() == plan  # never asks twice for one page
            read |= {s: store.get(s, b"") for s in plan}
        assert isinstance(plan, paging.Plan)
        # Writes only what it read (generations before the state), and pages of fresh ids.
        assert set(plan.pages) - set(plan.sealed) <= set(read)
        assert not set(plan.sealed) & set(store)
        store |= plan.pages
        if new is None:
            entries.pop(name, None)
        else:
            entries[name] = new
        assert _walk(store) == sorted((paging.key(e) for e in entries.values()), reverse=True), step
        head = paging.parse_page(store[paging.HEAD])
        assert head is not None and len(head.rows) <= 2 * rows
    # reindex cuts it anew: a head of N, pages of N, the very same rows.
    again = paging.paginate(entries.values(), rows=rows)
    assert _walk(again) == _walk(store)
    assert set(again) == {paging.HEAD, *(str(i) for i in range(1, len(again)))}
    assert all(len(paging.parse_page(p).rows) == rows for s, p in again.items() if s not in ("", "1"))  # type: ignore[union-attr]


def test_a_page_not_in_this_form_is_never_spliced() -> None:
    rng = random.Random(5)
    entries = [_random_entry(rng, f"p-{i}") for i in range(6)]
    pages = paging.paginate(entries, rows=2)
    assert sorted(pages) == ["", "1", "2"]
    on_1 = next(e for e in entries if e.name == paging.row_key(paging.parse_page(pages["1"]).rows[0])[1])  # type: ignore[union-attr,index]
    yank = [paging.Change(on_1.name, on_1, on_1._replace(version=""))]
    assert isinstance(paging.apply(pages, yank, rows=2), paging.Plan)
    old_list = b'<ul class="pp-list" id="projects">\n<li id="p-p-1">...</li>\n</ul>\n'  # an older pypapo's
    for broken in (
        pages[""].replace(b"Projects", b"Projekte"),
        pages[""].replace(b"data-pages", b"data-x"),
        pages[""].replace(b"&quot;1&quot;", b"&quot;../x&quot;"),  # an id that is not one
        pages[""][: len(pages[""]) // 2],
        old_list,
        b"",
    ):
        assert paging.apply({**pages, "": broken}, yank, rows=2) is None
    # Rows out of order, a project twice, a row outside its page's range: not this form either.
    page2, page1 = paging.parse_page(pages["2"]), paging.parse_page(pages["1"])
    assert page2 is not None and page1 is not None
    for rows in (page2.rows[::-1], page2.rows[:1] * 2):
        assert paging.parse_page(paging.render_page(rows, newer=page2.newer, older=page2.older)) is None
    stray = paging.render_page(page2.rows[:1] + page1.rows, newer="2", older=None)  # page 2's newest on 1
    assert paging.apply({**pages, "1": stray}, yank, rows=2) is None


def test_publish_yank_and_unyank_write_a_few_kb_of_the_site_and_reindex_finds_it_current(
    repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the head at 2N = 6 rows and 20 projects, every publish, yank and unyank writes the
    head, one shard and at most one older page of the list (no full render: `paginate` is only
    reindex's), and the list stays every project once, in order; reindex then cuts it anew."""
    monkeypatch.setattr(paging, "PAGE_ROWS", 3)
    r = Repository.open(repo.location)
    r.publish([_wheel(tmp_path, f"proj-{i:02d}", "1.0", summary=f"P{i} <&>") for i in range(20)])
    full = []
    monkeypatch.setattr(paging, "paginate", lambda *a, f=paging.paginate, **k: full.append(1) or f(*a, **k))
    rng = random.Random(7)
    for step in range(12):
        project = f"proj-{rng.randrange(20):02d}"
        before = _site(repo)
        r.publish([_wheel(tmp_path / str(step), project, f"2.{step}", summary=f"step {step}")])
        if step % 3 == 0:
            r.set_yanked(project, f"2.{step}", f"bad {step}")
        if step % 4 == 0:
            r.set_yanked(project, "1.0", None)  # every version of it may be yanked now: version ''
        site = _site(repo)
        changed = {n for n in site if site[n] != before.get(n) and not n.startswith(f"ui/{project}/")}
        lists = {n for n in changed if n == "ui/index.html" or n.startswith(("ui/older-", "ui/search-"))}
        assert changed == lists and len([n for n in lists if n.startswith("ui/search-")]) == 1, changed
        # The page the row left; on a seal the new page and the one before it (its "newer" link).
        assert len([n for n in lists if n.startswith("ui/older-")]) <= 3, changed
        entries = _consistent(site)
        if step % 3:  # (else the release just published is yanked: the summary is an older one's)
            assert entries[project].summary == f"step {step}"
    assert not full
    monkeypatch.undo()
    monkeypatch.setattr(paging, "PAGE_ROWS", 3)
    r.reindex()
    before = _site(repo)
    assert _consistent(before) == entries
    assert r.reindex().pages_written == 0  # a from-scratch render gives the very same bytes
    assert _site(repo) == before


def test_concurrent_publishers_into_existing_projects_lose_no_line(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path, f"racer-{i}", "1.0") for i in range(8)])
    wheels = [_wheel(tmp_path / str(i), f"racer-{i}", "2.0") for i in range(8)]
    _publish_at_once(dir_repo, wheels)
    entries = _consistent(_site(dir_repo))
    assert {e.version for e in entries.values()} == {"2.0"}
    assert r.reindex().pages_written == 0


def test_a_readme_rendered_ahead_is_used_only_for_the_bytes_that_were_stored(
    dir_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish renders its README while the index is written; if another publisher stored that
    filename first with other bytes (this one then fails), the page shows the stored file's README."""
    r = Repository.open(dir_repo.location)
    r.publish(
        [
            _wheel(
                tmp_path / "a",
                "raced",
                "1.0",
                description="# First\n",
                description_content_type="text/markdown",
            )
        ]
    )
    ours = _wheel(
        tmp_path / "ours", "raced", "2.0", description="# Ours\n", description_content_type="text/markdown"
    )
    theirs = _wheel(
        tmp_path / "theirs",
        "raced",
        "2.0",
        description="# Theirs\n",
        description_content_type="text/markdown",
    )
    loser = Repository.open(dir_repo.location)
    assert loser.site is not None
    meta = sample.core_metadata(
        "raced", "2.0", description="# Ours\n", description_content_type="text/markdown"
    )
    loser.site.prepare("raced", {ours.name: meta.encode()})  # what its publish would have started
    r.publish([theirs])  # the other publisher wins the filename
    loser.set_yanked("raced", "1.0", "old")  # the loser's next update of the project's page
    page = _site(dir_repo)["ui/raced/index.html"].decode()
    assert "Theirs</h1>" in page and "Ours</h1>" not in page

    # The ordinary way: the README rendered ahead is the one the page shows, and no second render.
    mine = _wheel(
        tmp_path / "mine", "raced", "3.0", description="# Three\n", description_content_type="text/markdown"
    )
    calls: list[object] = []
    original = render.release_info
    monkeypatch.setattr(render, "release_info", lambda *a, **k: calls.append(a) or original(*a, **k))
    loser.publish([mine])
    assert len(calls) == 1
    assert "Three</h1>" in _site(dir_repo)["ui/raced/index.html"].decode()


BADGES_MD = """[![PyPI version](https://img.shields.io/pypi/v/x.svg)](https://example.com/pypi/x/)
[![](https://codecov.io/gh/acme/x/graph/badge.svg)](https://example.com/codecov/x)

![architecture diagram](docs/arch.png) and ![](docs/spacer.png)
<img src="docs/logo.png" width="400" height="200" alt="x &amp; y">
"""
BADGES_RST = """.. image:: https://img.shields.io/pypi/v/x.svg
   :target: https://example.com/pypi/x/

.. image:: https://img.shields.io/badge/coverage-97%25-green.svg
   :alt: Coverage 97%
"""


@pytest.mark.parametrize(("text", "kind"), [(BADGES_MD, "text/markdown"), (BADGES_RST, "text/x-rst")])
def test_an_image_not_shown_is_its_alt_text_and_a_link_left_without_a_name_goes(text: str, kind: str) -> None:
    """An <img> without src is a broken-image icon (of its width and height), and a badge with no
    alt text a link with no name, which a screen reader reads as its URL."""
    out = readme.render(text, kind)
    assert "<img" not in out
    shown = re.findall(r'<span class="pp-noimg" role="img" aria-label="([^"]*)">([^<]*)</span>', out)
    if kind == "text/markdown":
        assert shown == [("PyPI version", "PyPI version"), ("architecture diagram",) * 2, ("x &amp; y",) * 2]
        assert '<a href="https://example.com/pypi/x/" rel="nofollow noopener noreferrer ugc"><span' in out
        assert "example.com/codecov" not in out  # its only content was an image without alt text
    else:
        # docutils' alt for an image without :alt: is its URI: that badge, and its link, are gone.
        assert shown == [("Coverage 97%", "Coverage 97%")]
        assert "example.com/pypi" not in out and "shields.io" not in out
    assert inert_problems(out) == []
    # Opted in, an https image is shown; one over http, or a file of the source tree, is not.
    plain_http = text.replace("docs/arch.png", "http://example.com/arch.png")
    opted = readme.render(plain_http, kind, remote_images=True)
    assert re.search(r'<img [^>]*src="https://img.shields.io/', opted)
    assert "http://example.com" not in opted and "docs/" not in opted
    if kind == "text/markdown":
        assert '<span class="pp-noimg" role="img" aria-label="architecture diagram">' in opted


def test_white_space_at_a_link_s_inner_edges_moves_out_of_it() -> None:
    """httpx's README (raw HTML, `<a href=...>\n<img ...>\n</a>`) and docutils' image targets left an
    underlined blank beside each badge; moved out, the words stay apart."""
    text = 'a <a href="https://example.com/1">\n<img alt="Test suite" src="x.svg">\n</a>'
    text += ' b<a href="https://example.com/2"> c </a>d'
    out = readme.render(text, "text/markdown")
    assert re.findall(r"<a [^>]*>(.*?)</a>", out) == [
        '<span class="pp-noimg" role="img" aria-label="Test suite">Test suite</span>',
        "c",
    ]
    assert re.sub(r"<[^>]+>", "", out).split() == ["a", "Test", "suite", "b", "c", "d"]


@pytest.mark.timeout(60)  # guards against the hang only: the render takes milliseconds
def test_a_long_run_of_white_space_in_a_link_renders_at_once() -> None:
    """200,000 blanks in a link: moving them out of it, matched from each blank of the run, took
    131 s of the publish (and of every reindex after it)."""
    out = readme.render('<a href="https://example.com/x">' + " " * 200_000 + "</a>", "text/markdown")
    assert "example.com" not in out  # a link of white space alone has no name: it goes
    assert len(out) > 200_000  # the blanks stay, outside it


def test_remote_images_are_shown_only_once_the_repository_opts_in(repo: RepoHandle, tmp_path: Path) -> None:
    image = "![diagram](https://img.example.com/diagram.png) ![local](docs/local.png)"
    readme_md = f"# Pictures\n\n{image}\n"
    r = Repository.open(repo.location)
    r.publish(
        [
            _wheel(
                tmp_path / "1",
                "pictures",
                "1.0",
                description=readme_md,
                description_content_type="text/markdown",
            )
        ]
    )
    page = _site(repo)["ui/pictures/index.html"].decode()
    assert "img.example.com" not in page and "docs/local.png" not in page  # off by default
    assert "diagram" in page  # the alt text stays
    assert "ui/remote-images" not in _site(repo)

    assert r.reindex(site_remote_images=True).pages_written >= 2  # the setting and the page
    site = _site(repo)
    assert b"https" in site["ui/remote-images"]
    page = site["ui/pictures/index.html"].decode()
    assert '<img src="https://img.example.com/diagram.png" alt="diagram">' in page
    assert "docs/local.png" not in page  # relative: a file of a source tree the repository lacks
    # Another publisher, with no flag of its own, renders by the stored setting.
    other = Repository.open(repo.location)
    other.publish(
        [
            _wheel(
                tmp_path / "2",
                "pictures",
                "2.0",
                description=readme_md,
                description_content_type="text/markdown",
            )
        ]
    )
    assert '<img src="https://img.example.com/diagram.png"' in _site(repo)["ui/pictures/index.html"].decode()
    assert r.reindex().pages_written == 0  # as stored: nothing to change

    r.reindex(site_remote_images=False)
    site = _site(repo)
    assert "ui/remote-images" not in site
    assert "img.example.com" not in site["ui/pictures/index.html"].decode()
    assert r.reindex().pages_written == 0


def test_a_publish_brings_this_version_s_stylesheet_and_script(repo: RepoHandle, tmp_path: Path) -> None:
    """An older pypapo's stylesheet is replaced, and so is one of the very same size (on GCS the
    assets are compared by md5, never by size alone)."""
    from provisioner.repo.site.writer import asset_bytes
    from provisioner.repo.store import open_store

    r = Repository.open(repo.location)
    r.publish([_wheel(tmp_path / "1", "styled", "1.0")])
    store = open_store(repo.location)
    css = asset_bytes("site.css")
    for name, older in (("site.css", css[:-2] + b"*/"), ("site.js", b"/* an older pypapo's */\n")):
        store.write(f"ui/{name}", older, if_generation_match=store.read(f"ui/{name}")[1])
    Repository.open(repo.location).publish([_wheel(tmp_path / "2", "styled", "2.0")])  # the splice path
    for name in ("site.css", "site.js"):
        assert repo.read(f"ui/{name}") == asset_bytes(name)


def _publish_in_child(location: str, wheel: str) -> None:
    Repository.open(location).publish([Path(wheel)])


def test_a_forked_publisher_does_not_wait_for_its_parent_s_render_thread(
    dir_repo: RepoHandle, tmp_path: Path
) -> None:
    import multiprocessing

    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path / "1", "forked", "1.0")])
    r.publish([_wheel(tmp_path / "2", "forked", "2.0")])  # the parent's render thread now runs
    child = multiprocessing.get_context("fork").Process(
        target=_publish_in_child, args=(dir_repo.location, str(_wheel(tmp_path / "3", "forked", "3.0")))
    )
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked publisher hung on a thread it does not have")
    assert child.exitcode == 0
    assert _entries(_site(dir_repo))["forked"].version == "3.0"


class _Recording:
    """A store that records what the calling thread reads and writes (the site's thread aside)."""

    def __init__(self, store: object, thread: threading.Thread) -> None:
        self._store, self._thread = store, thread
        self.ops: list[tuple[str, list[str]]] = []
        self.on_write: dict[str, object] = {}  # object name -> called once it is written

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def _log(self, op: str, names: list[str]) -> None:
        if threading.current_thread() is self._thread:
            self.ops.append((op, names))

    def read(self, name: str) -> tuple[bytes, int]:
        self._log("read", [name])
        return self._store.read(name)  # type: ignore[attr-defined]

    def stat(self, name: str) -> object:
        self._log("stat", [name])
        return self._store.stat(name)  # type: ignore[attr-defined]

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self._log("write", [name])
        gen = self._store.write(name, data, if_generation_match=if_generation_match)  # type: ignore[attr-defined]
        if hook := self.on_write.pop(name, None):
            hook()  # type: ignore[operator]
        return gen

    def write_many(self, items: list, *, after: list | tuple = ()) -> list[int]:
        self._log("write_many", [item[0] for item in items])
        return self._store.write_many(items, after=after)  # type: ignore[attr-defined]


def test_a_publish_writes_the_site_with_the_index_page_and_reads_nothing_between(
    repo: RepoHandle, tmp_path: Path
) -> None:
    """After the project JSON, one batch writes the index page and the site (on GCS one round of
    parallel uploads, on a directory one round of fsyncs): what the site writes against was read
    while the wheel was uploaded."""
    Repository.open(repo.location).publish([_wheel(tmp_path, f"proj-{i}", "1.0") for i in range(3)])
    recorder = _Recording(Repository.open(repo.location).store, threading.current_thread())
    r = Repository(recorder)  # type: ignore[arg-type]
    r.publish([_wheel(tmp_path / "2", "proj-1", "2.0", summary="second")])
    ops = recorder.ops
    json_write = ops.index(("write", ["simple/proj-1/index.json"]))
    after = ops[json_write + 1 :]
    assert not [op for op in after if op[0] in ("read", "stat") and op[1][0].startswith("ui/")], after
    batches = [names for op, names in after if op == "write_many"]
    assert batches and {
        "simple/proj-1/index.html",
        layout.ui_project("proj-1"),
        layout.UI_LIST,
        layout.ui_shard(paging.shard_of("proj-1")),
    } <= set(batches[0])
    assert [op for op in after if op[0] in ("write", "write_many")] == [("write_many", batches[0])]
    assert r.reindex().pages_written == 0


def test_a_change_between_what_the_site_read_ahead_and_its_batch_is_not_lost(
    repo: RepoHandle, tmp_path: Path
) -> None:
    """Another publisher rewrites the aggregate and the list, and yanks in this very project, after
    this publish read them (with the wheel's upload) and before its batch: the batch loses those
    compare-and-swaps and converges from what the other one wrote; nothing is lost."""
    Repository.open(repo.location).publish([_wheel(tmp_path, f"proj-{i}", "1.0") for i in range(3)])
    other = Repository.open(repo.location)
    recorder = _Recording(Repository.open(repo.location).store, threading.current_thread())

    def meanwhile() -> None:
        other.publish([_wheel(tmp_path / "o", "proj-2", "3.0", summary="other")])
        other.set_yanked("proj-1", "1.0", "racing yank")

    recorder.on_write["simple/proj-1/index.json"] = meanwhile
    Repository(recorder).publish([_wheel(tmp_path / "2", "proj-1", "2.0", summary="ours")])  # type: ignore[arg-type]
    site = _site(repo)
    entries = _consistent(site)
    assert (entries["proj-1"].version, entries["proj-1"].summary) == ("2.0", "ours")
    assert (entries["proj-2"].version, entries["proj-2"].summary) == ("3.0", "other")
    page = site["ui/proj-1/index.html"].decode()
    assert "racing yank" in page and "proj_1-2.0-py3-none-any.whl" in page
    assert Repository.open(repo.location).reindex().pages_written == 0


def test_concurrent_publishers_into_a_paged_list_lose_no_row(
    repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishers at once into projects on older pages, on the head and new ones, with the head
    sealing under them (pages of two): every project is on the list once, in order, with its entry."""
    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    r = Repository.open(repo.location)
    for i in range(10):
        r.publish([_wheel(tmp_path / "first", f"racer-{i}", "1.0")])
    wheels = [_wheel(tmp_path / str(i), f"racer-{i}", "2.0") for i in range(0, 10, 2)]
    wheels += [_wheel(tmp_path / "new", f"newcomer-{i}", "1.0") for i in range(3)]
    _publish_at_once(repo, wheels)
    entries = _consistent(_site(repo))
    assert set(entries) == {f"racer-{i}" for i in range(10)} | {f"newcomer-{i}" for i in range(3)}
    assert {entries[f"racer-{i}"].version for i in range(0, 10, 2)} == {"2.0"}
    r.reindex()  # cuts the list anew; the same rows
    assert _consistent(_site(repo)) == entries


class _Killed(Exception):
    """What a writer killed in the middle of its writes leaves: some of them done."""


class _DiesAfter:
    """A store that writes `budget` more objects (one by one, conditional as asked), then dies."""

    def __init__(self, store: object, budget: int) -> None:
        self._store, self.budget = store, budget

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def _spend(self) -> None:
        if self.budget <= 0:
            raise _Killed
        self.budget -= 1

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self._spend()
        return self._store.write(name, data, if_generation_match=if_generation_match)  # type: ignore[attr-defined]

    def write_many(self, items: list, *, after: list | tuple = ()) -> list[int]:
        from provisioner.repo.store import PreconditionFailed

        out = []
        for name, data, gen, *_durable in items:
            self._spend()
            try:
                out.append(self._store.write(name, data, if_generation_match=gen))  # type: ignore[attr-defined]
            except PreconditionFailed:
                out.append(0)
        return out


@pytest.mark.parametrize("budget", range(1, 9))
def test_a_publisher_killed_between_its_writes_is_repaired_by_a_reindex(
    repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """Killed after each of its writes in turn (the project JSON, the index page, its shard, the
    head, the page its row leaves, a sealed page...): the list may show the project's row twice or
    not yet, until the next writer of that project or a reindex, which leaves every row once. On
    both backends: on GCS the reindex finds what is stale by the md5 its listing gives."""
    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    r = Repository.open(repo.location)
    for i in range(8):
        r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0")])  # proj-0 is on the oldest page
    from provisioner.repo.store import open_store

    dying = Repository(_DiesAfter(open_store(repo.location), budget))  # type: ignore[arg-type]
    with pytest.raises(_Killed):
        dying.publish([_wheel(tmp_path / "b", "proj-0", "2.0"), _wheel(tmp_path / "b", "proj-9", "1.0")])
    r.reindex()
    entries = _consistent(_site(repo))
    assert {e.name for e in entries.values()} >= {f"proj-{i}" for i in range(8)}
    snapshot = repo.snapshot()
    for project in ("proj-0", "proj-9"):  # the index pages show what their JSON holds
        if state := snapshot.get(layout.project_json(project)):
            html = snapshot[layout.project_html(project)].decode()
            assert all(f["filename"] in html for f in json.loads(state)["files"]), project
    assert r.reindex().pages_written == 0


def test_a_publisher_killed_after_its_pages_is_repaired_by_its_next_publish(
    dir_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list pages written but not the shard (the kill between them): the shard still says where
    the row was, so the project's next publish takes it off that page and every row is once."""
    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    r = Repository.open(dir_repo.location)
    for i in range(8):
        r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0")])
    from provisioner.repo.store import open_store

    store = open_store(dir_repo.location)
    shard = layout.ui_shard(paging.shard_of("proj-0"))
    before, _gen = store.read(shard)
    r.publish([_wheel(tmp_path / "b", "proj-0", "2.0")])
    _data, gen = store.read(shard)
    store.write(shard, before, if_generation_match=gen)  # as if the shard's write never happened
    r.publish([_wheel(tmp_path / "c", "proj-0", "3.0")])
    assert _consistent(_site(dir_repo))["proj-0"].version == "3.0"


def test_a_repository_of_the_one_page_layout_is_upgraded_by_the_first_publish(
    repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older pypapo wrote the whole list in ui/index.html and its data in ui/projects.json: the
    first publish of this version writes the pages and shards and deletes the old aggregate; an
    older publisher writing its one-page list again meanwhile is rebuilt over by the next one."""
    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    r = Repository.open(repo.location)
    r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0") for i in range(6)])
    from provisioner.repo.store import open_store

    store = open_store(repo.location)
    entries = _entries(_site(repo))
    old_list = b'<ul class="pp-list" id="projects">\n' + b"".join(
        render.list_row(e).encode() for e in entries.values()
    )
    for name in [n for n in repo.snapshot() if layout.is_packed(n) and "/" not in n[len("ui/") :]]:
        store.delete(name)  # the list's pages and shards (that layout stored them plain)
    store.write("ui/index.html", old_list + b"</ul>\n", if_generation_match=0)
    store.write("ui/projects.json", render.dumps_aggregate(entries), if_generation_match=0)
    r.publish([_wheel(tmp_path / "b", "proj-0", "2.0")])
    assert set(_consistent(_site(repo))) == set(entries)  # and ui/projects.json, ui/index.html are gone
    # An older publisher's one-page list over the head: the next publish of this version rebuilds.
    _data, gen = store.read(layout.UI_LIST)
    store.write(layout.UI_LIST, pack(old_list + b"</ul>\n"), if_generation_match=gen)
    r.publish([_wheel(tmp_path / "c", "proj-1", "2.0")])
    assert _consistent(_site(repo))["proj-1"].version == "2.0"


@pytest.mark.parametrize("how", ["publish", "reindex"])
def test_a_site_the_version_before_stored_plain_is_stored_gzipd_and_the_plain_pages_deleted(
    repo: RepoHandle, tmp_path: Path, how: str
) -> None:
    """The version before stored the site's pages plain (`ui/index.html`, `ui/older-*.html`,
    `ui/search-*.json`, `ui/P/index.html`): the first publish of this version (no gzip'd head: the
    site's one full rebuild) or a reindex stores them as NAME.gz and deletes every plain one."""
    from provisioner.repo.store import open_store

    r = Repository.open(repo.location)
    r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0", description=f"# P{i}\n") for i in range(6)])
    served = _site(repo)
    store = open_store(repo.location)
    plain = {n.removesuffix(layout.PACKED) for n in repo.snapshot() if layout.is_packed(n)}
    assert {"ui/index.html", "ui/proj-3/index.html", layout.ui_shard(0).removesuffix(".gz")} <= plain
    for name in plain:
        store.write(name, served[name], if_generation_match=0)
        store.delete(name + layout.PACKED)
    if how == "publish":
        r.publish([_wheel(tmp_path / "b", "proj-0", "2.0", description="# Two\n")])
        after = _site(repo)  # (asserts that no plain page is left)
        assert '<span class="pp-version">2.0</span>' in after["ui/proj-0/index.html"].decode()
        assert _consistent(after)["proj-0"].version == "2.0"
        assert plain <= set(after)  # each page now gzip'd under NAME.gz
    else:
        Repository.open(repo.location).reindex()
        assert _site(repo) == served


@pytest.mark.parametrize("torn", ["empty", "truncated", "garbage", "plain"])
@pytest.mark.parametrize("which", ["head", "shard", "page"])
def test_a_gzipd_page_that_does_not_decompress_is_rebuilt(
    dir_repo: RepoHandle, tmp_path: Path, torn: str, which: str
) -> None:
    """A stored page that is no whole gzip file (0 bytes, cut short, garbage, the plain page under the
    .gz name) is a page not in form: the next publish (or reindex) writes it anew, nothing fails."""
    r = Repository.open(dir_repo.location)
    r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0", description=f"# P{i}\n") for i in range(4)])
    name = {
        "head": layout.UI_LIST,
        "shard": layout.ui_shard(paging.shard_of("proj-1")),
        "page": layout.ui_project("proj-2"),
    }[which]
    path = Path(dir_repo.location, name)
    good = path.read_bytes()
    garbage = b"\x1f\x8b" + b"\0" * 64
    bad = {"empty": b"", "truncated": good[:-9], "garbage": garbage, "plain": gzip.decompress(good)}
    path.write_bytes(bad[torn])
    r.publish([_wheel(tmp_path / "b", "proj-1", "2.0")])
    r.publish([_wheel(tmp_path / "b", "proj-2", "2.0")])
    site = _site(dir_repo)  # every page decompresses
    assert _consistent(site)["proj-1"].version == "2.0"
    assert '<span class="pp-version">2.0</span>' in site["ui/proj-2/index.html"].decode()
    path.write_bytes(b"")
    Repository.open(dir_repo.location).reindex()
    assert _site(dir_repo) == site


class _Counting:
    """A store that counts the bytes written under ui/."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.site_bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self.site_bytes += len(data) if name.startswith("ui/") else 0
        return self._store.write(name, data, if_generation_match=if_generation_match)  # type: ignore[attr-defined]

    def write_many(self, items: list, *, after: list | tuple = ()) -> list[int]:
        self.site_bytes += sum(len(item.data) for item in items if item.name.startswith("ui/"))
        return self._store.write_many(items, after=after)  # type: ignore[attr-defined]


def test_what_a_publish_uploads_of_the_site_is_small(repo: RepoHandle, tmp_path: Path) -> None:
    """The site's pages go to the bucket gzip'd: a publish into a project with a few releases, among
    a hundred projects (the head, an older page, a shard, the project's page and its release-info
    cache), uploads a few kB of the site (~50-65 kB plain), so each upload fits a TCP connection's
    first flight (14.6 kB)."""
    r = Repository.open(repo.location)
    readme_text = "# Tool\n\n" + "".join(f"## Part {i}\n\nText about `part_{i}()`.\n\n" for i in range(30))
    wheels = [_wheel(tmp_path / "a", f"proj-{i}", "1.0", summary=f"project {i}") for i in range(100)]
    r.publish(wheels)
    for v in ("1.0", "1.1", "1.2"):
        r.publish([_wheel(tmp_path / v, "tool", v, description=readme_text)])
    r.publish([_wheel(tmp_path / "b", f"proj-{i}", "2.0", summary=f"project {i}") for i in range(50, 100)])
    counting = _Counting(Repository.open(repo.location).store)
    Repository(counting).publish([_wheel(tmp_path / "c", "tool", "2.0", description=readme_text)])  # type: ignore[arg-type]
    assert 0 < counting.site_bytes < 20_000, counting.site_bytes
    site = _site(repo)
    assert '<span class="pp-version">2.0</span>' in site["ui/tool/index.html"].decode()
    assert _consistent(site)["tool"].version == "2.0"


class _InTurn:
    """A store whose `together` runs its calls one by one."""

    def __init__(self, store: object) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def together(self, calls: list) -> list:
        return [call() for call in calls]


class _Rounds:
    """A store whose reads of each group wait until every read of that group is in flight: reads
    that come one by one (each a round trip on GCS) break the group's barrier and fail. Each read
    named waits once (its first time). It logs when each read starts and ends."""

    def __init__(self, store: object, groups: list[set[tuple[str, str]]]) -> None:
        self._store = store
        self._barriers = {key: threading.Barrier(len(g), timeout=20) for g in groups for key in g}
        for g in groups:  # one barrier per group
            shared = self._barriers[next(iter(g))]
            self._barriers.update(dict.fromkeys(g, shared))
        self._lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # ("start" | "end", op, name)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def _call(self, op: str, name: str) -> object:
        with self._lock:
            self.log.append(("start", op, name))
            barrier = self._barriers.pop((op, name), None)
        if barrier is not None:
            barrier.wait()
        try:
            return getattr(self._store, op)(name)
        finally:
            with self._lock:
                self.log.append(("end", op, name))

    def read(self, name: str) -> tuple[bytes, int]:
        return self._call("read", name)  # type: ignore[return-value]

    def stat(self, name: str) -> object:
        return self._call("stat", name)

    def started_after_ended(self, later: tuple[str, str], *earlier: tuple[str, str]) -> bool:
        start = self.log.index(("start", *later))
        return all(self.log.index(("end", *e)) < start for e in earlier)


def test_what_a_publish_reads_of_the_site_goes_in_few_rounds_across_a_network(
    gcs_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across a network each read is a round trip, and the site's reads must be done by the time
    the index's few upload rounds are: what a change is written against (the page's generation,
    the shard, the head) is read side by side, then the older page its row is on beside the
    setting (read after the generations); the assets in one round, by their md5 (not downloaded:
    13 kB a publish); the README's inputs (the
    setting, its cache, whether each dependency is held) in one. Same results as one by one.
    (On GCS, `Store.together`; a directory reads in turn, cheaper than a thread hop.)"""
    repo = gcs_repo
    from provisioner.repo import layout
    from provisioner.repo.site.writer import Site, _render_ahead
    from provisioner.repo.store import open_store

    monkeypatch.setattr(paging, "PAGE_ROWS", 2)
    r = Repository.open(repo.location)
    for i in range(8):
        r.publish([_wheel(tmp_path / "a", f"proj-{i}", "1.0")])  # proj-0's row is on the oldest page
    store = open_store(repo.location)
    plain = Site(_InTurn(store))._read_staged("proj-0")  # type: ignore[arg-type]
    older = [p for p in plain.pages if p != paging.HEAD]
    assert len(older) == 1
    first = {
        ("stat", layout.ui_project("proj-0")),
        ("read", layout.ui_shard(paging.shard_of("proj-0"))),
        ("read", layout.UI_LIST),
    }
    second = {("stat", "ui/remote-images"), ("read", layout.ui_page(older[0]))}
    gated = _Rounds(store, [first, second])
    assert Site(gated)._read_staged("proj-0") == plain  # type: ignore[arg-type]
    assert all(gated.started_after_ended(later, *first) for later in second)

    # The assets: stated side by side, and none downloaded (GCS's md5 says they are this version's).
    assets = {("stat", f"ui/{name}") for name in ("site.css", "site.js", "favicon.svg")}
    gated = _Rounds(store, [assets])
    assert Site(gated).ensure_assets() == 0  # type: ignore[arg-type]
    assert not [e for e in gated.log if e[1] == "read"]

    meta = sample.core_metadata("proj-0", "2.0", requires_dist=["proj-1>=1", "not-here; extra == 'x'"])
    inputs = {
        ("stat", "ui/remote-images"),
        ("read", "ui/proj-0/proj_0-2.0-py3-none-any.whl.json"),
        ("stat", "simple/proj-1/index.json"),
        ("stat", "simple/not-here/index.json"),
    }
    held: dict[str, bool] = {}
    gated = _Rounds(store, [inputs])
    info, remote_images, cache_gen = _render_ahead(
        gated, "proj-0", "proj_0-2.0-py3-none-any.whl", meta.encode(), "0" * 64, held
    )  # type: ignore[arg-type]
    assert held == {"proj-1": True, "not-here": False}
    assert (remote_images, cache_gen, info.requires_dist) == (
        False,
        0,
        ("proj-1>=1", "not-here; extra == 'x'"),
    )

    # A change its batch cannot take (a seal, a project gone): its reads go side by side too.
    generations = {
        ("stat", layout.UI_LIST),
        ("stat", layout.ui_project("proj-3")),
        ("read", layout.ui_shard(paging.shard_of("proj-3"))),
    }
    after = {("stat", "ui/remote-images"), ("read", "simple/proj-3/index.json")}
    gated = _Rounds(store, [generations, after])
    listed = _consistent(_site(repo))
    Site(gated).update(["proj-3"])  # type: ignore[arg-type]
    assert all(gated.started_after_ended(later, *generations) for later in after)
    assert _consistent(_site(repo)) == listed

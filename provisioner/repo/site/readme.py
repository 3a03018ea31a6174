"""A project's README (core metadata `Description`) rendered as PyPI renders it, then made inert.

The choice of renderer is warehouse's (`warehouse/utils/readme.py`): no content type or `text/x-rst`
is reStructuredText, `text/markdown` is Markdown (its `variant` parameter: GFM or CommonMark),
`text/plain` is preformatted text, and anything that fails to render falls back to plain text.
`readme_renderer` already sanitizes with nh3; a README is untrusted, so the result goes through a
second, stricter allowlist of our own:

- no scripts, styles, event handlers, iframes, objects, forms or inputs (readme_renderer allows
  disabled checkboxes), no `javascript:`/`data:` URLs (only http, https, mailto and relative links);
- every `id` is prefixed (`readme-`) and in-page links follow, so a README cannot clobber the page's
  own elements;
- class names of the site's own styles (`pp-...`) are removed, so a README cannot dress up as the page;
- no images unless `remote_images` (then https ones): a remote image is a request to a third party
  each time someone opens the page, and a relative one points at a file of the project's source
  tree that the repository does not hold (a broken image and a 404). An image not shown is its
  alt text (no broken-image icon), and one without alt text is gone, so a badge's link keeps a name;
- admonitions (`.. note::`, a Markdown `> [!WARNING]`) keep their box and title, as an element
  with `role="note"` (readme_renderer's `<aside>` would be a second sidebar landmark of the page);
- self-links without text (the heading anchors) are dropped: a link needs a name for a screen reader;
  code blocks get `tabindex="0"` so that one that scrolls sideways can be scrolled from the keyboard.

A reStructuredText README longer than `apart.RST_APART` renders in a child process that a deadline
stops (docutils is slow, and nothing in a process can stop it); everything else is pure.

Markdown is rendered by `readme_renderer.markdown`'s own steps (its renderer of the variant, its
clean), with the code blocks highlighted as its `_highlight` does but with one Pygments formatter per
process and each language's lexer class looked up once: building an `HtmlFormatter` and scanning
Pygments' lexer table cost ~0.2 ms a README, a sixth of the rendering, in a reindex of thousands.
The bytes are readme_renderer's: a probe README is rendered both ways the first time, and any
difference (another readme_renderer) makes this process use `readme_renderer.markdown.render`.
"""

from __future__ import annotations

import functools
import html as html_module
import re
from collections.abc import Callable
from email.message import EmailMessage

import nh3
import pygments
import pygments.formatters
import pygments.lexers
import readme_renderer.clean
import readme_renderer.markdown
import readme_renderer.rst
import readme_renderer.txt
from pygments.lexer import Lexer
from pygments.token import STANDARD_TYPES

from provisioner.repo.site import apart, bounds

ID_PREFIX = "readme-"
SITE_CLASS_PREFIX = "pp-"

_TAGS = {
    "a", "abbr", "acronym", "aside", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup",
    "dd", "del", "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "picture", "pre", "section", "span",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "tt", "ul", "var",
}  # fmt: skip
_ATTRIBUTES = {
    "*": {"id"},
    "a": {"href", "title"},
    "abbr": {"title"},
    "acronym": {"title"},
    "img": {"width", "height", "alt", "align"},  # src: see _filter
    "p": {"align"},
    "div": {"align"},
    "th": {"align"},
    "td": {"align", "colspan", "rowspan"},
    "ol": {"start"},
    **{f"h{n}": {"align"} for n in range(1, 7)},
}
# Classes: only Pygments' token classes (what highlighting needs) and readme_renderer's structural
# ones. Never the site's own (`pp-...`), so a README cannot dress up as the page.
_CLASSES = frozenset(STANDARD_TYPES.values()) | {"highlight", "code", "literal-block", "notranslate"}
_ALLOWED_CLASSES = {tag: set(_CLASSES) for tag in ("span", "code", "pre", "div")}
# reStructuredText's inline literals (``code``) are <span class="docutils literal">: without the
# class they read as prose.
_ALLOWED_CLASSES["span"] |= {"docutils", "literal"}
# Admonitions (`.. note::`, `.. warning::`, a Markdown `> [!NOTE]`...): readme_renderer writes them as
# <aside class="admonition KIND"><p class="admonition-title">; docutils' topics and sidebars alike.
_ASIDE_KINDS = {
    "attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning",
}  # fmt: skip
_ALLOWED_CLASSES["aside"] = {"admonition", "topic", "sidebar", *_ASIDE_KINDS}
_ALLOWED_CLASSES["p"] = {"admonition-title", "topic-title", "sidebar-title"}
# Removed together with their content (the others are unwrapped and keep their text).
_DROP_WITH_CONTENT = {"script", "style", "template", "iframe", "object", "embed", "noscript", "svg", "math"}
_SCHEMES = {"http", "https", "mailto"}
# nh3's output is canonical: every attribute is quoted with " (a " within is &quot;), so this reads
# a start tag's attributes exactly, even where a value holds "<" or ">".
_ATTRS = r'(?: [a-z][a-z0-9-]*+="[^"]*+")*+'
_EMPTY_LINK = re.compile(rf"<a{_ATTRS}>\s*+</a>")
_IMG = re.compile(rf"<img({_ATTRS})>")
# White space at a link's inner edges (`<a href=...>\n<img ...>\n</a>` in raw HTML and from docutils)
# is an underlined blank beside the link's text: it moves out of the link, the text unchanged. (A run
# of white space is matched from its start only, and never given back: 200,000 blanks before a tag
# took 131 s, each blank a start that read to the run's end.)
_LINK_LEAD = re.compile(rf"(<a{_ATTRS}>)(\s++)")
_LINK_TAIL = re.compile(r"(?<!\s)(\s++)</a>")
_SRC = re.compile(r' src="')
_ALT = re.compile(r' alt="([^"]*)"')
# docutils' alt text for an `.. image::` without `:alt:` is its URI: no description (a badge's URL).
_URL_ONLY = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*")
_PRE = re.compile(r"<pre(?=[\s>])")
# An <aside> in the page's <main> would be a second complementary landmark (beside the page's own
# sidebar: screen readers list it, axe flags it); a README's is a note within the text.
_ASIDE = re.compile(r"<(/?)aside(?=[\s>])")
_FRAGMENT = re.compile(r'href="#')

_RENDERERS = {
    "": readme_renderer.rst,
    "text/x-rst": readme_renderer.rst,
    "text/plain": readme_renderer.txt,
    "text/markdown": readme_renderer.markdown,
}


def _remote_image(tag: str, attr: str, value: str) -> str | None:
    # Only with remote images opted in (a Python callback per attribute is slow: not the default).
    if tag == "img" and attr == "src":
        return value if value.strip().lower().startswith("https://") else None
    return value


def sanitize(html: str, *, remote_images: bool = False) -> str:
    """Our allowlist over HTML from readme_renderer (or anywhere): what is left cannot run."""
    attributes = _ATTRIBUTES
    if remote_images:
        attributes = {**_ATTRIBUTES, "img": _ATTRIBUTES["img"] | {"src"}}
    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=attributes,
        allowed_classes=_ALLOWED_CLASSES,
        attribute_filter=_remote_image if remote_images else None,
        id_prefix=ID_PREFIX,
        link_rel="nofollow noopener noreferrer ugc",
        url_schemes=_SCHEMES,
        strip_comments=True,
    )
    # In-page links follow the prefixed ids; a code block that scrolls sideways must be reachable
    # from the keyboard. (nh3's output is canonical: every attribute is quoted with ".)
    cleaned = _FRAGMENT.sub(f'href="#{ID_PREFIX}', cleaned)
    cleaned = _ASIDE.sub(lambda m: "</div" if m[1] else '<div role="note"', cleaned)
    if "<img" in cleaned:
        cleaned = _IMG.sub(_unshown_image, cleaned)
    cleaned = _LINK_TAIL.sub(r"</a>\1", _LINK_LEAD.sub(r"\2\1", cleaned))
    return _PRE.sub('<pre tabindex="0"', _EMPTY_LINK.sub("", cleaned))


def _unshown_image(m: re.Match[str]) -> str:
    """An image left without a source (not shown) as its alt text: an <img> without src is a
    broken-image icon, and a linked badge with an empty alt a link with no name. No alt, or only
    a URL: nothing to say, dropped (an emptied link then goes too)."""
    if _SRC.search(m[1]):
        return m[0]
    alt = _ALT.search(m[1])
    text = html_module.unescape(alt[1]).strip() if alt else ""
    if not text or _URL_ONLY.fullmatch(text):
        return ""
    return (
        f'<span class="{SITE_CLASS_PREFIX}noimg" role="img" aria-label="{html_module.escape(text)}">'
        f"{html_module.escape(text, quote=False)}</span>"
    )


@functools.lru_cache(maxsize=256)  # a repository has few distinct values; parsing one costs 40 us
def _content_type(value: str | None) -> tuple[str, str | None]:
    """The content type's `type/subtype` and its `variant` parameter (None without one)."""
    if not value:
        return "", None
    msg = EmailMessage()
    msg["content-type"] = value
    return msg.get_content_type(), dict(msg["content-type"].params).get("variant")


# --- Markdown: readme_renderer's steps, its highlighting without per-README set-up -----------------

# readme_renderer.markdown._highlight's pattern: a fenced code block with an info string, in the
# form of either cmarkgfm version (`<pre><code class="language-X">` or `<pre lang="X"><code>`).
_CODE_BLOCK = re.compile(
    r'(<pre>(?P<in_code><code) class="language-|<pre lang=")(?P<lang>[^"]+?)">'
    r"(?(in_code)|<code>)(?P<code>.+?)"
    r"</code></pre>",
    re.DOTALL,
)


@functools.cache
def _formatter() -> pygments.formatters.HtmlFormatter:  # type: ignore[type-arg]
    # Formatting reads the formatter's options and style tables and fills a cache of the same
    # strings: one instance serves every block, in every thread.
    return pygments.formatters.HtmlFormatter(nowrap=True)


# The lexer class of each language name found (lower-cased, as Pygments matches them: bounded by
# its aliases); a name Pygments does not know is looked up again (it is rare) and gets plain text.
_LEXERS: dict[str, type[Lexer]] = {}


def _lexer(lang: str) -> Lexer:
    cls = _LEXERS.get(lang.lower())
    if cls is None:
        try:
            found = pygments.lexers.get_lexer_by_name(lang)
        except ValueError:  # ClassNotFound
            return pygments.lexers.TextLexer()
        _LEXERS[lang.lower()] = cls = type(found)
        return found
    return cls()  # a new instance per block, as get_lexer_by_name gives: no lexer state is shared


def _highlight_block(match: re.Match[str]) -> str:
    lang = match.group("lang")
    code = html_module.unescape(match.group("code"))
    return f'<pre lang="{lang}">{pygments.highlight(code, _lexer(lang), _formatter())}</pre>'


# A README longer than this (characters) is not rendered: its beginning is shown as plain text,
# with a note. Metadata may hold 4 MB: highlighting 4 MB of Python took 17 s of a publish (and of
# every reindex that renders it) and made a 39 MB page; the longest real READMEs (a changelog
# included) are a few hundred kB at most.
README_MAX = 256_000


def _markdown_steps(raw: str, variant: str = "GFM") -> str | None:
    """`readme_renderer.markdown.render(raw, variant)` done with its own steps."""
    md = readme_renderer.markdown
    renderer = md.variants.get(variant)
    if renderer is None:
        return md.render(raw, variant)  # no renderer installed, or an unknown variant: its answer
    rendered = renderer(raw)
    if not rendered:
        return None
    bounds.check_size(rendered)
    bounds.check_html(rendered)
    prefix_links = getattr(md, "_prefix_relative_links", None)  # readme_renderer >= 46 (comrak)
    if variant == "GFM" and prefix_links is not None:
        rendered = prefix_links(rendered, md._HEADER_ID_PREFIX)
    return readme_renderer.clean.clean(_CODE_BLOCK.sub(_highlight_block, rendered))


# What the steps are checked on: headings and their links, code in a known, an unknown and an
# upper-cased language, entities in code, a table, a footnote and raw HTML.
_PROBE = """# Probe <em>x</em>

See [below](#usage) and [^1].

## Usage

```python
print("a < b" and 'c' & d)  # comment
```

```no-such-language
x = 1
```

```SH
echo "$HOME" > /tmp/x
```

| a | b |
|---|---|
| `c` | d |

<div align="center">raw</div>

[^1]: a footnote
"""


@functools.cache
def _markdown() -> Callable[..., str | None]:
    """Our steps if they give readme_renderer's bytes (checked once per process), else its own."""
    md = readme_renderer.markdown
    try:
        same = all(_markdown_steps(_PROBE, v) == md.render(_PROBE, v) for v in ("GFM", "CommonMark"))
    except Exception:  # another readme_renderer's internals: use its own render
        same = False
    return _markdown_steps if same else md.render


def _as_text(description: str, why: str) -> str:
    """A README shown as its plain text (its beginning: README_MAX characters), after a note why."""
    note = f"<p><strong>{why}: it is shown as plain text.</strong></p>"
    return sanitize(f"{note}<pre>{readme_renderer.txt.render(description[:README_MAX])}</pre>")


def render(description: str | None, content_type: str | None, *, remote_images: bool = False) -> str:
    """Safe HTML for a README; '' when there is none. Never raises, whatever the README holds."""
    if not description or not description.strip():
        return ""
    try:
        return _render(description, content_type, remote_images)
    except BaseException as exc:
        # A Rust renderer's panic (comrak, nh3) reaches Python as pyo3's PanicException, a
        # BaseException (past every `except Exception`): it would fail the publish after the index
        # was written, and every reindex after it. Escaped text needs no sanitizer (nh3 is Rust too).
        if type(exc).__name__ != "PanicException":
            raise
        note = "<p><strong>This README made its renderer fail: it is shown as plain text.</strong></p>"
        return f"{note}<pre>{html_module.escape(description[:README_MAX], quote=False)}</pre>"


def _render(description: str, content_type: str | None, remote_images: bool) -> str:
    if len(description) > README_MAX:
        return _as_text(
            description,
            f"This README is {len(description):,} characters long, more than the {README_MAX:,} "
            "this site renders (the whole text is in the release's metadata file); its beginning",
        )
    kind, variant_param = _content_type(content_type)
    renderer = _RENDERERS.get(kind, readme_renderer.txt)
    variant = {"variant": variant_param} if kind == "text/markdown" and variant_param is not None else {}
    try:
        if renderer is readme_renderer.markdown:
            bounds.check_markdown(description)
            rendered = _markdown()(description, **variant)
        elif renderer is readme_renderer.rst and len(description) > apart.RST_APART:
            rendered = apart.render_rst(description)
        else:
            if renderer is readme_renderer.rst:
                bounds.check_rst(description)
            rendered = renderer.render(description, **variant)
            bounds.check_size(rendered)
    except bounds.Intricate as why:
        return _as_text(description, str(why))
    except apart.FAILURES:  # must not fail the publish or the reindex
        rendered = None
    if rendered is not None and renderer is readme_renderer.txt:
        rendered = f"<pre>{rendered}</pre>"
    if rendered is None:  # what PyPI does with a README that does not render
        rendered = f"<pre>{readme_renderer.txt.render(description)}</pre>"
    return sanitize(rendered, remote_images=remote_images)

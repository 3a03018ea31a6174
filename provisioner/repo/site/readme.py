"""Pure: a project's README (core metadata `Description`) rendered as PyPI renders it, then made inert.

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
  tree that the repository does not hold (a broken image and a 404). The alt text stays;
- self-links without text (the heading anchors) are dropped: a link needs a name for a screen reader;
  code blocks get `tabindex="0"` so that one that scrolls sideways can be scrolled from the keyboard.

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
import itertools
import re
from collections.abc import Callable, Container
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

ID_PREFIX = "readme-"
SITE_CLASS_PREFIX = "pp-"

_TAGS = {
    "a", "abbr", "acronym", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup",
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
# Removed together with their content (the others are unwrapped and keep their text).
_DROP_WITH_CONTENT = {"script", "style", "template", "iframe", "object", "embed", "noscript", "svg", "math"}
_SCHEMES = {"http", "https", "mailto"}
_EMPTY_LINK = re.compile(r"<a [^>]*></a>")
_PRE = re.compile(r"<pre(?=[\s>])")
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
    return _PRE.sub('<pre tabindex="0"', _EMPTY_LINK.sub("", cleaned))


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
# Nor a Markdown one nested deeper than this (blockquotes and lists opened on one line; elements
# inside each other, raw HTML included): the renderer's blockquotes and html5ever's (nh3's) scope checks
# take time quadratic in the depth (64,000 `>` took 16 s, 40,000 nested <div> 9 s). A real README
# nests a handful of levels. (reStructuredText nests by indentation, and docutils stops at
# Python's recursion limit, ~200 levels: that README does not render, and is shown as plain text.)
README_DEPTH = 32
# Nor one with a table row of more cells than this, or more lines of raw HTML in a row, or more
# tags in one block of it: the renderer's (comrak's) tables take time quadratic in their columns
# (60,000 took 3.5 s), and its HTML blocks in their lines and in the `<` they hold (62,500 lines
# of `<p>` took 5.3 s; one line of 160,000 `<` 7 s). Real ones have tens, or hundreds.
README_COLUMNS = 1000
README_HTML_LINES = 2000
README_HTML_TAGS = 10_000
# Nor a reStructuredText one with more footnotes and citations than this: docutils resolves them
# in time worse than linear (8,000 took 4.6 s; 12,800 fit in README_MAX). Real ones have tens.
README_NOTES = 1000
_RST_NOTE = re.compile(r"^[ \t]*\.\.[ \t]+\[[^\]\n]*\]", re.MULTILINE)
# Nor one whose substitutions expand more than this many times, or to more than README_HTML_MAX
# characters: a substitution may hold others, each expansion costs docutils ~0.4 ms, and the
# text is copied each time (375 bytes of five levels of ten took 37 s; 89 kB of 20,000 references
# to 9 kB made a 180 MB page and 2.4 GB of memory). Real ones: badges, a name, tens of uses.
README_SUBSTITUTIONS = 2000
# A definition (`.. |name| replace:: text`, its indented lines) and a reference (`|name|`).
_RST_SUBSTITUTION = re.compile(
    r"^([ \t]*+)\.\.[ \t]++\|([^|\n]++)\|[ \t]++[^\n:]*+::(.*+(?:\n(?:\1[ \t]++\S.*+|[ \t]*+(?=\n)))*+)",
    re.MULTILINE,
)
# A hyperlink target (`.. _name: URL`, its indented lines; `name <URL>`_), and what may use one
# (`name_`, `` `a name`_ ``): each use is a link holding the whole URL.
_RST_TARGET = re.compile(r"^[ \t]*+\.\.[ \t]++_[^\n:]*+:(.*+(?:\n[ \t]++\S.*+)*+)", re.MULTILINE)
_RST_EMBEDDED = re.compile(r"<([^<>\n]*+)>`__?")
_RST_LINK_USE = re.compile(r"[\w`]__?+(?!\w)")
_RST_REFERENCE = re.compile(r"\|(?![ \t])([^|\n]+?)(?<![ \t])\|")
# The raw HTML blocks that a blank line does not end, and what ends each (CommonMark's kinds 1-5:
# the rest of a README after an unclosed `<!--` is one block).
_SPANNING = re.compile(
    r" {0,3}<(?:(script|pre|style|textarea)(?=[ \t>]|$)|(!--)|(\?)|(!\[CDATA\[)|(![A-Za-z]))", re.I
)
_SPAN_ENDS = tuple(
    re.compile(end, re.I) for end in (r"</(?:script|pre|style|textarea)>", "-->", r"\?>", r"\]\]>", ">")
)
# Nor one with more links (`@`, `://`) on one line than this: the renderer links each e-mail
# address in a line with a recursion one deeper and a scan of the line (20,000 took 0.7 s; from
# ~27,000 its stack overflowed and the process died, a publish and every reindex after it), and
# each `https://a.b<` with a scan too (25,000: 1.4 s). Real lines have a few.
README_LINE_LINKS = 1000
# Nor a Markdown one whose headings are this many of one name, or as costly: the renderer gives
# the n-th heading of a name its id by trying `name`, `name-1`, `name-2`... in turn (64,000 `# a`
# fit in README_MAX and take minutes; 10,000 took 2.3 s). Every id a heading tries has its root (its
# id less any `-1` suffixes), so a heading tries no more ids than the headings before it of that
# root. Roots are counted coarser than the renderer's ids, never finer: `A`, `a 1`, `[a](x)`,
# `&#97;`, `*a*` are all `a`. Real READMEs repeat a "Bug fixes" once per release.
README_ALIKE = 3000
_ATX = re.compile(r" {0,3}#{1,6}(?=[ \t]|$)")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*$")
_NOT_TEXT = re.compile(r"\]\([^)]*\)|\]\[[^\]]*\]|\[\^[^\]]*\]|<[^>]*>")  # link targets, notes, tags
_SEPARATORS = re.compile(r"[ -]+")
_ID_SUFFIX = re.compile(r"(?:-[0-9]+)+$")
# Nor one that renders to more HTML than this (characters), before it is highlighted and cleaned:
# 256 kB of footnote references rendered to 15 MB (a 10 MB page), of links to 2 MB.
README_HTML_MAX = 2_000_000
_CONTAINER = re.compile(r"[ \t]{0,3}(?:>|[-+*](?=[ \t])|[0-9]{1,9}[.)](?=[ \t]))[ \t]?")
# A start or end tag as the HTML tokenizer reads one: `<`, a letter, the name up to a space, `/` or
# `>`; attributes whose quoted values may hold `<` and `>`; `>`. A tag left open runs to the end
# (the tokenizer reads the rest as its attributes). Possessive, and never failing after `<` and a
# letter: linear on any input.
_WS = "\t\n\f\r "
_HTML_TAG = re.compile(
    rf"<(/?)([A-Za-z][^{_WS}/>]*+)"
    rf"(?:[{_WS}/]*+[^{_WS}/>][^{_WS}/>=]*+"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"[^\"]*+(?:\"|\Z)|'[^']*+(?:'|\Z)|[^{_WS}\"'>][^{_WS}>]*+)?+)?+)*+"
    rf"[{_WS}/]*+(?:>|\Z)"
)
# A tag closed by `/>` is closed (in SVG and MathML) unless that `/` ends an unquoted value.
_UNQUOTED_END = re.compile(rf"=[{_WS}]*+[^{_WS}\"'>][^{_WS}>]*+>$")
# How deep html5ever nests elements, modelled closely enough never to count less: the tag names
# of the HTML parsing spec's "void", "special" and scope-boundary elements, and which open
# elements a start tag closes (li closes li, td closes th, a block closes p).
_VOID = frozenset(
    {"area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input"}
    | {"keygen", "link", "meta", "param", "source", "track", "wbr"}
)
_SPECIAL = _VOID | frozenset(
    {"address", "applet", "article", "aside", "blockquote", "body", "button", "caption", "center"}
    | {"colgroup", "dd", "details", "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure"}
    | {"footer", "form", "frameset", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hgroup"}
    | {"html", "iframe", "li", "listing", "main", "marquee", "menu", "nav", "noembed", "noframes"}
    | {"noscript", "object", "ol", "p", "plaintext", "pre", "script", "search", "section", "select"}
    | {"style", "summary", "table", "tbody", "td", "template", "textarea", "tfoot", "th", "thead"}
    | {"title", "tr", "ul", "xmp", "svg", "math"}
)
# Every scope's boundaries at once: stopping at more of them only ever counts deeper.
_BOUNDARY = frozenset(
    {"applet", "button", "caption", "html", "marquee", "object", "ol", "table", "td", "template"}
    | {"th", "ul", "svg", "math"}
)
_FORMATTING = frozenset(
    {"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u"}
)
# A start tag: the open elements of these names it closes, with what is inside them, unless one of
# those others comes first (a list item closes the one before it, not an outer list's).
_LIST_ITEM = _SPECIAL - {"address", "div", "p"}
_IN_TABLE = frozenset({"html", "table", "template"})
_CLOSED_BY: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), _LIST_ITEM),
    "dt": (frozenset({"dt", "dd"}), _LIST_ITEM),
    "dd": (frozenset({"dt", "dd"}), _LIST_ITEM),
    "option": (frozenset({"option"}), _SPECIAL),
    "td": (frozenset({"td", "th"}), _IN_TABLE),
    "th": (frozenset({"td", "th"}), _IN_TABLE),
    "tr": (frozenset({"tr"}), _IN_TABLE),
    **dict.fromkeys(("tbody", "thead", "tfoot"), (frozenset({"tbody", "thead", "tfoot"}), _IN_TABLE)),
}
_CLOSES_P = frozenset(
    {"address", "article", "aside", "blockquote", "center", "details", "dialog", "dir", "div"}
    | {"dd", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3"}
    | {"h4", "h5", "h6", "header", "hgroup", "hr", "li", "listing", "main", "menu", "nav", "ol"}
    | {"p", "pre"}
    | {"search", "section", "summary", "table", "ul", "xmp"}
)
_TOO_DEEP = f"This README nests more than {README_DEPTH} levels deep"


class _Intricate(Exception):
    """A README not rendered, and why (the note above its plain text)."""


def _heading_root(text: str) -> str:
    """The root of the id a heading's text is given (as the renderer makes ids: lower-cased,
    letters, digits and hyphens, a space a hyphen), less its markup and any `-1` suffixes."""
    plain = html_module.unescape(_NOT_TEXT.sub("", text)).lower()
    slug = _SEPARATORS.sub("-", "".join(c for c in plain if c.isalnum() or c in " -")).strip("-")
    return _ID_SUFFIX.sub("", slug)


def _check_markdown(text: str) -> None:
    """Refuse (`_Intricate`) Markdown that opens more than README_DEPTH containers on one line, has
    a table row of more than README_COLUMNS cells or a line of more than README_LINE_LINKS links, a
    block of raw HTML (from a line that starts with a tag to the next blank line, or to the end of
    its comment, `<script>`...) of more than
    README_HTML_LINES tag lines or README_HTML_TAGS `<`, or headings that may cost their ids more
    than README_ALIKE of one name would, before the renderer reads it. Linear."""
    html_lines = html_tags = 0
    alike: dict[str, int] = {}
    tries, budget = 0, README_ALIKE * (README_ALIKE - 1) // 2
    before = ""  # the line before, its containers left out (a setext heading's text)
    spanning: re.Pattern[str] | None = None  # what ends the raw HTML block the line is in, if kind 1-5
    for line in text.splitlines():
        if line.count("|") > README_COLUMNS:
            raise _Intricate(f"This README has a table row of more than {README_COLUMNS:,} cells")
        if line.count("@") + line.count("://") > README_LINE_LINKS:
            raise _Intricate(f"This README has more than {README_LINE_LINKS:,} links on one line")
        depth, at = 0, 0
        while (m := _CONTAINER.match(line, at)) and m.end() > at:
            depth, at = depth + 1, m.end()
            if depth > README_DEPTH:
                raise _Intricate(_TOO_DEEP)
        if spanning is None and (opened := _SPANNING.match(line, at)):
            end = _SPAN_ENDS[opened.lastindex - 1]  # type: ignore[operator]
            spanning = None if end.search(line, opened.end()) else end
        elif spanning is not None and spanning.search(line):
            spanning = None  # the block ends with this line (its count, with the next blank one)
        if not line.strip():
            if spanning is None:
                html_lines = html_tags = 0
        elif line.startswith("<", at) or line.lstrip(" ").startswith("<"):
            html_lines += 1
            html_tags += line.count("<")
        elif html_lines:
            html_tags += line.count("<")  # within the block: the lines that follow its first tag
        if html_lines > README_HTML_LINES:
            raise _Intricate(f"This README has more than {README_HTML_LINES:,} lines of HTML in a row")
        if html_tags > README_HTML_TAGS:
            raise _Intricate(f"This README has more than {README_HTML_TAGS:,} tags in one block of HTML")
        heading = m.end() if (m := _ATX.match(line, at)) else None
        if heading is not None or (before.strip() and _SETEXT.match(line, at)):
            key = _heading_root(line[heading:] if heading is not None else before)
            tries += alike.get(key, 0)  # at most the ids this one tries before its own
            alike[key] = alike.get(key, 0) + 1
            if tries > budget:
                raise _Intricate(
                    f"This README has too many headings of the same name ({max(alike.values()):,})"
                )
        before = line[at:]


def _check_rst(text: str) -> None:
    """Refuse (`_Intricate`) reStructuredText with more than README_NOTES footnotes and citations,
    or whose substitutions expand more than README_SUBSTITUTIONS times or to more than
    README_HTML_MAX characters, or whose links may (each use of a target copies its URL: 5,000
    uses of a 9 kB one took 557 MB), counted before docutils expands any. Linear."""
    if sum(1 for _ in itertools.islice(_RST_NOTE.finditer(text), README_NOTES + 1)) > README_NOTES:
        raise _Intricate(f"This README has more than {README_NOTES:,} footnotes and citations")
    longest = max(
        (len(m.group(1)) for m in itertools.chain(_RST_TARGET.finditer(text), _RST_EMBEDDED.finditer(text))),
        default=0,
    )
    if longest * len(_RST_LINK_USE.findall(text)) > README_HTML_MAX:
        raise _Intricate(
            "This README has hyperlink references that may expand to more than "
            f"{README_HTML_MAX:,} characters"
        )
    uses, size = _substitutions(text)
    if uses > README_SUBSTITUTIONS or size > README_HTML_MAX:
        raise _Intricate(
            f"This README has substitutions that expand more than {README_SUBSTITUTIONS:,} times or to "
            f"more than {README_HTML_MAX:,} characters"
        )


def _substitution_key(name: str) -> str:
    return " ".join(name.split()).lower()  # docutils falls back to the name case-insensitively


def _substitutions(text: str) -> tuple[int, int]:
    """How many times a README's substitution references expand, counting those inside others,
    and to how many characters: at least as many as docutils would (a circle it refuses counts
    once). Each count is capped just past its bound, so that numbers stay small."""
    cap = max(README_SUBSTITUTIONS, README_HTML_MAX) + 1
    holds: dict[str, list[str]] = {}  # a definition: the references in it
    length: dict[str, int] = {}
    body: list[str] = []
    at = 0
    for m in _RST_SUBSTITUTION.finditer(text):
        body.append(text[at : m.start()])
        at = m.end()
        key = _substitution_key(m.group(2))
        refs = [_substitution_key(r) for r in _RST_REFERENCE.findall(m.group(3))]
        if len(refs) >= len(holds.get(key, ())):  # a name defined twice: the larger
            holds[key], length[key] = refs, max(len(m.group(3)), length.get(key, 0))
    body.append(text[at:])
    expanded: dict[str, tuple[int, int]] = {}  # a definition: its uses, its characters, expanded
    for root in holds:
        if root in expanded:
            continue
        # Depth first without recursion (a chain of 10,000 definitions fits in README_MAX).
        sums = {root: [1, length[root]]}
        stack = [(root, iter(holds[root]))]
        while stack:
            name, refs = stack[-1]
            ref = next(refs, None)
            if ref is None:
                stack.pop()
                expanded[name] = (min(cap, sums[name][0]), min(cap, sums[name][1]))
                if stack:
                    parent = sums[stack[-1][0]]
                    parent[0], parent[1] = parent[0] + expanded[name][0], parent[1] + expanded[name][1]
            elif ref in expanded:
                sums[name][0] += expanded[ref][0]
                sums[name][1] += expanded[ref][1]
            elif ref in holds and ref not in sums:  # not one being expanded: a circle
                sums[ref] = [1, length[ref]]
                stack.append((ref, iter(holds[ref])))
    uses = size = 0
    for ref in _RST_REFERENCE.findall("".join(body)):
        one = expanded.get(_substitution_key(ref), (0, 0))
        uses, size = min(cap, uses + one[0]), min(cap, size + one[1])
    return uses, size


def _check_size(html: str | None) -> None:
    """Refuse (`_Intricate`) a README that renders to more than README_HTML_MAX characters."""
    if html is not None and len(html) > README_HTML_MAX:
        raise _Intricate(f"This README renders to more than {README_HTML_MAX:,} characters of HTML")


def _check_html(html: str) -> None:
    """Refuse (`_Intricate`) HTML whose elements nest deeper than README_DEPTH, before html5ever
    (nh3) parses it. The tags as they come (code is escaped by then: `&lt;name&gt;`), on a stack
    that closes what the parser closes, and never more: an end tag closes its element and what
    is open inside it (`</p>` a `<placeholder>` left open in the paragraph); `<div/>` opens a
    div, as it does in HTML. A formatting element (`<b>`...) is open until its own end tag: the
    parser opens it again inside whatever comes after what closed it (a `<b>` in each paragraph
    nests every paragraph after it one deeper). Linear: the stack is never deeper than
    README_DEPTH + 1."""
    stack: list[str] = []
    formatting: dict[str, int] = {}  # the formatting elements open, by name
    depth = 0  # the stack's and those

    def formats(name: str, by: int) -> None:
        nonlocal depth
        now = max(0, formatting.get(name, 0) + by)
        depth += now - formatting.get(name, 0)
        formatting[name] = now

    def close(names: Container[str], stop: Container[str]) -> None:
        # The innermost open element named `names`, and everything inside it, unless `stop` comes first.
        nonlocal depth
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] in names:
                depth -= len(stack) - i
                del stack[i:]
                return
            if stack[i] in stop:
                return

    for m in _HTML_TAG.finditer(html):
        name = m.group(2).lower()
        if name in _VOID:
            continue
        if name in _FORMATTING:
            # An end tag closes the latest of its name; an `<a>` (`<nobr>`) closes the one open.
            formats(name, -1 if m.group(1) or name in ("a", "nobr") else 0)
            if not m.group(1):
                formats(name, 1)
        elif m.group(1):  # an end tag: a special element's closes through the others within its scope
            close({name}, _BOUNDARY if name in _SPECIAL else _SPECIAL)
        else:
            tag = m.group(0)
            closed = tag.endswith("/>") and not _UNQUOTED_END.search(tag)
            if closed and ("svg" in stack or "math" in stack):
                continue  # `<path/>` is closed in SVG and MathML only
            if name in _CLOSES_P:
                close({"p"}, _BOUNDARY)
            if name in _CLOSED_BY:
                close(*_CLOSED_BY[name])
            stack.append(name)
            depth += 1
        if depth > README_DEPTH:
            raise _Intricate(_TOO_DEEP)


def _markdown_steps(raw: str, variant: str = "GFM") -> str | None:
    """`readme_renderer.markdown.render(raw, variant)` done with its own steps."""
    md = readme_renderer.markdown
    renderer = md.variants.get(variant)
    if renderer is None:
        return md.render(raw, variant)  # no renderer installed, or an unknown variant: its answer
    rendered = renderer(raw)
    if not rendered:
        return None
    _check_size(rendered)
    _check_html(rendered)
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
            _check_markdown(description)
            rendered = _markdown()(description, **variant)
        else:
            if renderer is readme_renderer.rst:
                _check_rst(description)
            rendered = renderer.render(description, **variant)
            _check_size(rendered)
    except _Intricate as why:
        return _as_text(description, str(why))
    except (RecursionError, MemoryError, ValueError, TypeError, LookupError, AttributeError):
        # A renderer failing on hostile input (docutils recursing past Python's limit...) must
        # not fail the publish or the reindex: PyPI shows what does not render as plain text.
        rendered = None
    if rendered is not None and renderer is readme_renderer.txt:
        rendered = f"<pre>{rendered}</pre>"
    if rendered is None:  # what PyPI does with a README that does not render
        rendered = f"<pre>{readme_renderer.txt.render(description)}</pre>"
    return sanitize(rendered, remote_images=remote_images)

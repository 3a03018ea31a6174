"""Pure: how much a README may ask of its renderers before it is rendered, and the checks.

A README is untrusted, and the renderers (comrak for Markdown, docutils for reStructuredText,
html5ever in nh3 for the HTML of both) take time quadratic in some of its shapes, or more memory
than the machine has, or overflow their stack and kill the process (a publish, and every reindex
after it). Each bound below names what it was measured to cost; each check is linear, runs before
the renderer it protects, and counts at least what the renderer would (never finer): a README
past a bound raises `Intricate`, and is shown as plain text with the reason (`readme.render`).
Real READMEs stay far below every bound.
"""

from __future__ import annotations

import html as html_module
import itertools
import re
from collections.abc import Container

# A Markdown README nested deeper than this (blockquotes and lists opened on one line; elements
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
# Headings, however indented (a tab after a list marker is its content's indent: never fewer).
_ATX = re.compile(r"[ \t]*+#{1,6}(?=[ \t]|$)")
_SETEXT = re.compile(r"[ \t]*+(?:=++|-++)[ \t]*+$")
# Link targets, notes, tags; each part stops at the next bracket or `<` (linear: a heading of
# 100 kB of `<!--` took 0.8 s when a part ran to the end of the line and failed there).
_NOT_TEXT = re.compile(r"\]\([^()\[\]]*+\)|\]\[[^\[\]]*+\]|\[\^[^\[\]]*+\]|<[^<>]*+>")
_SEPARATORS = re.compile(r"[ -]+")
_ID_SUFFIX = re.compile(r"(?:-[0-9]+)+$")
# Nor one that renders to more HTML than this (characters), before it is highlighted and cleaned:
# 256 kB of footnote references rendered to 15 MB (a 10 MB page), of links to 2 MB.
README_HTML_MAX = 2_000_000
_CONTAINER_STARTS = frozenset(" \t>-+*0123456789")
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
_TABLE_PARTS = frozenset({"caption", "col", "colgroup", "tbody", "td", "tfoot", "th", "thead", "tr"})
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


class Intricate(Exception):
    """A README not rendered, and why (the note above its plain text)."""


def _heading_root(text: str) -> str:
    """The root of the id a heading's text is given (as the renderer makes ids: lower-cased,
    letters, digits and hyphens, a space a hyphen), less its markup and any `-1` suffixes."""
    plain = html_module.unescape(_NOT_TEXT.sub("", text)).lower()
    slug = _SEPARATORS.sub("-", "".join(c for c in plain if c.isalnum() or c in " -")).strip("-")
    return _ID_SUFFIX.sub("", slug)


def check_markdown(text: str) -> None:
    """Refuse (`Intricate`) Markdown that opens more than README_DEPTH containers on one line, has
    a table row of more than README_COLUMNS cells or a line of more than README_LINE_LINKS links, a
    block of raw HTML (from a line that starts with a tag to the next blank line, or to the end of
    its comment, `<script>`...) of more than README_HTML_LINES tag lines or README_HTML_TAGS `<`,
    or headings that may cost their ids more than README_ALIKE of one name would, before the
    renderer reads it. Linear (each regex only on the lines that hold what it looks for)."""
    html_lines = html_tags = 0
    alike: dict[str, int] = {}
    tries, budget = 0, README_ALIKE * (README_ALIKE - 1) // 2
    before, before_at = "", 0  # the line before, and where its containers end (a setext heading's text)
    spanning: re.Pattern[str] | None = None  # what ends the raw HTML block the line is in, if kind 1-5
    for line in text.splitlines():
        if line.count("|") > README_COLUMNS:
            raise Intricate(f"This README has a table row of more than {README_COLUMNS:,} cells")
        if line.count("@") + line.count("://") > README_LINE_LINKS:
            raise Intricate(f"This README has more than {README_LINE_LINKS:,} links on one line")
        depth, at = 0, 0
        if line[:1] in _CONTAINER_STARTS:
            while (m := _CONTAINER.match(line, at)) and m.end() > at:
                depth, at = depth + 1, m.end()
                if depth > README_DEPTH:
                    raise Intricate(_TOO_DEEP)
        tags = line.count("<")
        if spanning is None:
            if tags and (opened := _SPANNING.match(line, at)):
                end = _SPAN_ENDS[opened.lastindex - 1]  # type: ignore[operator]
                spanning = None if end.search(line, opened.end()) else end
        elif spanning.search(line):
            spanning = None  # the block ends with this line (its count, with the next blank one)
        if not line or line.isspace():
            if spanning is None:
                html_lines = html_tags = 0
        elif tags and (line.startswith("<", at) or line.lstrip(" ").startswith("<")):
            html_lines += 1
            html_tags += tags
        elif html_lines:
            html_tags += tags  # within the block: the lines that follow its first tag
        if html_lines > README_HTML_LINES:
            raise Intricate(f"This README has more than {README_HTML_LINES:,} lines of HTML in a row")
        if html_tags > README_HTML_TAGS:
            raise Intricate(f"This README has more than {README_HTML_TAGS:,} tags in one block of HTML")
        heading = m.end() if "#" in line and (m := _ATX.match(line, at)) else None
        if heading is not None or (
            ("=" in line or "-" in line)
            and before
            and not before.isspace()
            and (_SETEXT.match(line, at) or _SETEXT.match(line))  # `- ` after a paragraph underlines it
        ):
            key = _heading_root(line[heading:] if heading is not None else before[before_at:])
            tries += alike.get(key, 0)  # at most the ids this one tries before its own
            alike[key] = alike.get(key, 0) + 1
            if tries > budget:
                raise Intricate(
                    f"This README has too many headings of the same name ({max(alike.values()):,})"
                )
        before, before_at = line, at


def check_rst(text: str) -> None:
    """Refuse (`Intricate`) reStructuredText with more than README_NOTES footnotes and citations,
    or whose substitutions expand more than README_SUBSTITUTIONS times or to more than
    README_HTML_MAX characters, or whose links may (each use of a target copies its URL: 5,000
    uses of a 9 kB one took 557 MB), counted before docutils expands any. Linear."""
    if sum(1 for _ in itertools.islice(_RST_NOTE.finditer(text), README_NOTES + 1)) > README_NOTES:
        raise Intricate(f"This README has more than {README_NOTES:,} footnotes and citations")
    longest = max(
        (len(m.group(1)) for m in itertools.chain(_RST_TARGET.finditer(text), _RST_EMBEDDED.finditer(text))),
        default=0,
    )
    if longest * len(_RST_LINK_USE.findall(text)) > README_HTML_MAX:
        raise Intricate(
            "This README has hyperlink references that may expand to more than "
            f"{README_HTML_MAX:,} characters"
        )
    uses, size = _substitutions(text)
    if uses > README_SUBSTITUTIONS or size > README_HTML_MAX:
        raise Intricate(
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


def check_size(html: str | None) -> None:
    """Refuse (`Intricate`) a README that renders to more than README_HTML_MAX characters."""
    if html is not None and len(html) > README_HTML_MAX:
        raise Intricate(f"This README renders to more than {README_HTML_MAX:,} characters of HTML")


def _closed(tag: str) -> bool:
    """Whether the HTML tokenizer reads a start tag (as _HTML_TAG matched it) as closed by `/>`:
    not when that `/` ends an unquoted value (`<g a=b/>`). Its states, one character at a time."""
    i = 1
    while i < len(tag) and tag[i] not in _WS and tag[i] not in "/>":
        i += 1  # the name
    state = "before"  # before a name; "name", "after", "value", "unquoted", a quote, "slash"
    for c in tag[i:]:
        if state == "unquoted":
            state = "before" if c in _WS else "unquoted"
            if c == ">":
                return False
        elif state in ('"', "'"):
            state = "after" if c == state else state
        elif c == ">":
            return state == "slash"
        elif state == "value":
            state = c if c in "\"'" else state if c in _WS else "unquoted"
        elif c == "/":
            state = "slash"
        elif c == "=" and state in ("name", "after"):
            state = "value"
        elif c in _WS:
            state = "after" if state == "name" else "before" if state == "slash" else state
        else:
            state = "name"
    return False


def check_html(html: str) -> None:
    """Refuse (`Intricate`) HTML whose elements nest deeper than README_DEPTH, before html5ever
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
        end, name = m.group(1, 2)
        name = name.lower()
        if name in _VOID:
            continue
        if name in _FORMATTING:
            # An end tag closes the latest of its name; an `<a>` (`<nobr>`) closes the one open.
            was = formatting.get(name, 0)
            now = max(0, was - 1) if end else (was or 1) if name in ("a", "nobr") else was + 1
            depth += now - was
            formatting[name] = now
        elif end:  # an end tag: a special element's closes through the others within its scope
            if name in stack:
                close({name}, _BOUNDARY if name in _SPECIAL else _SPECIAL)
        else:
            foreign = "svg" in stack or "math" in stack
            if foreign and (tag := m.group(0)).endswith("/>") and _closed(tag):
                continue  # `<path/>` is closed in SVG and MathML only
            if name in _CLOSES_P and "p" in stack:
                close({"p"}, _BOUNDARY)
            if name in _TABLE_PARTS and "table" not in stack:
                continue  # outside a table the parser ignores them
            if name in _CLOSED_BY:
                close(*_CLOSED_BY[name])
            stack.append(name)
            depth += 1
        if depth > README_DEPTH:
            raise Intricate(_TOO_DEEP)

"""Pure: the site's list of every project as a sequence of pages, and its search index in shards.

A publish must write a few kB of the site, not the whole list: the list is cut into pages by the
list's own order (newest upload first, `key`):

    ui/index.html        the head: the newest rows, up to 2 x PAGE_ROWS
    ui/older-<s>.html    sealed older pages, s = M (the newest of them) down to 1 (the oldest)
    ui/search-<k>.json   the search index and the list's data: every project whose name hashes to k

Page s holds the rows whose key lies in [bounds[s-2], bounds[s-1]) (page 1: below bounds[0], the
head: from bounds[M-1] up); `bounds` (M keys) is written in the head itself, so the rows of the head
and the boundary they are cut at change in ONE compare-and-swap. A change of a project rewrites its
shard, the page its row lands on (the head, for a publish) and, only if it was elsewhere, the page
it leaves. When the head has more than 2 x PAGE_ROWS rows, its oldest PAGE_ROWS are sealed into a
new older page (M + 1) and its boundary moves up. Rows never move otherwise, so a page that loses
rows stays (emptier, still linked) until `reindex` cuts the list again (`paginate`).

Every page is a pure function of its rows (`render_page`); `parse_page` reads the rows back and
accepts a page only if it renders to the very same bytes (anything else: `reindex` rebuilds).
"""

from __future__ import annotations

import bisect
import hashlib
import html
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from provisioner.repo import layout
from provisioner.repo.site.render import ListEntry, list_page, list_row

PAGE_ROWS = 100  # N: a sealed page holds N rows; the head up to 2N
SHARDS = layout.UI_SHARDS

Key = tuple[str, str]  # (uploaded, name): the list's order, newest first
HEAD = 0  # the head's number among the pages (older pages are 1..M)


def key(entry: ListEntry) -> Key:
    return (entry.uploaded, entry.name)


def shard_of(name: str) -> int:
    """Which search shard holds a project: stable across versions and machines."""
    return hashlib.sha256(name.encode()).digest()[0] % SHARDS


def locate(bounds: Sequence[Key], k: Key) -> int:
    """The page (HEAD or 1..M) whose range holds key `k`."""
    i = bisect.bisect_right(bounds, k)
    return HEAD if i == len(bounds) else i + 1


# --- pages ---------------------------------------------------------------------------------------

_ROW = re.compile(rb'<li id="p-([a-z0-9-]+)"><a class="pp-name".*? datetime="([^"]*)"')
_LIST_OPEN = b'<ul class="pp-list" id="projects">\n'
_LIST_CLOSE = b"</ul>\n"
_BOUNDS = re.compile(rb'<nav class="pp-pages" aria-label="Pages" data-bounds="([^"]*)">')


def row_key(row: bytes) -> Key | None:
    m = _ROW.match(row)
    return (html.unescape(m[2].decode()), m[1].decode()) if m else None


def render_page(seq: int, rows: Sequence[bytes], *, bounds: Sequence[Key] = (), top: bool = False) -> bytes:
    """Page `seq` (HEAD: the head, which carries `bounds`; `top`: the newest older page, whose
    "newer" link is the head) with these rows (`list_row` lines, in order)."""
    return list_page(
        seq,
        b"".join(rows).decode(),
        len(rows),
        older=len(bounds),
        top=top,
        bounds=_dump_bounds(bounds) if seq == HEAD else "",
    )


def _dump_bounds(bounds: Sequence[Key]) -> str:
    return json.dumps([list(b) for b in bounds], separators=(",", ":"))


def _load_bounds(text: str) -> tuple[Key, ...] | None:
    try:
        doc = json.loads(text)
        if not all(isinstance(u, str) and isinstance(n, str) for u, n in doc):
            return None
        out = tuple((u, n) for u, n in doc)
    except (ValueError, TypeError):
        return None
    return out if all(a < b for a, b in itertools.pairwise(out)) else None


@dataclass(frozen=True)
class Page:
    """A list page read back: its rows and (the head) the bounds it carries, or which kind of top."""

    rows: tuple[bytes, ...]
    bounds: tuple[Key, ...] = ()
    top: bool = False


def parse_page(data: bytes, seq: int) -> Page | None:
    """The rows of page `seq` as `render_page` wrote them; None for anything else (another
    version's page, a page edited by hand, a truncated one)."""
    top_at = data.find(_LIST_OPEN)
    if top_at < 0:
        return None
    start = top_at + len(_LIST_OPEN)
    end = data.find(_LIST_CLOSE, start)
    if end < 0:
        return None
    rows = tuple(data[start:end].splitlines(keepends=True))
    keys = [row_key(r) for r in rows]
    if any(k is None for k in keys) or not all(a > b for a, b in itertools.pairwise(keys)):  # type: ignore[operator]
        return None  # rows in the list's order, each project once
    bounds: tuple[Key, ...] = ()
    if seq == HEAD:
        m = _BOUNDS.search(data, 0, top_at)
        parsed = _load_bounds(html.unescape(m[1].decode())) if m else ()
        if parsed is None:
            return None
        bounds = parsed
    for top in (False, True) if seq != HEAD else (False,):
        if render_page(seq, rows, bounds=bounds, top=top) == data:
            return Page(rows, bounds, top)
    return None


def _place(rows: Sequence[bytes], name: str, entry: ListEntry | None) -> list[bytes]:
    """`rows` without `name`'s row, and with `entry`'s (if any) at its place in the order."""
    out = [r for r in rows if (row_key(r) or ("", ""))[1] != name]
    if entry is not None:
        keys = [row_key(r) for r in out]
        want = key(entry)
        # Rows are in descending key order: the first row whose key is below the entry's.
        at = next((i for i, k in enumerate(keys) if k is not None and k < want), len(out))
        out.insert(at, list_row(entry).encode())
    return out


@dataclass(frozen=True)
class Change:
    """A project's row: where it was (its entry in the shard before) and what it is now."""

    name: str
    old: ListEntry | None
    new: ListEntry | None  # None: the project is gone


@dataclass
class Plan:
    """What a change writes of the list: pages by number (bytes), and whether the head sealed."""

    pages: dict[int, bytes] = field(default_factory=dict)
    bounds: tuple[Key, ...] = ()
    sealed: tuple[int, ...] = ()  # the new older pages (written before the head that links them)


def needed(bounds: Sequence[Key], changes: Iterable[Change]) -> set[int]:
    """The pages a change reads (before the state it renders): the head, and each row's page
    before and after (a seal of the head asks for more: `apply`)."""
    out = {HEAD}
    for c in changes:
        for e in (c.old, c.new):
            if e is not None:
                out.add(locate(bounds, key(e)))
    return out


def apply(
    pages: Mapping[int, bytes], changes: Sequence[Change], *, rows: int | None = None
) -> Plan | set[int] | None:
    """The pages to write for `changes`, given the pages read (by number, b"" for one that does not
    exist); the set of pages still to read when it needs more (then read them and call again); None
    when a page read is not in `render_page`'s form (`reindex` rebuilds it)."""
    rows = rows or PAGE_ROWS
    head = parse_page(pages.get(HEAD, b""), HEAD) if pages.get(HEAD) else None
    if head is None:
        return None
    bounds = head.bounds
    want = needed(bounds, changes)
    if missing := want - pages.keys():
        return missing
    parsed: dict[int, Page] = {HEAD: head}
    for s in want - {HEAD}:
        page = parse_page(pages[s], s) if pages[s] else Page(())  # a page gone: empty
        if page is None:
            return None
        parsed[s] = page
    for s, page in parsed.items():
        if any(locate(bounds, row_key(r)) != s for r in page.rows):  # type: ignore[arg-type]
            return None  # a row outside its page's range: not what this code writes
    current = {s: list(p.rows) for s, p in parsed.items()}
    for c in changes:
        at_old = locate(bounds, key(c.old)) if c.old is not None else None
        at_new = locate(bounds, key(c.new)) if c.new is not None else None
        for s in {at_old, at_new} - {None}:
            current[s] = _place(current[s], c.name, c.new if s == at_new else None)  # type: ignore[index]
    # Seal: the head's oldest N rows become the newest older page, as often as it is over 2N.
    new_bounds = list(bounds)
    sealed: list[int] = []
    if len(current[HEAD]) > 2 * rows:
        # The newest older page's "newer" link changes; a page of a new number may have been left
        # by a killed writer (its generation must be read).
        more = ({len(bounds)} if bounds else set()) | {
            len(bounds) + 1 + i for i in range((len(current[HEAD]) - rows - 1) // rows)
        }
        if missing := more - pages.keys():
            return missing
        if bounds and len(bounds) not in parsed:
            page = parse_page(pages[len(bounds)], len(bounds)) if pages[len(bounds)] else Page(())
            if page is None:
                return None
            current[len(bounds)] = list(page.rows)
    while len(current[HEAD]) > 2 * rows:
        seq = len(new_bounds) + 1
        current[seq] = current[HEAD][-rows:]
        current[HEAD] = current[HEAD][:-rows]
        new_bounds.append(row_key(current[HEAD][-1]))  # type: ignore[arg-type]
        sealed.append(seq)
    top = len(new_bounds)
    plan = Plan(bounds=tuple(new_bounds), sealed=tuple(sealed))
    for s, r in current.items():
        data = render_page(s, r, bounds=new_bounds, top=s == top)
        if data != pages.get(s, b""):
            plan.pages[s] = data
    return plan


def paginate(entries: Iterable[ListEntry], *, rows: int | None = None) -> dict[int, bytes]:
    """Every page of the list from scratch (reindex: the list cut again, no page thinned): the
    newest N rows in the head, then pages of N, the oldest (1) last and possibly shorter."""
    rows = rows or PAGE_ROWS
    ordered = sorted(entries, key=key, reverse=True)
    lines = [list_row(e).encode() for e in ordered]
    head, rest = lines[:rows], lines[rows:]
    chunks = [rest[i : i + rows] for i in range(0, len(rest), rows)]
    m = len(chunks)
    pages: dict[int, list[bytes]] = {HEAD: head}
    for i, chunk in enumerate(chunks):
        pages[m - i] = chunk  # the first chunk after the head is the newest older page, M
    # bounds[s-1] is the lowest key of page s+1 (page M+1 being the head).
    bounds = [row_key(pages[s + 1 if s < m else HEAD][-1]) for s in range(1, m + 1)]
    return {
        s: render_page(s, r, bounds=bounds, top=s == m)  # type: ignore[arg-type]
        for s, r in pages.items()
    }


def pages_of(head: bytes) -> int | None:
    """How many older pages a head page links (None: not a head in this form)."""
    page = parse_page(head, HEAD)
    return None if page is None else len(page.bounds)


def bounds_of(head: bytes) -> tuple[Key, ...] | None:
    page = parse_page(head, HEAD)
    return None if page is None else page.bounds


def rows_in(data: bytes) -> int:
    """Rows on a list page, counted without parsing it (whether a change may seal the head)."""
    return data.count(b'\n<li id="p-')

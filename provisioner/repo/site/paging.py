"""Pure: the site's list of every project as a sequence of pages, and its search index in shards.

A publish must write a few kB of the site, not the whole list: the list is cut into pages by the
list's own order (newest upload first, `key`):

    ui/index.html          the head: the newest rows, up to 2 x PAGE_ROWS
    ui/older-<id>.html     the older pages, each linked to the next older (rel=next) and newer (rel=prev)
    ui/search-<k>.json     the search index and the list's data: every project whose name hashes to k

The head carries the layout (`Layout`): the ids of the older pages, oldest first, and the key each
one ends below (the lowest key of the page above it), so the rows of the head and where the list is
cut change in ONE compare-and-swap. A change of a project rewrites its shard, the page its row lands
on (the head, for a publish) and, only if it was elsewhere, the page it leaves. When the head has
more than 2 x PAGE_ROWS rows, its oldest PAGE_ROWS are sealed into a new older page: a new object
under a fresh id (two writers sealing at once each write their own; the one whose head wins is
linked, the other's is never linked), written before the head that links it. Rows never move
otherwise, so a page that loses rows stays (emptier, still linked) until `reindex` cuts the list
again (`paginate`, ids 1..M).

Every page is a pure function of its rows and its links (`render_page`); `parse_page` reads them
back and accepts a page only if it renders to the very same bytes (anything else: rebuilt).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import html
import itertools
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from provisioner.repo import layout
from provisioner.repo.site.render import ListEntry, list_page, list_row

PAGE_ROWS = 40  # N: a sealed page holds N rows; the head up to 2N
SHARDS = layout.UI_SHARDS

Key = tuple[str, str]  # (uploaded, name): the list's order, newest first
HEAD = ""  # the head's id (older pages: "1".."M" from a reindex, "<n>-<hex>" sealed by a publish)


def key(entry: ListEntry) -> Key:
    return (entry.uploaded, entry.name)


def shard_of(name: str) -> int:
    """Which search shard holds a project: stable across versions and machines."""
    return hashlib.sha256(name.encode()).digest()[0] % SHARDS


@dataclass(frozen=True)
class Layout:
    """The older pages, oldest first: `ids[i]` holds the keys below `bounds[i]` (and from
    `bounds[i-1]` on); the head holds the keys from `bounds[-1]` on."""

    ids: tuple[str, ...] = ()
    bounds: tuple[Key, ...] = ()

    def locate(self, k: Key) -> str:
        """The id of the page (HEAD or an older one) whose range holds key `k`."""
        i = bisect.bisect_right(self.bounds, k)
        return HEAD if i == len(self.bounds) else self.ids[i]

    @property
    def top(self) -> str | None:
        """The newest older page (the head's "older" link), if any."""
        return self.ids[-1] if self.ids else None

    def neighbours(self, page: str) -> tuple[str | None, str | None]:
        """(newer, older) of a page: ids, '' the head; None where there is none (or for the head's
        newer)."""
        if page == HEAD:
            return None, self.top
        i = self.ids.index(page)
        return (self.ids[i + 1] if i + 1 < len(self.ids) else HEAD), (self.ids[i - 1] if i else None)

    def dumps(self) -> str:
        return json.dumps(
            [[p, *b] for p, b in zip(self.ids, self.bounds, strict=True)], separators=(",", ":")
        )

    @staticmethod
    def loads(text: str) -> Layout | None:
        try:
            doc = json.loads(text)
            if not all(len(e) == 3 and all(isinstance(x, str) for x in e) for e in doc):
                return None
        except (ValueError, TypeError):
            return None
        ids = tuple(e[0] for e in doc)
        bounds = tuple((e[1], e[2]) for e in doc)
        if len(set(ids)) != len(ids) or not all(_ID.fullmatch(p) for p in ids):
            return None
        return Layout(ids, bounds) if all(a < b for a, b in itertools.pairwise(bounds)) else None


# --- pages ---------------------------------------------------------------------------------------

_ID = re.compile(r"[1-9][0-9]*(?:-[0-9a-f]{6})?")
_LIST_OPEN = b'<ul class="pp-list" id="projects">\n'
_LIST_CLOSE = b"</ul>\n"
_NAV = re.compile(rb'<nav class="pp-pages" aria-label="Pages"(?: data-pages="([^"]*)")?>(.*)</nav>\n')
_NEWER = re.compile(rb'rel="prev" href="(?:\./|older-([^"]+)\.html)"')
_OLDER = re.compile(rb'rel="next" href="older-([^"]+)\.html"')


_ROW_START = b'<li id="p-'
_NAME = re.compile(rb"[a-z0-9-]+")


def row_key(row: bytes) -> Key | None:
    """A row's key, read back from the row itself (the name in its id, the upload time of its
    <time>): by `find`, which is several times faster than a regular expression over the row."""
    if not row.startswith(_ROW_START):
        return None
    end = row.find(b'"', len(_ROW_START))
    at = row.find(b' datetime="', end)
    stop = row.find(b'"', at + 11)
    name = row[len(_ROW_START) : end]
    if end < 0 or at < 0 or stop < 0 or not _NAME.fullmatch(name):
        return None
    when = row[at + 11 : stop].decode()
    return (html.unescape(when) if "&" in when else when, name.decode())


def render_page(
    rows: Sequence[bytes], *, newer: str | None, older: str | None, head: Layout | None = None
) -> bytes:
    """A page with these rows (`list_row` lines, in order) and links: the head (`newer` None; it
    carries its `Layout`) or an older page."""
    text = b"".join(rows).decode()
    return list_page(text, len(rows), newer=newer, older=older, layout=head.dumps() if head else "")


@dataclass(frozen=True)
class Page:
    """A list page read back: its rows, its links (ids), the layout the head carries."""

    rows: tuple[bytes, ...]
    newer: str | None = None
    older: str | None = None
    layout: Layout | None = None  # the head's
    keys: tuple[Key, ...] = ()  # each row's


@functools.lru_cache(maxsize=8)
def parse_page(data: bytes) -> Page | None:
    """The rows and links of a page as `render_page` wrote it; None for anything else (another
    version's page, a page edited by hand, a truncated one). Cached: a publish reads the same
    head for its layout and then for its rows (bytes keep their hash)."""
    start = data.find(_LIST_OPEN)
    nav = _NAV.search(data, 0, start) if start >= 0 else None
    end = data.find(_LIST_CLOSE, start + len(_LIST_OPEN)) if nav else -1
    if nav is None or end < 0:
        return None
    rows = tuple(data[start + len(_LIST_OPEN) : end].splitlines(keepends=True))
    keys = tuple(row_key(r) for r in rows)
    if any(k is None for k in keys) or not all(a > b for a, b in itertools.pairwise(keys)):  # type: ignore[operator]
        return None  # rows in the list's order, each project once
    older_m = _OLDER.search(nav[2])
    older = older_m[1].decode() if older_m else None
    if nav[1] is not None:  # the head
        head = Layout.loads(html.unescape(nav[1].decode()))
        if head is None:
            return None
        page = Page(rows, None, older, head, keys)  # type: ignore[arg-type]
        rendered = render_page(rows, newer=None, older=older, head=head)
    else:
        newer_m = _NEWER.search(nav[2])
        if newer_m is None:
            return None
        newer = newer_m[1].decode() if newer_m[1] else HEAD
        page = Page(rows, newer, older, None, keys)  # type: ignore[arg-type]
        rendered = render_page(rows, newer=newer, older=older)
    return page if rendered == data else None


Row = tuple[Key, bytes]


def _place(rows: Sequence[Row], name: str, entry: ListEntry | None) -> list[Row]:
    """`rows` without `name`'s row, and with `entry`'s (if any) at its place in the order."""
    out = [r for r in rows if r[0][1] != name]
    if entry is not None:
        want = key(entry)
        # Rows are in descending key order: before the first row whose key is below the entry's.
        at = next((i for i, (k, _row) in enumerate(out) if k < want), len(out))
        out.insert(at, (want, list_row(entry).encode()))
    return out


@dataclass(frozen=True)
class Change:
    """A project's row: where it was (its entry in the shard before) and what it is now."""

    name: str
    old: ListEntry | None
    new: ListEntry | None  # None: the project is gone


@dataclass
class Plan:
    """What a change writes of the list: pages by id (bytes), the new older pages among them."""

    pages: dict[str, bytes] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout)
    sealed: tuple[str, ...] = ()  # written first (create-only): nothing links them before the head


def needed(head: Layout, changes: Iterable[Change], *, links: bool = True) -> set[str]:
    """The pages a change reads (before the state it renders): the head, each row's page before and
    after, and (`links`) the newest older page, whose "newer" link a seal changes (a writer that
    reads it repairs it; a publish's own batch leaves that to the separate way, which a seal takes)."""
    out = {HEAD} | ({head.top} if head.top and links else set())
    for c in changes:
        for e in (c.old, c.new):
            if e is not None:
                out.add(head.locate(key(e)))
    return out


def fresh_id(seq: int) -> str:
    """The id of a page sealed by a publish: its number and a random part, so that two writers
    sealing at once never write the same object."""
    return f"{seq}-{secrets.token_hex(3)}"


def apply(
    pages: Mapping[str, bytes],
    changes: Sequence[Change],
    *,
    rows: int | None = None,
    new_id: Callable[[int], str] = fresh_id,
    links: bool = True,
) -> Plan | set[str] | None:
    """The pages to write for `changes`, given the pages read (by id; b"" for one that does not
    exist); the ids still to read when it needs more (then read them, and call again); None when
    a page read is not in `render_page`'s form, or a row is outside its page's range (rebuild)."""
    rows = rows or PAGE_ROWS
    head_page = parse_page(pages.get(HEAD, b""))
    if head_page is None or head_page.layout is None:
        return None
    head = head_page.layout
    if missing := needed(head, changes, links=links) - pages.keys():
        return missing
    current: dict[str, list[Row]] = {}
    for page_id, data in pages.items():
        if page_id != HEAD and page_id not in head.ids:
            continue  # not linked (a seal that lost its race): nothing to do with the list
        page = head_page if page_id == HEAD else (parse_page(data) if data else Page(()))
        if page is None or (page.layout is not None and page_id != HEAD):
            return None
        if any(head.locate(k) != page_id for k in page.keys):
            return None  # not what this code writes
        current[page_id] = list(zip(page.keys, page.rows, strict=True))
    for c in changes:
        at_old = head.locate(key(c.old)) if c.old is not None else None
        at_new = head.locate(key(c.new)) if c.new is not None else None
        for at in {at_old, at_new} - {None}:
            current[at] = _place(current[at], c.name, c.new if at == at_new else None)  # type: ignore[index]
    # Seal: the head's oldest N rows become the newest older page, as often as it is over 2N.
    ids, bounds, sealed = list(head.ids), list(head.bounds), []
    if len(current[HEAD]) > 2 * rows and head.top and head.top not in current:
        return {head.top}  # a seal: the newest older page's link changes
    while len(current[HEAD]) > 2 * rows:
        page_id = new_id(len(ids) + 1)
        current[page_id] = current[HEAD][-rows:]
        current[HEAD] = current[HEAD][:-rows]
        ids.append(page_id)
        bounds.append(current[HEAD][-1][0])
        sealed.append(page_id)
    new = Layout(tuple(ids), tuple(bounds))
    plan = Plan(layout=new, sealed=tuple(sealed))
    for page_id, r in current.items():
        newer, older = new.neighbours(page_id)
        data = render_page(
            [row for _k, row in r], newer=newer, older=older, head=new if page_id == HEAD else None
        )
        if data != pages.get(page_id, b""):
            plan.pages[page_id] = data
    return plan


def paginate(entries: Iterable[ListEntry], *, rows: int | None = None) -> dict[str, bytes]:
    """Every page of the list from scratch (reindex: the list cut again, no page thinned): the
    newest N rows in the head, then pages of N, ids M (the newest) down to 1 (the oldest, possibly
    shorter)."""
    rows = rows or PAGE_ROWS
    lines = [list_row(e).encode() for e in sorted(entries, key=key, reverse=True)]
    head, rest = lines[:rows], lines[rows:]
    chunks = [rest[i : i + rows] for i in range(0, len(rest), rows)][::-1]  # oldest first
    ids = tuple(str(i + 1) for i in range(len(chunks)))
    above = [*chunks[1:], head] if chunks else []  # the page above each one
    new = Layout(ids, tuple(row_key(a[-1]) for a in above))  # type: ignore[misc]
    out = {}
    for page_id, r in [*zip(ids, chunks, strict=True), (HEAD, head)]:
        newer, older = new.neighbours(page_id)
        out[page_id] = render_page(r, newer=newer, older=older, head=new if page_id == HEAD else None)
    return out


def head_layout(data: bytes) -> Layout | None:
    """The layout a head page carries (None: not a head in this form)."""
    page = parse_page(data)
    return page.layout if page is not None else None

"""The site's view of a Store: its pages stored gzip'd (`layout.is_packed`), read and written plain.

The site's code reads and writes the bytes it renders and parses; this adapter compresses them on
the way in and decompresses them on the way out, for the objects `layout` names `*.gz`, and passes
everything else (the assets, the release-info caches, the setting, the index's objects) as it is.
The gzip is deterministic (fixed level, no timestamp, no file name): the same page is the same
object bytes, so "unchanged" still means "not written". A stored page that does not decompress (0
bytes, torn, garbage) reads as b"" with its generation: what the site already takes for a page not
in its form (rebuilt, converged, overwritten conditional on that generation).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from provisioner.repo import layout
from provisioner.repo.store import ObjectInfo, Store, WriteItem

# The highest level: a page is compressed once a write and served many times.
LEVEL = 9


def pack(data: bytes) -> bytes:
    """`data` as a gzip file, the same bytes for the same data (mtime 0, no name)."""
    return gzip.compress(data, compresslevel=LEVEL, mtime=0)


def unpack(data: bytes) -> bytes:
    """What a stored page holds; b"" for one that is not a whole gzip file."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return b""


def stored(item: WriteItem) -> WriteItem:
    """`item` as it is written to the store underneath."""
    return item._replace(data=pack(item.data)) if layout.is_packed(item.name) else item


class PackedStore:
    """A Store whose site pages read and write uncompressed (see the module's docstring)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.location = inner.location
        self.reads_in_flight = inner.reads_in_flight

    def read(self, name: str) -> tuple[bytes, int]:
        data, gen = self.inner.read(name)
        return (unpack(data) if gen and layout.is_packed(name) else data), gen

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        item = stored(WriteItem(name, data, if_generation_match))
        return self.inner.write(item.name, item.data, if_generation_match=if_generation_match)

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        return self.inner.write_many([stored(item) for item in items], after=after)

    def together(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        return self.inner.together(calls)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        self.inner.delete(name, if_generation_match=if_generation_match)

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def check(self) -> None:
        self.inner.check()

    # The fingerprints are of the bytes stored: the site compares its assets by them, never a page.
    def content_fingerprint(self, data: bytes) -> str | None:
        return self.inner.content_fingerprint(data)

    def written_fingerprint(self, data: bytes, generation: int) -> str:
        return self.inner.written_fingerprint(data, generation)

    def remove_stale_temporaries(self) -> int:
        return self.inner.remove_stale_temporaries()


def packed(store: Store) -> PackedStore:
    """The site's view of `store` (never wrapped twice: a worker process's Site gets the view)."""
    return store if isinstance(store, PackedStore) else PackedStore(store)

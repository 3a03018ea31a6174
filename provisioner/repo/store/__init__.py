"""I/O: where objects live. One interface, two backends with the same compare-and-swap semantics.

- `read(name)` returns `(bytes, generation)`; generation 0 means the object is absent.
- `write(name, data, if_generation_match=G)` succeeds only if the object's current generation is G
  (0: create-only) and returns the new generation; otherwise it raises `PreconditionFailed`.
- `delete(name, if_generation_match=G)` likewise.

GCS uses object generations and request preconditions (store/gcs.py); the directory backend
emulates them under a lock, with mtimes as generations that never repeat for a name (store/directory.py).

`together(calls)` runs independent reads side by side where each is a round trip (GCS), in turn where
they are cheap (a directory): a publish reads what it writes against in one round.

`write_many(items, after=...)` is the same compare-and-swap for many objects at once (reindex):
each item succeeds or fails on its own precondition, and an item can wait for another (a project's
HTML is written only once its JSON is). The directory backend pays the durability cost per batch
instead of per object; GCS has no cheaper bulk path, its objects are written one by one.

Backends: `directory.DirectoryStore` (a directory: what gcsfuse shows of a bucket; also the tests' and
`provision serve`'s) and `gcs.GCSStore` (a bucket under an optional prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from provisioner.errors import PypapoError
from provisioner.repo.location import parse_location as location_of


class PreconditionFailed(Exception):
    """The object's generation was not the expected one: another writer got there first."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the repository location
    size: int
    generation: int
    # A cheap identity of the content: equal fingerprints mean equal bytes for all practical purposes
    # (GCS: size + md5/crc32c from the object metadata; directory: size + mtime_ns).
    fingerprint: str
    updated_ns: int  # when the object was written (for upload-time when nothing better is known)


class WriteItem(NamedTuple):
    """One compare-and-swap of `write_many`. `durable=False`: an object whose every reader checks
    it and remakes it when torn (the site's release-info caches), which the directory backend
    then writes without fsync; GCS has nothing cheaper, every upload is durable."""

    name: str
    data: bytes
    if_generation_match: int
    durable: bool = True


class Store(Protocol):
    location: str
    # How many reads a pass over many objects (reindex, the site's rebuild) keeps in flight.
    reads_in_flight: int

    def check(self) -> None:
        """Fail with a clear PypapoError if the repository cannot be reached (missing bucket, no auth)."""

    def read(self, name: str) -> tuple[bytes, int]: ...

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int: ...

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None: ...

    def stat(self, name: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def written_fingerprint(self, data: bytes, generation: int) -> str:
        """The fingerprint `stat` gives of the object this store just wrote with `data` at
        `generation` (without asking again)."""
        ...

    def content_fingerprint(self, data: bytes) -> str | None:
        """The fingerprint `stat` gives of any object holding exactly `data`, where it follows from
        the bytes alone (GCS: size and md5); None where it does not (a directory's: size and mtime)."""
        ...

    def together(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """The results of independent `calls` (reads; deletes that may go in any order), in order;
        side by side where each is a round trip. Every call finishes before the first error (in the
        calls' order) is raised."""
        ...

    def remove_stale_temporaries(self) -> int:
        """Delete what killed writers left behind (the directory backend's `.pypapo-tmp-*` files
        older than any live writer's); how many. GCS has none: an upload is atomic."""
        ...

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        """Compare-and-swap each `(name, data, if_generation_match)`; per item the new generation,
        or 0 where its precondition failed (that object is left as it was). `after[i] = j`: item i
        is tried only once item j (itself unconditional) is written, else it counts as failed."""
        ...


def holds(store: Store, info: ObjectInfo | None, data: bytes) -> bool:
    """Whether the object `info` describes (None: absent) holds exactly `data`: by its fingerprint
    where that follows from the bytes (GCS: no download), else by reading it back."""
    if info is None or info.size != len(data):
        return False
    if info.fingerprint == store.content_fingerprint(data):
        return True
    return store.read(info.name)[0] == data


def waves(n: int, after: Sequence[int | None]) -> list[list[int]]:
    """Items 0..n-1 in two waves: the unconditional ones, then the ones waiting for one of those."""
    deps = [after[i] if i < len(after) else None for i in range(n)]
    for j in deps:
        if j is not None and not (0 <= j < n and deps[j] is None):
            raise ValueError("write_many: `after` must name an unconditional item of the batch")
    first = [i for i in range(n) if deps[i] is None]
    second = [i for i in range(n) if deps[i] is not None]
    return [w for w in (first, second) if w]


def open_store(location: str, *, notify: Callable[[str], None] | None = None) -> Store:
    """A Store for `gs://BUCKET[/PREFIX]` or a directory path. `notify` hears what a slow request
    to GCS waits for (see store/gcs.py)."""
    try:
        loc = location_of(location)
    except ValueError as exc:
        raise PypapoError(str(exc)) from None
    if loc.kind == "gcs":
        from provisioner.repo.store.gcs import GCSStore

        return GCSStore(loc.bucket, loc.prefix, notify=notify)
    from provisioner.repo.store.directory import DirectoryStore

    return DirectoryStore(loc.path)

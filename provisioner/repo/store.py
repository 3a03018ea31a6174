"""I/O: where objects live. One interface, two backends with the same compare-and-swap semantics.

- `read(name)` returns `(bytes, generation)`; generation 0 means the object is absent.
- `write(name, data, if_generation_match=G)` succeeds only if the object's current generation is G
  (0: create-only) and returns the new generation; otherwise it raises `PreconditionFailed`.
- `delete(name, if_generation_match=G)` likewise.

GCS uses object generations and request preconditions. The directory backend emulates them: every
compare-and-swap runs under an fcntl lock on `.pypapo.lock` at the repository root (nginx denies
dotfiles), data goes to a temporary file that is fsynced and atomically renamed over the object, and
the generation is the object's mtime in nanoseconds, which each write sets strictly above the previous
one (so a generation never repeats for a name, unlike inode numbers that get reused).

`write_many(items, after=...)` is the same compare-and-swap for many objects at once (reindex):
each item succeeds or fails on its own precondition, and an item can wait for another (a project's
HTML is written only once its JSON is). The directory backend pays the durability cost per batch
instead of per object: temporary files are fsynced concurrently (the journal commits them together),
then one lock covers every compare + rename, then each touched directory is fsynced. GCS has no
cheaper bulk path; its objects are written one by one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from provisioner.errors import PypapoError
from provisioner.repo import layout
from provisioner.repo.location import gs_url, object_name
from provisioner.repo.location import parse_location as location_of

LOCK_NAME = ".pypapo.lock"
# Concurrent fsyncs in write_many: enough for the journal to batch them into few commits.
SYNC_THREADS = 32
TMP_PREFIX = ".pypapo-tmp-"


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


class Store(Protocol):
    location: str

    def check(self) -> None:
        """Fail with a clear PypapoError if the repository cannot be reached (missing bucket, no auth)."""

    def read(self, name: str) -> tuple[bytes, int]: ...

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int: ...

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None: ...

    def stat(self, name: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        """Compare-and-swap each `(name, data, if_generation_match)`; per item the new generation,
        or 0 where its precondition failed (that object is left as it was). `after[i] = j`: item i
        is tried only once item j (itself unconditional) is written, else it counts as failed."""
        ...


WriteItem = tuple[str, bytes, int]


# --------------------------------------------------------------------------------------------------
# Directory backend


class DirectoryStore:
    """Objects as files under a directory (what gcsfuse shows of a bucket)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.location = str(path)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise PypapoError(f"repository {self.root} is not a directory: pass --repo a directory or gs://")
        # A new repository directory is created by the first write; its parent must exist (a typo in
        # --repo should not silently create a tree somewhere).
        existing = self.root if self.root.exists() else self.root.parent
        if not existing.is_dir():
            raise PypapoError(f"{existing} does not exist: create it or fix --repo")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PypapoError(f"repository directory {existing} is not writable: check its permissions")

    def _path(self, name: str) -> Path:
        # Object names come from layout.py with validated filenames; refuse anything odd anyway.
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(".pypapo") for p in parts):
            raise ValueError(f"bad object name {name!r}")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _generation(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns or 1
        except FileNotFoundError:
            return 0

    def read(self, name: str) -> tuple[bytes, int]:
        path = self._path(name)
        # Files are replaced atomically, so open+fstat gives bytes and generation of the same version.
        try:
            with open(path, "rb") as fh:
                gen = os.fstat(fh.fileno()).st_mtime_ns or 1
                return fh.read(), gen
        except FileNotFoundError:
            return b"", 0

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write and fsync outside the lock: only the compare and the rename are serialized.
        tmp = _write_synced_tmp(path.parent, data)
        try:
            with self._locked():
                current = self._generation(path)
                if current != if_generation_match:
                    raise PreconditionFailed(name)
                new = max(time.time_ns(), current + 1)
                os.utime(tmp, ns=(new, new))
                os.replace(tmp, path)
                tmp = ""
                _fsync_dir(path.parent)
            return new
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        paths = [self._path(name) for name, _data, _gen in items]
        if len(set(paths)) != len(paths):
            raise ValueError("write_many: an object named twice in one batch")
        waves = _waves(len(items), after)
        tmps: list[str] = [""] * len(items)
        results = [0] * len(items)

        # Each step runs across a thread pool: creating, syncing and renaming files mostly waits on
        # the filesystem journal, and concurrent waiters share one commit.
        def stage(i: int) -> None:
            path, data = paths[i], items[i][1]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[i] = _write_synced_tmp(path.parent, data)

        def swap(i: int) -> None:
            j = after[i] if i < len(after) else None
            if j is not None and not results[j]:
                return
            current = self._generation(paths[i])
            if current != items[i][2]:
                return
            new = max(time.time_ns(), current + 1)
            os.utime(tmps[i], ns=(new, new))
            os.replace(tmps[i], paths[i])
            tmps[i] = ""
            results[i] = new

        try:
            with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
                # Every byte is on disk before any rename makes it visible (as in write()).
                list(pool.map(stage, range(len(items))))
                with self._locked():
                    # Names are distinct, so the swaps are independent compare-and-swaps; the lock
                    # keeps other processes out of all of them.
                    for wave in waves:
                        list(pool.map(swap, wave))
                    # Renames are durable before the lock is released (as in write()).
                    dirs = {p.parent for p, r in zip(paths, results, strict=True) if r}
                    list(pool.map(_fsync_dir, dirs))
            return results
        finally:
            for tmp in tmps:
                if tmp:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        path = self._path(name)
        with self._locked():
            current = self._generation(path)
            if current == 0:
                if if_generation_match not in (None, 0):
                    raise PreconditionFailed(name)
                return
            if if_generation_match is not None and current != if_generation_match:
                raise PreconditionFailed(name)
            path.unlink()
            _fsync_dir(path.parent)
        # Leave no empty project directory behind (gcsfuse would not show one either).
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def _info(self, name: str, st: os.stat_result) -> ObjectInfo:
        gen = st.st_mtime_ns or 1
        return ObjectInfo(name, st.st_size, gen, f"dir:{st.st_size}:{gen}", gen)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            return self._info(name, self._path(name).stat())
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        rel = base.relative_to(self.root).as_posix()
        yield from self._scan(str(base), "" if rel == "." else f"{rel}/")

    def _scan(self, path: str, rel: str) -> Iterator[ObjectInfo]:
        # What os.walk would give (files of a directory, then its subdirectories, both sorted;
        # symlinked directories not followed), with plain strings: reindex lists every object.
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if not entry.is_symlink():
                        subdirs.append(entry)
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield self._info(rel + entry.name, st)
        for entry in subdirs:
            yield from self._scan(entry.path, f"{rel}{entry.name}/")


def _waves(n: int, after: Sequence[int | None]) -> list[list[int]]:
    """Items 0..n-1 in two waves: the unconditional ones, then the ones waiting for one of those."""
    deps = [after[i] if i < len(after) else None for i in range(n)]
    for j in deps:
        if j is not None and not (0 <= j < n and deps[j] is None):
            raise ValueError("write_many: `after` must name an unconditional item of the batch")
    first = [i for i in range(n) if deps[i] is None]
    second = [i for i in range(n) if deps[i] is not None]
    return [w for w in (first, second) if w]


def _write_synced_tmp(directory: Path, data: bytes) -> str:
    """A new temporary file in `directory` holding `data`, fsynced, mode 0644; returns its path."""
    while True:
        tmp = str(directory / f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            # Created 0644 directly (mkstemp's 0600 needs a chmod: one more journaled change).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if stat.S_IMODE(os.fstat(fh.fileno()).st_mode) != 0o644:  # a umask took bits away
                os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# GCS backend

# google-cloud-storage sends uploads up to this size as one multipart request, larger ones resumable.
MULTIPART_LIMIT = 8 * 1024 * 1024
GCS_THREADS = 16


def _credentials_error() -> PypapoError:
    return PypapoError(
        "no usable Google credentials: run `gcloud auth application-default login` "
        "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key)"
    )


class GCSStore:
    """Objects in a GCS bucket under an optional prefix, via google-cloud-storage."""

    def __init__(self, bucket: str, prefix: str = "", *, client: object | None = None) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.location = gs_url(bucket, self.prefix)
        self._client = client
        self._bucket = None

    # -- plumbing ---------------------------------------------------------------------------------
    def _get_bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            if self._client is None:
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    self._client = storage.Client(project=None)
                else:
                    import google.auth
                    import google.auth.exceptions

                    try:
                        creds, _project = google.auth.default(
                            scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                        )
                    except google.auth.exceptions.DefaultCredentialsError:
                        raise _credentials_error() from None
                    # The bucket names the data; object calls need no project.
                    self._client = storage.Client(project=None, credentials=creds)
            self._bucket = self._client.bucket(self.bucket_name)  # type: ignore[attr-defined]
        return self._bucket

    def _full(self, name: str) -> str:
        return object_name(self.prefix, name)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _translate(self, exc: Exception) -> Exception:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        if isinstance(exc, aexc.RefreshError | aexc.DefaultCredentialsError):
            return _credentials_error()
        if isinstance(exc, gexc.Unauthorized):
            return _credentials_error()
        if isinstance(exc, gexc.Forbidden):
            return PypapoError(
                f"permission denied on gs://{self.bucket_name}: publishing needs roles/storage.objectUser on"
                " the bucket (`provision grant MEMBER --role publisher`); reading needs"
                " roles/storage.objectViewer (or your credentials are another account's)"
            )
        if isinstance(exc, gexc.NotFound):
            return self._missing_bucket()
        if isinstance(exc, gexc.GoogleAPIError | OSError):
            # Network trouble or a server error that survived the client's retries: one line.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return PypapoError(f"request to gs://{self.bucket_name} failed ({first}); retry")
        return exc

    def _missing_bucket(self) -> PypapoError:
        return PypapoError(
            f"bucket gs://{self.bucket_name} does not exist (or is in another project): check --repo, "
            "or create it with `provision create`"
        )

    # -- interface --------------------------------------------------------------------------------
    def check(self) -> None:
        bucket = self._get_bucket()
        try:
            # objects.list is what objectViewer/objectAdmin grant (buckets.get is not); 404 = no bucket.
            list(bucket.client.list_blobs(bucket, prefix=self._full(""), max_results=1))
        except Exception as exc:
            raise self._translate(exc) from None

    def read(self, name: str) -> tuple[bytes, int]:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            data = blob.download_as_bytes()
        except gexc.NotFound:
            return b"", 0
        except Exception as exc:
            raise self._translate(exc) from None
        # The download response carries x-goog-generation: bytes and generation of the same version.
        return data, int(blob.generation)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        blob.cache_control = layout.cache_control(name)
        # Uploads up to MULTIPART_LIMIT go as a single multipart request (precondition enforced by
        # GCS and by fake-gcs-server); larger distributions go resumable, where GCS enforces it too.
        try:
            blob.upload_from_string(
                data, content_type=layout.content_type(name), if_generation_match=if_generation_match
            )
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None
        return int(blob.generation)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            blob.delete(if_generation_match=if_generation_match)
        except gexc.NotFound:
            if if_generation_match not in (None, 0):
                raise PreconditionFailed(name) from None
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        results = [0] * len(items)

        def one(i: int) -> None:
            j = after[i] if i < len(after) else None
            if j is not None and not results[j]:
                return
            name, data, expected = items[i]
            with contextlib.suppress(PreconditionFailed):
                results[i] = self.write(name, data, if_generation_match=expected)

        # Network-bound: requests in flight side by side.
        with ThreadPoolExecutor(max_workers=GCS_THREADS) as pool:
            for wave in _waves(len(items), after):
                list(pool.map(one, wave))
        return results

    def _info(self, blob) -> ObjectInfo:
        digest = blob.md5_hash or blob.crc32c or ""
        if digest:
            digest = base64.b64decode(digest).hex()
        updated = blob.updated or blob.time_created
        updated_ns = int(updated.timestamp() * 1e9) if updated else time.time_ns()
        return ObjectInfo(
            name=self._rel(blob.name),
            size=int(blob.size or 0),
            generation=int(blob.generation),
            fingerprint=f"gcs:{blob.size}:{digest}",
            updated_ns=updated_ns,
        )

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            blob = self._get_bucket().get_blob(self._full(name))
        except Exception as exc:
            raise self._translate(exc) from None
        return self._info(blob) if blob is not None else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        bucket = self._get_bucket()
        fields = "items(name,size,generation,md5Hash,crc32c,updated,timeCreated),nextPageToken"
        try:
            for blob in bucket.client.list_blobs(bucket, prefix=self._full(prefix), fields=fields):
                yield self._info(blob)
        except Exception as exc:
            raise self._translate(exc) from None


def open_store(location: str) -> Store:
    """A Store for `gs://BUCKET[/PREFIX]` or a directory path."""
    try:
        loc = location_of(location)
    except ValueError as exc:
        raise PypapoError(str(exc)) from None
    if loc.kind == "gcs":
        return GCSStore(loc.bucket, loc.prefix)
    return DirectoryStore(loc.path)

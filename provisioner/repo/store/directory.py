"""I/O: the directory backend. Objects as files under a directory (what gcsfuse shows of a bucket).

Every compare-and-swap runs under an fcntl lock on `.pypapo.lock` at the repository root (nginx denies
dotfiles); data goes to a temporary file that is fsynced and atomically renamed over the object; the
generation is the object's mtime in nanoseconds, set strictly above the previous one on every write.
`write_many` pays the durability cost per batch: temporary files fsynced concurrently, one lock over
every compare + rename, then each touched directory fsynced. A batch of SYNCFS_MIN durable items or
more (a reindex's) on a local filesystem whose syncfs(2) writes everything back (ext4, xfs, btrfs, ...:
not FUSE, whose syncfs reaches no server) is made durable by two syncfs calls instead, one before the
first rename and one after the last: an fsync of a file just created writes its inode and, on ext4
without a journal, its directory, each on its own (a reindex from scratch of 20,000 wheels with the
site spent ~4.5 of its ~20 CPU seconds in them). An item marked not `durable` (one every reader
checks and remakes when torn: the site's release-info caches) is written the same way but not
fsynced.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from provisioner.errors import PypapoError
from provisioner.repo.pools import finish_all, process_pool
from provisioner.repo.store import ObjectInfo, PreconditionFailed, WriteItem, waves

T = TypeVar("T")

LOCK_NAME = ".pypapo.lock"
# Concurrent fsyncs in write_many: enough for the journal to batch them into few commits.
SYNC_THREADS = 32
TMP_PREFIX = ".pypapo-tmp-"
# Durable items in one write_many from which two syncfs calls replace an fsync per file and directory
# (fewer: a publish's handful, where syncfs would also wait for every other writer's dirty data).
SYNCFS_MIN = 64
# statfs f_type of the filesystems whose syncfs writes back every file's data and metadata and
# waits for it: ext2/3/4, xfs, btrfs, f2fs, tmpfs (nothing to write), overlayfs (syncs its upper
# filesystem: a container's), zfs.
SYNCFS_FILESYSTEMS = {0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994, 0x794C7630, 0x2FC12FC1}
# A writer's temporary file lives from its first byte to its rename: the write and fsync, then the
# wait for the lock (held by others for a compare and a rename, or a reindex batch's renames). One
# untouched for this long belongs to a writer that was killed.
STALE_TMP_SECONDS = 3600


def _each(fn: Callable[[T], object], args: Iterable[T]) -> None:
    """`fn` over `args` on write_many's threads (`pools.process_pool`). Every call has finished
    when this returns; then the first error is raised."""
    pool = process_pool("pypapo-sync", SYNC_THREADS)
    todo = list(args)
    shared = iter(todo)  # next() on a list iterator is atomic: each argument goes to one thread

    def drain() -> None:
        # As many calls in flight as threads (what lets concurrent fsyncs overlap), each thread
        # taking the next argument when it gets free, and no future per call (thousands a batch).
        for arg in shared:
            fn(arg)

    finish_all([pool.submit(drain) for _ in range(min(SYNC_THREADS, len(todo)))])


class DirectoryStore:
    """Objects as files under a directory (what gcsfuse shows of a bucket)."""

    # A read takes microseconds: more threads than this only contend for the GIL.
    reads_in_flight = 8

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.location = str(path)
        self._root = os.fspath(self.root)
        self._syncfs: bool | None = None

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
        return Path(self._fspath(name))

    def _fspath(self, name: str) -> str:
        """The object's file path as a string (reindex reads every object: no pathlib per read)."""
        # Object names come from layout.py with validated filenames; refuse anything odd anyway.
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(".pypapo") for p in parts):
            raise ValueError(f"bad object name {name!r}")
        return f"{self._root}/{name}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self, name: str) -> tuple[bytes, int]:
        path = self._fspath(name)
        # Files are replaced atomically, so open+fstat gives bytes and generation of the same version.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return b"", 0
        try:
            st = os.fstat(fd)
            return _read_fd(fd, st.st_size), st.st_mtime_ns or 1  # (a directory: IsADirectoryError)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write and fsync outside the lock: only the compare and the rename are serialized.
        tmp = _write_synced_tmp(path.parent, data, sync=True)
        try:
            with self._locked():
                current = _generation(path)
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
        paths = [self._fspath(item.name) for item in items]  # strings: thousands per batch
        if len(set(paths)) != len(paths):
            raise ValueError("write_many: an object named twice in one batch")
        parents = [os.path.dirname(p) for p in paths]
        durable = [item.durable for item in items]
        for parent in set(parents):  # once per directory, not per object
            os.makedirs(parent, exist_ok=True)
        ordered = waves(len(items), after)
        tmps: list[str] = [""] * len(items)
        results = [0] * len(items)

        # Each step runs across a thread pool: creating, syncing and renaming files mostly waits on
        # the filesystem journal, and concurrent waiters share one commit.
        def stage(i: int) -> None:
            tmps[i] = _write_synced_tmp(parents[i], items[i].data, sync=durable[i] and syncfs_fd < 0)

        def swap(i: int) -> None:
            j = after[i] if i < len(after) else None
            if j is not None and not results[j]:
                return
            current = _generation(paths[i])
            if current != items[i].if_generation_match:
                return
            new = max(time.time_ns(), current + 1)
            os.utime(tmps[i], ns=(new, new))
            os.replace(tmps[i], paths[i])
            tmps[i] = ""
            results[i] = new

        # A large batch is made durable by two syncfs calls instead of an fsync per file and per
        # directory. The descriptor is opened before the first byte is written: syncfs reports the
        # filesystem's write-back errors since its descriptor was opened, no earlier.
        syncfs_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY) if self._syncfs_flushes(durable) else -1
        try:
            # Every byte is on disk before any rename makes it visible (as in write()).
            _each(stage, range(len(items)))
            if syncfs_fd >= 0:
                _syncfs(syncfs_fd, self._root)
            with self._locked():
                # Names are distinct, so the swaps are independent compare-and-swaps; the lock
                # keeps other processes out of all of them.
                for wave in ordered:
                    _each(swap, wave)
                # Renames are durable before the lock is released (as in write()).
                if syncfs_fd >= 0:
                    _syncfs(syncfs_fd, self._root)
                else:
                    synced = zip(parents, results, durable, strict=True)
                    _each(_fsync_dir, {d for d, r, f in synced if r and f})
            return results
        finally:
            if syncfs_fd >= 0:
                os.close(syncfs_fd)
            for tmp in tmps:
                if tmp:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)

    def _syncfs_flushes(self, durable: list[bool]) -> bool:
        """Whether a batch of these items is made durable by syncfs (see the module's docstring)."""
        if sum(durable) < SYNCFS_MIN:
            return False
        if self._syncfs is None:
            self._syncfs = _filesystem_type(self._root) in SYNCFS_FILESYSTEMS
        return self._syncfs

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        path = self._path(name)
        with self._locked():
            current = _generation(path)
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
        return ObjectInfo(name, st.st_size, gen, _fingerprint(st.st_size, gen), gen)

    def written_fingerprint(self, data: bytes, generation: int) -> str:
        return _fingerprint(len(data), generation)

    def content_fingerprint(self, data: bytes) -> None:
        return None  # an mtime says when, not what

    def together(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        return [call() for call in calls]  # a local read costs less than a thread hop

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            return self._info(name, os.stat(self._fspath(name)))
        except FileNotFoundError:
            return None

    def remove_stale_temporaries(self, older_than: float = STALE_TMP_SECONDS) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                if not name.startswith(TMP_PREFIX):
                    continue
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
        return removed

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


def _fingerprint(size: int, generation: int) -> str:
    return f"dir:{size}:{generation}"


def _generation(path: str | os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_mtime_ns or 1
    except FileNotFoundError:
        return 0


def _write_synced_tmp(directory: str | os.PathLike[str], data: bytes, *, sync: bool = True) -> str:
    """A new temporary file in `directory` holding `data`, fsynced (unless not `sync`), mode 0644;
    returns its path."""
    while True:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            # Created 0644 directly (mkstemp's 0600 needs a chmod: one more journaled change).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            break
        except FileExistsError:
            continue
        except FileNotFoundError:
            # Another writer's delete removed the directory, empty for a moment, after this writer
            # made it (`delete` leaves no empty project directory): make it again. Once the
            # temporary file is in it, it is not empty and cannot be removed before the rename.
            os.makedirs(directory, exist_ok=True)
    try:
        try:
            # Plain descriptor calls: a buffered file object costs an isatty ioctl and seeks per file.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if stat.S_IMODE(os.fstat(fd).st_mode) != 0o644:  # a umask took bits away
                os.fchmod(fd, 0o644)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _read_fd(fd: int, size: int) -> bytes:
    """Everything from `fd` to its end (an empty read); `size` (from fstat) sizes the first read."""
    chunks = [os.read(fd, size + 1)]
    while chunks[-1]:
        chunks.append(os.read(fd, max(size + 1, 1 << 16)))
    return b"".join(chunks)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _filesystem_type(path: str) -> int:
    """statfs(2)'s f_type of the filesystem holding `path` (0: not Linux, or it cannot be read)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs (120 bytes), f_type first: a long
    if _LIBC is None or _LIBC.statfs(os.fsencode(path), buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _syncfs(fd: int, path: str) -> None:
    assert _LIBC is not None
    if _LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}", path)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

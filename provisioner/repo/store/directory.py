"""I/O: the directory backend. Objects as files under a directory (what gcsfuse shows of a bucket).

Every compare-and-swap runs under an fcntl lock on `.pypapo.lock` at the repository root (nginx denies
dotfiles); data goes to a temporary file that is fsynced and atomically renamed over the object; the
generation is the object's mtime in nanoseconds, set strictly above the previous one on every write.
`write_many` pays the durability cost per batch: temporary files fsynced concurrently, one lock over
every compare + rename, then each touched directory fsynced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from provisioner.errors import PypapoError
from provisioner.repo.store import ObjectInfo, PreconditionFailed, WriteItem, waves

T = TypeVar("T")

LOCK_NAME = ".pypapo.lock"
# Concurrent fsyncs in write_many: enough for the journal to batch them into few commits.
SYNC_THREADS = 32
TMP_PREFIX = ".pypapo-tmp-"
# A writer's temporary file lives from its first byte to its rename: the write and fsync, then the
# wait for the lock (held by others for a compare and a rename, or a reindex batch's renames). One
# untouched for this long belongs to a writer that was killed.
STALE_TMP_SECONDS = 3600

_POOL: dict[int, ThreadPoolExecutor] = {}


def _each(fn: Callable[[T], object], args: Iterable[T]) -> None:
    """`fn` over `args` on write_many's threads, kept for the process (starting them costs more
    than a small batch's fsyncs on a busy machine; a forked child gets its own, the parent's threads
    are not there). Every call has finished when this returns; then the first error is raised."""
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="pypapo-sync")
    futures = [_POOL[pid].submit(fn, a) for a in args]
    wait(futures)
    for f in futures:
        f.result()


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
        ordered = waves(len(items), after)
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
            # Every byte is on disk before any rename makes it visible (as in write()).
            _each(stage, range(len(items)))
            with self._locked():
                # Names are distinct, so the swaps are independent compare-and-swaps; the lock
                # keeps other processes out of all of them.
                for wave in ordered:
                    _each(swap, wave)
                # Renames are durable before the lock is released (as in write()).
                _each(_fsync_dir, {p.parent for p, r in zip(paths, results, strict=True) if r})
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

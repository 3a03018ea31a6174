"""The engine: publish, yank, unyank, remove, list and reindex over a Store.

Concurrency model (the same on both backends, see storage.py):
- distributions and metadata files are created with a create-only precondition; files are immutable.
- the project JSON is the source of truth; every change is a read-modify-write conditional on the
  generation read, retried with jittered backoff when another writer got there first.
- the project HTML is rendered from the JSON and *converges*: after a JSON write, read the HTML's
  generation, THEN re-read the JSON, render, and write conditional on that HTML generation. Whoever
  writes last therefore rendered the latest JSON. The root index works the same way.
- a new project is added to the root index *before* its project page is created, so every project
  page that exists is listed (a crash in between leaves a listed project without page until the
  re-run or `reindex`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from provisioner.errors import ConflictError, InvalidDistribution, PypapoError
from provisioner.repo import layout
from provisioner.repo import pages as index
from provisioner.repo.dist import DistError, DistFile, parse_dist, summarize
from provisioner.repo.store import (
    DirectoryStore,
    ObjectInfo,
    PreconditionFailed,
    Store,
    WriteItem,
    open_store,
)

MAX_ATTEMPTS = 60
Echo = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def _backoff(attempt: int) -> None:
    # Full jitter, capped: contending writers spread out instead of colliding in lockstep.
    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))


def _now() -> str:
    return index.upload_time(dt.datetime.now(dt.UTC))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


@dataclass
class PublishResult:
    published: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"published {len(self.published)}, already present {len(self.already_present)}, "
            f"skipped {len(self.skipped)}"
        )


@dataclass
class ReindexResult:
    projects: int = 0
    files: int = 0
    hashed: int = 0
    parsed: int = 0
    reused: int = 0
    pages_written: int = 0
    metadata_written: int = 0
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"reindexed {self.projects} projects, {self.files} files "
            f"({self.reused} unchanged by fingerprint, {self.hashed} read and hashed, "
            f"{self.parsed} of those validated and parsed anew); "
            f"{self.pages_written} pages and {self.metadata_written} metadata files written"
            + (f"; ignored {len(self.ignored)} invalid objects" if self.ignored else "")
        )


def load_files(paths: Iterable[str | Path]) -> list[DistFile]:
    """Read and validate every file; the first invalid one raises InvalidDistribution."""
    dists: list[DistFile] = []
    seen: dict[str, DistFile] = {}
    for p in paths:
        path = Path(p)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidDistribution(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InvalidDistribution(f"{path}: is a directory, not a distribution file") from None
        except OSError as exc:
            raise InvalidDistribution(f"{path}: cannot read ({exc.strerror})") from None
        try:
            dist = parse_dist(path.name, data)
        except DistError as exc:
            raise InvalidDistribution(f"{path.name}: {exc}") from None
        if dist.filename in seen:
            if seen[dist.filename].sha256 != dist.sha256:
                raise InvalidDistribution(f"{dist.filename}: given twice with different contents")
            continue
        seen[dist.filename] = dist
        dists.append(dist)
    return dists


class Repository:
    """A package repository over a Store (GCS bucket or directory)."""

    def __init__(self, store: Store, *, echo: Echo | None = None) -> None:
        self.store = store
        self.echo = echo or _quiet

    @classmethod
    def open(cls, location: str, *, echo: Echo | None = None) -> Repository:
        return cls(open_store(location), echo=echo)

    # -- reading ----------------------------------------------------------------------------------
    def _read_project(self, project: str, *, repair: bool = False) -> tuple[dict[str, Any], int]:
        """The project state and its generation. A corrupt page is an error, or (repair=True, for
        reindex) an empty state that the rebuild then replaces."""
        data, gen = self.store.read(layout.project_json(project))
        try:
            return index.loads_project(data, project), gen
        except (ValueError, KeyError, TypeError, AttributeError):
            if repair:
                return index.empty_state(project), gen
            raise PypapoError(
                f"{layout.project_json(project)} is corrupt: run `provision reindex` to rebuild it"
            ) from None

    def _root_names(self, data: bytes, *, repair: bool = False) -> set[str]:
        try:
            return set(index.loads_root(data))
        except (ValueError, KeyError, TypeError, AttributeError):
            if repair:
                return set()
            raise PypapoError(
                f"{layout.ROOT_JSON} is corrupt: run `provision reindex` to rebuild it"
            ) from None

    def projects(self) -> list[str]:
        self.store.check()
        data, _ = self.store.read(layout.ROOT_JSON)
        return sorted(self._root_names(data))

    def project(self, name: str) -> dict[str, Any]:
        """The project state (its JSON); raises if the project does not exist."""
        self.store.check()
        project = layout.normalize(name)
        state, gen = self._read_project(project)
        if gen == 0:
            raise PypapoError(f"no project {project} in {self.store.location}: see `provision list`")
        return state

    # -- page updates -----------------------------------------------------------------------------
    def _update_project(
        self,
        project: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        repair: bool = False,
    ) -> tuple[dict[str, Any], bool, bool]:
        """Apply `change` to the project JSON under CAS. `change` returns the new state or None (no
        change). Returns (state, changed, created). An empty resulting state deletes the project."""
        for attempt in range(MAX_ATTEMPTS):
            state, gen = self._read_project(project, repair=repair)
            new = change(state)
            if new is None:
                return state, False, False
            try:
                if new["files"]:
                    self.store.write(layout.project_json(project), index.dumps(new), if_generation_match=gen)
                elif gen:
                    self.store.delete(layout.project_json(project), if_generation_match=gen)
                else:
                    return new, False, False
            except PreconditionFailed:
                _backoff(attempt)
                continue
            self._converge_project_html(project)
            return new, True, gen == 0
        raise ConflictError(f"gave up updating {project} after {MAX_ATTEMPTS} conflicting writes; retry")

    def _generation(self, name: str) -> int:
        info = self.store.stat(name)
        return info.generation if info else 0

    def _converge_project_html(self, project: str) -> bool:
        """Make the HTML match the JSON (read HTML generation first, then the JSON). True if written."""
        name = layout.project_html(project)
        for attempt in range(MAX_ATTEMPTS):
            html_gen = self._generation(name)
            data, json_gen = self.store.read(layout.project_json(project))
            try:
                if json_gen == 0:
                    if html_gen == 0:
                        return False
                    self.store.delete(name, if_generation_match=html_gen)
                    return True
                rendered = index.render_project_html(index.loads_project(data, project))
                self.store.write(name, rendered, if_generation_match=html_gen)
                return True
            except PreconditionFailed:
                _backoff(attempt)
        raise ConflictError(f"gave up writing {name} after {MAX_ATTEMPTS} conflicting writes; retry")

    def _update_root(self, change: Callable[[set[str]], set[str] | None], *, repair: bool = False) -> bool:
        for attempt in range(MAX_ATTEMPTS):
            data, gen = self.store.read(layout.ROOT_JSON)
            current = self._root_names(data, repair=repair)
            new = change(set(current))
            if new is None or (new == current and gen):
                return False
            try:
                self.store.write(
                    layout.ROOT_JSON, index.dumps(index.root_state(new)), if_generation_match=gen
                )
            except PreconditionFailed:
                _backoff(attempt)
                continue
            self._converge_root_html()
            return True
        raise ConflictError(f"gave up updating the root index after {MAX_ATTEMPTS} conflicting writes")

    def _converge_root_html(self) -> None:
        for attempt in range(MAX_ATTEMPTS):
            html_gen = self._generation(layout.ROOT_HTML)
            data, _ = self.store.read(layout.ROOT_JSON)
            try:
                self.store.write(
                    layout.ROOT_HTML,
                    index.render_root_html(self._root_names(data, repair=True)),
                    if_generation_match=html_gen,
                )
                return
            except PreconditionFailed:
                _backoff(attempt)
        raise ConflictError(f"gave up writing the root page after {MAX_ATTEMPTS} conflicting writes")

    def initialize(self) -> bool:
        """Write an empty root index where there is none; True if written.

        A fresh bucket must serve an empty index (not a 503) before the first publish: the appliance
        reports ready only once its root page answers through the mount.
        """
        self.store.check()
        return self._update_root(lambda names: names)

    def _ensure_listed(self, project: str) -> None:
        self._update_root(lambda names: None if project in names else names | {project})

    # -- objects ----------------------------------------------------------------------------------
    def _create_object(self, name: str, data: bytes) -> bool:
        """Create-only upload. True if we created it, False if identical bytes were already there."""
        try:
            self.store.write(name, data, if_generation_match=0)
            return True
        except PreconditionFailed:
            existing, gen = self.store.read(name)
            if gen and existing == data:
                return False  # ours from a retried request, a re-run, or an identical racer
            raise ConflictError(
                f"{name.rsplit('/', 1)[-1]} already exists in {self.store.location} with different "
                "bytes; files are immutable: publish a new version"
            ) from None

    # -- publish ----------------------------------------------------------------------------------
    def publish(self, paths: Sequence[str | Path], *, skip_existing: bool = False) -> PublishResult:
        """Validate every file, then upload and index them. Same bytes again is a no-op; other bytes
        under an existing filename are refused (or skipped with skip_existing)."""
        return self.publish_dists(load_files(paths), skip_existing=skip_existing)

    def publish_dists(self, dists: Sequence[DistFile], *, skip_existing: bool = False) -> PublishResult:
        self.store.check()
        result = PublishResult()
        # Decide for the whole batch before writing anything: a refusal leaves the repository as it was.
        states: dict[str, dict[str, Any]] = {}
        todo: list[DistFile] = []
        new_projects = False
        for dist in dists:
            if dist.project not in states:
                states[dist.project], gen = self._read_project(dist.project)
                new_projects = new_projects or gen == 0
            known = {f["filename"]: f for f in states[dist.project]["files"]}
            entry = known.get(dist.filename)
            if entry is None:
                existing, gen = self.store.read(layout.dist_object(dist.project, dist.filename))
                if gen and existing != dist.data:
                    entry = {"hashes": {"sha256": "(stored object)"}}
            if entry is None:
                todo.append(dist)
            elif entry["hashes"]["sha256"] == dist.sha256:
                result.already_present.append(dist.filename)
            elif skip_existing:
                result.skipped.append(dist.filename)
            else:
                raise ConflictError(
                    f"{dist.filename} already exists in {self.store.location} with different bytes; "
                    "files are immutable: publish a new version (or pass --skip-existing)"
                )
        if new_projects and todo:
            self._root_names(self.store.read(layout.ROOT_JSON)[0])  # a corrupt root fails here, not midway
        total = len(dists)
        done = 0

        def progress(message: str) -> None:
            nonlocal done
            done += 1
            self.echo(f"[{done}/{total}] {message}" if total > 1 else message)

        for dist in dists:
            if dist.filename in result.already_present:
                progress(f"{dist.filename} already present (same bytes), nothing to do")
            elif dist.filename in result.skipped:
                progress(f"{dist.filename} exists with different bytes, skipped (--skip-existing)")

        # Per project: upload its files (create-only), then one index update for the group.
        groups: dict[str, list[DistFile]] = {}
        for dist in todo:
            groups.setdefault(dist.project, []).append(dist)
        for project, group in groups.items():
            for dist in group:
                self._create_object(layout.dist_object(project, dist.filename), dist.data)
                if dist.metadata is not None:
                    self._create_object(layout.metadata_object(project, dist.filename), dist.metadata)
                progress(f"uploaded {dist.filename} ({human_size(dist.size)})")
            self._index_new_files(project, group)
            result.published += [d.filename for d in group]
        return result

    def _index_new_files(self, project: str, dists: Sequence[DistFile]) -> None:
        _state, gen = self.store.read(layout.project_json(project))
        if gen == 0:
            self._ensure_listed(project)  # listed before the page exists (see module docstring)
        uploaded = _now()

        def add(state: dict[str, Any]) -> dict[str, Any] | None:
            files = {f["filename"]: f for f in state["files"]}
            changed = False
            for d in dists:
                if d.filename in files:
                    continue
                files[d.filename] = index.file_entry(
                    filename=d.filename,
                    version=d.version,
                    sha256=d.sha256,
                    size=d.size,
                    requires_python=d.requires_python,
                    metadata_sha256=d.metadata_sha256,
                    uploaded=uploaded,
                    fingerprint=self._fingerprint(project, d.filename),
                )
                changed = True
            return index.project_state(project, files.values()) if changed else None

        _s, _changed, created = self._update_project(project, add)
        if created:
            # A concurrent `remove` of the project's last file may have unlisted it meanwhile.
            self._ensure_listed(project)

    def _fingerprint(self, project: str, filename: str) -> str:
        info = self.store.stat(layout.dist_object(project, filename))
        return info.fingerprint if info else ""

    # -- yank / remove ----------------------------------------------------------------------------
    def _version_matcher(self, state: dict[str, Any], version: str) -> Callable[[dict[str, Any]], bool]:
        try:
            wanted = Version(version)
        except InvalidVersion:
            raise PypapoError(f"invalid version {version!r}") from None

        def match(f: dict[str, Any]) -> bool:
            try:
                return Version(f["_version"]) == wanted
            except InvalidVersion:
                return False

        if not any(match(f) for f in state["files"]):
            versions = ", ".join(state["versions"]) or "none"
            raise PypapoError(f"{state['name']} has no version {version} (versions: {versions})")
        return match

    def set_yanked(self, name: str, version: str, reason: str | None, *, yanked: bool = True) -> int:
        """Yank (or unyank) every file of a version. Returns the number of files changed."""
        project = layout.normalize(name)
        state = self.project(name)
        match = self._version_matcher(state, version)
        value: bool | str = (reason or True) if yanked else False
        count = 0

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal count
            count = 0
            files = []
            for f in state["files"]:
                if match(f) and f["yanked"] != value:
                    f = {**f, "yanked": value}
                    count += 1
                files.append(f)
            return index.project_state(project, files) if count else None

        self._update_project(project, change)
        return count

    def remove(self, name: str, version: str | None = None) -> list[str]:
        """Remove a version (or the whole project). Returns the removed filenames."""
        project = layout.normalize(name)
        state = self.project(name)
        match = self._version_matcher(state, version) if version else (lambda _f: True)
        removed: list[str] = []

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            removed.clear()
            keep = []
            for f in state["files"]:
                (removed.append(f["filename"]) if match(f) else keep.append(f))
            return index.project_state(project, keep) if removed else None

        new_state, _changed, _created = self._update_project(project, change)
        # Pages first, objects after: a page never links a file that is gone.
        for filename in removed:
            self.store.delete(layout.metadata_object(project, filename))
            self.store.delete(layout.dist_object(project, filename))
        if not new_state["files"]:
            self._update_root(lambda names: names - {project} if project in names else None)
            # A publisher may have recreated the project meanwhile: it must stay listed.
            if self.store.read(layout.project_json(project))[1]:
                self._ensure_listed(project)
        return sorted(removed)

    # -- reindex ----------------------------------------------------------------------------------
    def reindex(self, *, verify: bool = False, workers: int = 8) -> ReindexResult:
        """Rebuild every page from the stored objects, keeping yanks and upload times.

        Without `verify`, a file whose stored fingerprint (GCS: size + md5/crc32c; directory: size +
        mtime_ns) matches the one recorded in the project JSON keeps its recorded entry; everything
        else is read and hashed, and parsed anew unless the hash equals the recorded one. `verify`
        reads and hashes every file and its metadata file, and fully checks the changed ones.

        Pages are written in batches (`Store.write_many`), group by group: each page is still its
        own compare-and-swap on the generation read, with the publish protocol (project JSON, then
        its HTML, the HTML generation read before the JSON is written; see _reindex_pages); a page
        that lost its race to a publisher is redone through the one-by-one retry path. When many
        files need parsing on a directory repository, that work runs in one worker process per CPU
        (multiprocessing forkserver: a script calling this needs the usual `__main__` guard)."""
        self.store.check()
        result = ReindexResult()
        by_project: dict[str, dict[str, ObjectInfo]] = {}
        for info in self.store.list(layout.SIMPLE + "/"):
            parts = info.name.split("/")
            if len(parts) != 3:
                continue
            by_project.setdefault(parts[1], {})[parts[2]] = info
        root_data, _ = self.store.read(layout.ROOT_JSON)
        listed = {p for p in self._root_names(root_data, repair=True) if layout.is_normalized(p)}
        candidates = sorted(set(by_project) | listed)

        states: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # Groups of projects come out of phase 1 as they are ready; writing a group's pages
            # overlaps rebuilding the next ones (in worker processes, when they run).
            for group in self._rebuild_groups(candidates, by_project, verify, workers):
                for rb in group:
                    result.hashed += rb.res.hashed
                    result.parsed += rb.res.parsed
                    result.reused += rb.res.reused
                    result.ignored += rb.res.ignored
                todo = [rb for rb in group if rb.rebuilt is not None]
                # Missing metadata files (create-only; a publisher writing the same one meanwhile wins).
                meta_items = [item for rb in todo for item in rb.metadata]
                result.metadata_written += sum(1 for g in self.store.write_many(meta_items) if g)
                # 2. Project pages: JSON, then HTML.
                states.update(self._reindex_pages(todo, pool, result))
        live = [project for project, state in states.items() if state["files"]]
        result.files = sum(len(states[p]["files"]) for p in live)
        result.projects = len(live)

        live_set = set(live)

        def fix_root(current: set[str]) -> set[str] | None:
            # Keep projects created after our listing; drop the ones without a page.
            extra = {p for p in current - live_set if self.store.stat(layout.project_json(p))}
            return live_set | extra

        if self._update_root(fix_root, repair=True):
            result.pages_written += 2
        elif (self.store.read(layout.ROOT_HTML)[0]) != index.render_root_html(
            self._root_names(self.store.read(layout.ROOT_JSON)[0], repair=True)
        ):
            self._converge_root_html()
            result.pages_written += 1
        return result

    def _rebuild_groups(
        self,
        candidates: list[str],
        by_project: dict[str, dict[str, ObjectInfo]],
        verify: bool,
        workers: int,
    ) -> Iterator[list[_Rebuild]]:
        """Phase 1 of reindex: every project's entries from its stored objects, in groups of
        WRITE_GROUP projects as they are ready."""
        jobs: list[_RebuildJob] = []
        ignored: list[_Rebuild] = []
        for project in candidates:
            objects = by_project.get(project, {})
            if layout.is_normalized(project):
                jobs.append((project, objects, {}))
            else:
                res = ReindexResult(ignored=[f"{layout.SIMPLE}/{project}/{n}" for n in objects])
                ignored.append(_Rebuild(self, project, objects, None, [], res))
        yield ignored
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # A corrupt page reads as empty: the project is rebuilt from its objects.
            read = list(pool.map(lambda job: self._read_project(job[0], repair=True), jobs))
            jobs = [(p, objects, old) for (p, objects, _), (old, _gen) in zip(jobs, read, strict=True)]
            # Files whose recorded entry does not stand by its fingerprint: these get parsed.
            recorded = {(project, f["filename"]): f for project, _objects, old in jobs for f in old["files"]}
            unvouched = sum(
                1
                for project, objects, _old in jobs
                for name, info in objects.items()
                if layout.is_dist_filename(name)
                and not _vouched(
                    recorded.get((project, name)),
                    info,
                    f"{name}{layout.METADATA_SUFFIX}" in objects,
                    False,  # --verify alone rehashes, which threads do well; parsing is the cost
                )
            )
            group: list[_Rebuild] = []
            done = 0

            def add(out: _RebuildOut) -> list[_Rebuild] | None:
                nonlocal group, done
                (project, objects, old), gen = jobs[done], read[done][1]
                rebuilt, metadata, res, pages = out
                rb = _Rebuild(self, project, objects, rebuilt, metadata, res, old, gen)
                rb.new, rb.json, rb.html = pages
                group.append(rb)
                done += 1
                if len(group) < WRITE_GROUP:
                    return None
                full, group = group, []
                return full

            # Parsing holds the GIL: with many files to read, spread them over processes. The
            # directory store pickles as its path; a GCS client does not (and waits on the network).
            if unvouched >= PROCESS_POOL_MIN and _cpus() > 1 and isinstance(self.store, DirectoryStore):
                try:
                    for out in _rebuild_in_processes(self.store, jobs, verify):
                        if (full := add(out)) is not None:
                            yield full
                except (BrokenProcessPool, OSError, ValueError):
                    pass  # e.g. no /dev/shm in a sandbox: the rest in threads, from where it stopped
            rest = jobs[done:]
            for out in pool.map(lambda job: _rebuild_files(self.store, *job, verify), rest):
                if (full := add(out)) is not None:
                    yield full
            yield group

    def _reindex_pages(
        self, todo: list[_Rebuild], pool: ThreadPoolExecutor, result: ReindexResult
    ) -> dict[str, dict[str, Any]]:
        """Write the project pages that changed, in two batches, and return every final state.

        The publish protocol, batched: each project's HTML generation is read *after* its JSON was
        read (phase 1) and *before* the JSON is written; the JSON is written conditional on the
        generation read, then the HTML rendered from that very JSON, conditional on the HTML
        generation read. Whoever writes the HTML last therefore rendered the latest JSON (a
        publisher writing in between makes our HTML write fail). Anything that lost a race is
        redone through the one-by-one retry path."""

        def prepare(rb: _Rebuild) -> tuple[_Rebuild, dict[str, Any] | None, bytes, int]:
            html_now, html_gen = self.store.read(layout.project_html(rb.project))
            return rb, rb.new, html_now, html_gen

        states: dict[str, dict[str, Any]] = {}
        json_items: list[WriteItem] = []
        html_items: list[WriteItem] = []
        batch: list[tuple[_Rebuild, dict[str, Any]]] = []
        retry: list[_Rebuild] = []  # JSON (and HTML) the one-by-one way
        converge: list[str] = []  # HTML the one-by-one way
        for rb, new, html_now, html_gen in pool.map(prepare, todo):
            project = rb.project
            if new is None or (not new["files"] and not rb.old_gen):
                states[project] = rb.old_state if new is None else new
                if html_now != rb.html:
                    converge.append(project)
            elif not new["files"]:
                retry.append(rb)  # every file gone: a delete, done one by one
            else:
                batch.append((rb, new))
                json_items.append((layout.project_json(project), rb.json, rb.old_gen))
                html_items.append((layout.project_html(project), rb.html, html_gen))
        # One batch: every JSON, and each HTML once its JSON is written.
        n = len(json_items)
        written = self.store.write_many(json_items + html_items, after=[None] * n + list(range(n)))
        for k, (rb, new) in enumerate(batch):
            if not written[k]:
                retry.append(rb)  # a publisher got there first: merge into what it wrote
                continue
            states[rb.project] = new
            result.pages_written += 1
            if written[n + k]:
                result.pages_written += 1
            else:
                converge.append(rb.project)  # a publisher rewrote the HTML meanwhile

        def one_by_one(rb: _Rebuild) -> tuple[str, dict[str, Any], bool]:
            state, changed, _created = self._update_project(rb.project, rb.merge, repair=True)
            return rb.project, state, changed

        for project, state, changed in pool.map(one_by_one, retry):
            states[project] = state
            if changed:
                result.pages_written += 2  # JSON, and its HTML converged by _update_project
            else:
                converge.append(project)
        result.pages_written += sum(pool.map(self._converge_project_html, converge))
        return states


@dataclass
class _Rebuild:
    """One project's entries as rebuilt from its stored objects (None: not a valid project)."""

    repo: Repository
    project: str
    objects: dict[str, ObjectInfo]
    rebuilt: dict[str, dict[str, Any]] | None
    metadata: list[WriteItem]  # metadata files to (re)write, with the generation read
    res: ReindexResult
    old_state: dict[str, Any] = field(default_factory=dict)  # the project JSON as read first
    old_gen: int = 0

    # Filled by phase 1: the state merged into the JSON read first, and its pages' bytes.
    new: dict[str, Any] | None = None
    json: bytes = b""
    html: bytes = b""

    def merge(self, current: dict[str, Any]) -> dict[str, Any] | None:
        """The new project state from the rebuilt entries and the current JSON; None if unchanged."""
        return _merge(self.repo.store, self.project, self.objects, self.rebuilt or {}, current)


def _merge(
    store: Store,
    project: str,
    objects: dict[str, ObjectInfo],
    rebuilt: dict[str, dict[str, Any]],
    current: dict[str, Any],
) -> dict[str, Any] | None:
    """The project state from rebuilt entries and the current JSON; None if that is unchanged."""
    files = dict(rebuilt)
    for f in current["files"]:
        name = f["filename"]
        if name in files:
            # Keep yanks and upload times set since we read the old state.
            files[name] = {**files[name], "yanked": f["yanked"], "upload-time": f["upload-time"]}
        elif name not in objects and store.stat(layout.dist_object(project, name)):
            files[name] = f  # published after our listing
    new = index.project_state(project, files.values())
    return None if new == current else new


_Pages = tuple[dict[str, Any] | None, bytes, bytes]


def _pages(
    store: Store,
    project: str,
    objects: dict[str, ObjectInfo],
    rebuilt: dict[str, dict[str, Any]],
    old_state: dict[str, Any],
) -> _Pages:
    """The merged state (None: unchanged), its JSON bytes, and the HTML the final state renders."""
    new = _merge(store, project, objects, rebuilt, old_state)
    final = old_state if new is None else new
    html = index.render_project_html(final) if final["files"] else b""
    return new, index.dumps(new) if new is not None else b"", html


def _vouched(prev: dict[str, Any] | None, info: ObjectInfo, have_meta: bool, verify: bool) -> bool:
    """The recorded entry stands without reading the file: same fingerprint, metadata file present."""
    return (
        not verify
        and prev is not None
        and prev.get("_fingerprint") == info.fingerprint
        and bool(have_meta or not prev.get("core-metadata"))
    )


def _rebuild_files(
    store: Store, project: str, objects: dict[str, ObjectInfo], old_state: dict[str, Any], verify: bool
) -> tuple[dict[str, dict[str, Any]], list[WriteItem], ReindexResult, _Pages]:
    """A project's file entries as its stored objects give them (reusing recorded ones where
    allowed), the metadata files to (re)write, the counts, and its pages merged into `old_state`.
    Module-level, so that it can run in a worker process (all of this holds the GIL)."""
    res = ReindexResult()
    old = {f["filename"]: f for f in old_state["files"]}
    rebuilt: dict[str, dict[str, Any]] = {}
    metadata: list[WriteItem] = []
    for filename, info in objects.items():
        if not layout.is_dist_filename(filename) or filename in layout.PAGE_NAMES:
            continue
        prev = old.get(filename)
        have_meta = f"{filename}{layout.METADATA_SUFFIX}" in objects
        if _vouched(prev, info, have_meta, verify):
            rebuilt[filename] = prev  # type: ignore[assignment]
            res.reused += 1
            continue
        data, gen = store.read(layout.dist_object(project, filename))
        if not gen:
            continue  # removed since the listing
        res.hashed += 1
        if prev is not None and prev["hashes"]["sha256"] == hashlib.sha256(data).hexdigest():
            # Same bytes as recorded: the recorded entry stands (only the fingerprint moved),
            # provided its metadata file is there and, when verifying, still the recorded one.
            core = prev.get("core-metadata")
            meta_ok = not core or (have_meta and not verify)
            if core and have_meta and verify:
                stored_meta, _ = store.read(layout.metadata_object(project, filename))
                meta_ok = hashlib.sha256(stored_meta).hexdigest() == core["sha256"]
            if meta_ok:
                rebuilt[filename] = {**prev, "_fingerprint": info.fingerprint}
                continue
        try:
            # Full CRC check of every member only when verifying: publish already did it.
            dist = summarize(filename, data, check_crc=verify)
        except DistError as exc:
            res.ignored.append(f"{layout.dist_object(project, filename)}: {exc}")
            continue
        if dist.project != project:
            res.ignored.append(f"{layout.dist_object(project, filename)}: belongs to {dist.project}")
            continue
        res.parsed += 1
        if dist.metadata is not None:
            meta_name = layout.metadata_object(project, filename)
            stored_meta, mgen = store.read(meta_name) if have_meta else (b"", 0)
            if stored_meta != dist.metadata:
                metadata.append((meta_name, dist.metadata, mgen))
        uploaded = (
            prev["upload-time"]
            if prev
            else index.upload_time(dt.datetime.fromtimestamp(info.updated_ns / 1e9, dt.UTC))
        )
        rebuilt[filename] = index.file_entry(
            filename=filename,
            version=dist.version,
            sha256=dist.sha256,
            size=dist.size,
            requires_python=dist.requires_python,
            metadata_sha256=dist.metadata_sha256,
            uploaded=uploaded,
            yanked=prev["yanked"] if prev else False,
            fingerprint=info.fingerprint,
        )
    return rebuilt, metadata, res, _pages(store, project, objects, rebuilt, old_state)


_RebuildJob = tuple[str, dict[str, ObjectInfo], dict[str, Any]]


def _rebuild_many(store: Store, jobs: list[_RebuildJob], verify: bool) -> list[_RebuildOut]:
    return [_rebuild_files(store, project, objects, old, verify) for project, objects, old in jobs]


_RebuildOut = tuple[dict[str, dict[str, Any]], list[WriteItem], ReindexResult, _Pages]


def _rebuild_in_processes(store: Store, jobs: list[_RebuildJob], verify: bool) -> Iterator[_RebuildOut]:
    """_rebuild_files across one worker process per CPU, results in order as they come."""
    chunks = [jobs[i : i + REBUILD_CHUNK] for i in range(0, len(jobs), REBUILD_CHUNK)]
    # forkserver: this process runs threads, and forking a threaded process is unsafe.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=_cpus(), mp_context=ctx) as procs:
        # Every chunk is queued at once: the workers keep going while the caller writes pages.
        for part in procs.map(_rebuild_many, [store] * len(chunks), chunks, [verify] * len(chunks)):
            yield from part


# Reindex reads, validates and parses in worker processes (one per CPU) once at least this many files
# need reading; for fewer, starting the workers costs more than it saves. Projects go to the
# workers in groups of REBUILD_CHUNK.
PROCESS_POOL_MIN = 1000
REBUILD_CHUNK = 16
# Reindex writes pages for this many projects at a time, while the next ones are being rebuilt.
WRITE_GROUP = 400


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_repository(location: str, *, echo: Echo | None = None) -> Repository:
    """The Repository at `gs://BUCKET[/PREFIX]` or a directory."""
    return Repository.open(location, echo=echo)


def publish(
    location: str,
    paths: Sequence[str | Path],
    *,
    skip_existing: bool = False,
    echo: Echo | None = None,
) -> PublishResult:
    """Publish distribution files into a repository (what `provision publish` does)."""
    return open_repository(location, echo=echo).publish(paths, skip_existing=skip_existing)

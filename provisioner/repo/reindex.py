"""Reindex: rebuild every page from the stored objects, keeping yanks, upload times and private keys.

Phase 1 (`rebuild`, pure over store reads, so it can run in worker processes): each project's file
entries from its objects, merged into the project JSON read first, and the bytes of its JSON and
derived outputs. Phase 2 (`_write_pages`): those pages in batches (`Store.write_many`), each still its
own compare-and-swap with the publish protocol; anything that lost a race to a publisher is redone
the one-by-one way (`IndexWriter.update_project` / `converge_project`).

`Beside` (the site's pages) is rendered in phase 1 too, in the same worker, from the final state and
the core metadata the worker has just read: nothing is read, parsed or sent to a process twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

from provisioner.errors import counted
from provisioner.repo import layout
from provisioner.repo.dist import DistError, summarize
from provisioner.repo.model import FileEntry, ProjectState, RootState, upload_time
from provisioner.repo.outputs import Outputs
from provisioner.repo.store import ObjectInfo, Store, WriteItem, holds
from provisioner.repo.store.directory import DirectoryStore
from provisioner.repo.writer import IndexWriter, finish_removals

# Reindex reads, validates and parses in worker processes (one per CPU) once at least this many files
# need reading; for fewer, starting the workers costs more than it saves. Projects go to the
# workers in groups of REBUILD_CHUNK.
PROCESS_POOL_MIN = 1000
REBUILD_CHUNK = 16
# What rendering a project's site page anew (its README highlighted and sanitized) costs, in wheels
# parsed: ~2.3 against ~0.2 ms of CPU here. A reindex whose index stands but whose site must be
# rendered (the site's first reindex, or its pages deleted) is work for the worker processes too.
BESIDE_WORK = 10
# Reindex writes pages for this many projects at a time, while the next ones are being rebuilt.
WRITE_GROUP = 400
# While listing, reindex tells its progress every this many objects (a page of a GCS listing).
LIST_TELL = 1000


@dataclass(frozen=True)
class Progress:
    """Where a reindex is: the objects listed so far; once listed, the projects done of those."""

    listed: int
    done: int = 0
    total: int | None = None  # None: still listing


class Listing:
    """A store's objects under `prefix`, as listed, telling `tell` every LIST_TELL of them (a large
    bucket's listing alone takes minutes); `count`: how many it has listed."""

    def __init__(self, store: Store, prefix: str, tell: Callable[[Progress], None]) -> None:
        self._store, self._prefix, self._tell = store, prefix, tell
        self.count = 0

    def __iter__(self) -> Iterator[ObjectInfo]:
        for info in self._store.list(self._prefix):
            self.count += 1
            if self.count % LIST_TELL == 0:
                self._tell(Progress(self.count))
            yield info


@dataclass
class ReindexResult:
    projects: int = 0
    files: int = 0
    hashed: int = 0
    parsed: int = 0
    reused: int = 0
    pages_written: int = 0
    metadata_written: int = 0
    temporaries_removed: int = 0
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"reindexed {counted(self.projects, 'project')}, {counted(self.files, 'file')} "
            f"({self.reused:,} unchanged by fingerprint, {self.hashed:,} read and hashed, "
            f"{self.parsed:,} of those validated and parsed anew); "
            f"{counted(self.pages_written, 'page')} and "
            f"{counted(self.metadata_written, 'metadata file')} written"
            + (f"; ignored {counted(len(self.ignored), 'invalid object')}" if self.ignored else "")
            + (
                f"; removed {counted(self.temporaries_removed, 'temporary file')} of killed writers"
                if self.temporaries_removed
                else ""
            )
        )


@dataclass(frozen=True)
class RebuildJob:
    """One project to rebuild: its stored objects, and its JSON as read first (with generation)."""

    project: str
    objects: dict[str, ObjectInfo]
    old: ProjectState
    old_gen: int


@dataclass(frozen=True)
class Beside:
    """What is rendered of each project beside its own outputs, in phase 1 (the site's pages, which
    need the core metadata a worker has in memory). `render(store, state, metadata, held, setting)`
    is module-level (pickled by name); `metadata` holds the core metadata files of `state` read in
    this pass, by filename; `held` is what reindex expects to be every project with files (set by
    reindex: its listing's projects with a distribution); `stored` the projects whose page exists
    (rendering one of the others costs BESIDE_WORK)."""

    render: Callable[[Store, ProjectState, Mapping[str, bytes], frozenset[str], Any], Any]
    setting: Any = None
    held: frozenset[str] = frozenset()
    stored: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Reindexed:
    """What reindex did: its counts, every project's final state and, where it is rendered from
    that very state, what `Beside` rendered of it (by project)."""

    result: ReindexResult
    states: dict[str, ProjectState]
    beside: dict[str, Any]
    held: frozenset[str]


@dataclass(frozen=True)
class Rebuilt:
    """Phase 1's answer for one project."""

    job: RebuildJob
    files: dict[str, FileEntry]  # the entries its objects give
    metadata: list[WriteItem]  # metadata files to (re)write, with the generation read
    counts: ReindexResult  # hashed, parsed, reused, ignored
    new: ProjectState | None  # merged into `job.old`; None: unchanged
    json: bytes  # new.to_json() (b"" when unchanged)
    outputs: tuple[bytes, ...]  # each project output as the final state renders it (() if no files)
    valid: bool = True  # False: a directory that is no project name (its objects are ignored)
    beside: Any = None  # what `Beside` rendered of the final state (None: nothing, or no files)

    @property
    def final(self) -> ProjectState:
        return self.job.old if self.new is None else self.new


def merge(
    store: Store,
    job: RebuildJob,
    files: dict[str, FileEntry],
    current: ProjectState,
    *,
    recheck: bool = False,
) -> ProjectState | None:
    """The project state from rebuilt entries and the current JSON; None if that is unchanged.

    A file being removed (`current.removing`) is never put back. With `recheck` (merging into a JSON
    newer than the one phase 1 read: the retry path), a rebuilt file that the current JSON does not
    list is added only if its object still exists: a `remove` that finished meanwhile took it off
    the page and then deleted it, and our listing is older than both."""
    listed = current.by_filename()
    merged = {
        name: f
        for name, f in files.items()
        if name not in current.removing
        and (name in listed or not recheck or store.stat(layout.dist_object(job.project, name)))
    }
    for f in current.files:
        if f.filename in merged:
            # Keep what is not in the distribution, as set since our first read: yank, upload time,
            # private keys (a mirror's origin).
            merged[f.filename] = replace(
                merged[f.filename], yanked=f.yanked, upload_time=f.upload_time, extra=f.extra
            )
        elif f.filename not in job.objects and store.stat(layout.dist_object(job.project, f.filename)):
            merged[f.filename] = f  # published after our listing
    new = current.with_files(merged.values())
    return None if new == current else new


def _vouched(prev: FileEntry | None, info: ObjectInfo, have_meta: bool, verify: bool) -> bool:
    """The recorded entry stands without reading the file: same fingerprint, metadata file present."""
    return (
        not verify
        and prev is not None
        and prev.fingerprint == info.fingerprint
        and bool(have_meta or not prev.metadata_sha256)
    )


def rebuild(
    store: Store, outputs: Outputs, job: RebuildJob, verify: bool, beside: Beside | None = None
) -> Rebuilt:
    """A project's file entries as its stored objects give them (reusing recorded ones where
    allowed), the metadata files to (re)write, the counts, and its pages merged into `job.old`.
    Module-level, so that it can run in a worker process (all of this holds the GIL)."""
    project, objects = job.project, job.objects
    res = ReindexResult()
    old = job.old.by_filename()
    rebuilt: dict[str, FileEntry] = {}
    metadata: list[WriteItem] = []
    known: dict[str, bytes] = {}  # core metadata read here, by filename
    for filename, info in objects.items():
        if not layout.is_dist_filename(filename) or filename in layout.PAGE_NAMES:
            continue
        prev = old.get(filename)
        have_meta = f"{filename}{layout.METADATA_SUFFIX}" in objects
        if prev is not None and _vouched(prev, info, have_meta, verify):
            rebuilt[filename] = prev
            res.reused += 1
            continue
        data, gen = store.read(layout.dist_object(project, filename))
        if not gen:
            continue  # removed since the listing
        res.hashed += 1
        if prev is not None and prev.sha256 == hashlib.sha256(data).hexdigest():
            # Same bytes as recorded: the recorded entry stands (only the fingerprint moved),
            # provided its metadata file is there and, when verifying, still the recorded one.
            core = prev.metadata_sha256
            meta_ok = not core or (have_meta and not verify)
            if core and have_meta and verify:
                stored_meta, _ = store.read(layout.metadata_object(project, filename))
                meta_ok = hashlib.sha256(stored_meta).hexdigest() == core
            if meta_ok:
                rebuilt[filename] = replace(prev, fingerprint=info.fingerprint)
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
            known[filename] = dist.metadata
            meta_name = layout.metadata_object(project, filename)
            stored_meta, mgen = store.read(meta_name) if have_meta else (b"", 0)
            if stored_meta != dist.metadata:
                metadata.append(WriteItem(meta_name, dist.metadata, mgen))
        if prev is None:
            uploaded, yanked = upload_time(dt.datetime.fromtimestamp(info.updated_ns / 1e9, dt.UTC)), False
        else:
            uploaded, yanked = prev.upload_time, prev.yanked  # (merge() then takes the current ones)
        rebuilt[filename] = FileEntry.of(
            dist, upload_time=uploaded, fingerprint=info.fingerprint, yanked=yanked
        )
    new = merge(store, job, rebuilt, job.old)
    final = job.old if new is None else new
    rendered = outputs.render_project(final) if final.files else ()
    extra = None
    if beside is not None and final.files:
        # Only metadata of the entries the final state has (the same sha256: the file read here).
        sha = {f.filename: f.metadata_sha256 for f in final.files}
        mine = {f: m for f, m in known.items() if sha.get(f) == rebuilt[f].metadata_sha256}
        extra = beside.render(store, final, mine, beside.held, beside.setting)
    return Rebuilt(
        job, rebuilt, metadata, res, new, new.to_json() if new is not None else b"", rendered, beside=extra
    )


def _rebuild_many(
    store: Store, outputs: Outputs, jobs: list[RebuildJob], verify: bool, beside: Beside | None
) -> list[Rebuilt]:
    """A worker process's chunk. Each answer goes back without its job's listing (the caller has
    the job: sending every ObjectInfo back was a third of the pickling, both ways)."""
    out = []
    for job in jobs:
        rb = rebuild(store, outputs, job, verify, beside)
        out.append(replace(rb, job=replace(job, objects={})))
    return out


def _rebuild_in_processes(
    store: Store, outputs: Outputs, jobs: list[RebuildJob], verify: bool, beside: Beside | None
) -> Iterator[Rebuilt]:
    """`rebuild` across one worker process per CPU, results in order as they come."""
    chunks = [jobs[i : i + REBUILD_CHUNK] for i in range(0, len(jobs), REBUILD_CHUNK)]
    n = len(chunks)
    with ProcessPoolExecutor(max_workers=cpu_count(), mp_context=worker_context()) as procs:
        # Every chunk is queued at once: the workers keep going while the caller writes pages.
        args = ([store] * n, [outputs] * n, chunks, [verify] * n, [beside] * n)
        for chunk, part in zip(chunks, procs.map(_rebuild_many, *args), strict=True):
            for job, rb in zip(chunk, part, strict=True):
                yield replace(rb, job=job)


def worker_context() -> multiprocessing.context.ForkServerContext:
    """How reindex (and the site's rebuild) start worker processes: forkserver, since this process
    runs threads and forking a threaded process is unsafe. The server imports the engine once,
    before its first fork, so that each worker starts with it loaded instead of importing it (about
    half a second of CPU per worker here, on the two cores the workers share)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "provisioner.repo.engine"])  # (no effect once running)
    return ctx


def cpu_count() -> int:
    """The CPUs this process may run on (how many worker processes reindex and the site start)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reindex(
    writer: IndexWriter,
    *,
    verify: bool,
    workers: int,
    beside: Beside | None = None,
    rendered: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Reindexed:
    """See Repository.reindex. `rendered` hears what `beside` rendered of each group of projects
    once their pages are written (and their final states known), while the pass goes on;
    `progress` where the pass is: every LIST_TELL objects listed, then once listed and after each group."""
    store = writer.store
    store.check()
    result = ReindexResult(temporaries_removed=store.remove_stale_temporaries())
    tell = progress or (lambda _progress: None)
    by_project: dict[str, dict[str, ObjectInfo]] = {}
    listing = Listing(store, layout.SIMPLE + "/", tell)
    for info in listing:
        parts = info.name.split("/")
        if len(parts) != 3:
            continue
        by_project.setdefault(parts[1], {})[parts[2]] = info
    root, _gen = writer.read_root(repair=True)
    listed = {p for p in root.projects if layout.is_normalized(p)}
    candidates = sorted(set(by_project) | listed)
    if beside is not None:
        held = frozenset(
            p
            for p, objects in by_project.items()
            if layout.is_normalized(p)
            and any(layout.is_dist_filename(n) and n not in layout.PAGE_NAMES for n in objects)
        )
        beside = replace(beside, held=held)

    states: dict[str, ProjectState] = {}
    besides: dict[str, Any] = {}
    tell(Progress(listing.count, 0, len(candidates)))
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # Groups of projects come out of phase 1 as they are ready; writing a group's pages
        # overlaps rebuilding the next ones (in worker processes, when they run).
        for group in _rebuild_groups(writer, candidates, by_project, verify, workers, beside):
            for rb in group:
                result.hashed += rb.counts.hashed
                result.parsed += rb.counts.parsed
                result.reused += rb.counts.reused
                result.ignored += rb.counts.ignored
            todo = [rb for rb in group if rb.valid]
            # Missing metadata files (create-only; a publisher writing the same one meanwhile wins).
            meta_items = [item for rb in todo for item in rb.metadata]
            result.metadata_written += sum(1 for g in store.write_many(meta_items) if g)
            # 2. Project pages: JSON, then its derived outputs.
            now = _write_pages(writer, todo, pool, result)
            states.update(now)
            # What was rendered beside stands where the state it was rendered from is the final one.
            mine = {
                rb.job.project: rb.beside
                for rb in todo
                if rb.beside is not None and _same(now.get(rb.job.project), rb.final)
            }
            besides.update(mine)
            if rendered is not None and mine:
                rendered(mine)
            done += len(group)
            if group:
                tell(Progress(listing.count, done, len(candidates)))
    live = [project for project, state in states.items() if state.files]
    result.files = sum(len(states[p].files) for p in live)
    result.projects = len(live)

    live_set = set(live)

    def fix_root(current: RootState) -> RootState:
        # Keep projects created after our listing; drop the ones without a page.
        extra = {p for p in current.projects if p not in live_set and store.stat(layout.project_json(p))}
        return RootState.of(live_set | extra)

    if writer.update_root(fix_root, repair=True):
        result.pages_written += 1 + len(writer.outputs.root)
    else:
        now, _gen = writer.read_root(repair=True)
        stale = [
            out.object_name
            for out in writer.outputs.root
            if store.read(out.object_name)[0] != out.render(now)
        ]
        if stale:
            result.pages_written += writer.converge_root(stale)
    return Reindexed(result, states, besides, beside.held if beside is not None else frozenset())


def _same(a: ProjectState | None, b: ProjectState) -> bool:
    return a is b or a == b


def _rebuild_groups(
    writer: IndexWriter,
    candidates: list[str],
    by_project: dict[str, dict[str, ObjectInfo]],
    verify: bool,
    workers: int,
    beside: Beside | None,
) -> Iterator[list[Rebuilt]]:
    """Phase 1 of reindex: every project's entries from its stored objects, in groups of
    WRITE_GROUP projects as they are ready."""
    store, outputs = writer.store, writer.outputs
    valid: list[str] = []
    ignored: list[Rebuilt] = []
    for project in candidates:
        objects = by_project.get(project, {})
        if layout.is_normalized(project):
            valid.append(project)
        else:
            res = ReindexResult(ignored=[f"{layout.SIMPLE}/{project}/{n}" for n in objects])
            job = RebuildJob(project, objects, ProjectState(project), 0)
            ignored.append(Rebuilt(job, {}, [], res, None, b"", (), valid=False))
    yield ignored
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # A corrupt page reads as empty: the project is rebuilt from its objects.
        read = list(pool.map(lambda p: writer.read_project(p, repair=True), valid))
        # A remove killed before it deleted its files: finish it (then read the page again).
        for i, (p, (old, _gen)) in enumerate(zip(valid, read, strict=True)):
            if old.removing:
                finish_removals(writer, p, old.removing)
                read[i] = writer.read_project(p, repair=True)
        jobs = [
            RebuildJob(p, by_project.get(p, {}), old, gen) for p, (old, gen) in zip(valid, read, strict=True)
        ]
        # Files whose recorded entry does not stand by its fingerprint: these get parsed.
        unvouched = 0
        for job in jobs:
            recorded = job.old.by_filename()
            unvouched += sum(
                1
                for name, info in job.objects.items()
                if layout.is_dist_filename(name)
                and not _vouched(
                    recorded.get(name),
                    info,
                    f"{name}{layout.METADATA_SUFFIX}" in job.objects,
                    False,  # --verify alone rehashes, which threads do well; parsing is the cost
                )
            )
        group: list[Rebuilt] = []
        done = 0

        def add(out: Rebuilt) -> list[Rebuilt] | None:
            nonlocal group, done
            group.append(out)
            done += 1
            if len(group) < WRITE_GROUP:
                return None
            full, group = group, []
            return full

        work = unvouched
        if beside is not None:
            work += BESIDE_WORK * sum(1 for job in jobs if job.project not in beside.stored)
        # Parsing and rendering hold the GIL: with much of either, spread them over processes. The
        # directory store pickles as its path; a GCS client does not (and waits on the network).
        if work >= PROCESS_POOL_MIN and cpu_count() > 1 and isinstance(store, DirectoryStore):
            try:
                for out in _rebuild_in_processes(store, outputs, jobs, verify, beside):
                    if (full := add(out)) is not None:
                        yield full
            except (BrokenProcessPool, OSError, ValueError):
                pass  # e.g. no /dev/shm in a sandbox: the rest in threads, from where it stopped
        rest = jobs[done:]
        for out in pool.map(lambda job: rebuild(store, outputs, job, verify, beside), rest):
            if (full := add(out)) is not None:
                yield full
        yield group


def _write_pages(
    writer: IndexWriter, todo: list[Rebuilt], pool: ThreadPoolExecutor, result: ReindexResult
) -> dict[str, ProjectState]:
    """Write the project pages that changed, in two batches, and return every final state.

    The publish protocol, batched: each output's generation is known *before* the JSON is written
    (from the listing, which came before the project JSON was read); the JSON is written
    conditional on the generation read, then each output rendered from that very JSON, conditional
    on the output's generation. Whoever writes an output last therefore rendered the latest JSON (a
    writer in between, since the listing, makes our write fail). Anything that lost a race is redone
    through the one-by-one retry path.

    An unchanged project's outputs are compared with what the listing says of them: on GCS by the
    md5 it lists (no download: half of a warm reindex's requests); a directory reads them back.
    Equal at the listing, under a JSON read after it: what changes them later is a later writer's."""
    store = writer.store

    def listed(rb: Rebuilt, name: str) -> ObjectInfo | None:
        folder, _, base = name.rpartition("/")
        return rb.job.objects.get(base) if folder == f"{layout.SIMPLE}/{rb.job.project}" else store.stat(name)

    def prepare(rb: Rebuilt) -> tuple[Rebuilt, list[ObjectInfo | None]]:
        return rb, [listed(rb, name) for name in writer.outputs.project_names(rb.job.project)]

    states: dict[str, ProjectState] = {}
    json_items: list[WriteItem] = []
    output_items: list[WriteItem] = []
    output_after: list[int] = []
    batch: list[tuple[Rebuilt, ProjectState, list[int]]] = []  # with the indexes of its outputs
    retry: list[Rebuilt] = []  # JSON (and outputs) the one-by-one way
    converge: list[tuple[str, list[str] | None]] = []  # outputs the one-by-one way (None: all)
    for rb, now in pool.map(prepare, todo):
        project, new = rb.job.project, rb.new
        names = writer.outputs.project_names(project)
        if new is None or (not new.files and not rb.job.old_gen):
            states[project] = rb.final
            expected = rb.outputs or (b"",) * len(now)
            stale = [
                n
                for n, info, want in zip(names, now, expected, strict=True)
                if not (holds(store, info, want) if info is not None else not want)
            ]
            if stale:
                converge.append((project, stale))
        elif not new.files:
            retry.append(rb)  # every file gone: a delete, done one by one
        else:
            mine = []
            for name, data, info in zip(names, rb.outputs, now, strict=True):
                mine.append(len(output_items))
                output_items.append(WriteItem(name, data, info.generation if info is not None else 0))
                output_after.append(len(json_items))
            batch.append((rb, new, mine))
            json_items.append(WriteItem(layout.project_json(project), rb.json, rb.job.old_gen))
    # One batch: every JSON, and each output once its JSON is written.
    n = len(json_items)
    written = store.write_many(json_items + output_items, after=[None] * n + output_after)
    for k, (rb, new, mine) in enumerate(batch):
        if not written[k]:
            retry.append(rb)  # a publisher got there first: merge into what it wrote
            continue
        states[rb.job.project] = new
        result.pages_written += 1 + sum(1 for i in mine if written[n + i])
        lost = [output_items[i].name for i in mine if not written[n + i]]
        if lost:
            converge.append((rb.job.project, lost))  # a publisher rewrote an output meanwhile

    def one_by_one(rb: Rebuilt) -> tuple[str, ProjectState, int]:
        update = writer.update_project(
            rb.job.project,
            lambda current: merge(store, rb.job, rb.files, current, recheck=True),
            repair=True,
        )
        return rb.job.project, update.state, update.written

    for project, state, count in pool.map(one_by_one, retry):
        states[project] = state
        if count:
            result.pages_written += count  # the JSON, and its outputs converged by update_project
        else:
            converge.append((project, None))
    result.pages_written += sum(pool.map(lambda job: writer.converge_project(*job), converge))
    return states

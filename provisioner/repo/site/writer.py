"""I/O: write the site's pages into a Store, with the compare-and-swap of the index pages.

What is written (docs/architecture.md):

    ui/index.html              the list: every project, newest upload first
    ui/projects.json           the aggregate: one entry per project (the list's data, the search index)
    ui/<project>/index.html    a project page
    ui/site.css, ui/site.js    the static assets (shipped in provisioner/repo/site/static)

Nothing here is a source of truth. A project page is rendered from the project JSON and the core
metadata (`.metadata` file) of its latest release; the aggregate is a cache of one entry per project,
so that a publish rewrites the list without reading every project. The protocol is the index's: read
each page's generation, THEN the project JSON it is rendered from, and write conditional on that
generation; the aggregate is read-modify-written conditional on its generation, and the list page,
spliced with it, conditional on its own generation read before. A change of a project already listed
is written in the same `write_many` as its index pages (`stage`, the engine's `Spanning` hook); an
aggregate write that lost is redone, list and all. Whoever writes last therefore rendered the latest
state. `rebuild` (reindex) renders everything from the states given.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import cache
from importlib import resources

from provisioner.errors import ConflictError
from provisioner.repo import layout
from provisioner.repo.model import ProjectState, RootState
from provisioner.repo.pools import process_pool
from provisioner.repo.reindex import cpu_count, worker_context
from provisioner.repo.site import render
from provisioner.repo.store import PreconditionFailed, Store, WriteItem
from provisioner.repo.store.directory import DirectoryStore
from provisioner.repo.writer import Batch, backoff

MAX_ATTEMPTS = 60
REMOTE_IMAGES_NOTE = (
    b"README images from https URLs are shown on this site's pages: each reader's browser fetches them\n"
    b"from their hosts. Set by `provision reindex --site-remote-images`; removed (and the pages\n"
    b"rendered without them) by `provision reindex --no-site-remote-images`.\n"
)
State = ProjectState


# A publish's reads ahead (generations, list, aggregate), its README and the static assets at once.
AHEAD_THREADS = 3


def _ahead_renderer() -> ThreadPoolExecutor:
    """The site's threads, per process, started on the first publish: what it reads ahead (round
    trips on GCS, side by side) and renders ahead. A forked child gets a fresh pool: the parent's
    executor has no thread there, its work would wait forever."""
    return process_pool("pypapo-site", AHEAD_THREADS)


@cache
def asset_bytes(name: str) -> bytes:
    return resources.files("provisioner.repo.site").joinpath("static").joinpath(name).read_bytes()


@dataclass(frozen=True)
class Staged:
    """What a change of one project rewrites of the site, read before the state it is rendered
    from: the page's generation, the list and the aggregate (bytes and generation), the setting."""

    page_gen: int
    list_now: bytes
    list_gen: int
    agg_now: bytes
    agg_gen: int
    remote_images: bool


def origin(state: State) -> str:
    """Where a mirrored project came from (`provision mirror`), or ''."""
    return state.mirrored_from or ""


class Site:
    """The site of one repository."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # The repository's setting (`layout.UI_REMOTE_IMAGES`), read before each render: every
        # writer renders what the stored setting says, whatever its own flags.
        self.remote_images = False
        # Core metadata files are immutable: what a filename's metadata says never changes (per
        # setting of remote images).
        self._infos: dict[tuple[str, str, bool], render.ReleaseInfo] = {}
        # Release-info caches rendered here and not yet stored: object name -> (bytes, generation).
        self._pending: dict[str, tuple[bytes, int]] = {}
        # READMEs a publish is rendering ahead, while the index is written (`prepare`).
        # (project, filename) -> (sha256 of the metadata rendered, and `_Ahead`: its ReleaseInfo,
        # the setting it was rendered by, the generation to write its cache against).
        self._ahead: dict[tuple[str, str], tuple[str, Future[_Ahead]]] = {}
        # The static assets, checked in that thread too during a publish (None: not yet).
        self._assets_checked: Future[int] | None = None
        # What a publish's change will be written against, read in that thread too (by project).
        self._staged: dict[str, Future[Staged]] = {}
        self._pid = os.getpid()  # the process whose thread those futures run in

    # -- reading ------------------------------------------------------------------------------
    def _gen(self, name: str) -> int:
        info = self.store.stat(name)
        return info.generation if info else 0

    def _state(self, project: str) -> State:
        data, _gen = self.store.read(layout.project_json(project))
        try:
            return ProjectState.from_json(data, project)
        except (ValueError, KeyError, TypeError, AttributeError):
            return ProjectState(project)  # the engine refuses a corrupt page; reindex repairs it

    def info(self, state: State, known: Mapping[str, bytes] | None = None) -> render.ReleaseInfo:
        """The release info a project's page shows, from its chosen `.metadata` file (or `known`)."""
        entry = render.metadata_source(state)
        if entry is None or entry.metadata_sha256 is None:
            return render.ReleaseInfo()
        key = (state.name, entry.filename, self.remote_images)
        if key in self._infos:
            return self._infos[key]
        data = (known or {}).get(entry.filename)
        cache_name = layout.ui_release(state.name, entry.filename)
        sha, ahead = self._ahead.pop(key[:2], ("", None))
        if ahead is not None and sha == entry.metadata_sha256:
            info, remote_images, cache_gen = ahead.result()
            if remote_images == self.remote_images:  # rendered from these very bytes, by this setting
                self._infos[key] = info
                if cache_gen is not None:
                    self._pending[cache_name] = (render.dumps_info(info, sha, remote_images), cache_gen)
                return info
        if data is None:
            cached, gen = self.store.read(cache_name)
            info = render.loads_info(cached, entry.metadata_sha256, self.remote_images) if gen else None
            if info is not None:
                self._infos[key] = info
                return info
            data, _ = self.store.read(layout.metadata_object(state.name, entry.filename))
            info = render.release_info(data, remote_images=self.remote_images)
        else:
            gen = self._gen(cache_name)
            info = render.release_info(data, remote_images=self.remote_images)
        self._infos[key] = info
        self._pending[cache_name] = (render.dumps_info(info, entry.metadata_sha256, self.remote_images), gen)
        return info

    def _take_pending(self) -> list[WriteItem]:
        """The release-info caches to store (each conditional on the generation it was read at;
        losing that race only means another writer stored the same cache)."""
        items = [(name, data, gen) for name, (data, gen) in self._pending.items()]
        self._pending.clear()
        return items

    def _entries(self) -> tuple[dict[str, render.ListEntry], int, bool]:
        data, gen = self.store.read(layout.UI_DATA)
        entries, ok = self._parse_entries(data)
        return entries, gen, ok

    @staticmethod
    def _parse_entries(data: bytes) -> tuple[dict[str, render.ListEntry], bool]:
        try:
            return render.loads_aggregate(data), True
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}, False

    # -- the setting ----------------------------------------------------------------------------
    def read_setting(self) -> bool:
        """Whether README images from https URLs are shown (the stored setting; remembered)."""
        self.remote_images = self._gen(layout.UI_REMOTE_IMAGES) != 0
        return self.remote_images

    def set_remote_images(self, on: bool) -> bool:
        """Store the setting (a `rebuild` then renders every page by it); True if it changed.
        nginx follows the object too: its policy for /ui/ allows https images while it exists."""
        for attempt in range(MAX_ATTEMPTS):
            _data, gen = self.store.read(layout.UI_REMOTE_IMAGES)
            if bool(gen) == on:
                return False
            try:
                if on:
                    self.store.write(layout.UI_REMOTE_IMAGES, REMOTE_IMAGES_NOTE, if_generation_match=0)
                else:
                    self.store.delete(layout.UI_REMOTE_IMAGES, if_generation_match=gen)
                return True
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(
            f"gave up writing {layout.UI_REMOTE_IMAGES} after {MAX_ATTEMPTS} conflicting writes"
        )

    # -- the static assets ----------------------------------------------------------------------
    def ensure_assets(self) -> int:
        """Write site.css and site.js where they differ from this version's; the number written."""
        written = 0
        for name in layout.UI_ASSETS:
            want = asset_bytes(name)
            for attempt in range(MAX_ATTEMPTS):
                have, gen = self.store.read(layout.ui_asset(name))
                if have == want:
                    break
                try:
                    self.store.write(layout.ui_asset(name), want, if_generation_match=gen)
                    written += 1
                    break
                except PreconditionFailed:
                    backoff(attempt)
        return written

    # -- before and after a change ----------------------------------------------------------------
    def prepare(self, project: str, known: Mapping[str, bytes]) -> None:
        """The engine's hook (`Spanning.prepare`): a publish is about to add these files.
        The README its page will show is rendered in a thread while the index is written (that
        mostly waits on the disk or the network), and what the site's writes will be compared
        against is read there too, so that the site adds no round trip of its own after the index."""
        self._forget_other_process()
        ahead = _ahead_renderer()
        # The generations the change will be written against, and what it splices: read now, so
        # that no read is left between the index's JSON and the batch that writes the site with it.
        self._staged[project] = ahead.submit(self._read_staged, project)
        chosen = render.likely_source(known)
        if chosen is not None and (project, chosen, self.remote_images) not in self._infos:
            data = known[chosen]
            sha = hashlib.sha256(data).hexdigest()
            self._ahead[(project, chosen)] = (
                sha,
                ahead.submit(_render_ahead, self.store, project, chosen, data, sha),
            )
        if self._assets_checked is None:
            self._assets_checked = ahead.submit(self.ensure_assets)

    def _forget_other_process(self) -> None:
        """A Site inherited through fork: its futures run in the parent's thread, never here."""
        if self._pid != os.getpid():
            self._pid, self._ahead, self._assets_checked, self._staged = os.getpid(), {}, None, {}

    def _read_staged(self, project: str) -> Staged:
        page_gen = self._gen(layout.ui_project(project))
        list_now, list_gen = self.store.read(layout.UI_LIST)
        agg_now, agg_gen = self.store.read(layout.UI_DATA)
        remote_images = self._gen(layout.UI_REMOTE_IMAGES) != 0  # after the generations, as the state
        return Staged(page_gen, list_now, list_gen, agg_now, agg_gen, remote_images)

    def _check_assets(self) -> None:
        """A newer pypapo's stylesheet and script go with its pages."""
        if self._assets_checked is None:
            self.ensure_assets()
        else:
            self._assets_checked.result()  # checked while the index was written (its errors here)

    def stage(self, project: str) -> Callable[[State, Mapping[str, bytes]], Batch | None]:
        """The engine's hook (`IndexWriter`, `Spanning`): `project`'s JSON just changed. The
        generations its page, the aggregate and the list are written against are read now (or were,
        during a publish, in `prepare`); the function returned renders them from the state the
        engine reads after, for the batch that writes the project's index pages."""
        self._forget_other_process()
        future = self._staged.pop(project, None)
        staged = future.result() if future is not None else self._read_staged(project)
        return lambda state, known: self._batch(staged, state, known)

    def _batch(self, staged: Staged, state: State, known: Mapping[str, bytes]) -> Batch | None:
        """The page, the spliced aggregate and list (and release-info caches) of a project already
        listed that still has files; None for anything else (`update` then takes it)."""
        if not (staged.list_gen and staged.agg_gen and state.files):
            return None
        self.remote_images = staged.remote_images
        self._check_assets()
        info = self.info(state, known)
        entry = render.list_entry(state, info)
        aggregate = render.splice_aggregate(staged.agg_now, entry)
        listing = render.splice_list(staged.list_now, entry)
        if aggregate is None or listing is None:
            return None  # `update` takes it (and the release-info caches pending)
        held = render.held_among(aggregate, render.dependency_names(info))
        page = render.render_project(state, info, held, origin=origin(state))
        items = [
            WriteItem(layout.UI_DATA, aggregate, staged.agg_gen),
            WriteItem(layout.UI_LIST, listing, staged.list_gen),
            WriteItem(layout.ui_project(state.name), page, staged.page_gen),
            *self._take_pending(),
        ]

        def commit(results: list[int]) -> None:
            if not results[0]:
                # Another writer changed the aggregate: redo from its version (the list too, which
                # did not wait for the aggregate's write: on GCS that would be one more round trip).
                self.update([state.name], known)
                return
            if not results[1]:
                self._converge_list()
            if not results[2]:
                self._converge_page(state.name, known)

        return Batch(items, [None] * len(items), commit)

    def update(self, projects: Iterable[str], known: Mapping[str, bytes] | None = None) -> None:
        """The pages of `projects` (whose JSON just changed), the aggregate and the list.

        `known`: core metadata already in memory (a publish), by filename, to save reading it back."""
        projects = sorted(set(projects))
        if not projects:
            return
        self._forget_other_process()
        for attempt in range(MAX_ATTEMPTS):
            list_now, list_gen = self.store.read(layout.UI_LIST)
            page_gens = {p: self._gen(layout.ui_project(p)) for p in projects}
            self.read_setting()  # after the pages' generations, as the state is
            agg_now, agg_gen = self.store.read(layout.UI_DATA)
            if list_gen and agg_gen:
                spliced = self._splice(projects, list_now, agg_now, known, attempt)
                if spliced is not None:
                    states, infos, held, aggregate, listing = spliced
                    items: list[WriteItem] = [
                        (layout.UI_DATA, aggregate, agg_gen),
                        (layout.UI_LIST, listing, list_gen),
                    ]
                    if self._write(items, projects, states, infos, held, page_gens, known):
                        return
                    backoff(attempt)  # another writer changed the aggregate: redo from its version
                    continue
            entries, ok = self._parse_entries(agg_now)
            if not (ok and list_gen and agg_gen):
                # No site yet (a repository from before it) or a broken aggregate: one full build.
                self.rebuild()
                return
            states = {p: self._state(p) for p in projects}
            infos = {p: self.info(s, known) for p, s in states.items() if s.files}
            for p, s in states.items():
                if s.files:
                    entries[p] = render.list_entry(s, infos[p])
                else:
                    entries.pop(p, None)
            items = [
                (layout.UI_DATA, render.dumps_aggregate(entries), agg_gen),
                (layout.UI_LIST, render.render_list(entries.values()), list_gen),
            ]
            if self._write(items, projects, states, infos, set(entries), page_gens, known):
                return
            backoff(attempt)  # another writer changed the aggregate: redo from its version
        raise ConflictError(f"gave up updating {layout.UI_DATA} after {MAX_ATTEMPTS} conflicting writes")

    def _splice(
        self,
        projects: list[str],
        list_now: bytes,
        agg_now: bytes,
        known: Mapping[str, bytes] | None,
        attempt: int,
    ) -> tuple[dict[str, State], dict[str, render.ReleaseInfo], set[str], bytes, bytes] | None:
        """The common case without parsing or rendering every project: each changed project is
        already on the list and still has files, so its line of the aggregate and its row of the
        list are replaced in place (the same bytes as a full render). None: take the full path."""
        if attempt == 0:
            self._check_assets()
        states = {p: self._state(p) for p in projects}
        if not all(s.files for s in states.values()):
            return None
        infos = {p: self.info(s, known) for p, s in states.items()}
        aggregate: bytes | None = agg_now
        listing: bytes | None = list_now
        for p, s in states.items():
            entry = render.list_entry(s, infos[p])
            aggregate = render.splice_aggregate(aggregate, entry) if aggregate is not None else None
            listing = render.splice_list(listing, entry) if listing is not None else None
        if aggregate is None or listing is None:
            return None
        # Only the dependencies' names are looked up: a page links the ones the repository holds.
        wanted = set().union(*(render.dependency_names(i) for i in infos.values()))
        return states, infos, render.held_among(aggregate, wanted), aggregate, listing

    def _write(
        self,
        items: list[WriteItem],
        projects: list[str],
        states: Mapping[str, State],
        infos: Mapping[str, render.ReleaseInfo],
        held: set[str],
        page_gens: Mapping[str, int],
        known: Mapping[str, bytes] | None,
    ) -> bool:
        """Write the aggregate and list `items`, then the pages; False when the aggregate's write
        lost (redo from its new version). A lost list or page converges from the current state."""
        after: list[int | None] = [None, 0]
        for p, s in states.items():
            if s.files:
                page = render.render_project(s, infos[p], held, origin=origin(s))
                items.append((layout.ui_project(p), page, page_gens[p]))
                after.append(None)
        caches = self._take_pending()  # after the pages: their positions stay as computed
        written = self.store.write_many(items + caches, after=after + [None] * len(caches))
        if not written[0]:
            return False
        if not written[1]:
            self._converge_list()
        pending = [p for p in projects if not states[p].files or not written[2 + self._position(states, p)]]
        for p in pending:
            self._converge_page(p, known)
        return True

    @staticmethod
    def _position(states: Mapping[str, State], project: str) -> int:
        """Index of a project's page among the written pages (those with files, in order)."""
        return [p for p, s in states.items() if s.files].index(project)

    def _converge_list(self) -> None:
        for attempt in range(MAX_ATTEMPTS):
            gen = self._gen(layout.UI_LIST)
            entries, _agg_gen, _ok = self._entries()
            try:
                page = render.render_list(entries.values())
                self.store.write(layout.UI_LIST, page, if_generation_match=gen)
                return
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(f"gave up writing {layout.UI_LIST} after {MAX_ATTEMPTS} conflicting writes")

    def _converge_page(self, project: str, known: Mapping[str, bytes] | None = None) -> None:
        name = layout.ui_project(project)
        for attempt in range(MAX_ATTEMPTS):
            gen = self._gen(name)
            self.read_setting()
            state = self._state(project)
            try:
                if not state.files:
                    if gen:
                        self.store.delete(name, if_generation_match=gen)
                    return
                held = set(self._entries()[0])
                page = render.render_project(state, self.info(state, known), held, origin=origin(state))
                self.store.write(name, page, if_generation_match=gen)
                if caches := self._take_pending():
                    self.store.write_many(caches)
                return
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(f"gave up writing {name} after {MAX_ATTEMPTS} conflicting writes; retry")

    # -- everything (reindex) -------------------------------------------------------------------
    def rebuild(self, *, workers: int = 8) -> int:
        """Every page from every project's current JSON, pages that are gone deleted, unchanged
        pages left alone. Same protocol: every generation is read before the JSON it is rendered
        from. Returns the number of objects written or deleted."""
        written = self.ensure_assets()
        self._infos.clear()  # a rebuild checks every stored release-info cache too
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # 1. Generations (and bytes, to skip unchanged pages) of what exists, before any JSON.
            listing = [info.name for info in self.store.list(f"{layout.UI}/") if info.name.count("/") == 2]
            existing = sorted(n.split("/")[1] for n in listing if n.endswith("/index.html"))
            cached = {n for n in listing if n.endswith(".json")}
            read = pool.map(lambda p: self.store.read(layout.ui_project(p)), existing)
            pages = dict(zip(existing, read, strict=True))
            list_now, list_gen = self.store.read(layout.UI_LIST)
            agg_now, agg_gen = self.store.read(layout.UI_DATA)
            self.read_setting()
            # 2. The states, then what the pages show (READMEs rendered where no cache has them).
            states = self._read_states(pool)
            # Written in batches as they are rendered: the disk (or the network) works while the
            # worker processes render the next projects.
            entries: dict[str, render.ListEntry] = {}
            items: list[WriteItem] = []  # every page written, in the order of `results`
            results: list[int] = []
            batch_pages: list[WriteItem] = []
            batch_caches: list[WriteItem] = []
            flushed: list[tuple[int, Future[list[int]]]] = []
            with ThreadPoolExecutor(max_workers=1) as background:
                for project, entry, body, pending in self._render_all(states, pool):
                    entries[project] = entry
                    batch_caches += pending
                    have, gen = pages.get(project, (b"", 0))
                    if have != body:
                        items.append((layout.ui_project(project), body, gen))
                        batch_pages.append(items[-1])
                    if len(batch_pages) + len(batch_caches) >= WRITE_BATCH:
                        job = background.submit(self.store.write_many, batch_pages + batch_caches)
                        flushed.append((len(batch_pages), job))
                        batch_pages, batch_caches = [], []
                if batch_pages or batch_caches:
                    job = background.submit(self.store.write_many, batch_pages + batch_caches)
                    flushed.append((len(batch_pages), job))
            for n_pages, job in flushed:
                out = job.result()
                written += sum(1 for r in out if r)
                results += out[:n_pages]
            # Release-info caches of files (or projects) that are gone.
            live = {layout.ui_release(p, f.filename) for p, s in states.items() for f in s.files}
            for name in sorted(cached - live):
                self.store.delete(name)
                written += 1
            # Lost to a publisher (it rewrote the page meanwhile), or a project that is gone.
            redo = [name.split("/")[1] for (name, _b, _g), ok in zip(items, results, strict=True) if not ok]
            redo += [p for p in existing if p not in states]
            written += len(redo)
            list(pool.map(self._converge_page, redo))
            # 3. The aggregate and the list, conditional on the generations read in step 1.
            for attempt in range(MAX_ATTEMPTS):
                agg, listing = render.dumps_aggregate(entries), render.render_list(entries.values())
                if agg == agg_now and listing == list_now:
                    return written
                out = self.store.write_many(
                    [(layout.UI_DATA, agg, agg_gen), (layout.UI_LIST, listing, list_gen)], after=[None, 0]
                )
                if out[0]:
                    written += 1 + (1 if out[1] else 0)
                    if not out[1]:
                        self._converge_list()
                    return written
                backoff(attempt)  # a publisher updated the aggregate: read everything again
                list_now, list_gen = self.store.read(layout.UI_LIST)
                agg_now, agg_gen = self.store.read(layout.UI_DATA)
                states = self._read_states(pool)
                entries = {p: render.list_entry(s, self.info(s)) for p, s in states.items()}
        raise ConflictError(f"gave up writing {layout.UI_DATA} after {MAX_ATTEMPTS} conflicting writes")

    def _render_all(self, states: Mapping[str, State], pool: ThreadPoolExecutor) -> Iterator[_Rendered]:
        """Every project's list entry, page and release-info caches to store. Rendering holds the
        GIL (~1 ms a README): for many projects on a directory store, one worker process per CPU."""
        held = frozenset(states)
        todo = [states[p] for p in sorted(states)]
        chunks = [todo[i : i + RENDER_CHUNK] for i in range(0, len(todo), RENDER_CHUNK)]
        args = (self.store, self.remote_images, held)
        if len(todo) >= PROCESS_MIN and cpu_count() > 1 and isinstance(self.store, DirectoryStore):
            try:
                # Reindex's forkserver (the engine imported once), or started here with that preload.
                with ProcessPoolExecutor(max_workers=cpu_count(), mp_context=worker_context()) as procs:
                    n = len(chunks)
                    # Each chunk as soon as it is done (in order): the caller writes meanwhile.
                    for part in procs.map(_render_chunk, *([a] * n for a in args), chunks):
                        chunks = chunks[1:]
                        yield from part
                return
            except (BrokenProcessPool, OSError, ValueError):
                pass  # e.g. no /dev/shm in a sandbox: the same work (what is left of it) in threads
        for part in pool.map(lambda c: _render_chunk(*args, c), chunks):
            yield from part

    def _read_states(self, pool: ThreadPoolExecutor) -> dict[str, State]:
        """Every listed project with files, from its JSON."""
        data, _ = self.store.read(layout.ROOT_JSON)
        try:
            names = sorted(set(RootState.from_json(data).projects))
        except (ValueError, KeyError, TypeError, AttributeError):
            names = []
        return {p: s for p, s in zip(names, pool.map(self._state, names), strict=True) if s.files}


_Ahead = tuple[render.ReleaseInfo, bool, int | None]


def _render_ahead(store: Store, project: str, filename: str, data: bytes, sha: str) -> _Ahead:
    """A release's info, the setting it was rendered by (read here: not a round trip of the
    publish's), and the generation of its cache to write it against (None: the cache already holds
    it). The cache goes in the batch of the page (one durable round): a write of its own here
    would wait on the disk beside the index's and slow them down."""
    remote_images = store.stat(layout.UI_REMOTE_IMAGES) is not None
    info = render.release_info(data, remote_images=remote_images)
    cached, gen = store.read(layout.ui_release(project, filename))
    if gen and render.loads_info(cached, sha, remote_images) == info:
        return info, remote_images, None
    return info, remote_images, gen


_Rendered = tuple[str, render.ListEntry, bytes, list[WriteItem]]
# Rebuild renders in worker processes from this many projects on (fewer: starting them costs more),
# in chunks of RENDER_CHUNK projects.
PROCESS_MIN = 300
RENDER_CHUNK = 50
# Pages and release-info caches per `write_many` of a rebuild (written while the next are rendered).
WRITE_BATCH = 400


def _render_chunk(
    store: Store, remote_images: bool, held: frozenset[str], states: list[State]
) -> list[_Rendered]:
    """Module-level, so that it runs in a worker process: a Site of its own reads and renders."""
    site = Site(store)
    site.remote_images = remote_images  # what the rebuild read, after the generations
    out = []
    for state in states:
        info = site.info(state)
        page = render.render_project(state, info, held, origin=origin(state))
        out.append((state.name, render.list_entry(state, info), page, site._take_pending()))
    return out

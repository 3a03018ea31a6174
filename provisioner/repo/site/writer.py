"""I/O: write the site's pages into a Store, with the compare-and-swap of the index pages.

What is written (docs/architecture.md):

    ui/index.html.gz           the list's head: its newest rows (and the keys its older pages are cut at)
    ui/older-<s>.html.gz       the list's older pages (paging.py), each linked to the next
    ui/search-<k>.json.gz      the aggregate in 16 shards by name: the list's data, the search index
    ui/<project>/index.html.gz a project page
    ui/site.css, ui/site.js    the static assets (shipped in provisioner/repo/site/static)

The pages are stored gzip'd; the Site reads and writes them through `packed.PackedStore`, so that
everything here is the plain bytes served (the one exception: the batch handed to the engine,
which writes to the store underneath, goes through `packed.stored`).

Nothing here is a source of truth. A project page is rendered from the project JSON and the core
metadata (`.metadata` file) of its latest release; a shard is a cache of one entry per project, so
that a publish places one row on the list without reading every project. The protocol is the
index's: read each page's generation, THEN the project JSON it is rendered from, and write
conditional on that generation; a shard is read-modify-written conditional on its generation, and
the list pages its row leaves and joins conditional on theirs, read before. A change of a project
is written in the same `write_many` as its index pages (`stage`, the engine's `Spanning` hook): its
page, its shard, the head (and the older page its row left). A shard write that lost is redone
(`update`); a list page that lost is placed again from the shard's entry (`_place`); a seal of the
head, a project gone, a new shard layout take `update`. Whoever writes last therefore rendered the
latest state. `rebuild` (reindex) renders everything from the states given and cuts the list anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import resources

from provisioner.errors import ConflictError
from provisioner.repo import layout
from provisioner.repo.model import ProjectState, RootState
from provisioner.repo.pools import process_pool
from provisioner.repo.reindex import Beside, Reindexed, cpu_count, worker_context
from provisioner.repo.site import packed, paging, render
from provisioner.repo.store import ObjectInfo, PreconditionFailed, Store, WriteItem, holds
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


def _ahead_writer() -> ThreadPoolExecutor:
    """The thread that writes a reindex's site pages while its pass goes on (per process)."""
    return process_pool("pypapo-site-writes", 1)


def _ahead_renderer() -> ThreadPoolExecutor:
    """The site's threads, per process, started on the first publish: what it reads ahead (round
    trips on GCS, side by side) and renders ahead. A forked child gets a fresh pool: the parent's
    executor has no thread there, its work would wait forever."""
    return process_pool("pypapo-site", AHEAD_THREADS)


@cache
def asset_bytes(name: str) -> bytes:
    return resources.files("provisioner.repo.site").joinpath("static").joinpath(name).read_bytes()


@dataclass(frozen=True)
class StoredPage:
    """A project page as a rebuild found it, to compare a rendered page with: its generation, and
    its bytes as read or, on a store whose listing gives each object's md5 (GCS), the listing's word
    (a warm reindex of 2,000 projects: 2,000 downloads fewer)."""

    generation: int
    data: bytes | None = None  # None: not read; `listed` decides
    listed: ObjectInfo | None = None

    def shows(self, view: packed.PackedStore, body: bytes) -> bool:
        """Whether the page stored is `body` (`view`: the site's, which packs pages)."""
        if self.listed is None:
            return self.data == body
        # The gzip is deterministic: the same page is the same object bytes, and the same md5.
        return holds(view.inner, self.listed, packed.pack(body))


_ABSENT = StoredPage(0, b"")


@dataclass(frozen=True)
class RebuildStart:
    """What a rebuild reads before any project JSON: the pages that exist (`StoredPage`), the
    release-info caches listed, the list's objects (`_read_lists`), then the setting."""

    existing: list[str]
    cached: set[str]
    pages: dict[str, StoredPage]
    lists: dict[str, tuple[bytes, int]]
    remote_images: bool
    # The plain pages of the version before (`layout.is_unpacked_page`): deleted once the list is written.
    unpacked: list[str]
    # Pages and caches a reindex's pass rendered, written while it goes on (`write_ahead`).
    ahead: list[tuple[list[WriteItem], Future[list[int]]]] = field(default_factory=list)


@dataclass(frozen=True)
class Staged:
    """What a change of one project rewrites of the site, read before the state it is rendered
    from: the page's generation, the project's shard (parsed in the read-ahead thread: None when
    missing or not one) and the list pages its row is on or joins (bytes and generation), the
    setting."""

    page_gen: int
    shard: dict[str, render.ListEntry] | None
    shard_gen: int
    pages: dict[str, tuple[bytes, int]]  # list page id -> (bytes, generation)
    remote_images: bool


def origin(state: State) -> str:
    """Where a mirrored project came from (`provision mirror`), or ''."""
    return state.mirrored_from or ""


class Site:
    """The site of one repository."""

    def __init__(self, store: Store) -> None:
        self.store = packed.packed(store)
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
        # Whether a dependency is held (its project JSON exists), stat'ed ahead in that thread.
        self._held_ahead: dict[str, bool] = {}
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

    def info(
        self, state: State, known: Mapping[str, bytes] | None = None, *, cache_first: bool = False
    ) -> render.ReleaseInfo:
        """The release info a project's page shows, from its chosen `.metadata` file (or `known`,
        the bytes of that file in memory: a publish's new file, or with `cache_first` a reindex's,
        whose cache may hold it already)."""
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
        if data is None or cache_first:
            cached, gen = self.store.read(cache_name)
            info = render.loads_info(cached, entry.metadata_sha256, self.remote_images) if gen else None
            if info is not None:
                self._infos[key] = info
                return info
            if data is None:
                data, _ = self.store.read(layout.metadata_object(state.name, entry.filename))
        else:
            gen = self._gen(cache_name)
        info = render.release_info(data, remote_images=self.remote_images)
        self._infos[key] = info
        self._pending[cache_name] = (render.dumps_info(info, entry.metadata_sha256, self.remote_images), gen)
        return info

    def _take_pending(self) -> list[WriteItem]:
        """The release-info caches to store (each conditional on the generation it was read at;
        losing that race only means another writer stored the same cache). Not `durable`: every
        reader checks one against its stamps and renders the README again when it is torn, so a
        directory writes them without fsync (2,000 fewer in a reindex of 2,000 projects)."""
        items = [WriteItem(name, data, gen, durable=False) for name, (data, gen) in self._pending.items()]
        self._pending.clear()
        return items

    def _held(self, info: render.ReleaseInfo) -> set[str]:
        """Which of a release's dependencies the repository holds (its page links them): a stat
        of each one's project JSON (what the site is rendered from), not a read of the whole list."""
        names = render.dependency_names(info)
        cached = {n for n in names if n in self._held_ahead}
        out = {n for n in cached if self._held_ahead[n]}
        todo = sorted(names - cached)
        stats = self.store.together([partial(self.store.stat, layout.project_json(n)) for n in todo])
        return out | {n for n, st in zip(todo, stats, strict=True) if st is not None}

    def _shard(self, k: int) -> tuple[dict[str, render.ListEntry] | None, int]:
        """Shard `k`'s entries (None: missing or not one: a rebuild makes it) and generation."""
        data, gen = self.store.read(layout.ui_shard(k))
        return (self._parse_shard(data) if gen else None), gen

    @staticmethod
    def _parse_shard(data: bytes) -> dict[str, render.ListEntry] | None:
        try:
            return render.loads_aggregate(data) if data else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

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
        """Write the static assets where they differ from this version's; the number written.
        Stated side by side (one round on GCS; the md5 tells, so nothing is downloaded), the stale
        ones written in one batch, each conditional on the generation stated; one that lost to
        another writer is stated again and compared."""
        want = {layout.ui_asset(name): asset_bytes(name) for name in layout.UI_ASSETS}
        todo = list(want)
        written = 0
        for attempt in range(MAX_ATTEMPTS):
            have = self.store.together([partial(self._holds_asset, name, want[name]) for name in todo])
            stale = [
                WriteItem(name, want[name], gen)
                for name, (same, gen) in zip(todo, have, strict=True)
                if not same
            ]
            results = self.store.write_many(stale) if stale else []
            written += sum(1 for gen in results if gen)
            todo = [item.name for item, gen in zip(stale, results, strict=True) if not gen]
            if not todo:
                break
            backoff(attempt)
        return written

    def _holds_asset(self, name: str, data: bytes) -> tuple[bool, int]:
        info = self.store.stat(name)
        return holds(self.store, info, data), info.generation if info else 0

    # -- before and after a change ----------------------------------------------------------------
    def prepare(self, project: str, known: Mapping[str, bytes]) -> None:
        """The engine's hook (`Spanning.prepare`): a publish is about to add these files.
        The README its page will show is rendered in a thread while the index is written (that
        mostly waits on the disk or the network), and what the site's writes will be compared
        against is read there too, so that the site adds no round trip of its own after the index."""
        self._forget_other_process()
        self._held_ahead.clear()
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
                ahead.submit(_render_ahead, self.store, project, chosen, data, sha, self._held_ahead),
            )
        if self._assets_checked is None:
            self._assets_checked = ahead.submit(self.ensure_assets)

    def forget(self, project: str) -> None:
        """The engine's hook (`Spanning.forget`): the publish `prepare` was told of adds nothing to
        `project` after all (its files were there): drop what was read ahead, which would go stale."""
        self._forget_other_process()
        self._staged.pop(project, None)
        for key in [key for key in self._ahead if key[0] == project]:
            del self._ahead[key]

    def _forget_other_process(self) -> None:
        """A Site inherited through fork: its futures run in the parent's thread, never here."""
        if self._pid != os.getpid():
            self._pid, self._ahead, self._assets_checked, self._staged = os.getpid(), {}, None, {}

    def _read_staged(self, project: str) -> Staged:
        """Two rounds of reads side by side: what is compared-and-swapped against (the page's
        generation, the shard, the head), then what depends on them (the older page the row is on)
        with the setting, read after the generations as the state is."""
        page_gen, (shard_now, shard_gen), head = self.store.together(
            [
                partial(self._gen, layout.ui_project(project)),
                partial(self.store.read, layout.ui_shard(paging.shard_of(project))),
                partial(self.store.read, layout.UI_LIST),
            ],
        )
        # The page the project's row is on now (a publish moves it to the head; a yank keeps it).
        shard = self._parse_shard(shard_now) if shard_gen else None
        old = (shard or {}).get(project)
        cut = paging.head_layout(head[0]) if head[1] else None
        older: list[str] = []
        if cut is not None:
            older = sorted(
                paging.needed(cut, [paging.Change(project, old, None)], links=False) - {paging.HEAD}
            )
        setting, *read = self.store.together(
            [
                partial(self._gen, layout.UI_REMOTE_IMAGES),
                *(partial(self.store.read, layout.ui_page(p)) for p in older),
            ],
        )
        pages = {paging.HEAD: head, **dict(zip(older, read, strict=True))}
        return Staged(page_gen, shard, shard_gen, pages, setting != 0)

    def _check_assets(self) -> None:
        """A newer pypapo's stylesheet and script go with its pages."""
        if self._assets_checked is None:
            self.ensure_assets()
        else:
            self._assets_checked.result()  # checked while the index was written (its errors here)

    def stage(self, project: str) -> Callable[[State, Mapping[str, bytes]], Batch | None]:
        """The engine's hook (`IndexWriter`, `Spanning`): `project`'s JSON is about to change. The
        generations its page, the aggregate and the list are written against are read now (or were,
        during a publish, in `prepare`), before that write; the function returned renders them from
        the state the engine wrote, for the batch that writes the project's index pages."""
        self._forget_other_process()
        future = self._staged.pop(project, None)
        staged = future.result() if future is not None else self._read_staged(project)
        return lambda state, known: self._batch(staged, state, known)

    def _batch(self, staged: Staged, state: State, known: Mapping[str, bytes]) -> Batch | None:
        """The page, the shard and the list pages (and release-info caches) of a project that still
        has files, when its row moves without sealing the head; None for anything else (`update`
        then takes it)."""
        entries = dict(staged.shard) if staged.shard is not None else None
        if entries is None or not state.files:
            return None
        self.remote_images = staged.remote_images
        self._check_assets()
        info = self.info(state, known)
        entry = render.list_entry(state, info)
        old = entries.get(state.name)
        plan = paging.apply(
            {s: b for s, (b, _g) in staged.pages.items()},
            [paging.Change(state.name, old, entry)],
            links=False,
        )
        if not isinstance(plan, paging.Plan) or plan.sealed:
            return None  # a seal (a second write round), a page not read, a page not in form
        entries[state.name] = entry
        shard = layout.ui_shard(paging.shard_of(state.name))
        written = sorted(plan.pages)
        page = render.render_project(state, info, self._held(info), origin=origin(state))
        items = [
            WriteItem(shard, render.dumps_aggregate(entries), staged.shard_gen),
            *(WriteItem(layout.ui_page(s), plan.pages[s], staged.pages[s][1]) for s in written),
            WriteItem(layout.ui_project(state.name), page, staged.page_gen),
            *self._take_pending(),
        ]

        def commit(results: list[int]) -> None:
            if not results[0]:
                # Another writer changed the shard: redo from its version (the list pages too,
                # which did not wait for the shard's write: on GCS that would be one more round trip).
                self.update([state.name], known, olds={state.name: old})
                return
            if not all(results[1 : 1 + len(written)]):
                self._place({state.name: old})  # another writer changed a list page: place the row again
            if not results[1 + len(written)]:
                self._converge_page(state.name, known)

        return Batch([packed.stored(item) for item in items], [None] * len(items), commit)

    def update(
        self,
        projects: Iterable[str],
        known: Mapping[str, bytes] | None = None,
        *,
        olds: Mapping[str, render.ListEntry | None] | None = None,
    ) -> None:
        """The pages of `projects` (whose JSON just changed), their shards and the list.

        `known`: core metadata already in memory (a publish), by filename, to save reading it back.
        `olds`: where their rows were before (an earlier attempt's read of the shards)."""
        projects = sorted(set(projects))
        if not projects:
            return
        self._forget_other_process()
        self._held_ahead.clear()
        before: dict[str, render.ListEntry | None] = dict(olds or {})
        for attempt in range(MAX_ATTEMPTS):
            # The generations side by side (one round on GCS), then the setting and the states.
            ks = sorted({paging.shard_of(p) for p in projects})
            list_gen, *read = self.store.together(
                [
                    partial(self._gen, layout.UI_LIST),
                    *(partial(self._gen, layout.ui_project(p)) for p in projects),
                    *(partial(self._shard, k) for k in ks),
                ],
            )
            page_gens = dict(zip(projects, read[: len(projects)], strict=True))
            shards = dict(zip(ks, read[len(projects) :], strict=True))
            if not list_gen or any(e is None for e, _g in shards.values()):
                # No site yet (a repository from before it, or from before the shards): one full build.
                self.rebuild()
                return
            _setting, *read = self.store.together(
                [self.read_setting, *(partial(self._state, p) for p in projects)]
            )
            states = dict(zip(projects, read, strict=True))
            if attempt == 0:
                self._check_assets()
            infos = {p: self.info(s, known) for p, s in states.items() if s.files}
            for p, s in states.items():
                entries = shards[paging.shard_of(p)][0]
                assert entries is not None
                before.setdefault(p, entries.get(p))
                if s.files:
                    entries[p] = render.list_entry(s, infos[p])
                else:
                    entries.pop(p, None)
            items: list[WriteItem] = [
                WriteItem(layout.ui_shard(k), render.dumps_aggregate(e or {}), gen)
                for k, (e, gen) in shards.items()
            ]
            with_files = [p for p in projects if states[p].files]
            for p in with_files:
                page = render.render_project(
                    states[p], infos[p], self._held(infos[p]), origin=origin(states[p])
                )
                items.append(WriteItem(layout.ui_project(p), page, page_gens[p]))
            results = self.store.write_many(items + self._take_pending())
            if not all(results[: len(ks)]):
                backoff(attempt)  # another writer changed a shard: redo from its version
                continue
            for p, ok in zip(with_files, results[len(ks) :], strict=False):
                if not ok:
                    self._converge_page(p, known)
            for p in projects:
                if not states[p].files:
                    self._converge_page(p, known)  # deletes it
            self._place(before)
            return
        raise ConflictError(
            f"gave up updating the site's search index after {MAX_ATTEMPTS} conflicting writes"
        )

    def _place(self, olds: Mapping[str, render.ListEntry | None]) -> None:
        """Put each project's row where its shard's entry says, and take it off the page its row
        was on (`olds`): every list page read (generation and bytes) before the shards, written
        conditional on it. A seal writes its new older page first (create-only: nothing links it
        yet), then the head that links it."""
        need: set[str] = {paging.HEAD}
        for attempt in range(MAX_ATTEMPTS):
            ids, ks = sorted(need), sorted({paging.shard_of(p) for p in olds})
            read = self.store.together([partial(self.store.read, layout.ui_page(p)) for p in ids])
            pages = dict(zip(ids, read, strict=True))
            shards = self.store.together([partial(self._shard, k) for k in ks])  # after the pages
            truth = {k: entries for k, (entries, _gen) in zip(ks, shards, strict=True)}
            if any(e is None for e in truth.values()):
                self.rebuild()
                return
            changes = [
                paging.Change(p, old, (truth[paging.shard_of(p)] or {}).get(p)) for p, old in olds.items()
            ]
            plan = paging.apply({p: b for p, (b, _g) in pages.items()}, changes)
            if isinstance(plan, set):
                need |= plan  # read those too (before the shards), then place again
                continue
            if plan is None:
                self.rebuild()  # a page not in this version's form
                return
            if not plan.pages:
                return
            need |= set(plan.pages) - set(plan.sealed)
            first = [WriteItem(layout.ui_page(p), plan.pages[p], 0) for p in plan.sealed]
            created = self.store.write_many(first) if first else []
            head_won = 0
            if all(created):
                rest = [(p, d) for p, d in plan.pages.items() if p not in plan.sealed]
                results = self.store.write_many(
                    [WriteItem(layout.ui_page(p), d, pages[p][1]) for p, d in rest]
                )
                if all(results):
                    return
                head_won = dict(zip([p for p, _d in rest], results, strict=True)).get(paging.HEAD, 1)
            if not head_won:
                # No head links the pages sealed here: take them away (a kill here leaves them to
                # reindex, unlinked).
                for p, gen in zip(plan.sealed, created, strict=True):
                    if gen:
                        with contextlib.suppress(PreconditionFailed):  # a reindex took it first
                            self.store.delete(layout.ui_page(p), if_generation_match=gen)
            backoff(attempt)  # another writer changed a page: place again on its version
        raise ConflictError(f"gave up writing {layout.UI_LIST} after {MAX_ATTEMPTS} conflicting writes")

    def _converge_page(self, project: str, known: Mapping[str, bytes] | None = None) -> None:
        name = layout.ui_project(project)
        for attempt in range(MAX_ATTEMPTS):
            gen = self._gen(name)
            _setting, state = self.store.together([self.read_setting, partial(self._state, project)])
            try:
                if not state.files:
                    if gen:
                        self.store.delete(name, if_generation_match=gen)
                    return
                info = self.info(state, known)
                page = render.render_project(state, info, self._held(info), origin=origin(state))
                self.store.write(name, page, if_generation_match=gen)
                if caches := self._take_pending():
                    self.store.write_many(caches)
                return
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(f"gave up writing {name} after {MAX_ATTEMPTS} conflicting writes; retry")

    # -- everything (reindex) -------------------------------------------------------------------
    def begin_rebuild(self, *, workers: int | None = None) -> RebuildStart:
        """Step 1 of `rebuild`, before any JSON it renders from is read (a reindex calls it before
        its own pass): the generations, and bytes, of what exists, then the setting."""
        infos = {info.name: info for info in self.store.list(f"{layout.UI}/")}
        everything = list(infos)
        listing = [n for n in everything if n.count("/") == 2]
        existing = sorted(p for n in listing if n == layout.ui_project(p := n.split("/")[1]))
        cached = {n for n in listing if n.endswith(".json")}
        with ThreadPoolExecutor(max_workers=max(1, workers or self.store.reads_in_flight)) as pool:
            if self.store.content_fingerprint(b"") is not None:  # the listing vouches for the bytes
                listed = [infos[layout.ui_project(p)] for p in existing]
                pages = {p: StoredPage(i.generation, listed=i) for p, i in zip(existing, listed, strict=True)}
            else:
                read = pool.map(lambda p: self.store.read(layout.ui_project(p)), existing)
                pages = {p: StoredPage(gen, data) for p, (data, gen) in zip(existing, read, strict=True)}
            lists = self._read_lists(pool, everything)
        remote_images = self.read_setting()
        unpacked = [n for n in everything if layout.is_unpacked_page(n)]
        return RebuildStart(existing, cached, pages, lists, remote_images, unpacked)

    def write_ahead(
        self, start: RebuildStart, rendered: Mapping[str, tuple[_Rendered, frozenset[str]]]
    ) -> None:
        """Write what a reindex's pass rendered (`Reindexed.beside`, a group at a time) while the
        pass goes on, in the site's writing thread: each page conditional on the generation
        `begin_rebuild` read (before the state it is rendered from), as `rebuild` would; `rebuild`
        then takes the results, and rewrites a page whose dependency links turn out wrong."""
        items: list[WriteItem] = []
        for project, ((_p, _entry, body, pending), _deps) in rendered.items():
            have = start.pages.get(project, _ABSENT)
            if not have.shows(self.store, body):
                items.append(WriteItem(layout.ui_project(project), body, have.generation))
            items += pending
        if items:
            start.ahead.append((items, _ahead_writer().submit(self.store.write_many, items)))

    def beside(self, start: RebuildStart) -> Beside:
        """The pages a reindex renders in its own pass, by the setting `start` read (`rebuild` takes
        them from its `Reindexed`)."""
        return Beside(_render_beside, start.remote_images, stored=frozenset(start.existing))

    def rebuild(
        self, *, workers: int | None = None, start: RebuildStart | None = None, done: Reindexed | None = None
    ) -> int:
        """Every page from every project's current JSON, pages that are gone deleted, unchanged
        pages left alone. Same protocol: every generation is read before the JSON it is rendered
        from. Returns the number of objects written or deleted.

        A reindex passes what `begin_rebuild` read before its pass (`start`) and what it did
        (`done`): its final states stand for the JSON (read after `start`), and the pages it
        rendered beside them are used as they are, unless a dependency link changed with the
        projects that turned out to have files."""
        written = self.ensure_assets()
        self._infos.clear()  # a rebuild checks every stored release-info cache too
        workers = workers or self.store.reads_in_flight
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # 1. Generations (and bytes, to skip unchanged pages) of what exists, before any JSON.
            start = start or self.begin_rebuild(workers=workers)
            existing, cached, lists = start.existing, start.cached, start.lists
            pages = dict(start.pages)
            # What was written while the reindex went on: those pages now have these bytes and
            # generations. (A page that lost is written again below against the generation it lost
            # on: it loses again, and converges.)
            for ahead_items, job in start.ahead:
                for (name, data, *_), gen in zip(ahead_items, job.result(), strict=True):
                    written += 1 if gen else 0
                    if gen and name == layout.ui_project(name.split("/")[1]):
                        pages[name.split("/")[1]] = StoredPage(gen, data)
            self.remote_images = start.remote_images
            # 2. The states, then what the pages show (READMEs rendered where no cache has them).
            states = self._read_states(pool, done.states if done is not None else None)
            # Written in batches as they are rendered: the disk (or the network) works while the
            # worker processes render the next projects.
            entries: dict[str, render.ListEntry] = {}
            items: list[WriteItem] = []  # every page written, in the order of `results`
            results: list[int] = []
            batch_pages: list[WriteItem] = []
            batch_caches: list[WriteItem] = []
            flushed: list[tuple[int, Future[list[int]]]] = []
            with ThreadPoolExecutor(max_workers=1) as background:
                for project, entry, body, pending in self._render_all(states, pool, done, start.ahead):
                    entries[project] = entry
                    batch_caches += pending
                    have = pages.get(project, _ABSENT)
                    if not have.shows(self.store, body):
                        items.append(WriteItem(layout.ui_project(project), body, have.generation))
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
            # (Named for the projects that have one: not every file's in a reindex from scratch.)
            with_cache = {name.split("/")[1] for name in cached} & states.keys()
            live = {layout.ui_release(p, f.filename) for p in with_cache for f in states[p].files}
            for name in sorted(cached - live):
                self.store.delete(name)
                written += 1
            # Lost to a publisher (it rewrote the page meanwhile), or a project that is gone.
            redo = [item.name.split("/")[1] for item, ok in zip(items, results, strict=True) if not ok]
            redo += sorted(p for p in {*existing, *pages} if p not in states)  # (also one written ahead)
            written += len(redo)
            list(pool.map(self._converge_page, redo))
            # 3. The shards and the list, conditional on the generations read in step 1: the list
            # cut anew (no page thinned by moves), the objects of an older layout deleted.
            for attempt in range(MAX_ATTEMPTS):
                out = self._write_lists(entries, lists)
                if out is not None:
                    # The version before's plain pages, now that every page has its gzip'd one:
                    # never served again (nginx serves NAME.gz where it exists), never left behind.
                    self.store.together([partial(self.store.delete, name) for name in start.unpacked])
                    return written + out + len(start.unpacked)
                backoff(attempt)  # a publisher changed the list meanwhile: read everything again
                everything = [info.name for info in self.store.list(f"{layout.UI}/")]
                lists = self._read_lists(pool, everything)
                states = self._read_states(pool)
                entries = {p: render.list_entry(s, self.info(s)) for p, s in states.items()}
        raise ConflictError(f"gave up writing {layout.UI_LIST} after {MAX_ATTEMPTS} conflicting writes")

    def _read_lists(self, pool: ThreadPoolExecutor, everything: list[str]) -> dict[str, tuple[bytes, int]]:
        """The list's objects (bytes, generation) as they are: its pages, the shards, an older
        pypapo's aggregate."""
        names = {layout.UI_LIST, *layout.UI_SHARD_NAMES}
        names |= {n for n in everything if _OLDER.fullmatch(n) or n == layout.UI_OLD_DATA}
        ordered = sorted(names)
        return dict(zip(ordered, pool.map(self.store.read, ordered), strict=True))

    def _write_lists(
        self, entries: Mapping[str, render.ListEntry], now: Mapping[str, tuple[bytes, int]]
    ) -> int | None:
        """Write what differs of the list from `entries`, each object conditional on its generation in
        `now`: the older pages and shards first, then the head that links them, then delete the pages
        beyond the new last one and the old aggregate. The number written; None if one lost."""
        want: dict[str, bytes] = {layout.ui_page(s): d for s, d in paging.paginate(entries.values()).items()}
        by_shard: list[dict[str, render.ListEntry]] = [{} for _ in range(layout.UI_SHARDS)]
        for name, e in entries.items():
            by_shard[paging.shard_of(name)][name] = e
        want |= {layout.ui_shard(k): render.dumps_aggregate(e) for k, e in enumerate(by_shard)}
        change = {n: d for n, d in want.items() if now.get(n, (b"", 0))[0] != d}
        first = [WriteItem(n, d, now.get(n, (b"", 0))[1]) for n, d in change.items() if n != layout.UI_LIST]
        if first and not all(self.store.write_many(first)):
            return None
        gone = sorted(n for n, (_d, gen) in now.items() if gen and n not in want)
        if layout.UI_LIST in change or gone:
            # Written even unchanged before a delete: a publisher whose head (read before ours) would
            # link a page deleted here then loses its write and seals again.
            head = want[layout.UI_LIST]
            try:
                self.store.write(
                    layout.UI_LIST, head, if_generation_match=now.get(layout.UI_LIST, (b"", 0))[1]
                )
            except PreconditionFailed:
                return None
        for name in gone:
            try:
                self.store.delete(name, if_generation_match=now[name][1])
            except PreconditionFailed:
                return None
        return len(change) + len(gone) + (layout.UI_LIST not in change and bool(gone))

    def _render_all(
        self,
        states: Mapping[str, State],
        pool: ThreadPoolExecutor,
        done: Reindexed | None = None,
        start_ahead: list[tuple[list[WriteItem], Future[list[int]]]] | None = None,
    ) -> Iterator[_Rendered]:
        """Every project's list entry, page and release-info caches to store: what a reindex
        rendered of the same state, with the same dependency links, else rendered here. Rendering
        holds the GIL (~1 ms a README): for many projects on a directory store, one worker process
        per CPU."""
        held = frozenset(states)
        todo = [states[p] for p in sorted(states)]
        if done is not None:
            moved = held ^ done.held  # projects the pages took for held (or not), wrongly
            ready = {
                p: rendered
                for p, (rendered, deps) in done.beside.items()
                if p in states and states[p] is done.states.get(p) and not deps & moved
            }
            # (Those written ahead: `pages` holds their bytes now, their caches are written.)
            written_ahead = {name.split("/")[1] for items, _job in start_ahead or () for name, *_ in items}
            for p, (name, entry, body, pending) in ready.items():
                yield name, entry, body, [] if p in written_ahead else pending
            todo = [s for s in todo if s.name not in ready]
        chunks = [todo[i : i + RENDER_CHUNK] for i in range(0, len(todo), RENDER_CHUNK)]
        args = (self.store, self.remote_images, held)
        directory = isinstance(self.store.inner, DirectoryStore)
        if len(todo) >= PROCESS_MIN and cpu_count() > 1 and directory:
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

    def _read_states(
        self, pool: ThreadPoolExecutor, known: Mapping[str, State] | None = None
    ) -> dict[str, State]:
        """Every listed project with files, from its JSON (or the state `known` has for it)."""
        data, _ = self.store.read(layout.ROOT_JSON)
        try:
            names = sorted(set(RootState.from_json(data).projects))
        except (ValueError, KeyError, TypeError, AttributeError):
            names = []
        known = known or {}
        todo = [p for p in names if p not in known]
        read = dict(zip(todo, pool.map(self._state, todo), strict=True))
        return {p: s for p in names if (s := known[p] if p in known else read[p]).files}


_Ahead = tuple[render.ReleaseInfo, bool, int | None]


def _render_ahead(
    store: Store, project: str, filename: str, data: bytes, sha: str, held: dict[str, bool]
) -> _Ahead:
    """A release's info, the setting it was rendered by (read here: not a round trip of the
    publish's), and the generation of its cache to write it against (None: the cache already holds
    it). The cache goes in the batch of the page (one durable round): a write of its own here
    would wait on the disk beside the index's and slow them down. Which of its dependencies the
    repository holds goes into `held` (the page links them). All of it read in one round."""
    deps = sorted(render.metadata_dependency_names(data))
    setting, (cached, gen), *stats = store.together(
        [
            partial(store.stat, layout.UI_REMOTE_IMAGES),
            partial(store.read, layout.ui_release(project, filename)),
            *(partial(store.stat, layout.project_json(name)) for name in deps),
        ],
    )
    remote_images = setting is not None
    info = render.release_info(data, remote_images=remote_images)
    held.update({name: st is not None for name, st in zip(deps, stats, strict=True)})
    if gen and render.loads_info(cached, sha, remote_images) == info:
        return info, remote_images, None
    return info, remote_images, gen


_Rendered = tuple[str, render.ListEntry, bytes, list[WriteItem]]
_OLDER = re.compile(rf"{layout.UI}/older-{layout.UI_PAGE_ID}\.html{re.escape(layout.PACKED)}")
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
    return [_render_one(site, state, held)[0] for state in states]


def _render_one(
    site: Site, state: State, held: frozenset[str], known: Mapping[str, bytes] | None = None
) -> tuple[_Rendered, frozenset[str]]:
    """A project's list entry, page and release-info caches, and its dependencies' names."""
    info = site.info(state, known, cache_first=True)
    page = render.render_project(state, info, held, origin=origin(state))
    rendered = (state.name, render.list_entry(state, info), page, site._take_pending())
    return rendered, frozenset(render.dependency_names(info))


def _render_beside(
    store: Store, state: State, metadata: Mapping[str, bytes], held: frozenset[str], remote_images: bool
) -> tuple[_Rendered, frozenset[str]]:
    """`Beside.render`: a project's site page in reindex's own pass (its worker process), from
    the core metadata it has just read where the page shows one of those files."""
    site = Site(store)
    site.remote_images = remote_images  # what `begin_rebuild` read, after the generations
    return _render_one(site, state, held, metadata)

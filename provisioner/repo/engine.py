"""The engine: publish, yank, unyank, remove, list and reindex over a Store (`Repository`, the facade).

Where things live: the state and its JSON bytes in model.py; pages derived from it in outputs.py
(rendered by pages.py); the one compare-and-swap writer in writer.py; publishing in publish.py;
reindex in reindex.py; the two storage backends in store/.

Concurrency model (the same on both backends, see store/):
- distributions and metadata files are created with a create-only precondition; files are immutable.
- the project JSON is the source of truth; every change is a read-modify-write conditional on the
  generation read, retried with jittered backoff when another writer got there first.
- every derived output (outputs.py: the project HTML, the root HTML, ...) is rendered from the JSON
  and *converges*: a writer reads the output's generation BEFORE it writes the JSON (with the JSON
  read, in one round), renders from the JSON it wrote, and writes conditional on that generation;
  one that lost (an output written since) reads the generation, THEN re-reads the JSON, renders and
  writes again. Whoever writes last therefore rendered the latest JSON. The root works the same way.
- a new project is added to the root index *before* its project page is created, so every project
  page that exists is listed (a crash in between leaves a listed project without page until the
  re-run or `reindex`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.version import InvalidVersion, Version

from provisioner.errors import PypapoError
from provisioner.repo import importing, layout
from provisioner.repo import reindex as reindexing
from provisioner.repo.dist import DistFile
from provisioner.repo.model import FileEntry, ProjectState, RootState, Yanked
from provisioner.repo.outputs import DEFAULT, Outputs
from provisioner.repo.publish import Echo, PublishResult, ensure_listed, load_files, publish_dists
from provisioner.repo.reindex import Progress, ReindexResult
from provisioner.repo.site.writer import Site
from provisioner.repo.store import Store, open_store
from provisioner.repo.writer import IndexWriter, Seen, finish_removals

__all__ = ["PublishResult", "ReindexResult", "Repository"]


def _quiet(_msg: str) -> None:
    pass


class Repository:
    """A package repository over a Store (GCS bucket or directory)."""

    def __init__(
        self, store: Store, *, echo: Echo | None = None, outputs: Outputs = DEFAULT, site: bool = True
    ) -> None:
        """`site=False` writes the index alone, not the browsable site under ui/ (the benchmark's
        baseline; a repository written so has a stale site until the next `reindex`)."""
        self.store = store
        self.echo = echo or _quiet
        self.site = Site(store) if site else None
        # The site's writes go in the same batch as each changed project's own pages.
        self.writer = IndexWriter(store, outputs, spanning=self.site)

    @classmethod
    def open(cls, location: str, *, echo: Echo | None = None, notify: Echo | None = None) -> Repository:
        """The Repository at `gs://BUCKET[/PREFIX]` or a directory. `notify` hears what a slow
        request to GCS is waiting for (the CLI prints it on stderr)."""
        return cls(open_store(location, notify=notify), echo=echo)

    # -- reading ----------------------------------------------------------------------------------
    def projects(self) -> list[str]:
        self.store.check()
        root, _gen = self.writer.read_root()
        return list(root.projects)

    def project(self, name: str) -> ProjectState:
        """The project state; raises if the project does not exist."""
        project = layout.normalize(name)
        _checked, (state, gen) = self.store.together(
            [self.store.check, functools.partial(self.writer.read_project, project)]
        )
        if gen == 0:
            raise self._no_project(project)
        return state

    def _no_project(self, project: str) -> PypapoError:
        return PypapoError(f"no project {project} in {self.store.location}: see `provision list`")

    def _before_change(self, name: str) -> tuple[str, Seen, bool]:
        """What a change of an existing project reads, in one round: the check (its error first), the
        project JSON with its pages' generations, and whether the root's pages are out of step."""
        project = layout.normalize(name)
        _checked, seen, root_stale = self.store.together(
            [self.store.check, functools.partial(self.writer.see_project, project), self.writer.root_stale]
        )
        if seen.gen == 0:
            raise self._no_project(project)
        return project, seen, root_stale

    def initialize(self) -> bool:
        """Write an empty root index where there is none; True if written.

        A fresh bucket must serve an empty index (not a 503) before the first publish: the appliance
        reports ready only once its root page answers through the mount.
        """
        self.store.check()
        written = self.writer.update_root(lambda root: root)
        if self.site:
            self.site.rebuild()  # the (empty) list, so that /ui/ answers too
        return written

    # -- publish ----------------------------------------------------------------------------------
    def publish(
        self, paths: Sequence[str | Path], *, skip_existing: bool = False, into_mirrored: bool = False
    ) -> PublishResult:
        """Validate every file, then upload and index them. Same bytes again is a no-op; other bytes
        under an existing filename are refused (or skipped with skip_existing). A mirrored project
        takes files only with into_mirrored."""
        return self.publish_dists(load_files(paths), skip_existing=skip_existing, into_mirrored=into_mirrored)

    def publish_dists(
        self, dists: Sequence[DistFile], *, skip_existing: bool = False, into_mirrored: bool = False
    ) -> PublishResult:
        return publish_dists(
            self.writer, dists, skip_existing=skip_existing, into_mirrored=into_mirrored, echo=self.echo
        )

    # -- mirror -----------------------------------------------------------------------------------
    def ensure_listed(self, *projects: str) -> None:
        """List `projects` in the root index (one update), e.g. before importing their pages."""
        if projects:
            ensure_listed(self.writer, *projects)

    def mirror_status(self, name: str) -> importing.MirrorStatus:
        """Where a project came from (None: published here, or not there) and its files' hashes."""
        return importing.status(self.writer, layout.normalize(name))

    def mirror_origins(self, projects: Sequence[str], workers: int = 16) -> dict[str, str]:
        """project -> the index it was mirrored from, for the mirrored ones among `projects`."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            states = pool.map(lambda p: self.writer.read_project(p, repair=True)[0], projects)
            return {s.name: o for s in states if (o := s.mirrored_from) is not None}

    def import_mirrored(
        self,
        groups: Mapping[str, Sequence[importing.MirroredFile]],
        *,
        origin: str,
        yanks: Mapping[str, Mapping[str, Yanked]],
    ) -> dict[str, importing.ImportOutcome]:
        """Index verified upstream files with their upstream state (what `provision mirror` writes)."""
        return importing.import_many(self.writer, groups, origin=origin, yanks=yanks)

    # -- yank / remove ----------------------------------------------------------------------------
    @staticmethod
    def _version_matcher(state: ProjectState, version: str) -> Callable[[FileEntry], bool]:
        try:
            wanted = Version(version)
        except InvalidVersion:
            raise PypapoError(f"invalid version {version!r}") from None

        def match(f: FileEntry) -> bool:
            try:
                return Version(f.version) == wanted
            except InvalidVersion:
                return False

        if not any(match(f) for f in state.files):
            versions = ", ".join(state.versions) or "none"
            raise PypapoError(f"{state.name} has no version {version} (versions: {versions})")
        return match

    def set_yanked(self, name: str, version: str, reason: str | None, *, yanked: bool = True) -> int:
        """Yank (or unyank) every file of a version. Returns the number of files changed."""
        project, seen, root_stale = self._before_change(name)
        match = self._version_matcher(seen.state, version)
        value: Yanked = (reason or True) if yanked else False
        count = 0

        def change(state: ProjectState) -> ProjectState | None:
            nonlocal count
            count = 0
            files = []
            for f in state.files:
                if match(f) and f.yanked != value:
                    f = f.with_yanked(value)
                    count += 1
                files.append(f)
            return state.with_files(files) if count else None

        self.writer.update_project(project, change, seen=seen)
        if root_stale:
            self.writer.repair_root()
        return count

    def remove(self, name: str, version: str | None = None) -> list[str]:
        """Remove a version (or the whole project). Returns the removed filenames."""
        project, seen, root_stale = self._before_change(name)
        match = self._version_matcher(seen.state, version) if version else (lambda _f: True)
        removed: list[str] = []

        def change(state: ProjectState) -> ProjectState | None:
            removed.clear()
            keep = []
            for f in state.files:
                (removed.append(f.filename) if match(f) else keep.append(f))
            if not removed:
                return None
            # Off the page, and marked as being removed until the objects are gone: a reindex that
            # listed them before, or a publisher of the same file, cannot put them back meanwhile.
            return state.with_files(keep).with_removing(state.removing | set(removed))

        self.writer.update_project(project, change, seen=seen)
        # Pages first, objects after: a page never links a file that is gone.
        update = finish_removals(self.writer, project, removed)
        if not update.state.exists:
            self.writer.update_root(
                lambda root: (
                    RootState.of(p for p in root.projects if p != project)
                    if project in root.projects
                    else None
                )
            )
            # A publisher may have recreated the project meanwhile: it must stay listed.
            if self.store.read(layout.project_json(project))[1]:
                ensure_listed(self.writer, project)
        if root_stale:
            self.writer.repair_root()
        return sorted(removed)

    # -- reindex ----------------------------------------------------------------------------------
    def reindex(
        self,
        *,
        verify: bool = False,
        workers: int | None = None,
        site_remote_images: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> ReindexResult:
        """Rebuild every page from the stored objects, keeping yanks and upload times.

        Without `verify`, a file whose stored fingerprint (GCS: size + md5/crc32c; directory: size +
        mtime_ns) matches the one recorded in the project JSON keeps its recorded entry; everything
        else is read and hashed, and parsed anew unless the hash equals the recorded one. `verify`
        reads and hashes every file and its metadata file, and fully checks the changed ones.

        Pages are written in batches (`Store.write_many`), group by group: each page is still its
        own compare-and-swap on the generation read, with the publish protocol (project JSON, then
        its derived outputs, each output's generation read before the JSON is written; see
        reindex.py); a page that lost its race to a publisher is redone through the one-by-one retry
        path. When many files need parsing on a directory repository, that work runs in one worker
        process per CPU (multiprocessing forkserver: a script calling this needs the usual
        `__main__` guard).

        `site_remote_images` (None: as stored) sets the site's one setting first: whether README
        images from https URLs are shown (and allowed by nginx's policy for /ui/).

        `progress` hears where the pass is (a `reindex.Progress`): the objects listed so far, every
        `reindex.LIST_TELL` of them; then how many of the projects listed have their pages written,
        once they are listed and after each group of `reindex.WRITE_GROUP`.
        `workers`: the threads that read (default: the store's `reads_in_flight`; 8 on a directory,
        16 on GCS, where each read is a round trip: across a 50 ms link a reindex of 500 projects that
        changes nothing took 11.3 s with 8, 7.7 s with 16)."""
        if workers is None:
            workers = self.store.reads_in_flight
        if self.site is None:
            return reindexing.reindex(self.writer, verify=verify, workers=workers, progress=progress).result
        self.store.check()  # an unreachable repository says so before the site's first read
        changed = site_remote_images is not None and self.site.set_remote_images(site_remote_images)
        # The site's pages are rendered in the index's own pass (its worker processes), from the
        # states it reads and the core metadata it has in memory; what the site writes against is
        # read before that pass reads any project JSON, as the protocol wants.
        start = self.site.begin_rebuild(workers=workers)
        done = reindexing.reindex(
            self.writer,
            verify=verify,
            workers=workers,
            beside=self.site.beside(start),
            rendered=functools.partial(self.site.write_ahead, start),  # written while the pass goes on
            progress=progress,
        )
        done.result.pages_written += changed + self.site.rebuild(workers=workers, start=start, done=done)
        return done.result

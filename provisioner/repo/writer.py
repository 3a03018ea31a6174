"""I/O: the one writer of state and derived outputs, by compare-and-swap (the protocol of engine.py).

Every change of a project or of the root goes through `update_project` / `update_root`: a
read-modify-write of the JSON conditional on the generation read, retried with jittered backoff, then
`converge_*` of every derived output (`outputs.Outputs`). Publish, yank, remove and reindex share it.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from provisioner.errors import ConflictError, PypapoError
from provisioner.repo import layout
from provisioner.repo.model import CORRUPT, ProjectState, RootState
from provisioner.repo.outputs import DEFAULT, Outputs
from provisioner.repo.store import PreconditionFailed, Store, WriteItem

MAX_ATTEMPTS = 60


def backoff(attempt: int) -> None:
    # Full jitter, capped: contending writers spread out instead of colliding in lockstep.
    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))


@dataclass(frozen=True)
class ProjectUpdate:
    state: ProjectState  # the state now stored (or the unchanged one)
    changed: bool
    created: bool  # the project JSON did not exist before
    written: int = 0  # objects written or deleted: the JSON and its derived outputs


@dataclass(frozen=True)
class Seen:
    """A project JSON as read, with its outputs' generations read in the same round: what an update
    can write against."""

    state: ProjectState
    gen: int
    outputs: tuple[int, ...]


class Created(NamedTuple):
    generation: int
    new: bool


@dataclass(frozen=True)
class Batch:
    """Writes of outputs that span projects, to go in the same `write_many` as a project's own
    outputs: `after` as in `write_many` (indices into `items`); `commit` hears each item's result."""

    items: list[WriteItem]
    after: list[int | None]
    commit: Callable[[list[int]], None]


class Spanning(Protocol):
    """Outputs that span projects (the site: its list and aggregate, pages that read a release's
    core metadata). Reindex rebuilds them once at its end instead (repair=True)."""

    def prepare(self, project: str, known: Mapping[str, bytes]) -> None:
        """A publish is about to upload files with this core metadata (by filename): start what can
        start (render, read the generations to write against) while the index is written."""

    def forget(self, project: str) -> None:
        """The publish `prepare` was told of adds nothing to `project` after all."""

    def stage(self, project: str) -> Callable[[ProjectState, Mapping[str, bytes]], Batch | None]:
        """Read (or take the prefetched) generations of what a change of `project` rewrites, before
        its JSON is written; the function returned renders from the state then written: its Batch,
        or None when it cannot go in the project's batch (then `update` runs once the project's
        outputs are written)."""
        ...

    def update(self, projects: Sequence[str], known: Mapping[str, bytes]) -> None:
        """Converge on their own after `projects` changed."""


class IndexWriter:
    """Reads and writes the state of one repository, and keeps its derived outputs converged."""

    def __init__(self, store: Store, outputs: Outputs = DEFAULT, *, spanning: Spanning | None = None) -> None:
        self.store = store
        self.outputs = outputs
        # Written in the same durable round as a changed project's own outputs where it can (one
        # round trip less per change on GCS, one fsync round less on a directory).
        self.spanning = spanning

    # -- reading ----------------------------------------------------------------------------------
    def parse_project(self, data: bytes, project: str, *, gen: int, repair: bool = False) -> ProjectState:
        """The state of a page read at generation `gen` (0: there is none). A corrupt page is an
        error, or (repair=True, for reindex) an empty state that the rebuild then replaces. A page
        that exists with no bytes is corrupt too (truncated by hand or by a tool): read as empty,
        the next write would drop every file of the project, their yanks and upload times."""
        try:
            if gen and not data:
                raise ValueError("an empty page")
            return ProjectState.from_json(data, project)
        except CORRUPT:
            if repair:
                return ProjectState(project)
            raise PypapoError(
                f"{layout.project_json(project)} is corrupt: run `provision reindex` to rebuild it"
            ) from None

    def read_project(self, project: str, *, repair: bool = False) -> tuple[ProjectState, int]:
        """The project state and its generation (0: no such project)."""
        data, gen = self.store.read(layout.project_json(project))
        return self.parse_project(data, project, gen=gen, repair=repair), gen

    def parse_root(self, data: bytes, *, gen: int, repair: bool = False) -> RootState:
        """Like parse_project: an existing root page with no bytes is corrupt, not an empty root
        (or the next new project would be the only one listed)."""
        try:
            if gen and not data:
                raise ValueError("an empty page")
            return RootState.from_json(data)
        except CORRUPT:
            if repair:
                return RootState()
            raise PypapoError(
                f"{layout.ROOT_JSON} is corrupt: run `provision reindex` to rebuild it"
            ) from None

    def read_root(self, *, repair: bool = False) -> tuple[RootState, int]:
        data, gen = self.store.read(layout.ROOT_JSON)
        return self.parse_root(data, gen=gen, repair=repair), gen

    def generation(self, name: str) -> int:
        info = self.store.stat(name)
        return info.generation if info else 0

    # -- state ------------------------------------------------------------------------------------
    def prepare(self, project: str, known: Mapping[str, bytes]) -> None:
        """A publish may add files with this core metadata (by filename) to `project` (`forget`:
        it will not after all)."""
        if self.spanning is not None and known:
            self.spanning.prepare(project, known)

    def forget(self, project: str) -> None:
        if self.spanning is not None:
            self.spanning.forget(project)

    def see_project(self, project: str, *, repair: bool = False) -> Seen:
        """The project JSON and, in the same round, its outputs' generations."""
        gens = [functools.partial(self.generation, name) for name in self.outputs.project_names(project)]
        read, *outputs = self.store.together([lambda: self.read_project(project, repair=repair), *gens])
        return Seen(*read, tuple(outputs))

    def update_project(
        self,
        project: str,
        change: Callable[[ProjectState], ProjectState | None],
        *,
        repair: bool = False,
        known: Mapping[str, bytes] | None = None,
        seen: Seen | None = None,
        before_create: Callable[[], None] | None = None,
    ) -> ProjectUpdate:
        """Apply `change` to the project JSON under CAS. `change` returns the new state or None (no
        change). A state without files (and no removal under way) deletes the project. `known`:
        core metadata in memory (a publish), by filename, for the spanning outputs. `seen`: what the
        first attempt writes against (read by the caller). `before_create` runs before a JSON this
        call read as absent is created (a `seen` one is the caller's to prepare).

        The outputs' generations are read before the JSON is written and the outputs rendered from
        the JSON written: an output written since that read fails its compare-and-swap and converges,
        so whoever writes an output last rendered the latest state."""
        for attempt in range(MAX_ATTEMPTS):
            now = seen if attempt == 0 and seen is not None else self.see_project(project, repair=repair)
            new = change(now.state)
            if new is None:
                return ProjectUpdate(now.state, changed=False, created=False)
            if not new.exists and not now.gen:
                return ProjectUpdate(new, changed=False, created=False)
            spanning = None if repair else self.spanning
            # What the spanning outputs write against: read (or prefetched) before the JSON is written too.
            staged = spanning.stage(project) if spanning is not None and new.files else None
            try:
                if new.exists:
                    if not now.gen and before_create is not None and now is not seen:
                        before_create()
                    self.store.write(layout.project_json(project), new.to_json(), if_generation_match=now.gen)
                else:
                    self.store.delete(layout.project_json(project), if_generation_match=now.gen)
            except PreconditionFailed:
                backoff(attempt)
                continue
            # The spanning outputs go in the batch of the project's own where they can; else after.
            batch = staged(new, known or {}) if staged is not None else None
            if new.exists:
                written = 1 + self._write_outputs(project, new, now.outputs, batch)
            else:
                written = 1 + self.converge_project(project)
            if spanning is not None and batch is None:
                spanning.update([project], known or {})
            return ProjectUpdate(new, changed=True, created=now.gen == 0, written=written)
        raise ConflictError(f"gave up updating {project} after {MAX_ATTEMPTS} conflicting writes; retry")

    def update_root(self, change: Callable[[RootState], RootState | None], *, repair: bool = False) -> bool:
        """Apply `change` to the root JSON under CAS (None: no change); True if written. Its pages
        as a project's are (`update_project`): their generations read with the JSON, rendered from
        the JSON written."""
        names = [out.object_name for out in self.outputs.root]
        for attempt in range(MAX_ATTEMPTS):
            gens = [functools.partial(self.generation, name) for name in names]
            (data, gen), *outs = self.store.together(
                [functools.partial(self.store.read, layout.ROOT_JSON), *gens]
            )
            current = self.parse_root(data, gen=gen, repair=repair)
            new = change(current)
            if new is None or (new == current and gen):
                return False
            try:
                self.store.write(layout.ROOT_JSON, new.to_json(), if_generation_match=gen)
            except PreconditionFailed:
                backoff(attempt)
                continue
            items = [
                WriteItem(out.object_name, out.render(new), g)
                for out, g in zip(self.outputs.root, outs, strict=True)
            ]
            lost = [item.name for item, ok in zip(items, self.store.write_many(items), strict=True) if not ok]
            if lost:
                self.converge_root(only=lost)
            return True
        raise ConflictError(f"gave up updating the root index after {MAX_ATTEMPTS} conflicting writes")

    # -- derived outputs --------------------------------------------------------------------------
    def update_projects(
        self, changes: Mapping[str, Callable[[ProjectState], ProjectState | None]], *, workers: int = 16
    ) -> dict[str, ProjectUpdate]:
        """`update_project` for many projects, with one `write_many` for every JSON and its outputs.

        The same protocol, batched (as reindex writes pages): each output's generation is read after
        the project JSON was read and before the JSON is written; the JSON is written conditional on
        the generation read, each output rendered from that very JSON conditional on its own. A
        project that lost its race (or loses every file) goes the one-by-one way; an output that lost
        converges. The spanning outputs (`Spanning.update`) hear every changed project at once."""
        store = self.store

        def prepare(project: str) -> tuple[str, ProjectState, int, ProjectState | None, list[int]]:
            state, gen = self.read_project(project)
            outs = [self.generation(name) for name in self.outputs.project_names(project)]
            return project, state, gen, changes[project](state), outs

        with ThreadPoolExecutor(max_workers=workers) as pool:
            prepared = list(pool.map(prepare, sorted(changes)))
        updates: dict[str, ProjectUpdate] = {}
        items: list[WriteItem] = []
        outputs: list[WriteItem] = []
        after: list[int] = []
        batch: list[tuple[str, ProjectState, int, list[int]]] = []
        retry: list[str] = []
        for project, state, gen, new, outs in prepared:
            if new is None:
                updates[project] = ProjectUpdate(state, changed=False, created=False)
            elif not new.files:
                retry.append(project)  # a delete: one by one
            else:
                mine = []
                for name, data, out_gen in zip(
                    self.outputs.project_names(project), self.outputs.render_project(new), outs, strict=True
                ):
                    mine.append(len(outputs))
                    outputs.append(WriteItem(name, data, out_gen))
                    after.append(len(items))
                batch.append((project, new, gen, mine))
                items.append(WriteItem(layout.project_json(project), new.to_json(), gen))
        n = len(items)
        written = store.write_many(items + outputs, after=[None] * n + after) if items else []
        converge = []
        for k, (project, new, gen, mine) in enumerate(batch):
            if not written[k]:
                retry.append(project)  # another writer got there first: merge into what it wrote
                continue
            wrote = sum(1 for i in mine if written[n + i])
            if wrote < len(mine):
                converge.append(project)
            updates[project] = ProjectUpdate(new, changed=True, created=gen == 0, written=1 + wrote)
        for project in converge:
            self.converge_project(project)
        changed = [p for p, u in updates.items() if u.changed]
        if changed and self.spanning is not None:
            self.spanning.update(changed, {})
        for project in retry:
            updates[project] = self.update_project(project, changes[project])
        return updates

    def _converge(
        self,
        names: list[str],
        render: Callable[[], tuple[bytes, ...] | None],
        gave_up: Callable[[str], str],
    ) -> int:
        """Make every output in `names` match the state: read the outputs' generations FIRST, then
        the state (`render`, None: no state, delete them), write each conditional on its generation.
        Whoever writes an output last therefore rendered the latest state. Returns how many objects
        were written or deleted."""
        pending = list(range(len(names)))
        written = 0
        for attempt in range(MAX_ATTEMPTS):
            gens = self.store.together([functools.partial(self.generation, names[i]) for i in pending])
            rendered = render()
            lost = []
            for i, gen in zip(pending, gens, strict=True):
                try:
                    if rendered is not None:
                        self.store.write(names[i], rendered[i], if_generation_match=gen)
                    elif gen:
                        self.store.delete(names[i], if_generation_match=gen)
                    else:
                        continue
                    written += 1
                except PreconditionFailed:
                    lost.append(i)
            if not lost:
                return written
            pending = lost
            backoff(attempt)
        raise ConflictError(gave_up(names[pending[0]]))

    def converge_project(self, project: str, only: Collection[str] | None = None) -> int:
        """Make the project's derived outputs (or those named in `only`) match its JSON (deleted
        with it)."""
        chosen = [out for out in self.outputs.project if only is None or out.object_name(project) in only]

        def render() -> tuple[bytes, ...] | None:
            data, gen = self.store.read(layout.project_json(project))
            if not gen:
                return None
            state = self.parse_project(data, project, gen=gen)
            return tuple(out.render(state) for out in chosen)

        return self._converge(
            [out.object_name(project) for out in chosen],
            render,
            lambda name: f"gave up writing {name} after {MAX_ATTEMPTS} conflicting writes; retry",
        )

    def _write_outputs(
        self, project: str, state: ProjectState, gens: Sequence[int], batch: Batch | None
    ) -> int:
        """The project's outputs rendered from `state` (the JSON just written), each against its
        generation read before that write, in one `write_many` with the spanning outputs' `batch`.
        A write that lost converges on its own. Returns the objects written."""
        names = self.outputs.project_names(project)
        items = [WriteItem(*out) for out in zip(names, self.outputs.render_project(state), gens, strict=True)]
        n = len(items)
        after: list[int | None] = [None] * n
        if batch is not None:
            items += batch.items
            after += [None if a is None else a + n for a in batch.after]
        results = self.store.write_many(items, after=after)
        lost = [name for name, ok in zip(names, results, strict=False) if not ok]
        if batch is not None:
            batch.commit(results[n:])
        return n - len(lost) + (self.converge_project(project, only=lost) if lost else 0)

    def converge_root(self, only: Collection[str] | None = None) -> int:
        """Make the root's derived outputs (or those named in `only`) match the root JSON."""
        chosen = [out for out in self.outputs.root if only is None or out.object_name in only]

        def render() -> tuple[bytes, ...]:
            root, _gen = self.read_root(repair=True)
            return tuple(out.render(root) for out in chosen)

        return self._converge(
            [out.object_name for out in chosen],
            render,
            lambda _name: f"gave up writing the root page after {MAX_ATTEMPTS} conflicting writes",
        )

    def repair_root(self) -> int:
        """Converge the root's outputs if they are out of step with the root JSON: missing (what a
        writer killed between the root JSON and its HTML leaves: every client gets 503) or older
        than it. A few stats in one round; every writing command ends with it (a publish reads them
        with its first round), so any write repairs them."""
        return self.converge_root() if self.root_stale() else 0

    def root_stale(self) -> bool:
        names = [layout.ROOT_JSON, *(out.object_name for out in self.outputs.root)]
        state, *infos = self.store.together([functools.partial(self.store.stat, n) for n in names])
        return state is not None and any(i is None or i.updated_ns < state.updated_ns for i in infos)

    # -- objects ----------------------------------------------------------------------------------
    def create_many(
        self,
        objects: Sequence[tuple[str, bytes]],
        *,
        after: Sequence[int | None] = (),
        created: list[str] | None = None,
    ) -> list[Created]:
        """Create-only uploads side by side (one `write_many`, `after` as there), then each one not
        created checked as `create_object` does: an object stored with other bytes is a
        ConflictError. `created` (if given) hears the names this call created, before that raises."""
        gens = self.store.write_many([WriteItem(name, data, 0) for name, data in objects], after=after)
        if created is not None:
            created += [name for (name, _data), gen in zip(objects, gens, strict=True) if gen]
        done = []
        for (name, data), gen in zip(objects, gens, strict=True):
            made = Created(gen, new=True) if gen else self.create_object(name, data)
            if created is not None and made.new and not gen:
                created.append(name)
            done.append(made)
        return done

    def create_object(self, name: str, data: bytes) -> Created:
        """Create-only upload: the generation now stored, and whether this call created it (not:
        identical bytes were already there)."""
        try:
            return Created(self.store.write(name, data, if_generation_match=0), new=True)
        except PreconditionFailed:
            existing, gen = self.store.read(name)
            if gen and existing == data:
                return Created(gen, new=False)  # ours from a retried request, a re-run, or an identical racer
            raise ConflictError(
                f"{name.rsplit('/', 1)[-1]} already exists in {self.store.location} with different "
                "bytes; files are immutable: publish a new version"
            ) from None


def finish_removals(writer: IndexWriter, project: str, filenames: Iterable[str]) -> ProjectUpdate:
    """Delete the objects of files marked as being removed, then clear their marks (and the project
    JSON, when nothing else is left). `remove` runs it; so does reindex, for a remove that was killed
    before it finished. Deleting twice is harmless: both may run at once."""
    names = set(filenames)
    objects = [(layout.metadata_object(project, f), layout.dist_object(project, f)) for f in sorted(names)]
    writer.store.together([functools.partial(writer.store.delete, name) for pair in objects for name in pair])
    return writer.update_project(
        project,
        lambda state: state.with_removing(state.removing - names) if state.removing & names else None,
    )

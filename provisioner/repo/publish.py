"""Publish: validate every file, decide for the whole batch, upload create-only, then index per project."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from provisioner.errors import ConflictError, InvalidDistribution, human_size, quoted
from provisioner.repo import layout
from provisioner.repo.dist import DistError, DistFile, file_identity, parse_dist
from provisioner.repo.model import FileEntry, ProjectState, RootState, upload_time
from provisioner.repo.writer import IndexWriter, Seen

Echo = Callable[[str], None]


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


def read_offered(path: Path, what: str = "a distribution file") -> bytes:
    """The bytes of a file offered for publishing; a missing or unreadable one is InvalidDistribution."""
    shown = quoted(str(path))  # input: quoted, so that no filename can forge a line
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidDistribution(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise InvalidDistribution(f"{shown}: is a directory, not {what}") from None
    except OSError as exc:
        raise InvalidDistribution(f"{shown}: cannot read ({exc.strerror})") from None


def load_files(paths: Iterable[str | Path]) -> list[DistFile]:
    """Read and validate every file; the first invalid one raises InvalidDistribution."""
    dists: list[DistFile] = []
    seen: dict[str, DistFile] = {}
    for p in paths:
        path = Path(p)
        data = read_offered(path)
        try:
            dist = parse_dist(path.name, data)
        except DistError as exc:
            raise InvalidDistribution(f"{quoted(path.name)}: {exc}") from None
        if dist.filename in seen:
            if seen[dist.filename].sha256 != dist.sha256:
                raise InvalidDistribution(f"{dist.filename}: given twice with different contents")
            continue
        seen[dist.filename] = dist
        dists.append(dist)
    return dists


def publish_dists(
    writer: IndexWriter,
    dists: Sequence[DistFile],
    *,
    skip_existing: bool,
    echo: Echo,
    into_mirrored: bool = False,
) -> PublishResult:
    """Same bytes again is a no-op; other bytes under an existing filename are refused (or skipped
    with skip_existing). A project mirrored from a public index takes no files of ours unless
    into_mirrored (they would mix with the upstream's). Every decision is taken before anything is
    written: a refusal leaves the repository as it was. Ends with the root's pages in step."""
    store = writer.store
    result = PublishResult()
    projects = list(dict.fromkeys(d.project for d in dists))
    for project in projects:
        # The site's reads and README rendering start now, beside the index's first round (their
        # generations are read before the project JSON is written, as the protocol wants).
        known = {d.filename: d.metadata for d in dists if d.project == project and d.metadata is not None}
        writer.prepare(project, known)
    try:
        todo, seen, root_stale = _decide(
            writer, dists, projects, result, skip_existing=skip_existing, into_mirrored=into_mirrored
        )
    except BaseException:
        for project in projects:
            writer.forget(project)
        raise
    total = len(dists)
    done = 0

    def progress(message: str) -> None:
        nonlocal done
        done += 1
        echo(f"[{done}/{total}] {message}" if total > 1 else message)

    for dist in dists:
        if dist.filename in result.already_present:
            progress(f"{dist.filename} already present (same bytes), nothing to do")
        elif dist.filename in result.skipped:
            progress(f"{dist.filename} exists with different bytes, skipped (--skip-existing)")

    # Per project: upload its files (create-only), then one index update for the group.
    groups: dict[str, list[DistFile]] = {}
    for dist in todo:
        groups.setdefault(dist.project, []).append(dist)
    for project in projects:
        if project not in groups:
            writer.forget(project)
    for project, group in groups.items():
        if seen[project].gen == 0:
            # A new project is listed before anything of it is stored: a confusable name that won a
            # race to the root index stops this one before it uploads a byte.
            ensure_listed(writer, project, filename=group[0].filename)
        # Every file side by side, then the metadata files (each once its file is there: a racer
        # with other bytes under the name must not get our metadata beside its file).
        objects = [(layout.dist_object(project, d.filename), d.data) for d in group]
        after: list[int | None] = [None] * len(group)
        for k, d in enumerate(group):
            if d.metadata is not None:
                objects.append((layout.metadata_object(project, d.filename), d.metadata))
                after.append(k)
        made = writer.create_many(objects, after=after)
        fingerprints = {
            d.filename: store.written_fingerprint(d.data, made[k].generation) for k, d in enumerate(group)
        }
        for dist in group:
            progress(f"uploaded {dist.filename} ({human_size(dist.size)})")
        _index_new_files(writer, project, group, seen[project], fingerprints)
        result.published += [d.filename for d in group]
    if root_stale:
        writer.repair_root()
    return result


def _decide(
    writer: IndexWriter,
    dists: Sequence[DistFile],
    projects: Sequence[str],
    result: PublishResult,
    *,
    skip_existing: bool,
    into_mirrored: bool,
) -> tuple[list[DistFile], dict[str, Seen], bool]:
    """What to upload (the rest noted in `result`), what each project was read at, and whether the
    root's pages are out of step; raises before anything is written."""
    store = writer.store
    # One round: the check, every project's JSON with its outputs' generations, every file's object,
    # whether the root's pages are in step (`repair_root`, which every writing command ends with).
    # The check comes first in the list, so that its clear error wins (a missing bucket reads empty).
    reads = [
        store.check,
        *(functools.partial(writer.see_project, p) for p in projects),
        *(functools.partial(store.stat, layout.dist_object(d.project, d.filename)) for d in dists),
        writer.root_stale,
    ]
    _checked, *got, root_stale = store.together(reads)
    seen: dict[str, Seen] = dict(zip(projects, got[: len(projects)], strict=True))
    stored = dict(zip((d.filename for d in dists), got[len(projects) :], strict=True))
    states = {p: s.state for p, s in seen.items()}
    todo: list[DistFile] = []
    for dist in dists:
        origin = states[dist.project].mirrored_from
        if origin and not into_mirrored:
            raise ConflictError(
                f"{dist.project} is mirrored from {origin}: publishing your own {dist.filename} would"
                " mix it with the upstream's files; pass --into-mirrored if you mean it"
            )
        state = states[dist.project]
        entry = state.by_filename().get(dist.filename)
        if entry is None:
            if dist.filename in state.removing:
                raise ConflictError(_being_removed(dist.filename))
            # Against what is stored and what this batch publishes before it.
            clash = _clash([*state.files, *(_entry(d) for d in todo if d.project == dist.project)], dist)
            if clash:
                raise ConflictError(clash)
        if entry is not None:
            recorded = entry.sha256
        elif stored[dist.filename] is None:
            recorded = None
        else:  # stored but not indexed: what a publisher killed before its page left
            existing, gen = store.read(layout.dist_object(dist.project, dist.filename))
            recorded = "(stored object)" if gen and existing != dist.data else None
        if recorded is None:
            todo.append(dist)
        elif recorded == dist.sha256:
            result.already_present.append(dist.filename)
        elif skip_existing:
            result.skipped.append(dist.filename)
        else:
            raise ConflictError(
                f"{dist.filename} already exists in {store.location} with different bytes; "
                "files are immutable: publish a new version (or pass --skip-existing)"
            )
    if len({d.project for d in todo}) > 1 and any(seen[d.project].gen == 0 for d in todo):
        # Before any project of the batch is uploaded (one project alone: its listing checks, first).
        root, _gen = writer.read_root()  # a corrupt root fails here, not midway
        created: set[str] = set()
        for dist in todo:
            if dist.project not in root.projects and dist.project not in created:
                _check_not_confusable(dist.project, [*root.projects, *created], dist.filename)
                created.add(dist.project)
    return todo, seen, root_stale


def ensure_listed(writer: IndexWriter, *projects: str, filename: str = "") -> None:
    """List `projects` in the root index (one compare-and-swap for them all). Adding one (for
    `filename`) is refused if another project there has a name a reader cannot tell from it."""

    def add(root: RootState) -> RootState | None:
        new = [p for p in projects if p not in root.projects]
        if not new:
            return None
        if filename:
            for project in new:
                _check_not_confusable(project, root.projects, filename)
        return RootState.of((*root.projects, *new))

    writer.update_root(add)


def _check_not_confusable(project: str, others: Iterable[str], filename: str) -> None:
    key = layout.confusable_key(project)
    for other in others:
        if other != project and layout.confusable_key(other) == key:
            raise InvalidDistribution(
                f"{filename}: project name {project} is too similar to the existing project {other} "
                "(they differ only in -_. or in i/l/1, o/0, as PyPI judges it): "
                "use that project, or another name"
            )


def _being_removed(filename: str) -> str:
    return (
        f"{filename} is being removed (by a `provision remove` still running, or one that was "
        "interrupted: `provision reindex` finishes it); publish it again once it is gone"
    )


def _entry(dist: DistFile) -> FileEntry:
    return FileEntry(dist.filename, dist.version, dist.sha256, dist.size, None, None, "")


def _clash(files: Iterable[FileEntry], dist: DistFile) -> str | None:
    """Why `dist` (not stored under its own filename) may not join these files, or None. Judged as
    PyPI and installers do, on the normalized name and version: `demo-1.0.0` is release `1.0`
    under another spelling (pip would install it for `demo==1.0`), `FOO.BAR-1.0.tar.gz` is a second
    sdist of `foo-bar 1.0`."""
    identity = file_identity(dist.filename)
    version = Version(dist.version)
    for f in files:
        if f.filename == dist.filename:
            continue
        try:
            same_release = Version(f.version) == version
        except InvalidVersion:
            continue
        if same_release and f.version != dist.version:
            return (
                f"{dist.filename}: version {dist.version} is release {f.version} of {dist.project}, "
                f"already published as {f.version} ({f.filename}); files are immutable: publish a new version"
            )
        if same_release and file_identity(f.filename) == identity:
            what = "sdist" if identity[0] == "sdist" else "wheel for these tags"
            return (
                f"{dist.filename} would be a second {what} of {dist.project} {dist.version}, beside "
                f"{f.filename}; files are immutable: publish a new version"
            )
    return None


def _index_new_files(
    writer: IndexWriter,
    project: str,
    dists: Sequence[DistFile],
    seen: Seen,
    fingerprints: Mapping[str, str],
) -> None:
    """Add the uploaded `dists` to the project JSON, first against what the publish read before its
    uploads (`seen`; a new project was listed then): one round more only if it changed meanwhile."""
    uploaded = upload_time(dt.datetime.now(dt.UTC))

    def add(state: ProjectState) -> ProjectState | None:
        files = state.by_filename()
        for d in dists:
            if d.filename in files:
                continue
            if d.filename in state.removing:
                raise ConflictError(_being_removed(d.filename))
            if clash := _clash(state.files, d):  # another publisher got there first
                raise ConflictError(clash)
        new = [
            FileEntry.of(d, upload_time=uploaded, fingerprint=fingerprints[d.filename])
            for d in dists
            if d.filename not in files
        ]
        return state.with_files([*state.files, *new]) if new else None

    known = {d.filename: d.metadata for d in dists if d.metadata is not None}
    update = writer.update_project(
        project,
        add,
        known=known,
        seen=seen,
        before_create=lambda: ensure_listed(writer, project),  # listed before the page exists (engine.py)
    )
    if update.created:
        # A concurrent `remove` of the project's last file may have unlisted it meanwhile.
        ensure_listed(writer, project)

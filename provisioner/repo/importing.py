"""Import verified upstream files into a project (what `provision mirror` writes), under the engine's CAS.

A mirrored project records where it came from in its project JSON (`_mirror`: {"from": INDEX URL},
model.MIRROR_KEY: a private key, PEP 691 allows them), and its file entries keep the upstream's upload time,
requires-python and yank state. The private-name rule is checked again inside the compare-and-swap:
a project that somebody published into privately meanwhile is never merged with upstream files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from provisioner.errors import ConflictError
from provisioner.repo import layout
from provisioner.repo.model import FileEntry, ProjectState, Yanked, upload_time
from provisioner.repo.publish import ensure_listed
from provisioner.repo.store import WriteItem
from provisioner.repo.writer import IndexWriter


@dataclass(frozen=True)
class MirroredFile:
    """A downloaded, verified and validated upstream distribution, ready to import."""

    path: Path
    project: str
    filename: str
    version: str
    sha256: str
    size: int
    requires_python: str | None
    metadata: bytes | None  # the PEP 658 metadata file (upstream's, else the wheel's); None for sdists
    upload_time: str | None
    yanked: Yanked

    @property
    def metadata_sha256(self) -> str | None:
        import hashlib

        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


@dataclass(frozen=True)
class MirrorStatus:
    """What the repository holds of a project, as the mirror sees it."""

    origin: str | None  # the index it was mirrored from; None: not mirrored
    files: Mapping[str, str] = field(default_factory=dict)  # filename -> sha256

    @property
    def private(self) -> bool:
        """Published here, not mirrored: the mirror must never touch it."""
        return self.origin is None and bool(self.files)


@dataclass
class ImportOutcome:
    added: list[str] = field(default_factory=list)
    yanks_updated: int = 0


def status(writer: IndexWriter, project: str) -> MirrorStatus:
    state, _gen = writer.read_project(project)
    return MirrorStatus(state.mirrored_from, {f.filename: f.sha256 for f in state.files})


def _refuse_private(state: ProjectState, location: str) -> None:
    if state.files and state.mirrored_from is None:
        raise ConflictError(
            f"{state.name} was published privately in {location} meanwhile: refusing to mirror it"
            " (a public package must never shadow a private one); nothing of it was indexed"
        )


# Objects go up in batches of at most this many bytes (held in memory for the batch).
BATCH_BYTES = 256 * 1024 * 1024


def _write_objects(writer: IndexWriter, objects: Sequence[tuple[str, Path | bytes]]) -> list[str]:
    """Create every object (create-only), in batches; the names this call created. An existing
    object with other bytes is a ConflictError (files are immutable), after which nothing of ours stays."""
    created: list[str] = []
    pending: list[tuple[str, Path | bytes]] = list(objects)
    try:
        while pending:
            batch: list[WriteItem] = []
            size = 0
            while pending and (not batch or size < BATCH_BYTES):
                name, source = pending.pop(0)
                data = source.read_bytes() if isinstance(source, Path) else source
                batch.append(WriteItem(name, data, 0))
                size += len(data)
            # Already there with the same bytes is fine; other bytes raise ConflictError.
            writer.create_many([(item.name, item.data) for item in batch], created=created)
    except ConflictError:
        _delete(writer, created)
        raise
    return created


def _delete(writer: IndexWriter, names: Sequence[str]) -> None:
    for name in names:  # unindexed, so no page links them: a reindex must not adopt them either
        writer.store.delete(name)


def import_many(
    writer: IndexWriter,
    groups: Mapping[str, Sequence[MirroredFile]],
    *,
    origin: str,
    yanks: Mapping[str, Mapping[str, Yanked]],
) -> dict[str, ImportOutcome]:
    """Upload the files of every project in `groups` create-only, then index them with their upstream
    state (one batched update for all projects), and bring the yank state of already mirrored files
    (`yanks`: project -> filename -> upstream state) in line with the upstream's."""
    store = writer.store
    projects = sorted(set(groups) | set(yanks))
    for state, _gen in store.together([partial(writer.read_project, p) for p in projects]):
        _refuse_private(state, str(store.location))
    objects: list[tuple[str, Path | bytes]] = []
    dist_objects: list[str] = []
    for project, files in groups.items():
        for f in files:
            dist_objects.append(layout.dist_object(project, f.filename))
            objects.append((dist_objects[-1], f.path))
            if f.metadata is not None:
                objects.append((layout.metadata_object(project, f.filename), f.metadata))
    created = _write_objects(writer, objects)
    now = upload_time(dt.datetime.now(dt.UTC))
    infos = store.together([partial(store.stat, name) for name in dist_objects])  # side by side on GCS
    fingerprints = {
        name: (info.fingerprint if info else "") for name, info in zip(dist_objects, infos, strict=True)
    }
    outcomes = {project: ImportOutcome() for project in projects}

    def change_for(project: str) -> Callable[[ProjectState], ProjectState | None]:
        files, upstream_yanks, outcome = groups.get(project, ()), yanks.get(project, {}), outcomes[project]

        def change(state: ProjectState) -> ProjectState | None:
            _refuse_private(state, str(store.location))
            outcome.added.clear()
            outcome.yanks_updated = 0
            current = state.by_filename()
            entries = []
            for f in state.files:
                want = upstream_yanks.get(f.filename, f.yanked)
                if want != f.yanked:
                    f = f.with_yanked(want)
                    outcome.yanks_updated += 1
                entries.append(f)
            for f in files:
                if f.filename in current:
                    continue  # a concurrent mirror run indexed it (same bytes: the create checked)
                entries.append(
                    FileEntry(
                        filename=f.filename,
                        version=f.version,
                        sha256=f.sha256,
                        size=f.size,
                        requires_python=f.requires_python,
                        metadata_sha256=f.metadata_sha256,
                        upload_time=f.upload_time or now,
                        yanked=f.yanked,
                        fingerprint=fingerprints[layout.dist_object(project, f.filename)],
                    )
                )
                outcome.added.append(f.filename)
            new = state.with_files(entries).mirrored(origin)
            return None if new == state else new

        return change

    try:
        updates = writer.update_projects({p: change_for(p) for p in projects})
    except ConflictError:
        _delete(writer, created)
        raise
    # A concurrent `remove` may have unlisted a project meanwhile.
    ensure_listed(writer, *(p for p, u in updates.items() if u.created))
    return outcomes

"""Import verified upstream files into a project (what `provision mirror` writes), under the engine's CAS.

A mirrored project records where it came from in its project JSON (`_mirror`: {"from": INDEX URL},
model.MIRROR_KEY: a private key, PEP 691 allows them), and its file entries keep the upstream's upload time,
requires-python and yank state. The private-name rule is checked again inside the compare-and-swap:
a project that somebody published into privately meanwhile is never merged with upstream files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ConflictError
from provisioner.repo import layout
from provisioner.repo.model import FileEntry, ProjectState, Yanked, upload_time
from provisioner.repo.publish import ensure_listed
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


def import_files(
    writer: IndexWriter,
    project: str,
    files: Sequence[MirroredFile],
    *,
    origin: str,
    yanks: Mapping[str, Yanked],
) -> ImportOutcome:
    """Upload `files` create-only, then index them with their upstream state, and bring the yank state
    of already mirrored files (`yanks`: filename -> upstream state) in line with the upstream."""
    store = writer.store
    outcome = ImportOutcome()
    state, gen = writer.read_project(project)
    _refuse_private(state, str(store.location))
    created: list[str] = []
    for f in files:
        for name, data in (
            (layout.dist_object(project, f.filename), f.path.read_bytes()),
            (layout.metadata_object(project, f.filename), f.metadata),
        ):
            if data is not None and writer.create_object(name, data):
                created.append(name)
    if gen == 0 and files:
        ensure_listed(writer, project)  # listed before the page exists (see engine.py)
    now = upload_time(dt.datetime.now(dt.UTC))
    fingerprints = {
        f.filename: (
            info.fingerprint if (info := store.stat(layout.dist_object(project, f.filename))) else ""
        )
        for f in files
    }

    def change(state: ProjectState) -> ProjectState | None:
        _refuse_private(state, str(store.location))
        outcome.added.clear()
        outcome.yanks_updated = 0
        current = state.by_filename()
        entries = []
        for f in state.files:
            want = yanks.get(f.filename, f.yanked)
            if want != f.yanked:
                f = f.with_yanked(want)
                outcome.yanks_updated += 1
            entries.append(f)
        for f in files:
            if f.filename in current:
                continue  # a concurrent mirror run indexed it (same bytes: create_object checked)
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
                    fingerprint=fingerprints[f.filename],
                )
            )
            outcome.added.append(f.filename)
        new = state.with_files(entries).mirrored(origin)
        return None if new == state else new

    try:
        update = writer.update_project(project, change)
    except ConflictError:
        for name in created:  # unindexed, so no page links them: a reindex must not adopt them either
            store.delete(name)
        raise
    if update.created:
        ensure_listed(writer, project)  # a concurrent `remove` may have unlisted it meanwhile
    return outcome

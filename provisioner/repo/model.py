"""Pure: the repository's state as typed values, and the one mapping to and from its JSON bytes.

A project's state is stored as `simple/<project>/index.json` (PEP 691 JSON, api-version 1.1, the
source of truth); the root's as `simple/index.json`. Each type has exactly one `to_json`/`from_json`,
and `to_json(from_json(b)) == b` for every page pypapo writes: keys in today's order, the PEP 714
`dist-info-metadata` alias, the private `_version` and `_fingerprint` keys (PEP 691 reserves a leading
underscore for the index), and any other private key carried through unchanged in `extra`, so that a
later field (a mirror's origin, say) survives every rewrite by code that does not know it.

Derived keys (`meta`, `url`, `versions`, the alias) are written from the fields, never read back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

API_VERSION = "1.1"

# The private project key that records a mirrored project's upstream: {"from": INDEX URL}.
MIRROR_KEY = "_mirror"

# PEP 592: False (not yanked), True (yanked without a reason) or the reason.
Yanked = bool | str


def upload_time(when: dt.datetime) -> str:
    """PEP 700 upload-time: ISO 8601 UTC with microseconds and a Z suffix."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes (same document, same bytes)."""
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _private_extra(doc: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    return {k: v for k, v in doc.items() if k.startswith("_") and k not in known}


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


class Distribution(Protocol):
    """What an entry needs of a validated distribution (`dist.DistFile`, `dist.DistSummary`)."""

    @property
    def filename(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def requires_python(self) -> str | None: ...
    @property
    def metadata_sha256(self) -> str | None: ...


@dataclass(frozen=True)
class FileEntry:
    """One distribution file of a project, as its project JSON records it."""

    filename: str
    version: str  # the normalized version (`_version`): pages and `remove NAME VERSION` need no archive
    sha256: str
    size: int
    requires_python: str | None
    metadata_sha256: str | None  # the PEP 658 metadata file's hash; None: no metadata file (sdists)
    upload_time: str
    yanked: Yanked = False
    # A cheap identity of the stored object (GCS `gcs:SIZE:MD5`, directory `dir:SIZE:MTIME_NS`):
    # reindex rehashes only files whose fingerprint changed.
    fingerprint: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown private keys, in order

    _KEYS = frozenset(
        {"filename", "url", "hashes", "requires-python", "core-metadata", "dist-info-metadata",
         "yanked", "size", "upload-time", "_version", "_fingerprint"}
    )  # fmt: skip

    @classmethod
    def of(
        cls, dist: Distribution, *, upload_time: str, fingerprint: str, yanked: Yanked = False
    ) -> FileEntry:
        """The entry of a validated distribution, with what the distribution does not say."""
        return cls(
            filename=dist.filename,
            version=dist.version,
            sha256=dist.sha256,
            size=dist.size,
            requires_python=dist.requires_python,
            metadata_sha256=dist.metadata_sha256,
            upload_time=upload_time,
            yanked=yanked,
            fingerprint=fingerprint,
        )

    def to_json(self) -> dict[str, Any]:
        core: dict[str, str] | bool = {"sha256": self.metadata_sha256} if self.metadata_sha256 else False
        doc: dict[str, Any] = {
            "filename": self.filename,
            "url": quote(self.filename),
            "hashes": {"sha256": self.sha256},
        }
        if self.requires_python:
            doc["requires-python"] = self.requires_python
        doc["core-metadata"] = core
        doc["dist-info-metadata"] = core  # PEP 714: the legacy alias, for older clients
        doc["yanked"] = self.yanked
        doc["size"] = self.size
        doc["upload-time"] = self.upload_time
        doc["_version"] = self.version
        doc["_fingerprint"] = self.fingerprint
        doc.update(self.extra)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FileEntry:
        """Raises ValueError (or KeyError/TypeError) for an entry pypapo could not have written."""
        core = doc["core-metadata"]
        if core is not False and not (isinstance(core, dict) and isinstance(core.get("sha256"), str)):
            raise ValueError("core-metadata must be false or {sha256: ...}")
        yanked = doc["yanked"]
        if not isinstance(yanked, bool | str):
            raise ValueError("yanked must be a boolean or a reason")
        size = doc["size"]
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError("size must be an integer")
        requires_python = doc.get("requires-python")
        if requires_python is not None and not isinstance(requires_python, str):
            raise ValueError("requires-python must be a string")
        return cls(
            filename=_str(doc, "filename"),
            version=_str(doc, "_version"),
            sha256=_str(doc["hashes"], "sha256"),
            size=size,
            requires_python=requires_python or None,
            metadata_sha256=core["sha256"] if core else None,
            upload_time=_str(doc, "upload-time"),
            yanked=yanked,
            fingerprint=_str(doc, "_fingerprint") if "_fingerprint" in doc else "",
            extra=_private_extra(doc, cls._KEYS),
        )

    def with_yanked(self, yanked: Yanked) -> FileEntry:
        return replace(self, yanked=yanked)


def _version_key(v: str) -> tuple[int, Version, str]:
    try:
        return (1, Version(v), v)
    except InvalidVersion:  # never from publish (validated), but reindex may meet odd files
        return (0, Version("0"), v)


def _sorted(files: Iterable[FileEntry]) -> tuple[FileEntry, ...]:
    return tuple(sorted(files, key=lambda f: (_version_key(f.version), f.filename)))


@dataclass(frozen=True)
class ProjectState:
    """A project: its files in PEP 700 order (by version semantics, then filename).

    Build it with `ProjectState.of` (which sorts); `versions` is derived from the files."""

    name: str
    files: tuple[FileEntry, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown private keys, in order
    # Files a `remove` has taken off the page and whose objects it is deleting (`_removing`): until
    # they are gone, nothing (a reindex that listed them, a publisher) may put them back on the page.
    removing: frozenset[str] = frozenset()

    _KEYS = frozenset({"meta", "name", "versions", "files", "_removing"})

    @classmethod
    def of(
        cls,
        name: str,
        files: Iterable[FileEntry],
        extra: Mapping[str, Any] | None = None,
        removing: Iterable[str] = (),
    ) -> ProjectState:
        return cls(name, _sorted(files), extra or {}, frozenset(removing))

    @property
    def versions(self) -> list[str]:
        """PEP 700 `versions`: every version with a file, in file order."""
        return list(dict.fromkeys(f.version for f in self.files))

    @property
    def mirrored_from(self) -> str | None:
        """The index this project is mirrored from (`provision mirror`); None: published here."""
        record = self.extra.get(MIRROR_KEY)
        if isinstance(record, Mapping) and isinstance(record.get("from"), str):
            return record["from"]
        return None

    def mirrored(self, origin: str) -> ProjectState:
        """This state, recorded as mirrored from `origin`."""
        return replace(self, extra={**self.extra, MIRROR_KEY: {"from": origin}})

    def by_filename(self) -> dict[str, FileEntry]:
        return {f.filename: f for f in self.files}

    def with_files(self, files: Iterable[FileEntry]) -> ProjectState:
        return ProjectState.of(self.name, files, self.extra, self.removing)

    def with_removing(self, removing: Iterable[str]) -> ProjectState:
        return replace(self, removing=frozenset(removing))

    @property
    def exists(self) -> bool:
        """Whether the project JSON must exist: files, or removals still under way."""
        return bool(self.files or self.removing)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "meta": {"api-version": API_VERSION},
            "name": self.name,
            "versions": self.versions,
            "files": [f.to_json() for f in self.files],
        }
        if self.removing:
            doc["_removing"] = sorted(self.removing)
        doc.update(self.extra)
        return dumps(doc)

    @classmethod
    def from_json(cls, data: bytes, name: str) -> ProjectState:
        """The state stored for project `name` (which names it, whatever the page says); no bytes
        (no page) is an empty project. Raises ValueError (or KeyError/TypeError) if corrupt."""
        if not data:
            return cls(name)
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise ValueError("not a project page")
        removing = doc.get("_removing", [])
        if not isinstance(removing, list) or not all(isinstance(n, str) for n in removing):
            raise ValueError("_removing must be a list of filenames")
        files = map(FileEntry.from_json, doc["files"])
        return cls.of(name, files, _private_extra(doc, cls._KEYS), removing)


@dataclass(frozen=True)
class RootState:
    """The root index: every project that has a page, sorted."""

    projects: tuple[str, ...] = ()

    @classmethod
    def of(cls, projects: Iterable[str]) -> RootState:
        return cls(tuple(sorted(set(projects))))

    def to_json(self) -> bytes:
        return dumps({"meta": {"api-version": API_VERSION}, "projects": [{"name": p} for p in self.projects]})

    @classmethod
    def from_json(cls, data: bytes) -> RootState:
        """No bytes (no page) is an empty root. Raises ValueError (or KeyError/TypeError) if corrupt."""
        if not data:
            return cls()
        doc = json.loads(data)
        names = [p["name"] for p in doc["projects"]]
        if not all(isinstance(n, str) for n in names):
            raise ValueError("project names must be strings")
        return cls.of(names)


# What a corrupt page raises from `from_json` (json.JSONDecodeError is a ValueError).
CORRUPT = (ValueError, KeyError, TypeError, AttributeError)

"""Pure: a subdir's repodata.json (the channel's source of truth), conda's version order, channeldata.

`repodata.json` is what conda-index writes: `info.subdir`, `packages` (.tar.bz2 records),
`packages.conda` (.conda records), `removed` (filenames taken out of the index whose files stay, so
lock files that name them still install) and `repodata_version` 1. Records carry the index.json fields
plus `md5`, `sha256` and `size`; `timestamp` is in milliseconds, as conda-build writes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from provisioner.repo.conda import layout
from provisioner.repo.conda.package import PackageError, split_filename

Record = dict[str, Any]
REPODATA_VERSION = 1
CHANNELDATA_VERSION = 1


class CorruptRepodata(ValueError):
    """A stored repodata.json or channeldata.json does not parse."""


@dataclass
class Repodata:
    subdir: str
    packages: dict[str, Record] = field(default_factory=dict)  # .tar.bz2 filename -> record
    conda: dict[str, Record] = field(default_factory=dict)  # .conda filename -> record
    removed: set[str] = field(default_factory=set)

    def table(self, filename: str) -> dict[str, Record]:
        return self.conda if filename.endswith(".conda") else self.packages

    def get(self, filename: str) -> Record | None:
        return self.table(filename).get(filename)

    def records(self) -> Iterator[tuple[str, Record]]:
        yield from self.packages.items()
        yield from self.conda.items()

    def add(self, filename: str, record: Record) -> None:
        self.table(filename)[filename] = record
        self.removed.discard(filename)

    def remove(self, filename: str) -> None:
        self.table(filename).pop(filename, None)
        self.removed.add(filename)

    def names(self) -> set[str]:
        return {r["name"] for _fn, r in self.records()} | {name_of(fn) for fn in self.removed}

    def for_name(self, name: str) -> Repodata:
        """The part of this repodata about one package name (what its shard holds)."""
        return Repodata(
            self.subdir,
            {fn: r for fn, r in self.packages.items() if r["name"] == name},
            {fn: r for fn, r in self.conda.items() if r["name"] == name},
            {fn for fn in self.removed if name_of(fn) == name},
        )


def name_of(filename: str) -> str:
    try:
        return split_filename(filename)[0]
    except PackageError:
        return filename.rsplit("-", 2)[0]


def loads(data: bytes, subdir: str) -> Repodata:
    """Parse stored repodata.json (b"": an empty subdir)."""
    if not data:
        return Repodata(subdir)
    try:
        doc = json.loads(data)
        # The parsed objects as they are (no copies: a subdir can hold many thousand records).
        packages, conda = doc.get("packages", {}), doc.get("packages.conda", {})
        removed = set(doc.get("removed", []))
        if not (isinstance(packages, dict) and isinstance(conda, dict)):
            raise ValueError("packages is not an object")
        if any(
            not isinstance(r, dict) or not isinstance(r.get("name"), str)
            for t in (packages, conda)
            for r in t.values()
        ):
            raise ValueError("record without name")
        if any(not isinstance(x, str) for x in removed):
            raise ValueError("removed is not a list of filenames")
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CorruptRepodata(str(exc)) from None
    return Repodata(subdir, packages, conda, removed)


def document(rd: Repodata) -> dict[str, Any]:
    return {
        "info": {"subdir": rd.subdir},
        "packages": dict(sorted(rd.packages.items())),
        "packages.conda": dict(sorted(rd.conda.items())),
        "removed": sorted(rd.removed),
        "repodata_version": REPODATA_VERSION,
    }


def dumps(rd: Repodata) -> bytes:
    # Compact: the file grows with the channel and every client downloads it whole.
    return json.dumps(document(rd), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def empty_template(subdir_placeholder: str) -> str:
    """The empty repodata NGINX answers for a subdir nothing was published into (the subdir name
    replaced by `subdir_placeholder`, e.g. an NGINX variable): byte for byte what dumps() writes."""
    marker = "@@SUBDIR@@"
    return dumps(Repodata(marker)).decode().replace(marker, subdir_placeholder)


# --- conda's version order (conda.models.version.VersionOrder), for "newest" in listings -----------


_PART = re.compile(r"\d+|[^\d]+")


def _atom(part: str) -> tuple[int, int | str]:
    if part.isdigit():
        return (3, int(part))
    if part == "post":
        return (4, 0)
    if part == "dev":
        return (1, "")
    return (2, part)


def _components(text: str) -> list[tuple[tuple[int, int | str], ...]]:
    out = []
    for comp in text.replace("_", ".").split("."):
        atoms = [_atom(p) for p in _PART.findall(comp)] or [(3, 0)]
        if atoms[0][0] != 3:
            atoms.insert(0, (3, 0))  # "1.a1" compares as "1.0a1"
        # Missing atoms count as 0, so "1" sorts above "1a" and equal to "1.0".
        out.append(tuple(atoms + [(3, 0)] * (_DEPTH - len(atoms))))
    return out + [((3, 0),) * _DEPTH] * (_WIDTH - len(out))


_WIDTH, _DEPTH = 8, 6


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key following conda's VersionOrder: epoch, then dot components (numbers above letters,
    'dev' below every other letter, 'post' above everything, missing parts as 0), then the local part."""
    text = version.lower()
    epoch, _, text = text.partition("!") if "!" in text else ("0", "", text)
    main, _, local = text.partition("+")
    return (int(epoch) if epoch.isdigit() else 0, _components(main), _components(local) if local else [])


def newest(versions: Iterable[str]) -> str:
    return max(versions, key=version_key)


# --- channeldata.json ---------------------------------------------------------------------------------


def channeldata_entry(by_subdir: dict[str, Repodata]) -> dict[str, Any] | None:
    """A name's channeldata entry from its records in each subdir (None: no live record anywhere)."""
    live = {s: rd for s, rd in by_subdir.items() if rd.packages or rd.conda}
    if not live:
        return None
    records = [r for rd in live.values() for _fn, r in rd.records()]
    latest = max(records, key=lambda r: (version_key(r["version"]), r.get("build_number", 0)))
    entry: dict[str, Any] = {
        "subdirs": sorted(live),
        "version": latest["version"],
        "timestamp": max(int(r.get("timestamp", 0)) for r in records),
    }
    for key in ("license", "license_family"):
        if latest.get(key):
            entry[key] = latest[key]
    return entry


def load_channeldata(data: bytes) -> dict[str, dict[str, Any]]:
    if not data:
        return {}
    try:
        doc = json.loads(data)
        packages = {str(k): dict(v) for k, v in doc["packages"].items()}
        for v in packages.values():
            if not all(isinstance(s, str) for s in v["subdirs"]):
                raise ValueError("subdirs")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise CorruptRepodata(str(exc)) from None
    return packages


def dump_channeldata(packages: dict[str, dict[str, Any]]) -> bytes:
    subdirs = sorted({s for entry in packages.values() for s in entry["subdirs"]})
    doc = {
        "channeldata_version": CHANNELDATA_VERSION,
        "packages": dict(sorted(packages.items())),
        "subdirs": subdirs,
    }
    # Compact: json's C encoder (indent= falls back to the pure-Python one, slow for many names).
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def channeldata_subdirs(packages: dict[str, dict[str, Any]]) -> list[str]:
    return sorted({s for entry in packages.values() for s in entry["subdirs"]} & set(layout.SUBDIRS))

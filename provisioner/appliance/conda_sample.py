"""Build small conda packages (`.conda` and `.tar.bz2`) with our own tar/zip code, for the demo, the
tests and the benchmarks: no conda-build, no conda-forge, no network.

A package is `info/index.json`, `info/paths.json` (and `info/files`) plus its payload files, laid out
as conda-package-handling writes them: a `.conda` is a stored zip of `metadata.json`,
`info-STEM.tar.zst` and `pkg-STEM.tar.zst`; a `.tar.bz2` is one bzip2 tar of the same members.
Every piece can be overridden, so the hostile cases are built by the same code as the good ones.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

# Deterministic archives: the same inputs give the same bytes (immutability tests rely on it).
MTIME = 1_700_000_000
TIMESTAMP_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Member:
    """One tar member: a regular file (data), a directory, a symlink or a hard link (target)."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | hardlink | fifo
    target: str = ""


def tar_bytes(members: Sequence[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime = MTIME
            info.mode = 0o644
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[m.kind]
            info.linkname = m.target
            if m.kind == "dir":
                info.mode = 0o755
            tar.addfile(info)
    return buf.getvalue()


def index_json(
    name: str, version: str, build: str, subdir: str = "noarch", depends: Sequence[str] = (), **extra: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": list(depends),
        "license": "MIT",
        "subdir": subdir,
        "timestamp": TIMESTAMP_MS,
    }
    if subdir == "noarch":
        doc["noarch"] = "generic"
    else:
        platform, _, arch = subdir.partition("-")
        doc["platform"] = platform
        doc["arch"] = {"64": "x86_64", "32": "x86"}.get(arch, arch)
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def paths_json(files: Mapping[str, bytes]) -> bytes:
    entries = [
        {
            "_path": path,
            "path_type": "hardlink",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_in_bytes": len(data),
        }
        for path, data in sorted(files.items())
    ]
    return json.dumps({"paths": entries, "paths_version": 1}, indent=2).encode()


@dataclass
class Recipe:
    """Everything a package is made of; tests change one piece to make a hostile package."""

    name: str
    version: str
    build: str = "0"
    subdir: str = "noarch"
    depends: Sequence[str] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    index: dict[str, Any] | None = None  # replaces the generated index.json
    index_raw: bytes | None = None  # replaces the index.json bytes (malformed JSON)
    paths_raw: bytes | None = None  # replaces the paths.json bytes
    extra_info: list[Member] = field(default_factory=list)
    extra_pkg: list[Member] = field(default_factory=list)
    omit: Sequence[str] = ()  # info member names to leave out ("info/index.json")

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def payload(self) -> dict[str, bytes]:
        return self.files or {f"share/{self.name}/VERSION": f"{self.name} {self.version}\n".encode()}

    def info_members(self) -> list[Member]:
        index = (
            self.index
            if self.index is not None
            else index_json(self.name, self.version, self.build, self.subdir, self.depends)
        )
        raw = self.index_raw if self.index_raw is not None else json.dumps(index, indent=2).encode()
        files = self.payload()
        members = [
            Member("info/index.json", raw),
            Member("info/paths.json", self.paths_raw if self.paths_raw is not None else paths_json(files)),
            Member("info/files", "".join(f"{p}\n" for p in sorted(files)).encode()),
        ]
        return [m for m in members if m.name not in self.omit] + self.extra_info

    def pkg_members(self) -> list[Member]:
        return [Member(path, data) for path, data in sorted(self.payload().items())] + self.extra_pkg


def conda_bytes(recipe: Recipe, *, members: Mapping[str, bytes] | None = None) -> bytes:
    """A `.conda` archive; `members` replaces the zip's members (hostile cases)."""
    if members is None:
        zstd = zstandard.ZstdCompressor(level=3)
        members = {
            "metadata.json": json.dumps({"conda_pkg_format_version": 2}).encode(),
            f"info-{recipe.stem}.tar.zst": zstd.compress(tar_bytes(recipe.info_members())),
            f"pkg-{recipe.stem}.tar.zst": zstd.compress(tar_bytes(recipe.pkg_members())),
        }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=time.gmtime(MTIME)[:6])
            zf.writestr(info, data)
    return buf.getvalue()


def tar_bz2_bytes(recipe: Recipe) -> bytes:
    return bz2.compress(tar_bytes(recipe.info_members() + recipe.pkg_members()), 9)


def build(out: Path, recipe: Recipe, fmt: str = ".conda") -> Path:
    """Write the package into `out` under its conda filename and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{recipe.stem}{fmt}"
    path.write_bytes(conda_bytes(recipe) if fmt == ".conda" else tar_bz2_bytes(recipe))
    return path


def build_package(
    out: Path,
    name: str,
    version: str,
    *,
    build_string: str = "0",
    subdir: str = "noarch",
    depends: Sequence[str] = (),
    fmt: str = ".conda",
) -> Path:
    """A valid package (noarch generic by default) with one payload file."""
    return build(out, Recipe(name, version, build_string, subdir, depends), fmt)

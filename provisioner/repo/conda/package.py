"""Pure: parse and validate a conda package (`.conda` or `.tar.bz2`) from its name and bytes.

What a publisher could get wrong, or an attacker could try, is caught before anything is written:
- the archive does not open: a `.conda` must be a zip of `info-STEM.tar.zst` and `pkg-STEM.tar.zst`
  (stored, as conda-package-handling and rattler write them) and optionally `metadata.json`; a
  `.tar.bz2` a bzip2 tar;
- `info/index.json` is missing, malformed, or its name/version/build differ from the filename;
- its `subdir` is not one conda knows, or contradicts its `noarch`/`arch`/`platform` fields;
- a member or an `info/paths.json` entry is absolute, has `..`, a backslash or a drive letter; a
  symlink points outside the prefix; a hard link targets an unsafe path; a device file or FIFO;
- decompression bombs: every decompressed stream is bounded (by a ratio of the compressed size and an
  absolute cap), and the info files are read with their own small limits.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import posixpath
import re
import tarfile
import zipfile
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from provisioner.repo.conda import layout
from provisioner.repo.conda.layout import PackageFormat

# Decompression bounds. A real package expands by well under 100x; a bomb by 1000x or more.
MAX_RATIO = 100
RATIO_SLACK = 16 * 1024 * 1024
MAX_UNPACKED = 16 * 1024**3
MAX_INDEX_JSON = 1024 * 1024
MAX_INFO_FILE = 64 * 1024 * 1024  # paths.json of a package with very many files
MAX_METADATA_JSON = 64 * 1024

_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9_.+!]+$")
_BUILD = re.compile(r"^[A-Za-z0-9_.+]+$")
# The index.json keys a repodata record carries (as conda-index writes them), with their types.
_STR_KEYS = (
    "license",
    "license_family",
    "platform",
    "arch",
    "track_features",
    "features",
    "python_site_packages_path",
)
_ARCH_OF = {"64": "x86_64", "32": "x86"}


class PackageError(ValueError):
    """The file is not a valid conda package; the message says why (without the filename)."""


@dataclass(frozen=True)
class CondaPackage:
    """A validated conda package, ready to publish."""

    filename: str
    subdir: str
    name: str
    version: str
    build: str
    format: PackageFormat
    data: bytes
    sha256: str
    md5: str
    # The validated index.json fields of its repodata record (everything but the hashes and size).
    fields: dict[str, Any]

    @property
    def size(self) -> int:
        return len(self.data)

    def record(self, timestamp_ms: int) -> dict[str, Any]:
        """The repodata record; `timestamp_ms` stands in where index.json has no timestamp."""
        record = {**self.fields, "md5": self.md5, "sha256": self.sha256, "size": self.size}
        record.setdefault("timestamp", timestamp_ms)
        return dict(sorted(record.items()))


def split_filename(filename: str) -> tuple[str, str, str, PackageFormat]:
    """`NAME-VERSION-BUILD.conda|.tar.bz2` -> (name, version, build, format); names may contain '-'."""
    if not filename or any(c in filename for c in "/\\\0") or filename.startswith("."):
        raise PackageError("filename must be a plain name (no path separators, no leading dot)")
    if any(ord(c) < 32 for c in filename):
        raise PackageError("filename contains control characters")
    fmt = next((s for s in layout.PACKAGE_SUFFIXES if filename.endswith(s)), None)
    if fmt is None:
        raise PackageError("not a conda package name (NAME-VERSION-BUILD.conda or .tar.bz2)")
    parts = filename[: -len(fmt)].rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        raise PackageError("filename is not NAME-VERSION-BUILD" + fmt)
    name, version, build = parts
    if not _NAME.match(name) or name.startswith("__"):
        raise PackageError(f"package name {name!r} is not valid (lowercase letters, digits, _ . -; no __)")
    if not _VERSION.match(version) or version.startswith((".", "+")) or ".." in version:
        raise PackageError(f"version {version!r} is not a valid conda version")
    if not _BUILD.match(build):
        raise PackageError(f"build string {build!r} is not valid")
    return name, version, build, fmt


# --- bounded streams ----------------------------------------------------------------------------------


class _Bounded(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes came out of `inner`."""

    def __init__(self, inner: IO[bytes], limit: int, what: str) -> None:
        self.inner, self.limit, self.what, self.count = inner, limit, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise PackageError(f"{self.what} decompresses to more than {self.limit:,} bytes (a bomb?)")
        buffer[: len(data)] = data
        return len(data)


def _unpack_limit(compressed: int) -> int:
    return min(MAX_UNPACKED, compressed * MAX_RATIO + RATIO_SLACK)


def _zstd_stream(raw: IO[bytes], compressed: int, what: str) -> IO[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return io.BufferedReader(_Bounded(reader, _unpack_limit(compressed), what), 1 << 16)  # type: ignore[arg-type]


def _bz2_stream(raw: IO[bytes], compressed: int, what: str) -> IO[bytes]:
    return io.BufferedReader(_Bounded(bz2.BZ2File(raw), _unpack_limit(compressed), what), 1 << 16)  # type: ignore[arg-type]


# --- member checks -------------------------------------------------------------------------------------


def check_relative_path(path: str, what: str) -> None:
    """A path inside the environment prefix: relative, no `..`, no backslash, no drive, no NUL."""
    if not path or "\0" in path:
        raise PackageError(f"{what} {path!r} is empty or contains a NUL byte")
    if "\\" in path:
        raise PackageError(f"{what} {path!r} contains a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise PackageError(f"{what} {path!r} is an absolute path")
    if ".." in path.split("/"):
        raise PackageError(f"{what} {path!r} contains '..'")


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    check_relative_path(member.name, f"{where} member")
    if member.issym():
        target = member.linkname
        if not target or target.startswith("/") or "\\" in target or "\0" in target:
            raise PackageError(f"{where} symlink {member.name!r} -> {target!r} points outside the prefix")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise PackageError(f"{where} symlink {member.name!r} -> {target!r} points outside the prefix")
    elif member.islnk():
        check_relative_path(member.linkname, f"{where} hard link {member.name!r} target")
    elif not (member.isreg() or member.isdir()):
        raise PackageError(f"{where} member {member.name!r} is a device, FIFO or other special file")


def _scan_tar(stream: IO[bytes], where: str, keep: tuple[str, ...]) -> dict[str, bytes]:
    """Check every member of a tar stream; return the contents of the members named in `keep`."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _check_member(member, where)
                if member.name in keep and member.isreg():
                    limit = MAX_INDEX_JSON if member.name == "info/index.json" else MAX_INFO_FILE
                    if member.size > limit:
                        raise PackageError(f"{member.name} is larger than {limit:,} bytes")
                    fh = tar.extractfile(member)
                    found[member.name] = fh.read() if fh else b""
    except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
        raise PackageError(f"{where} is not a valid compressed tar ({exc})") from None
    return found


_INFO_FILES = ("info/index.json", "info/paths.json", "info/files")


def _open_conda(data: bytes, stem: str) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"not a valid .conda (zip) archive ({exc})") from None
    info_name, pkg_name = f"info-{stem}.tar.zst", f"pkg-{stem}.tar.zst"
    members = {i.filename: i for i in zf.infolist()}
    unexpected = sorted(set(members) - {info_name, pkg_name, "metadata.json"})
    if unexpected:
        raise PackageError(f"unexpected member {unexpected[0]!r} in the .conda archive")
    for needed in (info_name, pkg_name):
        if needed not in members:
            raise PackageError(f"the .conda archive has no {needed}")
        if members[needed].compress_type != zipfile.ZIP_STORED:
            raise PackageError(f"{needed} is compressed inside the zip (conda stores it as is)")
    if "metadata.json" in members:
        meta = members["metadata.json"]
        if meta.file_size > MAX_METADATA_JSON:
            raise PackageError("metadata.json is too large")
        try:
            version = json.loads(zf.read(meta)).get("conda_pkg_format_version")
        except (ValueError, AttributeError, zipfile.BadZipFile, OSError):
            raise PackageError("metadata.json is not valid JSON") from None
        if version != 2:
            raise PackageError(f"metadata.json has conda_pkg_format_version {version!r}, expected 2")
    try:
        with zf.open(members[info_name]) as raw:
            info = _scan_tar(
                _zstd_stream(raw, members[info_name].file_size, info_name), info_name, _INFO_FILES
            )
        with zf.open(members[pkg_name]) as raw:
            _scan_tar(_zstd_stream(raw, members[pkg_name].file_size, pkg_name), pkg_name, ())
    except (zipfile.BadZipFile, OSError) as exc:  # e.g. a CRC mismatch
        raise PackageError(f"the .conda archive is corrupt ({exc})") from None
    return info


def _open_tar_bz2(data: bytes) -> dict[str, bytes]:
    return _scan_tar(_bz2_stream(io.BytesIO(data), len(data), "the .tar.bz2"), "the .tar.bz2", _INFO_FILES)


# --- index.json and paths ------------------------------------------------------------------------------


def _check_subdir(fields: dict[str, Any]) -> None:
    subdir = fields.get("subdir")
    if subdir not in layout.SUBDIRS:
        raise PackageError(f"info/index.json subdir {subdir!r} is not a known conda subdir")
    noarch = fields.get("noarch")
    if noarch is not None and noarch not in ("generic", "python"):
        raise PackageError(f"info/index.json noarch {noarch!r} is not 'generic' or 'python'")
    if (subdir == layout.NOARCH) != (noarch is not None):
        raise PackageError(
            f"info/index.json says subdir {subdir!r} but noarch {noarch!r}: noarch packages belong in noarch"
        )
    if subdir == layout.NOARCH:
        for key in ("arch", "platform"):
            if fields.get(key) is not None:
                raise PackageError(f"info/index.json is noarch but sets {key} {fields[key]!r}")
        return
    platform, _, arch = subdir.partition("-")
    arch = _ARCH_OF.get(arch, arch)
    if fields.get("platform") not in (None, platform):
        raise PackageError(f"info/index.json platform {fields['platform']!r} contradicts subdir {subdir}")
    if fields.get("arch") not in (None, arch):
        raise PackageError(f"info/index.json arch {fields['arch']!r} contradicts subdir {subdir}")


def parse_index(raw: bytes) -> dict[str, Any]:
    """The repodata fields of an `info/index.json`, type-checked (unknown keys are dropped)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PackageError("info/index.json is not valid JSON") from None
    if not isinstance(doc, dict):
        raise PackageError("info/index.json is not a JSON object")
    fields: dict[str, Any] = {}
    for key in ("name", "version", "build", "subdir"):
        if not isinstance(doc.get(key), str):
            raise PackageError(f"info/index.json has no {key} string")
        fields[key] = doc[key]
    number = doc.get("build_number", 0)
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise PackageError("info/index.json build_number is not a non-negative integer")
    fields["build_number"] = number
    for key in ("depends", "constrains"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise PackageError(f"info/index.json {key} is not a list of match specs")
        if any("\n" in v or "\r" in v for v in value):
            raise PackageError(f"info/index.json {key} has a line break in a match spec")
        fields[key] = value
    for key in _STR_KEYS:
        if doc.get(key) is not None:
            if not isinstance(doc[key], str):
                raise PackageError(f"info/index.json {key} is not a string")
            fields[key] = doc[key]
    if doc.get("noarch") is not None:
        fields["noarch"] = doc["noarch"]
    if "timestamp" in doc:
        ts = doc["timestamp"]
        if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
            raise PackageError("info/index.json timestamp is not a positive integer")
        fields["timestamp"] = ts
    _check_subdir(fields)
    return fields


def _check_paths(info: dict[str, bytes]) -> None:
    if "info/paths.json" in info:
        try:
            doc = json.loads(info["info/paths.json"])
            entries = doc["paths"]
            paths = [e["_path"] for e in entries]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise PackageError("info/paths.json is not a valid paths list") from None
        for path in paths:
            if not isinstance(path, str):
                raise PackageError("info/paths.json has a non-string _path")
            check_relative_path(path, "info/paths.json path")
    elif "info/files" in info:
        for line in info["info/files"].decode("utf-8", "replace").splitlines():
            if line.strip():
                check_relative_path(line.strip(), "info/files path")


def parse_package(filename: str, data: bytes) -> CondaPackage:
    """Validate a conda package; raise PackageError with the reason."""
    name, version, build, fmt = split_filename(filename)
    info = _open_conda(data, filename[: -len(fmt)]) if fmt == ".conda" else _open_tar_bz2(data)
    if "info/index.json" not in info:
        raise PackageError("the package has no info/index.json")
    fields = parse_index(info["info/index.json"])
    for key, expected in (("name", name), ("version", version), ("build", build)):
        if fields[key] != expected:
            raise PackageError(
                f"info/index.json {key} {fields[key]!r} does not match the filename ({expected!r})"
            )
    _check_paths(info)
    return CondaPackage(
        filename=filename,
        subdir=fields["subdir"],
        name=name,
        version=version,
        build=build,
        format=fmt,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        fields=fields,
    )

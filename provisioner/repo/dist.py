"""Pure: parse and validate a distribution file (wheel or sdist) from its name and bytes.

Everything a publisher could get wrong is caught here, before anything is written: a filename that
does not parse or carries path separators, an archive that does not open, member names that try to
escape (absolute, `..`, backslashes, drive letters), links in sdists, missing core metadata, and a
Name/Version in the metadata that does not match the filename.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

# Core metadata larger than this is not plausible and would be served as a page-sized text file.
MAX_METADATA_BYTES = 4 * 1024 * 1024


class DistError(ValueError):
    """The file is not a valid distribution; the message says why (without the filename)."""


@dataclass(frozen=True)
class DistFile:
    """A validated distribution, ready to publish."""

    filename: str
    project: str  # PEP 503 normalized name
    version: str  # normalized (str of packaging Version)
    kind: str  # "wheel" or "sdist"
    data: bytes
    sha256: str
    requires_python: str | None
    # The core metadata file served as FILE.metadata (PEP 658). Wheels only: PyPI does not serve
    # metadata files for sdists (their PKG-INFO is not guaranteed to match a built wheel), so sdists
    # get `core-metadata: false`.
    metadata: bytes | None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


def check_filename(filename: str) -> None:
    if not filename or filename != filename.strip():
        raise DistError("empty filename or surrounding whitespace")
    if any(c in filename for c in "/\\\0") or filename.startswith(".") or filename in (".", ".."):
        raise DistError("filename must be a plain name (no path separators, no leading dot)")
    if any(ord(c) < 32 for c in filename):
        raise DistError("filename contains control characters")


def _check_member_name(name: str) -> None:
    if "\\" in name:
        raise DistError(f"archive member {name!r} contains a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DistError(f"archive member {name!r} is an absolute path")
    if ".." in name.split("/"):
        raise DistError(f"archive member {name!r} contains '..'")
    if "\0" in name:
        raise DistError(f"archive member {name!r} contains a NUL byte")


# A header line as the email parser sees one: a name of printable ASCII without ':' and a colon.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_FIELDS = {b"name": "name", b"version": "version", b"requires-python": "requires_python"}


def _simple_headers(raw_bytes: bytes) -> dict[str, str] | None:
    """Name, Version and Requires-Python of core metadata whose header block is plain: ASCII, LF
    line ends, each of the three fields once and on one line. What packaging's parse_email returns
    for those fields on such input, at a fraction of the cost (reindex parses thousands). None for
    anything else, which then goes through parse_email."""
    head = raw_bytes.split(b"\n\n", 1)[0]
    if b"\r" in head or not head.isascii():
        return None
    found: dict[str, str] = {}
    previous: str | None = "(start)"  # the field the previous line belongs to ("" for others)
    lines = head.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the header block's own line end
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # a continuation of the previous header
            if previous != "":
                return None  # continues one of ours (or nothing): leave it to parse_email
            continue
        m = _HEADER_LINE.match(line)
        if m is None:
            return None
        key = _FIELDS.get(line[: m.end() - 1].lower())
        previous = key or ""
        if key is None:
            continue
        if key in found:
            return None  # repeated: packaging decides what that means
        # compat32: the value is what follows the colon, leading blanks stripped.
        found[key] = line[m.end() :].lstrip(b" \t").decode("ascii")
    if "name" not in found or "version" not in found:
        return None
    return found


def _check_metadata(raw_bytes: bytes, where: str, name: str, version: Version) -> str | None:
    """Check Name/Version of core metadata against the filename; return Requires-Python."""
    if len(raw_bytes) > MAX_METADATA_BYTES:
        raise DistError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    raw = _simple_headers(raw_bytes)
    if raw is None:
        try:
            raw, _unparsed = parse_email(raw_bytes)  # type: ignore[assignment]
        except Exception as exc:  # packaging raises several types on garbage
            raise DistError(f"{where} cannot be parsed: {exc}") from None
    meta_name = raw.get("name")
    meta_version = raw.get("version")
    if not meta_name or not meta_version:
        raise DistError(f"{where} has no Name or no Version")
    if canonicalize_name(meta_name) != canonicalize_name(name):
        raise DistError(f"{where} says Name: {meta_name}, but the filename says {name}")
    try:
        parsed = Version(meta_version)
    except InvalidVersion:
        raise DistError(f"{where} has an invalid Version: {meta_version}") from None
    if parsed != version:
        raise DistError(f"{where} says Version: {meta_version}, but the filename says {version}")
    return raw.get("requires_python")


def _open_zip(data: bytes, check_crc: bool = True) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        bad = zf.testzip() if check_crc else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise DistError(f"not a valid zip archive ({exc})") from None
    if bad is not None:
        raise DistError(f"archive member {bad!r} is corrupt (CRC mismatch)")
    for info in zf.infolist():
        _check_member_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DistError(f"archive member {info.filename!r} is a symbolic link")
    return zf


def _parse_wheel(filename: str, data: bytes, check_crc: bool) -> DistFile:
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise DistError(f"invalid wheel filename ({exc})") from None
    zf = _open_zip(data, check_crc)
    # The .dist-info directory: exactly one at the top level, named after the project and version.
    dist_infos = {
        n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info") and "/" in n
    }
    if len(dist_infos) != 1:
        raise DistError(f"expected exactly one top-level .dist-info directory, found {len(dist_infos)}")
    dist_info = dist_infos.pop()
    di_name, _, di_version = dist_info[: -len(".dist-info")].rpartition("-")
    try:
        di_ok = canonicalize_name(di_name) == name and Version(di_version) == version
    except InvalidVersion:
        di_ok = False
    if not di_ok:
        raise DistError(f"{dist_info} does not match the filename's name and version")
    try:
        metadata = zf.read(f"{dist_info}/METADATA")
    except KeyError:
        raise DistError(f"{dist_info}/METADATA is missing") from None
    if f"{dist_info}/WHEEL" not in zf.namelist():
        raise DistError(f"{dist_info}/WHEEL is missing")
    requires_python = _check_metadata(metadata, f"{dist_info}/METADATA", name, version)
    return DistFile(
        filename=filename,
        project=str(name),
        version=str(version),
        kind="wheel",
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        requires_python=requires_python,
        metadata=metadata,
    )


def _single_root(names: list[str]) -> str:
    roots = {n.split("/", 1)[0] for n in names if n}
    if len(roots) != 1:
        raise DistError(f"an sdist must have exactly one top-level directory, found {len(roots)}")
    return roots.pop()


def _parse_sdist(filename: str, data: bytes, check_crc: bool) -> DistFile:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion) as exc:
        raise DistError(f"invalid sdist filename ({exc})") from None
    if filename.endswith(".zip"):
        zf = _open_zip(data, check_crc)
        names = [n.rstrip("/") for n in zf.namelist()]
        root = _single_root(names)
        try:
            pkg_info = zf.read(f"{root}/PKG-INFO")
        except KeyError:
            raise DistError(f"{root}/PKG-INFO is missing") from None
    else:
        try:
            tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115 - in-memory
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise DistError(f"not a valid .tar.gz archive ({exc})") from None
        for m in members:
            _check_member_name(m.name)
            if m.issym() or m.islnk():
                raise DistError(f"archive member {m.name!r} is a link")
            if not (m.isfile() or m.isdir()):
                raise DistError(f"archive member {m.name!r} is not a regular file or directory")
        names = [m.name.rstrip("/") for m in members]
        root = _single_root(names)
        try:
            member = tf.getmember(f"{root}/PKG-INFO")
            fh = tf.extractfile(member)
            pkg_info = fh.read() if fh else b""
        except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
            raise DistError(f"{root}/PKG-INFO is missing or unreadable ({exc})") from None
    requires_python = _check_metadata(pkg_info, f"{root}/PKG-INFO", name, version)
    return DistFile(
        filename=filename,
        project=str(name),
        version=str(version),
        kind="sdist",
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        requires_python=requires_python,
        metadata=None,
    )


def parse_dist(filename: str, data: bytes, *, check_crc: bool = True) -> DistFile:
    """Validate a distribution. Raises DistError with the reason. `check_crc` decompresses every zip
    member to check its CRC (done on publish; reindex skips it for files publish already checked)."""
    check_filename(filename)
    if filename.endswith(".whl"):
        return _parse_wheel(filename, data, check_crc)
    if filename.endswith((".tar.gz", ".zip")):
        return _parse_sdist(filename, data, check_crc)
    raise DistError("not a distribution: expected a .whl, .tar.gz or .zip file")


@dataclass(frozen=True)
class DistSummary:
    """What an index entry needs from a validated distribution, without its bytes (so it crosses a
    process boundary cheaply)."""

    filename: str
    project: str
    version: str
    sha256: str
    size: int
    requires_python: str | None
    metadata: bytes | None

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


def summarize(filename: str, data: bytes, *, check_crc: bool = True) -> DistSummary:
    """parse_dist, keeping only what the index needs. Raises DistError like parse_dist."""
    d = parse_dist(filename, data, check_crc=check_crc)
    return DistSummary(d.filename, d.project, d.version, d.sha256, d.size, d.requires_python, d.metadata)


def summarize_many(items: list[tuple[str, bytes]], check_crc: bool) -> list[DistSummary | str]:
    """summarize() each file; a DistError becomes its message. The unit of work of a process pool."""
    out: list[DistSummary | str] = []
    for filename, data in items:
        try:
            out.append(summarize(filename, data, check_crc=check_crc))
        except DistError as exc:
            out.append(str(exc))
    return out

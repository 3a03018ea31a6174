"""Pure: parse and validate a distribution file (wheel or sdist) from its name and bytes.

Everything a publisher could get wrong is caught here, before anything is written: a filename that
does not parse or carries path separators, a name that is not a valid (or is a reserved) project name,
an archive that does not open or names a member twice, member names that try to escape (absolute,
`..`, backslashes, drive letters), links in sdists, missing core metadata or RECORD, metadata that is
not UTF-8, a Name/Version in the metadata that does not match the filename, an invalid Requires-Python.

Memory stays bounded whatever the archive inflates to: core metadata is read through a bounded reader,
CRCs are checked in streamed chunks, and a .tar.gz's headers are scanned (streamed) before tarfile may
read an oversized extension header or millions of member headers into memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Literal

from packaging.metadata import parse_email
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidName,
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from provisioner.errors import quoted
from provisioner.repo import layout

# Core metadata larger than this is not plausible and would be served as a page-sized text file.
MAX_METADATA_BYTES = 4 * 1024 * 1024
# Members of one archive: far above any real distribution, and what bounds the memory of listing them.
MAX_MEMBERS = 100_000
# A tar extension header (pax, GNU long name/link) is read whole by tarfile: no real one is this big.
MAX_TAR_HEADER_BYTES = 1024 * 1024


DistKind = Literal["wheel", "sdist"]


class DistError(ValueError):
    """The file is not a valid distribution; the message says why (without the filename)."""


@dataclass(frozen=True)
class DistFile:
    """A validated distribution, ready to publish."""

    filename: str
    project: str  # PEP 503 normalized name
    version: str  # normalized (str of packaging Version)
    kind: DistKind
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
    """A plain file name (the CLI says which file before the reason, quoted when it is not plain)."""
    if not filename or filename != filename.strip():
        raise DistError("empty filename or surrounding whitespace")
    if any(c in filename for c in "/\\\0") or filename.startswith(".") or filename in (".", ".."):
        raise DistError("filename must be a plain name (no path separators, no leading dot)")
    if any(ord(c) < 32 for c in filename):
        raise DistError("filename contains control characters")


def check_project_name(name: str, where: str) -> str:
    """`name` (from the filename or the metadata) as a PEP 503 normalized project name. Refused
    unless packaging accepts it as a distribution name (ASCII letters and digits, `-_.` inside: no
    look-alike Cyrillic or fullwidth letters, no spaces, markup or escapes) and it is not reserved."""
    try:
        project = canonicalize_name(name, validate=True)
    except InvalidName:
        project = ""
    if not project or not name.isascii():  # isascii: older packaging's check was not ASCII-only
        raise DistError(
            f"{where} {quoted(name)} is not a valid project name "
            "(ASCII letters, digits and -_. only, starting and ending with a letter or digit)"
        )
    if layout.is_reserved(project):
        names = ", ".join(sorted(layout.RESERVED_PROJECTS))
        raise DistError(
            f"project name {project} is reserved: it collides with the index's own paths ({names})"
        )
    return project


def _check_member_name(name: str) -> None:
    if "\\" in name:
        raise DistError(f"archive member {name!r} contains a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DistError(f"archive member {name!r} is an absolute path")
    if ".." in name.split("/"):
        raise DistError(f"archive member {name!r} contains '..'")
    if "\0" in name:
        raise DistError(f"archive member {name!r} contains a NUL byte")


def _check_unique(names: Iterable[str]) -> None:
    """Each member once: with two copies, the index (which reads one) and an installer (which may read
    the other) would see different files. PyPI refuses these too."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DistError(f"archive member {name!r} appears more than once")
        seen.add(name)


def _read_bounded(fh: IO[bytes], where: str) -> bytes:
    """A member's bytes, reading at most one byte past the limit (what the archive claims is no bound)."""
    try:
        data = fh.read(MAX_METADATA_BYTES + 1)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise DistError(f"{where} cannot be read ({exc})") from None
    if len(data) > MAX_METADATA_BYTES:
        raise DistError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    return data


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


_FIELD_NAMES = {"name": "Name", "version": "Version", "requires-python": "Requires-Python"}


def _check_metadata(raw_bytes: bytes, where: str, name: str, version: Version) -> str | None:
    """Check Name/Version of core metadata against the filename; return Requires-Python."""
    if len(raw_bytes) > MAX_METADATA_BYTES:
        raise DistError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        # Core metadata is UTF-8. Anything else is refused whole: packaging would quietly drop the
        # field it cannot decode (a Requires-Python lost means a wheel that claims every Python).
        raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DistError(
            f"{where} is not valid UTF-8 (byte {raw_bytes[exc.start]:#04x} at offset {exc.start})"
        ) from None
    raw = _simple_headers(raw_bytes)
    if raw is None:
        try:
            raw, unparsed = parse_email(raw_bytes)  # type: ignore[assignment]
        except Exception as exc:  # packaging raises several types on garbage
            raise DistError(f"{where} cannot be parsed: {exc}") from None
        for key, field in _FIELD_NAMES.items():
            if key in unparsed:
                raise DistError(f"{where} gives {field} more than once")
    meta_name = raw.get("name")
    meta_version = raw.get("version")
    if not meta_name or not meta_version:
        raise DistError(f"{where} has no Name or no Version")
    if check_project_name(meta_name, f"{where} Name") != canonicalize_name(name):
        raise DistError(f"{where} says Name: {quoted(meta_name)}, but the filename says {name}")
    try:
        parsed = Version(meta_version)
    except InvalidVersion:
        raise DistError(f"{where} has an invalid Version: {quoted(meta_version)}") from None
    # The same version spelled alike once normalized: `1.0.0` is not `1.0` (equal as versions, but
    # another release to PyPI, another filename, and no way to replace an immutable one).
    if str(parsed) != str(version):
        raise DistError(f"{where} says Version: {quoted(meta_version)}, but the filename says {version}")
    requires_python = raw.get("requires_python")
    if requires_python is not None:
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier:
            raise DistError(
                f"{where} has an invalid Requires-Python: {quoted(requires_python)} "
                "(a version specifier such as >=3.9 is expected)"
            ) from None
    return requires_python


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise DistError(f"not a valid zip archive ({exc})") from None
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise DistError(f"the archive has {len(infos)} members, more than {MAX_MEMBERS}")
    for info in infos:
        _check_member_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DistError(f"archive member {info.filename!r} is a symbolic link")
    _check_unique(info.filename for info in infos)
    return zf


def _check_crcs(zf: zipfile.ZipFile) -> None:
    """Decompress every member (in chunks: memory does not grow with what they inflate to)."""
    try:
        bad = zf.testzip()
    except _ZIP_ERRORS as exc:
        raise DistError(f"not a valid zip archive ({exc})") from None
    if bad is not None:
        raise DistError(f"archive member {bad!r} is corrupt (CRC mismatch)")


def _read_zip_member(zf: zipfile.ZipFile, name: str) -> bytes | None:
    """A member's bytes (bounded), None if there is no such member."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_METADATA_BYTES:
        raise DistError(f"{name} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        fh = zf.open(info)
    except _ZIP_ERRORS as exc:
        raise DistError(f"{name} cannot be read ({exc})") from None
    with fh:
        return _read_bounded(fh, name)


def _parse_wheel(filename: str, data: bytes, check_crc: bool) -> DistFile:
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise DistError(f"invalid wheel filename ({exc})") from None
    check_project_name(filename.split("-", 1)[0], "the filename's name")
    zf = _open_zip(data)
    # The .dist-info directory: exactly one at the top level, named after the project and version.
    dist_infos = {
        n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info") and "/" in n
    }
    if len(dist_infos) != 1:
        raise DistError(f"expected exactly one top-level .dist-info directory, found {len(dist_infos)}")
    dist_info = dist_infos.pop()
    di_name, _, di_version = dist_info[: -len(".dist-info")].rpartition("-")
    try:
        di_ok = canonicalize_name(di_name) == name and str(Version(di_version)) == str(version)
    except InvalidVersion:
        di_ok = False
    if not di_ok:
        raise DistError(f"{dist_info} does not match the filename's name and version")
    metadata = _read_zip_member(zf, f"{dist_info}/METADATA")
    if metadata is None:
        raise DistError(f"{dist_info}/METADATA is missing")
    for required in ("WHEEL", "RECORD"):  # pip refuses to install a wheel without either
        if f"{dist_info}/{required}" not in zf.NameToInfo:
            raise DistError(f"{dist_info}/{required} is missing")
    requires_python = _check_metadata(metadata, f"{dist_info}/METADATA", name, version)
    if check_crc:  # last: a bad METADATA is refused without inflating the whole archive first
        _check_crcs(zf)
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


_TAR_EXTENSIONS = (b"x", b"g", b"L", b"K")  # pax (per file, global), GNU long name, long link name
_TAR_ERRORS = (tarfile.TarError, gzip.BadGzipFile, zlib.error, OSError, EOFError, ValueError)


def _tar_size(field: bytes) -> int | None:
    """The size field of a tar header (octal, or base-256 when its high bit is set)."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.rstrip(b"\0 ").strip() or b"0", 8)
    except ValueError:
        return None


def _scan_tar(data: bytes) -> None:
    """Walk a .tar.gz's headers in one streamed pass, refusing what would make tarfile's memory (or
    our time) grow with the archive's inflated size: an extension header above MAX_TAR_HEADER_BYTES
    (tarfile reads those whole), more than MAX_MEMBERS members, a top-level PKG-INFO above
    MAX_METADATA_BYTES. Anything malformed is left to tarfile to report."""
    members = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            while len(block := gz.read(tarfile.BLOCKSIZE)) == tarfile.BLOCKSIZE and any(block):
                size = _tar_size(block[124:136])
                if size is None:
                    return
                if block[156:157] in _TAR_EXTENSIONS:
                    if size > MAX_TAR_HEADER_BYTES:
                        raise DistError(
                            f"a tar extension header of {size} bytes (more than {MAX_TAR_HEADER_BYTES})"
                        )
                else:
                    members += 1
                    if members > MAX_MEMBERS:
                        raise DistError(f"the archive has more than {MAX_MEMBERS} members")
                    name = block[:100].split(b"\0", 1)[0]
                    if name.count(b"/") == 1 and name.endswith(b"/PKG-INFO") and size > MAX_METADATA_BYTES:
                        raise DistError(
                            f"{name.decode(errors='replace')} is larger than {MAX_METADATA_BYTES} bytes"
                        )
                skip = -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                while skip > 0:  # streamed, a megabyte at a time
                    got = len(gz.read(min(skip, 1 << 20)))
                    if not got:
                        return
                    skip -= got
    except DistError:
        raise
    except _TAR_ERRORS as exc:
        raise DistError(f"not a valid .tar.gz archive ({exc})") from None


def _parse_sdist(filename: str, data: bytes, check_crc: bool) -> DistFile:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion) as exc:
        raise DistError(f"invalid sdist filename ({exc})") from None
    stem = filename.removesuffix(".zip").removesuffix(".tar.gz")
    check_project_name(stem.rpartition("-")[0], "the filename's name")
    if filename.endswith(".zip"):
        zf = _open_zip(data)
        names = [n.rstrip("/") for n in zf.namelist()]
        root = _single_root(names)
        pkg_info = _read_zip_member(zf, f"{root}/PKG-INFO")
        if pkg_info is None:
            raise DistError(f"{root}/PKG-INFO is missing")
        if check_crc:
            _check_crcs(zf)
    else:
        _scan_tar(data)
        try:
            tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115 - in-memory
            members = tf.getmembers()
        except _TAR_ERRORS as exc:
            raise DistError(f"not a valid .tar.gz archive ({exc})") from None
        for m in members:
            _check_member_name(m.name)
            if m.issym() or m.islnk():
                raise DistError(f"archive member {m.name!r} is a link")
            if not (m.isfile() or m.isdir()):
                raise DistError(f"archive member {m.name!r} is not a regular file or directory")
        _check_unique(m.name.rstrip("/") for m in members)
        names = [m.name.rstrip("/") for m in members]
        root = _single_root(names)
        where = f"{root}/PKG-INFO"
        try:
            member = tf.getmember(where)
        except KeyError:
            raise DistError(f"{where} is missing") from None
        if not member.isfile():
            raise DistError(f"{where} is not a file")
        fh = tf.extractfile(member)
        pkg_info = _read_bounded(fh, where) if fh else b""
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


def file_identity(filename: str) -> tuple[object, ...]:
    """What makes two filenames one file to an installer: the normalized name, the version as
    versions compare (`1.0` is `1.0.0`), and for a wheel its build tag and tags. Every sdist of a
    release is one: PyPI takes one sdist per release (`FOO.BAR-1.0.tar.gz` is `foo_bar-1.0.zip`).
    `filename` must be a valid distribution filename."""
    if filename.endswith(".whl"):
        name, version, build, tags = parse_wheel_filename(filename)
        return ("wheel", name, version, build, frozenset(tags))
    name, version = parse_sdist_filename(filename)
    return ("sdist", name, version)


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

"""Build real, small sample distributions (wheels and sdists) without a build backend.

Used by `provision demo`, the tests and the benchmarks. The wheels are valid py3-none-any wheels that
pip installs: dist-info METADATA, WHEEL and a RECORD with correct sha256 hashes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

# A fixed timestamp keeps builds reproducible: the same arguments give the same bytes.
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)
_TAR_MTIME = 1704067200


def _wheel_name(name: str) -> str:
    """The distribution-name part of a wheel/sdist filename (PEP 427 / binary distribution format)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _module_name(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", name).lower()


def core_metadata(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str | None = None,
    metadata_version: str = "2.1",
    description: str = "",
    description_content_type: str | None = None,
    headers: Iterable[str] = (),
) -> str:
    """Core metadata text (METADATA / PKG-INFO); `description` is the body (the README), `headers`
    more header lines as they are (`Project-URL: Source, https://...`)."""
    lines = [f"Metadata-Version: {metadata_version}", f"Name: {name}", f"Version: {version}"]
    lines.append(f"Summary: {summary or f'Sample distribution {name}'}")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    lines.extend(headers)
    if description_content_type:
        lines.append(f"Description-Content-Type: {description_content_type}")
    return "\n".join(lines) + "\n\n" + description


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel_bytes(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    modules: Mapping[str, str] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    metadata: str | None = None,
) -> bytes:
    """The bytes of a py3-none-any wheel. `metadata` overrides METADATA (to build broken wheels in tests)."""
    if modules is None:
        mod = _module_name(name)
        modules = {f"{mod}/__init__.py": f'__version__ = "{version}"\n'}
    dist_info = f"{_wheel_name(name)}-{version}.dist-info"
    members: list[tuple[str, bytes]] = [(path, text.encode()) for path, text in modules.items()]
    members.extend((extra_files or {}).items())
    meta_text = (
        metadata
        if metadata is not None
        else core_metadata(name, version, requires_python=requires_python, requires_dist=requires_dist)
    )
    members.append((f"{dist_info}/METADATA", meta_text.encode()))
    wheel_text = "Wheel-Version: 1.0\nGenerator: pypapo-sample\nRoot-Is-Purelib: true\nTag: py3-none-any\n\n"
    members.append((f"{dist_info}/WHEEL", wheel_text.encode()))
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members)
    record += f"{dist_info}/RECORD,,\n"
    members.append((f"{dist_info}/RECORD", record.encode()))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in members:
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def _write(dest_dir: Path | str, filename: str, data: bytes) -> Path:
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / filename
    path.write_bytes(data)
    return path


def wheel_filename(name: str, version: str) -> str:
    return f"{_wheel_name(name)}-{version}-py3-none-any.whl"


def build_wheel(
    dest_dir: Path | str,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    modules: Mapping[str, str] | None = None,
    metadata: str | None = None,
) -> Path:
    """Write a pip-installable py3-none-any wheel into dest_dir and return its path (`metadata`:
    its METADATA, as `core_metadata` writes it)."""
    data = wheel_bytes(
        name,
        version,
        requires_python=requires_python,
        requires_dist=requires_dist,
        modules=modules,
        metadata=metadata,
    )
    return _write(dest_dir, wheel_filename(name, version), data)


def sdist_bytes(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    modules: Mapping[str, str] | None = None,
    pkg_info: str | None = None,
    extra_members: Iterable[tarfile.TarInfo] = (),
) -> bytes:
    """The bytes of a .tar.gz sdist: PKG-INFO, a minimal setup.py and the modules."""
    if modules is None:
        mod = _module_name(name)
        modules = {f"{mod}/__init__.py": f'__version__ = "{version}"\n'}
    root = f"{_wheel_name(name)}-{version}"
    meta_text = (
        pkg_info
        if pkg_info is not None
        else core_metadata(
            name,
            version,
            requires_python=requires_python,
            requires_dist=requires_dist,
            metadata_version="2.2",
        )
    )
    packages = sorted({p.split("/")[0] for p in modules if "/" in p})
    setup_py = (
        "from setuptools import setup\n"
        f"setup(name={name!r}, version={version!r}, packages={packages!r},"
        f" python_requires={requires_python!r}, install_requires={list(requires_dist)!r})\n"
    )
    files: list[tuple[str, bytes]] = [
        (f"{root}/PKG-INFO", meta_text.encode()),
        (f"{root}/setup.py", setup_py.encode()),
    ]
    files.extend((f"{root}/{path}", text.encode()) for path, text in modules.items())

    buf = io.BytesIO()
    # mtime=0 in the gzip header too, for reproducible bytes.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tf.addfile(info, io.BytesIO(b"\0" * info.size) if info.isfile() else None)
    return buf.getvalue()


def sdist_filename(name: str, version: str) -> str:
    return f"{_wheel_name(name)}-{version}.tar.gz"


def build_sdist(
    dest_dir: Path | str,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    modules: Mapping[str, str] | None = None,
    pkg_info: str | None = None,
) -> Path:
    """Write a .tar.gz sdist (PKG-INFO + setup.py + modules) into dest_dir and return its path."""
    data = sdist_bytes(
        name,
        version,
        requires_python=requires_python,
        requires_dist=requires_dist,
        modules=modules,
        pkg_info=pkg_info,
    )
    return _write(dest_dir, sdist_filename(name, version), data)

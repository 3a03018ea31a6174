"""Pure: which files of a version a mirror keeps, by `--python-version`, `--platform` and `--no-sdist`.

Inclusive on purpose: a file is kept when it can install on ANY of the Python versions AND on ANY of
the platforms given (none given: every file). Platforms are what a user types:

- `linux_x86_64`: any Linux wheel for that architecture (linux_, manylinux*, musllinux*);
- `manylinux_2_28_aarch64` / `musllinux_1_2_x86_64`: glibc/musl at most that version, legacy aliases
  (manylinux1/2010/2014) included;
- `macosx`: every macOS wheel; `macosx_11_0_arm64`: macOS at most 11.0 for arm64 (universal2 too);
- `win_amd64`, `win32`, `win_arm64`, or any other tag: exactly that tag.
`any` (pure Python) wheels install everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from provisioner.errors import PypapoError

_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MAC_ARCHES = {
    "arm64": {"arm64", "universal2"},
    "x86_64": {"x86_64", "intel", "fat64", "fat3", "universal", "universal2"},
}


@dataclass(frozen=True)
class Narrowing:
    pythons: tuple[Version, ...] = ()  # major.minor
    platforms: tuple[str, ...] = ()
    no_sdist: bool = False

    @property
    def everything(self) -> bool:
        return not self.pythons and not self.platforms and not self.no_sdist


def parse_python(value: str) -> Version:
    if not re.fullmatch(r"3\.\d{1,2}", value):
        raise PypapoError(f"--python-version {value!r} must be like 3.11")
    return Version(value)


def parse_platform(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]+", value):
        raise PypapoError(
            f"--platform {value!r} must be a platform tag like linux_x86_64, manylinux_2_28_aarch64,"
            " macosx or win_amd64"
        )
    return value


def make(pythons: Sequence[str], platforms: Sequence[str], no_sdist: bool) -> Narrowing:
    return Narrowing(
        tuple(parse_python(p) for p in pythons), tuple(parse_platform(p) for p in platforms), no_sdist
    )


def _python_ok(tag: Tag, py: Version) -> bool:
    interp, abi = tag.interpreter, tag.abi
    m = re.fullmatch(r"(py|cp)(\d)(\d*)", interp)
    if not m:
        return False  # pp, ip, graalpy, ...: not CPython
    kind, major, minor = m.group(1), int(m.group(2)), m.group(3)
    if major != py.major:
        return False
    if not minor:
        return kind == "py"
    if kind == "py" or abi == "abi3":
        return int(minor) <= py.minor
    return int(minor) == py.minor


def _glibc(tag: str, family: str) -> tuple[tuple[int, int], str] | None:
    """(version, arch) of a manylinux/musllinux platform tag."""
    if family == "manylinux":
        for legacy, version in _LEGACY_MANYLINUX.items():
            if tag.startswith(legacy + "_"):
                return version, tag[len(legacy) + 1 :]
    m = re.fullmatch(rf"{family}_(\d+)_(\d+)_(\w+)", tag)
    return ((int(m.group(1)), int(m.group(2))), m.group(3)) if m else None


def _platform_ok(tag: str, want: str) -> bool:
    if tag == "any" or tag == want:
        return True
    if want.startswith("linux_"):
        arch = want[len("linux_") :]
        got = _glibc(tag, "manylinux") or _glibc(tag, "musllinux")
        return got is not None and got[1] == arch
    for family in ("manylinux", "musllinux"):
        if want.startswith(family):
            limit, got = _glibc(want, family), _glibc(tag, family)
            return limit is not None and got is not None and got[1] == limit[1] and got[0] <= limit[0]
    if want == "macosx":
        return tag.startswith("macosx_")
    m_want = re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", want)
    m_tag = re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", tag)
    if m_want and m_tag:
        limit = (int(m_want.group(1)), int(m_want.group(2)))
        return (int(m_tag.group(1)), int(m_tag.group(2))) <= limit and m_tag.group(3) in _MAC_ARCHES.get(
            m_want.group(3), {m_want.group(3)}
        )
    return False


def keeps(n: Narrowing, filename: str, requires_python: str | None) -> bool:
    """True if the mirror keeps this file."""
    if n.everything:
        return True
    if n.pythons and requires_python:
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            spec = None
        # A file whose requires-python excludes every wanted Python (its first and a late patch
        # release) installs nowhere we care about.
        if spec is not None and not any(
            spec.contains(Version(f"{p}.{patch}"), prereleases=True) for p in n.pythons for patch in (0, 99)
        ):
            return False
    if not filename.endswith(".whl"):
        return not n.no_sdist
    try:
        _name, _version, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return any(
        (not n.pythons or any(_python_ok(t, p) for p in n.pythons))
        and (not n.platforms or any(_platform_ok(t.platform, w) for w in n.platforms))
        for t in tags
    )

"""Validation of distribution files: everything a publisher can get wrong is refused with a reason."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest

from provisioner.appliance import sample
from provisioner.repo.dist import DistError, parse_dist


def _zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _wheel_members(name: str = "demo", version: str = "1.0") -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(sample.wheel_bytes(name, version))) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_valid_wheel_gives_name_version_hash_and_metadata() -> None:
    data = sample.wheel_bytes("Foo.Bar", "1.0", requires_python=">=3.9")
    dist = parse_dist("foo_bar-1.0-py3-none-any.whl", data)
    assert (dist.project, dist.version, dist.kind) == ("foo-bar", "1.0", "wheel")
    assert dist.sha256 == hashlib.sha256(data).hexdigest()
    assert dist.requires_python == ">=3.9"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert dist.metadata == zf.read("foo_bar-1.0.dist-info/METADATA")


def test_valid_sdist_has_no_metadata_file() -> None:
    dist = parse_dist("foo_bar-2.0.tar.gz", sample.sdist_bytes("foo-bar", "2.0", requires_python=">=3.8"))
    assert (dist.project, dist.version, dist.kind, dist.metadata) == ("foo-bar", "2.0", "sdist", None)
    assert dist.requires_python == ">=3.8"


def test_zip_sdist() -> None:
    members = {"demo-1.0/PKG-INFO": sample.core_metadata("demo", "1.0").encode(), "demo-1.0/setup.py": b""}
    dist = parse_dist("demo-1.0.zip", _zip(members))
    assert (dist.project, dist.kind) == ("demo", "sdist")


@pytest.mark.parametrize(
    ("filename", "data", "reason"),
    [
        ("demo-1.0-py3-none-any.whl", b"not a zip at all", "not a valid zip archive"),
        ("demo-1.0-py3-none-any.whl", sample.wheel_bytes("other", "1.0"), "does not match the filename"),
        (
            "demo-1.0-py3-none-any.whl",
            sample.wheel_bytes("demo", "1.0", metadata=sample.core_metadata("other", "1.0")),
            "says Name: other",
        ),
        (
            "demo-1.0-py3-none-any.whl",
            sample.wheel_bytes("demo", "1.0", metadata=sample.core_metadata("demo", "2.0")),
            "says Version: 2.0",
        ),
        (
            "demo-1.0-py3-none-any.whl",
            sample.wheel_bytes("demo", "1.0", metadata="Metadata-Version: 2.1\n\n"),
            "no Name",
        ),
        ("demo-1.0.whl", sample.wheel_bytes("demo", "1.0"), "invalid wheel filename"),
        ("demo.tar.gz", sample.sdist_bytes("demo", "1.0"), "invalid sdist filename"),
        ("demo-1.0.tar.gz", b"\x1f\x8b garbage", "not a valid .tar.gz"),
        ("demo-1.0.tar.gz", sample.sdist_bytes("demo", "1.0", pkg_info=""), "no Name"),
        ("demo-1.0.exe", b"MZ", "not a distribution"),
        ("../demo-1.0-py3-none-any.whl", sample.wheel_bytes("demo", "1.0"), "plain name"),
        ("sub\\demo-1.0-py3-none-any.whl", sample.wheel_bytes("demo", "1.0"), "plain name"),
    ],
)
def test_bad_distributions_are_refused_with_a_reason(filename: str, data: bytes, reason: str) -> None:
    with pytest.raises(DistError, match=reason.replace(".", r"\.")):
        parse_dist(filename, data)


def test_wheel_without_metadata() -> None:
    members = _wheel_members()
    del members["demo-1.0.dist-info/METADATA"]
    with pytest.raises(DistError, match="METADATA is missing"):
        parse_dist("demo-1.0-py3-none-any.whl", _zip(members))


@pytest.mark.parametrize(
    ("member", "reason"),
    [("../evil.py", "contains '..'"), ("/etc/evil", "absolute"), ("demo\\evil.py", "backslash")],
)
def test_wheel_members_that_escape_are_refused(member: str, reason: str) -> None:
    members = _wheel_members()
    members[member] = b"x"
    with pytest.raises(DistError, match=reason):
        parse_dist("demo-1.0-py3-none-any.whl", _zip(members))


def test_wheel_symlink_member_is_refused() -> None:
    with pytest.raises(DistError, match="symbolic link"):
        parse_dist("demo-1.0-py3-none-any.whl", _zip(_wheel_members(), symlink="demo/link"))


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_tar_member("demo-1.0/../../evil"), "contains '..'"),
        (_tar_member("/demo-1.0/evil"), "absolute"),
        (_tar_member("demo-1.0/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_tar_member("demo-1.0/hard", tarfile.LNKTYPE, "demo-1.0/PKG-INFO"), "is a link"),
        (_tar_member("demo-1.0/dev", tarfile.CHRTYPE), "not a regular file"),
    ],
)
def test_sdist_members_that_escape_are_refused(member: tarfile.TarInfo, reason: str) -> None:
    data = sample.sdist_bytes("demo", "1.0", extra_members=[member])
    with pytest.raises(DistError, match=reason):
        parse_dist("demo-1.0.tar.gz", data)


def test_sdist_with_two_roots_is_refused() -> None:
    data = sample.sdist_bytes("demo", "1.0", extra_members=[_tar_member("elsewhere/file")])
    with pytest.raises(DistError, match="one top-level directory"):
        parse_dist("demo-1.0.tar.gz", data)

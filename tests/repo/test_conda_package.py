"""Conda packages offered to `provision publish`: every bad one is refused with one line, exit 2, and
the location stays byte-identical, on both backends; files are immutable; mixed batches are all or
nothing."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from provisioner.appliance import conda_sample as cs
from provisioner.appliance import sample
from provisioner.appliance.conda_sample import Member, Recipe
from provisioner.cli import main
from provisioner.repo.conda import package
from provisioner.repo.conda.package import PackageError, parse_package
from tests.fixtures.gcs import RepoHandle


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _bomb() -> bytes:
    return b"\0" * (64 * 1024 * 1024)


def _conda_members(recipe: Recipe) -> dict[str, bytes]:
    zstd = zstandard.ZstdCompressor(level=3)
    return {
        "metadata.json": json.dumps({"conda_pkg_format_version": 2}).encode(),
        f"info-{recipe.stem}.tar.zst": zstd.compress(cs.tar_bytes(recipe.info_members())),
        f"pkg-{recipe.stem}.tar.zst": zstd.compress(cs.tar_bytes(recipe.pkg_members())),
    }


def _r(**kw) -> Recipe:
    return Recipe("evil", "1.0", **kw)


def _index(**extra) -> dict:
    return cs.index_json("evil", "1.0", "0", **extra)


def _deflated(recipe: Recipe) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _conda_members(recipe).items():
            zf.writestr(name, data)
    return buf.getvalue()


# (case id, filename, bytes builder, words the one-line error must contain)
CASES: list[tuple[str, str, Callable[[], bytes], str]] = [
    ("not a zip", "evil-1.0-0.conda", lambda: b"PK\x03\x04 not really", "not a valid .conda"),
    ("not a bzip2 tar", "evil-1.0-0.tar.bz2", lambda: b"BZh91AY&SY garbage", "not a valid compressed tar"),
    ("no version in the name", "evil.conda", lambda: cs.conda_bytes(_r()), "NAME-VERSION-BUILD"),
    ("uppercase name", "Evil-1.0-0.conda", lambda: cs.conda_bytes(_r()), "package name"),
    (
        "no index.json",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(omit=["info/index.json"])),
        "no info/index.json",
    ),
    ("index.json not JSON", "evil-1.0-0.conda", lambda: cs.conda_bytes(_r(index_raw=b"{")), "not valid JSON"),
    (
        "name differs",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=cs.index_json("good", "1.0", "0"))),
        "name",
    ),
    (
        "version differs",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=cs.index_json("evil", "2.0", "0"))),
        "version '2.0' does not match",
    ),
    (
        "build differs",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=cs.index_json("evil", "1.0", "1"))),
        "build '1' does not match",
    ),
    (
        "unknown subdir",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=_index(subdir="linux-65", noarch=None))),
        "not a known conda subdir",
    ),
    (
        "noarch subdir without noarch",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=_index(noarch=None))),
        "noarch packages belong in noarch",
    ),
    (
        "platform subdir with noarch",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=cs.index_json("evil", "1.0", "0", "linux-64", noarch="generic"))),
        "noarch packages belong in noarch",
    ),
    (
        "arch contradicts subdir",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=cs.index_json("evil", "1.0", "0", "linux-64", arch="aarch64"))),
        "arch 'aarch64' contradicts subdir linux-64",
    ),
    (
        "noarch with arch",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index=_index(arch="x86_64"))),
        "is noarch but sets arch",
    ),
    (
        "paths.json absolute",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(paths_raw=cs.paths_json({"/etc/passwd": b"x"}))),
        "absolute path",
    ),
    (
        "paths.json dot-dot",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(paths_raw=cs.paths_json({"share/../../x": b"x"}))),
        "contains '..'",
    ),
    (
        "symlink out of the prefix",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(extra_pkg=[Member("lib/x", kind="symlink", target="../../etc/passwd")])),
        "points outside the prefix",
    ),
    (
        "absolute symlink",
        "evil-1.0-0.tar.bz2",
        lambda: cs.tar_bz2_bytes(_r(extra_pkg=[Member("lib/x", kind="symlink", target="/etc/passwd")])),
        "points outside the prefix",
    ),
    (
        "hard link out of the prefix",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(extra_pkg=[Member("lib/x", kind="hardlink", target="../x")])),
        "contains '..'",
    ),
    (
        "member dot-dot",
        "evil-1.0-0.tar.bz2",
        lambda: cs.tar_bz2_bytes(_r(extra_pkg=[Member("../evil", b"x")])),
        "contains '..'",
    ),
    (
        "member absolute",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(extra_pkg=[Member("/tmp/evil", b"x")])),
        "absolute path",
    ),
    ("fifo", "evil-1.0-0.conda", lambda: cs.conda_bytes(_r(extra_pkg=[Member("p", kind="fifo")])), "FIFO"),
    (
        "zstd bomb",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(files={"share/zeros": _bomb()})),
        "decompresses to more than",
    ),
    (
        "bzip2 bomb",
        "evil-1.0-0.tar.bz2",
        lambda: cs.tar_bz2_bytes(_r(files={"share/zeros": _bomb()})),
        "decompresses to more than",
    ),
    (
        "huge index.json",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index_raw=b" " * (package.MAX_INDEX_JSON + 1))),
        "larger than",
    ),
    (
        "extra zip member",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(), members={**_conda_members(_r()), "../x": b"x"}),
        "unexpected member",
    ),
    (
        "no pkg tar",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(
            _r(), members={k: v for k, v in _conda_members(_r()).items() if "pkg-" not in k}
        ),
        "has no pkg-evil-1.0-0.tar.zst",
    ),
    ("deflated member", "evil-1.0-0.conda", lambda: _deflated(_r()), "compressed inside the zip"),
    (
        "wrong format version",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(
            _r(), members={**_conda_members(_r()), "metadata.json": b'{"conda_pkg_format_version": 1}'}
        ),
        "conda_pkg_format_version 1",
    ),
    (
        "truncated bz2",
        "evil-1.0-0.tar.bz2",
        lambda: cs.tar_bz2_bytes(_r())[:-40],
        "not a valid compressed tar",
    ),
    (
        "depends not a list",
        "evil-1.0-0.conda",
        lambda: cs.conda_bytes(_r(index={**_index(), "depends": "python"})),
        "depends is not a list",
    ),
]


def test_good_packages_parse_in_both_formats(tmp_path: Path) -> None:
    for fmt in (".conda", ".tar.bz2"):
        path = cs.build_package(tmp_path, "good", "1.2.3", depends=["dep >=1"], fmt=fmt)
        pkg = parse_package(path.name, path.read_bytes())
        record = pkg.record(1)
        assert (pkg.name, pkg.version, pkg.build, pkg.subdir) == ("good", "1.2.3", "0", "noarch")
        assert record["depends"] == ["dep >=1"] and record["constrains"] == []
        assert (
            record["size"] == path.stat().st_size and len(record["sha256"]) == 64 and len(record["md5"]) == 32
        )
        assert record["timestamp"] == cs.TIMESTAMP_MS


def test_a_platform_package_with_a_relative_symlink_inside_the_prefix_is_fine(tmp_path: Path) -> None:
    recipe = Recipe(
        "tool", "1.0", subdir="linux-64", extra_pkg=[Member("bin/tool", kind="symlink", target="../lib/x")]
    )
    pkg = parse_package(f"{recipe.stem}.conda", cs.conda_bytes(recipe))
    assert pkg.fields["arch"] == "x86_64" and pkg.fields["platform"] == "linux"


@pytest.mark.parametrize(("case", "filename", "build", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_package_is_refused_by_the_parser(
    case: str, filename: str, build: Callable[[], bytes], words: str
) -> None:
    with pytest.raises(PackageError) as exc:
        parse_package(filename, build())
    assert words in str(exc.value)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad-conda")
    out = {}
    for case, filename, build, _words in CASES:
        d = base / case.replace(" ", "-")
        d.mkdir()
        out[case] = d / filename
        out[case].write_bytes(build())
    return out


def test_every_bad_package_leaves_the_location_byte_identical(
    repo: RepoHandle, tmp_path: Path, bad_files: dict[str, Path]
) -> None:
    good = cs.build_package(tmp_path, "good", "1.0")
    wheel = sample.build_wheel(tmp_path, "pyproj", "1.0")
    assert run("publish", "--repo", repo.location, str(good), str(wheel)).exit_code == 0
    before = repo.snapshot()
    assert "conda/noarch/repodata.json" in before
    for case, _filename, _build, words in CASES:
        # Alone, and behind a valid wheel and a valid conda package in the same batch.
        other = cs.build_package(tmp_path / "other", "other", "1.0")
        result = run("publish", "--repo", repo.location, str(wheel), str(other), str(bad_files[case]))
        assert result.exit_code == 2, (case, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad_files[case].name}: "), (case, lines)
        assert words in lines[0], (case, lines)
        assert repo.snapshot() == before, case


def test_same_bytes_are_a_no_op_and_other_bytes_are_refused(repo: RepoHandle, tmp_path: Path) -> None:
    path = cs.build_package(tmp_path, "imm", "1.0")
    assert run("publish", "--repo", repo.location, str(path)).exit_code == 0
    before = repo.snapshot()
    again = run("publish", "--repo", repo.location, str(path))
    assert again.exit_code == 0 and "already present (same bytes)" in again.stdout
    assert repo.snapshot() == before
    other = tmp_path / "other" / path.name
    other.parent.mkdir()
    other.write_bytes(cs.conda_bytes(Recipe("imm", "1.0", files={"share/imm/x": b"different"})))
    wheel = sample.build_wheel(tmp_path, "fresh", "1.0")
    refused = run("publish", "--repo", repo.location, str(wheel), str(other))
    assert refused.exit_code == 3
    assert "already exists" in refused.stderr and "immutable" in refused.stderr
    assert repo.snapshot() == before  # the valid wheel of the batch was not published either
    skipped = run("publish", "--repo", repo.location, "--skip-existing", str(other))
    assert skipped.exit_code == 0 and "skipped" in skipped.stdout
    assert repo.snapshot() == before


def test_a_wheel_conflict_keeps_the_conda_half_of_the_batch_unwritten(
    repo: RepoHandle, tmp_path: Path
) -> None:
    wheel = sample.build_wheel(tmp_path, "pyproj", "1.0")
    assert run("publish", "--repo", repo.location, str(wheel)).exit_code == 0
    before = repo.snapshot()
    clash = tmp_path / "clash" / wheel.name
    clash.parent.mkdir()
    clash.write_bytes(sample.wheel_bytes("pyproj", "1.0", modules={"pyproj.py": "x = 2\n"}))
    conda_pkg = cs.build_package(tmp_path, "newconda", "1.0")
    refused = run("publish", "--repo", repo.location, str(conda_pkg), str(clash))
    assert refused.exit_code == 3
    assert repo.snapshot() == before


def test_a_large_real_payload_is_not_mistaken_for_a_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Incompressible bytes above the absolute slack: the bound is a ratio of the compressed size.
    monkeypatch.setattr(package, "RATIO_SLACK", 256 * 1024)
    big = os.urandom(package.RATIO_SLACK * 4)
    for fmt in (".conda", ".tar.bz2"):
        path = cs.build(tmp_path, Recipe("big", "1.0", files={"share/big": big}), fmt)
        assert parse_package(path.name, path.read_bytes()).size > package.RATIO_SLACK

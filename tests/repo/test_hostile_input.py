"""What an attacker uploads: every hostile distribution is one `error:` line, exit 2, and the repository
byte-for-byte as it was, on both backends (issue 16, items 6-11)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.appliance import sample
from provisioner.cli import SIGPIPE_EXIT, main
from provisioner.errors import quoted
from provisioner.repo import layout
from provisioner.repo.dist import DistError, parse_dist
from provisioner.repo.model import RootState
from provisioner.repo.pages import render_root_html
from tests.fixtures import hostile
from tests.fixtures.gcs import RepoHandle

WHEEL = "demo-1.0-py3-none-any.whl"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def seeded(repo: RepoHandle, tmp_path: Path) -> RepoHandle:
    """A repository holding one project (so that a refusal has something to leave untouched)."""
    good = tmp_path / "good" / "keep-1.0-py3-none-any.whl"
    good.parent.mkdir()
    good.write_bytes(sample.wheel_bytes("keep", "1.0"))
    assert run("publish", "--repo", repo.location, str(good)).exit_code == 0
    return repo


def refused(repo: RepoHandle, path: Path, reason: str) -> str:
    """Publish `path`: one error line containing `reason`, exit 2, nothing stored changed."""
    before = repo.snapshot()
    result = run("publish", "--repo", repo.location, str(path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert reason in lines[0], lines[0]
    assert repo.snapshot() == before
    return lines[0]


def _write(tmp_path: Path, filename: str, data: bytes) -> Path:
    path = tmp_path / "in" / filename
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _sdist(name: str, version: str = "1.0", **kwargs) -> bytes:
    return sample.sdist_bytes(name, version, **kwargs)


# -- item 8: names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "d\u0435mo",  # Cyrillic е
        "\uff44emo",  # fullwidth ｄ
        "p\u00e4ck",
        "\u212aelvin",  # KELVIN SIGN: lower() makes it an ASCII k
        "a b",
        "<script>",
        "a%2Fb",
        "-demo",
    ],
)
def test_invalid_project_names_are_refused(seeded: RepoHandle, tmp_path: Path, name: str) -> None:
    data = _sdist(name, pkg_info=sample.core_metadata(name, "1.0"))
    line = refused(seeded, _write(tmp_path, f"{name}-1.0.tar.gz", data), "is not a valid project name")
    assert quoted(name) in line  # with escapes: a look-alike shows as what it is
    assert name.isascii() or name not in line


@pytest.mark.parametrize("name", ["d\u0435mo", "\uff44emo", "p\u00e4ck"])
def test_invalid_names_in_wheel_filenames_are_refused(seeded: RepoHandle, tmp_path: Path, name: str) -> None:
    data = sample.wheel_bytes(name, "1.0")
    refused(seeded, _write(tmp_path, f"{name}-1.0-py3-none-any.whl", data), "is not a valid project name")


def test_invalid_name_in_metadata_is_refused() -> None:
    data = sample.wheel_bytes("demo", "1.0", metadata=sample.core_metadata("d\u0435mo", "1.0"))
    with pytest.raises(DistError, match="Name 'd\\\\u0435mo' is not a valid project name"):
        parse_dist(WHEEL, data)


# -- item 9: reserved names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["simple", "Simple", "healthz", "ui", "conda"])
def test_names_that_collide_with_the_layout_are_refused(
    seeded: RepoHandle, tmp_path: Path, name: str
) -> None:
    path = _write(tmp_path, sample.wheel_filename(name, "1.0"), sample.wheel_bytes(name, "1.0"))
    refused(seeded, path, f"project name {name.lower()} is reserved")


def test_reserved_names_are_one_list_in_the_layout() -> None:
    assert {"simple", "healthz", "ui", "conda"} <= layout.RESERVED_PROJECTS
    assert all(layout.is_normalized(name) for name in layout.RESERVED_PROJECTS)


# -- item 4 (the file's part): a version spelled otherwise ----------------------------------------------
def test_a_filename_version_spelled_otherwise_than_the_metadata_is_refused(
    seeded: RepoHandle, tmp_path: Path
) -> None:
    # 1.0.0 == 1.0 as versions, but they are two releases with two filenames: never one for the other.
    data = sample.wheel_bytes("demo", "1.0.0", metadata=sample.core_metadata("demo", "1.0"))
    refused(seeded, _write(tmp_path, "demo-1.0.0-py3-none-any.whl", data), "says Version: 1.0")


def test_versions_that_normalize_alike_are_accepted() -> None:
    data = sample.wheel_bytes("demo", "1.0", metadata=sample.core_metadata("demo", "1.0.0a1"))
    with pytest.raises(DistError):
        parse_dist(WHEEL, data)
    data = sample.wheel_bytes("demo", "1.0a1", metadata=sample.core_metadata("demo", "1.0.a1"))
    assert parse_dist("demo-1.0a1-py3-none-any.whl", data).version == "1.0a1"


# -- item 10: RECORD, Requires-Python, UTF-8 ------------------------------------------------------------
def _rewrite_wheel(data: bytes, drop: str = "", replace: dict[str, bytes] | None = None) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename == drop:
                continue
            out.writestr(info, (replace or {}).get(info.filename, src.read(info)))
    return buf.getvalue()


def test_a_wheel_without_record_is_refused(seeded: RepoHandle, tmp_path: Path) -> None:
    data = _rewrite_wheel(sample.wheel_bytes("demo", "1.0"), drop="demo-1.0.dist-info/RECORD")
    refused(seeded, _write(tmp_path, WHEEL, data), "demo-1.0.dist-info/RECORD is missing")


@pytest.mark.parametrize(
    ("requires_python", "reason"),
    [
        (b">=3.x", "invalid Requires-Python: '>=3.x'"),
        (b"python3", "invalid Requires-Python: python3"),
        (b">=3.9\xff", "is not valid UTF-8 (byte 0xff at offset"),
    ],
)
def test_a_bad_requires_python_is_refused(
    seeded: RepoHandle, tmp_path: Path, requires_python: bytes, reason: str
) -> None:
    meta = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Python: " + requires_python + b"\n\n"
    data = _rewrite_wheel(sample.wheel_bytes("demo", "1.0"), replace={"demo-1.0.dist-info/METADATA": meta})
    refused(seeded, _write(tmp_path, WHEEL, data), reason)


def test_requires_python_given_twice_is_refused() -> None:
    meta = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Python: >=3.9\nRequires-Python: <3\n\n"
    with pytest.raises(DistError, match="gives Requires-Python more than once"):
        parse_dist(WHEEL, sample.wheel_bytes("demo", "1.0", metadata=meta))


def test_invalid_utf8_anywhere_in_the_metadata_is_refused() -> None:
    meta = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n\nA description \xc3\x28\n"
    data = _rewrite_wheel(sample.wheel_bytes("demo", "1.0"), replace={"demo-1.0.dist-info/METADATA": meta})
    with pytest.raises(DistError, match="not valid UTF-8"):
        parse_dist(WHEEL, data)


# -- item 7: duplicate members ---------------------------------------------------------------------------
def test_a_wheel_with_two_metadata_members_is_refused(seeded: RepoHandle, tmp_path: Path) -> None:
    members = hostile.wheel_members("demo", "1.0")
    evil = hostile.deflated(sample.core_metadata("demo", "1.0", requires_dist=["evil"]).encode())
    evil = hostile.RawMember("demo-1.0.dist-info/METADATA", evil.deflated, evil.crc, evil.size)
    path = _write(tmp_path, WHEEL, hostile.raw_zip([*members, evil]))
    refused(seeded, path, "archive member 'demo-1.0.dist-info/METADATA' appears more than once")


def test_an_sdist_with_two_pkg_info_members_is_refused(seeded: RepoHandle, tmp_path: Path) -> None:
    info = tarfile.TarInfo("demo-1.0/PKG-INFO")
    evil = sample.core_metadata("demo", "1.0", requires_python="<3").encode()
    info.size = len(evil)
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(_sdist("demo")), mode="r:gz") as src,
        tarfile.open(fileobj=buf, mode="w:gz") as out,
    ):
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        out.addfile(info, io.BytesIO(evil))
    refused(seeded, _write(tmp_path, "demo-1.0.tar.gz", buf.getvalue()), "appears more than once")


# -- item 6: decompression bombs -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filename", "build", "reason"),
    [
        (WHEEL, lambda: hostile.bomb_wheel("demo", "1.0", 2048), "METADATA is larger than"),
        # The headers lie (300 bytes): the reader still stops where the data does.
        (WHEEL, lambda: hostile.bomb_wheel("demo", "1.0", 2048, claimed_size=300), "METADATA cannot be read"),
        ("demo-1.0.tar.gz", lambda: hostile.bomb_sdist("demo", "1.0", 2048), "PKG-INFO is larger than"),
        ("demo-1.0.tar.gz", lambda: hostile.long_name_sdist("demo", "1.0", 2048), "extension header of"),
    ],
)
def test_decompression_bombs_are_refused(filename, build, reason) -> None:
    data = build()
    assert len(data) < 3 * hostile.MB  # a 2 MB file that inflates to 2 GB
    tracemalloc.start()
    try:
        with pytest.raises(DistError, match=reason):
            parse_dist(filename, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * hostile.MB  # what the archive inflates to never reaches memory


# The publish process's address space: far above what publish needs (about 40 MB on the directory
# backend, a few hundred with the Google libraries' threads), far below what the bomb inflates to.
MEMORY_CEILING = 1024 * hostile.MB

_UNDER_CEILING = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from provisioner.cli import main
sys.argv[0] = "provision"
main()
"""


@pytest.mark.parametrize(
    ("filename", "build"),
    [
        (WHEEL, lambda: hostile.bomb_wheel("demo", "1.0", 2048)),
        ("demo-1.0.tar.gz", lambda: hostile.bomb_sdist("demo", "1.0", 2048)),
    ],
)
def test_publish_of_a_bomb_under_a_memory_ceiling_is_one_line(
    seeded: RepoHandle, tmp_path: Path, filename, build
) -> None:
    path = _write(tmp_path, filename, build())
    before = seeded.snapshot()
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_CEILING.format(limit=MEMORY_CEILING), "publish", "--repo",
         seeded.location, str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {filename}: "), proc.stderr
    assert "is larger than" in lines[0]
    assert seeded.snapshot() == before


def test_the_memory_ceiling_is_real() -> None:
    """The ceiling of the test above stops a process that inflates the bomb (as publish used to)."""
    code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CEILING},) * 2); bytes(2 << 30)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "MemoryError" in proc.stderr


# -- item 11: what an error line shows -----------------------------------------------------------------
def test_a_newline_in_a_filename_cannot_forge_an_error_line(seeded: RepoHandle, tmp_path: Path) -> None:
    forged = "x.whl\nerror: the repository is corrupt, run rm -rf"
    path = _write(tmp_path, f"demo-1.0-py3-none-any.whl{forged}.whl", sample.wheel_bytes("demo", "1.0"))
    line = refused(seeded, path, "control characters")
    assert "\\n" in line


def test_error_lines_escape_control_characters_whatever_raises_them(seeded: RepoHandle) -> None:
    result = run("yank", "--repo", seeded.location, "keep\n\x1b[2Kerror: forged", "1.0")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr


def test_list_into_a_closed_pipe_exits_quietly(dir_repo: RepoHandle) -> None:
    # Enough projects that `list` writes more than a pipe holds; the reader is gone before it starts.
    root = Path(dir_repo.location, layout.SIMPLE)
    root.mkdir(parents=True)
    listed = RootState.of(f"project-{i}" for i in range(20000))
    (root / "index.json").write_bytes(listed.to_json())
    (root / "index.html").write_bytes(render_root_html(listed))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("provision")), "list", "--repo", dir_repo.location],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == SIGPIPE_EXIT
    assert stderr == ""

"""`provision publish/yank/unyank/remove/list/reindex` as a user sees them, and real pip on the result."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypi_simple import ProjectPage

from provisioner.appliance import sample
from provisioner.appliance.demo import clean_env
from provisioner.cli import main
from tests.fixtures.gcs import RepoHandle

MakeDist = Callable[..., Path]


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def test_publish_shows_progress_and_a_summary(repo: RepoHandle, make_wheel: MakeDist) -> None:
    a, b = make_wheel("alpha", "1.0"), make_wheel("beta", "1.0")
    first = run("publish", "--repo", repo.location, str(a))
    assert first.exit_code == 0, first.output
    result = run("publish", "--repo", repo.location, str(a), str(b))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "[1/2] alpha-1.0-py3-none-any.whl already present (same bytes), nothing to do"
    assert lines[1].startswith("[2/2] uploaded beta-1.0-py3-none-any.whl (")
    assert lines[-1] == "published 1, already present 1, skipped 0"


def test_repo_comes_from_the_environment(dir_repo: RepoHandle, make_wheel: MakeDist) -> None:
    result = run("publish", str(make_wheel("alpha", "1.0")), env={"PYPAPO_REPO": dir_repo.location})
    assert result.exit_code == 0
    assert run("list", env={"PYPAPO_REPO": dir_repo.location}).stdout == "alpha\n"


def test_invalid_file_is_one_line_without_traceback(repo: RepoHandle, tmp_path: Path) -> None:
    bad = tmp_path / "demo-1.0-py3-none-any.whl"
    bad.write_bytes(sample.wheel_bytes("demo", "1.0", metadata=sample.core_metadata("demo", "9.9")))
    result = run("publish", "--repo", repo.location, str(bad))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: demo-1.0-py3-none-any.whl: demo-1.0.dist-info/METADATA says Version: 9.9, "
        "but the filename says 1.0"
    ]
    assert repo.snapshot() == {}


def test_conflict_exit_code_and_skip_existing(repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path) -> None:
    assert run("publish", "--repo", repo.location, str(make_wheel("demo", "1.0"))).exit_code == 0
    other = tmp_path / "demo-1.0-py3-none-any.whl"
    other.write_bytes(sample.wheel_bytes("demo", "1.0", modules={"demo.py": "x = 2\n"}))
    refused = run("publish", "--repo", repo.location, str(other))
    assert refused.exit_code == 3
    assert "files are immutable" in refused.stderr
    skipped = run("publish", "--repo", repo.location, "--skip-existing", str(other))
    assert skipped.exit_code == 0
    assert skipped.stdout.splitlines()[-1] == "published 0, already present 0, skipped 1"


def test_yank_list_remove_flow(dir_repo: RepoHandle, make_wheel: MakeDist) -> None:
    loc = dir_repo.location
    run("publish", "--repo", loc, str(make_wheel("demo", "1.0")), str(make_wheel("demo", "2.0")))
    assert run("yank", "--repo", loc, "demo", "1.0", "--reason", "CVE").exit_code == 0
    listing = run("list", "--repo", loc, "demo").stdout.splitlines()
    assert listing[0].startswith("1.0  demo-1.0-py3-none-any.whl") and listing[0].endswith("yanked: CVE")
    assert "yanked" not in listing[1]
    assert run("unyank", "--repo", loc, "demo", "1.0").exit_code == 0
    assert "yanked" not in run("list", "--repo", loc, "demo").stdout

    declined = run("remove", "--repo", loc, "demo", "1.0", input="n\n")
    assert declined.exit_code != 0
    page = ProjectPage.from_html("demo", dir_repo.snapshot()["simple/demo/index.html"])
    assert "demo-1.0-py3-none-any.whl" in [p.filename for p in page.packages]
    confirmed = run("remove", "--repo", loc, "demo", "1.0", input="y\n")
    assert confirmed.exit_code == 0 and "removed 1 file\n" in confirmed.stdout
    assert run("remove", "--repo", loc, "--yes", "demo").exit_code == 0
    emptied = run("list", "--repo", loc)
    assert emptied.stdout == ""
    assert emptied.stderr.startswith(f"no projects in {loc}")
    missing = run("list", "--repo", loc, "demo")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no project demo")


def test_reindex_command_prints_what_it_did(repo: RepoHandle, make_wheel: MakeDist) -> None:
    run("publish", "--repo", repo.location, str(make_wheel("demo", "1.0")))
    result = run("reindex", "--repo", repo.location, "--verify")
    assert result.exit_code == 0
    assert result.stdout.startswith(
        "reindexed 1 project, 1 file (0 unchanged by fingerprint, 1 read and hashed"
    )


def test_a_long_reindex_shows_its_progress_and_a_short_one_only_its_summary(
    repo: RepoHandle, make_wheel: MakeDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reindex of a large bucket lists and reads for minutes: once it has run a while
    (PROGRESS_AFTER), it says on stderr how many objects it has listed (in a log, a line every
    LISTING_EVERY seconds), then how many projects are done, a line a tenth (a bar on a terminal)."""
    import provisioner.cli.repo as cli_repo
    import provisioner.repo.reindex as reindexing

    names = [f"proj-{i}" for i in range(5)]
    run("publish", "--repo", repo.location, *(str(make_wheel(n, "1.0")) for n in names))
    short = run("reindex", "--repo", repo.location)
    assert short.exit_code == 0 and short.stderr == ""
    monkeypatch.setattr(cli_repo, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(cli_repo, "LISTING_EVERY", 0.0)
    monkeypatch.setattr(reindexing, "WRITE_GROUP", 2)
    monkeypatch.setattr(reindexing, "LIST_TELL", 3)
    objects = sum(1 for name in repo.snapshot() if name.startswith("simple/"))
    assert objects >= 20  # per project a wheel, its metadata, two pages; the root's pages
    long = run("reindex", "--repo", repo.location, "--verify")
    assert long.exit_code == 0
    listing = [f"reindex: listing the repository, {n} objects so far" for n in range(3, objects + 1, 3)]
    assert long.stderr.splitlines() == listing + [f"reindex: {n} of 5 projects" for n in (0, 2, 4, 5)]
    assert long.stdout.startswith("reindexed 5 projects, 5 files")


_ON_A_TERMINAL = """
import sys
import provisioner.cli.repo as cli_repo
import provisioner.repo.reindex as reindexing
from provisioner.cli import main
cli_repo.PROGRESS_AFTER, reindexing.LIST_TELL, reindexing.WRITE_GROUP = 0.0, 3, 2
main(["reindex", "--repo", sys.argv[1], "--verify"])
"""


def test_a_long_reindex_on_a_terminal_counts_its_listing_in_place_then_shows_a_bar(
    dir_repo: RepoHandle, make_wheel: MakeDist
) -> None:
    """On a terminal the listing's count is one line rewritten in place (no scroll of lines), which
    ends with the total listed; the projects' bar comes below it."""
    import os
    import pty

    names = [f"proj-{i}" for i in range(5)]
    run("publish", "--repo", dir_repo.location, *(str(make_wheel(n, "1.0")) for n in names))
    objects = sum(1 for name in dir_repo.snapshot() if name.startswith("simple/"))
    leader, follower = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-c", _ON_A_TERMINAL, dir_repo.location],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, timeout=120,
    )  # fmt: skip
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0 and proc.stdout.startswith(b"reindexed 5 projects")
    text = shown.decode()
    counts = [f"\rreindex: listing the repository, {n} objects" for n in range(3, objects + 1, 3)]
    listing, _, rest = text.partition(f"\rreindex: listed {objects} objects\r\n")
    assert listing == "".join(counts), text  # one line, rewritten: no newline until it ends
    assert "reindex: 5 projects" in rest and "100%" in rest, text


def test_missing_bucket_via_cli(fake_gcs, make_wheel: MakeDist) -> None:
    result = run("publish", "--repo", "gs://pypapo-missing-bucket", str(make_wheel("demo", "1.0")))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: bucket gs://pypapo-missing-bucket does not exist")


@pytest.mark.clients
def test_pip_reads_the_directory_repository_as_a_file_index(
    dir_repo: RepoHandle, make_wheel: MakeDist, make_sdist: MakeDist, tmp_path: Path
) -> None:
    loc = dir_repo.location
    run("publish", "--repo", loc, str(make_wheel("demo", "1.0")), str(make_wheel("demo", "1.1")))
    run("publish", "--repo", loc, str(make_sdist("demo", "1.1")))
    run("publish", "--repo", loc, str(make_wheel("demo", "1.2")))
    run("publish", "--repo", loc, str(make_wheel("demo", "2.0", requires_python="<3")))
    run("yank", "--repo", loc, "demo", "1.2", "--reason", "broken")
    out = tmp_path / "out"
    index_url = Path(loc, "simple").as_uri() + "/"

    def download(spec: str, *how: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
             *(how or ["--only-binary", ":all:"]), "--index-url", index_url, "-d", str(out), spec],
            env=clean_env(tmp_path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return {p.name for p in out.iterdir()}

    # 2.0 needs Python < 3 and 1.2 is yanked: pip picks 1.1 ...
    assert download("demo") == {"demo-1.1-py3-none-any.whl"}
    # ... and still installs a yanked version pinned exactly (PEP 592).
    assert "demo-1.2-py3-none-any.whl" in download("demo==1.2")
    # The sdist is found too (pip prepares its metadata with this venv's setuptools, offline).
    assert "demo-1.1.tar.gz" in download("demo==1.1", "--no-binary", ":all:", "--no-build-isolation")

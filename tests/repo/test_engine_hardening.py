"""The engine's promises under races, crashes and hand edits (issue 16, items 1-5, and 8's confusables),
on both backends: a page never links an object that is gone, an empty page is corrupt (never empty),
root pages out of step are repaired by any write, a release is judged on its normalized version,
killed writers' temporary files go, and no project name a reader cannot tell from another gets in."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.appliance import sample
from provisioner.cli import main
from provisioner.errors import ConflictError, InvalidDistribution, PypapoError
from provisioner.repo import layout
from provisioner.repo.engine import Repository
from provisioner.repo.store import open_store
from tests.fixtures.gcs import RepoHandle
from tests.repo.invariants import broken_links, listed_files, out_of_step

MakeDist = Callable[..., Path]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class _Hooked:
    """A store that runs `hook` once, just before the first write_many that writes `trigger`."""

    def __init__(self, inner, trigger: str, hook: Callable[[], None]) -> None:
        self.inner, self.trigger, self.hook = inner, trigger, hook

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def write_many(self, items, *, after=()):
        if self.hook is not None and any(item[0] == self.trigger for item in items):
            hook, self.hook = self.hook, None
            hook()
        return self.inner.write_many(items, after=after)


class _KilledAt:
    """A store whose process 'dies' (raises) at the first delete: what `kill -9` of a remove between
    its page write and its deletes leaves behind."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def delete(self, name, **kwargs):
        raise KeyboardInterrupt("killed")


# -- item 1: remove racing reindex ----------------------------------------------------------------------
def test_a_remove_during_reindex_is_not_undone(repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0")])
    # A file uploaded by hand: reindex has something to add, so it writes demo's page.
    extra = make_wheel("demo", "3.0")
    open_store(repo.location).write(f"simple/demo/{extra.name}", extra.read_bytes(), if_generation_match=0)

    # The remove lands after reindex listed and rebuilt demo (2.0 included), before it writes.
    def remove_now() -> None:
        assert Repository.open(repo.location).remove("demo", "2.0") == ["demo-2.0-py3-none-any.whl"]

    hooked = _Hooked(open_store(repo.location), layout.project_json("demo"), remove_now)
    Repository(hooked).reindex(verify=True)  # type: ignore[arg-type]
    snap = repo.snapshot()
    assert hooked.hook is None  # the race happened
    assert sorted(listed_files(snap, "demo")) == ["demo-1.0-py3-none-any.whl", "demo-3.0-py3-none-any.whl"]
    assert broken_links(snap) == []
    assert "simple/demo/demo-2.0-py3-none-any.whl" not in snap
    assert out_of_step(snap) == []


def test_a_removal_under_way_is_not_undone_by_reindex(repo: RepoHandle, make_wheel: MakeDist) -> None:
    """A remove killed after its page write, before its deletes: the file is off the page and stays
    off (reindex, which sees the object, must not put it back); reindex finishes the removal."""
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0")])
    with pytest.raises(KeyboardInterrupt):
        Repository(_KilledAt(open_store(repo.location))).remove("demo", "2.0")  # type: ignore[arg-type]
    snap = repo.snapshot()
    assert "simple/demo/demo-2.0-py3-none-any.whl" in snap  # not deleted yet ...
    assert sorted(listed_files(snap, "demo")) == ["demo-1.0-py3-none-any.whl"]  # ... but off the page
    with pytest.raises(ConflictError, match="is being removed"):
        r.publish([make_wheel("demo", "2.0")])  # nor can a publisher put it back meanwhile

    result = r.reindex(verify=True)
    snap = repo.snapshot()
    assert sorted(listed_files(snap, "demo")) == ["demo-1.0-py3-none-any.whl"]
    assert "simple/demo/demo-2.0-py3-none-any.whl" not in snap
    assert "simple/demo/demo-2.0-py3-none-any.whl.metadata" not in snap
    assert b"_removing" not in snap["simple/demo/index.json"]  # finished
    assert broken_links(snap) == [] and out_of_step(snap) == []
    assert result.projects == 1
    r.publish([make_wheel("demo", "2.0")])  # and now it can come back, deliberately
    assert "demo-2.0-py3-none-any.whl" in listed_files(repo.snapshot(), "demo")


def test_a_killed_remove_of_a_whole_project_is_finished_by_reindex(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("other", "1.0")])
    with pytest.raises(KeyboardInterrupt):
        Repository(_KilledAt(open_store(repo.location))).remove("demo")  # type: ignore[arg-type]
    r.reindex()
    snap = repo.snapshot()
    assert not [n for n in snap if n.startswith("simple/demo/")]
    assert r.projects() == ["other"]


# -- item 2: empty pages are corrupt ----------------------------------------------------------------------
@pytest.mark.parametrize("page", ["simple/demo/index.json", "simple/index.json"])
def test_an_empty_page_is_corrupt_not_empty(repo: RepoHandle, make_wheel: MakeDist, page: str) -> None:
    loc = repo.location
    assert run("publish", "--repo", loc, str(make_wheel("demo", "1.0"))).exit_code == 0
    assert run("yank", "--repo", loc, "demo", "1.0", "--reason", "CVE").exit_code == 0
    store = open_store(loc)
    store.write(page, b"", if_generation_match=store.stat(page).generation)
    before = repo.snapshot()
    # A publish into the project (or of a new project) would have dropped every file (or project).
    wheel = make_wheel("demo", "2.0") if page != layout.ROOT_JSON else make_wheel("fresh", "1.0")
    result = run("publish", "--repo", loc, str(wheel))
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {page} is corrupt: run `provision reindex` to rebuild it\n"
    assert repo.snapshot() == before
    if page != layout.ROOT_JSON:
        assert run("yank", "--repo", loc, "demo", "1.0").exit_code == 1
        assert repo.snapshot() == before
    # reindex rebuilds it from the stored files.
    assert run("reindex", "--repo", loc).exit_code == 0
    files = listed_files(repo.snapshot(), "demo")
    assert "demo-1.0-py3-none-any.whl" in files
    assert "demo" in Repository.open(loc).projects()


# -- item 3: root pages out of step are repaired by any write -----------------------------------------------
@pytest.mark.parametrize("how", ["publish", "yank", "remove"])
def test_a_missing_root_page_is_rewritten_by_the_next_write(
    repo: RepoHandle, make_wheel: MakeDist, how: str
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0")])
    store = open_store(repo.location)
    store.delete(layout.ROOT_HTML)  # a kill between the root JSON and its HTML: every client gets 503
    if how == "publish":
        r.publish([make_wheel("demo", "3.0")])
    elif how == "yank":
        r.set_yanked("demo", "1.0", "broken")
    else:
        r.remove("demo", "2.0")
    snap = repo.snapshot()
    assert layout.ROOT_HTML in snap
    assert out_of_step(snap) == []


def test_a_stale_root_page_is_rewritten_by_the_next_write(repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0")])
    store = open_store(repo.location)
    stale = repo.snapshot()[layout.ROOT_HTML]
    r.publish([make_wheel("other", "1.0")])
    # The root JSON lists `other`, its HTML is the one from before (a kill between the two writes).
    store.write(layout.ROOT_HTML, stale, if_generation_match=store.stat(layout.ROOT_HTML).generation)
    time.sleep(0.01)
    root_json = repo.snapshot()[layout.ROOT_JSON]
    store.write(layout.ROOT_JSON, root_json, if_generation_match=store.stat(layout.ROOT_JSON).generation)
    r.set_yanked("demo", "1.0", None)
    assert out_of_step(repo.snapshot()) == []


# -- item 4: a release is its normalized version --------------------------------------------------------
def _wheel_as(tmp_path: Path, filename: str, name: str, version: str, **kwargs) -> Path:
    path = tmp_path / "as" / filename
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(sample.wheel_bytes(name, version, **kwargs))
    return path


def _sdist_as(tmp_path: Path, filename: str, name: str, version: str) -> Path:
    path = tmp_path / "as" / filename
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(sample.sdist_bytes(name, version, pkg_info=sample.core_metadata(name, version)))
    return path


def test_an_immutable_release_cannot_be_replaced_under_another_spelling(
    repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path
) -> None:
    loc = repo.location
    assert run("publish", "--repo", loc, str(make_wheel("demo", "1.0"))).exit_code == 0
    before = repo.snapshot()
    respelled = _wheel_as(
        tmp_path, "demo-1.0.0-py3-none-any.whl", "demo", "1.0.0", modules={"demo.py": "x=2\n"}
    )
    result = run("publish", "--repo", loc, str(respelled))
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        "error: demo-1.0.0-py3-none-any.whl: version 1.0.0 is release 1.0 of demo, already published as 1.0 "
        "(demo-1.0-py3-none-any.whl); files are immutable: publish a new version"
    ]
    assert repo.snapshot() == before
    # Nor in one batch, nor with --skip-existing.
    assert run("publish", "--repo", loc, "--skip-existing", str(respelled)).exit_code == 3
    batch = [_wheel_as(tmp_path, "fresh-2.0-py3-none-any.whl", "fresh", "2.0")]
    batch.append(_wheel_as(tmp_path, "fresh-2.0.0-py3-none-any.whl", "fresh", "2.0.0"))
    assert run("publish", "--repo", loc, *map(str, batch)).exit_code == 3
    assert repo.snapshot() == before


def test_one_sdist_per_release(repo: RepoHandle, tmp_path: Path) -> None:
    loc = repo.location
    first = _sdist_as(tmp_path, "FOO.BAR-1.0.tar.gz", "FOO.BAR", "1.0")
    assert run("publish", "--repo", loc, str(first)).exit_code == 0
    before = repo.snapshot()
    for other in ("foo-bar-1.0.tar.gz", "foo_bar-1.0.zip"):
        path = _sdist_as(tmp_path, other, "foo-bar", "1.0")
        if other.endswith(".zip"):
            import io
            import zipfile

            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("foo_bar-1.0/PKG-INFO", sample.core_metadata("foo-bar", "1.0"))
            path.write_bytes(buf.getvalue())
        result = run("publish", "--repo", loc, str(path))
        assert result.exit_code == 3, result.output
        assert f"{other} would be a second sdist of foo-bar 1.0, beside FOO.BAR-1.0.tar.gz" in result.stderr
        assert repo.snapshot() == before
    # A wheel of the same release is welcome.
    wheel = _wheel_as(tmp_path, "foo_bar-1.0-py3-none-any.whl", "foo-bar", "1.0")
    assert run("publish", "--repo", loc, str(wheel)).exit_code == 0


# -- item 5: temporary files of killed writers ------------------------------------------------------------
def test_reindex_removes_stale_temporary_files(dir_repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = Repository.open(dir_repo.location)
    r.publish([make_wheel("demo", "1.0")])
    project_dir = Path(dir_repo.location, "simple", "demo")
    stale = project_dir / ".pypapo-tmp-0123456789abcdef"
    stale.write_bytes(b"x" * 100_000)  # half of a killed upload
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    live = project_dir / ".pypapo-tmp-fedcba9876543210"  # a writer at work right now
    live.write_bytes(b"y")
    result = r.reindex()
    assert not stale.exists() and live.exists()
    assert result.temporaries_removed == 1
    assert result.summary().endswith("; removed 1 temporary file of killed writers")


# -- item 8: confusable names -------------------------------------------------------------------------------
@pytest.mark.parametrize("squat", ["demopkg", "dem0-pkg", "d-e-m-o-p-k-g", "dem0_pkg"])
def test_a_name_a_reader_cannot_tell_from_an_existing_one_is_refused(
    repo: RepoHandle, tmp_path: Path, squat: str
) -> None:
    loc = repo.location
    first = _wheel_as(tmp_path, "demo_pkg-1.0-py3-none-any.whl", "demo-pkg", "1.0")
    assert run("publish", "--repo", loc, str(first)).exit_code == 0
    before = repo.snapshot()
    result = run(
        "publish", "--repo", loc, str(_wheel_as(tmp_path, sample.wheel_filename(squat, "1.0"), squat, "1.0"))
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: {sample.wheel_filename(squat, '1.0')}: project name {layout.normalize(squat)} "
        "is too similar to the existing project demo-pkg (they differ only in -_. or in i/l/1, o/0, "
        "as PyPI judges it): use that project, or another name"
    ]
    assert repo.snapshot() == before
    # A name that differs in a letter a reader sees is another project.
    other = _wheel_as(tmp_path, "demo_pkg2-1.0-py3-none-any.whl", "demo-pkg2", "1.0")
    assert run("publish", "--repo", loc, str(other)).exit_code == 0


def test_confusables_of_ill_and_0o(repo: RepoHandle, tmp_path: Path) -> None:
    r = Repository.open(repo.location)
    r.publish([_wheel_as(tmp_path, "i11-1.0-py3-none-any.whl", "i11", "1.0")])
    for squat in ("ill", "l1i", "I-1-1"):
        with pytest.raises(InvalidDistribution, match="too similar to the existing project i11"):
            r.publish([_wheel_as(tmp_path, sample.wheel_filename(squat, "1.0"), squat, "1.0")])
    with pytest.raises(PypapoError, match="too similar"):  # two new look-alikes in one batch
        r.publish(
            [
                _wheel_as(tmp_path, "foo-1.0-py3-none-any.whl", "foo", "1.0"),
                _wheel_as(tmp_path, "f00-1.0-py3-none-any.whl", "f00", "1.0"),
            ]
        )
    assert r.projects() == ["i11"]

"""The derived-outputs seam: an output added once is kept in step by publish, yank, remove and reindex."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from provisioner.repo import outputs as out
from provisioner.repo.engine import Repository
from provisioner.repo.model import ProjectState, RootState
from provisioner.repo.store import open_store
from tests.fixtures.gcs import RepoHandle

MakeDist = Callable[..., Path]


def _site_page(project: str) -> str:
    return f"extra/{project}.txt"


def _render_site_page(state: ProjectState) -> bytes:
    yanked = sum(1 for f in state.files if f.yanked is not False)
    return f"{state.name}: {', '.join(state.versions)} ({yanked} yanked)\n".encode()


def _render_site_list(root: RootState) -> bytes:
    return ("\n".join(root.projects) + "\n").encode()


SITE = out.Outputs(
    project=(*out.DEFAULT.project, out.ProjectOutput(_site_page, _render_site_page)),
    root=(*out.DEFAULT.root, out.RootOutput("extra/index.txt", _render_site_list)),
)


def _repo(location: str) -> Repository:
    return Repository(open_store(location), outputs=SITE)


def test_an_added_output_follows_every_change(repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = _repo(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0"), make_wheel("other", "1.0")])
    snap = repo.snapshot()
    assert snap["extra/demo.txt"] == b"demo: 1.0, 2.0 (0 yanked)\n"
    assert snap["extra/other.txt"] == b"other: 1.0 (0 yanked)\n"
    assert snap["extra/index.txt"] == b"demo\nother\n"

    r.set_yanked("demo", "1.0", "bad")
    assert repo.snapshot()["extra/demo.txt"] == b"demo: 1.0, 2.0 (1 yanked)\n"
    r.remove("demo", "2.0")
    assert repo.snapshot()["extra/demo.txt"] == b"demo: 1.0 (1 yanked)\n"

    r.remove("other")
    snap = repo.snapshot()
    assert "extra/other.txt" not in snap  # deleted with its project
    assert snap["extra/index.txt"] == b"demo\n"


def test_reindex_restores_a_lost_or_stale_output_and_then_finds_nothing_to_do(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    r = _repo(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("other", "1.0")])
    r.set_yanked("demo", "1.0", None)
    before = repo.snapshot()
    store = open_store(repo.location)
    store.delete("extra/demo.txt")
    store.delete("extra/index.txt")
    _data, gen = store.read("extra/other.txt")
    store.write("extra/other.txt", b"stale", if_generation_match=gen)
    result = r.reindex()
    assert repo.snapshot() == before
    assert result.pages_written == 3
    assert r.reindex().pages_written == 0


def test_reindex_from_scratch_writes_every_output(repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = _repo(repo.location)
    r.publish([make_wheel("demo", "1.0")])
    before = repo.snapshot()
    store = open_store(repo.location)
    for name in before:
        if name.endswith(("index.html", "index.json")):
            store.delete(name)
    r.reindex()
    after = repo.snapshot()
    assert after["extra/demo.txt"] == b"demo: 1.0 (0 yanked)\n"
    assert after["extra/index.txt"] == b"demo\n"
    assert after["simple/demo/index.html"] == before["simple/demo/index.html"]

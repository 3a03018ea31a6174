"""Many publishers at once lose nothing, on both backends.

Several OS processes start at the same instant (a barrier) and publish one file per call, so every
call is a read-modify-write race on the shared project page and, for new projects, on the root index;
one more process runs `reindex` meanwhile, which must not drop anything either.
Afterwards every file must be on its project page and every project on the root index, in HTML and
JSON, and each HTML page must be exactly what its JSON renders to.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

from pypi_simple import IndexPage, ProjectPage

from provisioner.appliance import sample
from provisioner.repo.engine import Repository
from provisioner.repo.model import ProjectState, RootState
from provisioner.repo.pages import render_project_html, render_root_html
from tests.fixtures.gcs import RepoHandle

WRITERS = 3  # processes adding versions to one project
CREATORS = 3  # processes creating new projects
PER_PROCESS = 3


def _worker(location: str, paths: list[str], barrier, errors) -> None:
    try:
        repo = Repository.open(location)
        barrier.wait(timeout=60)
        if not paths:  # the reindexer: rebuilds everything while the others publish
            for _ in range(3):
                repo.reindex()
        for path in paths:
            repo.publish([path])
    except BaseException as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
        raise


def _assert_complete(repo: RepoHandle, expected: dict[str, set[str]]) -> None:
    snap = repo.snapshot()
    root = json.loads(snap["simple/index.json"])
    assert {p["name"] for p in root["projects"]} == set(expected)
    assert IndexPage.from_html(snap["simple/index.html"]).projects == sorted(expected)
    assert snap["simple/index.html"] == render_root_html(RootState.of(expected))
    for project, filenames in expected.items():
        page = json.loads(snap[f"simple/{project}/index.json"])
        assert {f["filename"] for f in page["files"]} == filenames
        state = ProjectState.from_json(snap[f"simple/{project}/index.json"], project)
        assert snap[f"simple/{project}/index.html"] == render_project_html(state)
        packages = ProjectPage.from_html(project, snap[f"simple/{project}/index.html"]).packages
        assert {p.filename for p in packages} == filenames
        for p in packages:
            assert p.digests == {"sha256": hashlib.sha256(snap[f"simple/{project}/{p.url}"]).hexdigest()}
            metadata = snap[f"simple/{project}/{p.url}.metadata"]
            assert p.metadata_digests == {"sha256": hashlib.sha256(metadata).hexdigest()}


def test_concurrent_processes_lose_nothing(repo: RepoHandle, tmp_path: Path) -> None:
    jobs: list[list[str]] = []
    expected: dict[str, set[str]] = {}
    for w in range(WRITERS):
        paths = [sample.build_wheel(tmp_path, "shared", f"{w}.{i}") for i in range(PER_PROCESS)]
        jobs.append([str(p) for p in paths])
        expected.setdefault("shared", set()).update(p.name for p in paths)
    for c in range(CREATORS):
        names = [f"new-{c}-{i}" for i in range(PER_PROCESS)]
        paths = [sample.build_wheel(tmp_path, name, "1.0") for name in names]
        jobs.append([str(p) for p in paths])
        expected.update({name: {p.name} for name, p in zip(names, paths, strict=True)})

    jobs.append([])  # plus one process running `reindex` meanwhile
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(jobs))
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(repo.location, job, barrier, errors)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [p.exitcode for p in procs] == [0] * len(procs), failures
    _assert_complete(repo, expected)


def test_two_terminals_publishing_at_once(repo: RepoHandle, tmp_path: Path) -> None:
    # The user-level promise: two `provision publish` commands started together, each with several
    # files into the same project plus a new project of its own.
    batches: list[list[Path]] = []
    expected: dict[str, set[str]] = {"shared": set()}
    for t in range(2):
        files = [sample.build_wheel(tmp_path / f"t{t}", "shared", f"{t + 1}.{i}") for i in range(3)]
        files.append(sample.build_wheel(tmp_path / f"t{t}", f"solo{t}", "1.0"))
        expected["shared"].update(f.name for f in files[:3])
        expected[f"solo{t}"] = {files[3].name}
        batches.append(files)
    provision = str(Path(sys.executable).parent / "provision")
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [provision, "publish", "--repo", repo.location, *map(str, files)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for files in batches
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.splitlines()[-1] == "published 4, already present 0, skipped 0"
    _assert_complete(repo, expected)

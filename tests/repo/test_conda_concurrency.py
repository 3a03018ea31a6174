"""Several processes publishing conda packages into one subdir at once lose nothing, on both backends.

The processes start at one instant (a barrier) and publish one package per call: every call races on
the subdir's repodata.json (the source of truth) and on everything derived from it (repodata.json.zst,
the shard index, channeldata.json). Some add builds to one shared name, some create new names, one
publishes wheels into the Python index of the same location meanwhile, and one runs `reindex`.
Afterwards every package is indexed and every derived object agrees with repodata.json.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from provisioner.appliance import conda_sample as cs
from provisioner.appliance import sample
from provisioner.repo import channels
from provisioner.repo.conda.channel import Channel
from provisioner.repo.engine import Repository
from tests.fixtures.gcs import RepoHandle
from tests.repo.test_conda_channel import assert_consistent

WRITERS = 3  # processes adding builds of one shared name
CREATORS = 2  # processes creating new names
PER_PROCESS = 3


def _worker(location: str, paths: list[str], barrier, errors) -> None:
    try:
        repo = Repository.open(location)
        barrier.wait(timeout=60)
        if not paths:  # the reindexer
            for _ in range(2):
                repo.reindex()
                Channel(repo.store).reindex()
        for path in paths:
            channels.publish(repo, [path])
    except BaseException as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
        raise


def test_concurrent_conda_publishers_lose_nothing(repo: RepoHandle, tmp_path: Path) -> None:
    jobs: list[list[str]] = []
    expected: set[str] = set()
    for w in range(WRITERS):
        paths = [cs.build_package(tmp_path, "shared", f"{w}.{i}") for i in range(PER_PROCESS)]
        jobs.append([str(p) for p in paths])
        expected |= {p.name for p in paths}
    for c in range(CREATORS):
        paths = [cs.build_package(tmp_path, f"new{c}x{i}", "1.0", fmt=".tar.bz2") for i in range(PER_PROCESS)]
        jobs.append([str(p) for p in paths])
        expected |= {p.name for p in paths}
    wheels = [sample.build_wheel(tmp_path, "pyside", f"1.{i}") for i in range(PER_PROCESS)]
    jobs.append([str(p) for p in wheels])
    jobs.append([])  # plus one process reindexing both channels meanwhile

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(jobs))
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(repo.location, job, barrier, errors)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
    assert all(p.exitcode == 0 for p in procs)

    snap = repo.snapshot()
    rd = assert_consistent(snap, "noarch")
    assert {fn for fn, _ in rd.records()} == expected and rd.removed == set()
    channeldata = json.loads(snap["conda/channeldata.json"])
    assert set(channeldata["packages"]) == {"shared"} | {
        f"new{c}x{i}" for c in range(CREATORS) for i in range(PER_PROCESS)
    }
    assert channeldata["packages"]["shared"]["version"] == f"{WRITERS - 1}.{PER_PROCESS - 1}"
    page = json.loads(snap["simple/pyside/index.json"])
    assert {f["filename"] for f in page["files"]} == {w.name for w in wheels}

"""The adversarial harness of issue 16, bounded for the suite: kill -9 at random points, and rounds of
publish + yank + unyank + remove + reindex at once with a lost-update count per operation (zero).

PYPAPO_HARNESS_TRIALS / PYPAPO_HARNESS_ROUNDS raise the counts for a longer run (the issue's: 80 and 46).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from provisioner.appliance import sample
from provisioner.repo.engine import Repository
from provisioner.repo.store import open_store
from tests.fixtures.gcs import RepoHandle
from tests.repo.invariants import broken_links, listed_files, out_of_step, unlisted_pages
from tests.repo.test_site import _consistent, _served

TRIALS = int(os.environ.get("PYPAPO_HARNESS_TRIALS", "5"))
ROUNDS = int(os.environ.get("PYPAPO_HARNESS_ROUNDS", "3"))

# A writer doing what users do, in a loop, until it is killed.
_WORKER = """
import random, sys
from pathlib import Path
from provisioner.appliance import sample
from provisioner.repo.engine import Repository
location, dists = sys.argv[1], Path(sys.argv[2])
repo = Repository.open(location)
print("ready", flush=True)
rng = random.Random()
for i in range(10**6):
    project = f"p{rng.randrange(3)}"
    version = f"1.{rng.randrange(6)}"
    try:
        op = rng.randrange(4)
        if op == 0:
            wheel = sample.build_wheel(dists, project, version)
            repo.publish([wheel, sample.build_sdist(dists, project, version)], skip_existing=True)
        elif op == 1:
            repo.set_yanked(project, version, "harness", yanked=rng.random() < 0.5)
        else:
            if op == 2:
                repo.remove(project, version)
            else:
                repo.publish([sample.build_wheel(dists, project, version)])
    except Exception:
        pass  # no such project/version, or being removed: the next operation
"""


def _check_consistent(repo: RepoHandle, when: str) -> dict[str, bytes]:
    snap = repo.snapshot()
    for name, data in snap.items():
        if name.endswith("index.json"):
            json.loads(data)  # never half-written
    assert broken_links(snap) == [], f"{when}: a page links a file that is gone"
    assert unlisted_pages(snap) == [], f"{when}: a project page the root does not list"
    return snap


def test_kill_9_at_random_points_loses_nothing(repo: RepoHandle, tmp_path: Path) -> None:
    dists = tmp_path / "dists"
    rng = random.Random(os.environ.get("PYPAPO_HARNESS_SEED"))
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, repo.location, str(dists)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        before = _check_consistent(repo, f"trial {trial}, right after kill -9")
        kept = {p: set(listed_files(before, p)) for p in ("p0", "p1", "p2")}
        Repository.open(repo.location).reindex()
        after = _check_consistent(repo, f"trial {trial}, after reindex")
        assert out_of_step(after) == [], f"trial {trial}: reindex left pages out of step"
        # The site's list too: every project once, in order, as its shard says (test_site.py).
        listed = {n.split("/")[1] for n in after if n.count("/") == 2 and n.endswith("/index.json")}
        assert set(_consistent(_served(after))) == listed
        for p, files in kept.items():  # reindex keeps what the pages listed (nothing lost)
            assert files <= set(listed_files(after, p)), f"trial {trial}: reindex lost files of {p}"


def test_mixed_rounds_lose_no_update(repo: RepoHandle, tmp_path: Path) -> None:
    """Each round, at once: a publish, a yank, an unyank, a remove and a reindex (--verify, with a file
    uploaded by hand to index, so that it writes the project page). Every operation that succeeded
    must be visible afterwards."""
    dists = tmp_path / "dists"
    r = Repository.open(repo.location)
    r.publish([sample.build_wheel(dists, "demo", f"1.{i}") for i in range(30)])
    lost: Counter[str] = Counter()
    for rnd in range(ROUNDS):
        r.set_yanked("demo", "1.1", "old", yanked=True)
        r.set_yanked("demo", "1.0", None, yanked=False)
        gone = f"1.{2 + rnd}"
        fresh = sample.build_wheel(dists, "demo", f"2.{rnd}")
        by_hand = sample.build_wheel(dists, "demo", f"3.{rnd}")
        open_store(repo.location).write(
            f"simple/demo/{by_hand.name}", by_hand.read_bytes(), if_generation_match=0
        )
        errors = _at_once(
            repo.location,
            [
                lambda x, w=fresh: x.publish([w]),
                lambda x: x.set_yanked("demo", "1.0", "bad", yanked=True),
                lambda x: x.set_yanked("demo", "1.1", None, yanked=False),
                lambda x, v=gone: x.remove("demo", v),
                lambda x: x.reindex(verify=True),
            ],
        )
        assert not errors, errors
        snap = _check_consistent(repo, f"round {rnd}")
        files = listed_files(snap, "demo")
        site = _consistent(_served(snap))  # demo's row once
        lost["site"] += site["demo"].releases != len({f["_version"] for f in files.values()})
        lost["publish"] += fresh.name not in files
        lost["yank"] += files["demo-1.0-py3-none-any.whl"]["yanked"] != "bad"
        lost["unyank"] += files["demo-1.1-py3-none-any.whl"]["yanked"] is not False
        lost["remove"] += (
            f"demo-{gone}-py3-none-any.whl" in files or f"simple/demo/demo-{gone}-py3-none-any.whl" in snap
        )
        lost["reindex"] += by_hand.name not in files
    print(f"lost updates over {ROUNDS} rounds on {repo.backend}: {dict(lost)}")
    assert set(lost) == {"publish", "yank", "unyank", "remove", "reindex", "site"}
    assert all(n == 0 for n in lost.values()), lost


def _at_once(location: str, operations: list) -> list[BaseException]:
    """Run each operation (on its own Repository) in its own thread, all released at once."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(operations))

    def go(fn) -> None:
        start.wait()
        try:
            fn(Repository.open(location))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(fn,)) for fn in operations]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors

#!/usr/bin/env python3
"""Benchmark the browsable site (ui/) that the engine writes beside the index.

1. Publishing one wheel with the site against without it (`Repository(site=False)`), into the
   repository of 2,000 projects / 20,000 wheels, as a new version of an existing project: goal <= 1.3x.
2. A full `reindex` from scratch of those 20,000 wheels *including the site*, against dumb-pypi
   generating its own site for the same wheels (fed the same information: see bench_engine.py):
   goal >= 2x faster.
3. The bytes of the list's head page, an older page, a search shard (and all 16), and of a project
   page with 40 releases, served plain and as stored (gzip'd: what a browser gets); and the bytes
   one publish writes of the site.

Every wheel carries a realistic Markdown README (headings, a code block, a list, a table; ~2.5 kB),
so the site renders what a real repository would make it render. The repository is built once and
cached (default bench/.cache-site, git-ignored). Usage:

    .venv/bin/python bench/bench_site.py [--projects 2000] [--per-project 10] [--runs 9]
    .venv/bin/python bench/bench_site.py --publish-only --against /tmp/old-pypapo   # before/after
    .venv/bin/python bench/bench_site.py --reindex-only --against /tmp/old-pypapo   # figure 2 alone
    .venv/bin/python bench/bench_site.py --publish-only --gcs                       # on fake-gcs too
    .venv/bin/python bench/bench_site.py --weight-only                              # figure 3 alone
    .venv/bin/python bench/bench_site.py --publish-only --gcs-rtt 20 50 --gcs-rate 20   # as root: a WAN

Figure 1 runs in worker processes, one per pypapo tree, publishing into a hard-linked copy of the
cached repository (the cache itself is never written) in turns, each round in a random order.
`--against TREE` (a checkout of another pypapo version, e.g. `git worktree add /tmp/old main~5`)
times figures 1 and 2 for this code and that one in one run, under the same load. `--gcs` times
figure 1 again on fake-gcs-server through the real google-cloud-storage client (the GCS backend:
one HTTP request per object, on loopback), into a bucket holding the copy's pages and site (every
project's JSON and HTML, the site's list, aggregate and pages, and project 7's files; not the
other 19,990 wheels, which a publish never reads).

`--gcs-rtt MS [MS ...]` (root) models what the product does: publishing from a laptop or a CI
runner into a GCS bucket, where every request is a round trip and the uplink is limited. After the
directory and loopback figures it times figure 1 again, once per round trip asked for, on a
fake-gcs-server started inside a network namespace this bench creates (bench/wan.py: nothing in it
but loopback and a point-to-point link to this namespace; removed at the end, on Ctrl-C and SIGTERM
too, and a killed run's leftovers by the next run). Each packet across the link waits half the
round trip, +- `--gcs-jitter` / 2 (default 10 % of the round trip), order kept; with `--gcs-rate
MBIT` each direction is serialized at that rate (`--gcs-down-rate` for server to client). The
kernels' TCP at both ends sees the link, so connection set-up and slow start after idle pay it too.
The bucket is filled from inside the namespace, past the link. Beside each GCS figure it prints
what one publish sends, counted in the worker at the client: HTTP requests by method, the rounds
they took (requests in flight side by side count once), new connections, and the bytes up and down
(HTTP: request and status lines, headers, bodies; not TCP/IP headers, and no TLS, which fake-gcs
does not speak), with the time those bytes take at the link's rate; `--gcs-trace` prints one
publish's requests too, when each started and ended. The worker keeps one client for all its
publishes (warm connections); `--gcs-cold` gives each timed publish a new one, as each `provision
publish` process has.

The defaults' basis. No Google document gives a per-request latency for GCS; what is public:
Google's Performance Atlas on Cloud Storage says the per-request overhead dominates uploads of
small objects; one published `gsutil perfdiag` run from outside Google's network
(gist.github.com/markvincze/6b652e5c2052a3fd9932b8df75d6cafe) took 35-75 ms for a metadata request,
110-230 ms for a 1 kB download and 170-450 ms for an empty upload. `--gcs-rtt` with no value runs
20 ms (a CI runner in or near the bucket's region, GCS's own time included) and 50 ms (a laptop
over the internet). Rates: a laptop's uplink is 10-50 Mbit/s; the default is no limit (a CI runner
in a region). Limits of the model: fake-gcs-server answers in about a millisecond, where GCS takes
tens of ms itself (more for a write than for a read): here the round trip stands for both, so a
new connection's handshake pays the whole of it, where on GCS it pays only the network's part
(and real GCS adds TLS: one more round trip per new connection, counted in the figures' "new
connections"). The forwarder is a userspace process (the kernel has no sch_netem): on a loaded
machine the scheduler adds a millisecond or two per crossing.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import ensure_dumb_pypi, peer_package_list, run_dumb_pypi
from wan import LinkShape, Traffic, WanLink
from wan import unavailable as wan_unavailable

from provisioner.appliance import sample
from provisioner.repo import layout
from provisioner.repo.engine import Repository

README = """# {name}

{name} does one thing well: it turns configuration into running services, with retries,
structured logs and metrics out of the box. It is used by the platform team in production.

## Installation

```sh
pip install {name}
```

## Usage

```python
from {module} import Client

client = Client(region="europe-west1", timeout=30)
for item in client.list(prefix="team/"):
    print(item.name, item.size)
```

## Configuration

| setting   | default | meaning                          |
|-----------|---------|----------------------------------|
| `region`  | none    | where the service runs           |
| `timeout` | 30      | seconds before a call gives up   |
| `retries` | 3       | attempts for idempotent calls    |

## Changelog

- **{version}**: faster start-up, fewer allocations in the hot path.
- Older: see the project's repository.

See the [documentation](https://example.com/docs) for more.
"""


DEFAULT_JITTER = 0.1  # of the round trip: each one-way delay varies by +- 5 % of it
DEFAULT_RTTS = (20.0, 50.0)  # ms: a CI runner near the bucket's region, a laptop (see the docstring)


def project_name(i: int) -> str:
    return f"bench-project-{i:04d}"


def wheel(dest: Path, name: str, version: str) -> Path:
    module = name.replace("-", "_")
    meta = sample.core_metadata(
        name,
        version,
        requires_python=">=3.8",
        requires_dist=["requests>=2", f"{project_name(0)}>=1.0"],
        summary=f"{name}: configuration into running services",
        description=README.format(name=name, module=module, version=version),
        description_content_type="text/markdown",
        headers=["License-Expression: Apache-2.0", "Project-URL: Source, https://example.com/src"],
    )
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / sample.wheel_filename(name, version)
    path.write_bytes(sample.wheel_bytes(name, version, metadata=meta))
    return path


def build_cache(cache: Path, projects: int, per_project: int) -> tuple[Path, Path]:
    wheels, repo = cache / "wheels", cache / "repo"
    marker = cache / f"built-{projects}x{per_project}"
    if marker.exists():
        return wheels, repo
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    print(
        f"building the cache: {projects} projects x {per_project} wheels with READMEs (once) ...", flush=True
    )
    t0 = time.perf_counter()
    r = Repository(Repository.open(str(repo)).store, site=False)  # the site: one reindex below
    for i in range(projects):
        name = project_name(i)
        r.publish([wheel(wheels / name, name, f"1.{v}") for v in range(per_project)])
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{projects} projects ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.touch()
    return wheels, repo


def scratch_copy(repo: Path, dest: Path) -> None:
    """Hard-linked copy without any page: no index pages, no site."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(repo, dest, copy_function=os.link, ignore=shutil.ignore_patterns("ui"))
    for page in (dest / layout.SIMPLE).rglob("index.*"):
        page.unlink()
    os.sync()  # set-up, not part of the timed reindex


def publish_copy(big: Path, dest: Path) -> None:
    """A hard-linked copy of the repository, its site included (the store replaces files by
    renaming, never in place, so the cache is never written). Not the lock: each copy has its own."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(big, dest, copy_function=os.link, ignore=shutil.ignore_patterns(".pypapo*"))


GCS_PORT = 4443  # fake-gcs-server's port inside the WAN namespace (nothing else listens there)


def start_fake_gcs(link: WanLink | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """fake-gcs-server (the binary of tests/fixtures/gcs.py), in memory: on a free loopback port, or
    inside the link's namespace at its far address (then every request crosses the link)."""
    import socket
    import urllib.error
    import urllib.request

    from tests.fixtures.gcs import BINARY

    if link is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            host, port = "127.0.0.1", sock.getsockname()[1]
    else:
        host, port = link.far_ip, GCS_PORT
    url = f"http://{host}:{port}"
    # Inside the namespace it also listens on its loopback, where the bucket is filled (seed_gcs).
    args = [
        str(BINARY),
        "-backend",
        "memory",
        "-scheme",
        "http",
        "-host",
        host if link is None else "0.0.0.0",
    ]
    args += [
        "-port",
        str(port),
        "-external-url",
        url,
        "-public-host",
        f"{host}:{port}",
        "-log-level",
        "error",
    ]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(args, **quiet) if link is None else link.spawn(args, **quiet)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5).read()
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)


SEED = """
import sys
sys.path[:0] = sys.argv[1:3]
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from bench_site import gcs_copy
client = storage.Client(project="bench", credentials=AnonymousCredentials())
bucket = sys.argv[4].split("/")[2]
client.lookup_bucket(bucket) or client.create_bucket(bucket)  # one bucket, a prefix per tree
print(gcs_copy(__import__("pathlib").Path(sys.argv[3]), sys.argv[4], sys.argv[5]))
"""


def seed_gcs(src: Path, location: str, url: str, link: WanLink | None = None) -> None:
    """Create the bucket and upload what a publish can touch (gcs_copy), at loopback speed: from
    inside the link's namespace, past the link (the set-up is not what is measured)."""
    if link is not None:
        url = f"http://127.0.0.1:{GCS_PORT}"
    bench = Path(__file__).resolve().parent
    argv = [sys.executable, "-c", SEED, str(bench.parent), str(bench), str(src), location, project_name(7)]
    env = {**os.environ, "STORAGE_EMULATOR_HOST": url}
    t0 = time.perf_counter()
    run = subprocess.run if link is None else link.run
    done = run(argv, env=env, check=True, stdout=subprocess.PIPE, text=True)
    print(f"fake-gcs-server {url}: {done.stdout.strip()} objects uploaded ({time.perf_counter() - t0:.0f} s)")


# Figure 4's bucket: every object of the repository's first N projects (fake-gcs-server's memory
# backend slows down with each object: all 2,000 projects' 46,000 took over ten minutes), then one
# reindex (by this tree) that drops the other projects from the root and the site and records GCS's
# fingerprints (md5) in place of the directory's (mtimes), so that the timed ones change nothing.
SEED_ALL = """
import sys
sys.path[:0] = sys.argv[1:3]
from pathlib import Path
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from provisioner.repo.engine import Repository
from provisioner.repo.store import WriteItem, open_store
client = storage.Client(project="bench", credentials=AnonymousCredentials())
src, location, n = Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
bucket = location.split("/")[2]
client.lookup_bucket(bucket) or client.create_bucket(bucket)
keep = {f"bench-project-{i:04d}" for i in range(n)}
names = [
    name
    for p in sorted(src.rglob("*"))
    if p.is_file() and p.name[0] != "."
    and ((name := p.relative_to(src).as_posix()).count("/") == 1 or name.split("/")[1] in keep)
]
store = open_store(location)
for i in range(0, len(names), 400):
    store.write_many([WriteItem(n, (src / n).read_bytes(), 0) for n in names[i : i + 400]])
Repository.open(location).reindex()
print(len(names))
"""

GCS_REINDEX_WORKER = """
import importlib.util, sys, time
sys.path[:0] = [sys.argv[1]]
spec = importlib.util.spec_from_file_location("pypapo_bench_wan", sys.argv[3])
wan = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wan)
counter = wan.RequestCounter().install()
from provisioner.repo.engine import Repository
for line in sys.stdin:
    mark = counter.mark()
    t0 = time.perf_counter()
    result = Repository.open(sys.argv[2]).reindex()  # a new client each time, as `provision reindex`
    took = time.perf_counter() - t0
    assert result.pages_written == 0 and result.hashed == 0, result.summary()
    print(took, counter.since(mark).encode(), sep="\t", flush=True)
"""


def gcs_copy(src: Path, location: str, project: str) -> int:
    """Upload what a publish into `project` can touch: every page and the site, the project's files."""
    from provisioner.repo.store import WriteItem, open_store

    store = open_store(location)
    names = [
        p.relative_to(src).as_posix()
        for p in sorted(src.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and (p.name.startswith("index.") or p.parent.name in (layout.UI, project))
    ]
    it = iter(names)
    while chunk := list(itertools.islice(it, 400)):
        store.write_many([WriteItem(n, (src / n).read_bytes(), 0) for n in chunk])
    return len(names)


WORKER = """
import importlib.util, json, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
# This bench's counter (not the tree's: an older tree has none), loaded from its file.
spec = importlib.util.spec_from_file_location("pypapo_bench_wan", sys.argv[6])
wan = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wan)
counter = wan.RequestCounter().install()
from provisioner.repo.engine import Repository
repo_dir, wheel_path, project, version = sys.argv[2:6]
cold = sys.argv[7] == "cold"  # a new client for each publish, as each `provision publish` has
store = Repository.open(repo_dir).store  # warm: one client (its connections) for every publish
for line in sys.stdin:
    what = line.split()  # "site" or "index", then "trace" for the requests' timeline too
    mark, origin = counter.mark(), time.monotonic()
    t0 = time.perf_counter()
    repo = Repository(Repository.open(repo_dir).store if cold else store, site=what[0] == "site")
    repo.publish([Path(wheel_path)])
    took = time.perf_counter() - t0
    traffic = counter.since(mark)
    timeline = counter.timeline(mark, origin) if what[1:] == ["trace"] else []
    repo.remove(project, version)
    print(took, traffic.encode(), json.dumps(timeline), sep="\t", flush=True)
"""


REINDEX_WORKER = """
import os, sys, time
import multiprocessing.forkserver as forkserver
sys.path[:0] = [sys.argv[1]]
from provisioner.repo.engine import Repository

def cpu():
    # This process (all its threads) and the forkserver with the reaped worker processes.
    t = os.times()
    total = t.user + t.system
    pid = forkserver._forkserver._forkserver_pid
    if pid:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total

if __name__ == "__main__":
    # This tree's engine, here and in the worker processes (forked from reindex's forkserver).
    from concurrent.futures import ProcessPoolExecutor
    import provisioner.repo.reindex as reindexing
    with ProcessPoolExecutor(1, mp_context=reindexing.worker_context()) as procs:
        where = procs.submit(eval, "__import__('provisioner.repo.reindex').repo.reindex.__file__")
        for path in (reindexing.__file__, where.result()):
            assert path.startswith(sys.argv[1] + "/"), (sys.argv[1], path)
    for line in sys.stdin:
        what, repo_dir = line.split()
        t0, c0 = time.perf_counter(), cpu()
        Repository(Repository.open(repo_dir).store, site=what == "site").reindex()
        print(time.perf_counter() - t0, cpu() - c0, flush=True)
"""


class ReindexWorker:
    """A process of one pypapo tree that times reindexes from scratch on request (figure 2), so
    that two trees are timed in one run; it stays up between runs, as a bench in-process would."""

    def __init__(self, tree: Path) -> None:
        # The tree first on the path of every process, the forkserver's included: Python 3.11's
        # forkserver ignores the sys.path it is given, and would import the engine its workers run
        # from the current directory or wherever the venv's editable install points (then both
        # trees time the same code). So: run in the tree, with the tree on PYTHONPATH.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REINDEX_WORKER, str(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tree,
        )

    def reindex(self, scratch: Path, *, site: bool) -> tuple[float, float]:
        """Wall-clock seconds, and CPU seconds of every process of it (the workers included)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{'site' if site else 'index'} {scratch}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the reindex worker stopped (exit {self.proc.wait()})")
        wall, cpu = answer.split()
        return float(wall), float(cpu)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


@dataclass
class PublishFigures:
    """Figure 1 at one place: per (tree, with the site), each publish's seconds and traffic."""

    times: dict[tuple[str, bool], list[float]]
    traffic: dict[tuple[str, bool], list[Traffic]]
    # With --gcs-trace: one more publish's requests, (start s, end s, what), not in the medians.
    timeline: dict[tuple[str, bool], list[tuple[float, float, str]]]


def publish_against(
    locations: dict[str, str],
    one: Path,
    trees: dict[str, Path],
    runs: int,
    env: dict[str, str] | None = None,
    *,
    trace: bool = False,
    cold: bool = False,
) -> PublishFigures:
    """Figure 1 for several pypapo trees in one run: a worker process per tree, in turns, each
    into its own copy (`locations`: two versions may lay the site out differently)."""
    wan_py = str(Path(__file__).resolve().parent / "wan.py")
    argv = [str(one), project_name(7), "99.0", wan_py, "cold" if cold else "warm"]
    workers = {
        label: subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tree), locations[label], *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for label, tree in trees.items()
    }
    keys = [(label, site) for label in trees for site in (False, True)]
    figures = PublishFigures({key: [] for key in keys}, {key: [] for key in keys}, {})

    def ask(label: str, site: bool, trace: bool = False) -> tuple[float, Traffic, list]:
        proc = workers[label]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{'site' if site else 'index'}{' trace' if trace else ''}\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the publish worker of {label} stopped (exit {proc.wait()})")
        took, traffic, timeline = answer.split("\t")
        return float(took), Traffic.decode(traffic), json.loads(timeline)

    order = list(keys)
    for key in order:
        ask(*key)  # warm: imports, the first README's lexers, the connections
    rng = random.Random(13)
    for _ in range(runs):
        rng.shuffle(order)
        for key in order:
            took, traffic, _ = ask(*key)
            figures.times[key].append(took)
            figures.traffic[key].append(traffic)
    if trace:
        for key in keys:
            figures.timeline[key] = ask(*key, trace=True)[2]
    for proc in workers.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    return figures


def print_publish(
    place: str, figures: PublishFigures, trees: dict[str, Path], args: argparse.Namespace
) -> None:
    print(
        f"publish one wheel, existing project of {args.per_project}, {place}"
        f" (median of {args.runs}, in turns)"
    )
    for label in trees:
        a = statistics.median(figures.times[(label, False)])
        b = statistics.median(figures.times[(label, True)])
        ms = f"index only {a * 1e3:7.1f} ms   index + site {b * 1e3:7.1f} ms"
        print(f"  {label:32s} {ms}   {b / a:5.2f}x   (goal <= 1.3x)", flush=True)


def print_traffic(figures: PublishFigures, trees: dict[str, Path], shape: LinkShape | None) -> None:
    """What a publish sends and receives, counted at the client (the same on every GCS place)."""
    print("  what one publish sends, counted at the client (median; HTTP bytes, no TCP/IP or TLS)")
    for label in trees:
        for site in (False, True):
            t = median_traffic(figures.traffic[(label, site)])
            methods = ", ".join(f"{m} {n}" for m, n in sorted(t.by_method.items()))
            line = (
                f"    {label:30s} {'index + site' if site else 'index only  '}  {t.requests:3d} requests"
                f" ({methods}) in {t.rounds} rounds, {t.connections} new connections,"
                f" up {t.sent / 1e3:7.1f} kB, down {t.received / 1e3:7.1f} kB"
            )
            if shape is not None and (shape.up_mbit or shape.down_mbit):
                up = t.sent * 8 / (shape.up_mbit * 1e6) if shape.up_mbit else 0.0
                down = t.received * 8 / (shape.down_mbit * 1e6) if shape.down_mbit else 0.0
                line += f"  (at the link's rate: {up * 1e3:.0f} ms up, {down * 1e3:.0f} ms down)"
            print(line, flush=True)


def print_timeline(figures: PublishFigures) -> None:
    """One publish's requests in the order they started: where its rounds go."""
    for (label, site), timeline in figures.timeline.items():
        what = "index + site" if site else "index only"
        print(f"  one publish's requests, {label}, {what} (ms from its start)")
        for start, end, request in timeline:
            print(f"    {start * 1e3:7.1f} - {end * 1e3:7.1f}  {request}")


def median_traffic(runs: list[Traffic]) -> Traffic:
    """Each count's median over the runs (a retry or a lost race makes one run differ)."""

    def med(values: list[int]) -> int:
        return int(statistics.median(values))

    methods = {m for t in runs for m in t.by_method}
    return Traffic(
        med([t.requests for t in runs]),
        med([t.connections for t in runs]),
        med([t.sent for t in runs]),
        med([t.received for t in runs]),
        med([t.rounds for t in runs]),
        {m: med([t.by_method.get(m, 0) for t in runs]) for m in methods},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, default=2000)
    ap.add_argument("--per-project", type=int, default=10)
    ap.add_argument("--runs", type=int, default=9, help="runs per publish figure (median)")
    ap.add_argument("--reindex-runs", type=int, default=3, help="runs per reindex/peer figure (median)")
    ap.add_argument("--publish-only", action="store_true", help="only figure 1 (the publish)")
    ap.add_argument("--reindex-only", action="store_true", help="only figure 2 (the reindex)")
    ap.add_argument("--weight-only", action="store_true", help="only figure 3 (page weight, bytes written)")
    ap.add_argument(
        "--gcs-reindex-only", action="store_true",
        help="only figure 4 (a reindex that changes nothing, on fake-gcs-server; --gcs-rtt: across the link)",
    )  # fmt: skip
    ap.add_argument(
        "--gcs-projects", type=int, default=500, help="figure 4: the first N projects of the repository"
    )
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache-site")
    ap.add_argument("--against", type=Path, help="another pypapo tree: figure 1 for both, in one run")
    ap.add_argument("--gcs", action="store_true", help="figure 1 on fake-gcs-server (loopback) too")
    ap.add_argument(
        "--gcs-rtt", type=float, nargs="*", metavar="MS",
        help="figure 1 also on fake-gcs-server behind a link of this round trip, one figure for each"
        f" (no value: {' and '.join(f'{r:g}' for r in DEFAULT_RTTS)} ms; implies --gcs; needs root)",
    )  # fmt: skip
    ap.add_argument("--gcs-rate", type=float, metavar="MBIT", help="the link's rate (default: unlimited)")
    ap.add_argument(
        "--gcs-down-rate", type=float, metavar="MBIT", help="server to client (default: --gcs-rate)"
    )
    ap.add_argument(
        "--gcs-jitter", type=float, metavar="MS",
        help=f"jitter of each one-way delay, +- half of it (default: {DEFAULT_JITTER * 100:g} %% of the"
        " round trip)",
    )  # fmt: skip
    ap.add_argument(
        "--gcs-trace", action="store_true",
        help="at each GCS place, also print one publish's requests (when each started and ended)",
    )  # fmt: skip
    ap.add_argument(
        "--gcs-cold", action="store_true",
        help="on GCS, each timed publish makes its own client (new connections), as one `provision"
        " publish` does; by default one client serves every publish of a worker",
    )  # fmt: skip
    args = ap.parse_args()
    if args.gcs_rtt == []:
        args.gcs_rtt = list(DEFAULT_RTTS)
    if args.gcs_rtt:
        try:
            [wan_shape(args, rtt) for rtt in args.gcs_rtt]
        except ValueError as exc:
            ap.error(str(exc))
        if why := wan_unavailable():
            ap.error(f"--gcs-rtt {why}")
        # A kill by SIGTERM/SIGHUP unwinds like Ctrl-C: the namespace and its processes are removed.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    wheels, big = build_cache(args.cache, args.projects, args.per_project)
    ensure_dumb_pypi()
    n_wheels = sum(1 for _ in wheels.rglob("*.whl"))
    work = Path(tempfile.mkdtemp(prefix="pypapo-bench-site-"))
    try:
        one = wheel(work / "one", project_name(7), "99.0")
        print(
            f"\nrepository: {args.projects} projects, {n_wheels} wheels with READMEs (directory, fsync on)\n"
        )

        if args.reindex_only:
            reindex_figure(args, wheels, big, work, n_wheels)
            return 0
        if args.weight_only:
            weight_figure(args, big, work)
            return 0
        if args.gcs_reindex_only:
            gcs_reindex_figure(args, big)
            return 0

        # -- 1. publish one wheel, with and without the site, in turns -------------------------------
        trees = {"this tree": Path(__file__).resolve().parent.parent}
        if args.against:
            if not (args.against / "provisioner" / "__init__.py").is_file():
                ap.error(f"--against {args.against}: not a pypapo checkout (no provisioner/__init__.py)")
            trees[str(args.against)] = args.against
        copies = {}
        for i, (label, tree) in enumerate(trees.items()):
            copies[label] = work / f"publish-{i}"
            publish_copy(big, copies[label])
            reindex_with(tree, copies[label])  # its site current, as that tree lays it out
        publish_figure(args, trees, copies, one)
        for copy in copies.values():
            shutil.rmtree(copy, ignore_errors=True)
        if args.publish_only:
            return 0

        reindex_figure(args, wheels, big, work, n_wheels)

        # -- 3. page weight, and what a publish writes of the site ---------------------------------
        weight_figure(args, big, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


class _Written:
    """A store that counts the bytes written under ui/ (what a publish writes of the site)."""

    def __init__(self, store: object) -> None:
        self._store, self.site, self.lists = store, 0, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def _count(self, name: str, data: bytes) -> None:
        if name.startswith(f"{layout.UI}/"):
            self.site += len(data)
            if name.count("/") == 1 and layout.is_packed(name):  # the list and the shards
                self.lists += len(data)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self._count(name, data)
        return self._store.write(name, data, if_generation_match=if_generation_match)  # type: ignore[attr-defined]

    def write_many(self, items: list, *, after: list | tuple = ()) -> list[int]:
        for name, data, *_ in items:
            self._count(name, data)
        return self._store.write_many(items, after=after)  # type: ignore[attr-defined]


def weight_figure(args: argparse.Namespace, big: Path, work: Path) -> None:
    """Figure 3: the gzip'd bytes of the list's head, an older page, a search shard and a project
    page of 40 releases, and what one publish writes of the site (into a project on the head, and
    into one whose row is on an older page), on a copy of the cache with this tree's site."""
    from provisioner.repo.site import paging
    from provisioner.repo.store import open_store

    copy = work / "weight"
    publish_copy(big, copy)
    # The cache's one-page list (an older pypapo's, stored plain), if it is of that layout.
    old_list = big / layout.UI_LIST.removesuffix(layout.PACKED)
    old_data = big / layout.UI_OLD_DATA
    n_old = old_list.stat().st_size + old_data.stat().st_size if old_data.exists() else 0
    Repository.open(str(copy)).reindex()

    def stored(path: Path) -> tuple[bytes, int]:
        """A page as served plain, and its size as stored (gzip'd)."""
        data = path.read_bytes()
        return gzip.decompress(data), len(data)

    head, head_gz = stored(copy / layout.UI_LIST)
    cut = paging.head_layout(head)
    assert cut is not None and cut.ids
    older, older_gz = stored(copy / layout.ui_page(cut.ids[len(cut.ids) // 2]))
    shards = [stored(copy / n) for n in layout.UI_SHARD_NAMES]
    shard, shard_gz = sorted(shards, key=lambda s: len(s[0]))[len(shards) // 2]
    r = Repository.open(str(work / "forty"))
    r.publish([wheel(work / "forty-dists", "forty-releases", f"1.{v}") for v in range(40)])
    r.set_yanked("forty-releases", "1.39", "broken on purpose")
    page, page_gz = stored(work / "forty" / layout.ui_project("forty-releases"))
    css = sum((copy / layout.ui_asset(a)).stat().st_size for a in layout.UI_ASSETS)
    print("\npage weight (bytes: served plain; stored, and sent to a browser, gzip'd)")
    newest = f"newest {paging.PAGE_ROWS} of {args.projects}"
    print(f"  list head, {newest}      {len(head):9,d}  gzip {head_gz:8,d}")
    print(f"  an older page ({len(cut.ids)} of them)           {len(older):9,d}  gzip {older_gz:8,d}")
    print(f"  a search shard (1 of {layout.UI_SHARDS}; median)       {len(shard):9,d}  gzip {shard_gz:8,d}")
    total, total_gz = sum(len(s) for s, _n in shards), sum(n for _s, n in shards)
    print(f"  all {layout.UI_SHARDS} shards (search's first use)     {total:9,d}  gzip {total_gz:8,d}")
    print(f"  project page, 40 releases            {len(page):9,d}  gzip {page_gz:8,d}")
    print(f"  site.css + site.js + favicon.svg     {css:9,d}  (cached; revalidated with 304)")
    print("what one publish writes of the site (bytes as uploaded: every object under ui/; of it, the")
    print("list pages and the shard; the rest is the project's own page and its release-info cache)")
    oldest = paging.parse_page(stored(copy / layout.ui_page(cut.ids[0]))[0])
    assert oldest is not None and oldest.rows
    on_older = paging.row_key(oldest.rows[0])[1]  # type: ignore[index]
    for what, project, version in (
        ("a project whose row is on an older page", on_older, "98.0"),
        ("the same project again (its row on the head)", on_older, "98.1"),
    ):
        store = _Written(open_store(str(copy)))
        Repository(store).publish([wheel(work / "written", project, version)])  # type: ignore[arg-type]
        print(f"  {what:46s} {store.site:9,d}   list + shard {store.lists:9,d}")
    if n_old:
        print(f"  before (this cache's one-page layout)                   list + aggregate {n_old:9,d}")
    shutil.rmtree(copy, ignore_errors=True)


def reindex_with(tree: Path, repo: Path) -> None:
    """`provision reindex` of `repo` by the pypapo of `tree` (in a process of its own)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from provisioner.repo.engine import Repository; "
    code += "Repository.open(sys.argv[2]).reindex()"
    subprocess.run([sys.executable, "-c", code, str(tree), str(repo)], check=True)


def publish_figure(
    args: argparse.Namespace, trees: dict[str, Path], copies: dict[str, Path], one: Path
) -> None:
    """Figure 1 at each place in turn: the directory; with --gcs or --gcs-rtt fake-gcs-server on
    loopback; with --gcs-rtt the same server behind the WAN link at each round trip asked for.
    Each tree publishes into its own copy (on GCS its own prefix)."""
    figures = publish_against({label: str(c) for label, c in copies.items()}, one, trees, args.runs)
    print_publish("directory, fsync on", figures, trees, args)
    if not (args.gcs or args.gcs_rtt):
        return
    locations = {label: f"gs://bench-site/tree-{i}" for i, label in enumerate(copies)}
    cold = ", a new client each publish" if args.gcs_cold else ""
    with contextlib.ExitStack() as stack:
        proc, url = start_fake_gcs()
        stack.callback(stop, proc)
        for label, location in locations.items():
            seed_gcs(copies[label], location, url)
        env = {"STORAGE_EMULATOR_HOST": url}
        figures = publish_against(
            locations, one, trees, args.runs, env, trace=args.gcs_trace, cold=args.gcs_cold
        )
        print_publish(f"fake-gcs-server on loopback, google-cloud-storage{cold}", figures, trees, args)
        print_traffic(figures, trees, None)
        print_timeline(figures)
        if not args.gcs_rtt:
            return
        shapes = [wan_shape(args, rtt) for rtt in args.gcs_rtt]
        link = stack.enter_context(WanLink(shapes[0]))
        proc, url = start_fake_gcs(link)
        for label, location in locations.items():
            seed_gcs(copies[label], location, url, link)
        for shape in shapes:
            link.reshape(shape)
            connect = link.connect_ms(GCS_PORT)
            env = {"STORAGE_EMULATOR_HOST": url}
            figures = publish_against(
                locations, one, trees, args.runs, env, trace=args.gcs_trace, cold=args.gcs_cold
            )
            print_publish(f"fake-gcs-server across a link of {shape.describe()}{cold}", figures, trees, args)
            print(
                f"  the link: a TCP connect takes {connect:.1f} ms (median of 5); {link.stats().describe()}"
            )
            print_traffic(figures, trees, shape)
            print_timeline(figures)


def gcs_reindex_figure(args: argparse.Namespace, big: Path) -> None:
    """Figure 4: a reindex of the whole repository in a bucket where nothing needs changing (what
    `provision reindex` meets after a check, an upgrade, or a `gsutil cp` of a few files), on
    fake-gcs-server through the real client: on loopback, and with --gcs-rtt across the WAN link
    at each round trip. This tree and --against's, in turns, a process each; medians, with what
    one reindex sends (requests, rounds, bytes)."""
    trees = {"this tree": Path(__file__).resolve().parent.parent}
    if args.against:
        trees[str(args.against)] = args.against
    location = "gs://bench-site/reindex"
    n = min(args.gcs_projects, args.projects)
    wan_py = str(Path(__file__).resolve().parent / "wan.py")
    bench = Path(__file__).resolve().parent

    def seed(url: str, link: WanLink | None) -> None:
        t0 = time.perf_counter()
        argv = [sys.executable, "-c", SEED_ALL, str(bench.parent), str(bench), str(big), location, str(n)]
        env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{GCS_PORT}" if link else url}
        done = (link.run if link else subprocess.run)(
            argv, env=env, check=True, stdout=subprocess.PIPE, text=True
        )
        print(
            f"fake-gcs-server {url}: {done.stdout.strip()} objects, reindexed once"
            f" ({time.perf_counter() - t0:.0f} s)"
        )

    def timed(url: str, place: str, shape: LinkShape | None) -> None:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": url}
        workers = {
            label: subprocess.Popen(
                [sys.executable, "-c", GCS_REINDEX_WORKER, str(tree), location, wan_py],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for label, tree in trees.items()
        }
        got: dict[str, list[tuple[float, Traffic]]] = {label: [] for label in trees}
        try:
            for _ in range(args.reindex_runs):
                for label, proc in workers.items():
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write("reindex\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline()
                    if not answer:
                        raise RuntimeError(f"the reindex worker of {label} stopped (exit {proc.wait()})")
                    took, traffic = answer.split("\t")
                    got[label].append((float(took), Traffic.decode(traffic)))
        finally:
            for proc in workers.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait()
        print(
            f"reindex of {n} projects / {n * args.per_project} wheels with the site,"
            f" nothing to change, {place} (median of {args.reindex_runs}, in turns)"
        )
        for label, runs in got.items():
            t = median_traffic([traffic for _took, traffic in runs])
            took = statistics.median(took for took, _traffic in runs)
            methods = ", ".join(f"{m} {n}" for m, n in sorted(t.by_method.items()))
            print(
                f"  {label:32s} {took:7.2f} s   {t.requests:5d} requests ({methods}) in {t.rounds} rounds,"
                f" down {t.received / 1e6:6.2f} MB",
                flush=True,
            )

    with contextlib.ExitStack() as stack:
        proc, url = start_fake_gcs()
        stack.callback(stop, proc)
        seed(url, None)
        timed(url, "fake-gcs-server on loopback", None)
        if not args.gcs_rtt:
            return
        shapes = [wan_shape(args, rtt) for rtt in args.gcs_rtt]
        link = stack.enter_context(WanLink(shapes[0]))
        proc, url = start_fake_gcs(link)
        seed(url, link)
        for shape in shapes:
            link.reshape(shape)
            timed(url, f"fake-gcs-server across a link of {shape.describe()}", shape)


def wan_shape(args: argparse.Namespace, rtt: float) -> LinkShape:
    jitter = rtt * DEFAULT_JITTER if args.gcs_jitter is None else args.gcs_jitter
    down = args.gcs_rate if args.gcs_down_rate is None else args.gcs_down_rate
    return LinkShape(rtt, jitter, args.gcs_rate, down)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def reindex_figure(args: argparse.Namespace, wheels: Path, big: Path, work: Path, n_wheels: int) -> None:
    """Figure 2: full reindex from scratch, the index alone and with the site, against dumb-pypi;
    with --against, the other tree's two reindexes too. Everything in turns, each pypapo run in its
    tree's worker process on a fresh scratch copy; medians."""
    trees = {"this tree": Path(__file__).resolve().parent.parent}
    if args.against:
        trees[str(args.against)] = args.against
    workers = {label: ReindexWorker(tree) for label, tree in trees.items()}
    pkg_list = work / "packages.json"
    runs = args.reindex_runs
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {
        (label, site): [] for label in trees for site in (False, True)
    }
    t_preps: list[tuple[float, float]] = []
    t_dumbs: list[tuple[float, float]] = []
    try:
        for run in range(runs):  # in turns: on a shared machine all see the same load
            for k, ((label, site), got) in enumerate(times.items()):
                # A fresh copy per run, none deleted until the end: this disk's ext4 has no journal,
                # and there creating files right after thousands were deleted costs several times
                # more (its inode allocator skips recently deleted inodes, reading their blocks).
                scratch = work / f"scratch-{run}-{k}"
                scratch_copy(big, scratch)
                got.append(workers[label].reindex(scratch, site=site))
                if site:
                    # index.html, or index.html.gz from the version that stores the pages gzip'd
                    site_pages = sum(1 for _ in (scratch / layout.UI).rglob("index.html*"))
                    assert site_pages == args.projects + 1, site_pages
            t_preps.append(_timed_cpu(lambda: peer_package_list(wheels, pkg_list)))
            t_dumbs.append(_timed_cpu(lambda run=run: run_dumb_pypi(pkg_list, work / f"dumb-out-{run}")))
    finally:
        for worker in workers.values():
            worker.close()

    def med(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(w for w, _c in runs), statistics.median(c for _w, c in runs)

    (t_prep, c_prep), (t_dumb, c_dumb) = med(t_preps), med(t_dumbs)
    t_peer, c_peer = med([(a[0] + b[0], a[1] + b[1]) for a, b in zip(t_preps, t_dumbs, strict=True)])
    print(
        f"\nfull index of {n_wheels} wheels from scratch, with a browsable site (median of {runs}, in turns)"
    )
    print("                                                    wall  peer/ours   CPU s (all processes)")
    print(f"  peer: read+hash wheels, read METADATA           {t_prep:8.2f} s            {c_prep:8.2f}")
    print(f"  peer: dumb-pypi generates its index and site    {t_dumb:8.2f} s            {c_dumb:8.2f}")
    print(f"  peer total                                      {t_peer:8.2f} s            {c_peer:8.2f}")
    for label in trees:
        (t_site, c_site), (t_idx, c_idx) = med(times[(label, True)]), med(times[(label, False)])
        print(f"  {label}:")
        print(
            f"    reindex from scratch, index + site          {t_site:8.2f} s   {t_peer / t_site:5.2f}x"
            f"   {c_site:8.2f}   (goal >= 2x)"
        )
        print(
            f"    reindex from scratch, index only            {t_idx:8.2f} s   {t_peer / t_idx:5.2f}x"
            f"   {c_idx:8.2f}   (the site's share: {t_site - t_idx:.2f} s, {c_site - c_idx:.2f} CPU s)"
        )
    print(f"  ({args.projects + 1} site pages with rendered READMEs; dumb-pypi renders none)")


def _timed_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of `fn` run in this process (the peer runs in-process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Benchmark the browsable site (ui/) that the engine writes beside the index.

1. Publishing one wheel with the site against without it (`Repository(site=False)`), into the
   repository of 2,000 projects / 20,000 wheels, as a new version of an existing project: goal <= 1.3x.
2. A full `reindex` from scratch of those 20,000 wheels *including the site*, against dumb-pypi
   generating its own site for the same wheels (fed the same information: see bench_engine.py):
   goal >= 2x faster.
3. The gzip'd bytes of the list page (2,000 projects), of its search index, and of a project page
   with 40 releases.

Every wheel carries a realistic Markdown README (headings, a code block, a list, a table; ~2.5 kB),
so the site renders what a real repository would make it render. The repository is built once and
cached (default bench/.cache-site, git-ignored). Usage:

    .venv/bin/python bench/bench_site.py [--projects 2000] [--per-project 10] [--runs 9]
    .venv/bin/python bench/bench_site.py --publish-only --against /tmp/old-pypapo   # before/after
    .venv/bin/python bench/bench_site.py --reindex-only --against /tmp/old-pypapo   # figure 2 alone
    .venv/bin/python bench/bench_site.py --publish-only --gcs                       # on fake-gcs too

Figure 1 runs in worker processes, one per pypapo tree, publishing into a hard-linked copy of the
cached repository (the cache itself is never written) in turns, each round in a random order.
`--against TREE` (a checkout of another pypapo version, e.g. `git worktree add /tmp/old main~5`)
times figures 1 and 2 for this code and that one in one run, under the same load. `--gcs` times
figure 1 again on fake-gcs-server through the real google-cloud-storage client (the GCS backend:
one HTTP request per object, on loopback), into a bucket holding the copy's pages and site (every
project's JSON and HTML, the site's list, aggregate and pages, and project 7's files; not the
other 19,990 wheels, which a publish never reads).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import ensure_dumb_pypi, peer_package_list, run_dumb_pypi

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


def start_fake_gcs() -> tuple[subprocess.Popen[bytes], str]:
    """fake-gcs-server (the binary of tests/fixtures/gcs.py), in memory, on a free loopback port."""
    import socket
    import urllib.error
    import urllib.request

    from tests.fixtures.gcs import BINARY

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = [str(BINARY), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    args += ["-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "error"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)


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
import sys, time
from collections.abc import Callable
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
from provisioner.repo.engine import Repository
repo_dir, wheel_path, project, version = sys.argv[2:6]
store = Repository.open(repo_dir).store  # one client (its connections) for every publish
for line in sys.stdin:
    repo = Repository(store, site=line.strip() == "site")
    t0 = time.perf_counter()
    repo.publish([Path(wheel_path)])
    took = time.perf_counter() - t0
    repo.remove(project, version)
    print(took, flush=True)
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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REINDEX_WORKER, str(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
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


def publish_against(
    location: str, one: Path, trees: dict[str, Path], runs: int
) -> dict[tuple[str, bool], list[float]]:
    """Figure 1 for several pypapo trees in one run: a worker process per tree, in turns."""
    workers = {
        label: subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tree), location, str(one), project_name(7), "99.0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for label, tree in trees.items()
    }

    def ask(label: str, site: bool) -> float:
        proc = workers[label]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("site\n" if site else "index\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    times: dict[tuple[str, bool], list[float]] = {
        (label, site): [] for label in trees for site in (False, True)
    }
    order = list(times)
    for key in order:
        ask(*key)  # warm: imports, the first README's lexers
    rng = random.Random(13)
    for _ in range(runs):
        rng.shuffle(order)
        for key in order:
            times[key].append(ask(*key))
    for proc in workers.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    return times


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=6))  # nginx's gzip_comp_level is 1; 6 is what a CDN does


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, default=2000)
    ap.add_argument("--per-project", type=int, default=10)
    ap.add_argument("--runs", type=int, default=9, help="runs per publish figure (median)")
    ap.add_argument("--reindex-runs", type=int, default=3, help="runs per reindex/peer figure (median)")
    ap.add_argument("--publish-only", action="store_true", help="only figure 1 (the publish)")
    ap.add_argument("--reindex-only", action="store_true", help="only figure 2 (the reindex)")
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache-site")
    ap.add_argument("--against", type=Path, help="another pypapo tree: figure 1 for both, in one run")
    ap.add_argument("--gcs", action="store_true", help="figure 1 on fake-gcs-server too")
    args = ap.parse_args()

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

        # -- 1. publish one wheel, with and without the site, in turns -------------------------------
        trees = {"this tree": Path(__file__).resolve().parent.parent}
        if args.against:
            trees[str(args.against)] = args.against
        copy = work / "publish"
        publish_copy(big, copy)
        Repository.open(str(copy)).reindex()  # the site is current before anything is timed
        places = [("directory, fsync on", str(copy))]
        fake = start_fake_gcs() if args.gcs else None
        try:
            if fake is not None:
                os.environ["STORAGE_EMULATOR_HOST"] = fake[1]  # the workers inherit it
                from google.auth.credentials import AnonymousCredentials
                from google.cloud import storage

                client = storage.Client(project="bench", credentials=AnonymousCredentials())
                client.create_bucket("bench-site")
                t0 = time.perf_counter()
                n = gcs_copy(copy, "gs://bench-site/repo", project_name(7))
                print(f"fake-gcs-server {fake[1]}: {n} objects uploaded ({time.perf_counter() - t0:.0f} s)")
                places.append(("fake-gcs-server, google-cloud-storage", "gs://bench-site/repo"))
            for place, location in places:
                times = publish_against(location, one, trees, args.runs)
                print(
                    f"publish one wheel, existing project of {args.per_project}, {place} "
                    f"(median of {args.runs}, in turns)"
                )
                for label in trees:
                    a, b = statistics.median(times[(label, False)]), statistics.median(times[(label, True)])
                    ms = f"index only {a * 1e3:7.1f} ms   index + site {b * 1e3:7.1f} ms"
                    print(f"  {label:32s} {ms}   {b / a:5.2f}x   (goal <= 1.3x)", flush=True)
        finally:
            if fake is not None:
                fake[0].terminate()
                fake[0].wait(timeout=10)
        shutil.rmtree(copy, ignore_errors=True)
        if args.publish_only:
            return 0

        reindex_figure(args, wheels, big, work, n_wheels)

        # -- 3. page weight -----------------------------------------------------------------------
        listing = (big / layout.UI_LIST).read_bytes()
        data = (big / layout.UI_DATA).read_bytes()
        r = Repository.open(str(work / "forty"))
        r.publish([wheel(work / "forty-dists", "forty-releases", f"1.{v}") for v in range(40)])
        r.set_yanked("forty-releases", "1.39", "broken on purpose")
        page = (work / "forty" / layout.ui_project("forty-releases")).read_bytes()
        css = sum((big / layout.ui_asset(a)).stat().st_size for a in layout.UI_ASSETS)
        print("\npage weight (bytes; gzip level 6)")
        print(f"  list page, {args.projects} projects          {len(listing):9,d}  gzip {gz(listing):8,d}")
        print(f"  search index (projects.json)         {len(data):9,d}  gzip {gz(data):8,d}")
        print(f"  project page, 40 releases            {len(page):9,d}  gzip {gz(page):8,d}")
        print(f"  site.css + site.js + favicon.svg     {css:9,d}  (cached; revalidated with 304)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


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
                    site_pages = sum(1 for _ in (scratch / layout.UI).rglob("index.html"))
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

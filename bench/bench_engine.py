#!/usr/bin/env python3
"""Benchmark the repository engine on a directory repository.

1. Publishing one wheel costs what it costs into an empty repository, also into a repository of
   2,000 projects / 20,000 wheels (cost follows the project's size, not the repository's).
2. A full `reindex` of those 20,000 wheels, side by side with the fastest static generator we know,
   dumb-pypi, fed the same information (sha256, requires-python, core-metadata hash), which means
   reading and hashing every wheel first.

The big repository and the wheels are built once and cached (default bench/.cache, git-ignored).
dumb-pypi is installed into the running venv on first use; it is not a project dependency.
Everything runs in-process (no interpreter start-up in any figure). Usage:

    .venv/bin/python bench/bench_engine.py [--projects 2000] [--per-project 10] [--runs 7]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner.appliance import sample
from provisioner.repo import layout
from provisioner.repo.engine import Repository


def median_time(fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(runs):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def project_name(i: int) -> str:
    return f"bench-project-{i:04d}"


def build_cache(cache: Path, projects: int, per_project: int) -> tuple[Path, Path]:
    wheels, repo = cache / "wheels", cache / "repo"
    marker = cache / f"built-{projects}x{per_project}"
    if marker.exists():
        return wheels, repo
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    print(f"building the cache: {projects} projects x {per_project} wheels in {cache} (once) ...", flush=True)
    t0 = time.perf_counter()
    r = Repository.open(str(repo))
    for i in range(projects):
        name = project_name(i)
        paths = [
            sample.build_wheel(wheels / name, name, f"1.{v}", requires_python=">=3.8")
            for v in range(per_project)
        ]
        r.publish(paths)
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{projects} projects ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.touch()
    return wheels, repo


def ensure_dumb_pypi() -> None:
    try:
        importlib.import_module("dumb_pypi.main")
    except ImportError:
        print("installing dumb-pypi into this venv (bench only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "dumb-pypi"], check=True)


def peer_package_list(wheels: Path, out: Path) -> int:
    """What dumb-pypi needs to produce equivalent pages: read and hash every wheel, read its
    METADATA for requires-python and the core-metadata hash. One JSON object per line."""
    n = 0
    with open(out, "w") as fh:
        for path in sorted(wheels.rglob("*.whl")):
            data = path.read_bytes()
            with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the bytes in hand: one read per wheel
                meta_name = next(m for m in zf.namelist() if m.endswith(".dist-info/METADATA"))
                meta = zf.read(meta_name)
            requires_python = None
            for line in meta.decode().splitlines():
                if line.startswith("Requires-Python:"):
                    requires_python = line.split(":", 1)[1].strip()
                if not line:
                    break
            info = {
                "filename": path.name,
                "hash": "sha256=" + hashlib.sha256(data).hexdigest(),
                "requires_python": requires_python,
                "core_metadata": "sha256=" + hashlib.sha256(meta).hexdigest(),
                "upload_timestamp": int(path.stat().st_mtime),
            }
            fh.write(json.dumps(info) + "\n")
            n += 1
    return n


def run_dumb_pypi(package_list: Path, out_dir: Path) -> None:
    from dumb_pypi import main as dumb

    shutil.rmtree(out_dir, ignore_errors=True)
    argv = ["--package-list-json", str(package_list), "--output-dir", str(out_dir)]
    argv += ["--packages-url", "../../pool/", "--no-generate-timestamp", "--no-per-release-json"]
    dumb.main(argv)


def scratch_copy(repo: Path, dest: Path, keep_pages: bool) -> None:
    """Hard-linked copy (objects are replaced by rename, never modified, so links are safe)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(repo, dest, copy_function=os.link)
    if not keep_pages:
        for page in dest.rglob("index.*"):
            page.unlink()
    # Flush the copy's own metadata now: it is set-up, and the reindex timed next fsyncs its pages
    # (one journal commit would otherwise carry 40,000 links made by the set-up).
    os.sync()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, default=2000)
    ap.add_argument("--per-project", type=int, default=10)
    ap.add_argument("--runs", type=int, default=7, help="runs per publish figure (median)")
    ap.add_argument("--reindex-runs", type=int, default=3, help="runs per reindex/peer figure (median)")
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = ap.parse_args()

    wheels, big = build_cache(args.cache, args.projects, args.per_project)
    ensure_dumb_pypi()
    n_wheels = sum(1 for _ in wheels.rglob("*.whl"))
    work = Path(tempfile.mkdtemp(prefix="pypapo-bench-"))
    try:
        one = sample.build_wheel(work / "one", project_name(7), "99.0", requires_python=">=3.8")
        fresh = sample.build_wheel(work / "one", "brand-new-project", "1.0")
        print(f"\nrepository: {args.projects} projects, {n_wheels} wheels (directory backend, fsync on)\n")

        # -- publish one wheel -----------------------------------------------------------------
        empty_dirs = iter(range(10**6))
        cur: dict[str, Path] = {}

        def new_empty() -> None:
            cur["d"] = work / f"empty-{next(empty_dirs)}"

        t_empty = median_time(lambda: Repository.open(str(cur["d"])).publish([one]), args.runs, new_empty)
        big_repo = Repository.open(str(big))

        def undo_existing() -> None:
            if big_repo.store.read(layout.dist_object(project_name(7), one.name))[1]:
                big_repo.remove(project_name(7), "99.0")

        def undo_new() -> None:
            if big_repo.store.read(layout.project_json("brand-new-project"))[1]:
                big_repo.remove("brand-new-project")

        t_big = median_time(lambda: Repository.open(str(big)).publish([one]), args.runs, undo_existing)
        undo_existing()
        t_big_new = median_time(lambda: Repository.open(str(big)).publish([fresh]), args.runs, undo_new)
        undo_new()
        print(f"publish one wheel (median of {args.runs}, in-process, includes validation and fsyncs)")
        print(f"  into an empty repository                           {t_empty * 1000:8.1f} ms")
        print(
            f"  into the big one, existing project ({args.per_project} files)      {t_big * 1000:8.1f} ms"
            f"   ratio {t_big / t_empty:.2f}x"
        )
        print(
            f"  into the big one, new project (root index updated) {t_big_new * 1000:8.1f} ms"
            f"   ratio {t_big_new / t_empty:.2f}x"
        )

        # -- reindex vs dumb-pypi --------------------------------------------------------------
        runs = args.reindex_runs
        scratch = work / "scratch"
        t_fast = median_time(lambda: Repository.open(str(big)).reindex(), runs)
        t_verify = median_time(lambda: Repository.open(str(big)).reindex(verify=True), runs)
        t_scratch = median_time(
            lambda: Repository.open(str(scratch)).reindex(), runs, lambda: scratch_copy(big, scratch, False)
        )
        check = Repository.open(str(scratch)).reindex()
        assert check.files == n_wheels and check.pages_written == 0, check.summary()

        pkg_list = work / "packages.json"
        t_prep = median_time(lambda: peer_package_list(wheels, pkg_list), runs)
        t_dumb = median_time(lambda: run_dumb_pypi(pkg_list, work / "dumb-out"), runs)
        t_peer = t_prep + t_dumb

        print(f"\nfull index of {n_wheels} wheels (median of {runs})")
        print(f"  peer: read+hash wheels, read METADATA           {t_prep:8.2f} s")
        print(f"  peer: dumb-pypi generates the index             {t_dumb:8.2f} s")
        print(f"  peer total                                      {t_peer:8.2f} s")
        print(
            f"  reindex (default: reuses recorded hashes whose   {t_fast:8.2f} s   "
            f"{t_peer / t_fast:5.1f}x = peer time / ours"
        )
        print("           size+mtime fingerprint is unchanged; reads every page, writes none)")
        print(
            f"  reindex --verify (reads and hashes every wheel   {t_verify:8.2f} s   "
            f"{t_peer / t_verify:5.1f}x = peer time / ours"
        )
        print("           and metadata file; equal hashes keep their entry; none written)")
        print(
            f"  reindex from scratch (no pages at all: hashes    {t_scratch:8.2f} s   "
            f"{t_peer / t_scratch:5.1f}x = peer time / ours"
        )
        print("           and parses every wheel, writes every page, fsync on;")
        print(f"           {os.cpu_count()} worker processes parse, pages written in fsynced batches)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

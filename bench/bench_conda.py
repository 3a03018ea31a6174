#!/usr/bin/env python3
"""Benchmark the conda channel on a directory repository.

1. Publishing one package into a subdir of 10,000 packages (2,000 names x 5 versions) against into an
   empty subdir: time (median of --runs), objects and bytes written. The classic repodata.json (and its
   .zst) is rewritten whole by every publish, as every conda channel's is; the CEP 16 side is one new
   shard and the shard index.
2. Bytes a client fetches to solve one package (`app`, which needs one `lib`) in that channel: py-rattler
   through the appliance's NGINX with sharded repodata off (repodata.json.zst, what rattler prefers)
   and on (shard index + the two shards), from the access log; with the plain and gzip repodata.json
   sizes beside them.

The 10,000 packages are built and indexed once and cached (default bench/.cache, git-ignored).
Usage:

    .venv/bin/python bench/bench_conda.py [--names 2000] [--versions 5] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner.appliance import conda_sample as cs
from provisioner.repo import channels
from provisioner.repo.conda import layout
from provisioner.repo.conda.channel import Channel
from provisioner.repo.engine import Repository
from tests.fixtures.nginx import _start, _stop


def build_channel(cache: Path, names: int, versions: int) -> Path:
    repo = cache / f"conda-{names}x{versions}"
    if (repo / "built").exists():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    noarch = repo / layout.CONDA / layout.NOARCH
    noarch.mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(names):
        for v in range(versions):
            name = f"pkg{i:05d}"
            recipe = cs.Recipe(name, f"1.{v}", depends=[f"pkg{(i + 1) % names:05d} >=1"])
            (noarch / f"{recipe.stem}.conda").write_bytes(cs.conda_bytes(recipe))
    for stem, depends in (("lib-1.0-0", []), ("app-1.0-0", ["lib >=1"])):
        name, version, build = stem.split("-")
        (noarch / f"{stem}.conda").write_bytes(
            cs.conda_bytes(cs.Recipe(name, version, build, depends=depends))
        )
    Repository.open(str(repo)).initialize()
    result = Channel(Repository.open(str(repo)).store).reindex()
    print(f"built {result.packages:,} packages in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    (repo / "built").write_text("")
    return repo


def written(before: dict[str, tuple[int, int]], root: Path) -> tuple[int, int]:
    """Objects and bytes created or replaced since `before` (path -> (mtime_ns, size))."""
    now = snapshot(root)
    changed = [p for p, st in now.items() if before.get(p) != st]
    return len(changed), sum(now[p][1] for p in changed)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def bench_publish(repo: Path, runs: int, tmp: Path) -> dict[str, float]:
    times, objects, sizes = [], [], []
    for run in range(runs):
        pkg = cs.build_package(tmp / "pkgs", "pkg00007", f"2.{run}")
        before = snapshot(repo)
        t0 = time.perf_counter()
        channels.publish(Repository.open(str(repo)), [pkg])
        times.append(time.perf_counter() - t0)
        n, b = written(before, repo)
        objects.append(n)
        sizes.append(b)
    return {
        "s": statistics.median(times),
        "objects": statistics.median(objects),
        "bytes": statistics.median(sizes),
    }


def bench_fetch(repo: Path, tmp: Path) -> dict[str, int]:
    import rattler

    index = _start(repo, tmp)
    out: dict[str, int] = {}
    try:
        for sharded in (False, True):
            mark = index.log_mark()

            async def solve(sharded: bool = sharded) -> list[str]:
                gateway = rattler.Gateway(
                    cache_dir=tmp / f"cache-{sharded}",
                    default_config=rattler.SourceConfig(sharded_enabled=sharded),
                    show_progress=False,
                )
                records = await rattler.solve(
                    [rattler.Channel(f"{index.root_url}/conda")],
                    ["app"],
                    gateway=gateway,
                    platforms=["linux-64", "noarch"],
                    virtual_packages=[],
                )
                return sorted(r.file_name for r in records)

            got = asyncio.run(solve())
            assert got == ["app-1.0-0.conda", "lib-1.0-0.conda"], got
            lines = index.access_log.read_bytes()[mark:].decode().splitlines()
            out["sharded" if sharded else "repodata.json.zst"] = sum(
                int(line.split('"')[2].split()[1]) for line in lines
            )
            out[f"requests {'sharded' if sharded else 'classic'}"] = len(lines)
    finally:
        _stop(index)
    raw = (repo / layout.repodata_object(layout.NOARCH)).read_bytes()
    out["repodata.json"] = len(raw)
    out["repodata.json gzip"] = len(gzip.compress(raw, 1))  # NGINX's default gzip_comp_level
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    args = parser.parse_args()
    big = build_channel(args.cache, args.names, args.versions)
    total = args.names * args.versions + 2
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        scratch = tmp / "big"
        shutil.copytree(big, scratch)
        empty = tmp / "empty"
        Repository.open(str(empty)).initialize()
        into_big = bench_publish(scratch, args.runs, tmp / "a")
        into_empty = bench_publish(empty, args.runs, tmp / "b")
        fetch = bench_fetch(big, tmp)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"conda channel benchmark, {stamp}, medians of {args.runs} runs")
    print()
    print(f"{'publish one package':34} {'median s':>9} {'objects written':>16} {'bytes written':>14}")
    for label, r in (
        ("into an empty subdir", into_empty),
        (f"into a subdir of {total:,} packages", into_big),
    ):
        print(f"{label:34} {r['s']:9.3f} {r['objects']:16.0f} {r['bytes']:14,.0f}")
    print(f"{'ratio (big / empty)':34} {into_big['s'] / into_empty['s']:8.1f}x")
    print()
    print(f"solve `app` (needs `lib`) in the {total:,}-package channel: bytes the client fetched")
    rows = [
        ("repodata.json, plain", fetch["repodata.json"], ""),
        ("repodata.json, gzip (NGINX)", fetch["repodata.json gzip"], ""),
        (
            "py-rattler, classic (.json.zst)",
            fetch["repodata.json.zst"],
            f"{fetch['requests classic']} requests",
        ),
        ("py-rattler, CEP 16 shards", fetch["sharded"], f"{fetch['requests sharded']} requests"),
    ]
    for label, n, note in rows:
        print(f"  {label:34} {n:>12,} B  {note}")
    for label, n in (
        ("repodata.json.zst", fetch["repodata.json.zst"]),
        ("plain repodata.json", fetch["repodata.json"]),
    ):
        print(f"  shards vs {label:24} {n / fetch['sharded']:11.1f}x fewer bytes")


if __name__ == "__main__":
    main()

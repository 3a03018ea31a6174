#!/usr/bin/env python3
"""`provision mirror` against `pip download` of the same files from the same local upstream.

    python bench/mirror_bench.py [--rounds 5]

The upstream is pypapo's own stack on loopback (`provision publish` + `provision serve`, Debian's
nginx with its access log) carrying the bench corpus (bench/corpus.txt: 52 wheels, 14 MB, one file per
pin). Each round, in rotating order:

- `pip download`: `pip download --isolated --no-cache-dir --no-deps --only-binary :all: --require-hashes
  -r corpus.txt --index-url UPSTREAM -d DIR`, a fresh directory;
- `mirror cold`: `provision mirror --repo DIR --from UPSTREAM --lock corpus.txt` into a fresh repository
  (the same 52 files, every byte verified, pages and metadata files written);
- `mirror re-run`: the same command again over that repository: nothing new, no file downloaded.

Medians of the rounds, ratios against pip download in the same run. Goals (reported, not asserted):
a cold mirror within 1.2x of pip download; a re-run under 1 s with no file downloaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import install_bench as ib  # noqa: E402  (the corpus and its cache are shared with the install bench)

PROVISION = Path(sys.executable).with_name("provision")
GOAL_COLD = 1.2
GOAL_RERUN_S = 1.0


def timed(cmd: list[str | Path], env: dict[str, str]) -> float:
    started = time.perf_counter()
    ib.run(cmd, env=env)
    return time.perf_counter() - started


def file_requests(log: ib.LogCursor) -> int:
    return sum(1 for line in log.read().splitlines() if ".whl " in line or ".tar.gz " in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    corpus = ib.parse_corpus(ib.CORPUS_FILE.read_text())
    install_dir, older_dir = ib.ensure_corpus(Path(sys.prefix), corpus)
    files = sorted([*install_dir.glob("*.whl"), *older_dir.glob("*.whl")])
    total_bytes = sum(f.stat().st_size for f in install_dir.glob("*.whl"))

    with tempfile.TemporaryDirectory(prefix="pypapo-mirror-bench-") as tmp:
        work = Path(tmp)
        env = ib.client_env(work / "home")
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        lock = work / "corpus.txt"
        # The [install] pins: one version per project, as one pip download can take them (the
        # [older] releases are on the upstream too, and neither side fetches them).
        lock.write_text("".join(p.line() + "\n" for p in corpus.install))
        ib.run([PROVISION, "publish", "--repo", work / "upstream", *files])
        port = ib.free_port()
        access = work / "upstream-access.log"
        server = subprocess.Popen(
            [PROVISION, "serve", "--repo", work / "upstream", "--port", str(port), "--access-log", access],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        upstream = f"http://127.0.0.1:{port}/simple/"
        try:
            ib.wait_http(f"http://127.0.0.1:{port}/healthz", proc=server)
            log = ib.LogCursor(access)
            times: dict[str, list[float]] = {"pip download": [], "mirror cold": [], "mirror re-run": []}
            downloads: dict[str, list[int]] = {k: [] for k in times}
            pip = [
                sys.executable, "-m", "pip", "--isolated", "download", "--no-cache-dir", "--no-deps",
                "--only-binary", ":all:", "--require-hashes", "-q", "-r", lock, "--index-url", upstream,
            ]  # fmt: skip
            mirror = [PROVISION, "mirror", "--from", upstream, "--lock", lock]
            # Warm the upstream's page cache once (every measure then reads from memory).
            ib.run([*pip, "-d", work / "warm"], env=env)
            for n in range(args.rounds):
                order = ["pip download", "mirror"] if n % 2 == 0 else ["mirror", "pip download"]
                for what in order:
                    if what == "pip download":
                        log.mark()
                        times[what].append(timed([*pip, "-d", work / f"pip-{n}"], env))
                        downloads[what].append(file_requests(log))
                        continue
                    repo = work / f"mirror-{n}"
                    log.mark()
                    times["mirror cold"].append(timed([*mirror, "--repo", repo], env))
                    downloads["mirror cold"].append(file_requests(log))
                    log.mark()
                    times["mirror re-run"].append(timed([*mirror, "--repo", repo], env))
                    downloads["mirror re-run"].append(file_requests(log))
                shutil.rmtree(work / f"pip-{n}", ignore_errors=True)
        finally:
            ib.stop(server)

    uv = ib.run([Path(sys.executable).with_name("uv"), "--version"]).strip()
    print(
        f"pypapo mirror benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {os.cpu_count()} CPUs,"
        f" kernel {platform.release()}, Python {platform.python_version()}, {uv}"
    )
    print(
        f"corpus: the {len(corpus.install)} [install] wheels ({total_bytes / 1e6:.1f} MB) of {len(files)}"
        " on a local upstream (provision serve);"
        f" {args.rounds} rounds, medians"
    )
    header = f"{'measure':<16}{'median s':>10}{'min-max s':>14}{'x pip':>8}{'files downloaded':>18}"
    print(header)
    print("-" * len(header))
    base = statistics.median(times["pip download"])
    for what, values in times.items():
        med = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(
            f"{what:<16}{med:>10.2f}{spread:>14}{med / base:>8.2f}{statistics.median(downloads[what]):>18.0f}"
        )
    cold = statistics.median(times["mirror cold"]) / base
    rerun = statistics.median(times["mirror re-run"])
    print("goals:")
    print(
        f"  {'PASS' if cold <= GOAL_COLD else 'MISS'}  cold mirror within {GOAL_COLD}x of pip download:"
        f" {cold:.2f}x"
    )
    fetched = max(downloads["mirror re-run"])
    ok = rerun < GOAL_RERUN_S and fetched == 0
    print(
        f"  {'PASS' if ok else 'MISS'}  re-run under {GOAL_RERUN_S:.0f} s, no file downloaded:"
        f" {rerun:.2f} s, {fetched} files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

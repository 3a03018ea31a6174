"""Load test: `provision serve` (the appliance's nginx config) beside a plain nginx over the same files.

    .venv/bin/python bench/bench_load.py [--duration 10] [--runs 3] [--clients 50 200]

Publishes sample projects into a temporary directory repository, serves it twice on loopback (pypapo's
config; a plain nginx with the same worker count, sendfile and an access log), and drives both with
wrk (Debian's `wrk`, installed by bootstrap) cycling through root page, project pages, metadata files
and wheels. Prints requests/s, p99 latency and errors (socket errors + non-2xx/3xx) per client count:
medians of `--runs` runs, and pypapo/plain ratios from the same runs. Loopback only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from provisioner.appliance import sample
from provisioner.appliance.serve import free_port
from provisioner.repo.engine import Repository

PROVISION = str(Path(sys.executable).with_name("provision"))
PLAIN_CONF = """
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30s;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
    }}
}}
"""


def _wait(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wrk(url: str, paths: list[str], clients: int, duration: int, tmp: Path) -> tuple[float, float, int]:
    script = tmp / "paths.lua"
    quoted = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{{quoted}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99_ms = float(p99_value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99_ms, errors + (int(non_2xx.group(1)) if non_2xx else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (bootstrap installs it)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx's workers run unprivileged and must read the files
        repo, dists = tmp / "repo", tmp / "dists"
        wheels = [sample.build_wheel(dists, f"bench-{i}", f"1.{v}") for i in range(20) for v in range(3)]
        Repository.open(str(repo)).publish(wheels)
        paths = ["/simple/"]
        for w in wheels[::3]:
            project = w.name.split("-")[0].replace("_", "-")
            paths += [
                f"/simple/{project}/",
                f"/simple/{project}/{w.name}.metadata",
                f"/simple/{project}/{w.name}",
            ]

        ours_port, plain_port = free_port(), free_port()
        (tmp / "plain").mkdir()
        conf = tmp / "plain" / "nginx.conf"
        conf.write_text(PLAIN_CONF.format(tmp=tmp / "plain", port=plain_port, root=repo))
        servers = [
            subprocess.Popen(
                [PROVISION, "serve", "--repo", str(repo), "--port", str(ours_port),
                 "--access-log", str(tmp / "ours.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                ["/usr/sbin/nginx", "-p", str(tmp / "plain"), "-c", str(conf)], stderr=subprocess.DEVNULL
            ),
        ]  # fmt: skip
        try:
            _wait(f"http://127.0.0.1:{ours_port}/simple/")
            _wait(f"http://127.0.0.1:{plain_port}/simple/")
            what = "paths (root, project pages, .metadata, wheels)"
            print(f"{len(paths)} {what}; {args.runs} runs of {args.duration} s each")
            print(f"{'clients':>7}  {'server':<16}{'req/s':>10}{'p99 ms':>9}{'errors':>8}")
            for clients in args.clients:
                results: dict[str, list[tuple[float, float, int]]] = {"pypapo": [], "plain nginx": []}
                for _ in range(args.runs):  # alternate, so both see the same machine load
                    results["pypapo"].append(
                        _wrk(f"http://127.0.0.1:{ours_port}", paths, clients, args.duration, tmp)
                    )
                    results["plain nginx"].append(
                        _wrk(f"http://127.0.0.1:{plain_port}", paths, clients, args.duration, tmp)
                    )
                for name, runs in results.items():
                    rps = statistics.median(r[0] for r in runs)
                    p99 = statistics.median(r[1] for r in runs)
                    print(f"{clients:>7}  {name:<16}{rps:>10.0f}{p99:>9.2f}{sum(r[2] for r in runs):>8}")
                ratio = statistics.median(
                    a[0] / b[0] for a, b in zip(results["pypapo"], results["plain nginx"], strict=True)
                )
                print(f"{clients:>7}  {'pypapo / plain':<16}{ratio:>10.2f}")
        finally:
            for server in servers:
                server.send_signal(signal.SIGINT if server is servers[0] else signal.SIGQUIT)
                server.wait(timeout=20)


if __name__ == "__main__":
    main()

"""Load test: the appliance's nginx config, the same without its page guard, and a plain nginx.

    .venv/bin/python bench/bench_load.py [--duration 10] [--runs 3] [--clients 50 200] [--against TREE]

Publishes sample projects, their site and a conda channel into a temporary directory repository and
serves it on loopback: pypapo's config (rendered as `provision serve` renders it), the same config with
the page guard taken out (njs: a stat per guarded file, see startup/page-guard.js.j2), a plain nginx with
the same worker count, sendfile and an access log, and with `--against TREE` the config of another
pypapo checkout (its own templates, rendered by its own code: before/after in one run). Drives each
with wrk (Debian's `wrk`, installed by bootstrap) over five mixes: everything of the index (root page,
project pages, metadata files and wheels), its pages only, the conda channel's index documents
(repodata, .zst, shard index, shards, channeldata), the site (list, data, project pages, assets), and
/healthz. Prints requests/s, p99 latency and errors (socket errors + non-2xx/3xx) per client count:
medians of `--runs` runs, and the ratios from the same runs. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
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

from provisioner.appliance import conda_sample, sample
from provisioner.appliance.render import ApplianceConfig, render_nginx_conf, render_page_guard
from provisioner.appliance.serve import find_nginx, free_port, worker_user
from provisioner.repo import channels
from provisioner.repo.engine import Repository

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


# What the page guard adds to the config (startup/nginx.conf.j2): the module, its variables, the checks
# and their 503 location. Everything else stays, so the difference is the guard's cost.
_GUARD = [
    re.compile(r"^load_module \S*ngx_http_js_module\.so;\n", re.M),
    re.compile(r"^ *js_(?:import|set) [^\n]*;\n", re.M),
    re.compile(r"^ *error_page 503 @pypapo_unusable;\n", re.M),
    re.compile(r"^ *if \(\$pypapo_(?:root|page|health)_problem\) \{\n[^{}]*?\n *\}\n", re.M),
    re.compile(r"^ *location @pypapo_unusable \{\n.*?\n {8}\}\n", re.M | re.S),
]


def without_page_guard(conf: str) -> str:
    for pattern in _GUARD:
        conf, n = pattern.subn("", conf)
        if not n:
            sys.exit(f"bench_load: the config has no {pattern.pattern!r}: update _GUARD to the template")
    if "_problem" in conf or "js_" in conf:
        sys.exit("bench_load: the page guard was not taken out entirely: update _GUARD to the template")
    return conf


def _render(repo: Path, run: Path, port: int) -> dict[str, str]:
    """The config and page guard `provision serve` renders (this tree's code: import this module)."""
    conf = render_nginx_conf(
        ApplianceConfig(bucket="local-directory", port=port),
        root_dir=str(repo), listen=f"127.0.0.1:{port}", runtime_dir=str(run),
        access_log=str(run / "access.log"), error_log="stderr",
        user=worker_user(repo) if os.geteuid() == 0 else None, worker_processes="2",
        guard_path=str(run / "page-guard.js"),
    )  # fmt: skip
    return {"conf": conf, "guard": render_page_guard()}


def _render_in(tree: Path, repo: Path, run: Path, port: int) -> dict[str, str]:
    """The same, rendered by another checkout's code and templates (a process with it first on the path)."""
    # This very file, run with the other tree first on the path: its provisioner renders.
    script = (
        "import json, runpy, sys; from pathlib import Path; import provisioner; "
        f"render = runpy.run_path({os.path.abspath(__file__)!r})['_render']; "
        "print(json.dumps({**render(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])), "
        "'origin': provisioner.__file__}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(repo), str(run), str(port)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rendered = json.loads(out)
    if not Path(rendered.pop("origin")).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"bench_load: {tree}'s provisioner was not the one imported (is it a pypapo checkout?)")
    return rendered


def _start_pypapo(
    repo: Path, run: Path, port: int, guard: bool, tree: Path | None = None
) -> subprocess.Popen[bytes]:
    """nginx with the config `provision serve` renders (optionally without the page guard, or another
    checkout's)."""
    run.mkdir()
    rendered = _render(repo, run, port) if tree is None else _render_in(tree, repo, run, port)
    (run / "page-guard.js").write_text(rendered["guard"])
    conf = rendered["conf"]
    (run / "nginx.conf").write_text(conf if guard else without_page_guard(conf))
    return subprocess.Popen(
        [find_nginx(), "-p", str(run), "-e", "stderr", "-c", str(run / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--against", type=Path, help="another pypapo checkout, served beside this one")
    parser.add_argument("--mixes", nargs="+", help="only these mixes (all, pages, conda, site, healthz)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (bootstrap installs it)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx's workers run unprivileged and must read the files
        repo, dists = tmp / "repo", tmp / "dists"
        wheels = [sample.build_wheel(dists, f"bench-{i}", f"1.{v}") for i in range(20) for v in range(3)]
        conda = [conda_sample.build_package(dists, f"cbench-{i}", "1.0") for i in range(20)]
        conda.append(conda_sample.build_package(dists, "cbench-native", "1.0", subdir="linux-64"))
        channels.publish(Repository.open(str(repo)), [*wheels, *conda])
        everything, pages = ["/simple/"], ["/simple/"]
        for w in wheels[::3]:
            project = w.name.split("-")[0].replace("_", "-")
            everything += [
                f"/simple/{project}/",
                f"/simple/{project}/{w.name}.metadata",
                f"/simple/{project}/{w.name}",
            ]
            pages.append(f"/simple/{project}/")
        channel = ["/conda/channeldata.json"]
        for subdir in ("noarch", "linux-64"):
            channel += [f"/conda/{subdir}/{n}" for n in ("repodata.json", "repodata.json.zst")]
            channel.append(f"/conda/{subdir}/repodata_shards.msgpack.zst")
        channel += [f"/{p.relative_to(repo).as_posix()}" for p in sorted(repo.glob("conda/*/shards/*"))]
        channel.append("/conda/osx-arm64/repodata.json")  # a subdir nothing was published into
        site = ["/ui/", "/ui/search-0.json", "/ui/site.css", "/ui/site.js"]
        site += [f"/ui/bench-{i}/" for i in range(20)]
        mixes = {"all": everything, "pages": pages, "conda": channel, "site": site, "healthz": ["/healthz"]}
        if args.mixes:
            mixes = {name: mixes[name] for name in args.mixes}

        ports = {"pypapo": free_port(), "pypapo no guard": free_port(), "plain nginx": free_port()}
        before = f"pypapo @{args.against.name}" if args.against else ""
        if before:
            ports[before] = free_port()
        (tmp / "plain").mkdir()
        conf = tmp / "plain" / "nginx.conf"
        conf.write_text(PLAIN_CONF.format(tmp=tmp / "plain", port=ports["plain nginx"], root=repo))
        servers = [
            _start_pypapo(repo, tmp / "guarded", ports["pypapo"], guard=True),
            _start_pypapo(repo, tmp / "unguarded", ports["pypapo no guard"], guard=False),
            subprocess.Popen(
                ["/usr/sbin/nginx", "-p", str(tmp / "plain"), "-c", str(conf)], stderr=subprocess.DEVNULL
            ),
        ]
        if before:
            servers.append(_start_pypapo(repo, tmp / "against", ports[before], guard=True, tree=args.against))
        try:
            for port in ports.values():
                _wait(f"http://127.0.0.1:{port}/simple/")
            print(
                f"mixes: all = {len(everything)} paths (root, project pages, .metadata, wheels), pages = "
                f"{len(pages)} (root and project pages), conda = {len(channel)} (index documents), site = "
                f"{len(site)}, healthz = 1; {args.runs} runs of {args.duration} s each"
            )
            print(f"{'mix':<8}{'clients':>7}  {'server':<28}{'req/s':>10}{'p99 ms':>9}{'errors':>8}")
            for mix, paths in mixes.items():
                for clients in args.clients:
                    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in ports}
                    for _ in range(args.runs):  # alternate, so all see the same machine load
                        for name, port in ports.items():
                            results[name].append(
                                _wrk(f"http://127.0.0.1:{port}", paths, clients, args.duration, tmp)
                            )
                    for name, runs in results.items():
                        rps = statistics.median(r[0] for r in runs)
                        p99 = statistics.median(r[1] for r in runs)
                        errors = sum(r[2] for r in runs)
                        print(f"{mix:<8}{clients:>7}  {name:<28}{rps:>10.0f}{p99:>9.2f}{errors:>8}")
                    pairs = [("pypapo", "pypapo no guard"), ("pypapo", "plain nginx")]
                    for a, b in pairs + ([("pypapo", before)] if before else []):
                        ratio = statistics.median(
                            x[0] / y[0] for x, y in zip(results[a], results[b], strict=True)
                        )
                        print(f"{mix:<8}{clients:>7}  {a + ' / ' + b:<28}{ratio:>10.2f}")
        finally:
            for server in servers:
                server.send_signal(signal.SIGQUIT)
                server.wait(timeout=20)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Install speed and bytes through pypapo against pypiserver, devpi-server, dumb-pypi and local files.

    python bench/install_bench.py            # loopback, then a ~2 MB/s link when root; prints one table

The same pinned corpus (bench/corpus.txt) is served by every index; each client run starts cold (fresh
venv, fresh cache, fresh HOME) with no pip/uv configuration from the machine. Requests and bytes come from
an nginx access log for every server: pypapo's own nginx, dumb-pypi's static nginx, and an nginx reverse
proxy in front of pypiserver and devpi-server (so every peer is counted the same way). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.parser
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CORPUS_FILE = BENCH_DIR / "corpus.txt"
REQUIREMENTS_FILE = BENCH_DIR / "requirements-bench.txt"
# Its own cache outside bench/.cache/, which bench_engine.py rebuilds from scratch when its parameters change.
CACHE_DIR = Path(os.environ.get("PYPAPO_BENCH_CACHE", "/var/tmp/pypapo-install-bench"))
RESULTS_DIR = BENCH_DIR / "results"

MEASURES = ("uv-install", "pip-install", "pip-unpinned", "uv-compile")
MEASURE_HELP = {
    "uv-install": "uv pip install -r pinned (with hashes)",
    "pip-install": "pip install -r pinned (with hashes)",
    "pip-unpinned": "pip install <top-level names>",
    "uv-compile": "uv pip compile <top-level names> (resolution only)",
}
SERVERS = ("pypapo", "pypiserver", "devpi", "dumb-pypi", "limit")
PEERS = ("pypiserver", "devpi", "dumb-pypi")

# The shaped link: addresses exist only on the veth pair inside the namespace the bench creates.
NETNS = "pypapo-bench"
VETH_HOST, VETH_NS = "pbench0", "pbench1"
HOST_ADDR, NS_ADDR, PREFIXLEN = "10.213.200.1", "10.213.200.2", 30
SHAPE_RATE = "16mbit"  # 2 MB/s, an IAP tunnel's order of magnitude
SHAPE_BYTES_PER_S = 2_000_000
# tbf counts whole frames: a full TCP segment carries 1448 payload bytes in a 1514-byte Ethernet frame
# (20 IP + 32 TCP with timestamps + 14 Ethernet), so payload crosses the link at most this fast.
LINK_PAYLOAD_BYTES_PER_S = SHAPE_BYTES_PER_S * 1448 / 1514
# On the shaped link the limit is not the local files alone: every wheel byte must cross the link once.
LINK_LIMIT = "limit@link"
INSTALL_MEASURES = ("uv-install", "pip-install", "pip-unpinned")

GOAL_UV_VS_LIMIT = 1.10
GOAL_COMPILE_BYTES_SHARE = 0.03
CLIENT_TIMEOUT = 600


class BenchError(SystemExit):
    """A failure that must stop the run loudly: one message, non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(f"install_bench: error: {message}")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- corpus


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    @property
    def key(self) -> str:
        return f"{canonical(self.name)}=={self.version}"

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclasses.dataclass(frozen=True)
class Corpus:
    top_level: tuple[str, ...]
    install: tuple[Pin, ...]
    older: tuple[Pin, ...]

    @property
    def install_keys(self) -> frozenset[str]:
        return frozenset(p.key for p in self.install)


_PIN_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)\s+--hash=sha256:(?P<h>[0-9a-f]{64})$"
)


def parse_corpus(text: str) -> Corpus:
    """Parse bench/corpus.txt: `# top-level:` names, then `# [install]` and `# [older]` sections of pins."""
    top: tuple[str, ...] = ()
    sections: dict[str, list[Pin]] = {"install": [], "older": []}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# top-level:"):
            top = tuple(line.split(":", 1)[1].split())
        elif line in ("# [install]", "# [older]"):
            section = line[3:-1]
        elif line and not line.startswith("#"):
            m = _PIN_RE.match(line)
            if not m or not section:
                raise BenchError(
                    f"{CORPUS_FILE.name}: cannot parse {line!r} (want NAME==VER --hash=sha256:HEX)"
                )
            sections[section].append(Pin(m["name"], m["version"], m["h"]))
    if not top or not sections["install"]:
        raise BenchError(f"{CORPUS_FILE.name}: needs a '# top-level:' line and a '# [install]' section")
    return Corpus(top, tuple(sections["install"]), tuple(sections["older"]))


def parse_freeze(text: str) -> frozenset[str]:
    """`name==version` lines from pip/uv freeze or a compiled requirements file, normalized."""
    keys = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            keys.add(f"{canonical(name.split('[')[0])}=={version.split(';')[0].strip()}")
    return frozenset(keys)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ environment


def download_env() -> dict[str, str]:
    """The machine's environment without any pip/uv configuration (proxies and CA settings stay)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", UV_NO_CONFIG="1"
    )
    return env


def client_env(home: Path) -> dict[str, str]:
    """A clean environment for a measured client: nothing inherited but a minimal PATH and a locale."""
    for d in ("cache", "config", "tmp"):
        (home / d).mkdir(parents=True, exist_ok=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }


def run(cmd: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 900, **kw) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchError(f"`{' '.join(map(str, cmd))[:300]}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


def ensure_bench_venv() -> Path:
    """The bench's own venv with the peers and pinned clients, keyed by requirements-bench.txt."""
    key = hashlib.sha256(REQUIREMENTS_FILE.read_bytes()).hexdigest()[:12]
    venv = CACHE_DIR / f"venv-{key}"
    if (venv / ".complete").exists():
        return venv
    log(f"creating the bench venv {venv} (peers and clients from {REQUIREMENTS_FILE.name})")
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "--isolated", "-q", "-r", REQUIREMENTS_FILE], env=download_env())
    (venv / ".complete").write_text(key)
    return venv


def ensure_corpus(venv: Path, corpus: Corpus) -> tuple[Path, Path]:
    """Download the pinned wheels once into a cache keyed by corpus.txt; verify every hash."""
    key = hashlib.sha256(CORPUS_FILE.read_bytes()).hexdigest()[:12]
    root = CACHE_DIR / f"corpus-{key}"
    dirs = {"install": root / "install", "older": root / "older"}
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        for section, pins in (("install", corpus.install), ("older", corpus.older)):
            dirs[section].mkdir(parents=True)
            req = root / f"{section}.txt"
            req.write_text("".join(p.line() + "\n" for p in pins))
            log(f"downloading {len(pins)} {section} wheels (pip download --require-hashes)")
            run(
                [
                    venv / "bin/python",
                    "-m",
                    "pip",
                    "download",
                    "--isolated",
                    "-q",
                    "--only-binary",
                    ":all:",
                    "--no-deps",
                    "--require-hashes",
                    "-r",
                    req,
                    "-d",
                    dirs[section],
                ],
                env=download_env(),
            )
    for section, pins in (("install", corpus.install), ("older", corpus.older)):
        files = sorted(dirs[section].glob("*.whl"))
        have = {sha256_file(f) for f in files}
        want = {p.sha256 for p in pins}
        if have != want or len(files) != len(pins):
            raise BenchError(f"corpus cache {dirs[section]} does not match {CORPUS_FILE.name}; delete {root}")
    (root / ".complete").write_text(key)
    return dirs["install"], dirs["older"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server for {url} exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ----------------------------------------------------------------------------------- access logs


_LOG_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+|-)')


@dataclasses.dataclass
class Traffic:
    requests: int = 0
    bytes: int = 0
    whl_requests: int = 0
    whl_bytes: int = 0
    metadata_requests: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)


def parse_access_log(text: str) -> Traffic:
    """Requests and body bytes from nginx access-log lines (combined format or anything starting like it)."""
    t = Traffic()
    for line in text.splitlines():
        m = _LOG_RE.search(line)
        if not m:
            continue
        size = 0 if m["bytes"] == "-" else int(m["bytes"])
        path = m["path"].split("?", 1)[0].split("#", 1)[0]
        t.requests += 1
        t.bytes += size
        t.statuses[m["status"]] = t.statuses.get(m["status"], 0) + 1
        if path.endswith(".whl"):
            t.whl_requests += 1
            t.whl_bytes += size
        elif path.endswith(".metadata"):
            t.metadata_requests += 1
    return t


class LogCursor:
    """The part of an access log written between mark() and read()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> str:
        # nginx writes a line when the response is done; let a just-finished request land.
        last = -1
        for _ in range(20):
            size = self.path.stat().st_size if self.path.exists() else 0
            if size == last:
                break
            last = size
            time.sleep(0.05)
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------- servers


@dataclasses.dataclass
class Target:
    """Where a client gets its packages: an index URL and its access log, or local files (the limit)."""

    name: str
    index_url: str | None = None
    find_links: Path | None = None
    access_log: Path | None = None

    def uv_args(self) -> list[str]:
        if self.index_url:
            return ["--index-url", self.index_url]
        return ["--no-index", "--find-links", str(self.find_links)]

    def pip_args(self) -> list[str]:
        if self.index_url:
            # pip ignores plain-HTTP indexes off localhost (the shaped link's address) unless trusted.
            host = urllib.parse.urlsplit(self.index_url).hostname or ""
            return [*self.uv_args(), "--trusted-host", host]
        return self.uv_args()


NGINX_PROXY_CONF = """\
{user}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    log_format bench '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent '
                     '"$http_referer" "$http_user_agent" $bytes_sent $request_time';
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size 100m;
{servers}
}}
"""

# A transparent counting proxy: no gzip, no caching, so the peer's own responses reach the client.
PROXY_SERVER = """\
    upstream {name}_up {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen {host}:{port};
        access_log {log} bench;
        gzip off;
        location / {{
            proxy_pass http://{name}_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-outside-url http://$http_host;
            proxy_buffering on;
        }}
    }}
"""

# dumb-pypi's own deployment: static files behind a plain nginx with Debian's defaults (gzip on for HTML).
STATIC_SERVER = """\
    server {{
        listen {host}:{port};
        access_log {log} bench;
        gzip on;
        root {root};
        index index.html;
        location / {{ }}
    }}
"""


class Stack:
    """Every server of one phase, listening on `host`: the upstream peers stay up across phases."""

    def __init__(self, work: Path, venv: Path, install_dir: Path, older_dir: Path) -> None:
        self.work = work
        self.venv = venv
        self.bin = venv / "bin"
        self.all_dir = work / "wheels"
        self.all_dir.mkdir()
        for f in [*install_dir.glob("*.whl"), *older_dir.glob("*.whl")]:
            os.link(f, self.all_dir / f.name) if _same_fs(f, self.all_dir) else shutil.copy2(f, self.all_dir)
        self.procs: list[subprocess.Popen] = []
        self.front: list[subprocess.Popen] = []
        self.pypiserver_port = free_port()
        self.devpi_port = free_port()
        self.pypapo_repo = work / "pypapo-repo"
        self.dumb_root = work / "dumb-pypi"

    # -- one-time preparation -------------------------------------------------------------------

    def prepare(self, want: Sequence[str]) -> None:
        if "pypapo" in want:
            self._publish_pypapo()
        if "dumb-pypi" in want:
            self._generate_dumb_pypi()
        if "pypiserver" in want:
            self._start_pypiserver()
        if "devpi" in want:
            self._start_devpi()

    def _publish_pypapo(self) -> None:
        provision = shutil.which("provision", path=str(REPO_ROOT / ".venv/bin")) or shutil.which("provision")
        if not provision:
            raise BenchError("`provision` not found: run `bash bootstrap test` (or pip install -e .) first")
        self.provision = provision
        log("pypapo: provision publish")
        files = sorted(self.all_dir.glob("*.whl"))
        run([provision, "publish", "--repo", self.pypapo_repo, *files], env=download_env())

    def _generate_dumb_pypi(self) -> None:
        log("dumb-pypi: generating the static index (hashes, requires-python, PEP 658 metadata files)")
        pool = self.dumb_root / "pool"
        pool.mkdir(parents=True)
        lines = []
        for whl in sorted(self.all_dir.glob("*.whl")):
            shutil.copy2(whl, pool / whl.name)
            metadata = wheel_metadata(whl)
            (pool / f"{whl.name}.metadata").write_bytes(metadata)
            entry = {
                "filename": whl.name,
                "hash": f"sha256={sha256_file(whl)}",
                "core_metadata": f"sha256={hashlib.sha256(metadata).hexdigest()}",
            }
            requires_python = email.parser.BytesParser().parsebytes(metadata).get("Requires-Python")
            if requires_python:
                entry["requires_python"] = requires_python
            lines.append(json.dumps(entry))
        listing = self.work / "dumb-pypi-packages.json"
        listing.write_text("\n".join(lines) + "\n")
        run(
            [
                self.bin / "dumb-pypi",
                "--package-list-json",
                listing,
                "--packages-url",
                "../../pool/",
                "--output-dir",
                self.dumb_root,
                "--no-per-release-json",
                "--no-generate-timestamp",
            ]
        )

    def _start_pypiserver(self) -> None:
        log("pypiserver: starting (gunicorn, 2 workers) behind the counting nginx proxy")
        root = self.work / "pypiserver-packages"
        shutil.copytree(self.all_dir, root)
        env = {**download_env(), "GUNICORN_CMD_ARGS": "--workers 2"}
        proc = subprocess.Popen(
            [
                self.bin / "pypi-server",
                "run",
                "-i",
                "127.0.0.1",
                "-p",
                str(self.pypiserver_port),
                "--disable-fallback",
                "--server",
                "gunicorn",
                root,
            ],
            env=env,
            stdout=(self.work / "pypiserver.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{self.pypiserver_port}/simple/", proc=proc)

    def _start_devpi(self) -> None:
        log("devpi-server: init, start (--offline-mode), private index with bases= empty, upload")
        server_dir, client_dir = self.work / "devpi-server", self.work / "devpi-client"
        env = {**download_env(), "DEVPI_CLIENTDIR": str(client_dir)}
        run([self.bin / "devpi-init", "--serverdir", server_dir, "--root-passwd", "bench"], env=env)
        proc = subprocess.Popen(
            [
                self.bin / "devpi-server",
                "--serverdir",
                server_dir,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.devpi_port),
                "--offline-mode",
            ],
            env=env,
            stdout=(self.work / "devpi.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{self.devpi_port}"
        wait_http(f"{url}/+api", timeout=120, proc=proc)
        devpi = self.bin / "devpi"
        run([devpi, "use", url], env=env)
        run([devpi, "login", "root", "--password", "bench"], env=env)
        run([devpi, "index", "-c", "root/bench", "bases=", "volatile=False"], env=env)
        run([devpi, "use", "root/bench"], env=env)
        run([devpi, "upload", "--from-dir", self.all_dir], env=env)

    # -- per phase --------------------------------------------------------------------------------

    def start_phase(self, phase: str, host: str, want: Sequence[str]) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        logs = self.work / "logs" / phase
        logs.mkdir(parents=True)
        servers = []
        ports = {}
        for name in ("pypiserver", "devpi", "dumb-pypi"):
            if name in want:
                ports[name] = free_port(host)
                targets[name] = Target(name, access_log=logs / f"{name}.access.log")
        # pypiserver and devpi sit behind the same plain counting proxy: (upstream port, index path)
        proxied = {
            "pypiserver": (self.pypiserver_port, "/simple/"),
            "devpi": (self.devpi_port, "/root/bench/+simple/"),
        }
        for name, (upstream, path) in proxied.items():
            if name in want:
                log = targets[name].access_log
                servers.append(
                    PROXY_SERVER.format(name=name, upstream=upstream, host=host, port=ports[name], log=log)
                )
                targets[name].index_url = f"http://{host}:{ports[name]}{path}"
        if "dumb-pypi" in want:
            servers.append(
                STATIC_SERVER.format(
                    host=host,
                    port=ports["dumb-pypi"],
                    root=self.dumb_root,
                    log=targets["dumb-pypi"].access_log,
                )
            )
            targets["dumb-pypi"].index_url = f"http://{host}:{ports['dumb-pypi']}/simple/"
        if servers:
            prefix = self.work / f"nginx-{phase}"
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (prefix / "tmp" / d).mkdir(parents=True)
            conf = prefix / "nginx.conf"
            user = "user root;\n" if os.geteuid() == 0 else ""
            conf.write_text(NGINX_PROXY_CONF.format(user=user, prefix=prefix, servers="".join(servers)))
            run(["nginx", "-t", "-q", "-p", prefix, "-c", conf, "-e", prefix / "error.log"])
            proc = subprocess.Popen(
                ["nginx", "-p", prefix, "-c", conf, "-e", prefix / "error.log", "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=(prefix / "stderr.log").open("w"),
            )
            self.front.append(proc)
            for t in targets.values():
                wait_http(t.index_url, proc=proc)
        if "pypapo" in want:
            targets["pypapo"] = self._serve_pypapo(phase, host, logs)
        if "limit" in want:
            targets["limit"] = Target("limit", find_links=self.all_dir)
        return {n: targets[n] for n in SERVERS if n in targets}

    def _serve_pypapo(self, phase: str, host: str, logs: Path) -> Target:
        port = free_port(host)
        access_log = logs / "pypapo.access.log"
        cmd = [self.provision, "serve", "--repo", self.pypapo_repo, "--host", host, "--port", str(port)]
        help_text = run([self.provision, "serve", "--help"], env=download_env())
        if "--access-log" in help_text:
            cmd += ["--access-log", str(access_log)]
        log(f"pypapo: {' '.join(map(str, cmd[1:]))}")
        proc = subprocess.Popen(
            cmd, env=download_env(), stdout=(logs / "pypapo-serve.log").open("w"), stderr=subprocess.STDOUT
        )
        self.front.append(proc)
        url = f"http://{host}:{port}/simple/"
        wait_http(url, proc=proc)
        if not access_log.exists():
            access_log = find_pypapo_access_log(self.pypapo_repo, logs / "pypapo-serve.log")
        return Target("pypapo", index_url=url, access_log=access_log)

    def stop_phase(self) -> None:
        for proc in self.front:
            stop(proc, signal.SIGQUIT if proc.args[0] == "nginx" else signal.SIGTERM)
        self.front.clear()

    def close(self) -> None:
        self.stop_phase()
        for proc in self.procs:
            stop(proc)
        self.procs.clear()


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def wheel_metadata(whl: Path) -> bytes:
    with zipfile.ZipFile(whl) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise BenchError(f"{whl.name}: expected one .dist-info/METADATA, found {names}")
        return z.read(names[0])


def find_pypapo_access_log(repo: Path, serve_log: Path) -> Path:
    """Where `provision serve` writes its access log: named in its output, else a known location."""
    text = serve_log.read_text(errors="replace") if serve_log.exists() else ""
    for m in re.finditer(r"(/\S+access\S*\.log)", text):
        if Path(m[1]).exists():
            return Path(m[1])
    raise BenchError(
        "cannot find pypapo's nginx access log: `provision serve` should take --access-log PATH "
        "(or print where it writes it)"
    )


# ---------------------------------------------------------------------------------- shaped link


class ShapedLink:
    """A veth pair into a network namespace, both ends shaped with tbf to SHAPE_RATE."""

    def __init__(self) -> None:
        self.up = False
        self.description = ""

    def __enter__(self) -> ShapedLink:
        self._teardown(quiet=True)  # a previous run killed hard may have left them
        cmds = [
            ["ip", "netns", "add", NETNS],
            ["ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS],
            ["ip", "link", "set", VETH_NS, "netns", NETNS],
            ["ip", "addr", "add", f"{HOST_ADDR}/{PREFIXLEN}", "dev", VETH_HOST],
            ["ip", "link", "set", VETH_HOST, "up"],
            ["ip", "-n", NETNS, "addr", "add", f"{NS_ADDR}/{PREFIXLEN}", "dev", VETH_NS],
            ["ip", "-n", NETNS, "link", "set", VETH_NS, "up"],
            ["ip", "-n", NETNS, "link", "set", "lo", "up"],
        ]
        self.up = True
        for cmd in cmds:
            run(cmd)
        tbf = ["tbf", "rate", SHAPE_RATE, "burst", "32kbit", "latency", "50ms"]
        for prefix, dev in ((["tc"], VETH_HOST), (["ip", "netns", "exec", NETNS, "tc"], VETH_NS)):
            run([*prefix, "qdisc", "add", "dev", dev, "root", *tbf])
        self.description = f"veth + netns, tbf {SHAPE_RATE} (2 MB/s) each way"
        # netem (added delay) needs sch_netem, which not every kernel has; rate is what decides here.
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown(quiet=False)

    def _teardown(self, quiet: bool) -> None:
        for cmd in (["ip", "link", "del", VETH_HOST], ["ip", "netns", "del", NETNS]):
            subprocess.run(cmd, capture_output=True, check=False)
        self.up = False

    @staticmethod
    def tx_bytes() -> int:
        return int(Path(f"/sys/class/net/{VETH_HOST}/statistics/tx_bytes").read_text())

    @staticmethod
    def client_prefix() -> list[str]:
        return ["ip", "netns", "exec", NETNS]


# ---------------------------------------------------------------------------------------- clients


@dataclasses.dataclass
class RunResult:
    phase: str
    measure: str
    server: str
    seconds: float
    traffic: Traffic
    wire_bytes: int | None = None


class Clients:
    def __init__(self, work: Path, venv: Path, corpus: Corpus) -> None:
        self.work = work
        self.python = venv / "bin" / "python"
        self.uv = venv / "bin" / "uv"
        self.corpus = corpus
        self.pinned = work / "pinned.txt"
        self.pinned.write_text("".join(p.line() + "\n" for p in corpus.install))
        self.top = work / "top-level.in"
        self.top.write_text("".join(n + "\n" for n in corpus.top_level))
        self.counter = 0

    def command(self, measure: str, target: Target, run_dir: Path) -> tuple[list[str], Path | None]:
        """The client command for one measured run, and the venv it installs into (None: resolution only)."""
        venv = run_dir / "venv"
        cache = run_dir / "uv-cache"
        if measure == "uv-install":
            cmd = [
                self.uv,
                "pip",
                "install",
                "--python",
                venv / "bin/python",
                "--cache-dir",
                cache,
                "--require-hashes",
                "-r",
                self.pinned,
                *target.uv_args(),
            ]
        elif measure in ("pip-install", "pip-unpinned"):
            reqs = (
                ["--require-hashes", "-r", self.pinned] if measure == "pip-install" else self.corpus.top_level
            )
            # --no-compile: uv does not compile bytecode either; both measure fetching and unpacking.
            cmd = [
                self.python,
                "-m",
                "pip",
                "--python",
                venv / "bin/python",
                "install",
                "--isolated",
                "--no-cache-dir",
                "--no-compile",
                "--progress-bar",
                "off",
                "-q",
                *target.pip_args(),
                *reqs,
            ]
        elif measure == "uv-compile":
            cmd = [
                self.uv,
                "pip",
                "compile",
                self.top,
                "--python",
                self.python,
                "--cache-dir",
                cache,
                "--no-header",
                "--no-annotate",
                "-o",
                run_dir / "compiled.txt",
                *target.uv_args(),
            ]
            return [str(c) for c in cmd], None
        else:
            raise ValueError(measure)
        return [str(c) for c in cmd], venv

    def measure(
        self, phase: str, measure: str, target: Target, prefix: Sequence[str], link: ShapedLink | None
    ) -> RunResult:
        self.counter += 1
        run_dir = self.work / "runs" / f"{self.counter:04d}-{phase}-{measure}-{target.name}"
        env = client_env(run_dir / "home")
        cmd, venv = self.command(measure, target, run_dir)
        if venv is not None:
            run([self.uv, "venv", "-q", "--python", self.python, venv], env=env)
        cursor = LogCursor(target.access_log) if target.access_log else None
        if cursor:
            cursor.mark()
        wire0 = link.tx_bytes() if link else None
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*prefix, *cmd], env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
        )
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise BenchError(
                f"{phase}/{measure}/{target.name} failed ({proc.returncode}): {' '.join(cmd)}\n{tail}"
            )
        traffic = parse_access_log(cursor.read()) if cursor else Traffic()
        wire = link.tx_bytes() - wire0 if link and wire0 is not None else None
        self._check(measure, target, run_dir, venv)
        shutil.rmtree(run_dir, ignore_errors=True)
        return RunResult(phase, measure, target.name, seconds, traffic, wire)

    def _check(self, measure: str, target: Target, run_dir: Path, venv: Path | None) -> None:
        """Every run must end with exactly the pinned set, else the figures mean nothing."""
        if venv is None:
            got = parse_freeze((run_dir / "compiled.txt").read_text())
        else:
            got = parse_freeze(
                run(
                    [self.uv, "pip", "freeze", "--python", venv / "bin/python"],
                    env=client_env(run_dir / "home"),
                )
            )
        want = self.corpus.install_keys
        if got != want:
            raise BenchError(
                f"{measure} through {target.name} did not give the pinned set: "
                f"missing {sorted(want - got)}, unexpected {sorted(got - want)}"
            )


# ------------------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Row:
    phase: str
    measure: str
    server: str
    runs: int
    median: float
    low: float
    high: float
    requests: int
    bytes: int
    whl_requests: int
    wire_bytes: int | None


def aggregate(results: Sequence[RunResult]) -> list[Row]:
    rows = []
    keys = sorted(
        {(r.phase, r.measure, r.server) for r in results},
        key=lambda k: (k[0], MEASURES.index(k[1]), [*SERVERS, LINK_LIMIT].index(k[2])),
    )
    for phase, measure, server in keys:
        rs = [r for r in results if (r.phase, r.measure, r.server) == (phase, measure, server)]
        secs = [r.seconds for r in rs]
        wires = [r.wire_bytes for r in rs if r.wire_bytes is not None]
        rows.append(
            Row(
                phase,
                measure,
                server,
                len(rs),
                statistics.median(secs),
                min(secs),
                max(secs),
                int(statistics.median(r.traffic.requests for r in rs)),
                int(statistics.median(r.traffic.bytes for r in rs)),
                max(r.traffic.whl_requests for r in rs),
                int(statistics.median(wires)) if wires else None,
            )
        )
    return rows


def add_link_limit(rows: list[Row], phase: str, wheel_bytes: int, bytes_per_s: float) -> list[Row]:
    """The shaped phase's limit: local files, but no faster than the wheels' bytes through the link."""
    out = list(rows)
    floor = wheel_bytes / bytes_per_s
    for r in rows:
        if r.phase == phase and r.server == "limit" and r.measure in INSTALL_MEASURES:
            out.append(
                dataclasses.replace(
                    r, server=LINK_LIMIT, median=max(r.median, floor), low=max(r.low, floor),
                    high=max(r.high, floor), runs=0,
                )
            )  # fmt: skip
    out.sort(key=lambda r: (r.phase, MEASURES.index(r.measure), [*SERVERS, LINK_LIMIT].index(r.server)))
    return out


def limit_of(by: dict, measure: str) -> Row | None:
    """The row a measure is compared with: the link-bound limit where there is one."""
    return by.get((measure, LINK_LIMIT)) or by.get((measure, "limit"))


@dataclasses.dataclass
class Goal:
    phase: str
    text: str
    value: str
    ok: bool | None  # None: not measurable in this run


def evaluate_goals(rows: Sequence[Row], wheel_bytes: int) -> list[Goal]:
    goals = []
    for phase in dict.fromkeys(r.phase for r in rows):
        by = {(r.measure, r.server): r for r in rows if r.phase == phase}
        uv, limit = by.get(("uv-install", "pypapo")), limit_of(by, "uv-install")
        if uv and limit:
            ratio = uv.median / limit.median
            goals.append(
                Goal(
                    phase,
                    f"uv install within {GOAL_UV_VS_LIMIT:.2f}x of the limit",
                    f"{ratio:.2f}x ({uv.median:.2f}s vs {limit.median:.2f}s)",
                    ratio <= GOAL_UV_VS_LIMIT,
                )
            )
        if uv:
            peers = [by[("uv-install", p)] for p in PEERS if ("uv-install", p) in by]
            if peers:
                best = min(peers, key=lambda r: r.median)
                goals.append(
                    Goal(
                        phase,
                        "uv install ahead of every peer",
                        f"{uv.median:.2f}s vs best peer {best.server} {best.median:.2f}s",
                        all(uv.median < p.median for p in peers),
                    )
                )
        comp = by.get(("uv-compile", "pypapo"))
        if comp:
            goals.append(
                Goal(
                    phase,
                    "uv pip compile fetches no wheel",
                    f"{comp.whl_requests} .whl requests",
                    comp.whl_requests == 0,
                )
            )
            share = comp.bytes / wheel_bytes
            goals.append(
                Goal(
                    phase,
                    f"uv pip compile bytes under {GOAL_COMPILE_BYTES_SHARE:.0%} of the wheels'",
                    f"{comp.bytes:,} B = {share:.2%} of {wheel_bytes:,} B",
                    share < GOAL_COMPILE_BYTES_SHARE,
                )
            )
    return goals


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def render_table(rows: Sequence[Row], goals: Sequence[Goal], phases: dict[str, str]) -> str:
    """One table: per phase and measure, each server's median, its ratios, and what it served."""
    out = []
    head = (
        f"{'measure':<13} {'server':<11} {'median s':>8} {'min-max s':>11} {'x limit':>7} {'x pypapo':>8} "
        f"{'requests':>8} {'served':>9} {'.whl req':>8} {'wire':>9}"
    )
    for phase, description in phases.items():
        prow = [r for r in rows if r.phase == phase]
        if not prow:
            continue
        out.append(f"== {phase}: {description}")
        out.append(head)
        out.append("-" * len(head))
        for measure in MEASURES:
            mrows = [r for r in prow if r.measure == measure]
            if not mrows:
                continue
            by = {r.server: r for r in mrows}
            for r in mrows:
                lim, pp = by.get(LINK_LIMIT) or by.get("limit"), by.get("pypapo")
                x_lim = f"{r.median / lim.median:.2f}" if lim else "-"
                x_pp = f"{r.median / pp.median:.2f}" if pp else "-"
                http = r.server not in ("limit", LINK_LIMIT)
                out.append(
                    f"{measure:<13} {r.server:<11} {r.median:>8.2f} {f'{r.low:.2f}-{r.high:.2f}':>11} "
                    f"{x_lim:>7} {x_pp:>8} {r.requests if http else '-':>8} "
                    f"{human_bytes(r.bytes) if http else '-':>9} {r.whl_requests if http else '-':>8} "
                    f"{human_bytes(r.wire_bytes) if r.wire_bytes is not None else '-':>9}"
                )
            out.append("")
        pgoals = [g for g in goals if g.phase == phase]
        if pgoals:
            out.append(f"goals ({phase}):")
            for g in pgoals:
                mark = "PASS" if g.ok else ("MISS" if g.ok is not None else "n/a ")
                out.append(f"  {mark}  {g.text}: {g.value}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def machine_info(venv: Path) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    uv = subprocess.run([venv / "bin/uv", "--version"], capture_output=True, text=True, check=False).stdout
    pip = subprocess.run(
        [venv / "bin/python", "-m", "pip", "--version"], capture_output=True, text=True, check=False
    ).stdout.split(" from ")[0]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "clients": f"{uv.strip()}, {pip.strip()}",
        "nginx": nginx.replace("nginx version: ", ""),
    }


# -------------------------------------------------------------------------------------------- main


def schedule(servers: Sequence[str], measures: Sequence[str], runs: int) -> Iterator[tuple[int, str, str]]:
    """Rounds of every measure on every server, the server order rotated each round against drift."""
    for i in range(runs):
        for measure in measures:
            k = i % len(servers)
            for server in [*servers[k:], *servers[:k]]:
                yield i, measure, server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="cold runs per uv measure and server on loopback (5)")
    p.add_argument(
        "--pip-runs", type=int, default=2, help="cold runs per pip measure on loopback (2: pip is slow)"
    )
    p.add_argument(
        "--shaped-runs", type=int, default=3, help="cold runs per uv measure on the shaped link (3)"
    )
    p.add_argument(
        "--shaped-pip-runs",
        type=int,
        default=1,
        help="cold runs per pip measure on the shaped link (1: bytes decide there, and pip is slow)",
    )
    p.add_argument("--no-shaped", action="store_true", help="skip the shaped (~2 MB/s) run")
    p.add_argument("--no-loopback", action="store_true", help="skip the loopback run")
    p.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    p.add_argument(
        "--measures", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs) for a look")
    p.add_argument("--json", type=Path, help="also write the results as JSON here (default bench/results/)")
    args = p.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.measures = [m for m in args.measures.split(",") if m]
    for s in args.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}")
    for m in args.measures:
        if m not in MEASURES:
            p.error(f"unknown measure {m!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux":
        raise BenchError("the corpus is cp311 x86_64 Linux wheels: run with CPython 3.11 on x86_64 Linux")
    if not shutil.which("nginx"):
        raise BenchError("nginx not found: apt-get install nginx (bash bootstrap installs it)")
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so servers, the namespace and the work directory are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    corpus = parse_corpus(CORPUS_FILE.read_text())
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    venv = ensure_bench_venv()
    install_dir, older_dir = ensure_corpus(venv, corpus)
    wheel_bytes = sum(f.stat().st_size for f in install_dir.glob("*.whl"))

    phases = {"loopback": "127.0.0.1, no shaping"}
    shaped = not args.no_shaped
    if shaped and os.geteuid() != 0:
        log("shaped run skipped: it needs root (ip netns, tc); run as root for it, or pass --no-shaped")
        shaped = False

    work = Path(tempfile.mkdtemp(prefix="pypapo-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    stack = Stack(work, venv, install_dir, older_dir)
    clients = Clients(work, venv, corpus)
    results: list[RunResult] = []
    try:
        stack.prepare(args.servers)
        plan: list[tuple[str, str, int, int]] = []
        if not args.no_loopback:
            plan.append(("loopback", "127.0.0.1", args.runs, args.pip_runs))
        if shaped:
            plan.append(("shaped", HOST_ADDR, args.shaped_runs, args.shaped_pip_runs))
        for phase, host, uv_runs, pip_runs in plan:
            with ShapedLink() if phase == "shaped" else contextlib.nullcontext() as link:
                if link is not None:
                    phases["shaped"] = (
                        f"client in a netns, {link.description}; "
                        f"{LINK_LIMIT} = max(local files, the wheels' bytes through the link)"
                    )
                targets = stack.start_phase(phase, host, args.servers)
                prefix = ShapedLink.client_prefix() if link is not None else []
                try:
                    # One unrecorded resolution per server first: first-request costs (devpi's and
                    # pypiserver's caches, nginx's workers) are not what a cold client measures.
                    for target in targets.values():
                        clients.measure(phase, "uv-compile", target, prefix, link)
                    for measures, runs in (
                        ([m for m in args.measures if m.startswith("uv")], uv_runs),
                        ([m for m in args.measures if m.startswith("pip")], pip_runs),
                    ):
                        for i, measure, server in schedule(list(targets), measures, runs):
                            r = clients.measure(phase, measure, targets[server], prefix, link)
                            results.append(r)
                            log(
                                f"{phase} run {i + 1}/{runs} {measure:<12} {server:<10} {r.seconds:6.2f}s "
                                f"{r.traffic.requests:4d} req {human_bytes(r.traffic.bytes):>9}"
                            )
                finally:
                    stack.stop_phase()
    finally:
        stack.close()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = aggregate(results)
    if "shaped" in phases:
        rows = add_link_limit(rows, "shaped", wheel_bytes, LINK_PAYLOAD_BYTES_PER_S)
    goals = evaluate_goals(rows, wheel_bytes)
    info = machine_info(venv)
    elapsed = time.monotonic() - started
    print(
        f"pypapo install benchmark, {info['date']}: {info['nproc']} x {info['cpu']}, "
        f"kernel {info['kernel']}, "
        f"Python {info['python']}, {info['clients']}, {info['nginx']}"
    )
    print(
        f"corpus: {len(corpus.install)} wheels installed ({human_bytes(wheel_bytes)}), "
        f"{len(corpus.older)} older releases also published; medians of cold runs; "
        f"'served' = response bodies in the access log, 'wire' = bytes sent by the host end of the veth"
    )
    print()
    print(render_table(rows, goals, phases), end="")
    print(f"\nwall time of the whole benchmark: {elapsed / 60:.1f} min")
    out = args.json or RESULTS_DIR / f"install-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "wheel_bytes": wheel_bytes,
                "elapsed_s": elapsed,
                "phases": phases,
                "rows": [dataclasses.asdict(r) for r in rows],
                "goals": [dataclasses.asdict(g) for g in goals],
            },
            indent=1,
        )
    )
    log(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The HA test's stand-ins for Google's internal passthrough load balancer and for a client fleet.

``Balancer`` is Debian's HAProxy in TCP mode (passthrough: it never parses HTTP on the data path), on a
loopback port, with an HTTP health check of ``GET /healthz`` per backend as Google's health checkers
run it. What it stands in for, setting by setting:

- ``mode tcp``, ``balance roundrobin``: the passthrough forwarding rule spreads connections over healthy
  backends; nothing is retried or redispatched on the data path (``retries 0``, no ``option redispatch``).
- ``inter/fall/rise`` and ``timeout check``: the health check's ``check_interval_sec``, ``timeout_sec``
  and unhealthy/healthy thresholds (1 s here to keep the test short; the plan uses Google's 5 s).
- a backend that lost its network: Google's balancer is no proxy and never answers for a backend. Until
  the check marks it unhealthy, packets to it are lost: a new connection's SYN, a request, an ACK all
  go unanswered. Afterwards, with ``connection_persistence_on_unhealthy_backends = NEVER_PERSIST``, the
  packets of its established connections are diverted to a healthy backend, whose kernel knows no such
  connection and resets it, but only when the client sends one: a client waiting for an answer to a
  request already acknowledged sends nothing, and waits until its own timeout. So the stand-in keeps a
  connection to a lost backend silent until the client gives up (connect, server and client timeouts
  far above any client's, no ``on-marked-down shutdown-sessions``): at least as hard as Google's
  balancer for every client, and exactly it for the waiting one. (The test loses the network in the
  guest, with the host's neighbour entry pinned, so that nothing on this side reports an error either.)
- runtime ``disable``/``enable``/``state drain``: the managed instance group adding a new instance to the
  backend and removing an old one with connection draining (no new connections, in-flight ones finish)
  before it is shut down.

``ClientLoop`` installs through the balancer, one install after another, and records every outcome:
installs, failures (with the client's message), what the client said on stderr (its retries) and the
longest stall (the longest time between two successful installs finishing, which includes an install's
own duration).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    port: int
    enabled: bool = True


def config(
    port: int,
    socket_path: Path,
    backends: list[Backend],
    interval_ms: int = 1000,
    check_timeout_ms: int = 1000,
) -> str:
    servers = "\n".join(
        f"    server {b.name} {b.address}:{b.port} check{'' if b.enabled else ' disabled'}" for b in backends
    )
    return f"""# The HA test's stand-in for an internal passthrough load balancer (tests/vm/balancer.py).
global
    stats socket {socket_path} mode 600 level admin
    log stderr format short local0 info

defaults
    mode tcp
    log global
    option tcplog
    retries 0
    # Longer than any client's own timeout: a connection to a lost backend stays silent until the
    # client gives up, as on Google's balancer (it never answers for a backend; see the docstring).
    timeout connect 600s
    timeout client 600s
    timeout server 600s
    timeout check {check_timeout_ms}ms

frontend lb
    bind 127.0.0.1:{port}
    default_backend appliances

backend appliances
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server inter {interval_ms} fall 2 rise 2
{servers}
"""


@dataclass(frozen=True)
class ServerState:
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/2", ...
    sessions: int  # current connections
    total: int  # connections since start


class Balancer:
    def __init__(self, work: Path, port: int, backends: list[Backend]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.socket_path = work / "admin.sock"
        self.cfg = work / "haproxy.cfg"
        self.cfg.write_text(config(port, self.socket_path, backends))
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected its config:\n{check.stdout}{check.stderr}")
        self.log = open(work / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(self.cfg)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists() or not _answers(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; log: {work / 'haproxy.log'}")
            time.sleep(0.05)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, ServerState]:
        text = self.command("show stat").lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == "appliances" and row["svname"] not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = ServerState(
                    row["svname"], row["status"], int(row["scur"] or 0), int(row["stot"] or 0)
                )
        return out

    def enable(self, name: str) -> None:
        self.command(f"enable server appliances/{name}")

    def drain(self, name: str) -> None:
        self.command(f"set server appliances/{name} state drain")

    def maint(self, name: str) -> None:
        self.command(f"set server appliances/{name} state maint")

    def wait(self, predicate: Callable[[dict[str, ServerState]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.servers()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"load balancer: {what} not reached in {timeout}s: {self.servers()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Outcome:
    started: float
    ended: float
    ok: bool
    detail: str = ""


@dataclass
class ClientLoop:
    """One real `pip install` after another through the balancer until stopped, in a thread."""

    install: Callable[[int], subprocess.CompletedProcess[str]]  # attempt number -> pip's result
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            begin = time.monotonic()
            try:
                res = self.install(n)
                ok, detail = res.returncode == 0, (res.stderr or res.stdout)[-4000:]
            except subprocess.TimeoutExpired as exc:
                ok, detail = False, f"pip timed out: {exc}"
            except Exception as exc:  # a failed check in `install` is a failed install, not a dead loop
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            self.outcomes.append(Outcome(begin, time.monotonic(), ok, detail))
            n += 1

    def said(self, text: str, since: float = 0.0) -> int:
        """Installs still running at `since` or later whose client output contains `text` (its retry
        warnings). By their end, not their start: the download a loss cuts may have begun before it."""
        return sum(1 for o in self.outcomes if o.ended >= since and text in o.detail)

    def installs_since(self, moment: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.started >= moment)

    def wait_installs_since(self, moment: float, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.installs_since(moment) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} installs after the mark: {self.figures()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=300)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def longest_stall(self, since: float = 0.0) -> float:
        """Longest time between two successful installs finishing (from the loop's start or `since`)."""
        start = max(self.started, since)
        marks = [start, *sorted(o.ended for o in self.outcomes if o.ok and o.ended >= start)]
        return max((b - a for a, b in itertools.pairwise(marks)), default=0.0)

    def figures(self) -> str:
        ok = [o.ended - o.started for o in self.outcomes if o.ok]
        median = statistics.median(ok) if ok else 0.0
        span = (self.outcomes[-1].ended - self.started) if self.outcomes else 0.0
        return (
            f"{len(ok)} installs, {len(self.failures)} failed, longest stall {self.longest_stall():.1f}s,"
            f" median install {median:.1f}s, over {span:.0f}s"
        )


@contextlib.contextmanager
def running(loop: ClientLoop):  # type: ignore[no-untyped-def]
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()

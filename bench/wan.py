"""A wide-area link for benchmarks: a server in a network namespace, behind round trips and bandwidth.

`WanLink` creates a network namespace (nothing in it but loopback and one end of the link: no
route out) and joins it to this one by a point-to-point link between two TUN devices, 10.203.X.1
here and 10.203.X.2 there (/30). A forwarder process carries every IP packet across, each
direction as `tc qdisc ... netem delay D rate R` would: serialized at the link's rate, then held
for half the round trip (+- a jitter), never reordered, dropped only past a queue of
`QUEUE_PACKETS`. The kernels' own TCP at both ends sees it, so connection set-up, slow start
(Linux restarts it after an idle connection) and the window all pay the round trips as they do on
a real path.

Why not netem on a veth pair: the kernels this runs on (this machine's, CI's) are built without
sch_netem (`CONFIG_NET_SCH_NETEM`), and `tc qdisc add ... netem` fails there. A userspace forwarder
works wherever TUN does; at the rates modeled (tens of Mbit/s, a few thousand packets a second)
its cost is small, and its timing error (the scheduler's: a millisecond or two on a loaded
machine) is small against round trips of 10 ms and more.

`RequestCounter` counts, in the process it is installed in, the HTTP requests, the TCP connections
opened and the bytes sent and received on internet sockets (what the client's TCP carries: request
lines, headers and bodies; no TCP/IP headers), so a figure can say what a laptop's uplink pays.

Needs root (network namespaces, TUN devices) and iproute2's `ip`. Run `python3 bench/wan.py check`
to see whether this machine can.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

QUEUE_PACKETS = 1000  # a device's default txqueuelen: a laptop's uplink buffers that much and more
NS_PREFIX = "pypapo-wan-"  # namespaces this module creates: pypapo-wan-<pid of their creator>
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class LinkShape:
    """What the link does to every packet. Rates in Mbit/s (None: unlimited)."""

    rtt_ms: float
    jitter_ms: float = 0.0  # each one-way delay is rtt/2 +- jitter/2, uniformly
    up_mbit: float | None = None  # client (this namespace) -> server
    down_mbit: float | None = None  # server -> client

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.jitter_ms < 0 or self.jitter_ms > self.rtt_ms:
            raise ValueError(
                f"need 0 <= jitter <= rtt (got rtt {self.rtt_ms} ms, jitter {self.jitter_ms} ms)"
            )
        for rate in (self.up_mbit, self.down_mbit):
            if rate is not None and rate <= 0:
                raise ValueError(f"a rate is positive Mbit/s (got {rate})")

    def describe(self) -> str:
        def rate(r: float | None) -> str:
            return "unlimited" if r is None else f"{r:g} Mbit/s"

        bw = (
            rate(self.up_mbit)
            if self.up_mbit == self.down_mbit
            else f"up {rate(self.up_mbit)}, down {rate(self.down_mbit)}"
        )
        return f"RTT {self.rtt_ms:g} ms +- {self.jitter_ms / 2:g} ms each way, {bw}"


class Pacer:
    """When each packet of one direction arrives at the far end: FIFO, serialized at `bits_per_s`
    (None: no serialization delay), then `delay_s` +- `jitter_s`/2 in flight, never overtaking the
    packet before it. Past `queue_packets` waiting for the serializer, a packet is dropped (None)."""

    def __init__(
        self,
        delay_s: float,
        jitter_s: float = 0.0,
        bits_per_s: float | None = None,
        *,
        queue_packets: int = QUEUE_PACKETS,
        rng: random.Random | None = None,
    ) -> None:
        self.delay_s, self.jitter_s, self.bits_per_s = delay_s, jitter_s, bits_per_s
        self.queue_packets = queue_packets
        self.rng = rng or random.Random()
        self._tx_free = 0.0  # when the serializer has sent everything queued so far
        self._last_arrival = 0.0
        self._queued: collections.deque[float] = collections.deque()  # serializer finish times
        self.packets = self.bytes = self.dropped = 0

    def arrival(self, now: float, size: int) -> float | None:
        if self.bits_per_s is not None:
            while self._queued and self._queued[0] <= now:
                self._queued.popleft()
            if len(self._queued) >= self.queue_packets:
                self.dropped += 1
                return None
            self._tx_free = max(now, self._tx_free) + size * 8 / self.bits_per_s
            self._queued.append(self._tx_free)
            sent = self._tx_free
        else:
            sent = now
        jitter = self.rng.uniform(-self.jitter_s / 2, self.jitter_s / 2) if self.jitter_s else 0.0
        self._last_arrival = max(self._last_arrival, sent + self.delay_s + jitter)
        self.packets += 1
        self.bytes += size
        return self._last_arrival


def _mbit(rate: float | None) -> float | None:
    return None if rate is None else rate * 1e6


def pacers(shape: LinkShape, rng: random.Random | None = None) -> tuple[Pacer, Pacer]:
    """(up, down) for a shape."""
    one_way, jitter = shape.rtt_ms / 2e3, shape.jitter_ms / 1e3
    return (
        Pacer(one_way, jitter, _mbit(shape.up_mbit), rng=rng),
        Pacer(one_way, jitter, _mbit(shape.down_mbit), rng=rng),
    )


# -- the forwarder (its own process: `python3 wan.py forward ...`) --------------------------------------
def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as ns:
        if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")


def forward(up_fd: int, down_fd: int, shape: LinkShape, control: int | None = None) -> None:
    """Carry packets read from `up_fd` (the client's side) to `down_fd` and back, shaped, until
    `control` ends: a pipe of requests, one a line, each answered on stdout: a new shape (`rtt
    jitter up down`, `-` for unlimited; answer `ok`) or `stats` (packets, bytes, dropped, up then
    down, since the shape was set)."""
    up, down = pacers(shape)
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {
        up_fd: collections.deque(),
        down_fd: collections.deque(),
    }
    other = {up_fd: down_fd, down_fd: up_fd}
    poll = select.epoll()
    for fd in queues:
        poll.register(fd, select.EPOLLIN)
    lines = None
    if control is not None:
        poll.register(control, select.EPOLLIN)
        lines = os.fdopen(control, "r", buffering=1)
    while True:
        heads = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(heads) - time.monotonic()) if heads else -1
        events = poll.poll(timeout)
        now = time.monotonic()
        for fd, _mask in events:
            if fd == control:
                assert lines is not None
                line = lines.readline()
                if not line:
                    return
                if line.strip() == "stats":
                    print(*(n for p in (up, down) for n in (p.packets, p.bytes, p.dropped)), flush=True)
                else:
                    up, down = pacers(parse_shape(line))  # packets in flight keep their times
                    print("ok", flush=True)
                continue
            pacer = up if fd == up_fd else down
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                at = pacer.arrival(now, len(packet))
                if at is not None:
                    queues[fd].append((at, packet))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):  # the far side went away: the packet is lost
                    os.write(other[fd], queue.popleft()[1])


def format_shape(shape: LinkShape) -> str:
    def rate(r: float | None) -> str:
        return "-" if r is None else repr(r)

    return f"{shape.rtt_ms!r} {shape.jitter_ms!r} {rate(shape.up_mbit)} {rate(shape.down_mbit)}"


def parse_shape(line: str) -> LinkShape:
    rtt, jitter, up, down = line.split()
    return LinkShape(
        float(rtt), float(jitter), None if up == "-" else float(up), None if down == "-" else float(down)
    )


def _forward_main(args: argparse.Namespace) -> int:
    up_fd = _open_tun(args.near)  # this namespace's end, then the far one from inside its namespace
    _enter_netns(args.netns)
    down_fd = _open_tun(args.far)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the bench, which stops us in order
    print("ready", flush=True)
    forward(up_fd, down_fd, parse_shape(args.shape), control=sys.stdin.fileno())
    return 0


# -- the namespace and the link ---------------------------------------------------------------------------
class WanUnavailable(RuntimeError):
    """This machine cannot build the link (not root, no `ip`, no TUN); the message says which."""


def unavailable() -> str | None:
    """Why a WanLink cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices); CI runs as root: run it as root"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install iproute2; bootstrap installs it)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (a kernel with CONFIG_TUN)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _names(pid: int) -> tuple[str, str, str]:
    return f"{NS_PREFIX}{pid}", f"pw{pid}a", f"pw{pid}b"


def remove_stale() -> list[str]:
    """Delete the namespaces and devices of WanLinks whose process is gone (killed with -9)."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.fullmatch(rf"{re.escape(NS_PREFIX)}(\d+)", line.split()[0]) if line.strip() else None
        if m and not _pid_alive(int(m[1])):
            ns, near, _far = _names(int(m[1]))
            _ip("link", "del", near, check=False)
            _ip("netns", "del", ns, check=False)
            gone.append(ns)
    return gone


def _free_subnet() -> int:
    """X of a 10.203.X.0/30 no address here is in (helpers may run several links at once)."""
    used = _ip("-o", "addr", check=False).stdout
    start = os.getpid() % 250
    for k in range(250):
        x = 1 + (start + k) % 250
        if f" 10.203.{x}." not in used:
            return x
    raise WanUnavailable("no free 10.203.X.0/30 for the link")


@dataclass(frozen=True)
class LinkStats:
    up_packets: int
    up_bytes: int
    up_dropped: int
    down_packets: int
    down_bytes: int
    down_dropped: int

    def describe(self) -> str:
        return (
            f"up {self.up_packets} packets, {self.up_bytes / 1e6:.1f} MB, {self.up_dropped} dropped;"
            f" down {self.down_packets} packets, {self.down_bytes / 1e6:.1f} MB, {self.down_dropped} dropped"
        )


@dataclass
class WanLink:
    """The namespace, its link and the forwarder; `close()` (or the context) removes all of it."""

    shape: LinkShape
    netns: str = ""
    near: str = ""  # this namespace's device and address
    far: str = ""  # the namespace's device
    near_ip: str = ""
    far_ip: str = ""
    _forwarder: subprocess.Popen[str] | None = None
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> WanLink:
        why = unavailable()
        if why:
            raise WanUnavailable(f"--gcs-rtt: {why}")
        remove_stale()
        self.netns, self.near, self.far = _names(os.getpid())
        x = _free_subnet()
        self.near_ip, self.far_ip = f"10.203.{x}.1", f"10.203.{x}.2"
        try:
            _ip("netns", "add", self.netns)
            _ip("tuntap", "add", "dev", self.near, "mode", "tun")
            _ip("tuntap", "add", "dev", self.far, "mode", "tun")
            _ip("link", "set", self.far, "netns", self.netns)
            _ip("addr", "add", f"{self.near_ip}/30", "dev", self.near)
            _ip("-n", self.netns, "addr", "add", f"{self.far_ip}/30", "dev", self.far)
            _ip("link", "set", self.near, "up")
            _ip("-n", self.netns, "link", "set", self.far, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
            argv = [sys.executable, __file__, "forward", self.netns, self.near, self.far]
            self._forwarder = subprocess.Popen(
                [*argv, format_shape(self.shape)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert self._forwarder.stdout is not None
            if self._forwarder.stdout.readline().strip() != "ready":
                raise WanUnavailable(f"the link's forwarder did not start (exit {self._forwarder.wait()})")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise WanUnavailable(f"building the link: {' '.join(exc.cmd)}: {exc.stderr.strip()}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reshape(self, shape: LinkShape) -> None:
        """From now on, shape packets so (those in flight keep their times)."""
        fw = self._forwarder
        assert fw is not None and fw.stdin is not None and fw.stdout is not None
        fw.stdin.write(format_shape(shape) + "\n")
        fw.stdin.flush()
        if fw.stdout.readline().strip() != "ok":
            raise WanUnavailable(f"the link's forwarder stopped (exit {fw.wait()})")
        self.shape = shape

    def stats(self) -> LinkStats:
        """What crossed the link since the shape was set."""
        fw = self._forwarder
        assert fw is not None and fw.stdin is not None and fw.stdout is not None
        fw.stdin.write("stats\n")
        fw.stdin.flush()
        up_packets, up_bytes, up_dropped, down_packets, down_bytes, down_dropped = map(
            int, fw.stdout.readline().split()
        )
        return LinkStats(up_packets, up_bytes, up_dropped, down_packets, down_bytes, down_dropped)

    def connect_ms(self, port: int, tries: int = 5) -> float:
        """The median time of a TCP connect to the far end's `port`: one round trip as the link
        really gives it (the forwarder's own delay on this machine included)."""
        took = []
        for _ in range(tries):
            t0 = time.perf_counter()
            socket.create_connection((self.far_ip, port), timeout=10).close()
            took.append(time.perf_counter() - t0)
        return sorted(took)[len(took) // 2] * 1e3

    def spawn(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace (stopped by close())."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], **kw)  # type: ignore[call-overload]
        self._children.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the namespace to its end."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        for proc in [*self._children, *([self._forwarder] if self._forwarder else [])]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._children.clear()
        self._forwarder = None
        if self.near:
            _ip("link", "del", self.near, check=False)
        if self.netns:
            _ip("netns", "del", self.netns, check=False)  # takes its device with it


# -- counting what a client sends -------------------------------------------------------------------------
@dataclass
class Traffic:
    """What a client sent and received between two snapshots. `rounds`: how many times it waited
    for the network (requests in flight side by side count once; see `rounds`)."""

    requests: int = 0
    connections: int = 0
    sent: int = 0
    received: int = 0
    rounds: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def encode(self) -> str:
        methods = ",".join(f"{m}={n}" for m, n in sorted(self.by_method.items())) or "-"
        return f"{self.requests} {self.connections} {self.sent} {self.received} {self.rounds} {methods}"

    @classmethod
    def decode(cls, text: str) -> Traffic:
        requests, connections, sent, received, rounds, methods = text.split()
        pairs = [kv.split("=") for kv in methods.split(",")] if methods != "-" else []
        by_method = {m: int(n) for m, n in pairs}
        return cls(int(requests), int(connections), int(sent), int(received), int(rounds), by_method)


def rounds(intervals: Sequence[tuple[float, float]]) -> int:
    """The number of rounds in which requests (start, end) were in flight: overlapping requests are
    one round, a request that starts after every earlier one ended begins the next. On a link of
    round trip R that is what a client waits at least: rounds x R."""
    count, busy_until = 0, float("-inf")
    for start, end in sorted(intervals):
        if start >= busy_until:
            count += 1
        busy_until = max(busy_until, end)
    return count


class RequestCounter:
    """Counts this process's HTTP requests (at requests' HTTPAdapter.send, which every
    google-cloud-storage call goes through, each retry its own), TCP connections opened, and bytes
    sent and received on internet sockets. `install()` once, take a `mark()` before what is measured
    and `since(mark)` after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t = Traffic()
        self._spans: list[list[float]] = []  # [start, end] of each request, in the order started
        self._labels: list[str] = []  # what each request was (gcs_label)
        self._undo: list[tuple[type, str, object]] = []

    def mark(self) -> Traffic:
        with self._lock:
            t = self._t
            return Traffic(t.requests, t.connections, t.sent, t.received, 0, dict(t.by_method))

    def since(self, mark: Traffic) -> Traffic:
        """What happened after `mark` (a request still in flight counts as ending now)."""
        now = time.monotonic()
        with self._lock:
            t = self._t
            spans = [(a, b or now) for a, b in self._spans[mark.requests :]]
            methods = {m: n - mark.by_method.get(m, 0) for m, n in t.by_method.items()}
            return Traffic(
                t.requests - mark.requests,
                t.connections - mark.connections,
                t.sent - mark.sent,
                t.received - mark.received,
                rounds(spans),
                {m: n for m, n in methods.items() if n},
            )

    def _add(self, **kw: int) -> None:
        with self._lock:
            for k, n in kw.items():
                setattr(self._t, k, getattr(self._t, k) + n)

    def timeline(self, mark: Traffic, origin: float) -> list[tuple[float, float, str]]:
        """Each request after `mark`: (start, end) in seconds after `origin` (time.monotonic), label."""
        now = time.monotonic()
        with self._lock:
            pairs = zip(self._spans[mark.requests :], self._labels[mark.requests :], strict=True)
            return [(a - origin, (b or now) - origin, label) for (a, b), label in pairs]

    def _started(self, method: str, label: str) -> list[float]:
        span = [time.monotonic(), 0.0]
        with self._lock:
            self._t.requests += 1
            self._t.by_method[method] = self._t.by_method.get(method, 0) + 1
            self._spans.append(span)
            self._labels.append(label)
        return span

    def install(self) -> RequestCounter:
        import requests.adapters

        counter = self
        send = requests.adapters.HTTPAdapter.send

        def counted_send(adapter: object, request: requests.PreparedRequest, *a: object, **kw: object):
            span = counter._started(request.method or "?", gcs_label(request))
            try:
                response = send(adapter, request, *a, **kw)  # type: ignore[arg-type]
                if kw.get("stream"):
                    # A streamed body (downloads) is read after send returns: the request ends then.
                    response.raw.release_conn = _after(response.raw.release_conn, span)
                    return response
                span[1] = time.monotonic()
                return response
            except BaseException:
                span[1] = time.monotonic()
                raise

        self._undo.append(
            (requests.adapters.HTTPAdapter, "send", vars(requests.adapters.HTTPAdapter)["send"])
        )
        requests.adapters.HTTPAdapter.send = counted_send  # type: ignore[method-assign]
        self._undo += _wrap_socket(self)
        return self

    def uninstall(self) -> None:
        """Put back what install() replaced (a test's process goes on without counting)."""
        while self._undo:
            cls, name, orig = self._undo.pop()
            if orig is None:
                delattr(cls, name)  # it was inherited
            else:
                setattr(cls, name, orig)


def gcs_label(request: requests.PreparedRequest) -> str:
    """`METHOD what object` of a GCS JSON API request (an upload's object name is in its body)."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(request.url or "").path
    m = re.fullmatch(r"(/download|/upload)?/storage/v1/b/[^/]+/o(?:/(.+))?", path)
    if not m:
        return f"{request.method} {path}"
    name = unquote(m[2] or "")
    if m[1] == "/upload":
        body = request.body if isinstance(request.body, bytes) else b""
        found = re.search(rb'"name": ?"([^"]+)"', body[:4096])
        name = found[1].decode() if found else "?"
        return f"{request.method} upload {name}"
    if not name:
        return f"{request.method} list"  # objects.list (the store's check)
    kind = "media" if m[1] == "/download" else "metadata"
    return f"{request.method} {kind if request.method == 'GET' else 'object'} {name}"


def _after(release: Callable[[], None], span: list[float]) -> Callable[[], None]:
    def released() -> None:
        if not span[1]:
            span[1] = time.monotonic()
        release()

    return released


def _wrap_socket(counter: RequestCounter) -> list[tuple[type, str, object]]:
    """Count at socket.socket, which urllib3's connections and http.client's reads go through
    (internet sockets only: the worker's pipes and unix sockets are not the network)."""
    cls = socket.socket
    inet = (socket.AF_INET, socket.AF_INET6)
    undo: list[tuple[type, str, object]] = []

    def nbytes(data: object) -> int:
        return memoryview(data).nbytes  # type: ignore[arg-type]

    def wrap(name: str, count: Callable[[tuple, object], None]) -> None:
        orig = getattr(cls, name)
        undo.append((cls, name, vars(cls).get(name)))

        def wrapped(sock: socket.socket, *a: object, **kw: object) -> object:
            result = orig(sock, *a, **kw)
            if sock.family in inet:
                count(a, result)
            return result

        setattr(cls, name, wrapped)

    wrap("connect", lambda a, r: counter._add(connections=1))
    wrap("sendall", lambda a, r: counter._add(sent=nbytes(a[0])))
    wrap("send", lambda a, r: counter._add(sent=int(r)))  # type: ignore[call-overload]
    wrap("recv_into", lambda a, r: counter._add(received=int(r)))  # type: ignore[call-overload]
    wrap("recv", lambda a, r: counter._add(received=len(r)))  # type: ignore[arg-type]
    return undo


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether this machine can build the link")
    fw = sub.add_parser("forward", help="(internal) the forwarder WanLink starts")
    fw.add_argument("netns")
    fw.add_argument("near")
    fw.add_argument("far")
    fw.add_argument("shape", help="rtt jitter up down (ms, ms, Mbit/s or -, Mbit/s or -)")
    args = ap.parse_args(argv)
    if args.cmd == "forward":
        return _forward_main(args)
    why = unavailable()
    print(why or "ok: this machine can build the link (root, ip, /dev/net/tun)")
    return 1 if why else 0


if __name__ == "__main__":
    raise SystemExit(_main())

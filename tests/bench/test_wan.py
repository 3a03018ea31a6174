"""bench/wan.py: the link's arithmetic, the client-side counter, and (as root) the namespace itself."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.wan import (
    LinkShape,
    Pacer,
    RequestCounter,
    WanLink,
    WanUnavailable,
    gcs_label,
    rounds,
    unavailable,
)


def test_rounds_counts_waits_not_requests() -> None:
    assert rounds([]) == 0
    assert rounds([(0, 1), (1, 2), (2, 3)]) == 3  # one after the other
    assert rounds([(0, 1), (0.1, 1.2), (0.5, 0.6)]) == 1  # side by side: one wait
    assert rounds([(2, 3), (0, 1), (0.5, 1.5)]) == 2  # any order
    assert rounds([(0, 10), (1, 2), (3, 4), (11, 12)]) == 2  # nested in a long one


def test_pacer_serializes_at_the_rate_then_delays() -> None:
    p = Pacer(0.025, bits_per_s=1e6)  # 1250 bytes take 10 ms at 1 Mbit/s
    assert [p.arrival(0.0, 1250) for _ in range(3)] == pytest.approx([0.035, 0.045, 0.055])
    assert p.arrival(1.0, 1250) == pytest.approx(1.035)  # an idle link starts afresh
    unlimited = Pacer(0.025)
    assert unlimited.arrival(0.5, 10**6) == pytest.approx(0.525)


def test_pacer_jitter_never_reorders() -> None:
    p = Pacer(0.010, jitter_s=0.008, rng=random.Random(1))
    arrivals = [p.arrival(i * 0.0001, 100) for i in range(2000)]
    assert arrivals == sorted(arrivals)
    assert min(a - i * 0.0001 for i, a in enumerate(arrivals)) >= 0.006 - 1e-9
    assert len({round(a - i * 0.0001, 6) for i, a in enumerate(arrivals)}) > 100  # it does vary


def test_pacer_drops_past_its_queue_then_recovers() -> None:
    p = Pacer(0.0, bits_per_s=1e6, queue_packets=2)
    assert p.arrival(0.0, 1250) is not None
    assert p.arrival(0.0, 1250) is not None
    assert p.arrival(0.0, 1250) is None and p.dropped == 1
    assert p.arrival(0.015, 1250) is not None  # the first has left the queue


def test_shape_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        LinkShape(10, jitter_ms=20)
    with pytest.raises(ValueError):
        LinkShape(10, up_mbit=0)


SLOW_SERVER = """
import http.server, sys, time

class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(0.2)  # long enough that requests sent side by side overlap
        body = b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def slow_server() -> Iterator[str]:
    # Its own process: the counter counts every internet socket of the process it is installed in.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait()


def test_counter_counts_requests_connections_bytes_and_rounds(slow_server: str) -> None:
    import requests

    counter = RequestCounter().install()
    try:
        session = requests.Session()
        mark = counter.mark()
        for _ in range(3):
            assert len(session.get(slow_server).content) == 5000
        seq = counter.since(mark)
        mark = counter.mark()
        with ThreadPoolExecutor(4) as pool:
            assert all(
                len(b) == 5000 for b in pool.map(lambda _: requests.get(slow_server).content, range(4))
            )
        par = counter.since(mark)
    finally:
        counter.uninstall()
    assert (seq.requests, seq.rounds, seq.connections, seq.by_method) == (3, 3, 1, {"GET": 3})
    assert 15000 < seq.received < 16000 and 0 < seq.sent < 1000  # bodies and headers, both ways
    assert (par.requests, par.rounds, par.connections) == (4, 1, 4)
    # Uninstalled: nothing is counted any more.
    requests.get(slow_server)
    assert counter.since(counter.mark()).requests == 0 and "sendall" not in vars(socket.socket)


def test_gcs_label_names_the_object_of_each_kind_of_request() -> None:
    import requests

    base = "http://10.203.1.2:4443"

    def label(method: str, url: str, body: bytes | None = None) -> str:
        return gcs_label(requests.Request(method, base + url, data=body).prepare())

    assert label("GET", "/download/storage/v1/b/bk/o/repo%2Fui%2Fprojects.json?alt=media") == (
        "GET media repo/ui/projects.json"
    )
    assert (
        label("GET", "/storage/v1/b/bk/o/repo%2Fsimple%2Findex.html") == "GET metadata repo/simple/index.html"
    )
    assert (
        label("DELETE", "/storage/v1/b/bk/o/repo%2Fa.whl?ifGenerationMatch=3") == "DELETE object repo/a.whl"
    )
    assert label("GET", "/storage/v1/b/bk/o?prefix=repo%2F&maxResults=1") == "GET list"
    multipart = b'--==0==\r\ncontent-type: application/json\r\n\r\n{"name": "repo/simple/x/index.json"}\r\n'
    assert label("POST", "/upload/storage/v1/b/bk/o?uploadType=multipart", multipart) == (
        "POST upload repo/simple/x/index.json"
    )
    assert label("GET", "/storage/v1/b/bk") == "GET /storage/v1/b/bk"


needs_root = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_root
def test_the_link_reaches_only_its_namespace_and_is_gone_after() -> None:
    with pytest.raises(RuntimeError, match="boom"), WanLink(LinkShape(100)) as link:
        server = link.spawn([sys.executable, "-m", "http.server", "--bind", link.far_ip, "8000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                t0 = time.monotonic()
                socket.create_connection((link.far_ip, 8000), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        assert time.monotonic() - t0 >= 0.09  # the handshake crossed the link: one round trip
        assert link.connect_ms(8000) >= 90
        stats = link.stats()
        assert stats.up_packets >= 15 and stats.down_packets >= 10 and stats.up_dropped == 0
        link.reshape(LinkShape(20))
        # Counted per shape: what crossed before is gone; only the last FIN/ACKs of the connections just
        # closed may still be on their way (headers, no data), a 100 ms link's half round trip later.
        after = link.stats()
        assert after.up_packets + after.down_packets <= 2 * 5 < stats.up_packets + stats.down_packets
        assert after.up_bytes <= 60 * after.up_packets and after.down_bytes <= 60 * after.down_packets
        assert link.connect_ms(8000) >= 18
        # From inside, nothing but the link: no route anywhere else, no way to this side's loopback.
        probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)"
        out = link.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert out.returncode != 0 and "Network is unreachable" in out.stderr
        assert link.netns in _netns()
        raise RuntimeError("boom")  # the namespace, devices and processes go anyway
    assert link.netns not in _netns()
    assert server.poll() is not None
    assert link.near not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


@needs_root
def test_a_killed_runs_namespace_is_removed_by_the_next() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, near = f"pypapo-wan-{dead.pid}", f"pw{dead.pid}a"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "tuntap", "add", "dev", near, "mode", "tun"], check=True)
    try:
        with WanLink(LinkShape(1)):
            assert ns not in _netns()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", near], capture_output=True)
    assert near not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_unavailable_says_why_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in str(unavailable())
    with pytest.raises(WanUnavailable, match="needs root"):
        WanLink(LinkShape(10)).__enter__()

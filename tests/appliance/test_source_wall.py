"""NGINX's own wall on the serving port (issue 16 item 13): behind the VPC firewall, only the configured
source networks and the machine itself get an answer; anyone else's connection is closed unanswered.

Real Debian nginx with the VM's rendered config. Every 127.0.0.0/8 address is this machine's loopback,
so a client bound to 127.0.0.2 stands for "another VM in the VPC" and one bound to 127.0.0.3 for an
allowed network (IAP's range on the VM), without leaving loopback.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.appliance.render import ApplianceConfig, render_nginx_conf, render_page_guard
from provisioner.appliance.serve import free_port
from provisioner.errors import PypapoError
from provisioner.repo.engine import Repository


def _ask(port: int, source: str, path: str = "/healthz") -> bytes:
    """One raw HTTP/1.0 request from `source`; b"" when the server closes (or resets) without answering."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: index\r\n\r\n".encode())
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def wall_conf(cfg: ApplianceConfig, tmp_path: Path, listen: str) -> tuple[Path, Path]:
    """The VM's rendered nginx.conf over an empty index under `tmp_path`: (config, runtime directory)."""
    repo = tmp_path / "repo"
    Repository.open(str(repo)).initialize()
    runtime = tmp_path / "run"
    runtime.mkdir()
    conf = runtime / "nginx.conf"
    (runtime / "page-guard.js").write_text(render_page_guard())
    conf.write_text(
        render_nginx_conf(
            cfg,
            root_dir=str(repo),
            listen=listen,
            runtime_dir=str(runtime),
            guard_path=str(runtime / "page-guard.js"),
            access_log=str(runtime / "access.log"),
            worker_processes="1",
            # as root, workers would run as `nobody`, who cannot read pytest's private tmp_path
            user=pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None,
        )
    )
    return conf, runtime


@pytest.fixture
def walled(nginx_bin: str, tmp_path: Path) -> Iterator[int]:
    port = free_port("127.0.0.1")
    cfg = ApplianceConfig(bucket="wall-test", port=port, allowed_sources=("127.0.0.3/32", "35.235.240.0/20"))
    conf, runtime = wall_conf(cfg, tmp_path, f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [nginx_bin, "-p", str(runtime), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_only_allowed_sources_and_the_machine_get_an_answer(walled: int) -> None:
    assert _ask(walled, "127.0.0.1").startswith(b"HTTP/1.1 200")  # the machine itself (startup script)
    assert _ask(walled, "127.0.0.3").startswith(b"HTTP/1.1 200")  # an allowed network
    assert _ask(walled, "127.0.0.3", "/simple/").startswith(b"HTTP/1.1 200")
    # Anyone else: no status, no body, no hint that an index is here; pages and /healthz alike.
    assert _ask(walled, "127.0.0.2") == b""
    assert _ask(walled, "127.0.0.2", "/simple/") == b""


def test_without_allowed_sources_there_is_no_wall() -> None:
    cfg = ApplianceConfig(bucket="wall-test")
    conf = render_nginx_conf(cfg, root_dir="/srv/repo", listen="127.0.0.1:3333", runtime_dir="/run/x")
    assert "pypapo_source_allowed" not in conf  # `provision serve`: loopback only, nothing to wall off


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "10.0.0.1/8", "any", "10.0.0.0/8; allow all"])
def test_a_bad_source_network_is_refused(bad: str) -> None:
    with pytest.raises(PypapoError, match="invalid allowed source"):
        ApplianceConfig(bucket="wall-test", allowed_sources=(bad,))

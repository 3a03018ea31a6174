"""`provision tunnel` with a stand-in for gcloud: a script named `gcloud` first on PATH that records its
argv and, like gcloud's IAP tunnel, listens on the --local-host-port (here on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main

PROVISION = Path(sys.executable).parent / "provision"

STAND_IN = f"""#!{sys.executable}
# Stand-in for `gcloud compute start-iap-tunnel`: records argv, listens where gcloud would.
import json, os, signal, socket, sys
record = os.environ["GCLOUD_STAND_IN_RECORD"]
with open(record, "w") as f:
    json.dump({{"argv": sys.argv[1:]}}, f)
if os.environ.get("GCLOUD_STAND_IN_FAIL"):
    print("ERROR: (gcloud.compute.start-iap-tunnel) Error while connecting [4033: 'not authorized'].",
          file=sys.stderr)
    sys.exit(1)
def stop(signum, frame):
    with open(record, "w") as f:
        json.dump({{"argv": sys.argv[1:], "signal": signum}}, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
port = int([a for a in sys.argv if a.startswith("--local-host-port=")][0].rsplit(":", 1)[1])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print(f"Listening on port [{{port}}].", file=sys.stderr, flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcloud_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(STAND_IN)
    script.chmod(0o755)
    return bin_dir


def _env(bin_dir: Path, record: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPAPO_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", GCLOUD_STAND_IN_RECORD=str(record), **extra
    )
    return env


def test_tunnel_runs_the_exact_gcloud_command_and_stops_on_ctrl_c(gcloud_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    local = free_port()
    proc = subprocess.Popen(
        [str(PROVISION), "tunnel", "--project", "acme-prod", "--zone", "us-central1-a", "--port", str(local)],
        env=_env(gcloud_dir, record),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C"):
                break
        assert f"index: http://localhost:{local}/simple/" in lines
        assert any(f"pip install --index-url http://localhost:{local}/simple/" in line for line in lines)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "tunnel closed" in out
    recorded = json.loads(record.read_text())
    assert recorded["argv"] == [
        "compute",
        "start-iap-tunnel",
        "pypapo",
        "3333",
        f"--local-host-port=localhost:{local}",
        "--zone=us-central1-a",
        "--project=acme-prod",
    ]
    assert recorded["signal"] == signal.SIGTERM  # the child was terminated, not left behind
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local), timeout=1).close()


def test_gcloud_failing_to_connect_is_a_clear_error(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.json"
    for key, value in _env(gcloud_dir, record, GCLOUD_STAND_IN_FAIL="1", PYPAPO_PORT="4040").items():
        monkeypatch.setenv(key, value)
    local = free_port()
    result = CliRunner().invoke(
        main,
        [
            "tunnel",
            "--project",
            "acme-prod",
            "--zone",
            "europe-west1-b",
            "--instance",
            "wheels",
            "--port",
            str(local),
        ],
    )
    assert result.exit_code == 1
    assert "error: gcloud exited with code 1 before the tunnel opened" in result.output
    assert "roles/iap.tunnelResourceAccessor" in result.output
    # the serving port comes from the settings (PYPAPO_PORT), the local one from --port
    assert json.loads(record.read_text())["argv"] == [
        "compute",
        "start-iap-tunnel",
        "wheels",
        "4040",
        f"--local-host-port=localhost:{local}",
        "--zone=europe-west1-b",
        "--project=acme-prod",
    ]


def test_missing_gcloud_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no gcloud anywhere
    result = CliRunner().invoke(main, ["tunnel", "--project", "acme-prod", "--zone", "us-central1-a"])
    assert result.exit_code == 1
    assert "gcloud is not installed or not on PATH" in result.output


def test_busy_local_port_is_refused_before_starting_gcloud(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.json"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                str(PROVISION),
                "tunnel",
                "--project",
                "acme-prod",
                "--zone",
                "us-central1-a",
                "--port",
                str(port),
            ],
            env=_env(gcloud_dir, record),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"local port {port} is already in use" in result.stderr
    assert not record.exists()  # gcloud never ran


def test_wait_gives_up_when_nothing_listens(tmp_path: Path) -> None:
    from provisioner.access import tunnel
    from provisioner.errors import PypapoError

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(PypapoError, match="did not answer"):
            tunnel.wait_until_answers(sleeper, free_port(), timeout=0.3)
    finally:
        assert tunnel.stop(sleeper) is not None
    assert sleeper.poll() is not None  # terminated and reaped

"""GCS that does not answer (issue 16, item 12): say what we wait for, show that we still wait, and give
up within PYPAPO_GCS_TIMEOUT with one line naming the setting, instead of the client library's
silent minutes. Against loopback ports: one that accepts connections and never answers, one that
refuses them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.appliance import sample

BUDGET = 6  # seconds: PYPAPO_GCS_TIMEOUT for these runs
PROVISION = str(Path(sys.executable).with_name("provision"))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel completes the handshake (listen backlog) but nobody ever reads or answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that is bound but not listening: every connect is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _provision(port: int, *args: str, budget: float = BUDGET) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        "PYPAPO_GCS_TIMEOUT": str(budget),
    }
    start = time.monotonic()
    # The library's own retries would take 120 s and more; the subprocess timeout catches a regression.
    proc = subprocess.run([PROVISION, *args], env=env, capture_output=True, text=True, timeout=90)
    return proc, time.monotonic() - start


def _check(
    proc: subprocess.CompletedProcess, elapsed: float, port: int, cause: str, budget: float = BUDGET
) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[0].startswith(
        f"waiting for gs://pypapo-unreachable/team (http://127.0.0.1:{port}) to answer"
    )
    assert f"retrying for up to {budget} s (PYPAPO_GCS_TIMEOUT)" in lines[0]
    assert lines[-1].startswith(
        f"error: gs://pypapo-unreachable/team did not answer within {budget} s (PYPAPO_GCS_TIMEOUT); "
        f"last error: {cause}"
    ), lines[-1]
    assert "PYPAPO_GCS_TIMEOUT=SECONDS" in lines[-1]
    assert all(not line.startswith("Traceback") for line in lines)
    # Bounded by the budget (plus the start-up of the interpreter), not by the library's minutes; and
    # not given up before it: "did not answer within N s" must be true when it is said.
    assert budget <= elapsed < budget + 15, elapsed


def test_a_silent_gcs_is_announced_and_bounded(silent_port: int, tmp_path: Path) -> None:
    wheel = sample.build_wheel(tmp_path, "demo", "1.0")
    # Long enough for a progress line after the first notice (3 s, then every 5 s).
    args = ("publish", "--repo", "gs://pypapo-unreachable/team", str(wheel))
    proc, elapsed = _provision(silent_port, *args, budget=10)
    _check(proc, elapsed, silent_port, "no answer (timed out)", budget=10)
    # It kept saying so while it waited.
    assert any(
        line.startswith("still waiting for gs://pypapo-unreachable/team: ")
        for line in proc.stderr.splitlines()
    )


def test_a_refusing_gcs_is_announced_and_bounded(refusing_port: int) -> None:
    proc, elapsed = _provision(refusing_port, "list", "--repo", "gs://pypapo-unreachable/team")
    _check(proc, elapsed, refusing_port, "[Errno 111] Connection refused")
    assert proc.stdout == ""


def test_the_timeout_setting_is_checked(refusing_port: int) -> None:
    proc, _elapsed = _provision(
        refusing_port, "list", "--repo", "gs://pypapo-unreachable/team", budget="soon"
    )  # type: ignore[arg-type]
    assert proc.returncode == 1
    assert proc.stderr == "error: PYPAPO_GCS_TIMEOUT must be a number of seconds above 0, not 'soon'\n"


def test_a_request_that_answers_in_time_is_not_announced(repo, tmp_path: Path) -> None:
    """The fake GCS answers at once: no waiting line (directory repositories never wait)."""
    wheel = sample.build_wheel(tmp_path, "demo", "1.0")
    proc = subprocess.run(
        [PROVISION, "publish", "--repo", repo.location, str(wheel)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""

"""`provision tunnel`: run gcloud's IAP TCP forwarding to the appliance and wait until it answers.

The tunnel is gcloud's own (`gcloud compute start-iap-tunnel`): IAM decides who may open it
(roles/iap.tunnelResourceAccessor on this instance), nothing else is exposed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable

from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError

NUMPY_HINT = (
    "tip: gcloud's IAP tunnel is faster with NumPy in gcloud's Python: "
    '$(gcloud info --format="value(basic.python_location)") -m pip install numpy'
)


def gcloud_command(s: Settings, local_port: int) -> list[str]:
    """Exactly the gcloud command line the tunnel runs."""
    return [
        "gcloud",
        "compute",
        "start-iap-tunnel",
        s.instance,
        str(s.port),
        f"--local-host-port=localhost:{local_port}",
        f"--zone={s.zone}",
        f"--project={s.project}",
    ]


def index_url(local_port: int) -> str:
    return f"http://localhost:{local_port}/simple/"


def how_to_use(local_port: int) -> list[str]:
    url = index_url(local_port)
    return [
        f"index: {url}",
        f"  pip:    pip install --index-url {url} PACKAGE   (never --extra-index-url: see client-config)",
        f"  uv:     uv pip install --index-url {url} PACKAGE, or `provision client-config --tool uv`",
        "  poetry, pdm, pipenv, conda: `provision client-config --tool TOOL` prints the configuration",
        "Ctrl-C closes the tunnel.",
    ]


def port_answers(port: int, host: str = "localhost", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_local_port_free(port: int) -> None:
    if port_answers(port):
        raise PypapoError(
            f"local port {port} is already in use (another tunnel?); pass --port with a free port"
        )


def find_gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise PypapoError(
            "gcloud is not installed or not on PATH; install the Google Cloud CLI"
            " (https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`"
        )
    return path


def wait_until_answers(
    proc: subprocess.Popen, port: int, *, timeout: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> None:
    """Until localhost:port accepts a connection; fail early if gcloud exits."""
    deadline = clock() + timeout
    while not port_answers(port):
        code = proc.poll()
        if code is not None:
            raise PypapoError(
                f"gcloud exited with code {code} before the tunnel opened (its message is above); check"
                " that you hold roles/iap.tunnelResourceAccessor on the instance"
                " (`provision grant user:YOU --role reader`) and that the instance is running"
            )
        if clock() > deadline:
            raise PypapoError(f"the tunnel did not answer on localhost:{port} within {timeout:.0f}s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int:
    """Terminate gcloud and reap it (kill if it ignores SIGTERM)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run(
    s: Settings,
    local_port: int,
    *,
    say: Callable[[str], None],
    timeout: float = 60.0,
) -> int:
    """Open the tunnel, report how to use it, keep it open until gcloud exits or Ctrl-C."""
    find_gcloud()
    check_local_port_free(local_port)
    command = gcloud_command(s, local_port)
    say("running: " + " ".join(command))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_until_answers(proc, local_port, timeout=timeout)
        for line in how_to_use(local_port):
            say(line)
        say(NUMPY_HINT)
        code = proc.wait()
        if code != 0:
            raise PypapoError(f"gcloud exited with code {code}; the tunnel is closed")
        return 0
    except KeyboardInterrupt:
        stop(proc)
        say("tunnel closed")
        return 0
    finally:
        stop(proc)

"""`provision tunnel` with a stand-in for gcloud: a script named `gcloud` first on PATH that records its
argv and pid and, like gcloud's IAP tunnel, listens on the --local-host-port, answering HTTP as the
appliance behind the tunnel would. `provision tunnel` owns the user's port and relays to gcloud's."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from tests.fixtures.proxy import ForwardProxy

PROVISION = Path(sys.executable).parent / "provision"

STAND_IN = f"""#!{sys.executable}
# Stand-in for `gcloud compute start-iap-tunnel`: records argv and pid (one JSON line per run), listens
# where gcloud would and answers HTTP as the appliance behind it would: 200, but /livez and /healthz 503
# while the file down-INSTANCE exists in the control directory (its mount is gone), /healthz alone 503
# while pages-broken exists (the shared bucket's pages: every instance at once), /healthz/conda 503
# while channel-broken exists (the shared bucket's conda channel), and /livez 404 on an appliance from
# before it (old-INSTANCE); it exits when exit-INSTANCE exists.
import http.server, json, os, signal, sys, threading, time
record = os.environ["GCLOUD_STAND_IN_RECORD"]
control = os.environ.get("GCLOUD_STAND_IN_CONTROL", "/nonexistent")
instance = sys.argv[3]
def log(**kw):
    with open(record, "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(), **kw}}) + "\\n")
log(event="start")
if os.environ.get("GCLOUD_STAND_IN_FAIL"):
    print("ERROR: (gcloud.compute.start-iap-tunnel) Error while connecting [4033: 'not authorized'].",
          file=sys.stderr)
    sys.exit(1)
if os.environ.get("GCLOUD_STAND_IN_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, lambda *a: log(event="signal", signal=signal.SIGTERM))
else:
    def stop(signum, frame):
        log(event="signal", signal=signum)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        def flag(name):
            return os.path.exists(os.path.join(control, name))
        code = 200
        if self.path == "/livez" and flag("old-" + instance):
            code = 404
        elif self.path in ("/livez", "/healthz") and flag("down-" + instance):
            code = 503
        elif self.path == "/healthz" and flag("pages-broken"):
            code = 503
        body = f"{{instance}} {{self.path}}".encode()
        if self.path == "/healthz/conda" and flag("channel-broken"):
            code = 503
            body = b"unavailable: conda/noarch/repodata.json is empty (0 bytes) (run `provision reindex`)\\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
host, port = [a for a in sys.argv if a.startswith("--local-host-port=")][0].split("=", 1)[1].rsplit(":", 1)
server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"Listening on port [{{port}}].", file=sys.stderr, flush=True)
while not os.path.exists(os.path.join(control, "exit-" + instance)):
    time.sleep(0.05)
log(event="exit")
os._exit(0)
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


def _records(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent has not reaped it yet).
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def _get(port: int, path: str = "/simple/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://localhost:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextlib.contextmanager
def _cli(gcloud_dir: Path, record: Path, local: int, **extra: str) -> Iterator[subprocess.Popen[str]]:
    """`provision tunnel` running; killed and reaped on the way out if the test did not end it."""
    proc = subprocess.Popen(
        [str(PROVISION), "tunnel", "--project", "acme-prod", "--zone", "us-central1-a", "--port", str(local)],
        env=_env(gcloud_dir, record, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until_ready(proc: subprocess.Popen[str]) -> list[str]:
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return lines
    raise AssertionError(
        f"the tunnel never said it was ready: {lines}\n{proc.stderr.read() if proc.stderr else ''}"
    )


def _until(said: list[str], predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for what the tunnel says (or does); a timeout shows everything it said."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; said: {said}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_tunnel_runs_the_exact_gcloud_command_and_closes_everything_on_a_signal(
    gcloud_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    record = tmp_path / "record.jsonl"
    local = free_port()
    with _cli(gcloud_dir, record, local) as proc:
        lines = _read_until_ready(proc)
        assert f"index: http://localhost:{local}/simple/" in lines
        assert any(line.startswith(f"browse: http://localhost:{local}/ui/") for line in lines)
        assert any(f"pip install --index-url http://localhost:{local}/simple/" in line for line in lines)
        # The user's port answers with what the appliance behind gcloud serves.
        assert _get(local) == (200, "pypapo /simple/")
        gcloud_pid = _records(record)[0]["pid"]
        assert _alive(gcloud_pid)
        proc.send_signal(sig)  # Ctrl-C, or a script's `kill`, a CI step ending, systemctl stop
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "tunnel closed" in out
    start, *rest = _records(record)
    argv = start["argv"]
    private = argv[4].removeprefix("--local-host-port=127.0.0.1:")
    assert argv == [
        "compute",
        "start-iap-tunnel",
        "pypapo",
        "3333",
        f"--local-host-port=127.0.0.1:{private}",
        "--zone=us-central1-a",
        "--project=acme-prod",
    ]
    assert int(private) != local  # gcloud listens privately; the user's port is the relay's
    # gcloud was told to stop (SIGTERM), waited for, and is gone; nothing listens on either port.
    assert [r.get("signal") for r in rest] == [signal.SIGTERM]
    assert not _alive(gcloud_pid)
    for port in (local, int(private)):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # ... so the next tunnel can take the same local port at once.
    with _cli(gcloud_dir, record, local) as again:
        _read_until_ready(again)
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=20)
    assert again.returncode == 0


def test_a_broken_conda_channel_is_one_warning_when_the_tunnel_opens(
    gcloud_dir: Path, tmp_path: Path
) -> None:
    """The channel's health is asked once through the new tunnel: broken, conda users read why and the
    fix; the tunnel serves all the same (the Python index is fine) and says nothing when it is fine."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "channel-broken").touch()
    record = tmp_path / "record.jsonl"
    local = free_port()
    for broken in (True, False):
        if not broken:
            (control / "channel-broken").unlink()
        with _cli(gcloud_dir, record, local, GCLOUD_STAND_IN_CONTROL=str(control)) as proc:
            lines = _read_until_ready(proc)
            warnings = [line for line in lines if line.startswith("warning:")]
            if broken:
                assert warnings == [
                    "warning: the conda channel is broken (unavailable: conda/noarch/repodata.json is empty"
                    " (0 bytes) (run `provision reindex`)); pip users are served meanwhile"
                ], lines
            else:
                assert warnings == [], lines
            assert _get(local) == (200, "pypapo /simple/")
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        assert proc.returncode == 0


def test_a_proxy_in_the_environment_is_never_asked_for_the_tunnel_s_own_ports(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy
) -> None:
    """Behind a corporate proxy (http_proxy set, localhost not in no_proxy), the tunnel's checks of
    gcloud's port went to the proxy, which cannot reach this machine: its 502 made every probe fail,
    and the tunnel dropped its users' connections to "move" off a healthy instance every 20 s."""
    from provisioner.access import tunnel

    _record, control = _controlled(gcloud_dir, tmp_path, monkeypatch)
    (control / "channel-broken").touch()  # asked once as the tunnel opens: its warning must come
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, value)
    local = free_port()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # (the test's own requests)
    seen: list[bytes] = []

    def drive(said: list[str]) -> None:
        time.sleep(1.5)  # several probes
        with direct.open(f"http://127.0.0.1:{local}/simple/", timeout=10) as resp:
            seen.append(resp.read())

    fast = tunnel.Timing(probe_interval=0.2, probe_timeout=2, failures_to_switch=2, reconnect_timeout=20)
    said = _supervised(local, lambda: [tunnel.Target("pypapo-a1b2", "us-central1-a")], drive, fast)
    assert seen == [b"pypapo-a1b2 /simple/"]
    assert not [line for line in said if "stopped answering" in line or "reconnect" in line], said
    assert any(line.startswith("warning: the conda channel is broken") for line in said), said
    assert proxy.asked == []
    # ... and the user's own tools would ask it: the tunnel says how to keep them off it.
    assert (
        "warning: http_proxy is set and no_proxy does not name localhost: pip, uv and the other tools "
        "would ask the proxy for this index; export no_proxy=127.0.0.1,localhost,::1"
    ) in said


def test_gcloud_ignoring_sigterm_is_killed_and_reaped(gcloud_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    local = free_port()
    with _cli(gcloud_dir, record, local, GCLOUD_STAND_IN_IGNORE_TERM="1") as proc:
        _read_until_ready(proc)
        gcloud_pid = _records(record)[0]["pid"]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert [r.get("signal") for r in _records(record)[1:]] == [signal.SIGTERM]  # asked first
    assert not _alive(gcloud_pid)  # then killed


def _controlled(gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The stand-in's record and its control directory (down-, old-, exit- files, pages-broken)."""
    record, control = tmp_path / "record.jsonl", tmp_path / "control"
    control.mkdir()
    for key, value in _env(gcloud_dir, record, GCLOUD_STAND_IN_CONTROL=str(control)).items():
        monkeypatch.setenv(key, value)
    return record, control


def _supervised(
    local: int,
    targets: Callable[[], Any],
    drive: Callable[[list[str]], None],
    timing: Any,
    settings: Any = None,
) -> list[str]:
    """`tunnel.run` on `local` over `targets` while `drive(said)` acts on it from a thread, once the
    tunnel is up; SIGTERM ends the tunnel whatever `drive` does, and a failure in `drive` fails the
    test. Returns what the tunnel said; it must have exited 0."""
    from provisioner.access import tunnel
    from provisioner.cloud.settings import Settings

    said: list[str] = []
    problems: list[BaseException] = []

    def driver() -> None:
        try:
            _until(said, lambda: any(line.startswith("Ctrl-C") for line in said))
            drive(said)
        except BaseException as exc:  # reported below
            problems.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # what ends the tunnel in every case

    thread = threading.Thread(target=driver)
    thread.start()
    code = tunnel.run(
        settings or Settings(project="acme-prod", zone="us-central1-a"),
        local,
        say=said.append,
        targets=targets,
        timing=timing,
    )
    thread.join()
    assert not problems, problems
    assert code == 0
    return said


def test_reconnects_to_another_healthy_instance_on_the_same_local_port(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instance a stops answering /livez, then b's gcloud exits: the user's port keeps serving."""
    from provisioner.access import tunnel

    record, control = _controlled(gcloud_dir, tmp_path, monkeypatch)
    targets = [
        tunnel.Target("pypapo-a1b2", "us-central1-a"),
        tunnel.Target("pypapo-c3d4", "us-central1-b"),
    ]
    local = free_port()
    seen: list[tuple[int, str]] = []

    def drive(said: list[str]) -> None:
        seen.append(_get(local))
        (control / "down-pypapo-a1b2").touch()  # a's mount is gone: 503 on /livez
        _until(said, lambda: any("reconnected to pypapo-c3d4" in line for line in said))
        seen.append(_get(local))
        (control / "down-pypapo-a1b2").unlink()  # a is back, then b's tunnel drops
        (control / "exit-pypapo-c3d4").touch()
        _until(said, lambda: any("reconnected to pypapo-a1b2" in line for line in said))
        seen.append(_get(local))

    fast = tunnel.Timing(probe_interval=0.2, probe_timeout=2, failures_to_switch=2, reconnect_timeout=20)
    said = _supervised(local, lambda: targets, drive, fast)
    assert seen == [
        (200, "pypapo-a1b2 /simple/"),
        (200, "pypapo-c3d4 /simple/"),
        (200, "pypapo-a1b2 /simple/"),
    ]
    assert "pypapo-a1b2 stopped answering /livez through the tunnel" in said
    assert any("tunnel to pypapo-c3d4 exited with code 0" in line for line in said)
    started = [r for r in _records(record) if r["event"] == "start"]
    assert [(r["argv"][2], r["argv"][5]) for r in started] == [
        ("pypapo-a1b2", "--zone=us-central1-a"),
        ("pypapo-c3d4", "--zone=us-central1-b"),
        ("pypapo-a1b2", "--zone=us-central1-a"),
    ]
    assert not any(_alive(r["pid"]) for r in started)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local), timeout=1).close()


def test_broken_pages_in_the_bucket_do_not_move_the_tunnel_but_an_old_appliance_is_judged_by_healthz(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty root page or a broken channel fails /healthz on every replica at once: the tunnel stays
    on its instance (hopping would only cut its users' connections). An appliance without /livez is
    still watched, by /healthz."""
    from provisioner.access import tunnel

    record, control = _controlled(gcloud_dir, tmp_path, monkeypatch)
    (control / "old-pypapo-e5f6").touch()  # no /livez on this one
    targets = [tunnel.Target("pypapo-a1b2", "us-central1-a"), tunnel.Target("pypapo-e5f6", "us-central1-b")]
    local = free_port()
    fast = tunnel.Timing(probe_interval=0.2, probe_timeout=2, failures_to_switch=2, reconnect_timeout=20)

    def drive(said: list[str]) -> None:
        (control / "pages-broken").touch()
        time.sleep(10 * fast.probe_interval)  # five times what it takes to switch
        assert _get(local) == (200, "pypapo-a1b2 /simple/")
        (control / "down-pypapo-a1b2").touch()  # a's mount is gone: that moves it, to the old one
        _until(said, lambda: any("reconnected to pypapo-e5f6" in line for line in said))
        (control / "down-pypapo-a1b2").unlink()
        (control / "pages-broken").unlink()
        (control / "down-pypapo-e5f6").touch()  # the old appliance fails its /healthz: moved back
        _until(said, lambda: any("reconnected to pypapo-a1b2" in line for line in said))

    _supervised(local, lambda: targets, drive, fast)
    started = [r["argv"][2] for r in _records(record) if r["event"] == "start"]
    assert started == ["pypapo-a1b2", "pypapo-e5f6", "pypapo-a1b2"]


def test_gcloud_failing_to_connect_is_a_clear_error(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.jsonl"
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
    # the serving port comes from the settings (PYPAPO_PORT); gcloud's local one is private
    argv = _records(record)[0]["argv"]
    assert argv[:4] == ["compute", "start-iap-tunnel", "wheels", "4040"]
    assert argv[5:] == ["--zone=europe-west1-b", "--project=acme-prod"]
    with pytest.raises(OSError):  # the relay's port did not stay open after the failure
        socket.create_connection(("127.0.0.1", local), timeout=1).close()


def test_missing_gcloud_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no gcloud anywhere
    result = CliRunner().invoke(main, ["tunnel", "--project", "acme-prod", "--zone", "us-central1-a"])
    assert result.exit_code == 1
    assert "gcloud is not installed or not on PATH" in result.output


def test_busy_local_port_is_refused_before_starting_gcloud(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.jsonl"
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


# --- a group: the tunnel picks a healthy instance and follows the group's health ----------------------


def _managed(name: str, zone: str, health: str, action: str = "NONE") -> Any:
    from google.cloud import compute_v1

    return compute_v1.ManagedInstance(
        name=name,
        instance=f"https://www.googleapis.com/compute/v1/projects/acme-prod/zones/{zone}/instances/{name}",
        instance_status="RUNNING",
        current_action=action,
        instance_health=[compute_v1.ManagedInstanceInstanceHealth(detailed_health_state=health)],
    )


class _InOrder(random.Random):
    """The chooser's order made predictable (it shuffles to spread tunnels over the replicas)."""

    def shuffle(self, x: Any) -> None:
        x.sort(key=lambda t: t.instance)


def test_the_chooser_takes_healthy_running_instances_that_stay() -> None:
    from provisioner.access import tunnel
    from provisioner.cloud.settings import Settings

    s = Settings(project="acme-prod", zone="us-central1-a", replicas=3)
    listed = [
        _managed("pypapo-r-aaaa", "us-central1-a", "HEALTHY"),
        _managed("pypapo-r-bbbb", "us-central1-b", "UNHEALTHY"),
        _managed("pypapo-r-cccc", "us-central1-c", "HEALTHY", "DELETING"),  # a rollout's old instance
        _managed("pypapo-r-dddd", "us-central1-f", "HEALTHY"),
    ]
    seen: list[tuple[str, str]] = []

    def lister(region: str, name: str) -> list[Any]:
        seen.append((region, name))
        return listed

    chooser = tunnel.GroupTargets(s, lister, rng=_InOrder())
    assert chooser() == [
        tunnel.Target("pypapo-r-aaaa", "us-central1-a"),
        tunnel.Target("pypapo-r-dddd", "us-central1-f"),
    ]
    assert seen == [("us-central1", "pypapo")]


def test_a_group_with_no_healthy_instance_is_a_clear_error_before_gcloud_runs(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import access

    record = tmp_path / "record.jsonl"
    for key, value in _env(gcloud_dir, record).items():
        monkeypatch.setenv(key, value)
    listed = [
        _managed("pypapo-r-aaaa", "us-central1-a", "UNHEALTHY"),
        _managed("pypapo-r-bbbb", "us-central1-b", "HEALTHY", "CREATING"),
    ]
    monkeypatch.setattr(access, "_group_lister", lambda _s: lambda region, name: listed)
    local = free_port()
    args = ["tunnel", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "2"]
    result = CliRunner().invoke(main, [*args, "--port", str(local)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line == (
        "error: no healthy instance in group pypapo (2 instance(s): pypapo-r-aaaa UNHEALTHY NONE,"
        " pypapo-r-bbbb HEALTHY CREATING); `provision status --project acme-prod --zone us-central1-a"
        " --replicas N` shows them"
    )
    assert not record.exists()  # gcloud never ran
    monkeypatch.setattr(access, "_group_lister", lambda _s: lambda region, name: None)
    result = CliRunner().invoke(main, [*args, "--port", str(local)])
    assert (
        "error: group pypapo does not exist in us-central1 (`provision create --replicas N`" in result.output
    )
    with pytest.raises(OSError):  # nothing left listening
        socket.create_connection(("127.0.0.1", local), timeout=1).close()


def test_a_group_tunnel_moves_to_another_healthy_instance_and_waits_when_none_is(
    gcloud_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a loses its mount (the group marks it UNHEALTHY): the tunnel moves to b. Then b's tunnel drops
    while a is still unhealthy: the tunnel says so and waits, the local port stays open, and when a is
    healthy again it reconnects there. The group's listing, not a fixed list, decides every time."""
    from provisioner.access import tunnel
    from provisioner.cloud.settings import Settings

    record, control = _controlled(gcloud_dir, tmp_path, monkeypatch)
    health = {"pypapo-r-aaaa": "HEALTHY", "pypapo-r-bbbb": "HEALTHY"}
    zones = {"pypapo-r-aaaa": "us-central1-a", "pypapo-r-bbbb": "us-central1-b"}

    def lister(region: str, name: str) -> list[Any]:
        assert (region, name) == ("us-central1", "pypapo")
        return [_managed(n, zones[n], h) for n, h in sorted(health.items())]

    s = Settings(project="acme-prod", zone="us-central1-a", replicas=2)
    local = free_port()
    seen: list[tuple[int, str]] = []

    def drive(said: list[str]) -> None:
        seen.append(_get(local))
        health["pypapo-r-aaaa"] = "UNHEALTHY"  # a's mount is gone: its check fails, so does ours
        (control / "down-pypapo-r-aaaa").touch()
        _until(said, lambda: any("reconnected to pypapo-r-bbbb" in line for line in said))
        seen.append(_get(local))
        health["pypapo-r-bbbb"] = "UNHEALTHY"  # b goes too, and its tunnel drops
        (control / "exit-pypapo-r-bbbb").touch()
        _until(
            said,
            lambda: any(line.startswith("waiting for a healthy instance: no healthy") for line in said),
        )
        waiting: list[tuple[int, str]] = []
        client = threading.Thread(target=lambda: waiting.append(_get(local)))
        client.start()  # a client arriving now waits on the open port for the next upstream
        time.sleep(0.5)
        (control / "down-pypapo-r-aaaa").unlink()
        health["pypapo-r-aaaa"] = "HEALTHY"
        _until(said, lambda: any("reconnected to pypapo-r-aaaa" in line for line in said))
        client.join(timeout=20)
        seen.extend(waiting)

    fast = tunnel.Timing(probe_interval=0.2, probe_timeout=2, failures_to_switch=2, reconnect_timeout=30)
    said = _supervised(local, tunnel.GroupTargets(s, lister, rng=_InOrder()), drive, fast, settings=s)
    assert seen == [
        (200, "pypapo-r-aaaa /simple/"),
        (200, "pypapo-r-bbbb /simple/"),
        (200, "pypapo-r-aaaa /simple/"),
    ]
    waited = next(line for line in said if line.startswith("waiting for a healthy instance"))
    assert "provision status --project acme-prod --zone us-central1-a --replicas N" in waited
    started = [r for r in _records(record) if r["event"] == "start"]
    assert [(r["argv"][2], r["argv"][3], r["argv"][5]) for r in started] == [
        ("pypapo-r-aaaa", "3333", "--zone=us-central1-a"),
        ("pypapo-r-bbbb", "3333", "--zone=us-central1-b"),
        ("pypapo-r-aaaa", "3333", "--zone=us-central1-a"),
    ]
    assert not any(_alive(r["pid"]) for r in started)

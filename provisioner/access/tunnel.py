"""`provision tunnel`: gcloud's IAP TCP forwarding to a healthy appliance, behind one stable local port.

The tunnel itself is gcloud's (`gcloud compute start-iap-tunnel`): IAM decides who may open it
(roles/iap.tunnelResourceAccessor, conditioned on the group's instances and the serving port), nothing
else is exposed. gcloud listens on a private loopback port; `provision tunnel` owns the user's local port
and relays each connection to it. That is what lets it survive the loss of an instance: a supervisor
probes `/livez` through gcloud's port, and when gcloud exits or the instance stops answering it starts
gcloud against another healthy instance and switches the relay over. The user's port never closes, so
clients see at most the connections that were in flight on the lost instance fail (pip and uv retry).

SIGINT (Ctrl-C) and SIGTERM (a script's `kill`, a CI step, a service manager) both stop it the same way:
the relay stops listening, gcloud gets SIGTERM and is waited for (killed if it ignores it), and only then
does the command return, with the local port closed.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from provisioner import loopback
from provisioner.cloud import group
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError

NUMPY_HINT = (
    "tip: gcloud's IAP tunnel is faster with NumPy in gcloud's Python: "
    '$(gcloud info --format="value(basic.python_location)") -m pip install numpy'
)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Target:
    """One instance the tunnel can reach: its name and zone (a group's instances span zones)."""

    instance: str
    zone: str


# A healthy instance the group is about to take away (or is still setting up) is no place for a new
# tunnel: a rollout deletes old instances, a repair recreates one.
_LEAVING = frozenset({"ABANDONING", "DELETING", "RECREATING", "REFRESHING", "RESTARTING", "STOPPING"})
_LEAVING |= {"SUSPENDING", "CREATING", "CREATING_WITHOUT_RETRIES", "STARTING", "RESUMING"}


class NoHealthyInstance(PypapoError):
    """The group has no instance to open a tunnel to (yet): `provision status` shows why."""


def healthy_targets(instances: Sequence[Any]) -> list[Target]:
    """The group's instances that pass the autohealing check, run, and are not being replaced."""
    return [
        Target(r.name, r.zone)
        for r in group.instance_rows(instances, {})
        if r.health == group.HEALTHY and r.status == "RUNNING" and r.action not in _LEAVING
    ]


class GroupTargets:
    """`provision tunnel`'s choice among a group's instances: the healthy ones, read afresh each time
    (`Compute.list_managed_instances`), in random order so that many tunnels spread over the replicas;
    the supervisor tries the one it just lost last."""

    def __init__(
        self,
        s: Settings,
        list_instances: Callable[[str, str], Sequence[Any] | None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.s, self.list_instances = s, list_instances
        self.rng = rng or random.Random()

    def __call__(self) -> list[Target]:
        s = self.s
        status = f"`provision status --project {s.project} --zone {s.zone} --replicas N` shows them"
        instances = self.list_instances(s.region, s.instance)
        if instances is None:
            raise NoHealthyInstance(
                f"group {s.instance} does not exist in {s.region} (`provision create --replicas N`; drop"
                " --replicas for the single VM)"
            )
        targets = healthy_targets(instances)
        if not targets:
            rows = group.instance_rows(instances, {})
            seen = ", ".join(f"{r.name} {r.health} {r.action}" for r in rows) or "none"
            raise NoHealthyInstance(
                f"no healthy instance in group {s.instance} ({len(rows)} instance(s): {seen}); {status}"
            )
        self.rng.shuffle(targets)
        return targets


@dataclass(frozen=True)
class Timing:
    """How the supervisor watches the tunnel; the defaults suit IAP (each probe is one IAP connection)."""

    open_timeout: float = 60.0  # gcloud's first answer on its port
    probe_interval: float = 10.0
    probe_timeout: float = 10.0
    failures_to_switch: int = 2  # consecutive failed probes before moving to another instance
    reconnect_timeout: float = 300.0  # how long to keep looking for a healthy instance before giving up
    connect_wait: float = 30.0  # how long a client connection waits for an upstream during a switch


class Stopped(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: close everything and return."""


class StopFlag:
    """Set from a signal handler, polled by the main thread.

    Not a threading.Event: Event.set takes a lock the interrupted main thread may be holding inside
    Event.wait, so setting one from a handler can deadlock.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        return self._set


def gcloud_command(s: Settings, target: Target, gcloud_port: int) -> list[str]:
    """Exactly the gcloud command line the tunnel runs (gcloud listens on a private loopback port)."""
    return [
        "gcloud",
        "compute",
        "start-iap-tunnel",
        target.instance,
        str(s.port),
        f"--local-host-port={LOOPBACK}:{gcloud_port}",
        f"--zone={target.zone}",
        f"--project={s.project}",
    ]


def index_url(local_port: int) -> str:
    return f"http://localhost:{local_port}/simple/"


def browse_url(local_port: int) -> str:
    return f"http://localhost:{local_port}/ui/"


def how_to_use(local_port: int) -> list[str]:
    url = index_url(local_port)
    return [
        f"browse: {browse_url(local_port)}   (every project, its README, releases and yanks)",
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


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until_answers(
    proc: subprocess.Popen,
    port: int,
    *,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    host: str = "localhost",
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Until host:port accepts a connection; fail early if gcloud exits, stop if asked to."""
    deadline = clock() + timeout
    while not port_answers(port, host):
        if stopped():
            raise Stopped()
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


def _answer(port: int, path: str, timeout: float) -> tuple[int, str]:
    """(status, body) of GET PATH through PORT; (0, '') when nothing answered."""
    try:
        code, body = loopback.get(f"http://{LOOPBACK}:{port}{path}", timeout=timeout, limit=1024)
    except OSError:
        return 0, ""
    return code, body.decode(errors="replace")


def _status(port: int, path: str, timeout: float) -> int:
    return _answer(port, path, timeout)[0]


def channel_warning(port: int, timeout: float) -> str | None:
    """The conda channel's health as the appliance judges it (`/healthz/conda`, asked once when the
    tunnel opens): a line for conda users when it is broken, None when fine (or from before the check:
    404). Never a reason to move or close the tunnel: pip users are served, and no replica can fix it."""
    code, body = _answer(port, "/healthz/conda", timeout)
    if code != 503:
        return None
    why = " ".join(body.split()) or "unavailable"
    return f"warning: the conda channel is broken ({why}); pip users are served meanwhile"


def healthy(port: int, timeout: float) -> bool:
    """This instance serves its mount: `/livez` answers 200 through gcloud's port (a new IAP connection
    each time). Not `/healthz`: that also judges the root pages, which live in the bucket every
    replica shares, so an empty root page fails it everywhere at once and moving to another instance
    cannot help; the tunnel would only drop its users' connections from one replica to the next. An
    appliance from before `/livez` (404) is judged by its `/healthz` (which, on those, also judged the
    conda channel; the channel's health is `/healthz/conda` now, for conda users only)."""
    code = _status(port, "/livez", timeout)
    if code == 404:
        code = _status(port, "/healthz", timeout)
    return code == 200


# --- the relay: the user's local port, always open while the command runs -------------------------------


class Relay:
    """Accepts on localhost:PORT and pipes each connection to the current upstream (gcloud's port).

    A connection that arrives while no upstream is ready waits for one (up to `connect_wait`), so a
    switch to another instance looks to clients like a slow connect, not a refused one.
    """

    def __init__(self, local_port: int, connect_wait: float) -> None:
        self.local_port = local_port
        self.connect_wait = connect_wait
        self._upstream: int | None = None
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._server = socket.create_server((LOOPBACK, local_port), backlog=128)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True)

    def start(self) -> None:
        self._accept_thread.start()

    def set_upstream(self, port: int | None) -> None:
        with self._changed:
            self._upstream = port
            self._changed.notify_all()

    def _wait_upstream(self) -> int | None:
        deadline = time.monotonic() + self.connect_wait
        with self._changed:
            while self._upstream is None and not self._closing.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))
            return self._upstream

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), name="relay-conn", daemon=True).start()

    def _track(self, *socks: socket.socket, add: bool) -> None:
        with self._lock:
            for sock in socks:
                (self._conns.add if add else self._conns.discard)(sock)

    def _serve(self, client: socket.socket) -> None:
        self._track(client, add=True)
        upstream_sock: socket.socket | None = None
        try:
            port = self._wait_upstream()
            if port is None:
                return
            upstream_sock = socket.create_connection((LOOPBACK, port), timeout=10)
            upstream_sock.settimeout(None)
            self._track(upstream_sock, add=True)
            back = threading.Thread(target=_pipe, args=(upstream_sock, client), daemon=True)
            back.start()
            _pipe(client, upstream_sock)
            back.join()
        except OSError:
            pass
        finally:
            for sock in (client, upstream_sock):
                if sock is not None:
                    self._track(sock, add=False)
                    sock.close()

    def close(self) -> None:
        """Stop listening first (the port closes), then cut the connections in flight."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.set_upstream(None)
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# --- gcloud processes and the supervisor -------------------------------------------------------------


@dataclass
class _Leg:
    """One gcloud tunnel to one instance, on its own loopback port."""

    target: Target
    port: int
    proc: subprocess.Popen


@contextlib.contextmanager
def _signals_stop(stop_event: StopFlag) -> Iterator[None]:
    """SIGINT (Ctrl-C), SIGTERM (kill, CI, a service manager) and SIGHUP only set `stop_event`.

    Nothing is raised from the handler, so a signal can never land between starting gcloud and recording
    it; every wait below watches the event. The previous handlers come back afterwards.
    """

    def handler(signum: int, frame: object) -> None:
        stop_event.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Supervisor:
    def __init__(
        self,
        s: Settings,
        targets: Callable[[], Sequence[Target]],
        relay: Relay,
        say: Callable[[str], None],
        timing: Timing,
        stop_event: StopFlag,
    ) -> None:
        self.s, self.targets, self.relay, self.say, self.timing = s, targets, relay, say, timing
        self.stop_event = stop_event
        self.leg: _Leg | None = None

    def _start(self, target: Target) -> _Leg:
        port = free_loopback_port()
        command = gcloud_command(self.s, target, port)
        self.say("running: " + " ".join(command))
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        leg = _Leg(target, port, proc)
        self.leg = leg  # from here on, close() stops it whatever happens
        wait_until_answers(
            proc, port, timeout=self.timing.open_timeout, host=LOOPBACK, stopped=self.stop_event.is_set
        )
        return leg

    def open_first(self) -> None:
        """The first tunnel: the first target that answers; the errors of the last one if none does."""
        candidates = list(self.targets())
        if not candidates:
            raise PypapoError("no healthy instance to open the tunnel to (`provision status` shows them)")
        error: PypapoError | None = None
        for target in candidates:
            try:
                self._start(target)
                self.relay.set_upstream(self.leg.port if self.leg else None)
                return
            except PypapoError as exc:
                error = exc
                self._drop()
        assert error is not None
        raise error

    def _drop(self) -> None:
        if self.leg is not None:
            self.relay.set_upstream(None)
            stop(self.leg.proc)
            self.leg = None

    def watch(self) -> None:
        """Probe until stopped; on a dead or unhealthy leg, move to another healthy instance."""
        failures = 0
        while not self.stop_event.wait(self.timing.probe_interval):
            leg = self.leg
            assert leg is not None
            if leg.proc.poll() is not None:
                self.say(f"gcloud's tunnel to {leg.target.instance} exited with code {leg.proc.returncode}")
                self._switch()
                failures = 0
                continue
            if healthy(leg.port, self.timing.probe_timeout):
                failures = 0
                continue
            failures += 1
            if failures >= self.timing.failures_to_switch:
                self.say(f"{leg.target.instance} stopped answering /livez through the tunnel")
                self._switch()
                failures = 0

    def _switch(self) -> None:
        """Another healthy instance, else the same one again, until reconnect_timeout."""
        lost = self.leg.target if self.leg else None
        self._drop()
        deadline = time.monotonic() + self.timing.reconnect_timeout
        while not self.stop_event.is_set():
            try:
                candidates = list(self.targets())
            except PypapoError as exc:  # no healthy instance yet, or the listing failed: keep trying
                self.say(f"waiting for a healthy instance: {exc}")
                candidates = []
            ordered = [t for t in candidates if t != lost] + [t for t in candidates if t == lost]
            for target in ordered:
                try:
                    leg = self._start(target)
                except PypapoError as exc:
                    self.say(f"could not reach {target.instance}: {exc}")
                    self._drop()
                    continue
                self.relay.set_upstream(leg.port)
                self.say(f"reconnected to {target.instance} ({target.zone}); same local port")
                return
            if time.monotonic() > deadline:
                raise PypapoError(
                    f"no healthy instance answered for {self.timing.reconnect_timeout:.0f}s; the tunnel is"
                    " closed (`provision status` shows the instances and their health)"
                )
            self.stop_event.wait(2.0)

    def close(self) -> None:
        self._drop()


def run(
    s: Settings,
    local_port: int,
    *,
    say: Callable[[str], None],
    targets: Callable[[], Sequence[Target]] | None = None,
    timing: Timing = Timing(),
) -> int:
    """Open the tunnel, report how to use it, keep it open until Ctrl-C or SIGTERM, then close it."""
    find_gcloud()
    check_local_port_free(local_port)
    pick = targets or (lambda: [Target(s.instance, s.zone)])
    stop_event = StopFlag()
    with _signals_stop(stop_event):
        relay: Relay | None = None
        supervisor: Supervisor | None = None
        try:
            relay = Relay(local_port, timing.connect_wait)
            supervisor = Supervisor(s, pick, relay, say, timing, stop_event)
            supervisor.open_first()
            relay.start()
            warning = channel_warning(local_port, timing.probe_timeout)
            if warning:
                say(warning)
            for line in how_to_use(local_port):
                say(line)
            if proxied := loopback.proxy_warning("localhost"):
                say(proxied)
            say(NUMPY_HINT)
            supervisor.watch()
        except Stopped:
            pass
        except OSError as exc:
            raise PypapoError(f"cannot listen on localhost:{local_port}: {exc.strerror}") from None
        finally:
            # The port closes first, then gcloud is stopped and reaped: nothing outlives the command.
            if relay is not None:
                relay.close()
            if supervisor is not None:
                supervisor.close()
        say("tunnel closed")
        return 0

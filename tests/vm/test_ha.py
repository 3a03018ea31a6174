"""Two appliances behind a load balancer, replaced one at a time by a new image while pip installs
through the balancer the whole time, then one of them lost without warning in the middle of a download:
no install may fail, in either phase.

What stands in for what (see tests/vm/balancer.py for the balancer's settings):

- instances: booted Debian 12 trees (systemd-nspawn, one network namespace each, as in
  test_appliance_vm.py), from the golden image the startup script's bake mode makes. The new image is
  that tree stamped ``v2`` (/etc/pypapo-image): the rollout mechanics do not depend on what changed.
- the bucket: one fake-gcs-server on the host end of a namespace of its own (10.213.70.1), which every
  guest reaches through its own veth (a /32 route), so losing a guest's link never takes storage away.
- the internal passthrough load balancer and its health check: HAProxy in TCP mode on a loopback port,
  checking ``GET /healthz`` on each backend's serving port; a connection to a lost backend stays silent
  until the client gives up, as on Google's balancer (balancer.py says why).
- the managed instance group's rolling update (``max_surge`` = 1, ``max_unavailable`` = 0, replace): for
  each old instance, a new one boots and joins the backend; once the health check passes, the old one
  is drained (no new connections, in-flight ones finish), taken out and shut down.
- losing a replica: its zone loses the network. The guest's own egress drops every packet (a ``pfifo``
  of length 0 on its NIC) and the host's neighbour entry for it is pinned, so neither side's kernel
  reports anything: connections to it go silent, its health check times out. It is lost while it
  streams a wheel (its egress throttled to 1 MB/s first, the cut made once its socket holds unsent
  bytes), the case a client can survive only by resuming the download elsewhere.
- the clients: pip 25.1.1 (Debian 13's python3-pip: it can resume a download, but only when told to)
  with exactly the pip.conf that ``provision client-config --tool pip`` prints (PIP_CONFIG_FILE), and
  nothing else of this machine's pip configuration. With pip's defaults (15 s, no resume) the lost
  download fails the install ("Download failed because not enough bytes were received").

The loop's figures (installs, failures, retries, resumes, longest stall) are printed with -s and on failure.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.appliance import sample
from provisioner.appliance.demo import clean_env
from tests.fixtures import metadata
from tests.vm import guestagent, rootfs
from tests.vm.balancer import Backend, Balancer, ClientLoop, running
from tests.vm.machine import GUEST_IF, Guest, Net, keypair, network, prepare_root, run
from tests.vm.test_appliance_vm import (
    BUCKET,
    PREFIX,
    PROVISION,
    VARIANTS,
    FakeGCSOnVeth,
    _metadata_server,
    _publish,
    _render,
    _wait_startup_script,
    check_prerequisites,
)

pytestmark = pytest.mark.vm

VARIANT = next(v for v in VARIANTS if v.name == "baked")  # the same golden image as that test: one bake
GCS_NET = 70
LB_PORT = 18443
# The client: Debian 13's pip, which bootstrap downloads beside the venv (run from its wheel).
CLIENT_PIP = Path(sys.prefix) / "clients" / "pip-25.1.1-py3-none-any.whl"
DATA_BYTES = 2_000_000  # the wheel the lost replica is streaming: 2.0 MB, ~2 s at 1 MB/s
THROTTLE = "tbf rate 8mbit burst 32kb latency 200ms"  # 1 MB/s, at most 200 kB queued under TCP


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    check_prerequisites()
    reason = ""
    if shutil.which("haproxy") is None:
        reason = "haproxy is not installed (`bash bootstrap` installs it)"
    elif not CLIENT_PIP.is_file():
        reason = f"{CLIENT_PIP} is missing (`bash bootstrap` downloads it)"
    if reason:
        if os.environ.get("PYPAPO_REQUIRE_VM") == "1":
            pytest.fail(f"the vm test must run here (PYPAPO_REQUIRE_VM=1) but cannot: {reason}")
        pytest.skip(reason)


@dataclass(frozen=True)
class Slot:
    """One instance of the group: its backend name, network index and image."""

    name: str
    index: int
    image: str

    @property
    def address(self) -> str:
        return f"10.213.{self.index}.2"


OLD = [Slot("old-a", 71, "v1"), Slot("old-b", 72, "v1")]
NEW = [Slot("new-a", 73, "v2"), Slot("new-b", 74, "v2")]


def _network_file(net: Net, gcs: Net) -> str:
    """The guest's own /30, plus a host route to the bucket's address through its host end."""
    return net.network_file() + f"\n[Route]\nDestination={gcs.host_ip}/32\nGateway={net.host_ip}\n"


class Group:
    """Boots and stops the stand-in instances; everything is torn down with the ExitStack."""

    def __init__(self, stack: contextlib.ExitStack, work: Path, gcs_net: Net, gcs_url: str) -> None:
        self.stack, self.work, self.gcs_net, self.gcs_url = stack, work, gcs_net, gcs_url
        self.script = _render(VARIANT)
        self.image = rootfs.baked_rootfs(self.script)
        self.key = keypair(work)
        # One metadata-server stand-in for the group, as every instance has Compute Engine's.
        self.md = _metadata_server(self.script)
        stack.callback(self.md.stop)
        self.guests: dict[str, Guest] = {}
        self.nets: dict[str, Net] = {}

    def boot(self, slot: Slot) -> Guest:
        net = self.stack.enter_context(network(slot.index))
        root = self.work / slot.name / "root"
        root.parent.mkdir()
        rootfs.copy_tree(self.image, root)
        (root / "etc/pypapo-image").write_text(slot.image + "\n")
        guest = Guest(
            root=root, net=net, key=self.key, console=root.parent / "console.log", machine=slot.name
        )
        prepare_root(root, net, Path(f"{self.key}.pub").read_text())
        with open(root / "etc/hosts", "a") as hosts:  # as on every Compute Engine image
            hosts.write(f"{metadata.ADDRESS} metadata.google.internal metadata\n")
        (root / "etc/systemd/network/10-ens4.network").write_text(_network_file(net, self.gcs_net))
        (root / "etc/pypapo-test").mkdir(parents=True, exist_ok=True)
        (root / "etc/pypapo-test/gcs-endpoint").write_text(self.gcs_url + "\n")
        guestagent.install(root, self.script)
        self.stack.callback(shutil.rmtree, root.parent, True)
        self.stack.callback(guest.stop)
        guest.boot()
        journal = _wait_startup_script(guest, timeout=300)
        assert "pypapo: ready" in journal, journal[-3000:]
        assert guest.ssh("cat /etc/pypapo-image").stdout.strip() == slot.image
        self.guests[slot.name], self.nets[slot.name] = guest, net
        return guest

    def served(self, name: str, since: float) -> int:
        """Requests for the probe package in the instance's nginx access log since `since` (epoch)."""
        res = self.guests[name].ssh(
            f"journalctl -t pypapo_nginx -o cat --no-pager --since @{int(since)} | grep -c vmprobe || true"
        )
        return int(res.stdout.strip() or 0)


class Steps:
    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"[ha] {what}: {now - self.last:.1f}s (total {now - self.start:.1f}s)")
        self.last = now


@contextlib.contextmanager
def _bucket(stack: contextlib.ExitStack, work: Path) -> Iterator[tuple[Net, FakeGCSOnVeth]]:
    gcs_net = stack.enter_context(network(GCS_NET))
    gcs = FakeGCSOnVeth(gcs_net.host_ip, 4443, work / "fake-gcs.log")
    stack.callback(gcs.stop)
    _publish(gcs, work / "dists")
    blob = base64.b64encode(os.urandom(DATA_BYTES)).decode()  # incompressible: the wheel stays large
    data = sample.build_wheel(
        work / "dists", "vmprobe-data", "1.0", modules={"vmprobe_data/__init__.py": f"BLOB = '{blob}'\n"}
    )
    res = subprocess.run(
        [*PROVISION, "publish", "--repo", f"gs://{BUCKET}/{PREFIX}", str(data)],
        env={**os.environ, "STORAGE_EMULATOR_HOST": gcs.url}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, f"provision publish failed:\n{res.stdout}\n{res.stderr}"
    yield gcs_net, gcs


def _client_config(url: str, work: Path) -> Path:
    """pip.conf exactly as `provision client-config --tool pip` prints it for the balancer's URL."""
    res = subprocess.run(
        [*PROVISION, "client-config", "--tool", "pip", "--url", url, "--public-index", "none"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    conf = work / "pip.conf"
    conf.write_text(res.stdout)
    return conf


def _pip_install(conf: Path, target: Path, *requirements: str) -> subprocess.CompletedProcess[str]:
    """pip with the given pip.conf and nothing else: no user or machine-wide configuration (the
    file given in PIP_CONFIG_FILE skips the user's; XDG_CONFIG_DIRS moves /etc/xdg's away), no cache."""
    env = clean_env(target.parent)
    empty = target.parent / "no-xdg"
    empty.mkdir(parents=True, exist_ok=True)
    env.update(PIP_CONFIG_FILE=str(conf), XDG_CONFIG_DIRS=str(empty))
    return subprocess.run(
        [sys.executable, str(CLIENT_PIP / "pip"), "install", "--no-cache-dir", "--target", str(target),
         *requirements],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _streaming(net: Net, port: int) -> bool:
    """A response is on its way out of the guest: one of its serving sockets holds unsent bytes."""
    out = run(["ip", "netns", "exec", net.name, "ss", "-Htn", "state", "established", f"( sport = :{port} )"])
    return any(int(line.split()[1]) > 100_000 for line in out.stdout.splitlines() if line.strip())


def _lose_network(net: Net) -> None:
    """The guest's zone loses its network: every packet it sends is dropped, silently for both sides."""
    mac = run(["ip", "-n", net.name, "-br", "link", "show", GUEST_IF]).stdout.split()[2]
    run(["ip", "neigh", "replace", net.guest_ip, "lladdr", mac, "dev", net.host_if, "nud", "permanent"])
    run(["tc", "-n", net.name, "qdisc", "replace", "dev", GUEST_IF, "root", "pfifo", "limit", "0"])


def test_neither_a_rollout_nor_a_replica_lost_mid_download_fails_an_install(tmp_path: Path) -> None:
    step = Steps()
    with contextlib.ExitStack() as stack:
        gcs_net, gcs = stack.enter_context(_bucket(stack, tmp_path))
        group = Group(stack, tmp_path, gcs_net, gcs.url)
        for slot in OLD:
            group.boot(slot)
        step("two v1 instances booted and ready")

        backends = [Backend(s.name, s.address, VARIANT.port, enabled=s in OLD) for s in OLD + NEW]
        lb = Balancer(tmp_path / "lb", LB_PORT, backends)
        stack.callback(lb.stop)
        lb.wait(lambda st: all(st[s.name].status == "UP" for s in OLD), 30, "both v1 instances healthy")
        conf = _client_config(f"http://127.0.0.1:{LB_PORT}/simple/", tmp_path)

        def install(n: int):  # type: ignore[no-untyped-def]
            target = tmp_path / "sites" / str(n)
            try:
                res = _pip_install(conf, target, "vmprobe-app==1.0", "vmprobe-data==1.0")
                if res.returncode == 0:
                    for dist in ("vmprobe_app", "vmprobe_core", "vmprobe_data"):
                        assert (target / f"{dist}-1.0.dist-info").is_dir(), res.stdout
                return res
            finally:
                shutil.rmtree(target, ignore_errors=True)

        loop = ClientLoop(install)
        try:
            with running(loop):
                loop.wait_installs_since(loop.started, 2)
                step(f"client loop installing through the balancer ({loop.figures()})")

                # The rolling update: surge one new instance, wait until healthy, drain and remove one old.
                for old, new in zip(OLD, NEW, strict=True):
                    group.boot(new)
                    lb.enable(new.name)
                    lb.wait(lambda st, n=new.name: st[n].status == "UP", 60, f"{new.name} healthy")
                    lb.drain(old.name)
                    lb.wait(lambda st, o=old.name: st[o].sessions == 0, 120, f"{old.name} drained")
                    lb.maint(old.name)
                    group.guests[old.name].stop()
                    mark = time.monotonic()
                    loop.wait_installs_since(mark, 2)
                    step(f"{old.name} replaced by {new.name} ({loop.figures()})")

                states = lb.servers()
                assert {n for n, st in states.items() if st.status == "UP"} == {s.name for s in NEW}
                since = time.time()
                mark = time.monotonic()
                loop.wait_installs_since(mark, 4)
                served = {s.name: group.served(s.name, since) for s in NEW}
                assert all(served.values()), f"after the rollout both v2 instances serve: {served}"
                step(f"rollout done, both v2 instances serve ({served}; {loop.figures()})")

                # Losing a replica in the middle of a download: throttle it, wait until a wheel is on
                # its way out, then take its network away; the health check takes it out.
                rollout_end = time.monotonic()
                lost, survivor = NEW[1], NEW[0]
                net = group.nets[lost.name]
                run(["tc", "-n", net.name, "qdisc", "add", "dev", GUEST_IF, "root", *THROTTLE.split()])
                deadline = time.monotonic() + 180
                while True:  # a wheel is streaming, and still is after ~0.8 MB of it went out
                    assert time.monotonic() < deadline, f"no download from {lost.name} in 180 s"
                    if _streaming(net, VARIANT.port):
                        time.sleep(0.8)
                        if _streaming(net, VARIANT.port):
                            break
                    time.sleep(0.05)
                loss_since = time.time()
                _lose_network(net)
                lost_at = time.monotonic()
                lb.wait(lambda st: st[lost.name].status.startswith("DOWN"), 30, f"{lost.name} marked down")
                marked_down = time.monotonic()
                loop.wait_installs_since(marked_down, 4, timeout=180)
                step(f"{lost.name} lost mid-download, {survivor.name} serves alone ({loop.figures()})")
        finally:
            print(f"[ha] client loop: {loop.figures()}")
            for failure in loop.failures:
                print(f"[ha] failed install at +{failure.started - loop.started:.1f}s:\n{failure.detail}")
        # Every install caught by the loss asked again: a silent read gave up after pip.conf's timeout
        # (urllib3 retried it on a new connection) or a cut download resumed with a Range request,
        # which only the survivor can have answered (206 in its access log).
        answers = (
            group.guests[survivor.name]
            .ssh(
                f"journalctl -t pypapo_nginx -o cat --no-pager --since @{int(loss_since)}"
                " | grep 'vmprobe_data-1.0-py3-none-any.whl HTTP' | cut -d'\"' -f3 | cut -d' ' -f2"
            )
            .stdout.split()
        )
        statuses = {code: answers.count(code) for code in sorted(set(answers))}
        caught = [o for o in loop.outcomes if o.ended >= lost_at and o.started < marked_down]
        print(
            f"[ha] rollout: {loop.installs_since(loop.started) - loop.installs_since(rollout_end)} installs,"
            f" {sum(1 for o in loop.failures if o.ended < lost_at)} failed; replica lost mid-download:"
            f" detected in {marked_down - lost_at:.1f}s, {len(caught)} install(s) caught in it,"
            f" {loop.installs_since(lost_at)} installs since, {len(loop.failures)} failed;"
            f" pip retried {loop.said('Retrying (', since=rollout_end)} and resumed"
            f" {loop.said('Attempting to resume', since=lost_at)} (the wheel's answers on {survivor.name}"
            f" since the loss, by status: {statuses}); longest stall {loop.longest_stall(since=lost_at):.1f}s"
        )
        assert not loop.failures, f"{len(loop.failures)} installs failed: {loop.figures()}"
        assert loop.said("Attempting to resume", since=lost_at) >= 1 and "206" in statuses, (
            "the loss never cut a download: the test did not test what it says"
        )
        assert loop.installs_since(loop.started) >= 10

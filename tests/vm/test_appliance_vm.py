"""The appliance on a booted Debian 12 system: the rendered startup script, then everything users rely on.

Each variant boots a debootstrap'ed bookworm tree with systemd-nspawn in a network namespace this test
creates, with fake-gcs-server (holding wheels published by ``provision publish``) on the host end of the
veth and the gcsfuse stand-in mounting it with rclone. The rendered startup script runs at boot from the
test's stand-in for the guest agent, exactly as Compute Engine runs it.

- ``fresh``: the image has no nginx, fuse3 or gcsfuse; the script installs them from the guest's Debian
  mirror and from "packages.cloud.google.com", both served by the test (see tests/vm/aptrepo.py).
- ``baked``: a golden image made by the script's own bake mode (tests/vm/rootfs.py), booted with no
  package source reachable at all; the script must not need one (no apt lists appear, dpkg installs
  nothing, it says it installs nothing).

Readiness arrives as on Compute Engine: through a metadata-server stand-in (tests/fixtures/metadata.py) on
169.254.169.254 inside the variant's own network namespace, which serves the instance attributes and the
guest-attribute endpoints and drops writes beyond the documented rate limit; the test waits for
``pypapo/ready=true`` there, as ``provision create`` does.

Then: ``provision verify`` (the shipped testinfra suite over SSH) passes and fails when it should; pip on
the host installs through the guest's serving port; killing the mount daemon makes nginx answer 503 (pages
and /healthz, never a partial index) until systemd restarts it; a reboot brings everything back.

And the first-boot failures a real project meets (``test_first_boot_failures``):

- ``broken-apt``: the Debian mirror is gone (a VM with no egress): ``pypapo/error`` names the step and
  apt's own error within seconds, instead of a waiter's timeout;
- ``slow-mount``: storage answers 403 for the first seconds (the VM's new grant has not propagated):
  gcsfuse exits, systemd restarts it, the script says it waits for IAM, and ends in ready, not error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from provisioner.appliance import conda_sample, guest, sample
from provisioner.appliance.demo import clean_env
from provisioner.appliance.verify import Expectations
from tests.fixtures import metadata
from tests.fixtures.gcs import start_fake_gcs, stop_fake_gcs
from tests.vm import aptrepo, guestagent, rootfs, standin
from tests.vm.machine import REBOOT_EXIT, Guest, Net, keypair, network, prepare_root

pytestmark = pytest.mark.vm

REQUIRED_TOOLS = (
    "systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen", "nginx", "dpkg-deb", "dpkg-scanpackages",
    "apt-ftparchive", "gpg", "openssl",
)  # fmt: skip
BUCKET = "pypapo-vm-bucket"
PREFIX = "team"
PROVISION = [sys.executable, "-c", "from provisioner.cli import main; main()"]
FAILURE_FILE = "/run/pypapo/failure"


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, network namespaces, debootstrap)"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (`bash bootstrap` installs it)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (the guest's gcsfuse needs FUSE)"
    return None


def check_prerequisites() -> None:
    """Skip with the reason where the test cannot run; under PYPAPO_REQUIRE_VM=1 (CI) fail instead."""
    reason = _missing_prerequisite()
    if reason is None:
        return
    if os.environ.get("PYPAPO_REQUIRE_VM") == "1":
        pytest.fail(f"the vm test must run here (PYPAPO_REQUIRE_VM=1) but cannot: {reason}")
    pytest.skip(f"vm test cannot run here: {reason}")


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    check_prerequisites()


@dataclass(frozen=True)
class Variant:
    name: str
    index: int  # 10.213.INDEX.0/30
    port: int
    mount_path: str


VARIANTS = [
    Variant("fresh", 61, 3333, "/mnt/pypapo"),
    # Non-default port and mount path: the rendered files and the suite must follow the configuration.
    Variant("baked", 62, 8443, "/srv/pypapo-bucket"),
]
# The first-boot failures: a fresh image without a Debian mirror, a baked one whose grant propagates late.
BROKEN_APT = Variant("broken-apt", 63, 3333, "/mnt/pypapo")
SLOW_MOUNT = Variant("slow-mount", 64, 8443, "/srv/pypapo-bucket")  # the baked variant's config: its image
NAMESPACE = guest.NAMESPACE


# The configured client range of every guest here (as IAP's and --lb-client's are on Compute Engine): the
# host ends of the veths, where the test's clients and the HA test's balancer connect from. A source
# outside it (OUTSIDE) must get nothing from nginx: its unit's kernel wall drops it.
CLIENT_RANGE = "10.213.0.0/16"


def _outside(net: Net) -> str:
    """A second address of the host end, outside CLIENT_RANGE: another VM of the VPC, say."""
    return f"10.214.{net.index}.1"


def _render(variant: Variant) -> str:
    from provisioner.appliance import render

    cfg = render.ApplianceConfig(
        bucket=BUCKET, prefix=PREFIX, port=variant.port, mount_path=variant.mount_path,
        allowed_sources=(CLIENT_RANGE,),
        # the test's repository key signs "packages.cloud.google.com": the script must trust exactly it
        gcsfuse_key_fingerprints=(rootfs.signing_key().fingerprint(),),
    )  # fmt: skip
    return render.render_startup_script(cfg)


def _handshake(source: str, address: str, port: int, timeout: float = 3) -> bool:
    """A TCP handshake from SOURCE: True when the guest answered the SYN (whatever nginx does next, its
    own allow list closing the connection included), False when nothing came back."""
    try:
        with socket.create_connection((address, port), timeout=timeout, source_address=(source, 0)):
            return True
    except TimeoutError:
        return False


def _metadata_server(script: str) -> metadata.MetadataServer:
    """The stand-in at 169.254.169.254:80, reached only from the variant's veth (see tests/vm/machine.py)."""
    md = metadata.MetadataServer(attributes={"enable-guest-attributes": "TRUE", "startup-script": script})
    md.start(metadata.ADDRESS, 80, freebind=True)
    return md


def _state(md: metadata.MetadataServer) -> guest.Report:
    return guest.serving(md.guest_attributes(NAMESPACE))


def _wait_reported(md: metadata.MetadataServer, timeout: float) -> guest.Report:
    """Wait as `provision create` does: until the guest attributes say ready or failed."""
    md.wait_for(NAMESPACE, lambda a: guest.serving(a).state is not guest.State.STARTING, timeout)
    return _state(md)


def _paced(md: metadata.MetadataServer) -> None:
    """The scripts kept to Compute Engine's guest-attribute limit: nothing was dropped for the rate."""
    outcomes = [q.outcome for q in md.queries()]
    assert "dropped: rate limit" not in outcomes, md.queries()
    per_minute, per_second = md.max_rate()
    assert per_minute <= metadata.PER_MINUTE and per_second <= metadata.PER_SECOND, (per_minute, per_second)


class FakeGCSOnVeth:
    """fake-gcs-server with the bucket the appliance serves, behind the strict front
    (tests/fixtures/gcs_front.py) on the host end of the veth only: the guest's rclone and the
    host's `provision publish` both reach the server through it, the server itself on loopback."""

    def __init__(self, address: str, port: int, log: Path) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.url, self.procs = start_fake_gcs(address, port, self.log)
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=pypapo-vm",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def read(self, name: str) -> bytes:
        url = f"{self.url}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read()

    def write(self, name: str, data: bytes) -> None:
        """Replace an object as another tool would (a plain media upload, no precondition)."""
        req = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quote(name, safe='')}",
            data=data,
            headers={"Content-Type": "text/html"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        stop_fake_gcs(self.procs)
        self.log.close()


def _publish(gcs: FakeGCSOnVeth, dists: Path) -> list[Path]:
    files = [
        sample.build_wheel(dists, "vmprobe-core", "1.0"),
        sample.build_wheel(dists, "vmprobe-app", "1.0", requires_dist=["vmprobe-core>=1.0"]),
        conda_sample.build_package(dists, "vmprobe-conda", "1.0"),  # a conda channel beside the index
    ]
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs.url}
    res = subprocess.run(
        [*PROVISION, "publish", "--repo", f"gs://{BUCKET}/{PREFIX}", *map(str, files)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, f"provision publish failed:\n{res.stdout}\n{res.stderr}"
    return files


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _watch_root(
    guest_url: str, index_html: bytes, until: object, timeout: float = 150, health_path: str = "/healthz"
) -> tuple[int, bytes]:
    """Poll /simple/ and HEALTH_PATH until `until(page, health)`; the root page is never an empty 200 (or
    any other page than `index_html`) meanwhile. Returns the last HEALTH_PATH answer."""
    import http.client

    deadline = time.monotonic() + timeout
    seen: set[tuple[int, int]] = set()
    while time.monotonic() < deadline:
        try:
            page, health = _get(f"{guest_url}/simple/"), _get(f"{guest_url}{health_path}")
        except (http.client.HTTPException, OSError):
            continue  # the mount's cached size and the object disagree for a moment: a cut response
        seen.add((page[0], health[0]))
        assert page[0] in (200, 503), f"/simple/ answered {page[0]}"
        if page[0] == 200:
            assert page[1] == index_html, f"a different root index was served: {page[1][:200]!r}"
        if until(page, health):  # type: ignore[operator]
            return health
        time.sleep(0.2)
    raise AssertionError(f"no change within {timeout} s: answers seen {sorted(seen)}")


def _pip_install(guest_url: str, target: Path, requirement: str) -> subprocess.CompletedProcess[str]:
    """pip on the host, isolated from this machine's pip configuration, through the guest's port."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir",
         "--disable-pip-version-check", "--index-url", guest_url,
         "--trusted-host", str(urlsplit(guest_url).hostname), "--target", str(target), requirement],
        env=clean_env(target.parent), capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _wait_startup_script(guest: Guest, timeout: float) -> str:
    """Wait until the guest agent stand-in has run the startup script; return its journal."""
    deadline = time.monotonic() + timeout
    while True:
        state = guest.ssh(
            f"systemctl show -p ActiveState --value {guestagent.UNIT}", check=False
        ).stdout.strip()
        if state in ("active", "failed"):
            break
        assert time.monotonic() < deadline, f"startup script still running after {timeout}s"
        time.sleep(1)
    journal = guest.ssh(f"journalctl -b -o cat --no-pager -u {guestagent.UNIT}", check=False).stdout
    assert state == "active", f"the startup script failed at boot:\n{journal[-6000:]}"
    return journal


def _verify(
    guest: Guest, variant: Variant, known_hosts: Path, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROVISION, "verify", "--host", f"ssh://root@{guest.net.guest_ip}",
         "--identity-file", str(guest.key), "--known-hosts", str(known_hosts),
         "--port", str(port or variant.port), "--bucket", BUCKET, "--mount-path", variant.mount_path],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _unit_prop(guest: Guest, unit: str, prop: str) -> str:
    return guest.ssh(f"systemctl show -p {prop} --value {unit}").stdout.strip()


def _gcsfuse_unit() -> str:
    from provisioner.appliance.verify import Expectations

    return Expectations().gcsfuse_unit


@dataclass
class Booted:
    guest: Guest
    net: Net
    gcs: FakeGCSOnVeth
    server: aptrepo.PackageServer | None
    md: metadata.MetadataServer


@contextlib.contextmanager
def _booted(
    variant: Variant, tmp_path: Path, *, storage_url: str | None = None, prepare: object = None
) -> Iterator[Booted]:
    """Everything one variant needs, torn down in reverse order whatever happens.

    `storage_url` replaces the emulator's address the guest's gcsfuse uses (a gate in front of it);
    `prepare(md)` runs before the boot (drops to inject).
    """
    fresh = variant.name in ("fresh", BROKEN_APT.name)
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(network(variant.index))
        gcs = FakeGCSOnVeth(net.host_ip, 4443, tmp_path / "fake-gcs.log")
        stack.callback(gcs.stop)
        _publish(gcs, tmp_path / "dists")

        script = _render(variant)
        md = _metadata_server(script)
        stack.callback(md.stop)
        source = rootfs.base_rootfs() if fresh else rootfs.baked_rootfs(script)
        root = tmp_path / "root"
        rootfs.copy_tree(source, root)
        guest = Guest(root=root, net=net, key=keypair(tmp_path), console=tmp_path / "console.log")
        stack.callback(_remove_root, guest)
        prepare_root(root, net, Path(f"{guest.key}.pub").read_text())
        with open(root / "etc/hosts", "a") as hosts:  # as on every Compute Engine image
            hosts.write(f"{metadata.ADDRESS} metadata.google.internal metadata\n")
        (root / "etc/pypapo-test").mkdir(parents=True, exist_ok=True)
        (root / "etc/pypapo-test/gcs-endpoint").write_text((storage_url or gcs.url) + "\n")
        guestagent.install(root, script)

        server = None
        if fresh:
            server = _package_sources(root, net, tmp_path / "packages", broken=variant is BROKEN_APT)
            stack.callback(server.stop)
        if callable(prepare):
            prepare(md)
        stack.callback(guest.stop)
        try:
            guest.boot()
            yield Booted(guest, net, gcs, server, md)
        except BaseException:
            print(_diagnostics(guest, md))
            raise


def _remove_root(guest: Guest) -> None:
    # Only once the container is gone: its mounts live in its own namespace and die with it.
    if guest.proc is None or guest.proc.poll() is not None:
        shutil.rmtree(guest.root, ignore_errors=True)


def _diagnostics(guest: Guest, md: metadata.MetadataServer) -> str:
    out = ["---- guest console (tail)", guest.console.read_text(errors="replace")[-4000:]]
    out += ["---- guest attributes", repr(md.guest_attributes(NAMESPACE)), repr(md.queries()[-30:])]
    if guest.proc is not None and guest.proc.poll() is None:
        res = guest.ssh(
            "journalctl -b --no-pager -n 200; systemctl --failed --no-pager", check=False, timeout=30
        )
        out += ["---- guest journal (tail)", res.stdout]
    return "\n".join(out)


def _package_sources(root: Path, net: Net, work: Path, broken: bool = False) -> aptrepo.PackageServer:
    """Serve the guest's Debian mirror and Google's gcsfuse repository from the host end of the veth.

    `broken`: the guest's sources.list names a mirror path that does not exist (a VM without egress).
    """
    work.mkdir()
    key = rootfs.signing_key()
    mirror, google = work / "mirror", work / "google"
    aptrepo.build_repo(mirror, rootfs.SUITE, sorted(rootfs.debs().glob("*.deb")), key)
    aptrepo.build_google_tree(google, f"gcsfuse-{rootfs.SUITE}", key)
    ca = aptrepo.TestCA.create(work / "tls", aptrepo.GOOGLE_HOST)

    # The guest's view: its Debian mirror is ours, Google's host resolves to the veth, our CA is trusted.
    (root / "etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/keyrings/pypapo-test-mirror.asc").write_text(key.armored_public())
    (root / "etc/apt/sources.list").write_text(
        "# The VM's Debian mirror: in the vm test, a local mirror on the host end of the veth.\n"
        f"deb [signed-by=/etc/apt/keyrings/pypapo-test-mirror.asc] http://{net.host_ip}/"
        f"{'debian-gone' if broken else 'debian'} {rootfs.SUITE} main\n"
    )
    aptrepo.impersonate_google(root, net.host_ip, ca)
    return aptrepo.PackageServer(work, net.host_ip, mirror, google, ca)


class _Steps:
    """Prints how long each step took (shown with -s or on failure; never asserted)."""

    def __init__(self, variant: str) -> None:
        self.variant, self.start, self.last = variant, time.monotonic(), time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[vm {self.variant}] {name}: {now - self.last:.1f}s (total {now - self.start:.1f}s)")
        self.last = now


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_appliance_boots_serves_recovers(variant: Variant, tmp_path: Path) -> None:
    step = _Steps(variant.name)

    # The metadata server may drop any write: the baked guest's first ready=true is lost on purpose.
    def drop_ready(md: metadata.MetadataServer) -> None:
        if variant.name == "baked":
            md.drop_next(f"{NAMESPACE}/{guest.Key.READY}", guest.READY_TRUE)

    with _booted(variant, tmp_path, prepare=drop_ready) as booted:
        vm, net, server, md = booted.guest, booted.net, booted.server, booted.md
        step("root filesystem ready, bucket published, guest booted (SSH up)")
        guest_url = f"http://{net.guest_ip}:{variant.port}"
        dpkg_log_before = (vm.root / "var/log/dpkg.log").read_text() if variant.name == "baked" else ""

        # 1. The rendered startup script ran at boot, as the guest agent runs it, and reported ready
        #    through the metadata server, within Compute Engine's rate limit (and despite a dropped write).
        report = _wait_reported(md, timeout=300)
        assert report.state is guest.State.READY, report
        journal = _wait_startup_script(vm, timeout=60)
        print(journal[-3000:])
        assert "pypapo: ready" in journal, "the startup script did not log its readiness line"
        assert md.guest_attributes(NAMESPACE).get(guest.Key.CONTENT) == guest.CONTENT_OK
        _paced(md)
        if variant.name == "baked":
            assert "dropped: injected" in [q.outcome for q in md.queries()], (
                "the injected drop did not happen"
            )
            assert "did not stick" in journal, "the dropped ready=true was not noticed"
        step("startup script ran at boot and reported ready")

        # 2. Where the packages came from.
        if server is not None:
            fetched = "\n".join(server.requests())
            assert "/apt/pool/main/gcsfuse_" in fetched, "gcsfuse was not installed from Google's repository"
            assert "/debian/pool/main/nginx_" in fetched, "nginx was not installed from the Debian mirror"
            assert "/debian/pool/main/fuse3_" in fetched, "fuse3 was not installed from the Debian mirror"
            assert "/debian/pool/main/libnginx-mod-http-js_" in fetched, (
                "njs was not installed from the mirror"
            )
            assert vm.ssh("dpkg-query -W -f '${Version}' gcsfuse").stdout == standin.STANDIN_VERSION
        else:
            # The image was generalized by the bake: a machine-id and host keys of its own, no apt lists.
            assert vm.ssh("cat /etc/machine-id").stdout.strip() != "", "no machine-id at first boot"
            baked = rootfs.baked_rootfs(_render(variant))
            assert (baked / "etc/machine-id").read_text() == "", "the image carries a machine-id"
            assert not list((baked / "etc/ssh").glob("ssh_host_*")), "the image carries SSH host keys"
            lists = vm.ssh("ls /var/lib/apt/lists").stdout.split()
            assert not [f for f in lists if f.endswith(("Packages", "InRelease", "Release"))], (
                f"the pre-baked path ran apt-get update: {lists}"
            )
            assert (vm.root / "var/log/dpkg.log").read_text() == dpkg_log_before, (
                "the pre-baked path installed packages"
            )
            assert "default" not in vm.ssh("ip route").stdout, "the baked guest must have no route out"
            assert "pypapo: installing" not in journal, "the pre-baked path installed packages"

        # 3. The shipped testinfra suite, through `provision verify`, over SSH.
        known_hosts = tmp_path / "known_hosts"
        res = _verify(vm, variant, known_hosts)
        assert res.returncode == 0, f"provision verify failed:\n{res.stdout}\n{res.stderr}"
        assert "FAIL" not in res.stdout and "checks passed" in res.stdout, res.stdout
        print(res.stdout)
        if variant.name == "baked":
            # The suite is not a rubber stamp: expecting another port fails the port checks.
            wrong = _verify(vm, variant, known_hosts, port=variant.port + 1)
            assert wrong.returncode != 0, wrong.stdout
            assert "nginx_listens_on_serving_port" in wrong.stderr + wrong.stdout
        step("provision verify")

        # 3b. The kernel wall on the nginx unit (cgroup BPF): a source outside the configured ranges gets
        #     no SYN-ACK from the serving port (nginx's own allow list would answer the handshake, then
        #     close), while the guest does answer it elsewhere (sshd: no wall), and an allowed source is
        #     served. Verify's check of the wall passed above (IPAccounting counters: programs attached).
        outside = _outside(net)
        subprocess.run(["ip", "addr", "add", f"{outside}/32", "dev", net.host_if], check=True)
        vm.ssh(f"ip route replace {outside}/32 via {net.host_ip}")  # the guest can answer it
        assert _handshake(outside, net.guest_ip, 22), "the guest does not answer the outside address at all"
        assert not _handshake(outside, net.guest_ip, variant.port), (
            "a source outside the allowed ranges got a TCP handshake from nginx's port"
        )
        assert _handshake(net.host_ip, net.guest_ip, variant.port)
        assert _get(f"{guest_url}/healthz") == (200, b"ok\n")
        step("kernel source wall: outside source dropped, allowed one served")

        # 4. pip on the host installs through the guest's serving port (dependency resolved via the index).
        index_html = _get(f"{guest_url}/simple/")[1]
        for n, url in enumerate((f"{guest_url}/simple/", f"{guest_url}/")):
            target = tmp_path / f"site-{n}"
            pip = _pip_install(url, target, "vmprobe-app==1.0")
            assert pip.returncode == 0, f"pip install through {url} failed:\n{pip.stdout}\n{pip.stderr}"
            assert (target / "vmprobe_app-1.0.dist-info").is_dir()
            assert (target / "vmprobe_core-1.0.dist-info").is_dir()
        step("pip install through the guest's port")

        # 5. Kill the mount daemon: nginx answers 503 (pages and /healthz) until systemd restarts it.
        unit = _gcsfuse_unit()
        restarts = int(_unit_prop(vm, unit, "NRestarts"))
        main_pid = _unit_prop(vm, unit, "MainPID")
        assert main_pid not in ("", "0"), f"{unit} has no main process"
        vm.ssh(f"kill -KILL {main_pid}")
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            page, health = _get(f"{guest_url}/simple/"), _get(f"{guest_url}/healthz")
            seen.append((page[0], health[0]))
            assert page[0] in (200, 503), f"/simple/ answered {page[0]} while the mount was restarting"
            if page[0] == 200:
                assert page[1] == index_html, "a partial or different root index was served"
            if any(s == (503, 503) for s in seen) and seen[-1] == (200, 200):
                break
            time.sleep(0.05)
        assert (503, 503) in seen, f"nginx never answered 503 with the mount gone: {sorted(set(seen))}"
        assert seen[-1] == (200, 200), f"serving did not resume: last answers {seen[-5:]}"
        assert int(_unit_prop(vm, unit, "NRestarts")) > restarts, f"{unit} was not restarted by systemd"
        assert _unit_prop(vm, unit, "MainPID") != main_pid
        outage = sum(1 for s in seen if s != (200, 200))
        step(f"mount daemon killed: {outage} of {len(seen)} polls answered 503, then serving resumed")

        # 6. The root page truncated to 0 bytes on the bucket (a hand upload, another tool): the sandboxed
        #    nginx's page guard (njs) answers 503 and /healthz says why, never an empty index with 200;
        #    rewriting the page brings serving back without a restart. Once (the baked, production path).
        #    Each change would show after the mount's metadata cache (60 s by default): the stand-in is
        #    rclone, whose SIGHUP flushes its directory cache, so it shows at once.
        if variant.name == "baked":

            def put(name: str, data: bytes) -> None:  # into the bucket, and shown by the mount at once
                booted.gcs.write(name, data)
                vm.ssh(f"kill -HUP {_unit_prop(vm, unit, 'MainPID')}")

            name = f"{PREFIX}/simple/index.html"
            good = booted.gcs.read(name)
            nginx_unit = Expectations().nginx_unit
            nginx_pid = _unit_prop(vm, nginx_unit, "MainPID")
            put(name, b"")
            health = _watch_root(guest_url, index_html, until=lambda page, health: health[0] == 503)
            assert health[1].startswith(b"unavailable: simple/index.html is empty (0 bytes)"), health
            page = _get(f"{guest_url}/simple/")
            assert page[0] == 503 and b"simple/index.html is empty (0 bytes)" in page[1], page
            put(name, good)
            _watch_root(guest_url, index_html, until=lambda page, health: (page[0], health[0]) == (200, 200))
            assert _unit_prop(vm, nginx_unit, "MainPID") == nginx_pid, "nginx was restarted"
            step("root page truncated on the bucket: 503 and /healthz unavailable, then served again")
            # The channel's repodata: conda, pixi would fail to parse it (or cache an empty subdir). That
            # is conda users' content, not the machine's health: /healthz/conda answers 503 naming it and
            # `provision verify` fails on it, while /healthz (the balancer's, readiness') and the pip
            # index stay 200. It stays broken across the reboot below: the startup script reports it as
            # a warning (guest attribute `content`) and is ready all the same.
            repodata = f"{PREFIX}/conda/noarch/repodata.json"
            good_repodata = booted.gcs.read(repodata)
            put(repodata, b"")
            conda = _watch_root(
                guest_url,
                index_html,
                until=lambda page, health: health[0] == 503,
                health_path="/healthz/conda",
            )
            assert conda[1].startswith(b"unavailable: conda/noarch/repodata.json is empty (0 bytes)"), conda
            answer = _get(f"{guest_url}/conda/noarch/repodata.json")
            assert answer[0] == 503 and b"conda/noarch/repodata.json is empty (0 bytes)" in answer[1], answer
            assert _get(f"{guest_url}/healthz") == (200, b"ok\n")
            assert _get(f"{guest_url}/simple/")[0] == 200
            res = _verify(vm, variant, known_hosts)
            assert res.returncode != 0, res.stdout
            failed = [line for line in res.stdout.splitlines() if "FAIL" in line]
            assert len(failed) == 1 and "conda_channel_healthy" in failed[0], res.stdout
            assert "conda/noarch/repodata.json is empty" in res.stdout + res.stderr, res.stdout
            step("repodata truncated on the bucket: /healthz/conda 503 and verify fails; /healthz 200")

        # 7. Restart the machine: the startup script runs again at boot and everything comes back.
        if server is not None:
            server.stop()  # the second boot must not need a package source either
        assert vm.reboot() == REBOOT_EXIT
        journal = _wait_startup_script(vm, timeout=120)
        assert _state(md).state is guest.State.READY
        _paced(md)  # the budget outlives the reboot: the second boot waits for slots, nothing is dropped
        # Idempotent: the second run finds everything in place, installs and rewrites nothing.
        assert "pypapo: installing" not in journal and "pypapo: wrote" not in journal, journal[-3000:]
        assert "pypapo: ready" in journal
        step("rebooted, startup script ran again")
        if variant.name == "baked":
            # Ready despite the broken channel, which it reports for `create`/`rollout` to print; then
            # the file rewritten (what `provision reindex` does) and the channel healthy again.
            content = md.guest_attributes(NAMESPACE).get(guest.Key.CONTENT, "")
            assert content.startswith("conda channel unavailable: conda/noarch/repodata.json is empty"), (
                content
            )
            assert "provision reindex" in content and "pypapo: warning: conda channel" in journal
            put(repodata, good_repodata)
            _watch_root(
                guest_url,
                index_html,
                until=lambda page, health: health[0] == 200,
                health_path="/healthz/conda",
            )
            assert _get(f"{guest_url}/conda/noarch/repodata.json") == (200, good_repodata)
            step("ready with the channel's warning reported; rewritten, healthy again")
        res = _verify(vm, variant, known_hosts)
        assert res.returncode == 0, f"provision verify failed after the reboot:\n{res.stdout}\n{res.stderr}"
        target = tmp_path / "site-after-reboot"
        pip = _pip_install(f"{guest_url}/simple/", target, "vmprobe-app==1.0")
        assert pip.returncode == 0, f"pip install after the reboot failed:\n{pip.stdout}\n{pip.stderr}"
        assert (target / "vmprobe_app-1.0.dist-info").is_dir()
        step("verify and pip after the reboot")


class PermissionGate:
    """Storage as a VM sees it while its new grant propagates: 403 (storage.objects.list) until `opens`
    seconds after the first request, then the emulator behind it. On the host end of the veth only."""

    def __init__(self, address: str, port: int, upstream: str, opens: float) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        gate = self
        self.first: float | None = None
        self.denied = 0
        up = urlsplit(upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                now = time.monotonic()
                gate.first = gate.first if gate.first is not None else now
                if now - gate.first < opens:
                    gate.denied += 1
                    body = json.dumps({"error": {"code": 403, "message": (
                        "pypapo-vm@p.iam.gserviceaccount.com does not have storage.objects.list access to "
                        "the Google Cloud Storage bucket. Permission 'storage.objects.list' denied on "
                        "resource (or it may not exist).")}}).encode()  # fmt: skip
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(str(up.hostname), up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_HEAD = do_POST = _forward

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{address}:{port}"
        import threading

        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("variant", [BROKEN_APT, SLOW_MOUNT], ids=lambda v: v.name)
def test_first_boot_failures(variant: Variant, tmp_path: Path) -> None:
    step = _Steps(variant.name)
    if variant is BROKEN_APT:
        with _booted(variant, tmp_path) as booted:
            step("guest booted (SSH up)")
            report = _wait_reported(booted.md, timeout=180)
            queries = booted.md.queries()
            # The error arrives at once, naming the step and apt's own reason, not as a waiter's timeout.
            assert report.state is guest.State.FAILED, report
            assert report.detail.startswith("packages: apt-get update: "), report.detail
            assert "debian-gone" in report.detail and "E:" in report.detail, report.detail
            first = queries[0].at
            reported = next(q.at for q in queries if q.key.endswith("/error") and q.outcome == "stored")
            step(f"pypapo/error arrived {reported - first:.1f}s after the script's first query")
            assert reported - first < 120, "the failure was not reported at once"
            journal = booted.guest.ssh(f"journalctl -b -o cat --no-pager -u {guestagent.UNIT}", check=False)
            assert "pypapo: not ready: packages: apt-get update" in journal.stdout
            assert booted.guest.ssh(f"cat {FAILURE_FILE}").stdout.strip() == report.detail
            _paced(booted.md)
        return

    # SLOW_MOUNT: the baked image; storage denies the VM for the first 40 s, through a gate that must
    # listen on the host end of this variant's veth before the guest boots (made in `prepare`).
    gate: list[PermissionGate] = []
    host_ip = Net(variant.index).host_ip
    with contextlib.ExitStack() as stack:

        def prepare(_md: metadata.MetadataServer) -> None:
            g = PermissionGate(host_ip, 4444, f"http://{host_ip}:4443", opens=40)
            gate.append(g)
            stack.callback(g.stop)

        booted = stack.enter_context(
            _booted(variant, tmp_path, storage_url=f"http://{host_ip}:4444", prepare=prepare)
        )
        step("guest booted (SSH up)")
        statuses: list[str] = []
        deadline = time.monotonic() + 240
        while _state(booted.md).state is guest.State.STARTING and time.monotonic() < deadline:
            status = booted.md.guest_attributes(NAMESPACE).get(guest.Key.STATUS, "")
            if status and status not in statuses:
                statuses.append(status)
            time.sleep(0.5)
        report = _state(booted.md)
        step(f"reported {report.state.value} after {gate[0].denied} denied storage requests")
        assert gate[0].denied > 0, "storage never denied the guest: the gate was not in the path"
        assert report.state is guest.State.READY, (report, statuses)
        assert any(s.startswith("waiting for IAM") for s in statuses), statuses
        assert guest.Key.ERROR not in booted.md.guest_attributes(NAMESPACE)
        unit = _gcsfuse_unit()
        assert int(_unit_prop(booted.guest, unit, "NRestarts")) > 0, f"{unit} was never restarted"
        status, body = _get(f"http://{booted.net.guest_ip}:{variant.port}/simple/")
        assert status == 200 and b"vmprobe-app" in body
        _paced(booted.md)

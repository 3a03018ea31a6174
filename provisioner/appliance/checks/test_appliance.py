"""What a healthy pypapo appliance looks like, checked over SSH with testinfra.

Run by ``provision verify`` (which hands the expectations over in pytest's config stash) or by hand:
``pytest provisioner/checks/test_appliance.py --hosts=ssh://USER@HOST`` with the expectations in
``PYPAPO_VERIFY_PORT``, ``PYPAPO_VERIFY_MOUNT_PATH``, ``PYPAPO_VERIFY_BUCKET``.
"""

from __future__ import annotations

import ipaddress
import shlex

import pytest

from provisioner.appliance.verify import (
    Expectations,
    declared_directives,
    expectations_of,
    expected_hardening,
)

ROLES = ("gcsfuse", "nginx")


@pytest.fixture(scope="module")
def appliance(request: pytest.FixtureRequest) -> Expectations:
    return expectations_of(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One check per hardening property of each unit, as our templates render them for this port.
    if metafunc.function.__name__ == "test_unit_hardening":
        port = expectations_of(metafunc.config).port
        cases = [
            (role, prop, value) for role in ROLES for prop, value in expected_hardening(role, port).items()
        ]
        metafunc.parametrize(("role", "prop", "value"), cases, ids=[f"{r}-{p}" for r, p, _ in cases])


def _unit(appliance: Expectations, role: str) -> str:
    return appliance.gcsfuse_unit if role == "gcsfuse" else appliance.nginx_unit


def _get(host, appliance: Expectations, path: str) -> tuple[int, bytes]:
    """GET a path from the serving port on the appliance itself: (status, body)."""
    url = f"http://127.0.0.1:{appliance.port}{path}"
    out = host.run(f"curl -sS -o /dev/stdout -w '\\n%{{http_code}}' --max-time 10 {shlex.quote(url)}")
    assert out.rc == 0, f"curl {url} failed: {out.stderr}"
    body, _, status = out.stdout_bytes.rpartition(b"\n")
    return int(status), body


@pytest.mark.parametrize("role", ROLES)
def test_unit_enabled_and_active(host, appliance: Expectations, role: str) -> None:
    svc = host.service(_unit(appliance, role))
    assert svc.is_enabled, f"{svc.name} is not enabled: it would not come back after a reboot"
    assert svc.is_running, f"{svc.name} is not active"


def test_bucket_mounted_read_only(host, appliance: Expectations) -> None:
    out = host.run(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS --mountpoint {shlex.quote(appliance.mount_path)}")
    assert out.rc == 0 and out.stdout.strip(), f"nothing is mounted at {appliance.mount_path}"
    source, fstype, options = out.stdout.split()[:3]
    assert fstype.startswith("fuse"), f"{appliance.mount_path} is {fstype}, not a FUSE mount"
    assert "ro" in options.split(","), f"{appliance.mount_path} is mounted read-write: {options}"
    if appliance.bucket:
        assert source == appliance.bucket, f"{appliance.mount_path} mounts {source}, not {appliance.bucket}"


def test_nginx_listens_on_serving_port(host, appliance: Expectations) -> None:
    sockets = host.socket.get_listening_sockets()
    assert any(s.startswith("tcp://") and s.endswith(f":{appliance.port}") for s in sockets), (
        f"nothing listens on port {appliance.port}: {sockets}"
    )
    # Whose port it is, without root (OS Login users may have no sudo): the answer's Server header.
    url = f"http://127.0.0.1:{appliance.port}/healthz"
    headers = host.run(f"curl -sS -o /dev/null -D - --max-time 10 {shlex.quote(url)}").stdout.lower()
    assert "server: nginx" in headers, f"port {appliance.port} is not answered by nginx: {headers!r}"


@pytest.mark.parametrize("path", ["/simple/", "/"])
def test_root_index_served_from_mount(host, appliance: Expectations, path: str) -> None:
    on_disk = host.file(f"{appliance.mount_path}/simple/index.html")
    assert on_disk.exists, f"the mount has no simple/index.html: is {appliance.mount_path} the bucket?"
    status, body = _get(host, appliance, path)
    assert status == 200, f"GET {path} answered {status}"
    assert body == on_disk.content, f"GET {path} is not the root index stored in the bucket"


def test_healthz(host, appliance: Expectations) -> None:
    status, body = _get(host, appliance, "/healthz")
    assert status == 200, f"/healthz answered {status}: {body[:200]!r}"


def test_conda_channel_healthy(host, appliance: Expectations) -> None:
    """The bucket's content for conda users (not the machine's health: /healthz stays 200 meanwhile, and
    no new machine fixes it): a broken channel document is named, with its fix."""
    status, body = _get(host, appliance, "/healthz/conda")
    assert status == 200, f"/healthz/conda answered {status}: {body[:300].decode(errors='replace').strip()}"


def test_nginx_workers_unprivileged(host, appliance: Expectations) -> None:
    workers = [
        line.split(None, 1)
        for line in host.run("ps -eo user:32=,args=").stdout.splitlines()
        if "nginx: worker process" in line
    ]
    assert workers, "no nginx worker process"
    privileged = [w for w in workers if w[0] == "root"]
    assert not privileged, f"nginx workers run as root: {privileged}"


def test_unit_hardening(host, appliance: Expectations, role: str, prop: str, value: str) -> None:
    unit = _unit(appliance, role)
    out = host.run(f"systemctl show -p {prop} --value {shlex.quote(unit)}")
    assert out.rc == 0, out.stderr
    actual = out.stdout.strip()
    assert _normalize(actual) == _normalize(value), f"{unit}: {prop}={actual!r}, expected {value!r}"


# Capabilities our units may name, by number (linux/capability.h).
_CAPS = {"CAP_NET_BIND_SERVICE": 10, "CAP_SYS_ADMIN": 21}


@pytest.mark.parametrize("role", ROLES)
def test_unit_sandbox_in_effect(host, appliance: Expectations, role: str) -> None:
    """What the kernel enforces on the running main process, not only what systemd has loaded."""
    unit = _unit(appliance, role)
    pid = host.run(f"systemctl show -p MainPID --value {shlex.quote(unit)}").stdout.strip()
    assert pid not in ("", "0"), f"{unit} has no main process"
    status = dict(
        line.split(":", 1)
        for line in host.file(f"/proc/{pid}/status").content_string.splitlines()
        if ":" in line
    )
    declared = declared_directives(role, appliance.port)
    if declared.get("NoNewPrivileges") == "yes":
        assert status["NoNewPrivs"].strip() == "1", f"{unit}: no_new_privs is not set on PID {pid}"
    if "SystemCallFilter" in declared:
        assert status["Seccomp"].strip() == "2", f"{unit}: no seccomp filter on PID {pid}"
    names = declared.get("CapabilityBoundingSet")
    if names is not None and all(n in _CAPS for n in names.split()):
        mask = sum(1 << _CAPS[n] for n in names.split())
        assert int(status["CapBnd"], 16) == mask, (
            f"{unit}: capability bounding set {status['CapBnd'].strip()}"
        )
    if declared.get("DynamicUser") == "yes":
        assert status["Uid"].split()[1] != "0", f"{unit} runs as root"


def test_nginx_kernel_source_wall_in_force(host, appliance: Expectations) -> None:
    """The unit's IPAddressDeny=/IPAddressAllow= as systemd loaded them, and in force: systemd attaches
    them as cgroup BPF programs, and where it cannot (no BPF, or a container's seccomp filter) it starts
    the unit unfiltered with only a warning in the journal. IPAccounting, attached with them, shows it."""
    unit = shlex.quote(appliance.nginx_unit)
    shown = dict(
        line.split("=", 1)
        for line in host.run(
            f"systemctl show -p IPAddressDeny -p IPAddressAllow -p IPAccounting -p IPIngressBytes {unit}"
        ).stdout.splitlines()
        if "=" in line
    )
    deny = {ipaddress.ip_network(n) for n in shown.get("IPAddressDeny", "").split()}
    assert {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")} <= deny, (
        f"{appliance.nginx_unit} has no kernel source wall: IPAddressDeny={shown.get('IPAddressDeny')!r}"
    )
    allow = {ipaddress.ip_network(n) for n in shown.get("IPAddressAllow", "").split()}
    assert ipaddress.ip_network("127.0.0.0/8") in allow, f"loopback is not allowed: {sorted(map(str, allow))}"
    ingress = shown.get("IPIngressBytes", "")
    assert shown.get("IPAccounting") == "yes" and ingress.isdigit() and int(ingress) < 2**64 - 1, (
        f"{appliance.nginx_unit}: systemd did not attach its BPF programs (IPIngressBytes={ingress!r}): "
        "the kernel wall is not in force (journalctl -b | grep 'BPF/cgroup firewalling')"
    )


def _normalize(value: str) -> str:
    low = value.strip().lower()
    if low in ("yes", "true", "on", "1"):
        return "yes"
    if low in ("no", "false", "off", "0"):
        return "no"
    return " ".join(sorted(low.split()))


def test_only_ssh_and_serving_port_listen(host, appliance: Expectations) -> None:
    exposed: set[int] = set()
    for line in host.run("ss -Htln").stdout.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        if address in ("*", "0.0.0.0", "::") or not ipaddress.ip_address(address).is_loopback:
            exposed.add(int(port))
    assert exposed == {22, appliance.port}, f"listening beyond loopback: {sorted(exposed)}"

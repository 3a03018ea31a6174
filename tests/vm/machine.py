"""A Debian 12 guest booted with systemd-nspawn in a network namespace the test creates.

Network: ``ip netns add NAME``; a veth pair whose host end (``HOST_IF``, 10.213.N.1/30) stays in this
namespace and whose guest end (``ens4``, like a GCE NIC) is moved into NAME. systemd-networkd in the
guest assigns 10.213.N.2/30 from a .network file; there is no default route, so the guest reaches only the
host end of its veth. Nothing here listens beyond those addresses and 127.0.0.1.

The metadata address, as on Compute Engine: the guest routes 169.254.169.254 via the host end, and on this
side a policy rule for packets *arriving on the veth only* makes that address local (a `local` route in a
table of the variant's own), so the metadata stand-in answers there, bound with IP_FREEBIND. This
machine's own traffic to 169.254.169.254 never matches the rule: it is not redirected.

Commands run in the guest over SSH (sshd in the guest, a key the test generates): the same path testinfra
and ``provision verify`` use, and the only one that works with ``--register=no`` (no machinectl).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GUEST_IF = "ens4"
METADATA_ADDRESS = "169.254.169.254"
REBOOT_EXIT = 133  # systemd-nspawn's exit status when the guest asked for a reboot


def run(cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


@dataclass
class Net:
    """A netns with one veth pair: host end in this namespace, guest end inside."""

    index: int
    name: str = ""
    host_if: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"pypapo-vm{self.index}"
        self.host_if = self.host_if or f"ppvm{self.index}"

    @property
    def host_ip(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def guest_ip(self) -> str:
        return f"10.213.{self.index}.2"

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def table(self) -> str:
        return str(21300 + self.index)  # policy rule preference and routing table of this variant

    def create(self) -> None:
        self.destroy()  # leftovers of a killed run
        run(["ip", "netns", "add", self.name])
        run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", GUEST_IF, "netns", self.name])
        run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
        run(["ip", "link", "set", self.host_if, "up"])
        run(["ip", "route", "add", "local", f"{METADATA_ADDRESS}/32", "dev", "lo", "table", self.table])
        run(["ip", "rule", "add", "pref", self.table, "iif", self.host_if, "lookup", self.table])

    def destroy(self) -> None:
        run(["ip", "rule", "del", "pref", self.table], check=False)
        run(["ip", "route", "flush", "table", self.table], check=False)
        run(["ip", "link", "del", self.host_if], check=False)
        run(["ip", "netns", "del", self.name], check=False)

    def network_file(self) -> str:
        """The guest's systemd-networkd config: a static address on the veth, no default route, no DNS;
        the metadata server via the host end (Compute Engine's DHCP gives its guests that route)."""
        return (
            f"[Match]\nName={GUEST_IF}\n\n[Network]\nAddress={self.guest_ip}/30\nLinkLocalAddressing=no\n\n"
            f"[Route]\nDestination={METADATA_ADDRESS}/32\nGateway={self.host_ip}\n"
        )


@contextlib.contextmanager
def network(index: int) -> Iterator[Net]:
    net = Net(index)
    net.create()
    try:
        yield net
    finally:
        net.destroy()


@dataclass
class Guest:
    """One root filesystem booted (and rebooted) with systemd-nspawn; console appended to a log."""

    root: Path
    net: Net
    key: Path  # private key whose .pub is root's authorized key in the guest
    console: Path
    machine: str = "pypapo"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    boots: int = 0

    def nspawn_args(self) -> list[str]:
        # bpf(2) allowed: nspawn's default seccomp filter refuses it (EPERM), and the guest's systemd then
        # finds "the local system does not support BPF/cgroup firewalling" and starts a unit with
        # IPAddressDeny= unfiltered, warning once in the journal. On Compute Engine systemd is PID 1 of
        # the VM with no such filter: the nginx unit's kernel wall must be in force here as it is there.
        return [
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
            f"--machine={self.machine}", f"--directory={self.root}",
            "--bind=/dev/fuse",
            f"--network-namespace-path={self.net.path}", "--capability=CAP_NET_ADMIN",
            "--system-call-filter=bpf",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        ]  # fmt: skip

    def boot(self, timeout: float = 90) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.boots += 1
        with open(self.console, "ab") as out:
            out.write(f"\n===== boot {self.boots}: {shlex.join(self.nspawn_args())}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.nspawn_args(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.wait_ssh(timeout)

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}; console: {self.console}")
            if self.ssh("true", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest SSH not up after {timeout}s; console: {self.console}")
            time.sleep(0.5)

    def ssh_base(self) -> list[str]:
        return [
            "ssh", "-F", "none", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", f"root@{self.net.guest_ip}",
        ]  # fmt: skip

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*self.ssh_base(), command], text=True, capture_output=True, timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            out = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            raise AssertionError(f"guest command failed ({res.returncode}): {command}\n{out}")
        return res

    def reboot(self, timeout: float = 90) -> int:
        """`systemctl reboot` in the guest; nspawn exits 133 and we start it again, as its unit would."""
        assert self.proc is not None
        self.ssh("systemctl reboot", check=False, timeout=20)
        code = self.proc.wait(timeout=timeout)
        self.boot(timeout)
        return code

    def stop(self, timeout: float = 30) -> None:
        """Clean poweroff (SIGTERM makes nspawn ask the guest's systemd to power off); kill if stuck."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def prepare_root(root: Path, net: Net, pubkey: str) -> None:
    """Per-run settings of a copied root filesystem: address, SSH key, machine-id for first boot."""
    netdir = root / "etc/systemd/network"
    netdir.mkdir(parents=True, exist_ok=True)
    (netdir / f"10-{GUEST_IF}.network").write_text(net.network_file())
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    os.chmod(ssh / "authorized_keys", 0o600)


def keypair(directory: Path) -> Path:
    key = directory / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pypapo-vm-test", "-f", str(key)])
    return key

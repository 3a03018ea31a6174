"""Debootstrap'ed bookworm root filesystems for the vm test, cached outside the repository.

Each cached tree is keyed by its recipe (suite, mirror, package lists, this file's RECIPE_VERSION and the
stand-in gcsfuse package), so a change of recipe builds a new tree and an unchanged one is reused. Builds
take an exclusive flock, so two test runs never build the same tree at once; a tree is published by an
atomic rename only when complete.

Variants:
- ``base``: systemd, sshd, networkd and the tools a GCE Debian 12 image has; no nginx, fuse3 or gcsfuse.
  The startup script must install them (the fresh-install path).
- ``baked``: a golden image: base plus the rendered startup script run in ``bake`` mode, as
  ``provision image build`` runs it (packages installed and upgraded, config and units written and
  enabled). Debian's packages come from the real mirror (build time, like the image builder's egress);
  gcsfuse from the test's stand-in for Google's repository on a loopback address, whose hosts entry and
  CA are removed again afterwards. The bake itself generalizes the tree (empty machine-id and apt lists,
  no SSH host keys), so the booted guest has nothing to install from: the pre-baked path must not need it.
- ``debs``: a flat directory of the .deb files the fresh-install path needs beyond ``base`` (nginx, its
  njs module, fuse3 and their dependencies), downloaded by apt inside a copy of ``base``; the test serves
  them to the guest as its Debian mirror.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provisioner.appliance import render
from tests.vm import aptrepo, standin

RECIPE_VERSION = 1
CACHE_ROOT = Path(os.environ.get("PYPAPO_VM_CACHE", "/var/cache/pypapo-test"))
SUITE = "bookworm"

# What a GCE Debian 12 image has that the appliance and the test rely on (sshd for testinfra, curl and
# gnupg for the startup script's repository set-up, procps/iproute2 for the checks).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "iproute2",
    "procps",
    "curl",
    "ca-certificates",
    "gnupg",
    "util-linux",
)
# What the startup script installs when missing (gcsfuse comes from its own repository).
APPLIANCE_PACKAGES = tuple(p for p in render.DEBIAN_PACKAGES if p not in BASE_PACKAGES)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap must reach the same one)."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*")
    ):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if words[:1] == ["deb"] and SUITE in words:
                uri = next((w for w in words[1:] if "://" in w), "")
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return "http://deb.debian.org/debian"


def recipe(part: str, startup_script: str = "") -> dict[str, object]:
    """What a cached tree is made of; the base tree's recipe leaves out what only later parts use."""
    doc: dict[str, object] = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": debian_mirror(),
        "base": BASE_PACKAGES,
        "arch": subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout,
    }
    if part != "base":
        doc["appliance"] = APPLIANCE_PACKAGES
    if part == "baked":
        doc["standin"] = hashlib.sha256(
            (standin.script() + standin.PARAMS_FILE.read_text()).encode()
        ).hexdigest()
        doc["startup_script"] = hashlib.sha256(startup_script.encode()).hexdigest()
    return doc


def recipe_key(part: str, startup_script: str = "") -> str:
    return hashlib.sha256(json.dumps(recipe(part, startup_script), sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, **kw: object) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}); log {log}:\n{tail}")


def in_root(root: Path, script: str, log: Path) -> None:
    """Run a shell script inside ROOT with the host's network (build time only: installing packages)."""
    _run(
        [
            "systemd-nspawn", "-q", "--register=no", "--keep-unit", "--resolv-conf=copy-host",
            "--timezone=off", "-D", str(root), "--pipe", "/bin/sh", "-euxc", script,
        ],
        log,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def _publish(tmp: Path, final: Path, part: str, startup_script: str = "") -> Path:
    (tmp / ".pypapo-recipe.json").write_text(
        json.dumps(recipe(part, startup_script), indent=1, sort_keys=True)
    )
    os.rename(tmp, final)
    # Trees of other recipes of this part are stale now (builds of one part are serialized by its lock).
    prefix = final.name.rsplit("-", 1)[0] + "-"
    for old in CACHE_ROOT.glob(prefix + "*"):
        if old != final and old.is_dir() and len(old.name) == len(final.name):
            shutil.rmtree(old, ignore_errors=True)
    part_prefix = prefix.removeprefix("rootfs-")  # build logs are build-base-KEY.log, build-debs-KEY.log
    keep = f"build-{final.name.removeprefix('rootfs-')}.log"
    for log in CACHE_ROOT.glob(f"build-{part_prefix}*.log"):
        if log.name != keep:
            log.unlink(missing_ok=True)
    return final


def _tmpdir(name: str) -> Path:
    # Called under the part's lock: any work directory of that part left now is from a killed build.
    for stale in CACHE_ROOT.glob(f".{name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=CACHE_ROOT))


def base_rootfs() -> Path:
    final = CACHE_ROOT / f"rootfs-base-{recipe_key('base')}"
    with _lock("base"):
        if final.is_dir():
            return final
        tmp = _tmpdir("base")
        log = CACHE_ROOT / f"build-base-{recipe_key('base')}.log"
        log.write_text("")
        try:
            root = tmp / "root"
            _run(
                [
                    "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                    SUITE, str(root), debian_mirror(),
                ],
                log,
            )  # fmt: skip
            _configure_base(root, log)
            os.rename(root, tmp.with_name(tmp.name + ".root"))
            shutil.rmtree(tmp)
            return _publish(tmp.with_name(tmp.name + ".root"), final, "base")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp.with_name(tmp.name + ".root"), ignore_errors=True)
            raise


def _configure_base(root: Path, log: Path) -> None:
    # Like a cloud image: networkd configures the NIC, sshd accepts keys for root, no machine-id yet
    # (systemd makes one at first boot), no getty on a console nobody reads.
    (root / "etc/hostname").write_text("pypapo\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 pypapo\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    in_root(
        root,
        "systemctl enable systemd-networkd.service ssh.service; "
        "systemctl mask getty@.service console-getty.service serial-getty@.service "
        "systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service; "
        "rm -f /etc/ssh/ssh_host_*; ssh-keygen -A; "
        "apt-get clean; rm -rf /var/lib/apt/lists/*",
        log,
    )


def debs() -> Path:
    """Flat directory of the .debs the fresh-install path needs beyond the base tree."""
    base = base_rootfs()
    final = CACHE_ROOT / f"debs-{recipe_key('debs')}"
    with _lock("debs"):
        if final.is_dir():
            return final
        tmp = _tmpdir("debs")
        log = CACHE_ROOT / f"build-debs-{recipe_key('debs')}.log"
        log.write_text("")
        try:
            work = tmp / "root"
            copy_tree(base, work)
            pkgs = " ".join(APPLIANCE_PACKAGES)
            in_root(
                work,
                "apt-get update -qq; apt-get clean; "
                f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only {pkgs}",
                log,
            )
            out = tmp / "debs"
            out.mkdir()
            for deb in (work / "var/cache/apt/archives").glob("*.deb"):
                shutil.copy2(deb, out / deb.name)
            shutil.rmtree(work)
            os.rename(out, tmp.with_name(tmp.name + ".out"))
            shutil.rmtree(tmp)
            return _publish(tmp.with_name(tmp.name + ".out"), final, "debs")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def signing_key() -> aptrepo.SigningKey:
    """The test's repository key (Debian mirror and Google's host), made once and kept with the trees.

    The startup script pins the fingerprint of the key that signs packages.cloud.google.com: the test
    renders it with this key's, and a baked tree made with it stays valid across runs.
    """
    with _lock("signing-key"):
        return aptrepo.SigningKey.cached(CACHE_ROOT / "signing-key")


BAKE_ADDRESS = "127.213.0.1"  # loopback: Google's package host during the image build


def baked_rootfs(startup_script: str) -> Path:
    """A golden image: base plus STARTUP_SCRIPT run in bake mode."""
    base = base_rootfs()
    key = recipe_key("baked", startup_script)
    final = CACHE_ROOT / f"rootfs-baked-{key}"
    with _lock("baked"):
        if final.is_dir():
            return final
        tmp = _tmpdir("baked")
        log = CACHE_ROOT / f"build-baked-{key}.log"
        log.write_text("")
        try:
            root = tmp / "root"
            copy_tree(base, root)
            work = tmp / "work"
            work.mkdir()
            signing = signing_key()
            aptrepo.build_google_tree(work / "google", f"gcsfuse-{SUITE}", signing)
            (work / "mirror").mkdir()
            ca = aptrepo.TestCA.create(work / "tls", aptrepo.GOOGLE_HOST)
            hosts, bundle = root / "etc/hosts", root / "etc/ssl/certs/ca-certificates.crt"
            saved = hosts.read_bytes(), bundle.read_bytes()
            aptrepo.impersonate_google(root, BAKE_ADDRESS, ca)
            (root / "var/tmp/pypapo-startup-script").write_text(startup_script)
            server = aptrepo.PackageServer(work, BAKE_ADDRESS, work / "mirror", work / "google", ca)
            try:
                in_root(
                    root, "chmod +x /var/tmp/pypapo-startup-script; /var/tmp/pypapo-startup-script bake", log
                )
            finally:
                server.stop()
            # The image keeps what bake mode made, not the build's stand-in plumbing.
            hosts.write_bytes(saved[0])
            bundle.write_bytes(saved[1])
            (root / "usr/local/share/ca-certificates/pypapo-vm-test-ca.crt").unlink()
            (root / "var/tmp/pypapo-startup-script").unlink()
            os.rename(root, tmp.with_name(tmp.name + ".root"))
            shutil.rmtree(tmp)
            return _publish(tmp.with_name(tmp.name + ".root"), final, "baked", startup_script)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp.with_name(tmp.name + ".root"), ignore_errors=True)
            raise

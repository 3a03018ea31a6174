"""`provision verify`: run the shipped testinfra suite against an appliance over SSH, print a table.

Two ways to reach the host, one code path: an explicit ``ssh://USER@HOST[:PORT]`` (the vm test's nspawn
guest), or a Compute Engine instance through IAP, where ssh's ProxyCommand is
``gcloud compute start-iap-tunnel INSTANCE 22 --listen-on-stdin`` and the user is the caller's OS Login
POSIX user. Either way we write one ssh config file and hand it to testinfra's ssh backend.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from provisioner.appliance import render
from provisioner.errors import PypapoError

SSH_ALIAS = "pypapo-appliance"
DEFAULT_PORT = 3333
DEFAULT_MOUNT_PATH = "/mnt/pypapo"
DEFAULT_GCSFUSE_UNIT = render.GCSFUSE_UNIT
DEFAULT_NGINX_UNIT = render.NGINX_UNIT

# Hardening every appliance must have whatever the templates say: a floor, not the whole list. The
# gcsfuse unit gets no mount-namespace sandboxing (it would hide the mount from nginx).
_FLOOR: dict[str, dict[str, str]] = {
    "gcsfuse": {"NoNewPrivileges": "yes"},
    "nginx": {"NoNewPrivileges": "yes", "ProtectSystem": "full", "PrivateTmp": "yes"},
}
# Unit-file directives whose effective value `systemctl show` reports under the same name, comparable
# after yes/no normalization.
_HARDENING_DIRECTIVES = (
    "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectClock",
    "ProtectHostname", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "RestrictSUIDSGID", "RestrictRealtime", "LockPersonality",
    "MemoryDenyWriteExecute", "RestrictNamespaces", "SystemCallArchitectures", "ProtectProc",
    "ProcSubset", "RemoveIPC", "KeyringMode", "UMask", "DynamicUser", "CapabilityBoundingSet",
    "RestrictAddressFamilies",
)  # fmt: skip


@dataclass(frozen=True)
class Expectations:
    """What the healthy appliance is configured with (the suite checks the host against it)."""

    port: int = DEFAULT_PORT
    mount_path: str = DEFAULT_MOUNT_PATH
    bucket: str = ""
    gcsfuse_unit: str = DEFAULT_GCSFUSE_UNIT
    nginx_unit: str = DEFAULT_NGINX_UNIT

    @classmethod
    def from_env(cls) -> Expectations:
        env = os.environ
        return cls(
            port=int(env.get("PYPAPO_VERIFY_PORT", DEFAULT_PORT)),
            mount_path=env.get("PYPAPO_VERIFY_MOUNT_PATH", DEFAULT_MOUNT_PATH),
            bucket=env.get("PYPAPO_VERIFY_BUCKET", ""),
        )


def unit_files(port: int = DEFAULT_PORT) -> dict[str, str]:
    """The unit files this package ships, rendered, by role."""
    rendered = render.render_units(render.ApplianceConfig(bucket="verify", port=port))
    return {"gcsfuse": rendered[render.GCSFUSE_UNIT], "nginx": rendered[render.NGINX_UNIT]}


def parse_directives(unit_text: str) -> dict[str, str]:
    """[Service] directives of a unit file (last assignment wins, as in systemd)."""
    section, out = "", {}
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def declared_directives(role: str, port: int = DEFAULT_PORT) -> dict[str, str]:
    """Every [Service] directive our ROLE unit template sets, rendered for PORT."""
    return parse_directives(unit_files(port)[role])


def expected_hardening(role: str, port: int = DEFAULT_PORT) -> dict[str, str]:
    """Effective hardening the ROLE's unit must show: the floor plus every directive our template sets."""
    expected = dict(_FLOOR[role])
    directives = declared_directives(role, port)
    expected.update({k: v for k, v in directives.items() if k in _HARDENING_DIRECTIVES})
    return expected


@dataclass(frozen=True)
class Target:
    """How to reach the appliance's sshd."""

    host: str
    user: str
    port: int = 22
    identity_file: str = ""
    proxy_command: str = ""
    known_hosts: str = ""
    host_key_alias: str = ""
    strict_host_key_checking: str = "accept-new"

    @classmethod
    def from_url(cls, url: str, identity_file: str = "", known_hosts: str = "") -> Target:
        parts = urlsplit(url if "://" in url else f"ssh://{url}")
        if parts.scheme != "ssh" or not parts.hostname:
            raise PypapoError(f"--host must look like ssh://USER@HOST[:PORT], not {url!r}")
        return cls(
            host=parts.hostname,
            user=parts.username or "root",
            port=parts.port or 22,
            identity_file=identity_file,
            known_hosts=known_hosts,
        )

    @classmethod
    def iap(
        cls,
        project: str,
        zone: str,
        instance: str,
        user: str,
        identity_file: str = "",
        *,
        instance_id: str = "",
        known_hosts: str = "",
    ) -> Target:
        """Through IAP, keyed as gcloud keys it: `HostKeyAlias compute.INSTANCE_ID`, so a VM recreated
        under the same name (every rollout) is a new host, not a changed key refused by ssh. With
        `known_hosts` (written from the keys the guest agent publishes, `host_key_lines`) the key must
        match it (StrictHostKeyChecking yes); otherwise the first key is accepted, as gcloud does."""
        proxy = shlex.join(
            ["gcloud", "compute", "start-iap-tunnel", instance, "22", "--listen-on-stdin",
             f"--zone={zone}", f"--project={project}", "--verbosity=warning"]
        )  # fmt: skip
        default_key = Path.home() / ".ssh" / "google_compute_engine"
        return cls(
            host=instance,
            user=user,
            identity_file=identity_file or str(default_key),
            proxy_command=proxy,
            known_hosts=known_hosts or str(Path.home() / ".ssh" / "google_compute_known_hosts"),
            host_key_alias=host_key_alias(instance_id)
            if instance_id
            else f"compute.{instance}.{zone}.{project}",
            strict_host_key_checking="yes" if known_hosts else "accept-new",
        )

    def ssh_config(self, control_dir: Path) -> str:
        lines = [
            f"Host {SSH_ALIAS}",
            f"  HostName {self.host}",
            f"  User {self.user}",
            f"  Port {self.port}",
            "  BatchMode yes",
            "  ServerAliveInterval 15",
            f"  StrictHostKeyChecking {self.strict_host_key_checking}",
            f"  UserKnownHostsFile {self.known_hosts or '~/.ssh/known_hosts'}",
            # One connection for the whole suite; closed by run_suite when it is done.
            "  ControlMaster auto",
            f"  ControlPath {control_dir}/cm-%C",
            "  ControlPersist 120",
        ]
        if self.identity_file:
            lines += [f"  IdentityFile {self.identity_file}", "  IdentitiesOnly yes"]
        if self.proxy_command:
            lines.append(f"  ProxyCommand {self.proxy_command}")
        if self.host_key_alias:
            lines.append(f"  HostKeyAlias {self.host_key_alias}")
        return "\n".join(lines) + "\n"


# The host key types the guest agent generates and publishes (`hostkeys/TYPE` = base64 blob).
HOST_KEY_TYPES = frozenset(
    {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"}
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def host_key_alias(instance_id: str) -> str:
    """gcloud's alias for a VM's host keys: the instance id, which a recreated VM does not keep."""
    if not instance_id.isdigit():
        raise PypapoError(f"instance id {instance_id!r} is not a number")
    return f"compute.{instance_id}"


def host_key_lines(instance_id: str, published: dict[str, str]) -> list[str]:
    """known_hosts lines from the `hostkeys/` guest attributes (key type -> base64 blob, the guest
    agent's form). The guest writes them, so each is checked: a known type and one base64 word, never
    text that could add a line (`@cert-authority`, a wildcard host) to the file."""
    alias = host_key_alias(instance_id)
    lines = []
    for kind, blob in sorted(published.items()):
        if kind not in HOST_KEY_TYPES or not _BASE64.match(blob):
            continue
        try:
            head = base64.b64decode(blob, validate=True)
        except ValueError:
            continue
        # the blob names its own type first (RFC 4253 string): it must be the attribute's
        if head[4 : 4 + len(kind)] != kind.encode() or int.from_bytes(head[:4], "big") != len(kind):
            continue
        lines.append(f"{alias} {kind} {blob}")
    return lines


def os_login_user() -> str:
    """The caller's OS Login POSIX user name, as gcloud knows it."""
    try:
        out = subprocess.run(
            [
                "gcloud",
                "compute",
                "os-login",
                "describe-profile",
                "--format=value(posixAccounts[0].username)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise PypapoError("gcloud is not installed: install the Google Cloud CLI, or pass --user") from None
    user = out.stdout.strip()
    if out.returncode != 0 or not user:
        raise PypapoError(
            "could not read your OS Login user (gcloud compute os-login describe-profile): "
            "run `gcloud auth login`, or pass --user"
        )
    return user


@dataclass
class Result:
    name: str
    outcome: str  # passed, failed, skipped, error
    detail: str = ""


EXPECTATIONS = pytest.StashKey["Expectations"]()


def expectations_of(config: pytest.Config) -> Expectations:
    """The expectations `provision verify` handed to this run, else those of the environment."""
    return config.stash.get(EXPECTATIONS, None) or Expectations.from_env()


@dataclass
class _Plugin:
    """Hands the expectations to the suite and records every check's outcome."""

    expectations: Expectations
    results: list[Result] = field(default_factory=list)

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[EXPECTATIONS] = self.expectations

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("::", 1)[-1]
        # testinfra adds the host to every test id; there is one host, so drop it.
        name = name.replace(f"[ssh://{SSH_ALIAS}]", "").replace(f"-ssh://{SSH_ALIAS}]", "]")
        name = name.replace(f"[ssh://{SSH_ALIAS}-", "[").removeprefix("test_")
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome if report.when == "call" else ("error" if report.failed else "skipped")
            detail = ""
            if report.failed:
                crash = getattr(report.longrepr, "reprcrash", None)
                detail = crash.message if crash is not None else str(report.longrepr)
            elif report.skipped and isinstance(report.longrepr, tuple):
                detail = report.longrepr[2]
            self.results.append(Result(name, outcome, detail.splitlines()[0] if detail else ""))


def run_suite(target: Target, expectations: Expectations, extra_args: tuple[str, ...] = ()) -> list[Result]:
    """Run the testinfra suite against TARGET; one Result per check."""
    from provisioner.appliance.checks import SUITE

    plugin = _Plugin(expectations)
    with tempfile.TemporaryDirectory(prefix="pypapo-verify-") as tmp:
        config = Path(tmp) / "ssh_config"
        config.write_text(target.ssh_config(Path(tmp)))
        try:
            _preflight(config, target)
            args = [
                str(SUITE), f"--hosts=ssh://{SSH_ALIAS}", f"--ssh-config={config}",
                "-c", os.devnull, "--rootdir", tmp, "-p", "no:cacheprovider", "-p", "no:terminal",
                *extra_args,
            ]  # fmt: skip
            code = pytest.main(args, plugins=[plugin])
        finally:
            # Close the shared connection (and with it the IAP tunnel) the suite ran over.
            subprocess.run(
                ["ssh", "-F", str(config), "-O", "exit", SSH_ALIAS], capture_output=True, check=False
            )
    if not plugin.results:
        raise PypapoError(f"the verification suite did not run (pytest exit {int(code)})")
    return plugin.results


def _preflight(config: Path, target: Target) -> None:
    """One SSH round trip first: an unreachable host is one clear error, not a table of failures."""
    try:
        res = subprocess.run(
            ["ssh", "-F", str(config), SSH_ALIAS, "true"], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        res = subprocess.CompletedProcess([], 255, "", "timed out after 120 s")
    if res.returncode == 0:
        return
    why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    if target.proxy_command:
        fix = (
            "check that the instance runs, that you hold IAP-secured Tunnel User on it "
            "(`provision grant`), that OS Login knows your key (`gcloud compute os-login ssh-keys add`)"
        )
    else:
        fix = "check the address, the user and --identity-file"
    raise PypapoError(f"cannot reach {target.user}@{target.host} over SSH ({why}): {fix}")


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    marks = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [
        f"{r.name.ljust(width)}  {marks.get(r.outcome, r.outcome).ljust(6)}  {r.detail}" for r in results
    ]
    failed = sum(r.outcome in ("failed", "error") for r in results)
    lines.append(f"{len(results) - failed} of {len(results)} checks passed")
    return "\n".join(lines)

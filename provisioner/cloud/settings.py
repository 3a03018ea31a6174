"""Where and how to deploy: flags > `PYPAPO_*` environment > optional `pypapo.toml`, validated up front.

Validation happens before any API call so a typo in a zone or a bucket name fails in a millisecond with
a message that names the flag, not minutes later inside an operation.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.cloud import names
from provisioner.errors import PypapoError
from provisioner.repo import location as loc

CONFIG_FILE = "pypapo.toml"
ENV_PREFIX = "PYPAPO_"

# GCP naming rules (https://cloud.google.com/compute/docs/naming-resources and friends).
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z]([-a-z0-9]{4,28}[a-z0-9])$")
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Settings:
    """Everything `provision create/plan/status/destroy/grant/tunnel` needs to know about the target."""

    project: str
    zone: str
    region: str = ""
    network: str = "default"
    subnet: str = ""
    instance: str = "pypapo"
    bucket: str = ""
    prefix: str = ""
    port: int = 3333
    machine_type: str = "e2-small"
    image_family: str = "pypapo"
    image_project: str = ""
    service_account: str = "pypapo-vm"
    disk_size_gb: int = 10
    ready_timeout: int = 600
    # None: today's single VM. N: a regional managed instance group of N replicas behind an internal
    # passthrough load balancer (`provisioner.cloud.group`).
    replicas: int | None = None
    # Source ranges inside the VPC that may use the group's internal load balancer (`--lb-client`):
    # the one explicit exception to "IAM is the only gate" (no IAP on that path), private space only.
    lb_clients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Derived defaults: region from zone, subnet named like the network (auto-mode networks do
        # this), bucket PROJECT-pypapo, image project = this project.
        if not self.region and self.zone:
            m = _ZONE.match(self.zone)
            if m:
                object.__setattr__(self, "region", m.group(1))
        if not self.subnet:
            object.__setattr__(self, "subnet", self.network)
        if not self.bucket and self.project:
            object.__setattr__(self, "bucket", f"{self.project.split(':')[-1]}-pypapo")
        if not self.image_project:
            object.__setattr__(self, "image_project", self.project)

    @property
    def service_account_email(self) -> str:
        return names.service_account_email(self.project, self.service_account)

    @property
    def firewall_name(self) -> str:
        return f"{self.instance}-allow-iap"

    @property
    def deny_firewall_name(self) -> str:
        return f"{self.instance}-deny-port"

    @property
    def group_mode(self) -> bool:
        """The appliance is a regional group (`--replicas N`), not the single VM."""
        return self.replicas is not None

    @property
    def labels(self) -> dict[str, str]:
        return {"app": "pypapo", "pypapo-instance": self.instance}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
_INT_FIELDS = {"port", "disk_size_gb", "ready_timeout", "replicas"}
_LIST_FIELDS = {"lb_clients"}  # repeatable flags; comma-separated in the environment
_FLAGS = {"lb_clients": "--lb-client"}  # one range per flag, so the flag is singular
# Where a VPC client can come from: RFC 1918 and the shared address space (RFC 6598), which Cloud Build
# private pools and GKE use. Public ranges never reach an internal load balancer except through
# privately used public addresses, which pypapo refuses rather than guesses about.
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# A replica per zone at most twice over is already more than an index needs; beyond that a typo
# (--replicas 30 for 3) would cost real money before anyone noticed.
MAX_REPLICAS = 12


def flag(field: str) -> str:
    """The command-line flag of a setting (`lb_clients` is `--lb-client`, repeated)."""
    return _FLAGS.get(field, f"--{field.replace('_', '-')}")


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_network(value, strict=False).version == 6
    except ValueError:
        return False


def lb_client_problem(value: str) -> str | None:
    """Why `value` cannot be a load balancer client range, or None (a private IPv4 network)."""
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        if _is_ipv6(value):
            return (
                "is an IPv6 range, and the internal load balancer pypapo creates is IPv4 only (its"
                " forwarding rule has an internal IPv4 address, the replicas IPv4-only interfaces), so no"
                " IPv6 client could reach it: name the clients' IPv4 range (a dual-stack subnet has one),"
                " or have them use `provision tunnel`"
            )
        return "is not an IPv4 network like 10.8.0.0/16 (address/prefix, host bits zero)"
    if net.prefixlen == 0:
        return (
            "would let every source use the load balancer, which has no IAM check (IAM is the only"
            " gate; the clients' ranges are its one narrow exception): name the VPC ranges of the clients"
        )
    if not any(net.subnet_of(p) for p in PRIVATE_RANGES):
        return (
            "is not private address space (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10):"
            " the load balancer has no IAM check, so only ranges inside the VPC may use it"
        )
    return None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PypapoError(message)


def validate(s: Settings) -> Settings:
    """Raise `PypapoError` naming the flag and the rule for the first thing that is wrong."""
    _check(bool(s.project), "no project: pass --project or set PYPAPO_PROJECT (or project in pypapo.toml)")
    _check(
        bool(_PROJECT.match(s.project)),
        f"--project {s.project!r} is not a valid project ID (6-30 characters: lowercase letters, digits,"
        " hyphens; starts with a letter; `gcloud projects list` shows yours)",
    )
    _check(bool(s.zone), "no zone: pass --zone (for example us-central1-a) or set PYPAPO_ZONE")
    m = _ZONE.match(s.zone)
    _check(bool(m), f"--zone {s.zone!r} is not a zone name like us-central1-a (`gcloud compute zones list`)")
    _check(bool(_REGION.match(s.region)), f"--region {s.region!r} is not a region name like us-central1")
    _check(
        m is not None and m.group(1) == s.region,
        f"--zone {s.zone} is not in --region {s.region}; drop --region or pick a zone {s.region}-X",
    )
    for flag, value in (
        ("--network", s.network),
        ("--subnet", s.subnet),
        ("--instance", s.instance),
        ("--image-family", s.image_family),
    ):
        _check(
            bool(_RFC1035.match(value)),
            f"{flag} {value!r} is not a valid name (1-63 characters: lowercase letters, digits, hyphens;"
            " starts with a letter, does not end with a hyphen)",
        )
    _check(
        len(s.instance) <= 63 - len("-allow-iap"),
        f"--instance {s.instance!r} is too long: firewall rule {s.firewall_name!r} must fit 63 chars",
    )
    _check(
        bool(_PROJECT.match(s.image_project)),
        f"--image-project {s.image_project!r} is not a valid project ID",
    )
    _check(
        bool(_SERVICE_ACCOUNT.match(s.service_account)),
        f"--service-account {s.service_account!r} is not a valid service account ID (6-30 characters:"
        " lowercase letters, digits, hyphens; starts with a letter)",
    )
    _check(
        bool(_MACHINE_TYPE.match(s.machine_type)),
        f"--machine-type {s.machine_type!r} is not a machine type like e2-small"
        " (`gcloud compute machine-types list`)",
    )
    _check(
        1024 <= s.port <= 65535,
        f"--port {s.port} is outside 1024-65535 (22 is SSH; pick an unprivileged port, default 3333)",
    )
    _check(10 <= s.disk_size_gb <= 65536, f"--disk-size-gb {s.disk_size_gb} must be at least 10 (Debian 12)")
    _check(s.ready_timeout > 0, f"--ready-timeout {s.ready_timeout} must be positive")
    _check(
        s.replicas is None or 1 <= s.replicas <= MAX_REPLICAS,
        f"--replicas {s.replicas} must be between 1 and {MAX_REPLICAS} (the appliance VMs of the regional"
        " group; leave it unset for the single VM)",
    )
    _check(
        s.replicas is None or len(s.instance) <= 63 - len("-0123456789"),
        f"--instance {s.instance!r} is too long for a group: its instance templates are named"
        " INSTANCE-DIGEST (10 hex digits) and must fit 63 chars",
    )
    _check(
        not s.lb_clients or s.group_mode,
        "--lb-client needs --replicas N: only a group has the internal load balancer it opens"
        " (a single VM is reached through the IAP tunnel alone)",
    )
    for client in s.lb_clients:
        problem = lb_client_problem(client)
        _check(problem is None, f"--lb-client {client} {problem}")
    validate_bucket(s.bucket)
    problem = loc.prefix_problem(s.prefix)
    _check(problem is None, f"--prefix {s.prefix!r} {problem}")
    return s


def validate_bucket(name: str) -> None:
    problem = loc.bucket_name_problem(name)
    _check(problem is None, f"bucket name {name!r} {problem} ({loc.BUCKET_RULE}; pass --bucket)")


def _coerce(field: str, value: Any, source: str) -> Any:
    if field in _LIST_FIELDS:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise PypapoError(f"{source}: {field} must be a list of strings, got {value!r}")
        # one order for the same ranges: the startup script (and so the template's name) must not change
        # because a flag moved
        return tuple(sorted({i.strip() for i in items if i.strip()}))
    if field in _INT_FIELDS:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise PypapoError(f"{source}: {field} must be a whole number, got {value!r}") from None
    if not isinstance(value, str):
        raise PypapoError(f"{source}: {field} must be a string, got {value!r}")
    return value.strip()


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a pypapo.toml: top-level keys (or a [pypapo] table) named like the flags."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PypapoError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PypapoError(f"{path} is not valid TOML: {exc}") from None
    if isinstance(data.get("pypapo"), dict):
        data = data["pypapo"]
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = key.replace("-", "_")
        if field not in FIELDS:
            raise PypapoError(f"{path}: unknown setting {key!r} (known: {', '.join(FIELDS)})")
        out[field] = _coerce(field, value, str(path))
    return out


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge flags > PYPAPO_* environment > pypapo.toml (`config`, PYPAPO_CONFIG or ./pypapo.toml)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    path = config or (Path(env["PYPAPO_CONFIG"]) if env.get("PYPAPO_CONFIG") else None)
    if path is None:
        candidate = (cwd or Path.cwd()) / CONFIG_FILE
        path = candidate if candidate.is_file() else None
    if path is not None:
        merged.update(read_config_file(path))
    for field in FIELDS:
        value = env.get(ENV_PREFIX + field.upper())
        if value not in (None, ""):
            merged[field] = _coerce(field, value, f"{ENV_PREFIX}{field.upper()}")
    for field, value in (flags or {}).items():
        if field in FIELDS and value not in (None, "", ()):
            merged[field] = _coerce(field, value, flag(field))
    return validate(Settings(project=merged.pop("project", ""), zone=merged.pop("zone", ""), **merged))


_OPTION_HELP = {
    "project": "Google Cloud project ID [PYPAPO_PROJECT]",
    "zone": "zone of the VM, e.g. us-central1-a [PYPAPO_ZONE]",
    "region": "region (default: the zone's) [PYPAPO_REGION]",
    "network": "VPC network (default: default) [PYPAPO_NETWORK]",
    "subnet": "subnetwork in the region (default: same name as the network) [PYPAPO_SUBNET]",
    "instance": "VM name (default: pypapo) [PYPAPO_INSTANCE]",
    "bucket": "bucket holding the index (default: PROJECT-pypapo) [PYPAPO_BUCKET]",
    "prefix": "object prefix inside the bucket (default: none) [PYPAPO_PREFIX]",
    "port": "port NGINX serves on (default: 3333) [PYPAPO_PORT]",
    "machine_type": "machine type (default: e2-small) [PYPAPO_MACHINE_TYPE]",
    "image_family": "boot image family (default: pypapo, else Debian 12) [PYPAPO_IMAGE_FAMILY]",
    "image_project": "project holding the image family (default: --project) [PYPAPO_IMAGE_PROJECT]",
    "service_account": "ID of the VM's own service account (default: pypapo-vm) [PYPAPO_SERVICE_ACCOUNT]",
    "disk_size_gb": "boot disk size in GB (default: 10) [PYPAPO_DISK_SIZE_GB]",
    "ready_timeout": "seconds to wait for the appliance to be ready (default: 600) [PYPAPO_READY_TIMEOUT]",
    "replicas": "run N replicas as a regional managed instance group behind an internal load balancer"
    " (default: the single VM) [PYPAPO_REPLICAS]",
    "lb_clients": "a private IPv4 range inside the VPC that may use the group's internal load balancer,"
    " with no IAM check (repeat; needs --replicas) [PYPAPO_LB_CLIENTS, comma-separated]",
}

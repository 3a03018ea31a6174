"""Which appliance(s) `provision verify` checks through IAP, read through the thin layer: the single VM,
or every instance of the group (`--replicas N`: their names are generated, so they are listed, never
typed). Each comes with its instance id (gcloud's SSH host alias `compute.ID`) and the host keys its
guest agent published, so SSH trusts exactly those keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.cloud import compute_v1

from provisioner.cloud import group
from provisioner.cloud import plan as planlib
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError


@dataclass(frozen=True)
class Appliance:
    zone: str
    name: str
    instance_id: str
    host_keys: dict[str, str]  # key type -> base64 blob, as published under `hostkeys/`


def _locations(compute: Any, s: Settings) -> list[tuple[str, str]]:
    if not s.group_mode:
        return [(s.zone, s.instance)]
    name = group.group_names(s).group
    instances = compute.list_managed_instances(s.region, name)
    if instances is None:
        raise PypapoError(
            f"group {name} does not exist in {s.region}; run `provision create --replicas N` first"
            " (or drop --replicas to verify a single VM)"
        )
    rows = [r for r in group.instance_rows(instances, {}) if r.action not in ("DELETING", "ABANDONING")]
    if not rows:
        raise PypapoError(f"group {name} has no instances; see `provision status --replicas {s.replicas}`")
    return [(r.zone, r.name) for r in rows]


def appliances(compute: Any, s: Settings) -> list[Appliance]:
    found = []
    for zone, name in _locations(compute, s):
        inst = compute.get_instance(zone, name)
        if inst is None:
            raise PypapoError(f"instance {name} does not exist in {zone}; run `provision create` first")
        request = compute_v1.GetGuestAttributesInstanceRequest(
            project=s.project, zone=zone, instance=name, query_path="hostkeys/"
        )
        published = planlib.guest_values(compute.get_guest_attributes(request), "hostkeys")
        found.append(Appliance(zone, name, str(inst.id), published))
    return found

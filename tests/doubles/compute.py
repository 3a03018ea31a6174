"""The one Compute Engine double (Compute Engine has no emulator), at the level of the API's clients.

`ComputeEngine` is one project's Compute Engine (plus the IAP tunnel policies of its instances, which live
and die with them). `engine.clients()` gives a `provisioner.cloud.gcp.base.Clients` whose compute_v1
clients are this double's, so pypapo's thin layer (`cloud/gcp/`), its error translation and its operation
waiting all run for real; only the wire is replaced.

Faithful where pypapo depends on it, and as strict as the API there:
- state is kept in real `compute_v1` objects, as the API returns them (server fields filled in: `id`,
  `self_link`, full-URL `zone`/`machine_type`/`network`/disk `source`, fingerprints, `status`); reads
  return copies, so a caller never edits the stored state by accident;
- a get or write of a missing resource raises `NotFound` (404), an insert of an existing name
  `Conflict` (409), a stale metadata/label fingerprint or IAM etag `PreconditionFailed` (412), a
  protected instance's delete and a running instance's stopped-only change `BadRequest` (400);
- every mutating call returns a finished `ExtendedOperation`, as compute_v1 does;
- an image family resolves to its newest READY image that is not deprecated; deleting an instance
  deletes its auto-delete disks and drops its IAM policy and its IAP tunnel policy.

Structure (add a collection in the same style):
- one `Collection` per resource kind on `ComputeEngine` (`instances`, `disks`, `firewalls`,
  `subnetworks`, `images`, `instance_policies`, `tunnel_policies`): a read-only mapping name -> stored
  object that remembers each object's scope (`zones/Z`, `regions/R`, `global`), so a request naming the
  wrong zone or region is a 404 as on the API; `find` (404), `add` (409), `remove` (404);
- one client class per compute_v1 client (`InstancesClient` ...), registered in `ComputeEngine.clients()`
  under its `Clients` name; each method takes the real request object (or its flattened fields, as
  GAPIC clients do), calls `self._begin(...)` (records the call, raises an injected failure), applies the
  request to the collections and returns the resource copy, a list, or `self.engine.operation(...)`.

Groups (the `--replicas N` mode): `instance_templates`, `health_checks`, `instance_group_managers`,
`backend_services`, `addresses`, `forwarding_rules` and the region's zones (`regions.get`, from
`REGION_ZONES`), with their clients. A resource another uses (a template of a group, a health check of
a group or backend service, a group behind a backend service, a backend service or address behind a
forwarding rule) cannot be deleted (400, "is already being used by"); a group's template, autohealing
check and zones must exist; a fixed `max_surge`/`max_unavailable` must be 0 or at least the number of
zones, and not both 0 (400). The group manager is simulated one step per `list_managed_instances`
(each poll is a moment later): an instance is created (CREATING), boots (VERIFYING) and turns HEALTHY
or not as `health(template, instance)` says (default: healthy). A PROACTIVE update creates instances on
the group's template up to `target_size + max_surge` and deletes an outdated one only while the
available instances (RUNNING, no action, HEALTHY) stay at `target_size - max_unavailable` without it;
an OPPORTUNISTIC group replaces nothing and returns to `target_size`, deleting instances not on its
template first. Its instances are real ones in `instances` (guest attributes, serial console:
`group_guest(template, name)` gives each new one its guest); `group_instances()`, `settle()`. Not
modelled: autohealing (a repaired instance), canary versions, autoscaling.

For tests: `calls` (every call as `Call(method, request, write)`, methods named `instances.insert`,
`firewalls.update`, ...), `writes()`, `call_names()`, `requests(method)`; `fail[method] = exception`
(raised on every call of that method until removed) or `[exception, ...]` (one per call, then the
calls succeed); `guest[instance]` (what the instance's guest agent has written, polled at each read:
`{key: value}` in the `pypapo` namespace, `"NS/KEY"` for another one; none: 404) and `new_guest(name)`
(the guest of an instance created later); `serial[instance]`; `add_image`, `add_appliance`, `instance(name)`.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import compute_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2

from provisioner.cloud.gcp.base import Clients, ComputeOperation

API = "https://www.googleapis.com/compute/v1/"
R = TypeVar("R")
Guest = Callable[[], dict[str, str]]
GUEST_NAMESPACE = "pypapo"
DEPRECATED_STATES = ("DEPRECATED", "OBSOLETE", "DELETED")


def full_url(path: str) -> str:
    """What the API returns for a resource path it was sent (`projects/...`, `zones/...`)."""
    return path if path.startswith("https://") else API + path


def short_path(url: str) -> str:
    return url.removeprefix(API)


@dataclass(frozen=True)
class Call:
    method: str  # "instances.insert": the compute_v1 client and its method
    request: Any  # a copy of the real request object, as sent
    write: bool


class Collection(Mapping[str, R], Generic[R]):
    """One resource kind of the project: name -> stored object, each in its scope."""

    def __init__(self, engine: ComputeEngine, kind: str) -> None:
        self.engine, self.kind = engine, kind
        self._items: dict[str, tuple[str, R]] = {}

    def path(self, scope: str, name: str) -> str:
        return f"projects/{self.engine.project}/{scope}/{self.kind}/{name}"

    def find(self, project: str, scope: str, name: str) -> R:
        """The stored object itself (callers mutate it); 404 when absent from that project and scope."""
        held = self._items.get(name)
        if project != self.engine.project or held is None or held[0] != scope:
            raise gexc.NotFound(f"The resource '{self._path(project, scope, name)}' was not found")
        return held[1]

    def add(self, scope: str, name: str, resource: R) -> R:
        if name in self._items:
            raise gexc.Conflict(f"The resource '{self.path(self._items[name][0], name)}' already exists")
        self._items[name] = (scope, resource)
        return resource

    def remove(self, project: str, scope: str, name: str) -> R:
        resource = self.find(project, scope, name)
        del self._items[name]
        return resource

    def put(self, scope: str, name: str, resource: R) -> R:
        """Create or replace (a PUT, or a policy that exists implicitly)."""
        self._items[name] = (scope, resource)
        return resource

    def discard(self, name: str) -> None:
        """Gone with its parent (a disk with its instance): no 404 when already gone."""
        self._items.pop(name, None)

    def scope_of(self, name: str) -> str:
        return self._items[name][0]

    def _path(self, project: str, scope: str, name: str) -> str:
        return f"projects/{project}/{scope}/{self.kind}/{name}"

    def __getitem__(self, name: str) -> R:
        return self._items[name][1]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Collection({self.kind}: {sorted(self._items)})"


def _copy(resource: R) -> R:
    return copy.deepcopy(resource)


def _zone(zone: str) -> str:
    return f"zones/{zone}"


class _Client:
    """A compute_v1 client of the double: `name` is its `Clients` name and the prefix of its calls."""

    name = ""

    def __init__(self, engine: ComputeEngine) -> None:
        self.engine = engine

    def _begin(self, method: str, kind: type, request: Any, fields: dict[str, Any], *, write: bool) -> Any:
        if request is None:
            request = kind(**fields)
        elif fields:
            raise ValueError("If the `request` argument is set, then none of the individual field arguments")
        return self.engine.record(f"{self.name}.{method}", request, write=write)


# ------------------------------------------------------------------------------------------ instances


class InstancesClient(_Client):
    name = "instances"

    def _find(self, request: Any, name: str | None = None) -> compute_v1.Instance:
        return self.engine.instances.find(request.project, _zone(request.zone), name or request.instance)

    def _stopped(self, inst: compute_v1.Instance, what: str) -> None:
        if inst.status != "TERMINATED":
            raise gexc.BadRequest(f"The instance must be stopped to change {what}.")

    def _done(self, kind: str, request: Any, name: str | None = None) -> Any:
        path = self.engine.instances.path(_zone(request.zone), name or request.instance)
        return self.engine.operation(kind, path, zone=request.zone)

    # reads

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Instance:
        request = self._begin("get", compute_v1.GetInstanceRequest, request, fields, write=False)
        return _copy(self._find(request))

    def get_guest_attributes(self, request: Any = None, **fields: Any) -> compute_v1.GuestAttributes:
        request = self._begin(
            "get_guest_attributes", compute_v1.GetGuestAttributesInstanceRequest, request, fields, write=False
        )
        self._find(request)
        namespace = request.query_path.rstrip("/")
        writer = self.engine.guest.get(request.instance)
        items = []
        for key, value in (writer() if writer else {}).items():
            ns, _, k = key.rpartition("/")
            entry = compute_v1.GuestAttributesEntry(namespace=ns or GUEST_NAMESPACE, key=k, value=value)
            if not namespace or entry.namespace == namespace:
                items.append(entry)
        if not items:  # the API answers 404 until the guest writes under the queried path
            raise gexc.NotFound(f"The resource 'guestAttributes/{request.query_path}' was not found")
        return compute_v1.GuestAttributes(
            query_path=request.query_path, query_value=compute_v1.GuestAttributesValue(items=items)
        )

    def get_serial_port_output(self, request: Any = None, **fields: Any) -> compute_v1.SerialPortOutput:
        request = self._begin(
            "get_serial_port_output",
            compute_v1.GetSerialPortOutputInstanceRequest,
            request,
            fields,
            write=False,
        )
        self._find(request)
        return compute_v1.SerialPortOutput(contents=self.engine.serial.get(request.instance, ""))

    def get_iam_policy(self, request: Any = None, **fields: Any) -> compute_v1.Policy:
        request = self._begin(
            "get_iam_policy", compute_v1.GetIamPolicyInstanceRequest, request, fields, write=False
        )
        self._find(request, request.resource)
        return _copy(self.engine.instance_policy(request.resource))

    # writes

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertInstanceRequest, request, fields, write=True)
        engine, zone = self.engine, _zone(request.zone)
        if request.project != engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        inst = _copy(request.instance_resource)
        if inst.name in engine.instances:
            raise gexc.Conflict(f"The resource '{engine.instances.path(zone, inst.name)}' already exists")
        boot = next(d for d in inst.disks if d.boot)
        disk_name = boot.initialize_params.disk_name or inst.name
        image = engine.resolve_image(boot.initialize_params.source_image)
        disk = compute_v1.Disk(
            name=disk_name,
            zone=full_url(f"projects/{engine.project}/{zone}"),
            source_image=image.self_link,
            self_link=full_url(engine.disks.path(zone, disk_name)),
            users=[full_url(engine.instances.path(zone, inst.name))],
        )
        engine.disks.add(zone, disk_name, disk)  # 409 for a disk of that name left behind
        inst.id = next(engine.ids)
        inst.status = "RUNNING"
        inst.zone = full_url(f"projects/{engine.project}/{zone}")
        inst.self_link = full_url(engine.instances.path(zone, inst.name))
        inst.machine_type = full_url(f"projects/{engine.project}/{short_path(inst.machine_type)}")
        inst.metadata.fingerprint = engine.fingerprint()
        inst.label_fingerprint = engine.fingerprint()
        boot.source = disk.self_link
        for i, nic in enumerate(inst.network_interfaces):
            nic.name = f"nic{i}"
            nic.network_i_p = f"10.128.0.{next(engine.ids) % 250 + 2}"
            nic.network = full_url(nic.network or f"projects/{engine.project}/global/networks/default")
            nic.subnetwork = full_url(nic.subnetwork) if nic.subnetwork else ""
        engine.instances.add(zone, inst.name, inst)
        if inst.name not in engine.guest and (writer := engine.new_guest(inst.name)) is not None:
            engine.guest[inst.name] = writer
        return self._done("insert", request, inst.name)

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteInstanceRequest, request, fields, write=True)
        inst = self._find(request)
        if inst.deletion_protection:
            raise gexc.BadRequest(
                "Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'"
            )
        self.engine.instances.remove(request.project, _zone(request.zone), request.instance)
        for d in inst.disks:
            if d.auto_delete:
                self.engine.disks.discard(d.source.rsplit("/", 1)[-1])
        # the per-instance policies go with the instance
        self.engine.instance_policies.discard(request.instance)
        tunnel = f"projects/{request.project}/iap_tunnel/zones/{request.zone}/instances/{request.instance}"
        self.engine.tunnel_policies.discard(tunnel)
        return self._done("delete", request)

    def set_deletion_protection(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "set_deletion_protection",
            compute_v1.SetDeletionProtectionInstanceRequest,
            request,
            fields,
            write=True,
        )
        self._find(request, request.resource).deletion_protection = request.deletion_protection
        return self._done("setDeletionProtection", request, request.resource)

    def set_metadata(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "set_metadata", compute_v1.SetMetadataInstanceRequest, request, fields, write=True
        )
        inst = self._find(request)
        if request.metadata_resource.fingerprint != inst.metadata.fingerprint:
            raise gexc.PreconditionFailed("Supplied fingerprint does not match current metadata fingerprint.")
        inst.metadata = compute_v1.Metadata(
            items=list(request.metadata_resource.items), fingerprint=self.engine.fingerprint()
        )
        return self._done("setMetadata", request)

    def set_labels(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("set_labels", compute_v1.SetLabelsInstanceRequest, request, fields, write=True)
        inst = self._find(request)
        body = request.instances_set_labels_request_resource
        if body.label_fingerprint != inst.label_fingerprint:
            raise gexc.PreconditionFailed("Labels fingerprint either invalid or resource labels have changed")
        inst.labels = dict(body.labels)
        inst.label_fingerprint = self.engine.fingerprint()
        return self._done("setLabels", request)

    def delete_access_config(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "delete_access_config", compute_v1.DeleteAccessConfigInstanceRequest, request, fields, write=True
        )
        nics = [n for n in self._find(request).network_interfaces if n.name == request.network_interface]
        if not nics or not any(a.name == request.access_config for a in nics[0].access_configs):
            raise gexc.BadRequest(f"Invalid value for field 'accessConfig': '{request.access_config}'.")
        nics[0].access_configs = [a for a in nics[0].access_configs if a.name != request.access_config]
        return self._done("deleteAccessConfig", request)

    def update_shielded_instance_config(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "update_shielded_instance_config",
            compute_v1.UpdateShieldedInstanceConfigInstanceRequest,
            request,
            fields,
            write=True,
        )
        inst = self._find(request)
        self._stopped(inst, "Shielded VM options")
        inst.shielded_instance_config = request.shielded_instance_config_resource
        return self._done("updateShieldedInstanceConfig", request)

    def set_service_account(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "set_service_account", compute_v1.SetServiceAccountInstanceRequest, request, fields, write=True
        )
        inst = self._find(request)
        self._stopped(inst, "the service account")
        body = request.instances_set_service_account_request_resource
        inst.service_accounts = [compute_v1.ServiceAccount(email=body.email, scopes=list(body.scopes))]
        return self._done("setServiceAccount", request)

    def set_machine_type(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "set_machine_type", compute_v1.SetMachineTypeInstanceRequest, request, fields, write=True
        )
        inst = self._find(request)
        self._stopped(inst, "the machine type")
        machine_type = request.instances_set_machine_type_request_resource.machine_type
        inst.machine_type = full_url(f"projects/{self.engine.project}/{short_path(machine_type)}")
        return self._done("setMachineType", request)

    def stop(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("stop", compute_v1.StopInstanceRequest, request, fields, write=True)
        self._find(request).status = "TERMINATED"
        return self._done("stop", request)

    def start(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("start", compute_v1.StartInstanceRequest, request, fields, write=True)
        self._find(request).status = "RUNNING"
        return self._done("start", request)

    def set_iam_policy(self, request: Any = None, **fields: Any) -> compute_v1.Policy:
        request = self._begin(
            "set_iam_policy", compute_v1.SetIamPolicyInstanceRequest, request, fields, write=True
        )
        self._find(request, request.resource)
        new = _copy(request.zone_set_policy_request_resource.policy)
        current = self.engine.instance_policy(request.resource)
        if new.etag and new.etag != current.etag:
            raise gexc.PreconditionFailed("Precondition check failed: the policy's etag changed.")
        new.etag = self.engine.fingerprint()
        self.engine.instance_policies.put(_zone(request.zone), request.resource, new)
        return _copy(new)


# ----------------------------------------------------------------------------------- disks and images


class DisksClient(_Client):
    name = "disks"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Disk:
        request = self._begin("get", compute_v1.GetDiskRequest, request, fields, write=False)
        return _copy(self.engine.disks.find(request.project, _zone(request.zone), request.disk))

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteDiskRequest, request, fields, write=True)
        engine, zone = self.engine, _zone(request.zone)
        engine.disks.find(request.project, zone, request.disk)
        if any(
            d.source.endswith(f"/disks/{request.disk}") for i in engine.instances.values() for d in i.disks
        ):
            raise gexc.BadRequest(
                f"The disk resource '{engine.disks.path(zone, request.disk)}' is already being used"
            )
        engine.disks.remove(request.project, zone, request.disk)
        return engine.operation("delete", engine.disks.path(zone, request.disk), zone=request.zone)


class ImagesClient(_Client):
    name = "images"

    def get_from_family(self, request: Any = None, **fields: Any) -> compute_v1.Image:
        request = self._begin(
            "get_from_family", compute_v1.GetFromFamilyImageRequest, request, fields, write=False
        )
        return _copy(
            self.engine.resolve_image(f"projects/{request.project}/global/images/family/{request.family}")
        )

    def list(self, request: Any = None, **fields: Any) -> list[compute_v1.Image]:
        request = self._begin("list", compute_v1.ListImagesRequest, request, fields, write=False)
        if request.project != self.engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        wanted = _equality_filter(request.filter)
        return [
            _copy(i)
            for i in self.engine.images.values()
            if all(str(getattr(i, k)) == v for k, v in wanted.items())
        ]

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertImageRequest, request, fields, write=True)
        engine = self.engine
        if request.project != engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        image = _copy(request.image_resource)
        source = short_path(image.source_disk).split("/")  # projects/P/zones/Z/disks/D
        engine.disks.find(source[1], f"zones/{source[3]}", source[5])
        if image.name in engine.images:
            raise gexc.Conflict(f"The resource '{engine.images.path('global', image.name)}' already exists")
        image.id = next(engine.ids)
        image.status = "READY"
        engine.clock += dt.timedelta(days=7)
        image.creation_timestamp = engine.clock.isoformat(timespec="milliseconds")
        image.self_link = full_url(engine.images.path("global", image.name))
        engine.images.add("global", image.name, image)
        return engine.operation("insert", engine.images.path("global", image.name))

    def deprecate(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("deprecate", compute_v1.DeprecateImageRequest, request, fields, write=True)
        image = self.engine.images.find(request.project, "global", request.image)
        status = request.deprecation_status_resource
        if status.state == "ACTIVE":
            del image.deprecated
        else:
            image.deprecated = _copy(status)
        return self.engine.operation("deprecate", self.engine.images.path("global", request.image))


def _equality_filter(text: str) -> dict[str, str]:
    """The one filter form pypapo sends (`family = "NAME"`); anything else is refused, not ignored."""
    if not text:
        return {}
    key, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not key.isidentifier() or not (value.startswith('"') and value.endswith('"')):
        raise gexc.BadRequest(
            f"Invalid value for field 'filter': '{text}'. The double knows `KEY = \"VALUE\"`."
        )
    return {key: value[1:-1]}


# ---------------------------------------------------------------------------------- network resources


class FirewallsClient(_Client):
    name = "firewalls"

    def _stored(self, resource: compute_v1.Firewall, name: str) -> compute_v1.Firewall:
        fw = _copy(resource)
        fw.name = name
        fw.network = full_url(fw.network or f"projects/{self.engine.project}/global/networks/default")
        fw.self_link = full_url(self.engine.firewalls.path("global", name))
        fw.id = next(self.engine.ids)
        return fw

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Firewall:
        request = self._begin("get", compute_v1.GetFirewallRequest, request, fields, write=False)
        return _copy(self.engine.firewalls.find(request.project, "global", request.firewall))

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertFirewallRequest, request, fields, write=True)
        if request.project != self.engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        name = request.firewall_resource.name
        self.engine.firewalls.add("global", name, self._stored(request.firewall_resource, name))
        return self.engine.operation("insert", self.engine.firewalls.path("global", name))

    def update(self, request: Any = None, **fields: Any) -> Any:
        """PUT: the rule is replaced by the one sent."""
        request = self._begin("update", compute_v1.UpdateFirewallRequest, request, fields, write=True)
        self.engine.firewalls.find(request.project, "global", request.firewall)
        stored = self._stored(request.firewall_resource, request.firewall)
        self.engine.firewalls.put("global", request.firewall, stored)
        return self.engine.operation("update", self.engine.firewalls.path("global", request.firewall))

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteFirewallRequest, request, fields, write=True)
        self.engine.firewalls.remove(request.project, "global", request.firewall)
        return self.engine.operation("delete", self.engine.firewalls.path("global", request.firewall))


class SubnetworksClient(_Client):
    name = "subnetworks"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Subnetwork:
        request = self._begin("get", compute_v1.GetSubnetworkRequest, request, fields, write=False)
        return _copy(
            self.engine.subnetworks.find(request.project, f"regions/{request.region}", request.subnetwork)
        )

    def set_private_ip_google_access(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "set_private_ip_google_access",
            compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest,
            request,
            fields,
            write=True,
        )
        scope = f"regions/{request.region}"
        sub = self.engine.subnetworks.find(request.project, scope, request.subnetwork)
        body = request.subnetworks_set_private_ip_google_access_request_resource
        sub.private_ip_google_access = body.private_ip_google_access
        return self.engine.operation(
            "setPrivateIpGoogleAccess",
            self.engine.subnetworks.path(scope, request.subnetwork),
            region=request.region,
        )


# -------------------------------------------------------------- IAP: the tunnel policies of instances


class IapClient(_Client):
    """`iap_v1.IdentityAwareProxyAdminServiceClient`'s policy calls on `projects/P/iap_tunnel/zones/Z/
    instances/NAME`: the resource exists while the instance does."""

    name = "iap"

    def _instance(self, resource: str) -> None:
        parts = resource.split("/")  # projects/P/iap_tunnel/zones/Z/instances/NAME
        if len(parts) != 7 or parts[2] != "iap_tunnel":
            raise gexc.BadRequest(f"Invalid resource name {resource!r}")
        try:
            self.engine.instances.find(parts[1], f"zones/{parts[4]}", parts[6])
        except gexc.NotFound:
            raise gexc.NotFound(f"Resource {resource} not found") from None

    def get_iam_policy(self, request: Any = None, **fields: Any) -> policy_pb2.Policy:
        request = self._begin(
            "get_iam_policy", iam_policy_pb2.GetIamPolicyRequest, request, fields, write=False
        )
        self._instance(request.resource)
        policy = policy_pb2.Policy()
        policy.CopyFrom(self.engine.tunnel_policy(request.resource))
        return policy

    def set_iam_policy(self, request: Any = None, **fields: Any) -> policy_pb2.Policy:
        request = self._begin(
            "set_iam_policy", iam_policy_pb2.SetIamPolicyRequest, request, fields, write=True
        )
        self._instance(request.resource)
        if request.policy.etag and request.policy.etag != self.engine.tunnel_policy(request.resource).etag:
            raise gexc.Aborted(
                "There were concurrent policy changes. Please retry the whole read-modify-write"
            )
        stored = policy_pb2.Policy()
        stored.CopyFrom(request.policy)
        stored.etag = self.engine.fingerprint().encode()
        self.engine.tunnel_policies.put("global", request.resource, stored)
        result = policy_pb2.Policy()
        result.CopyFrom(stored)
        return result


# ----------------------------------------------- the group mode: templates, checks, groups, balancer


# The zones the double's regions have (what `regions.get` lists); any other region gets -a, -b, -c.
REGION_ZONES = {
    "us-central1": ("a", "b", "c", "f"),
    "europe-west1": ("b", "c", "d"),
    "us-east1": ("b", "c", "d"),
}


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _in_use(kind: str, path: str, by: str) -> gexc.BadRequest:
    return gexc.BadRequest(f"The {kind} resource '{path}' is already being used by '{by}'")


@dataclass
class Member:
    """One instance of a group, as the group manager tracks it."""

    name: str
    zone: str
    template: str  # template name
    age: int = 0  # polls since it was created
    action: str = "CREATING"
    deleting: bool = False


# ------------------------------------------------------------------------------------------- clients


class RegionsClient(_Client):
    name = "regions"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Region:
        request = self._begin("get", compute_v1.GetRegionRequest, request, fields, write=False)
        engine = self.engine
        zones = engine.zones_of(request.region)
        if request.project != engine.project or not zones:
            raise gexc.NotFound(
                f"The resource 'projects/{request.project}/regions/{request.region}' was not found"
            )
        return compute_v1.Region(
            name=request.region,
            status="UP",
            zones=[full_url(f"projects/{engine.project}/zones/{z}") for z in zones],
        )


class InstanceTemplatesClient(_Client):
    name = "instance_templates"

    def list(self, request: Any = None, **fields: Any) -> list[compute_v1.InstanceTemplate]:
        request = self._begin("list", compute_v1.ListInstanceTemplatesRequest, request, fields, write=False)
        if request.project != self.engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        return [copy.deepcopy(t) for t in self.engine.instance_templates.values()]

    def get(self, request: Any = None, **fields: Any) -> compute_v1.InstanceTemplate:
        request = self._begin("get", compute_v1.GetInstanceTemplateRequest, request, fields, write=False)
        return copy.deepcopy(
            self.engine.instance_templates.find(request.project, "global", request.instance_template)
        )

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertInstanceTemplateRequest, request, fields, write=True)
        engine = self.engine
        if request.project != engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        template = copy.deepcopy(request.instance_template_resource)
        boot = next((d for d in template.properties.disks if d.boot), None)
        if boot is None:
            raise gexc.BadRequest("Invalid value for field 'resource.properties.disks': no boot disk.")
        engine.resolve_image(boot.initialize_params.source_image)  # 404 for an image that does not exist
        template.id = next(engine.ids)
        engine.tick_clock()
        template.creation_timestamp = engine.clock.isoformat(timespec="milliseconds")
        template.self_link = full_url(engine.instance_templates.path("global", template.name))
        engine.instance_templates.add("global", template.name, template)
        return engine.operation("insert", engine.instance_templates.path("global", template.name))

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteInstanceTemplateRequest, request, fields, write=True)
        engine = self.engine
        path = engine.instance_templates.path("global", request.instance_template)
        engine.instance_templates.find(request.project, "global", request.instance_template)
        for mig in engine.instance_group_managers.values():
            used = {_last(v.instance_template) for v in mig.versions} | {_last(mig.instance_template)}
            if request.instance_template in used:
                raise _in_use("instance_template", path, short_path(mig.self_link))
        engine.instance_templates.remove(request.project, "global", request.instance_template)
        return engine.operation("delete", path)


class HealthChecksClient(_Client):
    name = "health_checks"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.HealthCheck:
        request = self._begin("get", compute_v1.GetHealthCheckRequest, request, fields, write=False)
        return copy.deepcopy(self.engine.health_checks.find(request.project, "global", request.health_check))

    def _stored(self, check: compute_v1.HealthCheck, name: str) -> compute_v1.HealthCheck:
        stored = copy.deepcopy(check)
        stored.name = name
        stored.id = next(self.engine.ids)
        stored.self_link = full_url(self.engine.health_checks.path("global", name))
        return stored

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertHealthCheckRequest, request, fields, write=True)
        if request.project != self.engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        name = request.health_check_resource.name
        self.engine.health_checks.add("global", name, self._stored(request.health_check_resource, name))
        return self.engine.operation("insert", self.engine.health_checks.path("global", name))

    def update(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("update", compute_v1.UpdateHealthCheckRequest, request, fields, write=True)
        self.engine.health_checks.find(request.project, "global", request.health_check)
        stored = self._stored(request.health_check_resource, request.health_check)
        self.engine.health_checks.put("global", request.health_check, stored)
        return self.engine.operation("update", self.engine.health_checks.path("global", request.health_check))

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteHealthCheckRequest, request, fields, write=True)
        engine = self.engine
        path = engine.health_checks.path("global", request.health_check)
        engine.health_checks.find(request.project, "global", request.health_check)
        for mig in engine.instance_group_managers.values():
            if any(_last(p.health_check) == request.health_check for p in mig.auto_healing_policies):
                raise _in_use("healthCheck", path, short_path(mig.self_link))
        for service in engine.backend_services.values():
            if any(_last(h) == request.health_check for h in service.health_checks):
                raise _in_use("healthCheck", path, short_path(service.self_link))
        engine.health_checks.remove(request.project, "global", request.health_check)
        return engine.operation("delete", path)


class RegionInstanceGroupManagersClient(_Client):
    name = "region_instance_group_managers"

    def _scope(self, request: Any) -> str:
        return f"regions/{request.region}"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.InstanceGroupManager:
        request = self._begin(
            "get", compute_v1.GetRegionInstanceGroupManagerRequest, request, fields, write=False
        )
        engine = self.engine
        mig = engine.instance_group_managers.find(
            request.project, self._scope(request), request.instance_group_manager
        )
        return engine.read_back(mig)

    def list_managed_instances(self, request: Any = None, **fields: Any) -> list[compute_v1.ManagedInstance]:
        request = self._begin(
            "list_managed_instances",
            compute_v1.ListManagedInstancesRegionInstanceGroupManagersRequest,
            request,
            fields,
            write=False,
        )
        engine = self.engine
        engine.instance_group_managers.find(
            request.project, self._scope(request), request.instance_group_manager
        )
        engine.step(request.instance_group_manager)  # each poll is a moment later
        return engine.managed_instances(request.instance_group_manager)

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "insert", compute_v1.InsertRegionInstanceGroupManagerRequest, request, fields, write=True
        )
        engine = self.engine
        if request.project != engine.project:
            raise gexc.NotFound(f"The resource 'projects/{request.project}' was not found")
        mig = copy.deepcopy(request.instance_group_manager_resource)
        scope = self._scope(request)
        if mig.name in engine.instance_group_managers:
            raise gexc.Conflict(
                f"The resource '{engine.instance_group_managers.path(scope, mig.name)}' already exists"
            )
        region_zones = engine.zones_of(request.region)
        zones = [_last(z.zone) for z in mig.distribution_policy.zones] or list(region_zones[:3])
        for z in zones:
            if z not in region_zones:
                raise gexc.BadRequest(
                    f"Invalid value for field 'resource.distributionPolicy.zones': 'zones/{z}'."
                    f" Zone must be in region {request.region}."
                )
        mig.distribution_policy.zones = [
            compute_v1.DistributionPolicyZoneConfiguration(
                zone=full_url(f"projects/{engine.project}/zones/{z}")
            )
            for z in zones
        ]
        engine.check_versions(mig)
        engine.check_update_policy(mig.update_policy, len(zones))
        for policy in mig.auto_healing_policies:
            engine.health_checks.find(engine.project, "global", _last(policy.health_check))
        mig.id = next(engine.ids)
        mig.region = full_url(f"projects/{engine.project}/{scope}")
        mig.self_link = full_url(engine.instance_group_managers.path(scope, mig.name))
        mig.instance_group = full_url(f"projects/{engine.project}/{scope}/instanceGroups/{mig.name}")
        if not mig.update_policy.type_:
            mig.update_policy.type_ = "OPPORTUNISTIC"
        engine.instance_group_managers.add(scope, mig.name, mig)
        engine.members[mig.name] = []
        engine.step(mig.name, age=False)  # the group starts creating its instances at once
        return engine.operation(
            "insert", engine.instance_group_managers.path(scope, mig.name), region=request.region
        )

    def patch(self, request: Any = None, **fields: Any) -> Any:
        """A JSON merge patch: fields sent replace the stored ones (lists whole, messages field by field)."""
        request = self._begin(
            "patch", compute_v1.PatchRegionInstanceGroupManagerRequest, request, fields, write=True
        )
        engine = self.engine
        scope = self._scope(request)
        mig = engine.instance_group_managers.find(request.project, scope, request.instance_group_manager)
        body = request.instance_group_manager_resource
        updated = copy.deepcopy(mig)
        if body.versions:
            updated.versions = list(body.versions)
        if body.instance_template:
            updated.instance_template = body.instance_template
        if "update_policy" in body:
            merged = compute_v1.InstanceGroupManagerUpdatePolicy.pb(updated.update_policy)
            merged.MergeFrom(compute_v1.InstanceGroupManagerUpdatePolicy.pb(body.update_policy))
        engine.check_versions(updated)
        engine.check_update_policy(updated.update_policy, len(updated.distribution_policy.zones))
        engine.instance_group_managers.put(scope, mig.name, updated)
        return engine.operation(
            "patch", engine.instance_group_managers.path(scope, mig.name), region=request.region
        )

    def resize(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "resize", compute_v1.ResizeRegionInstanceGroupManagerRequest, request, fields, write=True
        )
        engine = self.engine
        scope = self._scope(request)
        mig = engine.instance_group_managers.find(request.project, scope, request.instance_group_manager)
        if request.size < 0:
            raise gexc.BadRequest("Invalid value for field 'size': must be non-negative.")
        mig.target_size = request.size
        return engine.operation(
            "resize", engine.instance_group_managers.path(scope, mig.name), region=request.region
        )

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "delete", compute_v1.DeleteRegionInstanceGroupManagerRequest, request, fields, write=True
        )
        engine = self.engine
        scope = self._scope(request)
        mig = engine.instance_group_managers.find(request.project, scope, request.instance_group_manager)
        for service in engine.backend_services.values():
            if any(_last(b.group) == mig.name for b in service.backends):
                raise _in_use("instanceGroup", short_path(mig.instance_group), short_path(service.self_link))
        for member in engine.members.pop(mig.name, []):
            engine.instances.discard(member.name)
            engine.disks.discard(member.name)
        engine.instance_group_managers.remove(request.project, scope, mig.name)
        return engine.operation(
            "delete", engine.instance_group_managers.path(scope, mig.name), region=request.region
        )


class RegionBackendServicesClient(_Client):
    name = "region_backend_services"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.BackendService:
        request = self._begin("get", compute_v1.GetRegionBackendServiceRequest, request, fields, write=False)
        return copy.deepcopy(
            self.engine.backend_services.find(
                request.project, f"regions/{request.region}", request.backend_service
            )
        )

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "insert", compute_v1.InsertRegionBackendServiceRequest, request, fields, write=True
        )
        engine = self.engine
        scope = f"regions/{request.region}"
        service = copy.deepcopy(request.backend_service_resource)
        for check in service.health_checks:
            engine.health_checks.find(engine.project, "global", _last(check))
        for backend in service.backends:
            group = _last(backend.group)
            if group not in engine.instance_group_managers:
                raise gexc.NotFound(f"The resource '{short_path(backend.group)}' was not found")
        service.id = next(engine.ids)
        service.self_link = full_url(engine.backend_services.path(scope, service.name))
        engine.backend_services.add(scope, service.name, service)
        return engine.operation(
            "insert", engine.backend_services.path(scope, service.name), region=request.region
        )

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "delete", compute_v1.DeleteRegionBackendServiceRequest, request, fields, write=True
        )
        engine = self.engine
        scope = f"regions/{request.region}"
        service = engine.backend_services.find(request.project, scope, request.backend_service)
        for rule in engine.forwarding_rules.values():
            if _last(rule.backend_service) == service.name:
                raise _in_use("backendService", short_path(service.self_link), short_path(rule.self_link))
        engine.backend_services.remove(request.project, scope, request.backend_service)
        return engine.operation(
            "delete", engine.backend_services.path(scope, service.name), region=request.region
        )


class AddressesClient(_Client):
    name = "addresses"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.Address:
        request = self._begin("get", compute_v1.GetAddressRequest, request, fields, write=False)
        return copy.deepcopy(
            self.engine.addresses.find(request.project, f"regions/{request.region}", request.address)
        )

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertAddressRequest, request, fields, write=True)
        engine = self.engine
        scope = f"regions/{request.region}"
        address = copy.deepcopy(request.address_resource)
        if address.address_type == "INTERNAL":
            engine.subnetworks.find(engine.project, scope, _last(address.subnetwork))
        address.address = address.address or f"10.128.0.{200 + len(engine.addresses)}"
        address.status = "RESERVED"
        address.id = next(engine.ids)
        address.self_link = full_url(engine.addresses.path(scope, address.name))
        engine.addresses.add(scope, address.name, address)
        return engine.operation("insert", engine.addresses.path(scope, address.name), region=request.region)

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteAddressRequest, request, fields, write=True)
        engine = self.engine
        scope = f"regions/{request.region}"
        address = engine.addresses.find(request.project, scope, request.address)
        for rule in engine.forwarding_rules.values():
            if _last(rule.I_p_address) == address.name or rule.I_p_address == address.address:
                raise _in_use("address", short_path(address.self_link), short_path(rule.self_link))
        engine.addresses.remove(request.project, scope, request.address)
        return engine.operation("delete", engine.addresses.path(scope, address.name), region=request.region)


class ForwardingRulesClient(_Client):
    name = "forwarding_rules"

    def get(self, request: Any = None, **fields: Any) -> compute_v1.ForwardingRule:
        request = self._begin("get", compute_v1.GetForwardingRuleRequest, request, fields, write=False)
        return copy.deepcopy(
            self.engine.forwarding_rules.find(
                request.project, f"regions/{request.region}", request.forwarding_rule
            )
        )

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("insert", compute_v1.InsertForwardingRuleRequest, request, fields, write=True)
        engine = self.engine
        scope = f"regions/{request.region}"
        rule = copy.deepcopy(request.forwarding_rule_resource)
        engine.backend_services.find(engine.project, scope, _last(rule.backend_service))
        if rule.I_p_address and not rule.I_p_address[0].isdigit():
            address = engine.addresses.find(engine.project, scope, _last(rule.I_p_address))
            address.status = "IN_USE"
        rule.id = next(engine.ids)
        rule.self_link = full_url(engine.forwarding_rules.path(scope, rule.name))
        engine.forwarding_rules.add(scope, rule.name, rule)
        return engine.operation(
            "insert", engine.forwarding_rules.path(scope, rule.name), region=request.region
        )

    def delete(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin("delete", compute_v1.DeleteForwardingRuleRequest, request, fields, write=True)
        engine = self.engine
        scope = f"regions/{request.region}"
        rule = engine.forwarding_rules.remove(request.project, scope, request.forwarding_rule)
        if rule.I_p_address and _last(rule.I_p_address) in engine.addresses:
            engine.addresses[_last(rule.I_p_address)].status = "RESERVED"
        return engine.operation(
            "delete", engine.forwarding_rules.path(scope, rule.name), region=request.region
        )


GROUP_CLIENTS = (
    RegionsClient,
    InstanceTemplatesClient,
    HealthChecksClient,
    RegionInstanceGroupManagersClient,
    RegionBackendServicesClient,
    AddressesClient,
    ForwardingRulesClient,
)


# ------------------------------------------------------------------------------------------ the engine


class ComputeEngine:
    """One project's Compute Engine: the collections, the calls, and what tests inject."""

    def __init__(
        self,
        project: str = "proj-123456",
        zone: str = "europe-west1-b",
        *,
        log: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.project, self.zone = project, zone
        self.region = zone.rsplit("-", 1)[0]
        self.log = log  # when given, every write is appended as (method, request), beside other doubles'
        self.instances: Collection[compute_v1.Instance] = Collection(self, "instances")
        self.disks: Collection[compute_v1.Disk] = Collection(self, "disks")
        self.images: Collection[compute_v1.Image] = Collection(self, "images")
        self.firewalls: Collection[compute_v1.Firewall] = Collection(self, "firewalls")
        self.subnetworks: Collection[compute_v1.Subnetwork] = Collection(self, "subnetworks")
        self.instance_policies: Collection[compute_v1.Policy] = Collection(self, "policies")
        self.tunnel_policies: Collection[policy_pb2.Policy] = Collection(self, "iap_tunnel")
        # public images other projects publish: (project, family) -> the image the family resolves to
        self.public_families: dict[tuple[str, str], compute_v1.Image] = {
            ("debian-cloud", "debian-12"): compute_v1.Image(
                name="debian-12-bookworm-v20261118",
                family="debian-12",
                status="READY",
                self_link=full_url("projects/debian-cloud/global/images/debian-12-bookworm-v20261118"),
            )
        }
        # the auto-mode network's subnet in this region
        self.subnetworks.add(
            f"regions/{self.region}",
            "default",
            compute_v1.Subnetwork(
                name="default",
                region=full_url(f"projects/{project}/regions/{self.region}"),
                network=full_url(f"projects/{project}/global/networks/default"),
                ip_cidr_range="10.128.0.0/20",
                private_ip_google_access=False,
            ),
        )
        self.calls: list[Call] = []
        self.fail: dict[str, BaseException | list[BaseException]] = {}
        self.guest: dict[str, Guest] = {}
        self.new_guest: Callable[[str], Guest | None] = lambda _name: None
        self.serial: dict[str, str] = {}
        self.ids = itertools.count(1_000_001)
        self.clock = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
        # the group mode (see "Groups" in the module docstring)
        self.instance_templates: Collection[compute_v1.InstanceTemplate] = Collection(
            self, "instanceTemplates"
        )
        self.health_checks: Collection[compute_v1.HealthCheck] = Collection(self, "healthChecks")
        self.instance_group_managers: Collection[compute_v1.InstanceGroupManager] = Collection(
            self, "instanceGroupManagers"
        )
        self.backend_services: Collection[compute_v1.BackendService] = Collection(self, "backendServices")
        self.addresses: Collection[compute_v1.Address] = Collection(self, "addresses")
        self.forwarding_rules: Collection[compute_v1.ForwardingRule] = Collection(self, "forwardingRules")
        self.members: dict[str, list[Member]] = {}
        self.names = iter(f"{i:04x}" for i in range(0x1A2B, 0xFFFF, 0x11))
        # What each new instance's /healthz answers the group's health check: HEALTHY or UNHEALTHY.
        self.health: Callable[[str, str], str] = lambda _template, _name: "HEALTHY"
        self.group_guest: Callable[[str, str], Guest | None] = lambda _template, _name: None
        self.boot_polls = 1  # polls an instance spends CREATING, then VERIFYING before its first check

    def clients(self, **others: Any) -> Clients:
        """`Clients` for the thin layer: this double's compute_v1 clients (and any `others` given)."""
        own = (
            InstancesClient,
            DisksClient,
            ImagesClient,
            FirewallsClient,
            SubnetworksClient,
            IapClient,
            *GROUP_CLIENTS,
        )
        return Clients(self.project, overrides={**{c.name: c(self) for c in own}, **others})

    # -- what every call does

    def record(self, method: str, request: Any, *, write: bool) -> Any:
        sent = copy.deepcopy(request)
        self.calls.append(Call(method, sent, write))
        if write and self.log is not None:
            self.log.append((method, sent))
        failure = self.fail.get(method)
        if isinstance(failure, list):  # one failure per call, in order, then the call succeeds
            if not failure:
                del self.fail[method]
                return request
            raise failure.pop(0)
        if failure is not None:
            raise failure
        return request

    def operation(self, kind: str, target: str, *, zone: str = "", region: str = "") -> Any:
        op = compute_v1.Operation(
            name=f"operation-{next(self.ids)}",
            operation_type=kind,
            status=compute_v1.Operation.Status.DONE,
            progress=100,
            target_link=full_url(target),
            zone=full_url(f"projects/{self.project}/zones/{zone}") if zone else "",
            region=full_url(f"projects/{self.project}/regions/{region}") if region else "",
        )
        return ComputeOperation.make(lambda: op, op)

    def fingerprint(self) -> str:
        return f"fp-{next(self.ids)}"

    def resolve_image(self, source: str) -> compute_v1.Image:
        """An instance's boot image: `projects/P/global/images/NAME` or `.../images/family/F` (newest
        READY image of the family that is not deprecated); 404 when there is none."""
        parts = short_path(source).split("/")
        if len(parts) == 6 and parts[4] == "family":
            project, family = parts[1], parts[5]
            if (project, family) in self.public_families:
                return self.public_families[(project, family)]
            usable = [
                i
                for i in self.images.values()
                if project == self.project
                and i.family == family
                and i.status == "READY"
                and i.deprecated.state not in DEPRECATED_STATES
            ]
            if usable:
                return max(usable, key=lambda i: dt.datetime.fromisoformat(i.creation_timestamp))
        named = len(parts) == 5 and parts[2:4] == ["global", "images"]
        if named and parts[1] == self.project and parts[4] in self.images:
            return self.images[parts[4]]
        raise gexc.NotFound(f"The resource '{short_path(source)}' was not found")

    def instance_policy(self, name: str) -> compute_v1.Policy:
        return self.instance_policies.get(name) or compute_v1.Policy(etag="BwAAAAAAAAA=", version=1)

    def tunnel_policy(self, resource: str) -> policy_pb2.Policy:
        return self.tunnel_policies.get(resource) or policy_pb2.Policy(etag=b"BwAAAAAAAAA=")

    # -- the group mode

    def zones_of(self, region: str) -> list[str]:
        letters = REGION_ZONES.get(region, ("a", "b", "c"))
        return [f"{region}-{x}" for x in letters]

    def tick_clock(self) -> None:
        import datetime as dt

        self.clock += dt.timedelta(hours=1)

    # -- validation as the API does it

    def check_versions(self, mig: compute_v1.InstanceGroupManager) -> None:
        if len(mig.versions) > 1:
            raise gexc.BadRequest("the double models one version per group (no canary)")
        for url in [v.instance_template for v in mig.versions] or [mig.instance_template]:
            self.instance_templates.find(self.project, "global", _last(url))

    def check_update_policy(self, policy: compute_v1.InstanceGroupManagerUpdatePolicy, zones: int) -> None:
        surge, unavailable = policy.max_surge.fixed, policy.max_unavailable.fixed
        for field, value in (("maxSurge", surge), ("maxUnavailable", unavailable)):
            if value and value < zones:
                raise gexc.BadRequest(
                    f"Invalid value for field 'resource.updatePolicy.{field}.fixed': '{value}'. Fixed value"
                    f" of {field} has to be either 0 or at least equal to the number of zones ({zones})."
                )
        if not surge and not unavailable:
            raise gexc.BadRequest(
                "Invalid value for field 'resource.updatePolicy':"
                " maxSurge and maxUnavailable cannot both be 0."
            )

    # -- the group's instances

    def read_back(self, mig: compute_v1.InstanceGroupManager) -> compute_v1.InstanceGroupManager:
        out = copy.deepcopy(mig)
        members = self.members.get(mig.name, [])
        out.current_actions = compute_v1.InstanceGroupManagerActionsSummary(
            creating=sum(1 for m in members if m.action == "CREATING"),
            deleting=sum(1 for m in members if m.deleting),
            none=sum(1 for m in members if m.action == "NONE" and not m.deleting),
            verifying=sum(1 for m in members if m.action == "VERIFYING"),
        )
        return out

    def _health_of(self, member: Member) -> str:
        if member.action == "CREATING" or member.age < self.boot_polls:
            return "UNKNOWN"
        return self.health(member.template, member.name)

    def managed_instances(self, group: str) -> list[compute_v1.ManagedInstance]:
        mig = self.instance_group_managers[group]
        out = []
        for m in self.members.get(group, []):
            health = self._health_of(m)
            out.append(
                compute_v1.ManagedInstance(
                    name=m.name,
                    instance=full_url(self.instances.path(f"zones/{m.zone}", m.name)),
                    id=self.instances[m.name].id if m.name in self.instances else 0,
                    instance_status="PROVISIONING"
                    if m.action == "CREATING"
                    else ("STOPPING" if m.deleting else "RUNNING"),
                    current_action="DELETING" if m.deleting else m.action,
                    version=compute_v1.ManagedInstanceVersion(
                        name="current",
                        instance_template=full_url(self.instance_templates.path("global", m.template)),
                    ),
                    instance_health=[
                        compute_v1.ManagedInstanceInstanceHealth(
                            detailed_health_state=health,
                            health_check=mig.auto_healing_policies[0].health_check
                            if mig.auto_healing_policies
                            else "",
                        )
                    ],
                )
            )
        return out

    def _spawn(self, mig: compute_v1.InstanceGroupManager, template_name: str) -> None:
        """A new instance of the group, made from its template as the group manager does (no call of
        the caller's is recorded)."""
        members = self.members[mig.name]
        zones = [_last(z.zone) for z in mig.distribution_policy.zones]
        alive = [m for m in members if not m.deleting]
        zone = min(zones, key=lambda z: (sum(1 for m in alive if m.zone == z), zones.index(z)))  # EVEN
        name = f"{mig.base_instance_name}-{next(self.names)}"
        props = self.instance_templates[template_name].properties
        instance = compute_v1.Instance(
            name=name,
            description=props.description,
            machine_type=f"zones/{zone}/machineTypes/{props.machine_type}",
            labels=dict(props.labels),
            can_ip_forward=props.can_ip_forward,
            shielded_instance_config=props.shielded_instance_config,
            disks=[copy.deepcopy(d) for d in props.disks],
            network_interfaces=[copy.deepcopy(n) for n in props.network_interfaces],
            metadata=copy.deepcopy(props.metadata),
            service_accounts=list(props.service_accounts),
            scheduling=props.scheduling,
        )
        for disk in instance.disks:
            disk.initialize_params.disk_type = f"zones/{zone}/diskTypes/{disk.initialize_params.disk_type}"
        calls, log = self.calls, self.log
        self.calls, self.log = [], None
        try:
            InstancesClient(self).insert(
                compute_v1.InsertInstanceRequest(project=self.project, zone=zone, instance_resource=instance)
            )
        finally:
            self.calls, self.log = calls, log
        writer = self.group_guest(template_name, name)
        if writer is not None:
            self.guest[name] = writer
        members.append(Member(name, zone, template_name))

    def _remove(self, group: str, member: Member) -> None:
        self.members[group].remove(member)
        self.instances.discard(member.name)
        self.disks.discard(member.name)

    def step(self, group: str, *, age: bool = True) -> None:
        """One moment of the group manager: boots advance, deletions finish, then the group acts on
        its target size and update policy."""
        mig = self.instance_group_managers[group]
        members = self.members[group]
        if age:
            for m in list(members):
                if m.deleting:
                    self._remove(group, m)
                    continue
                m.age += 1
                if m.action == "CREATING" and m.age >= self.boot_polls:
                    m.action = "VERIFYING"
                if m.action == "VERIFYING" and self._health_of(m) == "HEALTHY":
                    m.action = "NONE"
        target = _last(mig.versions[0].instance_template if mig.versions else mig.instance_template)
        policy = mig.update_policy
        alive = [m for m in members if not m.deleting]
        outdated = [m for m in alive if m.template != target]
        size = mig.target_size
        if policy.type_ == "PROACTIVE" and outdated:
            surge = policy.max_surge.fixed
            current = [m for m in alive if m.template == target]
            for _ in range(min(size - len(current), size + surge - len(alive))):
                self._spawn(mig, target)
            alive = [m for m in members if not m.deleting]
            available = [m for m in alive if m.action == "NONE" and self._health_of(m) == "HEALTHY"]
            # the least useful first: outdated instances that are not serving, then the others
            for m in sorted(outdated, key=lambda m: m in available):
                serving = len(available) - (1 if m in available else 0)
                if serving >= size - policy.max_unavailable.fixed and len(alive) > size:
                    m.deleting = True
                    alive.remove(m)
                    if m in available:
                        available.remove(m)
            return
        for _ in range(size - len(alive)):
            self._spawn(mig, target)
        surplus = len(alive) - size
        if surplus > 0:
            order = sorted(
                alive, key=lambda m: (m.template == target, self._health_of(m) == "HEALTHY", -m.age)
            )
            for m in order[:surplus]:
                m.deleting = True

    def group_instances(self, group: str = "pypapo") -> list[Member]:
        return [m for m in self.members.get(group, []) if not m.deleting]

    def settle(self, group: str = "pypapo", polls: int = 5) -> None:
        """Let the group manager run (as polls would), e.g. for a group made earlier."""
        for _ in range(polls):
            self.step(group)

    # -- for tests

    def writes(self) -> list[str]:
        return [c.method for c in self.calls if c.write]

    def call_names(self) -> list[str]:
        return [c.method for c in self.calls]

    def requests(self, method: str) -> list[Any]:
        return [c.request for c in self.calls if c.method == method]

    def instance(self, name: str) -> compute_v1.Instance:
        """The stored instance (edit it to simulate a change made by hand)."""
        return self.instances[name]

    def add_image(
        self,
        name: str,
        created: dt.datetime,
        state: str = "ACTIVE",
        family: str = "pypapo",
        labels: dict[str, str] | None = None,
    ) -> compute_v1.Image:
        image = compute_v1.Image(
            name=name,
            id=next(self.ids),
            family=family,
            labels=labels or {},
            status="READY",
            creation_timestamp=created.isoformat(timespec="milliseconds"),
            self_link=full_url(self.images.path("global", name)),
        )
        if state != "ACTIVE":
            image.deprecated = compute_v1.DeprecationStatus(state=state)
        return self.images.add("global", name, image)

    def add_appliance(self, spec: compute_v1.Instance, image: str | None = None) -> None:
        """An instance made from `spec` (booting `image` if given), as if created earlier (no call
        recorded)."""
        resource = _copy(spec)
        if image is not None:
            next(d for d in resource.disks if d.boot).initialize_params.source_image = image
        InstancesClient(self).insert(
            compute_v1.InsertInstanceRequest(project=self.project, zone=self.zone, instance_resource=resource)
        )
        self.calls.clear()
        if self.log is not None:
            self.log.clear()


def ready_after(polls: int) -> Guest:
    """A serving appliance's guest: nothing (404) for `polls` reads, then ready."""
    count = 0

    def attrs() -> dict[str, str]:
        nonlocal count
        count += 1
        return {"ready": "true", "status": "ready"} if count > polls else {}

    return attrs


def bake_done(gcsfuse: str = "2.5.1", nginx: str = "1.22.1-9+deb12u1") -> Guest:
    """A builder's guest that finishes the bake on the second poll."""
    polls = iter([{}, {"bake": "done", "gcsfuse-version": gcsfuse, "nginx-version": nginx}])
    last: dict[str, str] = {}

    def attrs() -> dict[str, str]:
        nonlocal last
        last = next(polls, last)
        return last

    return attrs


class FakeClock:
    """Deterministic time for the polling loops: sleep advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

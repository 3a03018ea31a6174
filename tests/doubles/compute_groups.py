"""The group mode's part of the Compute Engine double: instance templates, health checks, regional
managed instance groups (with their instances, rolling updates and health), regional backend
services, internal addresses and forwarding rules, and the region's zones.

`GroupEngine` is `ComputeEngine` with these collections and clients; everything else (instances,
guest attributes, images, firewalls, calls, injected failures) is the base double's, so the real thin
layer runs over it unchanged. As strict as the API where pypapo depends on it:

- an insert of an existing name is 409, a read or delete of a missing one 404; a resource another one
  uses (a template of a group, a health check of a group or backend service, a group behind a backend
  service, a backend service or address behind a forwarding rule) cannot be deleted (400, "is already
  being used by");
- a group's template, autohealing check and zones must exist (404/400); a fixed `max_surge` or
  `max_unavailable` must be 0 or at least the number of zones, and not both 0 (400, as the API says);
- every write is one finished operation (`region=`/global), as compute_v1 returns.

The group itself is simulated one step per `list_managed_instances` (each poll is a moment later):
an instance is created (CREATING), boots (RUNNING, VERIFYING), and turns HEALTHY or not as
`health(template, instance)` says (default: healthy). A PROACTIVE update with `max_unavailable` 0
creates instances on the group's template up to `target_size + max_surge` and deletes an outdated one
only while the available instances (RUNNING, action NONE, HEALTHY) stay at `target_size` without it;
an OPPORTUNISTIC group replaces nothing and only returns to `target_size`, deleting instances not on
its template first. Instances are real ones in `instances` (their guest attributes and serial console
work as for any instance: `group_guest(template, name)` gives each new one its guest).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from tests.doubles.compute import (
    Collection,
    ComputeEngine,
    Guest,
    InstancesClient,
    _Client,
    full_url,
    short_path,
)

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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
        engine.instance_group_managers.find(
            request.project, self._scope(request), request.instance_group_manager
        )
        engine.step(request.instance_group_manager)  # each poll is a moment later
        return engine.managed_instances(request.instance_group_manager)

    def insert(self, request: Any = None, **fields: Any) -> Any:
        request = self._begin(
            "insert", compute_v1.InsertRegionInstanceGroupManagerRequest, request, fields, write=True
        )
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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
        engine: GroupEngine = self.engine  # type: ignore[assignment]
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


class GroupEngine(ComputeEngine):
    """`ComputeEngine` with the group mode's resources (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def clients(self, **others: Any) -> Any:
        base = super().clients(**others)
        for client in GROUP_CLIENTS:
            base._built.setdefault(client.name, client(self))
        return base

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

    # -- for tests

    def group_instances(self, group: str = "pypapo") -> list[Member]:
        return [m for m in self.members.get(group, []) if not m.deleting]

    def settle(self, group: str = "pypapo", polls: int = 5) -> None:
        """Let the group manager run (as polls would), e.g. for a group made earlier."""
        for _ in range(polls):
            self.step(group)

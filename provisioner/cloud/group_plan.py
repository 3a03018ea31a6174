"""Pure: the plan of the group mode (`--replicas N`): what `create` makes or reconciles, what `destroy`
removes, in dependency order, every step a real `compute_v1` request built by `cloud.group`.

`plan.plan_create` and `plan.plan_destroy` dispatch here when the settings ask for a group; the shared
part (bucket, service account, its bucket binding, subnet, IAP allow and deny rules) is `plan`'s own.
What the group adds, in order: the health-check firewall rule, the first image (baked while the family
is empty), the instance template, both health checks, the regional group, the backend service, the
internal address and the forwarding rule. A single VM of the same name is the migration's last step:
deleted, with its per-instance IAP binding, only once the group serves (`group_apply.create` holds it
back until then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.cloud import compute_v1

from provisioner.cloud import group, names
from provisioner.cloud import plan as planlib
from provisioner.cloud.plan import Action, Kind, Method, ResourcePlan, Step
from provisioner.cloud.settings import Settings


@dataclass
class GroupActual:
    """What of the group exists now, as the APIs returned it (None: does not exist)."""

    zones: list[str] = field(default_factory=list)  # the region's zones
    family_image: str = ""  # the family's newest image, as projects/P/global/images/NAME ("" if empty)
    templates: list[compute_v1.InstanceTemplate] = field(default_factory=list)  # pypapo's, any age
    lb_health_check: compute_v1.HealthCheck | None = None
    autoheal_health_check: compute_v1.HealthCheck | None = None
    manager: compute_v1.InstanceGroupManager | None = None
    instances: list[compute_v1.ManagedInstance] = field(default_factory=list)
    backend_service: compute_v1.BackendService | None = None
    address: compute_v1.Address | None = None
    forwarding_rule: compute_v1.ForwardingRule | None = None
    allow_health_checks: compute_v1.Firewall | None = None
    allow_lb_clients: compute_v1.Firewall | None = None
    old_vm_tunnel_members: list[str] = field(default_factory=list)  # the single VM's IAP readers

    def template(self, name: str) -> compute_v1.InstanceTemplate | None:
        return next((t for t in self.templates if t.name == name), None)

    @property
    def current_template(self) -> str:
        """The template the group's instances are meant to run (its first version's)."""
        if self.manager is None:
            return ""
        url = self.manager.versions[0].instance_template if self.manager.versions else ""
        return _last(url or self.manager.instance_template)

    @property
    def lb_ip(self) -> str:
        return self.address.address if self.address is not None else ""


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def is_pypapo_template(s: Settings, name: str) -> bool:
    """INSTANCE-<10 hex digits>: the templates `group.instance_template` names (nothing else of ours)."""
    digest = name.removeprefix(f"{group.group_names(s).base}-")
    return (
        digest != name
        and len(digest) == group.TEMPLATE_DIGEST_CHARS
        and all(c in "0123456789abcdef" for c in digest)
    )


def zones_of(s: Settings, actual: GroupActual | None) -> list[str]:
    """The group's zones: what an existing group spreads over, else every zone of the region.
    Offline nothing is read: only --zone is known."""
    if actual is not None and actual.manager is not None and actual.manager.distribution_policy.zones:
        return [_last(z.zone) for z in actual.manager.distribution_policy.zones]
    if actual is not None and actual.zones:
        return sorted(actual.zones)
    return [s.zone]


def template_image(s: Settings, actual: GroupActual | None) -> tuple[str, list[str]]:
    """The image `create` builds the template from. An existing group keeps its image (changing it is
    `provision rollout`'s job); a new group pins the family's newest image, so every instance, repaired
    or added later, boots exactly that image rather than whatever the family resolves to that day."""
    if actual is not None and actual.manager is not None:
        current = actual.template(actual.current_template)
        if current is not None and group.template_image(current):
            return group.template_image(current), []
    if actual is not None and actual.family_image:
        return actual.family_image, []
    family = names.family_image(s.image_project, s.image_family)
    return family, [f"the template pins the newest image of {family} once it exists (read at create time)"]


def desired_template(
    s: Settings, actual: GroupActual | None, startup_script: str
) -> tuple[compute_v1.InstanceTemplate, list[str]]:
    image, notes = template_image(s, actual)
    return group.instance_template(s, image=image, startup_script=startup_script), notes


def _template_plan(s: Settings, actual: GroupActual | None, template: compute_v1.InstanceTemplate, notes):
    if actual is not None and actual.template(template.name) is not None:
        return ResourcePlan(Kind.INSTANCE_TEMPLATE, template.name, Action.NONE, template)
    req = group.insert_template_request(s, template)
    return ResourcePlan(
        Kind.INSTANCE_TEMPLATE,
        template.name,
        Action.CREATE,
        template,
        steps=[Step(Method.INSERT_INSTANCE_TEMPLATE, req)],
        notes=[*notes, "templates are immutable: a new image or startup script makes a new one"],
    )


def _check_fields(check: compute_v1.HealthCheck) -> dict[str, Any]:
    http = check.http_health_check
    return {
        "type": check.type_,
        "port": http.port,
        "request_path": http.request_path,
        "check_interval_sec": check.check_interval_sec,
        "timeout_sec": check.timeout_sec,
        "healthy_threshold": check.healthy_threshold,
        "unhealthy_threshold": check.unhealthy_threshold,
    }


def _health_check_plan(
    s: Settings, desired: compute_v1.HealthCheck, current: compute_v1.HealthCheck | None
) -> ResourcePlan:
    if current is None:
        return ResourcePlan(
            Kind.HEALTH_CHECK,
            desired.name,
            Action.CREATE,
            desired,
            steps=[Step(Method.INSERT_HEALTH_CHECK, group.insert_health_check_request(s, desired))],
        )
    want, have = _check_fields(desired), _check_fields(current)
    changes = [planlib._change(k, have[k], want[k]) for k in sorted(want) if have[k] != want[k]]
    if not changes:
        return ResourcePlan(Kind.HEALTH_CHECK, desired.name, Action.NONE, desired)
    req = compute_v1.UpdateHealthCheckRequest(
        project=s.project, health_check=desired.name, health_check_resource=desired
    )
    return ResourcePlan(
        Kind.HEALTH_CHECK,
        desired.name,
        Action.UPDATE,
        desired,
        changes,
        [Step(Method.UPDATE_HEALTH_CHECK, req)],
    )


def _group_plan(
    s: Settings, actual: GroupActual | None, template: compute_v1.InstanceTemplate, zones: Sequence[str]
) -> ResourcePlan:
    assert s.replicas is not None
    name = f"{s.region}/{group.group_names(s).group}"
    desired = group.instance_group_manager(s, template_name=template.name, replicas=s.replicas, zones=zones)
    current = actual.manager if actual is not None else None
    if current is None:
        return ResourcePlan(
            Kind.INSTANCE_GROUP,
            name,
            Action.CREATE,
            desired,
            steps=[Step(Method.INSERT_INSTANCE_GROUP, group.insert_group_request(s, desired))],
            notes=[
                f"{s.replicas} instance(s) named {group.group_names(s).instance_prefix}xxxx"
                f" over {', '.join(zones)}"
            ],
        )
    changes: list[dict[str, Any]] = []
    steps: list[Step] = []
    notes: list[str] = []
    assert actual is not None
    if current.target_size != s.replicas:
        changes.append(planlib._change("target_size", current.target_size, s.replicas))
        steps.append(
            Step(
                Method.RESIZE_INSTANCE_GROUP,
                group.resize_request(s, s.replicas),
                "new instances come from the current template; a smaller group deletes instances",
            )
        )
    if actual.current_template != template.name:
        changes.append(planlib._change("versions.instance_template", actual.current_template, template.name))
        steps.append(
            Step(
                Method.PATCH_INSTANCE_GROUP,
                group.rolling_update_request(s, template_name=template.name, zones=len(zones)),
                "rolling update: a new instance per zone first, an old one deleted only once its"
                " replacement is healthy",
            )
        )
        notes.append("the startup script or settings changed: the instances are replaced, surge first")
    if not changes:
        return ResourcePlan(Kind.INSTANCE_GROUP, name, Action.NONE, desired)
    return ResourcePlan(Kind.INSTANCE_GROUP, name, Action.UPDATE, desired, changes, steps, notes)


def _create_only(
    kind: Kind, name: str, desired: Any, current: Any, method: Method, request: Any, notes: Sequence[str] = ()
) -> ResourcePlan:
    if current is not None:
        return ResourcePlan(kind, name, Action.NONE, desired)
    return ResourcePlan(kind, name, Action.CREATE, desired, steps=[Step(method, request)], notes=list(notes))


NO_CLIENTS = "no --lb-client: no firewall rule admits VPC clients, so the LB serves no one"


def lb_address_placeholder(s: Settings) -> str:
    """What the client rule's destination shows while the address does not exist (Google picks the IP)."""
    return f"ADDRESS-OF-{group.group_names(s).address}"


def forgotten_lb_clients(s: Settings, actual: GroupActual | None) -> str | None:
    """Why a command must not run: the group admits load-balancer clients and this command was given
    none. Leaving `--lb-client` out would take them off the source wall of every new instance and
    delete their rule, cutting off Cloud Build and GKE mid-week; so removing them is its own step."""
    rule = actual.allow_lb_clients if actual is not None else None
    if s.lb_clients or rule is None:
        return None
    ranges = sorted(rule.source_ranges)
    flags = " ".join(f"--lb-client {r}" for r in ranges)
    return (
        f"group {s.instance} admits load-balancer clients {', '.join(ranges)} (firewall rule {rule.name}):"
        f" pass them again ({flags}, or lb_clients in pypapo.toml / PYPAPO_LB_CLIENTS); to stop admitting"
        f" them, delete that rule first (gcloud compute firewall-rules delete {rule.name}"
        f" --project {s.project}) and run this again"
    )


def _lb_clients_plans(s: Settings, actual: GroupActual | None) -> list[ResourcePlan]:
    """The `--lb-client` ranges to the forwarding rule's address and the serving port: made, updated
    when the ranges change, deleted when none are set any more. Its destination is the reserved
    address, which Google picks: until it exists the rule has no step, and `group_apply.create` plans
    again right after reserving it (as it does after baking the first image)."""
    name = group.group_names(s).allow_lb_clients
    current = actual.allow_lb_clients if actual is not None else None
    if not s.lb_clients:
        if current is None:
            return []
        request = compute_v1.DeleteFirewallRequest(project=s.project, firewall=name)
        why = "no --lb-client any more: VPC clients can no longer reach the load balancer"
        return [
            ResourcePlan(
                Kind.FIREWALL,
                name,
                Action.DELETE,
                current,
                steps=[Step(Method.DELETE_FIREWALL, request, why)],
            )
        ]
    ip = actual.lb_ip if actual is not None else ""
    desired = group.allow_lb_clients(s, clients=s.lb_clients, lb_ip=ip or lb_address_placeholder(s))
    if ip:
        return [planlib._firewall_plan(s, desired, current)]
    return [
        ResourcePlan(
            Kind.FIREWALL,
            name,
            Action.CREATE,
            desired,
            notes=[
                f"its destination is the address of {group.group_names(s).address}/32, which Google picks:"
                " create sends this rule as soon as the address is reserved"
            ],
        )
    ]


def _single_vm_plans(
    s: Settings, base: planlib.Actual | None, actual: GroupActual | None
) -> list[ResourcePlan]:
    """The migration: a single VM of the same name goes, with its per-instance IAP readers, once the
    group serves (`group_apply.create` runs these after the wait, never before)."""
    vm = base.instance if base is not None else None
    if vm is None:
        return []
    steps: list[Step] = []
    members = actual.old_vm_tunnel_members if actual is not None else []
    resource = names.tunnel_resource(s.project, s.zone, s.instance)
    for member in members:
        change = planlib.IamChange(
            planlib.IamResource.IAP_TUNNEL_INSTANCE, resource, planlib.TUNNEL_ROLE, member
        )
        steps.append(Step(Method.REMOVE_MEMBER, change, "the old VM's per-instance tunnel grant"))
    if vm.deletion_protection:
        steps.append(
            Step(
                Method.SET_DELETION_PROTECTION,
                compute_v1.SetDeletionProtectionInstanceRequest(
                    project=s.project, zone=s.zone, resource=s.instance, deletion_protection=False
                ),
                "deletion protection is on: lift it first",
            )
        )
    steps.append(
        Step(
            Method.DELETE_INSTANCE,
            compute_v1.DeleteInstanceRequest(project=s.project, zone=s.zone, instance=s.instance),
        )
    )
    notes = ["migration: deleted only after every instance of the group is healthy"]
    if members:
        notes.append(
            "readers of the old VM lose its per-instance grant; grant them the group's:"
            + "".join(f" `provision grant {m} --role reader --replicas {s.replicas}`" for m in members)
        )
    return [
        ResourcePlan(Kind.INSTANCE, f"{s.zone}/{s.instance}", Action.DELETE, vm, steps=steps, notes=notes)
    ]


def plan_create(s: Settings, base: planlib.Actual | None, *, startup_script: str) -> planlib.Plan:
    """Everything `create --replicas N` makes or reconciles, in dependency order. `base=None`: offline."""
    actual: GroupActual | None = base.group if base is not None else None
    zones = zones_of(s, actual)
    resources = planlib.shared_plans(s, base)
    hc_rule = planlib._firewall_plan(
        s, group.allow_health_checks(s), actual.allow_health_checks if actual else None
    )
    resources.append(hc_rule)
    image = planlib._image_plan(s, base) if actual is None or not actual.family_image else None
    if image is not None and actual is not None and actual.manager is not None:
        image = None  # a group exists: its template names its image
    resources += [image] if image else []
    template, template_notes = desired_template(s, actual, startup_script)
    resources.append(_template_plan(s, actual, template, template_notes))
    resources.append(
        _health_check_plan(s, group.lb_health_check(s), actual.lb_health_check if actual else None)
    )
    resources.append(
        _health_check_plan(
            s, group.autoheal_health_check(s), actual.autoheal_health_check if actual else None
        )
    )
    group_plan = _group_plan(s, actual, template, zones)
    if base is None:
        group_plan.notes.append(
            f"offline: only --zone is known; create spreads the group over every zone of {s.region}"
        )
    resources.append(group_plan)
    gn = group.group_names(s)
    service, address, rule = group.backend_service(s), group.internal_address(s), group.forwarding_rule(s)
    have = actual or GroupActual()
    balancer = (
        (
            Kind.BACKEND_SERVICE,
            gn.backend_service,
            service,
            have.backend_service,
            Method.INSERT_BACKEND_SERVICE,
            group.insert_backend_service_request(s, service),
            (),
        ),
        (
            Kind.ADDRESS,
            gn.address,
            address,
            have.address,
            Method.INSERT_ADDRESS,
            group.insert_address_request(s, address),
            ("Google picks a free address in the subnet; it stays the LB's until destroy",),
        ),
        (
            Kind.FORWARDING_RULE,
            gn.forwarding_rule,
            rule,
            have.forwarding_rule,
            Method.INSERT_FORWARDING_RULE,
            group.insert_forwarding_rule_request(s, rule),
            () if s.lb_clients else (NO_CLIENTS,),
        ),
    )  # fmt: skip  (one row per resource reads better than the formatter's one field per line)
    for kind, name, desired, current, method, request, notes in balancer:
        resources.append(_create_only(kind, f"{s.region}/{name}", desired, current, method, request, notes))
    resources += _lb_clients_plans(s, actual)
    resources += _single_vm_plans(s, base, actual)
    return planlib.Plan(s, "offline" if base is None else "live", "create", resources)


def _delete(kind: Kind, name: str, current: Any, method: Method, request: Any) -> ResourcePlan:
    if current is None:
        return ResourcePlan(kind, name, Action.NONE)
    return ResourcePlan(kind, name, Action.DELETE, current, steps=[Step(method, request)])


def group_destroy_plans(s: Settings, actual: GroupActual) -> list[ResourcePlan]:
    """What the group mode made, in the order the API lets it go: forwarding rule, address, backend
    service, group (its instances with it), templates, health checks, the health-check firewall rule."""
    p, r, gn = s.project, s.region, group.group_names(s)
    plans = [
        _delete(
            Kind.FORWARDING_RULE,
            f"{r}/{gn.forwarding_rule}",
            actual.forwarding_rule,
            Method.DELETE_FORWARDING_RULE,
            compute_v1.DeleteForwardingRuleRequest(project=p, region=r, forwarding_rule=gn.forwarding_rule),
        ),
        _delete(
            Kind.ADDRESS,
            f"{r}/{gn.address}",
            actual.address,
            Method.DELETE_ADDRESS,
            compute_v1.DeleteAddressRequest(project=p, region=r, address=gn.address),
        ),
        _delete(
            Kind.BACKEND_SERVICE,
            f"{r}/{gn.backend_service}",
            actual.backend_service,
            Method.DELETE_BACKEND_SERVICE,
            compute_v1.DeleteRegionBackendServiceRequest(
                project=p, region=r, backend_service=gn.backend_service
            ),
        ),
        _delete(
            Kind.INSTANCE_GROUP,
            f"{r}/{gn.group}",
            actual.manager,
            Method.DELETE_INSTANCE_GROUP,
            compute_v1.DeleteRegionInstanceGroupManagerRequest(
                project=p, region=r, instance_group_manager=gn.group
            ),
        ),
    ]
    if actual.manager is not None:
        plans[-1].notes.append(f"its {len(actual.instances)} instance(s) are deleted with it")
    for template in sorted(actual.templates, key=lambda t: t.name):
        plans.append(
            _delete(
                Kind.INSTANCE_TEMPLATE,
                template.name,
                template,
                Method.DELETE_INSTANCE_TEMPLATE,
                compute_v1.DeleteInstanceTemplateRequest(project=p, instance_template=template.name),
            )
        )
    for name, current in (
        (gn.lb_health_check, actual.lb_health_check),
        (gn.autoheal_health_check, actual.autoheal_health_check),
    ):
        plans.append(
            _delete(
                Kind.HEALTH_CHECK,
                name,
                current,
                Method.DELETE_HEALTH_CHECK,
                compute_v1.DeleteHealthCheckRequest(project=p, health_check=name),
            )
        )
    rules = [(gn.allow_lb_clients, actual.allow_lb_clients)] if actual.allow_lb_clients is not None else []
    for name, current in [*rules, (gn.allow_health_checks, actual.allow_health_checks)]:
        plans.append(
            _delete(
                Kind.FIREWALL,
                name,
                current,
                Method.DELETE_FIREWALL,
                compute_v1.DeleteFirewallRequest(project=p, firewall=name),
            )
        )
    return plans


# --- rollout and rollback ------------------------------------------------------------------------------


def previous_template(actual: GroupActual) -> compute_v1.InstanceTemplate | None:
    """What `rollback` returns to: the newest of pypapo's templates created before the current one."""
    current = actual.template(actual.current_template)
    if current is None:
        return None
    older = [t for t in actual.templates if t.creation_timestamp < current.creation_timestamp]
    return max(older, key=lambda t: t.creation_timestamp, default=None)


def stop_update_request(
    s: Settings, *, back_to: str, zones: int
) -> compute_v1.PatchRegionInstanceGroupManagerRequest:
    """A failed rollout stops: the group's version goes back to `back_to` and the update turns
    OPPORTUNISTIC (what `gcloud ... rolling-action stop-proactive-update` sets), so no further old
    instance is replaced, and a repair (autohealing, `force_update_on_repair`) brings a failed new
    instance back on the old template."""
    req = group.rolling_update_request(s, template_name=back_to, zones=zones)
    req.instance_group_manager_resource.update_policy.type_ = "OPPORTUNISTIC"
    return req

"""Pure: the appliance as a regional managed instance group behind an internal passthrough load balancer.

Builders of the exact `compute_v1` request objects (and the IAM bindings with their conditions) that
`provision create --replicas N` sends. Nothing here does I/O; everything is a function of `Settings`
and what the caller read (the image, the region's zones, the load balancer's address).

- instance template: the hardened single VM of `plan.desired_instance`, field for field (Shielded VM,
  no external IP, OS Login, the same metadata and service account); only the parts a template spells
  differently (bare machine and disk type names, no instance name, no deletion protection, which would
  stop the group from replacing its own instances) differ.
- regional group: spread evenly over the region's zones, autohealing on `/livez` of the serving port
  (the machine serves its mount; a lenient check of its own: a gcsfuse restart must not get a VM
  recreated, and a page problem of the shared bucket, which `/healthz` reports, is no VM's fault),
  and an update policy for rollouts that creates before it deletes (surge = the number of zones, the
  minimum a regional group accepts, and never an unavailable instance).
- the internal passthrough load balancer: a global HTTP health check on `/healthz`, a regional
  INTERNAL/TCP backend service with connection draining, a reserved internal address and a forwarding
  rule on it for the serving port.
- firewall: allow IAP (as for the single VM), allow Google's health checkers to the serving port only,
  allow the load balancer's clients to the forwarding rule's address only (the one explicit exception to
  "IAM is the only gate", and only when clients are configured), and deny the serving port to everyone
  else, ranked above the network's broad allow rules (`default-allow-internal` is 65534).
- IAM for readers: one binding per role on the project's IAP tunnel resource, conditioned on
  `destination.port` and on names that only the group's instances have.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from google.cloud import compute_v1

from provisioner.cloud import names, plan
from provisioner.cloud.settings import Settings

# Where Google's health checkers connect from (https://cloud.google.com/load-balancing/docs/health-checks
# #firewall_rules): both ranges, for every load balancer type that checks instance groups.
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")

LB_CHECK_INTERVAL = 5  # Google's defaults: check every 5 s, 2 failures out, 2 successes in
LB_CHECK_THRESHOLD = 2
AUTOHEAL_CHECK_INTERVAL = 10  # recreate a VM only after a minute of failed checks, never for a blip
AUTOHEAL_UNHEALTHY = 6
AUTOHEAL_INITIAL_DELAY = 300  # the startup script installs (fresh image) and mounts before /healthz
DRAINING_SECONDS = 60  # in-flight downloads finish on an instance leaving the backend

TEMPLATE_DIGEST_CHARS = 10


# --- names ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupNames:
    """Every resource of the group, named after the instance setting (`pypapo` by default)."""

    base: str

    @property
    def group(self) -> str:
        return self.base

    @property
    def base_instance_name(self) -> str:
        """The group names its instances BASE-r-xxxx. Not BASE-xxxx: the image builder is FAMILY-builder-...
        and the family defaults to the instance name, so the tunnel condition would cover the builder."""
        return f"{self.base}-r"

    @property
    def instance_prefix(self) -> str:
        return f"{self.base_instance_name}-"

    @property
    def lb_health_check(self) -> str:
        return f"{self.base}-lb-hc"

    @property
    def autoheal_health_check(self) -> str:
        return f"{self.base}-heal-hc"

    @property
    def backend_service(self) -> str:
        return f"{self.base}-ilb"

    @property
    def address(self) -> str:
        return f"{self.base}-ilb"

    @property
    def forwarding_rule(self) -> str:
        return f"{self.base}-ilb"

    @property
    def allow_health_checks(self) -> str:
        return f"{self.base}-allow-hc"

    @property
    def allow_lb_clients(self) -> str:
        return f"{self.base}-allow-ilb"

    def template(self, digest: str) -> str:
        return f"{self.base}-{digest[:TEMPLATE_DIGEST_CHARS]}"


def group_names(s: Settings) -> GroupNames:
    return GroupNames(s.instance)


def _global(s: Settings, kind: str, name: str) -> str:
    return f"projects/{s.project}/global/{kind}/{name}"


def _regional(s: Settings, kind: str, name: str) -> str:
    return f"projects/{s.project}/regions/{s.region}/{kind}/{name}"


def instance_group_url(s: Settings) -> str:
    """The regional group's instance group (what the backend service balances over)."""
    return _regional(s, "instanceGroups", group_names(s).group)


# --- instance template ---------------------------------------------------------------------------------


def template_properties(s: Settings, *, image: str, startup_script: str) -> compute_v1.InstanceProperties:
    """The single VM's hardened instance, as the properties of a template (one source of truth)."""
    vm = plan.desired_instance(s, image=image, startup_script=startup_script)
    disk = compute_v1.AttachedDisk(vm.disks[0])
    disk.device_name = "boot"  # per-instance names come from the group
    disk.initialize_params.disk_type = plan.DISK_TYPE
    return compute_v1.InstanceProperties(
        description=vm.description,
        machine_type=s.machine_type,
        labels=dict(vm.labels),
        can_ip_forward=vm.can_ip_forward,
        shielded_instance_config=vm.shielded_instance_config,
        disks=[disk],
        network_interfaces=list(vm.network_interfaces),  # no access configs: no external IP
        metadata=vm.metadata,
        service_accounts=list(vm.service_accounts),
        scheduling=vm.scheduling,
    )


def template_digest(properties: compute_v1.InstanceProperties) -> str:
    """Same properties, same name: a second create finds its template; a changed image or script does not."""
    doc = compute_v1.InstanceProperties.to_json(properties, sort_keys=True, indent=None)
    return hashlib.sha256(doc.encode()).hexdigest()


def instance_template(s: Settings, *, image: str, startup_script: str) -> compute_v1.InstanceTemplate:
    properties = template_properties(s, image=image, startup_script=startup_script)
    return compute_v1.InstanceTemplate(
        name=group_names(s).template(template_digest(properties)),
        description=f"pypapo appliance from {image} (managed by provision; templates are immutable)",
        properties=properties,
    )


def insert_template_request(
    s: Settings, template: compute_v1.InstanceTemplate
) -> compute_v1.InsertInstanceTemplateRequest:
    return compute_v1.InsertInstanceTemplateRequest(project=s.project, instance_template_resource=template)


def template_url(s: Settings, template_name: str) -> str:
    return _global(s, "instanceTemplates", template_name)


# --- health checks -------------------------------------------------------------------------------------


def _http_check(
    s: Settings, name: str, description: str, interval: int, unhealthy: int, path: str
) -> compute_v1.HealthCheck:
    return compute_v1.HealthCheck(
        name=name,
        description=description,
        type_="HTTP",
        http_health_check=compute_v1.HTTPHealthCheck(
            port=s.port, request_path=path, proxy_header="NONE", port_specification="USE_FIXED_PORT"
        ),
        check_interval_sec=interval,
        timeout_sec=min(interval, 5),
        healthy_threshold=LB_CHECK_THRESHOLD,
        unhealthy_threshold=unhealthy,
    )


def lb_health_check(s: Settings) -> compute_v1.HealthCheck:
    return _http_check(
        s,
        group_names(s).lb_health_check,
        "pypapo: the load balancer sends connections only to instances whose /healthz answers 200",
        LB_CHECK_INTERVAL,
        LB_CHECK_THRESHOLD,
        "/healthz",
    )


def autoheal_health_check(s: Settings) -> compute_v1.HealthCheck:
    return _http_check(
        s,
        group_names(s).autoheal_health_check,
        "pypapo: the group recreates an instance whose /livez has failed for a minute",
        AUTOHEAL_CHECK_INTERVAL,
        AUTOHEAL_UNHEALTHY,
        "/livez",
    )


def insert_health_check_request(
    s: Settings, check: compute_v1.HealthCheck
) -> compute_v1.InsertHealthCheckRequest:
    return compute_v1.InsertHealthCheckRequest(project=s.project, health_check_resource=check)


# --- the regional managed instance group ---------------------------------------------------------------


def update_policy(zones: int) -> compute_v1.InstanceGroupManagerUpdatePolicy:
    """Rollouts create before they delete: surge one instance per zone (a regional group's minimum for
    a non-zero surge), never an unavailable one; REPLACE, since a new image needs a new boot disk."""
    return compute_v1.InstanceGroupManagerUpdatePolicy(
        type_="PROACTIVE",
        minimal_action="REPLACE",
        most_disruptive_allowed_action="REPLACE",
        replacement_method="SUBSTITUTE",
        max_surge=compute_v1.FixedOrPercent(fixed=max(zones, 1)),
        max_unavailable=compute_v1.FixedOrPercent(fixed=0),
        instance_redistribution_type="PROACTIVE",
    )


def instance_group_manager(
    s: Settings, *, template_name: str, replicas: int, zones: Sequence[str]
) -> compute_v1.InstanceGroupManager:
    return compute_v1.InstanceGroupManager(
        name=group_names(s).group,
        description=f"pypapo: {replicas} appliance replica(s) over {', '.join(zones)}",
        base_instance_name=group_names(s).base_instance_name,
        instance_template=template_url(s, template_name),
        versions=[
            compute_v1.InstanceGroupManagerVersion(
                name="current", instance_template=template_url(s, template_name)
            )
        ],
        target_size=replicas,
        distribution_policy=compute_v1.DistributionPolicy(
            zones=[compute_v1.DistributionPolicyZoneConfiguration(zone=f"zones/{z}") for z in zones],
            target_shape="EVEN",
        ),
        auto_healing_policies=[
            compute_v1.InstanceGroupManagerAutoHealingPolicy(
                health_check=_global(s, "healthChecks", group_names(s).autoheal_health_check),
                initial_delay_sec=AUTOHEAL_INITIAL_DELAY,
            )
        ],
        update_policy=update_policy(len(zones)),
        instance_lifecycle_policy=compute_v1.InstanceGroupManagerInstanceLifecyclePolicy(
            force_update_on_repair="YES",  # a repaired instance comes back on the current template
            default_action_on_failure="REPAIR",
        ),
    )


def insert_group_request(
    s: Settings, group: compute_v1.InstanceGroupManager
) -> compute_v1.InsertRegionInstanceGroupManagerRequest:
    return compute_v1.InsertRegionInstanceGroupManagerRequest(
        project=s.project, region=s.region, instance_group_manager_resource=group
    )


def rolling_update_request(
    s: Settings, *, template_name: str, zones: int
) -> compute_v1.PatchRegionInstanceGroupManagerRequest:
    """`rollout`/`rollback`: every instance to `template_name`, surge first, none unavailable."""
    return compute_v1.PatchRegionInstanceGroupManagerRequest(
        project=s.project,
        region=s.region,
        instance_group_manager=group_names(s).group,
        instance_group_manager_resource=compute_v1.InstanceGroupManager(
            instance_template=template_url(s, template_name),
            versions=[
                compute_v1.InstanceGroupManagerVersion(
                    name="current", instance_template=template_url(s, template_name)
                )
            ],
            update_policy=update_policy(zones),
        ),
    )


def resize_request(s: Settings, replicas: int) -> compute_v1.ResizeRegionInstanceGroupManagerRequest:
    return compute_v1.ResizeRegionInstanceGroupManagerRequest(
        project=s.project, region=s.region, instance_group_manager=group_names(s).group, size=replicas
    )


# --- the internal passthrough load balancer ------------------------------------------------------------


def backend_service(s: Settings) -> compute_v1.BackendService:
    return compute_v1.BackendService(
        name=group_names(s).backend_service,
        description="pypapo: internal passthrough load balancing over the appliance group",
        load_balancing_scheme="INTERNAL",
        protocol="TCP",
        network=names.network_url(s.project, s.network),
        health_checks=[_global(s, "healthChecks", group_names(s).lb_health_check)],
        backends=[compute_v1.Backend(group=instance_group_url(s), balancing_mode="CONNECTION")],
        session_affinity="NONE",
        connection_draining=compute_v1.ConnectionDraining(draining_timeout_sec=DRAINING_SECONDS),
        # Connections to an instance that went unhealthy move on (clients see a reset and retry)
        # instead of staying on a replica whose mount is gone.
        connection_tracking_policy=compute_v1.BackendServiceConnectionTrackingPolicy(
            tracking_mode="PER_CONNECTION", connection_persistence_on_unhealthy_backends="NEVER_PERSIST"
        ),
    )


def insert_backend_service_request(
    s: Settings, service: compute_v1.BackendService
) -> compute_v1.InsertRegionBackendServiceRequest:
    return compute_v1.InsertRegionBackendServiceRequest(
        project=s.project, region=s.region, backend_service_resource=service
    )


def internal_address(s: Settings, ip: str = "") -> compute_v1.Address:
    """A reserved internal address in the subnet: the LB keeps its IP across re-creation of the rule."""
    address = compute_v1.Address(
        name=group_names(s).address,
        description="pypapo: the internal load balancer's address",
        address_type="INTERNAL",
        purpose="GCE_ENDPOINT",
        subnetwork=names.subnet_url(s.project, s.region, s.subnet),
    )
    if ip:
        address.address = ip
    return address


def insert_address_request(s: Settings, address: compute_v1.Address) -> compute_v1.InsertAddressRequest:
    return compute_v1.InsertAddressRequest(project=s.project, region=s.region, address_resource=address)


def forwarding_rule(s: Settings) -> compute_v1.ForwardingRule:
    return compute_v1.ForwardingRule(
        name=group_names(s).forwarding_rule,
        description="pypapo: the index for clients inside the VPC (no IAP on this path)",
        load_balancing_scheme="INTERNAL",
        I_p_protocol="TCP",
        ports=[str(s.port)],
        I_p_address=_regional(s, "addresses", group_names(s).address),
        backend_service=_regional(s, "backendServices", group_names(s).backend_service),
        network=names.network_url(s.project, s.network),
        subnetwork=names.subnet_url(s.project, s.region, s.subnet),
        allow_global_access=False,  # clients in this region only, like the group
        labels=dict(s.labels),
    )


def insert_forwarding_rule_request(
    s: Settings, rule: compute_v1.ForwardingRule
) -> compute_v1.InsertForwardingRuleRequest:
    return compute_v1.InsertForwardingRuleRequest(
        project=s.project, region=s.region, forwarding_rule_resource=rule
    )


def lb_url(ip: str, port: int) -> str:
    return f"http://{ip}:{port}/simple/"


# --- firewall ------------------------------------------------------------------------------------------


def _rule(s: Settings, name: str, description: str, **fields: object) -> compute_v1.Firewall:
    return compute_v1.Firewall(
        name=name,
        description=description,
        network=names.network_url(s.project, s.network),
        direction="INGRESS",
        disabled=False,
        target_service_accounts=[s.service_account_email],
        **fields,  # type: ignore[arg-type]
    )


def allow_health_checks(s: Settings) -> compute_v1.Firewall:
    return _rule(
        s,
        group_names(s).allow_health_checks,
        "pypapo: Google's health checkers to the index port only (autohealing and the load balancer)",
        priority=plan.ALLOW_PRIORITY,
        source_ranges=list(HEALTH_CHECK_RANGES),
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(s.port)])],
    )


def allow_lb_clients(s: Settings, *, clients: Sequence[str], lb_ip: str) -> compute_v1.Firewall:
    """The documented exception: these source ranges reach the serving port, but only through the
    forwarding rule's address (a passthrough LB keeps the destination IP, so the rule can tell)."""
    return _rule(
        s,
        group_names(s).allow_lb_clients,
        "pypapo: VPC clients of the internal load balancer, to its address and the index port only",
        priority=plan.ALLOW_PRIORITY,
        source_ranges=list(clients),
        destination_ranges=[f"{lb_ip}/32"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(s.port)])],
    )


# --- IAM for readers: conditional bindings on the project's tunnel resource ----------------------------


@dataclass(frozen=True)
class ConditionalBinding:
    """One role for one member on one resource, under a condition (IAM policy version 3)."""

    resource: str
    role: str
    member: str
    title: str
    description: str
    expression: str

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"resource": self.resource, "role": self.role, "members": [self.member]}
        if self.expression:  # "" only where a resource of its own is the limit (a service account)
            doc["condition"] = {
                "title": self.title,
                "description": self.description,
                "expression": self.expression,
            }
        return doc


def tunnel_resource(s: Settings) -> str:
    """The project's IAP TCP forwarding resource; bindings here apply to every tunnel of the project,
    which is why every binding pypapo puts here is conditioned on the group's instances."""
    return f"projects/{s.project}/iap_tunnel"


def _quoted(value: str) -> str:
    return json.dumps(value)  # a CEL string literal: double quotes, backslash escapes


def group_instance_condition(s: Settings) -> str:
    """True exactly for tunnels to the group's instances: BASE-r-xxxx in a zone of the group's region.

    The region, not a list of zones: a regional group's instances are always in its region's zones, and
    that list is live state (redistribution, a zone added) that a dry run cannot read and a granted
    condition would not follow, so a revoke computed later would no longer match the grant. The hyphen
    keeps europe-west1 from matching europe-west10's zones."""
    prefix = group_names(s).instance_prefix
    return (
        f'resource.name.extract("/zones/{{zone}}/instances/").startsWith({_quoted(s.region + "-")})'
        f' && resource.name.extract("/instances/{{name}}").startsWith({_quoted(prefix)})'
    )


def reader_tunnel_binding(s: Settings, member: str) -> ConditionalBinding:
    return ConditionalBinding(
        resource=tunnel_resource(s),
        role=plan.TUNNEL_ROLE,
        member=member,
        title=f"pypapo {s.instance} index port",
        description=f"IAP tunnel to the {s.instance} group's instances, port {s.port} only (pypapo)",
        expression=f"destination.port == {s.port} && {group_instance_condition(s)}",
    )


OS_LOGIN_ROLE = "roles/compute.osLogin"  # SSH as a non-root OS Login user: all `verify` needs
SERVICE_ACCOUNT_USER_ROLE = "roles/iam.serviceAccountUser"
OS_LOGIN_EXTERNAL_ROLE = "roles/compute.osLoginExternalUser"
VERIFIER_EXTERNAL_NOTE = (
    f"a member outside the project's organization also needs {OS_LOGIN_EXTERNAL_ROLE}, granted on that"
    " organization (`gcloud organizations add-iam-policy-binding ORG_ID --member=MEMBER"
    f" --role={OS_LOGIN_EXTERNAL_ROLE}`); pypapo grants nothing at organization level"
)


def verifier_bindings(s: Settings, member: str) -> list[ConditionalBinding]:
    """`grant --role verifier`: what `provision verify` needs, in the reader's shape. The tunnel to
    port 22 only (a reader's binding cannot reach sshd, a verifier's cannot reach anything else), OS
    Login on the group's instances only, and serviceAccountUser on the VM's own account, which OS Login
    requires when the VM runs as a service account (pypapo's always does)."""
    prefix = _quoted(group_names(s).instance_prefix)
    instance = (
        'resource.type == "compute.googleapis.com/Instance"'
        f' && resource.name.extract("/instances/{{name}}").startsWith({prefix})'
    )
    return [
        ConditionalBinding(
            resource=tunnel_resource(s),
            role=plan.TUNNEL_ROLE,
            member=member,
            title=f"pypapo {s.instance} ssh",
            description=f"IAP tunnel to the {s.instance} group's instances, port 22 only (pypapo verify)",
            expression=f"destination.port == 22 && {group_instance_condition(s)}",
        ),
        ConditionalBinding(
            resource=f"projects/{s.project}",
            role=OS_LOGIN_ROLE,
            member=member,
            title=f"pypapo {s.instance} os login",
            description=f"OS Login on the {s.instance} group's instances only (pypapo verify)",
            expression=instance,
        ),
        ConditionalBinding(
            resource=f"projects/{s.project}/serviceAccounts/{s.service_account_email}",
            role=SERVICE_ACCOUNT_USER_ROLE,
            member=member,
            title="",
            description="",
            expression="",  # the binding lives on the VM's account alone
        ),
    ]


def reader_viewer_binding(s: Settings, member: str) -> ConditionalBinding:
    """gcloud reads the instance before it tunnels; `provision tunnel` lists the group's instances."""
    prefix = group_names(s).instance_prefix
    group = _regional(s, "instanceGroupManagers", group_names(s).group)
    expression = (
        f"resource.name == {_quoted(group)}"
        ' || (resource.type == "compute.googleapis.com/Instance"'
        f' && resource.name.extract("/instances/{{name}}").startsWith({_quoted(prefix)}))'
    )
    return ConditionalBinding(
        resource=f"projects/{s.project}",
        role=plan.INSTANCE_VIEWER_ROLE,
        member=member,
        title=f"pypapo {s.instance} group (read)",
        description=f"read the {s.instance} group and its instances only (managed by pypapo)",
        expression=expression,
    )


# --- what the group's instances are doing: `status` rows and rollout progress --------------------------

HEALTHY = "HEALTHY"
FAILING_HEALTH = frozenset({"UNHEALTHY", "TIMEOUT"})


@dataclass(frozen=True)
class InstanceRow:
    """One line of `provision status` for the group."""

    name: str
    zone: str
    template: str
    image: str
    status: str  # RUNNING, STAGING, ... (instance_status)
    health: str  # HEALTHY, UNHEALTHY, DRAINING, TIMEOUT, UNKNOWN (autohealing check)
    action: str  # NONE, CREATING, RECREATING, DELETING, ... (current_action)

    def to_dict(self) -> dict[str, str]:
        return dict(vars(self))


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _zone_of(instance_url: str) -> str:
    parts = instance_url.split("/")
    return parts[parts.index("zones") + 1] if "zones" in parts else ""


def _health(mi: compute_v1.ManagedInstance) -> str:
    states = [h.detailed_health_state for h in mi.instance_health if h.detailed_health_state]
    return states[0] if states else "UNKNOWN"


def instance_rows(
    instances: Sequence[compute_v1.ManagedInstance], images: dict[str, str]
) -> list[InstanceRow]:
    """`images` maps a template name to the image its boot disk was made from."""
    rows = []
    for mi in instances:
        template = _last(mi.version.instance_template) if mi.version.instance_template else ""
        rows.append(
            InstanceRow(
                name=mi.name or _last(mi.instance),
                zone=_zone_of(mi.instance),
                template=template,
                image=_last(images.get(template, "")) or "?",
                status=mi.instance_status or "?",
                health=_health(mi),
                action=mi.current_action or "NONE",
            )
        )
    return sorted(rows, key=lambda r: (r.zone, r.name))


def template_image(template: compute_v1.InstanceTemplate) -> str:
    disks = [d for d in template.properties.disks if d.boot]
    return disks[0].initialize_params.source_image if disks else ""


class RolloutPhase(StrEnum):
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RolloutProgress:
    phase: RolloutPhase
    on_target: int  # instances already on the new template
    healthy: int  # ... of which pass the health check
    wanted: int
    detail: str


def rollout_progress(
    instances: Sequence[compute_v1.ManagedInstance],
    *,
    target_template: str,
    wanted: int,
    elapsed: float,
    grace: float = AUTOHEAL_INITIAL_DELAY,
) -> RolloutProgress:
    """Where a rolling update stands, from the group's managed instances.

    Done when exactly `wanted` instances exist, all on `target_template`, healthy, with nothing left to
    do. Failed when an instance on the new template still fails its health check after `grace` (the
    startup script's time to install and mount; until then a failing check is a boot in progress).
    """
    target = _last(target_template)
    new = [mi for mi in instances if _last(mi.version.instance_template) == target]
    healthy = [mi for mi in new if _health(mi) == HEALTHY]
    failing = [mi for mi in new if _health(mi) in FAILING_HEALTH]
    if failing and elapsed >= grace:
        names = ", ".join(sorted(mi.name or _last(mi.instance) for mi in failing))
        return RolloutProgress(
            RolloutPhase.FAILED,
            len(new),
            len(healthy),
            wanted,
            f"{names} on {target} failed the /healthz check for {elapsed:.0f}s",
        )
    settled = all((mi.current_action or "NONE") == "NONE" for mi in instances)
    if len(instances) == wanted and len(healthy) == wanted and settled:
        return RolloutProgress(
            RolloutPhase.DONE, len(new), len(healthy), wanted, f"{wanted} of {wanted} healthy"
        )
    old = len(instances) - len(new)
    return RolloutProgress(
        RolloutPhase.WAITING,
        len(new),
        len(healthy),
        wanted,
        f"{len(healthy)} of {wanted} healthy on {target}; {old} old instance(s) still serving",
    )

"""The group, its load balancer, its firewall and its reader bindings, as the exact request objects.

Two small models stand in for what Google evaluates: `reaches` is VPC firewall rule evaluation (ingress,
per rule: direction, target service account, source range, destination range, protocol/port; the
smallest priority number wins and at equal priority a deny wins over an allow; nothing matching means
the implied deny), and IAM conditions are evaluated with a real CEL interpreter (tests/fixtures/iam.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence

import pytest
from google.cloud import compute_v1

from provisioner.cloud import group, plan
from provisioner.cloud.settings import Settings
from tests.fixtures.iam import evaluate as _evaluate

S = Settings(project="acme-prod", zone="us-central1-a")
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
IMAGE = "projects/acme-prod/global/images/pypapo-20261201-030000"
SCRIPT = "#!/bin/bash\necho pypapo\n"
LB_IP = "10.128.0.50"
VM_IP = "10.128.0.7"


# --- the instance template is the single VM, field for field ---------------------------------------


def test_template_has_exactly_the_single_vms_hardening() -> None:
    vm = plan.desired_instance(S, image=IMAGE, startup_script=SCRIPT)
    t = group.instance_template(S, image=IMAGE, startup_script=SCRIPT).properties
    assert t.shielded_instance_config == vm.shielded_instance_config
    assert t.shielded_instance_config.enable_secure_boot and t.shielded_instance_config.enable_vtpm
    assert t.shielded_instance_config.enable_integrity_monitoring
    assert [list(n.access_configs) for n in t.network_interfaces] == [[]]  # no external IP
    assert list(t.network_interfaces) == list(vm.network_interfaces)
    assert t.metadata == vm.metadata
    meta = {i.key: i.value for i in t.metadata.items}
    assert meta["enable-oslogin"] == "TRUE" and meta["block-project-ssh-keys"] == "TRUE"
    assert meta["serial-port-enable"] == "FALSE" and meta["startup-script"] == SCRIPT
    assert list(t.service_accounts) == list(vm.service_accounts)
    assert t.service_accounts[0].email == "pypapo-vm@acme-prod.iam.gserviceaccount.com"
    assert t.scheduling == vm.scheduling and t.can_ip_forward is False
    assert t.labels == vm.labels
    assert t.machine_type == "e2-small"  # a template names the type, not a zone's URL
    (disk,) = t.disks
    assert disk.boot and disk.auto_delete
    assert disk.initialize_params.source_image == IMAGE
    assert disk.initialize_params.disk_type == "pd-balanced"
    assert disk.initialize_params.disk_size_gb == 10


def test_template_name_follows_its_content() -> None:
    a = group.instance_template(S, image=IMAGE, startup_script=SCRIPT)
    assert a.name == group.instance_template(S, image=IMAGE, startup_script=SCRIPT).name
    assert re.fullmatch(r"pypapo-[0-9a-f]{10}", a.name)
    assert a.name != group.instance_template(S, image=IMAGE + "x", startup_script=SCRIPT).name
    assert a.name != group.instance_template(S, image=IMAGE, startup_script=SCRIPT + "#").name


# --- the group -----------------------------------------------------------------------------------------


def test_group_spreads_over_the_zones_and_autoheals_on_healthz() -> None:
    template = group.instance_template(S, image=IMAGE, startup_script=SCRIPT)
    mig = group.instance_group_manager(S, template_name=template.name, replicas=2, zones=ZONES)
    assert mig.base_instance_name == "pypapo-r"
    assert mig.target_size == 2
    assert [z.zone for z in mig.distribution_policy.zones] == [f"zones/{z}" for z in ZONES]
    assert mig.distribution_policy.target_shape == "EVEN"
    assert mig.instance_template == f"projects/acme-prod/global/instanceTemplates/{template.name}"
    (heal,) = mig.auto_healing_policies
    assert heal.health_check == "projects/acme-prod/global/healthChecks/pypapo-heal-hc"
    assert heal.initial_delay_sec == 300
    check = group.autoheal_health_check(S)
    assert (check.type_, check.http_health_check.port, check.http_health_check.request_path) == (
        "HTTP",
        3333,
        "/livez",
    )
    # Autohealing is lenient (a minute of failures), the load balancer quick (10 s).
    lb = group.lb_health_check(S)
    assert check.check_interval_sec * check.unhealthy_threshold == 60
    assert lb.check_interval_sec * lb.unhealthy_threshold == 10
    assert lb.http_health_check.request_path == "/healthz" and lb.http_health_check.port == 3333


@pytest.mark.parametrize("zones", [1, 3, 4])
def test_rollout_surges_first_and_never_has_an_unavailable_instance(zones: int) -> None:
    req = group.rolling_update_request(S, template_name="pypapo-0123456789", zones=zones)
    policy = req.instance_group_manager_resource.update_policy
    assert (policy.type_, policy.minimal_action, policy.replacement_method) == (
        "PROACTIVE",
        "REPLACE",
        "SUBSTITUTE",
    )
    assert policy.max_unavailable.fixed == 0
    # A regional group refuses a non-zero surge smaller than its number of zones.
    assert policy.max_surge.fixed == zones
    versions = req.instance_group_manager_resource.versions
    assert [v.instance_template for v in versions] == [
        "projects/acme-prod/global/instanceTemplates/pypapo-0123456789"
    ]
    assert (req.project, req.region, req.instance_group_manager) == ("acme-prod", "us-central1", "pypapo")


# --- the internal passthrough load balancer -----------------------------------------------------------


def test_backend_service_and_forwarding_rule() -> None:
    bs = group.backend_service(S)
    assert (bs.load_balancing_scheme, bs.protocol) == ("INTERNAL", "TCP")
    assert [b.group for b in bs.backends] == ["projects/acme-prod/regions/us-central1/instanceGroups/pypapo"]
    assert list(bs.health_checks) == ["projects/acme-prod/global/healthChecks/pypapo-lb-hc"]
    assert bs.connection_draining.draining_timeout_sec == 60
    assert bs.connection_tracking_policy.connection_persistence_on_unhealthy_backends == "NEVER_PERSIST"
    req = group.insert_backend_service_request(S, bs)
    assert req.region == "us-central1"
    rule = group.forwarding_rule(S)
    assert (rule.load_balancing_scheme, rule.I_p_protocol, list(rule.ports)) == ("INTERNAL", "TCP", ["3333"])
    assert rule.I_p_address == "projects/acme-prod/regions/us-central1/addresses/pypapo-ilb"
    assert rule.backend_service == "projects/acme-prod/regions/us-central1/backendServices/pypapo-ilb"
    assert rule.subnetwork == "projects/acme-prod/regions/us-central1/subnetworks/default"
    assert rule.allow_global_access is False
    address = group.internal_address(S)
    assert (address.address_type, address.purpose) == ("INTERNAL", "GCE_ENDPOINT")
    assert group.lb_url(LB_IP, 3333) == "http://10.128.0.50:3333/simple/"


def test_request_objects_serialize_as_the_rest_api_carries_them() -> None:
    doc = plan.to_jsonable(group.forwarding_rule(S))
    assert doc["IPProtocol"] == "TCP" and doc["loadBalancingScheme"] == "INTERNAL"
    doc = plan.to_jsonable(plan.desired_deny_firewall(S))
    assert doc["denied"] == [{"IPProtocol": "tcp", "ports": ["3333"]}]


# --- firewall: who reaches the serving port -------------------------------------------------------------

# The default network's own rules (https://cloud.google.com/vpc/docs/firewalls#more_rules_default_vpc),
# and a broad allow an admin might have added without a priority (default 1000).
DEFAULT_NETWORK = [
    compute_v1.Firewall(
        name="default-allow-internal",
        direction="INGRESS",
        priority=65534,
        source_ranges=["10.128.0.0/9"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["0-65535"])],
    ),
    compute_v1.Firewall(
        name="default-allow-ssh",
        direction="INGRESS",
        priority=65534,
        source_ranges=["0.0.0.0/0"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
    ),
    compute_v1.Firewall(
        name="admin-allow-corp",
        direction="INGRESS",
        priority=1000,
        source_ranges=["10.0.0.0/8"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp")],
    ),
]


def _port_matches(entries: Sequence[compute_v1.Allowed | compute_v1.Denied], port: int) -> bool:
    for e in entries:
        if e.I_p_protocol not in ("tcp", "all"):
            continue
        if not e.ports:
            return True
        for spec in e.ports:
            low, _, high = spec.partition("-")
            if int(low) <= port <= int(high or low):
                return True
    return False


def _in(ip: str, ranges: Sequence[str]) -> bool:
    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(r) for r in ranges)


def reaches(rules: Sequence[compute_v1.Firewall], source: str, dest: str, port: int, account: str) -> str:
    """The rule that decides an ingress TCP connection to an instance running as `account`."""
    matching = []
    for r in rules:
        if r.disabled or r.direction != "INGRESS":
            continue
        if r.target_service_accounts and account not in r.target_service_accounts:
            continue
        if not _in(source, r.source_ranges) or (r.destination_ranges and not _in(dest, r.destination_ranges)):
            continue
        if _port_matches(r.allowed, port):
            matching.append((r.priority, 1, "allow", r.name))
        if _port_matches(r.denied, port):
            matching.append((r.priority, 0, "deny", r.name))  # a deny wins a tie
    if not matching:
        return "deny: implied"
    _, _, action, name = min(matching)
    return f"{action}: {name}"


ACCOUNT = S.service_account_email


def planned_firewalls(clients: Sequence[str] = ()) -> list[compute_v1.Firewall]:
    """The firewall rules `create --replicas 3` plans, with the balancer's address as Google picked it
    (`create` plans the client rule again once the address is reserved)."""
    s = dataclasses.replace(S, replicas=3, lb_clients=tuple(clients))
    resources = plan.plan_create(s, None, startup_script=SCRIPT).resources
    rules = [r.spec for r in resources if r.kind is plan.Kind.FIREWALL]
    for rule in rules:
        if rule.name == group.group_names(s).allow_lb_clients:
            rule.destination_ranges = [f"{LB_IP}/32"]
    return rules


@pytest.mark.parametrize(
    ("source", "dest", "port", "decision"),
    [
        ("35.235.241.7", VM_IP, 3333, "allow: pypapo-allow-iap"),  # IAP TCP forwarding
        ("35.235.241.7", VM_IP, 22, "allow: pypapo-allow-iap"),
        ("35.191.4.2", VM_IP, 3333, "allow: pypapo-allow-hc"),  # health checkers
        ("130.211.1.9", VM_IP, 3333, "allow: pypapo-allow-hc"),
        ("10.128.0.9", VM_IP, 3333, "deny: pypapo-deny-port"),  # any VM: default-allow-internal loses
        ("10.20.0.9", VM_IP, 3333, "deny: pypapo-deny-port"),  # an admin's broad allow at 1000 loses
        ("10.128.0.9", LB_IP, 3333, "allow: pypapo-allow-ilb"),  # a configured client, through the LB
        ("10.20.0.9", LB_IP, 3333, "deny: pypapo-deny-port"),  # not a configured client
        ("10.128.0.9", VM_IP, 8080, "allow: admin-allow-corp"),  # other ports are none of pypapo's business
    ],
)
def test_serving_port_is_reachable_only_through_iap_health_checks_and_the_lb(
    source: str, dest: str, port: int, decision: str
) -> None:
    rules = [*planned_firewalls(clients=["10.128.0.0/20"]), *DEFAULT_NETWORK]
    assert reaches(rules, source, dest, port, ACCOUNT) == decision


def test_health_checkers_reach_the_serving_port_only() -> None:
    rule = group.allow_health_checks(S)
    assert list(rule.source_ranges) == ["35.191.0.0/16", "130.211.0.0/22"]
    assert [(a.I_p_protocol, list(a.ports)) for a in rule.allowed] == [("tcp", ["3333"])]


def test_without_lb_clients_there_is_no_exception() -> None:
    rules = planned_firewalls()
    assert sorted(r.name for r in rules) == ["pypapo-allow-hc", "pypapo-allow-iap", "pypapo-deny-port"]
    assert reaches([*rules, *DEFAULT_NETWORK], "10.128.0.9", LB_IP, 3333, ACCOUNT) == "deny: pypapo-deny-port"
    deny = plan.desired_deny_firewall(S)
    assert plan.ALLOW_PRIORITY < deny.priority < 1000 < 65534


# --- IAM: reader bindings cover exactly the group's instances and the serving port ----------------------


def _tunnel(zone: str, instance: str) -> str:
    return f"projects/acme-prod/iap_tunnel/zones/{zone}/instances/{instance}"


@pytest.mark.parametrize(
    ("resource", "port", "allowed"),
    [
        (_tunnel("us-central1-a", "pypapo-r-x1z9"), 3333, True),
        (_tunnel("us-central1-f", "pypapo-r-a2b3"), 3333, True),
        (_tunnel("us-central1-a", "pypapo-r-x1z9"), 22, False),  # SSH is not the index
        (_tunnel("us-central1-a", "pypapo-builder-20261201-030000"), 3333, False),  # the image builder
        (_tunnel("us-central1-a", "pypapo"), 3333, False),  # a single VM of old
        (_tunnel("us-central1-a", "billing-db"), 3333, False),
        (_tunnel("europe-west1-b", "pypapo-r-x1z9"), 3333, False),  # not a zone of the group's region
        (_tunnel("us-central10-a", "pypapo-r-x1z9"), 3333, False),  # a region whose name extends it
        (_tunnel("us-central1-c", "pypapo-r-n3w1"), 3333, True),  # a zone the group spreads to later
        ("projects/acme-prod/iap_tunnel/zones/us-central1-a", 3333, False),
    ],
)
def test_reader_tunnel_binding_covers_exactly_the_group(resource: str, port: int, allowed: bool) -> None:
    b = group.reader_tunnel_binding(S, "user:alice@example.com")
    assert (b.resource, b.role) == ("projects/acme-prod/iap_tunnel", "roles/iap.tunnelResourceAccessor")
    assert _evaluate(b.expression, resource={"name": resource}, destination={"port": port}) is allowed


@pytest.mark.parametrize(
    ("name", "kind", "allowed"),
    [
        ("projects/acme-prod/regions/us-central1/instanceGroupManagers/pypapo", "InstanceGroupManager", True),
        ("projects/acme-prod/zones/us-central1-b/instances/pypapo-r-q7w8", "Instance", True),
        ("projects/acme-prod/zones/us-central1-b/instances/billing-db", "Instance", False),
        ("projects/acme-prod/regions/us-central1/instanceGroupManagers/other", "InstanceGroupManager", False),
        ("projects/acme-prod/global/images/pypapo-20261201", "Image", False),
    ],
)
def test_reader_viewer_binding_reads_the_group_only(name: str, kind: str, allowed: bool) -> None:
    b = group.reader_viewer_binding(S, "user:alice@example.com")
    assert (b.resource, b.role) == ("projects/acme-prod", "roles/compute.viewer")
    resource = {"name": name, "type": f"compute.googleapis.com/{kind}"}
    assert _evaluate(b.expression, resource=resource) is allowed


def test_binding_document_names_the_condition() -> None:
    doc = group.reader_tunnel_binding(S, "group:devs@example.com").to_dict()
    assert doc["members"] == ["group:devs@example.com"]
    assert doc["condition"]["expression"] == (
        'destination.port == 3333 && resource.name.extract("/zones/{zone}/instances/")'
        '.startsWith("us-central1-") && resource.name.extract("/instances/{name}")'
        '.startsWith("pypapo-r-")'
    )


# --- status rows and rollout progress ------------------------------------------------------------------

OLD_T = "projects/acme-prod/global/instanceTemplates/pypapo-aaaaaaaaaa"
NEW_T = "projects/acme-prod/global/instanceTemplates/pypapo-bbbbbbbbbb"


def _mi(name: str, zone: str, template: str, health: str, action: str = "NONE") -> compute_v1.ManagedInstance:
    return compute_v1.ManagedInstance(
        name=name,
        instance=f"https://www.googleapis.com/compute/v1/projects/acme-prod/zones/{zone}/instances/{name}",
        instance_status="RUNNING",
        current_action=action,
        version=compute_v1.ManagedInstanceVersion(instance_template=template),
        instance_health=[compute_v1.ManagedInstanceInstanceHealth(detailed_health_state=health)],
    )


def test_status_rows_show_instance_zone_image_and_health() -> None:
    rows = group.instance_rows(
        [
            _mi("pypapo-r-b2", "us-central1-b", NEW_T, "UNHEALTHY", "VERIFYING"),
            _mi("pypapo-r-a1", "us-central1-a", OLD_T, "HEALTHY"),
        ],
        {
            "pypapo-aaaaaaaaaa": "projects/acme-prod/global/images/pypapo-1",
            "pypapo-bbbbbbbbbb": "projects/acme-prod/global/images/pypapo-2",
        },
    )
    assert [r.to_dict() for r in rows] == [
        {
            "name": "pypapo-r-a1",
            "zone": "us-central1-a",
            "template": "pypapo-aaaaaaaaaa",
            "image": "pypapo-1",
            "status": "RUNNING",
            "health": "HEALTHY",
            "action": "NONE",
        },
        {
            "name": "pypapo-r-b2",
            "zone": "us-central1-b",
            "template": "pypapo-bbbbbbbbbb",
            "image": "pypapo-2",
            "status": "RUNNING",
            "health": "UNHEALTHY",
            "action": "VERIFYING",
        },
    ]


def test_template_image_is_the_boot_disks_source() -> None:
    t = group.instance_template(S, image=IMAGE, startup_script=SCRIPT)
    assert group.template_image(t) == IMAGE


def _progress(instances: list[compute_v1.ManagedInstance], elapsed: float = 30) -> group.RolloutProgress:
    return group.rollout_progress(instances, target_template=NEW_T, wanted=2, elapsed=elapsed)


def test_rollout_waits_while_surge_instances_boot_and_old_ones_serve() -> None:
    p = _progress(
        [
            _mi("a", "us-central1-a", OLD_T, "HEALTHY"),
            _mi("b", "us-central1-b", OLD_T, "HEALTHY"),
            _mi("c", "us-central1-a", NEW_T, "UNHEALTHY", "VERIFYING"),
        ]
    )
    assert p.phase is group.RolloutPhase.WAITING
    assert "2 old instance(s) still serving" in p.detail


def test_rollout_is_done_only_when_every_instance_is_new_healthy_and_settled() -> None:
    done = [_mi("c", "us-central1-a", NEW_T, "HEALTHY"), _mi("d", "us-central1-b", NEW_T, "HEALTHY")]
    assert _progress(done).phase is group.RolloutPhase.DONE
    # an old instance still being deleted, or a new one still verifying: not yet
    assert (
        _progress([*done, _mi("a", "us-central1-a", OLD_T, "HEALTHY", "DELETING")]).phase
        is group.RolloutPhase.WAITING
    )
    assert (
        _progress([done[0], _mi("d", "us-central1-b", NEW_T, "HEALTHY", "VERIFYING")]).phase
        is group.RolloutPhase.WAITING
    )


def test_rollout_fails_when_new_instances_stay_unhealthy_past_the_boot_grace() -> None:
    stuck = [
        _mi("a", "us-central1-a", OLD_T, "HEALTHY"),
        _mi("b", "us-central1-b", OLD_T, "HEALTHY"),
        _mi("c", "us-central1-a", NEW_T, "TIMEOUT", "VERIFYING"),
    ]
    assert _progress(stuck, elapsed=60).phase is group.RolloutPhase.WAITING  # still booting
    failed = _progress(stuck, elapsed=301)
    assert failed.phase is group.RolloutPhase.FAILED
    assert failed.detail.startswith("c on pypapo-bbbbbbbbbb failed the /healthz check")


@pytest.mark.parametrize(
    ("resource", "port", "allowed"),
    [
        (_tunnel("us-central1-a", "pypapo-r-x1z9"), 22, True),
        (_tunnel("us-central1-a", "pypapo-r-x1z9"), 3333, False),  # a verifier is not a reader
        (_tunnel("us-central1-a", "billing-db"), 22, False),
        (_tunnel("us-central1-a", "pypapo-builder-20261201-030000"), 22, False),
    ],
)
def test_verifier_tunnels_to_sshd_of_the_group_only(resource: str, port: int, allowed: bool) -> None:
    tunnel = group.verifier_bindings(S, "user:ops@example.com")[0]
    assert (tunnel.resource, tunnel.role) == ("projects/acme-prod/iap_tunnel", plan.TUNNEL_ROLE)
    assert _evaluate(tunnel.expression, resource={"name": resource}, destination={"port": port}) is allowed


def test_verifier_gets_os_login_on_the_group_and_acts_as_the_vm_account_only() -> None:
    _tunnel_binding, os_login, act_as = group.verifier_bindings(S, "user:ops@example.com")
    assert (os_login.resource, os_login.role) == ("projects/acme-prod", "roles/compute.osLogin")
    ok = {"name": "projects/acme-prod/zones/us-central1-b/instances/pypapo-r-q7w8", "type": INSTANCE}
    other = {"name": "projects/acme-prod/zones/us-central1-b/instances/billing-db", "type": INSTANCE}
    assert _evaluate(os_login.expression, resource=ok) and not _evaluate(os_login.expression, resource=other)
    # OS Login on a VM that runs as a service account requires actAs on that account, and only that one
    assert act_as.role == "roles/iam.serviceAccountUser"
    assert act_as.resource == f"projects/acme-prod/serviceAccounts/{S.service_account_email}"
    assert "condition" not in act_as.to_dict() and "condition" in os_login.to_dict()
    assert "roles/compute.osLoginExternalUser" in group.VERIFIER_EXTERNAL_NOTE


INSTANCE = "compute.googleapis.com/Instance"

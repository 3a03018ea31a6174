"""The group mode's plan (`--replicas N`): the exact request objects `create` sends, in dependency order,
what a live plan reconciles, the migration's last step, and what `destroy` removes in which order."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from google.cloud import compute_v1

from provisioner.cli import main
from provisioner.cloud import group, group_plan
from provisioner.cloud import plan as planlib
from provisioner.cloud.group_plan import GroupActual
from provisioner.cloud.settings import Settings

S = Settings(project="acme-prod", zone="us-central1-a", replicas=3)
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
SCRIPT = "#!/bin/bash\necho pypapo\n"
IMAGE = "projects/acme-prod/global/images/pypapo-20261201-030000"
NEWER = "projects/acme-prod/global/images/pypapo-20261208-030000"


def _kinds(plan: planlib.Plan) -> list[tuple[str, str]]:
    return [(str(r.kind), str(r.action)) for r in plan.resources]


def test_offline_group_plan_creates_everything_in_dependency_order_and_no_vm() -> None:
    plan = planlib.plan_create(S, None, startup_script=SCRIPT)
    assert [k for k, _ in _kinds(plan)] == [
        "bucket",
        "service_account",
        "bucket_iam_binding",
        "subnetwork",
        "firewall",  # IAP
        "firewall",  # deny
        "firewall",  # health checkers
        "image",  # the family's first image, baked before the template can name it
        "instance_template",
        "health_check",
        "health_check",
        "instance_group",
        "backend_service",
        "address",
        "forwarding_rule",
    ]
    methods = [str(st.method) for st in plan.steps]
    assert "compute.insert_instance" not in methods
    # a forwarding rule needs its address and backend service, a backend service its group and check
    order = {m: i for i, m in enumerate(methods)}
    assert (
        order["compute.insert_instance_template"]
        < order["compute.insert_region_instance_group_manager"]
        < order["compute.insert_region_backend_service"]
        < order["compute.insert_address"]
        < order["compute.insert_forwarding_rule"]
    )


def test_offline_json_carries_the_exact_request_objects() -> None:
    result = CliRunner().invoke(
        main,
        ["plan", "--offline", "--output", "json", "--project", "acme-prod", "--zone", "us-central1-a"],
        env={"PYPAPO_REPLICAS": "3"},
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["settings"]["replicas"] == 3
    steps = {s["method"]: s["request"] for r in doc["resources"] for s in r["steps"]}
    template = group.instance_template(
        S, image="projects/acme-prod/global/images/family/pypapo", startup_script=_script()
    )
    assert steps["compute.insert_instance_template"] == planlib.to_jsonable(
        group.insert_template_request(S, template)
    )
    mig = steps["compute.insert_region_instance_group_manager"]["instanceGroupManagerResource"]
    assert mig["targetSize"] == 3 and mig["baseInstanceName"] == "pypapo-r"
    assert mig["autoHealingPolicies"] == [
        {"healthCheck": "projects/acme-prod/global/healthChecks/pypapo-heal-hc", "initialDelaySec": 300}
    ]
    assert mig["updatePolicy"]["maxUnavailable"] == {"fixed": 0}
    assert mig["updatePolicy"]["minimalAction"] == "REPLACE"
    rule = steps["compute.insert_forwarding_rule"]["forwardingRuleResource"]
    assert rule["loadBalancingScheme"] == "INTERNAL" and rule["ports"] == ["3333"]
    assert rule["backendService"] == "projects/acme-prod/regions/us-central1/backendServices/pypapo-ilb"
    hc_rule = next(
        s["request"]["firewallResource"]
        for r in doc["resources"]
        for s in r["steps"]
        if s["method"] == "compute.insert_firewall" and r["name"] == "pypapo-allow-hc"
    )
    assert hc_rule["sourceRanges"] == ["35.191.0.0/16", "130.211.0.0/22"]
    assert hc_rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["3333"]}]  # the serving port only
    checks = [
        r["steps"][0]["request"]["healthCheckResource"]
        for r in doc["resources"]
        if r["kind"] == "health_check"
    ]
    assert [c["name"] for c in checks] == ["pypapo-lb-hc", "pypapo-heal-hc"]
    # the balancer asks for readiness (/healthz), the autohealer only for liveness (/livez)
    assert [c["httpHealthCheck"]["requestPath"] for c in checks] == ["/healthz", "/livez"]
    for check in checks:
        assert check["httpHealthCheck"]["port"] == 3333


def _script() -> str:
    from provisioner.cloud.apply import startup_script

    return startup_script(S)


def test_without_replicas_the_plan_is_todays_single_vm() -> None:
    single = Settings(project="acme-prod", zone="us-central1-a")
    kinds = [k for k, _ in _kinds(planlib.plan_create(single, None, startup_script=SCRIPT))]
    assert kinds[-1] == "instance" and "instance_group" not in kinds and "forwarding_rule" not in kinds


# --- live plans: what exists is read, only the difference is sent --------------------------------------


def _existing(s: Settings = S, *, image: str = IMAGE, script: str = SCRIPT, size: int = 3) -> planlib.Actual:
    """Everything the group mode makes, as create left it (the API's read-back forms)."""
    template = group.instance_template(s, image=image, startup_script=script)
    template.creation_timestamp = "2026-12-01T03:10:00.000-08:00"
    mig = group.instance_group_manager(s, template_name=template.name, replicas=size, zones=ZONES)
    mig.target_size = size
    return planlib.Actual(
        bucket=planlib.desired_bucket(s),
        bucket_members={planlib.VM_BUCKET_ROLE: {planlib.service_account_member(s)}},
        service_account=compute_v1_sa(s),
        subnetwork=compute_v1.Subnetwork(name="default", private_ip_google_access=True),
        firewall=planlib.desired_firewall(s),
        deny_firewall=planlib.desired_deny_firewall(s),
        instance=None,
        image_family_exists=True,
        group=GroupActual(
            zones=ZONES,
            family_image=NEWER,  # the family moved on: create does not roll out, rollout does
            templates=[template],
            lb_health_check=group.lb_health_check(s),
            autoheal_health_check=group.autoheal_health_check(s),
            manager=mig,
            backend_service=group.backend_service(s),
            address=group.internal_address(s, "10.128.0.50"),
            forwarding_rule=group.forwarding_rule(s),
            allow_health_checks=group.allow_health_checks(s),
        ),
    )


def compute_v1_sa(s: Settings) -> Any:
    from google.cloud import iam_admin_v1

    return iam_admin_v1.ServiceAccount(email=s.service_account_email)


def test_a_second_create_sends_nothing_and_keeps_the_groups_image() -> None:
    plan = planlib.plan_create(S, _existing(), startup_script=SCRIPT)
    assert not plan.changed, plan.to_text()
    assert not plan.steps


def test_a_new_startup_script_is_a_surge_first_rolling_update_on_the_same_image() -> None:
    plan = planlib.plan_create(S, _existing(), startup_script=SCRIPT + "# v2\n")
    changed = [(r.kind, r.action) for r in plan.resources if r.action not in planlib.UNCHANGED]
    assert changed == [
        (planlib.Kind.INSTANCE_TEMPLATE, planlib.Action.CREATE),
        (planlib.Kind.INSTANCE_GROUP, planlib.Action.UPDATE),
    ]
    template = next(r for r in plan.resources if r.kind is planlib.Kind.INSTANCE_TEMPLATE).spec
    assert group.template_image(template) == IMAGE  # not the family's newer image
    (patch,) = next(r for r in plan.resources if r.kind is planlib.Kind.INSTANCE_GROUP).steps
    assert patch.method is planlib.Method.PATCH_INSTANCE_GROUP
    body = patch.request.instance_group_manager_resource
    assert body.versions[0].instance_template.endswith(f"/instanceTemplates/{template.name}")
    assert body.update_policy.max_surge.fixed == 4  # one per zone of the group
    assert body.update_policy.max_unavailable.fixed == 0


def test_a_new_replica_count_resizes_the_group() -> None:
    plan = planlib.plan_create(
        Settings(project="acme-prod", zone="us-central1-a", replicas=5), _existing(), startup_script=SCRIPT
    )
    (step,) = plan.steps
    assert step.method is planlib.Method.RESIZE_INSTANCE_GROUP
    assert step.request == compute_v1.ResizeRegionInstanceGroupManagerRequest(
        project="acme-prod", region="us-central1", instance_group_manager="pypapo", size=5
    )


def test_a_changed_health_check_is_updated_in_place() -> None:
    actual = _existing()
    actual.group.lb_health_check.http_health_check.request_path = "/"
    plan = planlib.plan_create(S, actual, startup_script=SCRIPT)
    (step,) = plan.steps
    assert step.method is planlib.Method.UPDATE_HEALTH_CHECK
    assert step.request.health_check_resource.http_health_check.request_path == "/healthz"


def test_a_new_group_pins_the_familys_newest_image() -> None:
    actual = _existing()
    actual.group.manager = None
    actual.group.templates = []
    plan = planlib.plan_create(S, actual, startup_script=SCRIPT)
    template = next(r for r in plan.resources if r.kind is planlib.Kind.INSTANCE_TEMPLATE).spec
    assert group.template_image(template) == NEWER
    mig = next(r for r in plan.resources if r.kind is planlib.Kind.INSTANCE_GROUP).spec
    assert [z.zone for z in mig.distribution_policy.zones] == [f"zones/{z}" for z in ZONES]
    assert not any(r.kind is planlib.Kind.IMAGE for r in plan.resources)


def test_migration_deletes_the_single_vm_and_its_tunnel_readers_last() -> None:
    actual = _existing()
    actual.instance = planlib.desired_instance(S, image=IMAGE, startup_script=SCRIPT)
    actual.group.old_vm_tunnel_members = ["user:alice@example.com"]
    plan = planlib.plan_create(S, actual, startup_script=SCRIPT)
    last = plan.resources[-1]
    assert (last.kind, last.action) == (planlib.Kind.INSTANCE, planlib.Action.DELETE)
    assert [str(st.method) for st in last.steps] == [
        "iam.remove_member",
        "compute.set_deletion_protection",
        "compute.delete_instance",
    ]
    assert last.steps[0].request == planlib.IamChange(
        planlib.IamResource.IAP_TUNNEL_INSTANCE,
        "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo",
        planlib.TUNNEL_ROLE,
        "user:alice@example.com",
    )
    assert any("--role reader --replicas 3" in n for n in last.notes)


# --- destroy -------------------------------------------------------------------------------------------


def test_destroy_removes_the_group_in_dependency_order() -> None:
    actual = _existing()
    older = group.instance_template(S, image="projects/acme-prod/global/images/old", startup_script=SCRIPT)
    actual.group.templates.append(older)
    plans = group_plan.group_destroy_plans(S, actual.group)
    assert [(str(p.kind), p.name) for p in plans] == [
        ("forwarding_rule", "us-central1/pypapo-ilb"),
        ("address", "us-central1/pypapo-ilb"),
        ("backend_service", "us-central1/pypapo-ilb"),
        ("instance_group", "us-central1/pypapo"),
        *sorted(("instance_template", t.name) for t in actual.group.templates),
        ("health_check", "pypapo-lb-hc"),
        ("health_check", "pypapo-heal-hc"),
        ("firewall", "pypapo-allow-hc"),
    ]
    assert all(p.action is planlib.Action.DELETE for p in plans)
    assert plans[3].steps[0].request == compute_v1.DeleteRegionInstanceGroupManagerRequest(
        project="acme-prod", region="us-central1", instance_group_manager="pypapo"
    )


def test_only_pypapos_templates_are_its_own() -> None:
    assert group_plan.is_pypapo_template(S, "pypapo-0123456789")
    for other in (
        "pypapo-builder-2026",
        "pypapo-01234567",
        "pypapo-0123456789a",
        "web-0123456789",
        "pypapo-ABCDEF0123",
    ):
        assert not group_plan.is_pypapo_template(S, other)


def test_rollback_goes_to_the_template_before_the_current_one() -> None:
    actual = _existing().group
    current = actual.templates[0]
    old = group.instance_template(S, image="projects/acme-prod/global/images/a", startup_script=SCRIPT)
    old.creation_timestamp = "2026-11-24T03:10:00.000-08:00"
    oldest = group.instance_template(S, image="projects/acme-prod/global/images/b", startup_script=SCRIPT)
    oldest.creation_timestamp = "2026-11-17T03:10:00.000-08:00"
    newer = group.instance_template(S, image="projects/acme-prod/global/images/c", startup_script=SCRIPT)
    newer.creation_timestamp = "2026-12-02T03:10:00.000-08:00"  # a failed rollout's, never served
    actual.templates += [oldest, newer, old]
    assert actual.current_template == current.name
    assert group_plan.previous_template(actual) is old


def test_a_stopped_update_goes_back_to_the_old_template_and_turns_opportunistic() -> None:
    req = group_plan.stop_update_request(S, back_to="pypapo-aaaaaaaaaa", zones=4)
    body = req.instance_group_manager_resource
    assert body.update_policy.type_ == "OPPORTUNISTIC"
    assert [v.instance_template for v in body.versions] == [
        "projects/acme-prod/global/instanceTemplates/pypapo-aaaaaaaaaa"
    ]


def test_a_groups_nginx_answers_googles_health_checkers_and_the_single_vm_does_not() -> None:
    """Autohealing and the load balancer judge instances by /healthz from 35.191.0.0/16 and
    130.211.0.0/22: NGINX's source wall must let them in, or no instance would ever be healthy."""
    from provisioner.cloud.apply import startup_script

    grouped = startup_script(S)
    single = startup_script(Settings(project="acme-prod", zone="us-central1-a"))
    for source in group.HEALTH_CHECK_RANGES:
        assert f"        {source} 1;" in grouped
        assert source not in single
    assert "        35.235.240.0/20 1;" in grouped and "        35.235.240.0/20 1;" in single

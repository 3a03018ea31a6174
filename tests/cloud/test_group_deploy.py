"""The group mode end to end over the Compute Engine double (`tests/doubles/compute.py`): create
(from an empty project, and as the migration from a single VM), status, rollout (and one whose new
instances never get healthy, and one whose startup script reports an error), rollback and destroy.

The real thin layer (`cloud/gcp/compute.py`), planning, ordering and waiting run for real; the double
simulates the group manager one step per poll, so every assertion about "no moment without N healthy
instances" is checked at every poll of the rollout.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.cloud import apply as deploy
from provisioner.cloud import group, group_apply
from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.settings import Settings
from tests.cloud.test_create import SCRIPT, is_builder
from tests.doubles.compute import ComputeEngine, FakeClock, bake_done, ready_after
from tests.doubles.layers import FakeIam, FakeStorage

S = Settings(project="acme-prod", zone="us-central1-a", replicas=3)
T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)


def group_cloud() -> tuple[deploy.Cloud, ComputeEngine]:
    """An empty project whose family bakes on the second poll and whose instances turn healthy."""
    log: list[tuple[str, Any]] = []
    storage = FakeStorage(log)
    engine = ComputeEngine("acme-prod", "us-central1-a", log=log)
    engine.new_guest = lambda name: bake_done() if is_builder(name) else ready_after(0)
    clients = engine.clients()
    cloud = deploy.Cloud(Compute(clients), storage, FakeIam("acme-prod", log), storage.open_repository)
    return cloud, engine


def create(cloud: deploy.Cloud, s: Settings = S, clock: FakeClock | None = None, **kw: Any) -> planlib.Plan:
    clock = clock or FakeClock()
    return deploy.create(
        cloud,
        s,
        script=SCRIPT,
        progress=kw.pop("progress", lambda _m: None),
        sleep=clock.sleep,
        clock=clock,
        **kw,
    )


def serving(engine: ComputeEngine) -> list[tuple[str, str]]:
    """(instance, template) of the group's instances that are not being deleted."""
    return sorted((m.name, m.template) for m in engine.group_instances())


def watch_availability(engine: ComputeEngine, wanted: int) -> list[int]:
    """Record, at every poll of the group, how many instances were available (RUNNING, no action,
    HEALTHY): what the load balancer could send connections to."""
    seen: list[int] = []
    step = engine.step

    def observed(name: str, *, age: bool = True) -> None:
        step(name, age=age)
        if age:
            seen.append(
                sum(
                    1
                    for mi in engine.managed_instances(name)
                    if mi.current_action == "NONE"
                    and mi.instance_health[0].detailed_health_state == "HEALTHY"
                )
            )

    engine.step = observed  # type: ignore[method-assign]
    return seen


# --- create --------------------------------------------------------------------------------------------


def test_create_bakes_then_builds_the_group_and_its_load_balancer_and_waits_until_healthy() -> None:
    cloud, engine = group_cloud()
    lines: list[str] = []
    create(cloud, progress=lines.append)
    (image,) = engine.images
    (template,) = engine.instance_templates.values()
    # the template pins the image the bake made, not the family
    assert group.template_image(template).endswith(f"/global/images/{image}")
    mig = engine.instance_group_managers["pypapo"]
    assert [z.zone.rsplit("/", 1)[-1] for z in mig.distribution_policy.zones] == [
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
        "us-central1-f",
    ]
    assert mig.update_policy.max_surge.fixed == 4 and mig.update_policy.max_unavailable.fixed == 0
    members = engine.group_instances()
    assert len(members) == 3 and {m.template for m in members} == {template.name}
    assert len({m.zone for m in members}) == 3  # EVEN over the zones
    assert all(m.action == "NONE" for m in members)
    assert set(engine.forwarding_rules) == {"pypapo-ilb"} and set(engine.backend_services) == {"pypapo-ilb"}
    assert set(engine.health_checks) == {"pypapo-lb-hc", "pypapo-heal-hc"}
    assert set(engine.firewalls) == {"pypapo-allow-iap", "pypapo-allow-hc", "pypapo-deny-port"}
    assert "pypapo" not in engine.instances  # no single VM in the group mode
    writes = [w for w in engine.writes() if not w.startswith(("instances.", "disks.", "images."))]
    assert writes == [
        "subnetworks.set_private_ip_google_access",
        "firewalls.insert",  # IAP
        "firewalls.insert",  # deny
        "firewalls.insert",  # health checkers
        "instance_templates.insert",
        "health_checks.insert",
        "health_checks.insert",
        "region_instance_group_managers.insert",
        "region_backend_services.insert",
        "addresses.insert",
        "forwarding_rules.insert",
    ]
    assert any("3 of 3 healthy" in line for line in lines)


def test_a_second_create_sends_nothing() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    before = len(engine.writes())
    plan = create(cloud)
    assert not plan.changed
    assert engine.writes()[before:] == []


def test_create_stops_at_the_first_poll_that_shows_a_startup_error() -> None:
    cloud, engine = group_cloud()
    engine.group_guest = lambda _t, name: lambda: {"error": "mount: gcsfuse exited: bucket not found"}
    engine.health = lambda _t, _n: "UNHEALTHY"
    clock = FakeClock()
    with pytest.raises(group_apply.RolloutFailed) as err:
        create(cloud, clock=clock)
    message = str(err.value)
    assert "reported an error: mount: gcsfuse exited: bucket not found" in message
    assert "gcloud compute instances get-serial-port-output pypapo-r-" in message
    assert "--zone us-central1-" in message
    assert clock.now < 60  # seconds, not the 10-minute budget
    assert "provision create --replicas 3` again" in message


def test_status_shows_each_instance_its_zone_image_health_and_the_lb_url(monkeypatch) -> None:
    cloud, engine = group_cloud()
    create(cloud)
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)  # what create was given
    report = group_apply.status(cloud, S)
    (image,) = engine.images
    g = report["group"]
    assert g["target_size"] == 3 and g["healthy"] == 3 and g["image"] == image
    assert [(i["zone"], i["image"], i["health"], i["action"]) for i in g["instances"]] == [
        ("us-central1-a", image, "HEALTHY", "NONE"),
        ("us-central1-b", image, "HEALTHY", "NONE"),
        ("us-central1-c", image, "HEALTHY", "NONE"),
    ]
    ip = engine.addresses["pypapo-ilb"].address
    assert report["load_balancer"] == {
        "forwarding_rule": "pypapo-ilb",
        "address": ip,
        "url": f"http://{ip}:3333/simple/",
    }
    assert report["in_sync"], report["drift"]
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, progress=None: cloud))
    text = CliRunner().invoke(
        main, ["status", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "3"]
    )
    assert text.exit_code == 0, text.output
    assert f"load balancer: http://{ip}:3333/simple/" in text.output
    assert "3 of 3 healthy" in text.output
    for i in g["instances"]:
        assert i["name"] in text.output and i["zone"] in text.output
    assert g["content_warning"] is None and "warning" not in text.output
    # Every replica serves the one bucket: a broken channel document shows once, for the group.
    broken = "conda channel unavailable: conda/noarch/repodata.json is empty (0 bytes)"
    for m in engine.group_instances():
        engine.guest[m.name] = lambda: {"ready": "true", "status": "ready", "content": broken}
    text = CliRunner().invoke(
        main, ["status", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "3"]
    )
    assert f"warning: group pypapo serves, but its {broken}" in text.output


# --- rollout and rollback ------------------------------------------------------------------------------


def _new_image(engine: ComputeEngine, name: str = "pypapo-20261208-030000") -> str:
    engine.add_image(name, engine.clock + dt.timedelta(days=7))
    return f"projects/acme-prod/global/images/{name}"


def test_rollout_replaces_every_instance_surge_first_without_a_moment_below_n_healthy() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    old = {m.name for m in engine.group_instances()}
    image = _new_image(engine)
    seen = watch_availability(engine, 3)
    clock = FakeClock()
    rolled = group_apply.rollout(cloud, S, image, script=SCRIPT, sleep=clock.sleep, clock=clock)
    assert rolled.changed and rolled.previous != rolled.template
    members = engine.group_instances()
    assert len(members) == 3 and {m.template for m in members} == {rolled.template}
    assert not old & {m.name for m in members}  # every instance was replaced
    assert seen and min(seen) >= 3  # never fewer than N instances serving
    assert engine.instance_group_managers["pypapo"].update_policy.type_ == "PROACTIVE"
    # the request: one version, the new template, surge = zones, none unavailable
    (patch,) = engine.requests("region_instance_group_managers.patch")
    body = patch.instance_group_manager_resource
    assert body.versions[0].instance_template.endswith(f"/instanceTemplates/{rolled.template}")
    assert (body.update_policy.max_surge.fixed, body.update_policy.max_unavailable.fixed) == (4, 0)
    again = group_apply.rollout(cloud, S, image, script=SCRIPT, sleep=clock.sleep, clock=clock)
    assert not again.changed


def test_a_rollout_whose_new_instances_never_get_healthy_stops_and_the_old_ones_keep_serving() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    old = serving(engine)
    image = _new_image(engine)
    bad = group.instance_template(S, image=image, startup_script=SCRIPT).name
    engine.health = lambda template, _name: "UNHEALTHY" if template == bad else "HEALTHY"
    seen = watch_availability(engine, 3)
    clock = FakeClock()
    with pytest.raises(group_apply.RolloutFailed) as err:
        group_apply.rollout(cloud, S, image, script=SCRIPT, sleep=clock.sleep, clock=clock)
    message = str(err.value)
    assert f"rollout of group pypapo to {bad} stopped" in message
    assert "failed the /healthz check" in message
    assert "gcloud compute instances get-serial-port-output pypapo-r-" in message
    good = old[0][1]
    assert f"the instances on {good} keep serving" in message
    mig = engine.instance_group_managers["pypapo"]
    assert mig.update_policy.type_ == "OPPORTUNISTIC"
    assert mig.versions[0].instance_template.endswith(f"/{good}")
    engine.settle()
    assert serving(engine) == old  # the surge instances are gone, the old ones untouched
    assert min(seen) >= 3


def test_a_rollout_stops_at_once_when_a_new_instance_reports_an_error() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    old = serving(engine)
    image = _new_image(engine)
    bad = group.instance_template(S, image=image, startup_script=SCRIPT).name
    engine.group_guest = lambda template, _n: (
        (lambda: {"error": "nginx -t: unknown directive"}) if template == bad else None
    )
    engine.health = lambda template, _name: "UNHEALTHY" if template == bad else "HEALTHY"
    clock = FakeClock()
    with pytest.raises(group_apply.RolloutFailed, match="reported an error: nginx -t: unknown directive"):
        group_apply.rollout(cloud, S, image, script=SCRIPT, sleep=clock.sleep, clock=clock)
    assert clock.now < 60
    engine.settle()
    assert serving(engine) == old


def test_a_rollout_finishes_with_a_warning_when_the_new_instances_report_a_broken_conda_channel() -> None:
    """A broken channel document is the bucket's, not the image's: the security-patched image still
    rolls out (the new instances are healthy), and the broken file and its fix are printed."""
    from tests.cloud.test_create import BROKEN_CHANNEL

    cloud, engine = group_cloud()
    create(cloud)
    image = _new_image(engine)
    new = group.instance_template(S, image=image, startup_script=SCRIPT).name
    engine.group_guest = lambda template, _n: (
        (lambda: {"ready": "true", "content": BROKEN_CHANNEL}) if template == new else None
    )
    messages: list[str] = []
    clock = FakeClock()
    rolled = group_apply.rollout(
        cloud, S, image, script=SCRIPT, progress=messages.append, sleep=clock.sleep, clock=clock
    )
    assert rolled.changed and {m.template for m in engine.group_instances()} == {new}
    (warning,) = [m for m in messages if "warning" in m]
    assert warning.startswith("  warning: pypapo-r-") and warning.endswith(
        f"serves, but its {BROKEN_CHANNEL}"
    )


def test_rollback_rolls_back_to_the_previous_template() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    first = engine.group_instances()[0].template
    clock = FakeClock()
    rolled = group_apply.rollout(cloud, S, _new_image(engine), script=SCRIPT, sleep=clock.sleep, clock=clock)
    seen = watch_availability(engine, 3)
    back = group_apply.rollback(cloud, S, sleep=clock.sleep, clock=clock)
    assert (back.template, back.previous) == (first, rolled.template)
    assert {m.template for m in engine.group_instances()} == {first}
    assert min(seen) >= 3


def test_rollout_without_a_group_says_how_to_make_one() -> None:
    cloud, _engine = group_cloud()
    with pytest.raises(
        Exception, match=r"no group pypapo in us-central1 of acme-prod: run `provision create --replicas N`"
    ):
        group_apply.rollout(cloud, S, "projects/acme-prod/global/images/x", script=SCRIPT)


def test_cli_rollout_and_rollback_of_a_group(monkeypatch) -> None:
    cloud, engine = group_cloud()
    create(cloud)
    first = engine.group_instances()[0].template
    newest = "pypapo-20261208-030000"
    _new_image(engine, newest)
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, progress=None: cloud))
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)
    monkeypatch.setattr(group_apply.time, "sleep", lambda _s: None)
    args = ["--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "3", "--yes"]
    result = CliRunner().invoke(main, ["rollout", *args])
    assert result.exit_code == 0, result.output
    assert f"group pypapo now runs {newest}" in result.output
    assert {
        group.template_image(engine.instance_templates[m.template]).rsplit("/", 1)[-1]
        for m in engine.group_instances()
    } == {newest}
    result = CliRunner().invoke(main, ["rollback", *args])
    assert result.exit_code == 0, result.output
    assert {m.template for m in engine.group_instances()} == {first}
    assert engine.images[newest].deprecated.state == "DEPRECATED"  # the family no longer picks it


def test_cli_rollout_dry_run_of_a_group_needs_nothing() -> None:
    result = CliRunner().invoke(
        main, ["rollout", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "3", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [s["call"] for s in doc["steps"]] == [
        "compute.instanceTemplates.insert",
        "compute.regionInstanceGroupManagers.patch",
    ]
    patch = doc["steps"][1]["request"]["instanceGroupManagerResource"]
    assert patch["updatePolicy"]["maxUnavailable"] == {"fixed": 0}
    assert patch["updatePolicy"]["replacementMethod"] == "SUBSTITUTE"


# --- destroy -------------------------------------------------------------------------------------------


def test_destroy_removes_everything_the_group_made_in_dependency_order() -> None:
    cloud, engine = group_cloud()
    create(cloud)
    group_apply.rollout(cloud, S, _new_image(engine), script=SCRIPT, sleep=lambda _s: None)
    before = len(engine.calls)
    deploy.destroy(cloud, S, delete_bucket=False)
    deletes = [c.method for c in engine.calls[before:] if c.write]
    assert deletes == [
        "forwarding_rules.delete",
        "addresses.delete",
        "region_backend_services.delete",
        "region_instance_group_managers.delete",
        "instance_templates.delete",
        "instance_templates.delete",
        "health_checks.delete",
        "health_checks.delete",
        "firewalls.delete",  # health checkers
        "firewalls.delete",  # IAP
        "firewalls.delete",  # deny
    ]
    for kind in (
        "instance_templates",
        "health_checks",
        "instance_group_managers",
        "backend_services",
        "addresses",
        "forwarding_rules",
        "firewalls",
    ):
        assert not len(getattr(engine, kind)), kind
    assert not [n for n in engine.instances if n.startswith("pypapo-r-")]
    assert not deploy.destroy(cloud, S, delete_bucket=False).changed


def test_destroy_converges_when_someone_else_deleted_a_resource_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two admins (or a destroy retried after a timeout): what vanished between destroy's read and its
    delete is answered 404 by the API; that delete is done, not a failure, and destroy goes on."""
    cloud, engine = group_cloud()
    create(cloud)
    apply_plan = deploy.apply

    def meanwhile(*args: Any, **kwargs: Any) -> int:
        engine.forwarding_rules.discard("pypapo-ilb")  # the other admin's deletes, after our read
        engine.backend_services.discard("pypapo-ilb")
        engine.health_checks.discard("pypapo-heal-hc")
        return apply_plan(*args, **kwargs)

    monkeypatch.setattr(deploy, "apply", meanwhile)
    deploy.destroy(cloud, S, delete_bucket=False)
    for kind in ("instance_templates", "health_checks", "instance_group_managers", "addresses", "firewalls"):
        assert not len(getattr(engine, kind)), kind
    monkeypatch.setattr(deploy, "apply", apply_plan)
    assert not deploy.destroy(cloud, S, delete_bucket=False).changed


def test_the_api_refuses_to_delete_what_is_in_use() -> None:
    """The double is as strict as Compute Engine: the order destroy uses is the only one that works."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    cloud, engine = group_cloud()
    create(cloud)
    client = engine.clients().get("region_instance_group_managers")
    with pytest.raises(gexc.BadRequest, match="is already being used by"):
        client.delete(
            compute_v1.DeleteRegionInstanceGroupManagerRequest(
                project="acme-prod", region="us-central1", instance_group_manager="pypapo"
            )
        )
    templates = engine.clients().get("instance_templates")
    (name,) = engine.instance_templates
    with pytest.raises(gexc.BadRequest, match="is already being used by"):
        templates.delete(
            compute_v1.DeleteInstanceTemplateRequest(project="acme-prod", instance_template=name)
        )
    with pytest.raises(gexc.Conflict):
        engine.clients().get("health_checks").insert(
            compute_v1.InsertHealthCheckRequest(
                project="acme-prod", health_check_resource=group.lb_health_check(S)
            )
        )


# --- the migration from a single VM --------------------------------------------------------------------


def _single_vm(cloud: deploy.Cloud, engine: ComputeEngine) -> None:
    single = Settings(project="acme-prod", zone="us-central1-a")
    create(cloud, single)
    resource = "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"
    cloud.iam.set_tunnel_member(resource, planlib.TUNNEL_ROLE, "user:alice@example.com")
    assert "pypapo" in engine.instances


def test_migration_deletes_the_single_vm_only_once_the_group_serves() -> None:
    cloud, engine = group_cloud()
    _single_vm(cloud, engine)
    lines: list[str] = []
    start = len(engine.calls)
    create(cloud, progress=lines.append)
    calls = engine.calls[start:]
    names = [c.method for c in calls]
    deleted = next(
        i for i, c in enumerate(calls) if c.method == "instances.delete" and c.request.instance == "pypapo"
    )
    last_poll = max(
        i for i, n in enumerate(names) if n == "region_instance_group_managers.list_managed_instances"
    )
    assert last_poll < deleted  # the wait ended (healthy) before the VM went
    assert "pypapo" not in engine.instances
    assert len(engine.group_instances()) == 3
    resource = "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"
    assert not cloud.iam.get_tunnel_members(resource).get(planlib.TUNNEL_ROLE)
    text = "\n".join(lines)
    assert "the group serves: deleting the single VM pypapo" in text
    assert "provision grant user:alice@example.com --role reader --replicas 3" in text
    assert not create(cloud).changed  # migrated: nothing left to do


def test_migration_keeps_the_single_vm_when_the_group_never_gets_healthy() -> None:
    cloud, engine = group_cloud()
    _single_vm(cloud, engine)
    engine.health = lambda _t, _n: "UNHEALTHY"
    with pytest.raises(group_apply.RolloutFailed):
        create(cloud)
    assert "pypapo" in engine.instances  # still serving the old way
    resource = "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"
    assert cloud.iam.get_tunnel_members(resource)[planlib.TUNNEL_ROLE] == {"user:alice@example.com"}
    assert not [c for c in engine.calls if c.method == "instances.delete" and c.request.instance == "pypapo"]


def test_image_build_keeps_the_groups_images_usable() -> None:
    """Retention never makes OBSOLETE an image the group runs or rolls back to: a group recreates,
    repairs and resizes from its templates' images."""
    from provisioner.cli.image import group_images

    cloud, engine = group_cloud()
    create(cloud)
    (first,) = engine.images
    group_apply.rollout(cloud, S, _new_image(engine), script=SCRIPT, sleep=lambda _s: None)
    assert group_images(cloud, S) == sorted([first, "pypapo-20261208-030000"])


def test_a_command_without_replicas_on_a_group_refuses_instead_of_making_a_vm(monkeypatch) -> None:
    cloud, engine = group_cloud()
    create(cloud)
    single = Settings(project="acme-prod", zone="us-central1-a")
    with pytest.raises(
        Exception, match=r"pypapo runs as group pypapo of 3 in us-central1 of acme-prod: pass --replicas 3"
    ):
        create(cloud, single)
    with pytest.raises(Exception, match="pass --replicas 3"):
        deploy.destroy(cloud, single, delete_bucket=False)
    from provisioner.cli import image as image_cmd

    monkeypatch.setattr(image_cmd, "connect", lambda settings, progress=True: cloud)
    result = CliRunner().invoke(
        main, ["rollout", "--project", "acme-prod", "--zone", "us-central1-a", "--yes"]
    )
    assert result.exit_code == 1
    assert (
        result.output.startswith("error: pypapo runs as group pypapo of 3") and result.output.count("\n") == 1
    )
    assert "pypapo" not in engine.instances and len(engine.group_instances()) == 3

"""`provision rollout` / `rollback`: same name, the cloud helper's spec with only the image changed,
IAM grants kept, readiness awaited, the previous image chosen by creation time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1
from google.iam.v1 import policy_pb2

from provisioner.cloud import names, plan
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.gcp.iam import Iam
from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.image import run as image_run
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.doubles.compute import ComputeEngine, FakeClock

SETTINGS = Settings(project="proj-123456", zone="europe-west1-b")
TARGET = image_plan.ImageTarget(Settings(project="proj-123456", zone="europe-west1-b"))
SPEC = plan.desired_instance(
    SETTINGS, image=names.family_image("proj-123456", "pypapo"), startup_script="#!/bin/bash\n# serve\n"
)
RESOURCE = names.tunnel_resource("proj-123456", "europe-west1-b", "pypapo")
OLD, NEW = "pypapo-v20261118-030000", "pypapo-v20261125-030000"


def link(name: str) -> str:
    return names.image_link("proj-123456", name)


def layer(engine: ComputeEngine) -> Compute:
    return Compute(engine.clients())


def ready() -> dict[str, str]:
    return {"ready": "true", "status": "ready"}


@pytest.fixture
def api() -> ComputeEngine:
    api = ComputeEngine()
    api.add_image(OLD, dt.datetime(2026, 11, 18, 3, tzinfo=dt.UTC), "DEPRECATED")
    api.add_image(NEW, dt.datetime(2026, 11, 25, 3, tzinfo=dt.UTC))
    api.add_appliance(SPEC, link(OLD))
    policy = policy_pb2.Policy(
        etag=b"old",
        bindings=[
            policy_pb2.Binding(
                role=plan.TUNNEL_ROLE, members=["user:ana@example.com", "group:devs@example.com"]
            )
        ],
    )
    api.tunnel_policies.add("global", RESOURCE, policy)
    api.instance_policies.add(
        "zones/europe-west1-b",
        "pypapo",
        compute_v1.Policy(
            bindings=[compute_v1.Binding(role=plan.INSTANCE_VIEWER_ROLE, members=["user:ana@example.com"])]
        ),
    )
    api.guest["pypapo"] = ready
    return api


def run(api: ComputeEngine, image: str, clock: FakeClock | None = None, **options: Any) -> None:
    clock = clock or FakeClock()
    image_run.run_rollout(
        layer(api), Iam(api.clients()), TARGET, SPEC, link(image), clock=clock, sleep=clock.sleep, **options
    )


def test_rollout_recreates_the_same_instance_with_only_the_image_changed(api) -> None:
    run(api, NEW)
    names = api.call_names()
    assert (
        names.index("instances.set_deletion_protection")
        < names.index("instances.delete")
        < names.index("instances.insert")
    )
    (protection,) = api.requests("instances.set_deletion_protection")
    assert protection.deletion_protection is False and protection.resource == "pypapo"
    (insert,) = api.requests("instances.insert")
    sent = compute_v1.Instance.to_dict(insert.instance_resource)
    spec = compute_v1.Instance.to_dict(SPEC)
    assert sent["disks"][0]["initialize_params"].pop("source_image") == link(NEW)
    spec["disks"][0]["initialize_params"].pop("source_image")
    assert sent == spec, "everything but the image comes from plan.desired_instance"
    assert insert.instance_resource.deletion_protection is True
    assert image_run.serving_image(layer(api), TARGET) == NEW


def test_rollout_keeps_the_iap_tunnel_and_instance_grants(api) -> None:
    run(api, NEW)
    assert api.tunnel_policies[RESOURCE].bindings[0].role == plan.TUNNEL_ROLE
    assert set(api.tunnel_policies[RESOURCE].bindings[0].members) == {
        "user:ana@example.com",
        "group:devs@example.com",
    }
    assert list(api.instance_policies["pypapo"].bindings[0].members) == ["user:ana@example.com"]
    names = api.call_names()
    assert names.index("iap.set_iam_policy") < names.index("instances.get_guest_attributes"), (
        "grants back before the wait"
    )


def test_rollout_waits_for_ready_and_reports_an_unhealthy_appliance(api) -> None:
    polls = iter(
        [
            {"ready": "false"},
            {"ready": "false"},
            {"ready": "false", "status": "not ready: /mnt/pypapo is not mounted"},
        ]
    )
    api.guest["pypapo"] = lambda: next(polls)
    with pytest.raises(PypapoError) as err:
        run(api, NEW)
    message = str(err.value)
    assert "\n" not in message
    assert "failed at 'wait until ready'" in message and "not mounted" in message
    assert "provision rollback" in message
    assert set(api.tunnel_policies[RESOURCE].bindings[0].members) == {
        "user:ana@example.com",
        "group:devs@example.com",
    }


def test_rollout_times_out_when_ready_never_comes(api) -> None:
    api.guest["pypapo"] = lambda: {"ready": "false"}
    clock = FakeClock()
    with pytest.raises(PypapoError, match=r"did not report ready within 10 min.*get-serial-port-output"):
        run(api, NEW, clock, ready_timeout=600)
    assert clock.now >= 600


def test_rollout_stops_within_seconds_of_a_reported_error(api) -> None:
    polls = iter([{"ready": "false", "status": "starting"}] * 2)
    api.guest["pypapo"] = lambda: next(polls, {"ready": "false", "error": "install: apt-get exited 100"})
    clock = FakeClock()
    with pytest.raises(PypapoError) as err:
        run(api, NEW, clock, ready_timeout=600)
    message = str(err.value)
    assert "install: apt-get exited 100" in message
    assert "gcloud compute instances get-serial-port-output pypapo --zone europe-west1-b" in message
    assert clock.now < 30, "a reported error must not wait for the timeout"


def test_a_failed_insert_names_the_members_to_re_grant(api) -> None:
    api.fail["instances.insert"] = gexc.ResourceExhausted("ZONE_RESOURCE_POOL_EXHAUSTED")
    with pytest.raises(PypapoError) as err:
        run(api, NEW)
    message = str(err.value)
    assert "failed at 'create the new instance'" in message
    assert "group:devs@example.com, user:ana@example.com" in message


def test_a_failure_before_the_delete_leaves_the_appliance_untouched(api) -> None:
    api.fail["instances.set_deletion_protection"] = gexc.Forbidden("compute.instances.setDeletionProtection")
    with pytest.raises(PypapoError, match="the appliance was not touched"):
        run(api, NEW)
    assert "pypapo" in api.instances and image_run.serving_image(layer(api), TARGET) == OLD


def test_rollout_creates_the_appliance_when_it_does_not_exist() -> None:
    api = ComputeEngine()
    api.add_image(NEW, dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    api.guest["pypapo"] = ready
    run(api, NEW)
    assert "instances.delete" not in api.call_names()
    assert image_run.serving_image(layer(api), TARGET) == NEW


def test_rollback_goes_to_the_previous_image_and_reactivates_it(api) -> None:
    run(api, NEW)
    images = layer(api).list_images("proj-123456", "pypapo")
    current = image_run.serving_image(layer(api), TARGET)
    previous = image_plan.rollback_target(images, current)
    assert previous.name == OLD
    changes = image_plan.rollback_deprecations("proj-123456", images, previous.name, current)
    assert [(c.image, c.deprecation_status_resource.state) for c in changes] == [
        (OLD, "ACTIVE"),
        (NEW, "DEPRECATED"),
    ]
    assert changes[1].deprecation_status_resource.replacement == link(OLD)
    for change in changes:
        layer(api).deprecate_image(change)
    image_run.run_rollout(
        layer(api),
        Iam(api.clients()),
        TARGET,
        SPEC,
        link(previous.name),
        clock=FakeClock(),
        sleep=lambda s: None,
    )
    assert image_run.serving_image(layer(api), TARGET) == OLD
    # the family, and so the next `provision rollout`, now resolves to the image rolled back to
    assert image_plan.newest_usable(layer(api).list_images("proj-123456", "pypapo")).name == OLD


def test_rollback_orders_by_creation_time_and_stops_at_the_oldest() -> None:
    images = [
        compute_v1.Image(name="pypapo-b", status="READY", creation_timestamp="2026-11-25T03:00:00.000-08:00"),
        compute_v1.Image(name="pypapo-c", status="READY", creation_timestamp="2026-11-18T03:00:00.000-08:00"),
        compute_v1.Image(name="pypapo-a", status="READY", creation_timestamp="2026-11-11T03:00:00.000-08:00"),
    ]
    assert image_plan.rollback_target(images, "pypapo-b").name == "pypapo-c"
    with pytest.raises(PypapoError, match="oldest image"):
        image_plan.rollback_target(images, "pypapo-a")
    with pytest.raises(PypapoError, match="cannot tell which image"):
        image_plan.rollback_target(images, None)

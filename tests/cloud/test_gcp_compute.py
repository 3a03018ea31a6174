"""The Compute thin layer's one retry: a just-created service account that IAM has not propagated yet.

Over the one Compute double (`tests.doubles.compute`); the errors are the real google.api_core
exceptions, with the messages Compute Engine gives.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud import names, plan
from provisioner.cloud.gcp.compute import SA_PROPAGATION_DELAYS, Compute, is_new_service_account_not_visible
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.doubles.compute import ComputeEngine

SA = "pypapo-vm@acme-prod.iam.gserviceaccount.com"
NOT_PROPAGATED = [
    gexc.BadRequest(f"The resource 'projects/acme-prod/serviceAccounts/{SA}' was not found"),
    gexc.NotFound(f"The resource 'projects/acme-prod/serviceAccounts/{SA}' was not found"),
    gexc.BadRequest(f"Service account {SA} does not exist."),
]
OTHER = [
    # a missing actAs permission must not be retried: it will not heal by itself
    gexc.BadRequest(
        "Invalid value for field 'resource.serviceAccounts[0].email': "
        f"'{SA}'. The user does not have access to service account '{SA}'. User: 'me@example.com'."
    ),
    gexc.BadRequest("Invalid value for field 'resource.machineType': 'zones/x/machineTypes/nope'."),
    gexc.NotFound("The resource 'projects/acme-prod/zones/us-central1-a/machineTypes/e2-huge' was not found"),
]


@pytest.mark.parametrize("exc", NOT_PROPAGATED, ids=str)
def test_propagation_errors_are_recognised(exc: Exception) -> None:
    assert is_new_service_account_not_visible(exc)


@pytest.mark.parametrize("exc", OTHER, ids=str)
def test_other_errors_are_not(exc: Exception) -> None:
    assert not is_new_service_account_not_visible(exc)


def _compute(errors: list[Exception], sleeps: list[float], said: list[str]) -> tuple[ComputeEngine, Compute]:
    """The inserts fail with `errors` first, then Compute Engine takes the request."""
    engine = ComputeEngine("acme-prod", "us-central1-a")
    engine.fail["instances.insert"] = list(errors)
    return engine, Compute(engine.clients(), progress=said.append, sleep=sleeps.append)


def _request() -> compute_v1.InsertInstanceRequest:
    instance = plan.desired_instance(
        Settings(project="acme-prod", zone="us-central1-a"), image=names.fallback_image(), startup_script=""
    )
    return compute_v1.InsertInstanceRequest(
        project="acme-prod", zone="us-central1-a", instance_resource=instance
    )


def test_insert_waits_for_a_new_service_account_then_succeeds() -> None:
    sleeps: list[float] = []
    said: list[str] = []
    engine, compute = _compute(NOT_PROPAGATED[:2], sleeps, said)
    compute.insert_instance(_request())
    sent = engine.requests("instances.insert")
    assert len(sent) == 3 and all(r == _request() for r in sent)
    assert "pypapo" in engine.instances
    assert sleeps == list(SA_PROPAGATION_DELAYS[:2])
    assert any("service account is not visible" in line for line in said)


def test_insert_gives_up_after_the_bounded_retries_with_one_clear_line() -> None:
    errors = [NOT_PROPAGATED[0]] * (len(SA_PROPAGATION_DELAYS) + 1)
    sleeps: list[float] = []
    engine, compute = _compute(errors, sleeps, [])
    with pytest.raises(PypapoError) as info:
        compute.insert_instance(_request())
    assert len(engine.requests("instances.insert")) == len(SA_PROPAGATION_DELAYS) + 1
    assert sleeps == list(SA_PROPAGATION_DELAYS)
    assert "create instance pypapo" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("exc", OTHER, ids=str)
def test_other_insert_errors_fail_at_once(exc: Exception) -> None:
    sleeps: list[float] = []
    engine, compute = _compute([exc], sleeps, [])
    with pytest.raises(PypapoError):
        compute.insert_instance(_request())
    assert len(engine.requests("instances.insert")) == 1 and sleeps == []
    assert engine.instances == {}


def test_a_delete_of_what_is_already_gone_is_done_and_other_errors_name_the_fix() -> None:
    """destroy, the builder's clean-up and rollout converge when a resource vanished under them."""
    engine, compute = _compute([], [], [])
    compute.insert_instance(_request())
    gone = compute_v1.DeleteDiskRequest(project="acme-prod", zone="us-central1-a", disk="nope")
    assert compute.delete_disk(gone) is False
    delete = compute_v1.DeleteInstanceRequest(project="acme-prod", zone="us-central1-a", instance="pypapo")
    engine.fail["instances.delete"] = gexc.Forbidden("Required 'compute.instances.delete' permission")
    with pytest.raises(PypapoError, match=r"roles/compute\.instanceAdmin\.v1"):
        compute.delete_instance(delete)
    del engine.fail["instances.delete"]
    with pytest.raises(PypapoError, match="protected against deletion"):
        compute.delete_instance(delete)
    compute.set_deletion_protection(
        compute_v1.SetDeletionProtectionInstanceRequest(
            project="acme-prod", zone="us-central1-a", resource="pypapo", deletion_protection=False
        )
    )
    assert compute.delete_instance(delete) is True and engine.instances == {} and engine.disks == {}
    assert compute.delete_instance(delete) is False

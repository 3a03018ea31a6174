"""The Compute thin layer's one retry: a just-created service account that IAM has not propagated yet.

The instances client is the one object replaced here (Compute Engine has no emulator); the errors are the
real google.api_core exceptions, with the messages Compute Engine gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud.gcp.base import Clients, ComputeOperation
from provisioner.cloud.gcp.compute import SA_PROPAGATION_DELAYS, Compute, is_new_service_account_not_visible
from provisioner.errors import PypapoError

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


class Instances:
    """Fails the first inserts with the given errors, then returns a finished operation."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.requests: list[compute_v1.InsertInstanceRequest] = []

    def insert(self, request: compute_v1.InsertInstanceRequest) -> Any:
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        done = compute_v1.Operation(name="op-1", status=compute_v1.Operation.Status.DONE)
        return ComputeOperation.make(lambda: done, done)


def _request() -> compute_v1.InsertInstanceRequest:
    return compute_v1.InsertInstanceRequest(
        project="acme-prod", zone="us-central1-a", instance_resource=compute_v1.Instance(name="pypapo")
    )


def _compute(instances: Instances, sleeps: list[float], said: list[str]) -> Compute:
    clients = Clients("acme-prod", overrides={"instances": instances})
    return Compute(clients, progress=said.append, sleep=sleeps.append)


def test_insert_waits_for_a_new_service_account_then_succeeds() -> None:
    instances, sleeps, said = Instances(NOT_PROPAGATED[:2]), [], []
    _compute(instances, sleeps, said).insert_instance(_request())
    assert len(instances.requests) == 3 and all(r == _request() for r in instances.requests)
    assert sleeps == list(SA_PROPAGATION_DELAYS[:2])
    assert any("service account is not visible" in line for line in said)


def test_insert_gives_up_after_the_bounded_retries_with_one_clear_line() -> None:
    errors = [NOT_PROPAGATED[0]] * (len(SA_PROPAGATION_DELAYS) + 1)
    instances, sleeps = Instances(errors), []
    with pytest.raises(PypapoError) as info:
        _compute(instances, sleeps, []).insert_instance(_request())
    assert len(instances.requests) == len(SA_PROPAGATION_DELAYS) + 1
    assert sleeps == list(SA_PROPAGATION_DELAYS)
    assert "create instance pypapo" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("exc", OTHER, ids=str)
def test_other_insert_errors_fail_at_once(exc: Exception) -> None:
    instances, sleeps = Instances([exc]), []
    with pytest.raises(PypapoError):
        _compute(instances, sleeps, []).insert_instance(_request())
    assert len(instances.requests) == 1 and sleeps == []

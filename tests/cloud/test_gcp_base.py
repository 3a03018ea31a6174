"""Error translation, operation waiting and the client factory of provisioner/gcp/base.py.

Errors are built the way the client libraries build them: REST errors through
`google.api_core.exceptions.from_http_response` on a real `requests.Response` carrying the JSON error
bodies Google APIs return, gRPC errors through `from_grpc_status` with a real `google.rpc.ErrorInfo`,
operation errors from a real `compute_v1.Operation`.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import compute_v1
from google.rpc import error_details_pb2

from provisioner import errors
from provisioner.cloud.gcp import base
from provisioner.errors import PypapoError


def rest_error(status: int, body: dict[str, Any], url: str = "https://compute.googleapis.com/compute/v1/x"):
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.request = requests.Request("POST", url).prepare()
    return gexc.from_http_response(response)


def typed(exc: BaseException, **kw: Any) -> PypapoError:
    return base.translate_error(exc, "create instance pypapo", project="acme-prod", **kw)


def translated(exc: BaseException, **kw: Any) -> str:
    return str(typed(exc, **kw))


def test_compute_api_not_enabled_names_the_api_and_command() -> None:
    message = (
        "Compute Engine API has not been used in project 123456789 before or it is disabled. Enable it by"
        " visiting https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project="
        "123456789 then retry."
    )
    exc = rest_error(
        403,
        {
            "error": {
                "code": 403,
                "message": message,
                "errors": [{"message": message, "domain": "usageLimits", "reason": "accessNotConfigured"}],
                "status": "PERMISSION_DENIED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "SERVICE_DISABLED",
                        "domain": "googleapis.com",
                        "metadata": {"service": "compute.googleapis.com", "consumer": "projects/123456789"},
                    }
                ],
            }
        },
    )
    assert isinstance(exc, gexc.Forbidden)
    text = translated(exc)
    assert "compute.googleapis.com API is not enabled" in text
    assert "`gcloud services enable compute.googleapis.com --project acme-prod`" in text
    error = typed(exc)
    assert isinstance(error, errors.ApiNotEnabled)
    assert (error.api, error.project, error.action) == (
        "compute.googleapis.com",
        "acme-prod",
        "create instance pypapo",
    )
    # without --project, the project comes from the ErrorInfo's consumer
    unnamed = base.translate_error(exc, "create instance pypapo")
    assert isinstance(unnamed, errors.ApiNotEnabled) and unnamed.project == "123456789"


def test_legacy_access_not_configured_without_error_info_still_names_the_api() -> None:
    message = (
        "Identity and Access Management (IAM) API has not been used in project 42 before or it is disabled."
    )
    exc = rest_error(
        403,
        {
            "error": {
                "code": 403,
                "message": message,
                "errors": [{"reason": "accessNotConfigured", "message": message}],
            }
        },
    )
    text = translated(exc, api="iam.googleapis.com")
    assert "gcloud services enable iam.googleapis.com --project acme-prod" in text
    error = typed(exc, api="iam.googleapis.com")
    assert isinstance(error, errors.ApiNotEnabled) and error.api == "iam.googleapis.com"


def test_grpc_iam_permission_denied_names_the_role() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="IAM_PERMISSION_DENIED",
        domain="iam.googleapis.com",
        metadata={"permission": "iam.serviceAccounts.create"},
    )
    exc = gexc.from_grpc_status(
        grpc.StatusCode.PERMISSION_DENIED,
        "Permission 'iam.serviceAccounts.create' denied on resource (or it may not exist).",
        details=[info],
        error_info=info,
    )
    assert isinstance(exc, gexc.PermissionDenied)
    text = translated(exc)
    assert "permission denied (iam.serviceAccounts.create)" in text
    assert "roles/iam.serviceAccountAdmin" in text
    assert "gcloud projects add-iam-policy-binding acme-prod" in text
    error = typed(exc)
    assert isinstance(error, errors.PermissionDenied)
    assert (error.permission, error.role) == ("iam.serviceAccounts.create", "roles/iam.serviceAccountAdmin")


def test_compute_rest_permission_denied_names_the_role() -> None:
    message = (
        "Required 'compute.instances.create' permission for"
        " 'projects/acme-prod/zones/us-central1-a/instances/pypapo'"
    )
    exc = rest_error(
        403,
        {"error": {"code": 403, "message": message, "errors": [{"message": message, "reason": "forbidden"}]}},
    )
    text = translated(exc)
    assert "(compute.instances.create)" in text and "roles/compute.instanceAdmin.v1" in text
    error = typed(exc)
    assert isinstance(error, errors.PermissionDenied)
    assert (error.permission, error.role) == ("compute.instances.create", "roles/compute.instanceAdmin.v1")


def test_permission_denied_without_a_known_permission_takes_the_callers_role_or_none() -> None:
    exc = gexc.Forbidden("Forbidden")
    bare = typed(exc)
    assert isinstance(bare, errors.PermissionDenied) and (bare.permission, bare.role) == (None, None)
    assert str(bare) == "cannot create instance pypapo: permission denied: Forbidden"
    hinted = typed(exc, role="roles/iap.tunnelResourceAccessor")
    assert isinstance(hinted, errors.PermissionDenied) and hinted.role == "roles/iap.tunnelResourceAccessor"
    assert "--role roles/iap.tunnelResourceAccessor`" in str(hinted)


@pytest.mark.parametrize(
    "body", [{"error": {"code": 403, "message": "Forbidden"}}, {}], ids=["forbidden", "empty"]
)
def test_a_bare_403_names_the_api_and_both_fixes_not_the_host_as_a_permission(body: dict[str, Any]) -> None:
    """A 403 that names no permission: the request URL's host is no permission; a disabled API and a
    missing role both answer so, and the line names the fix of each."""
    exc = rest_error(
        403, body, url="https://compute.googleapis.com/compute/v1/projects/acme-prod/zones/z/instances/i"
    )
    error = typed(exc, api=base.COMPUTE_API)
    assert isinstance(error, errors.PermissionDenied) and (error.permission, error.role) == (None, None)
    text = str(error)
    assert "(compute.googleapis.com)" not in text and "\n" not in text
    assert text.startswith("cannot create instance pypapo: permission denied by compute.googleapis.com,")
    assert "`gcloud services enable compute.googleapis.com --project acme-prod`" in text
    assert "`gcloud projects get-iam-policy acme-prod`" in text


def test_act_as_permission_names_service_account_user() -> None:
    message = (
        "The user does not have access to service account 'pypapo-vm@acme-prod.iam.gserviceaccount.com'."
        "  User: 'a@b.c'.  Ask a project owner to grant you the iam.serviceAccountUser role on the"
        " service account"
    )
    exc = rest_error(400, {"error": {"code": 400, "message": message, "errors": [{"reason": "badRequest"}]}})
    # 400 is not a permission error by status; the role hint comes from the caller in that case
    assert "cannot create instance pypapo" in translated(exc)
    assert base.role_for_permission("iam.serviceAccounts.actAs") == "roles/iam.serviceAccountUser"


def test_quota_from_a_failed_operation() -> None:
    failed = compute_v1.Operation(
        name="operation-1",
        status=compute_v1.Operation.Status.DONE,
        http_error_status_code=403,
        http_error_message="FORBIDDEN",
        error=compute_v1.Error(
            errors=[
                compute_v1.Errors(
                    code="QUOTA_EXCEEDED", message="Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1."
                )
            ]
        ),
    )
    op = base.ComputeOperation.make(
        lambda: failed, compute_v1.Operation(name="operation-1", status="RUNNING")
    )
    with pytest.raises(PypapoError) as info:
        base.wait_for_operation(
            op, "create instance pypapo", project="acme-prod", progress=None, sleep=lambda _s: None
        )
    text = str(info.value)
    assert "quota exceeded" in text and "Quota 'CPUS' exceeded" in text
    assert "console.cloud.google.com/iam-admin/quotas?project=acme-prod" in text
    assert isinstance(info.value, errors.QuotaExceeded) and info.value.project == "acme-prod"


def test_quota_names_the_metric_from_the_error_info() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMIT_EXCEEDED",
        domain="googleapis.com",
        metadata={
            "quota_metric": "compute.googleapis.com/read_requests",
            "quota_limit": "ReadRequestsPerMinute",
        },
    )
    exc = gexc.from_grpc_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota exceeded.", error_info=info)
    error = typed(exc)
    assert isinstance(error, errors.QuotaExceeded) and error.quota == "compute.googleapis.com/read_requests"
    assert "quota exceeded (compute.googleapis.com/read_requests): Quota exceeded." in str(error)


def test_zone_resource_pool_exhausted_suggests_another_zone() -> None:
    failed = compute_v1.Operation(
        name="operation-2",
        status="DONE",
        http_error_status_code=503,
        http_error_message="SERVICE UNAVAILABLE",
        error=compute_v1.Error(
            errors=[
                compute_v1.Errors(
                    code="ZONE_RESOURCE_POOL_EXHAUSTED", message="The zone does not have enough resources"
                )
            ]
        ),
    )
    op = base.ComputeOperation.make(
        lambda: failed, compute_v1.Operation(name="operation-2", status="RUNNING")
    )
    with pytest.raises(errors.CapacityExhausted, match="try another --zone"):
        base.wait_for_operation(
            op, "create instance", project="acme-prod", progress=None, sleep=lambda _s: None
        )


def test_name_taken() -> None:
    firewall = rest_error(
        409,
        {
            "error": {
                "code": 409,
                "message": "The resource 'projects/acme-prod/global/firewalls/pypapo-allow-iap'"
                " already exists",
                "errors": [{"reason": "alreadyExists", "domain": "global"}],
            }
        },
    )
    assert "already in use" in translated(firewall)
    taken = typed(firewall)
    assert isinstance(taken, errors.NameTaken) and not taken.global_namespace
    bucket = rest_error(
        409,
        {
            "error": {
                "code": 409,
                "message": "The requested bucket name is not available. The bucket namespace is shared"
                " by all users of the system. Please select a different name and try again.",
                "errors": [{"reason": "conflict", "domain": "global"}],
            }
        },
        url="https://storage.googleapis.com/storage/v1/b?project=acme-prod",
    )
    assert "choose another with --bucket" in translated(bucket)
    taken = typed(bucket)
    assert isinstance(taken, errors.NameTaken) and taken.global_namespace


def test_wrong_project() -> None:
    exc = rest_error(
        404,
        {
            "error": {
                "code": 404,
                "message": "The resource 'projects/acme-prd' was not found",
                "errors": [{"reason": "notFound", "domain": "global"}],
            }
        },
    )
    text = str(base.translate_error(exc, "read instance", project="acme-prd"))
    assert "project acme-prd does not exist or you cannot see it" in text and "gcloud projects list" in text
    assert isinstance(base.translate_error(exc, "read instance", project="acme-prd"), errors.ProjectNotFound)
    # a missing instance is not a missing project
    instance = gexc.NotFound(
        "The resource 'projects/acme-prod/zones/us-central1-a/instances/x' was not found"
    )
    assert isinstance(typed(instance), errors.ResourceNotFound)


def test_billing_disabled() -> None:
    info = error_details_pb2.ErrorInfo(reason="BILLING_DISABLED", domain="googleapis.com")
    exc = gexc.from_grpc_status(
        grpc.StatusCode.PERMISSION_DENIED, "This API method requires billing to be enabled.", error_info=info
    )
    assert "gcloud billing projects link acme-prod" in translated(exc)
    # billing, reported as PERMISSION_DENIED, is not read as a missing role
    assert isinstance(typed(exc), errors.BillingDisabled)


def test_no_credentials() -> None:
    exc = auth_exc.DefaultCredentialsError("Your default credentials were not found.")
    assert "gcloud auth application-default login" in translated(exc)
    expired = auth_exc.RefreshError("Reauthentication is needed.")
    assert "gcloud auth application-default login" in translated(expired)
    refused = gexc.Unauthenticated("Request had invalid authentication credentials.")
    assert all(isinstance(typed(e), errors.NotAuthenticated) for e in (exc, expired, refused))
    assert str(typed(refused)) == (
        "cannot create instance pypapo: not authenticated (Request had invalid authentication credentials.);"
        " run `gcloud auth application-default login`"
    )


def test_bad_request_and_unknown_errors_keep_the_apis_words() -> None:
    rejected = typed(gexc.BadRequest("Invalid value for field 'resource.machineType'"))
    assert isinstance(rejected, errors.RequestRejected)
    assert str(rejected) == (
        "cannot create instance pypapo: the request was rejected:"
        " Invalid value for field 'resource.machineType'"
    )
    unknown = typed(gexc.InternalServerError("backend error"))
    assert type(unknown) is errors.CloudError
    assert str(unknown) == "cannot create instance pypapo: InternalServerError: backend error"


def test_gcp_errors_context_manager_raises_pypapo_error_from_the_original() -> None:
    original = gexc.NotFound(
        "The resource 'projects/acme-prod/zones/us-central1-a/instances/x' was not found"
    )
    with pytest.raises(PypapoError) as info, base.gcp_errors("read instance x", project="acme-prod"):
        raise original
    assert info.value.__cause__ is original


def test_clients_without_credentials_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(PypapoError, match="gcloud auth application-default login"):
        base.Clients("acme-prod").get("instances")


def test_clients_overrides_are_used_as_given() -> None:
    marker = object()
    clients = base.Clients("acme-prod", overrides={"instances": marker})
    assert clients.instances is marker and clients.get("instances") is marker


def test_wait_shows_progress_and_returns_the_finished_operation() -> None:
    states = iter(
        [
            compute_v1.Operation(name="op", status="RUNNING", progress=30),
            compute_v1.Operation(name="op", status="RUNNING", progress=30),
            compute_v1.Operation(name="op", status="DONE", progress=100),
        ]
    )
    op = base.ComputeOperation.make(lambda: next(states), compute_v1.Operation(name="op", status="PENDING"))
    lines: list[str] = []
    result = base.wait_for_operation(op, "create firewall", progress=lines.append, sleep=lambda _s: None)
    assert result.done()
    assert [line.split(" (")[0] for line in lines] == [
        "  create firewall: RUNNING 30%",
        "  create firewall: DONE 100%",
    ]


def test_wait_times_out_with_a_way_forward() -> None:
    now = [0.0]
    op = base.ComputeOperation.make(
        lambda: compute_v1.Operation(name="op-slow", status="RUNNING"),
        compute_v1.Operation(name="op-slow", status="RUNNING"),
    )

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(PypapoError, match=r"timed out after 10s .*op-slow.*run the command again"):
        base.wait_for_operation(
            op, "create instance", timeout=10, progress=None, sleep=sleep, clock=lambda: now[0]
        )

"""The base of the thin Google Cloud layer: clients, operation waiting, and error translation.

Everything else in `provisioner.cloud.gcp` goes through these three things:

- `Clients`: one lazily built client per API, with `overrides` so a caller can inject its own.
- `wait_for_operation(op, description)`: waits on a Compute Engine operation (the `ExtendedOperation`
  every compute_v1 mutating call returns, or a raw zone/region/global `compute_v1.Operation`), shows
  progress, enforces a timeout and turns the operation's error into a `PypapoError`.
- `gcp_errors(action, project=...)`: a context manager that turns `google.api_core` and `google.auth`
  exceptions into a one-line `PypapoError` that names the fix (API to enable, role to grant, ...).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from provisioner.cloud.names import CLOUD_PLATFORM_SCOPE
from provisioner.cloud.progress import Progress
from provisioner.errors import PypapoError

# The API each client talks to, for "enable it" messages when the error itself does not say.
COMPUTE_API = "compute.googleapis.com"
STORAGE_API = "storage.googleapis.com"
IAM_API = "iam.googleapis.com"
RESOURCE_MANAGER_API = "cloudresourcemanager.googleapis.com"
IAP_API = "iap.googleapis.com"
CLOUDBUILD_API = "cloudbuild.googleapis.com"
SCHEDULER_API = "cloudscheduler.googleapis.com"

# Permission prefix -> the smallest predefined role that holds it. Longest prefix wins.
PERMISSION_ROLES: dict[str, str] = {
    "compute.instances.": "roles/compute.instanceAdmin.v1",
    "compute.instanceTemplates.": "roles/compute.instanceAdmin.v1",
    "compute.instanceGroupManagers.": "roles/compute.instanceAdmin.v1",
    "compute.healthChecks.": "roles/compute.loadBalancerAdmin",
    "compute.regionBackendServices.": "roles/compute.loadBalancerAdmin",
    "compute.forwardingRules.": "roles/compute.loadBalancerAdmin",
    "compute.addresses.": "roles/compute.networkAdmin",
    "compute.regions.": "roles/compute.viewer",
    "compute.disks.": "roles/compute.instanceAdmin.v1",
    "compute.zoneOperations.": "roles/compute.instanceAdmin.v1",
    "compute.images.useReadOnly": "roles/compute.imageUser",
    "compute.images.": "roles/compute.storageAdmin",
    "compute.globalOperations.": "roles/compute.viewer",
    "compute.firewalls.": "roles/compute.securityAdmin",
    "compute.networks.": "roles/compute.networkAdmin",
    "compute.subnetworks.": "roles/compute.networkAdmin",
    "compute.regionOperations.": "roles/compute.networkAdmin",
    "compute.machineTypes.": "roles/compute.viewer",
    "compute.zones.": "roles/compute.viewer",
    "compute.projects.get": "roles/compute.viewer",
    "storage.buckets.": "roles/storage.admin",
    "storage.objects.": "roles/storage.objectAdmin",
    "iam.serviceAccounts.actAs": "roles/iam.serviceAccountUser",
    "iam.serviceAccounts.": "roles/iam.serviceAccountAdmin",
    "resourcemanager.projects.getIamPolicy": "roles/iam.securityReviewer",
    "resourcemanager.projects.setIamPolicy": "roles/resourcemanager.projectIamAdmin",
    "resourcemanager.projects.get": "roles/browser",
    "iap.tunnelInstances.accessViaIAP": "roles/iap.tunnelResourceAccessor",
    "iap.tunnelInstances.": "roles/iap.admin",
    "cloudbuild.builds.": "roles/cloudbuild.builds.editor",
    "cloudscheduler.jobs.": "roles/cloudscheduler.admin",
    "serviceusage.services.enable": "roles/serviceusage.serviceUsageAdmin",
}


def role_for_permission(permission: str) -> str | None:
    """The smallest predefined role that grants `permission`, if we know one."""
    best = ""
    for prefix in PERMISSION_ROLES:
        if permission.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return PERMISSION_ROLES.get(best) if best else None


# --- clients ------------------------------------------------------------------------------------------


def _compute(name: str) -> Callable[[Any], Any]:
    def make(credentials: Any) -> Any:
        from google.cloud import compute_v1

        return getattr(compute_v1, name)(credentials=credentials)

    return make


def _storage(credentials: Any, project: str) -> Any:
    from google.cloud import storage

    return storage.Client(project=project, credentials=credentials)


def _iam_admin(credentials: Any) -> Any:
    from google.cloud import iam_admin_v1

    return iam_admin_v1.IAMClient(credentials=credentials)


def _projects(credentials: Any) -> Any:
    from google.cloud import resourcemanager_v3

    return resourcemanager_v3.ProjectsClient(credentials=credentials)


def _iap(credentials: Any) -> Any:
    from google.cloud import iap_v1

    return iap_v1.IdentityAwareProxyAdminServiceClient(credentials=credentials)


_FACTORIES: dict[str, tuple[str, Callable[..., Any]]] = {
    "instances": (COMPUTE_API, _compute("InstancesClient")),
    "images": (COMPUTE_API, _compute("ImagesClient")),
    "disks": (COMPUTE_API, _compute("DisksClient")),
    "firewalls": (COMPUTE_API, _compute("FirewallsClient")),
    "networks": (COMPUTE_API, _compute("NetworksClient")),
    "subnetworks": (COMPUTE_API, _compute("SubnetworksClient")),
    "zones": (COMPUTE_API, _compute("ZonesClient")),
    "machine_types": (COMPUTE_API, _compute("MachineTypesClient")),
    "zone_operations": (COMPUTE_API, _compute("ZoneOperationsClient")),
    "region_operations": (COMPUTE_API, _compute("RegionOperationsClient")),
    "global_operations": (COMPUTE_API, _compute("GlobalOperationsClient")),
    "region_instance_group_managers": (COMPUTE_API, _compute("RegionInstanceGroupManagersClient")),
    "regions": (COMPUTE_API, _compute("RegionsClient")),
    "instance_templates": (COMPUTE_API, _compute("InstanceTemplatesClient")),
    "health_checks": (COMPUTE_API, _compute("HealthChecksClient")),
    "region_backend_services": (COMPUTE_API, _compute("RegionBackendServicesClient")),
    "addresses": (COMPUTE_API, _compute("AddressesClient")),
    "forwarding_rules": (COMPUTE_API, _compute("ForwardingRulesClient")),
    "storage": (STORAGE_API, _storage),
    "iam_admin": (IAM_API, _iam_admin),
    "projects": (RESOURCE_MANAGER_API, _projects),
    "iap": (IAP_API, _iap),
}


class Clients:
    """Lazily built API clients for one project. `overrides` maps a client name to a ready object.

    Names: instances, images, disks, firewalls, networks, subnetworks, zones, machine_types,
    zone_operations, region_operations, global_operations, region_instance_group_managers, regions,
    instance_templates, health_checks, region_backend_services, addresses, forwarding_rules, storage,
    iam_admin, projects,
    iap. Other modules may add their own with `register`. Credentials come from Application Default
    Credentials unless given; a missing login becomes a `PypapoError` naming
    `gcloud auth application-default login`.
    """

    def __init__(
        self, project: str, *, credentials: Any = None, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.project = project
        self._credentials = credentials
        self._built: dict[str, Any] = dict(overrides or {})

    @staticmethod
    def register(name: str, api: str, factory: Callable[..., Any]) -> None:
        """Add a client kind: `factory(credentials)` (or `factory(credentials, project)`) builds it."""
        _FACTORIES[name] = (api, factory)

    @property
    def credentials(self) -> Any:
        if self._credentials is None:
            import google.auth

            with gcp_errors("authenticate to Google Cloud", project=self.project):
                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        return self._credentials

    def get(self, name: str) -> Any:
        if name not in self._built:
            if name not in _FACTORIES:
                raise KeyError(f"unknown client {name!r}")
            api, factory = _FACTORIES[name]
            with gcp_errors(f"create the {name} client", project=self.project, api=api):
                takes_project = len(inspect.signature(factory).parameters) > 1
                if name == "storage" and os.environ.get("STORAGE_EMULATOR_HOST"):
                    # fake-gcs-server (tests, local runs) takes no credentials.
                    from google.auth.credentials import AnonymousCredentials

                    creds: Any = AnonymousCredentials()
                else:
                    creds = self.credentials
                args = (creds, self.project) if takes_project else (creds,)
                self._built[name] = factory(*args)
        return self._built[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except KeyError:
            raise AttributeError(name) from None


# --- errors -------------------------------------------------------------------------------------------


def translate_error(
    exc: BaseException,
    action: str,
    *,
    project: str | None = None,
    api: str | None = None,
    role: str | None = None,
) -> PypapoError:
    """One line that says what failed and how to fix it. `api`/`role` are fallbacks for the hints."""
    from provisioner.cloud.gcp import failures

    return failures.translate(failures.Failure(exc, action, project=project, api=api, role=role))


@contextmanager
def gcp_errors(
    action: str, *, project: str | None = None, api: str | None = None, role: str | None = None
) -> Iterator[None]:
    """Run a block of API calls; any Google Cloud or auth error leaves as a `PypapoError`."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError) as exc:
        raise translate_error(exc, action, project=project, api=api, role=role) from exc


def is_not_found(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.NotFound)


def get_or_none(call: Callable[[], Any], action: str, *, project: str | None = None, api: str | None = None):
    """`call()` or None when the resource does not exist; other errors become `PypapoError`."""
    from google.api_core import exceptions as gexc

    with gcp_errors(action, project=project, api=api):
        try:
            return call()
        except gexc.NotFound:
            return None


# --- operations ---------------------------------------------------------------------------------------


def _refresher_for(op: Any, clients: Clients, project: str) -> Callable[[], Any]:
    """How to re-read a raw compute_v1.Operation: zone, region or global operations."""
    from google.cloud import compute_v1

    name = op.name
    if op.zone:
        zone = op.zone.rsplit("/", 1)[-1]
        return lambda: clients.get("zone_operations").get(
            request=compute_v1.GetZoneOperationRequest(project=project, zone=zone, operation=name)
        )
    if op.region:
        region = op.region.rsplit("/", 1)[-1]
        return lambda: clients.get("region_operations").get(
            request=compute_v1.GetRegionOperationRequest(project=project, region=region, operation=name)
        )
    return lambda: clients.get("global_operations").get(
        request=compute_v1.GetGlobalOperationRequest(project=project, operation=name)
    )


def _operation_error(op: Any) -> tuple[list[dict[str, str]], str]:
    errors = []
    error = getattr(op, "error", None)
    for e in getattr(error, "errors", None) or ():
        errors.append({"reason": str(getattr(e, "code", "")), "message": str(getattr(e, "message", ""))})
    return errors, "; ".join(e["message"] for e in errors if e["message"])


def wait_for_operation(
    op: Any,
    description: str,
    *,
    project: str | None = None,
    clients: Clients | None = None,
    timeout: float = 900.0,
    poll_interval: float = 2.0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Wait for a Compute Engine operation to finish, showing progress; raise `PypapoError` if it fails.

    `op` is either what compute_v1's mutating calls return (`google.api_core.extended_operation
    .ExtendedOperation`) or a raw `compute_v1.Operation` (then `clients` and `project` are needed to
    re-read it from the zone, region or global operations API). Returns the finished operation.
    """
    from google.api_core import exceptions as gexc
    from google.api_core.extended_operation import ExtendedOperation

    start = clock()
    last_line = ""
    say = progress or (lambda _m: None)

    if isinstance(op, ExtendedOperation):

        def is_done() -> bool:
            return bool(op.done())

        def current() -> Any:
            return op
    else:
        if clients is None or project is None:
            raise ValueError("a raw compute_v1.Operation needs clients and project to be waited on")
        refresh = _refresher_for(op, clients, project)
        state = {"op": op}

        def is_done() -> bool:
            if str(_status_name(state["op"])) != "DONE":
                state["op"] = refresh()
            return _status_name(state["op"]) == "DONE"

        def current() -> Any:
            return state["op"]

    with gcp_errors(description, project=project):
        while True:
            done = is_done()
            cur = current()
            elapsed = clock() - start
            pct = getattr(cur, "progress", 0) or 0
            line = f"  {description}: {_status_name(cur) or 'PENDING'}" + (f" {pct}%" if pct else "")
            if line != last_line:
                say(f"{line} ({elapsed:.0f}s)")
                last_line = line
            if done:
                break
            if elapsed >= timeout:
                raise PypapoError(
                    f"timed out after {timeout:.0f}s waiting to {description} (operation"
                    f" {getattr(cur, 'name', '?')}); it may still finish: run the command again to converge"
                )
            sleep(poll_interval)

        if isinstance(op, ExtendedOperation):
            op.result()  # already done: returns or raises the operation's error at once
            result = op
        else:
            result = current()
            errors, msg = _operation_error(result)
            if errors:
                status = getattr(result, "http_error_status_code", 0) or 400
                raise gexc.from_http_status(status, msg or "operation failed", errors=errors)
        for warning in getattr(result, "warnings", None) or ():
            say(f"  warning: {getattr(warning, 'message', warning)}")
        return result


class ComputeOperation:
    """Builds the same ExtendedOperation compute_v1 returns, from a refresh callable and a first state.

    compute_v1 wraps its `compute_v1.Operation` in a private subclass that maps `error_code` and
    `error_message` onto the HTTP error fields; this is that mapping, for code that holds a raw
    operation (or a thin-layer double that serves real `compute_v1.Operation` objects).
    """

    @staticmethod
    def make(refresh: Callable[[], Any], initial: Any) -> Any:
        from google.api_core.extended_operation import ExtendedOperation

        class _Op(ExtendedOperation):
            @property
            def error_message(self) -> str:
                return self._extended_operation.http_error_message

            @property
            def error_code(self) -> int:
                return self._extended_operation.http_error_status_code

        return _Op.make(refresh, lambda: None, initial)


def _status_name(op: Any) -> str:
    status = getattr(op, "status", "")
    name = getattr(status, "name", None)
    return str(name if name is not None else status)

"""Google Cloud failures recognized one at a time: each matcher below knows one failure (missing
credentials, a disabled API, no billing, ...) and returns its typed error, or None. `translate` runs
them in order; the first answer wins, so a specific reading (a disabled API, which Google reports as
403) comes before a general one (permission denied)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from provisioner.cloud.gcp.base import role_for_permission
from provisioner.errors import (
    ApiNotEnabled,
    BillingDisabled,
    CapacityExhausted,
    CloudError,
    NameTaken,
    NotAuthenticated,
    PermissionDenied,
    ProjectNotFound,
    QuotaExceeded,
    RequestRejected,
    ResourceNotFound,
)

_ENABLE_LINK_RE = re.compile(r"apis/api/([a-z0-9-]+\.googleapis\.com)")
_API_RE = re.compile(r"\b([a-z0-9-]+\.googleapis\.com)\b")
_PERMISSION_RES = (
    re.compile(r"Required '([a-zA-Z0-9_.]+)' permission"),
    re.compile(r"[Pp]ermission '([a-zA-Z0-9_.]+)' denied"),
    re.compile(r"does not have ([a-z][a-zA-Z0-9]*\.[a-zA-Z0-9_.]+) access"),
    re.compile(
        r"\b((?:compute|storage|iam|iap|resourcemanager|cloudbuild|cloudscheduler)\.[a-zA-Z]+\.[a-zA-Z]+)\b"
    ),
)
_PROJECT_NOT_FOUND_RES = (
    re.compile(r"The resource 'projects/([^/'\s]+)' was not found"),
    re.compile(r"[Pp]roject '?([a-z][a-z0-9:.-]*)'? (?:is )?not found"),
    re.compile(r"Unknown project id:? '?([a-z][a-z0-9:.-]*)"),
    re.compile(r"Invalid project(?: id)?:? '?([a-z][a-z0-9:.-]*)"),
)
_API_DISABLED = {"SERVICE_DISABLED", "ACCESSNOTCONFIGURED", "API_DISABLED"}
_BILLING = {"BILLING_DISABLED", "ACCOUNTDISABLED"}
_NO_PROJECT = {"CONSUMER_INVALID", "PROJECT_NOT_FOUND", "USER_PROJECT_DENIED"}
_QUOTA = {
    "QUOTA_EXCEEDED",
    "QUOTAEXCEEDED",
    "RATELIMITEXCEEDED",
    "RATE_LIMIT_EXCEEDED",
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "RESOURCE_EXHAUSTED",
}
_DENIED = {"IAM_PERMISSION_DENIED", "FORBIDDEN"}
_EXISTS = {"ALREADYEXISTS", "ALREADY_EXISTS"}


@dataclass(frozen=True)
class Failure:
    """One failed call as the matchers read it: the exception, what we were doing, and the fallbacks
    (`api`, `role`) for hints the error itself does not carry."""

    exc: BaseException
    action: str
    project: str | None = None
    api: str | None = None
    role: str | None = None

    @property
    def where(self) -> str:
        return f"cannot {self.action}" if self.action else "Google Cloud call failed"

    @cached_property
    def reasons(self) -> set[str]:
        return {r.upper() for r in _error_reasons(self.exc)}

    @cached_property
    def meta(self) -> dict[str, str]:
        return _error_metadata(self.exc)

    @cached_property
    def text(self) -> str:
        return _full_text(self.exc)

    @property
    def short(self) -> str:
        return _short(self.exc)

    def kw(self) -> dict[str, Any]:
        return {"action": self.action, "project": self.project}


Matcher = Callable[[Failure], CloudError | None]


def _credentials_missing(f: Failure) -> CloudError | None:
    if not isinstance(f.exc, auth_exc.DefaultCredentialsError):
        return None
    return NotAuthenticated(
        f"{f.where}: no Google Cloud credentials found; run `gcloud auth application-default login`"
        " (or set GOOGLE_APPLICATION_CREDENTIALS)",
        **f.kw(),
    )


def _credentials_expired(f: Failure) -> CloudError | None:
    if not isinstance(f.exc, auth_exc.RefreshError):
        return None
    return NotAuthenticated(
        f"{f.where}: Google Cloud credentials are expired or revoked ({f.short});"
        " run `gcloud auth application-default login`",
        **f.kw(),
    )


def _not_an_api_error(f: Failure) -> CloudError | None:
    # Every matcher after this one reads an API error's status, reasons and metadata.
    return None if isinstance(f.exc, gexc.GoogleAPIError) else CloudError(f"{f.where}: {f.exc}", **f.kw())


def _gave_up(f: Failure) -> CloudError | None:
    if isinstance(f.exc, gexc.RetryError):
        return CloudError(f"{f.where}: gave up after retries: {f.short}; try again", **f.kw())
    if isinstance(f.exc, gexc.DeadlineExceeded):
        return CloudError(f"{f.where}: the API did not answer in time; try again", **f.kw())
    return None


def _api_disabled(f: Failure) -> CloudError | None:
    if not (
        f.reasons & _API_DISABLED or "has not been used in project" in f.text or "it is disabled" in f.text
    ):
        return None
    # The ErrorInfo names the service; else the "enable it" link in the message; else the caller's
    # API (the request URL in the message names the endpoint, which may not be the disabled API).
    service = f.meta.get("service")
    if not service:
        link = _ENABLE_LINK_RE.search(f.text)
        found = _API_RE.findall(f.text)
        service = link.group(1) if link else (f.api or (found[0] if found else "the required API"))
    proj = f.project or f.meta.get("consumer", "").removeprefix("projects/") or "PROJECT"
    return ApiNotEnabled(
        f"{f.where}: the {service} API is not enabled in project {proj}; run"
        f" `gcloud services enable {service} --project {proj}` and retry in a minute",
        api=service,
        action=f.action,
        project=proj,
    )


def _billing_disabled(f: Failure) -> CloudError | None:
    if not (f.reasons & _BILLING or ("billing" in f.text.lower() and getattr(f.exc, "code", None) == 403)):
        return None
    return BillingDisabled(
        f"{f.where}: billing is not enabled for project {f.project or '?'}; link a billing account"
        f" (`gcloud billing projects link {f.project or 'PROJECT'} --billing-account ACCOUNT`)",
        **f.kw(),
    )


def _project_not_found(f: Failure) -> CloudError | None:
    if not (f.reasons & _NO_PROJECT or any(r.search(f.text) for r in _PROJECT_NOT_FOUND_RES)):
        return None
    flag = f" --project {f.project}" if f.project else " --project"
    return ProjectNotFound(
        f"{f.where}: project {f.project or '?'} does not exist or you cannot see it; check{flag}"
        " (`gcloud projects list` shows the projects you can use)",
        **f.kw(),
    )


def _out_of_quota(f: Failure) -> CloudError | None:
    if not (isinstance(f.exc, gexc.ResourceExhausted) or f.reasons & _QUOTA):
        return None
    if "ZONE_RESOURCE_POOL_EXHAUSTED" in f.reasons:
        return CapacityExhausted(
            f"{f.where}: the zone has no capacity for this machine type right now; try another --zone"
            " or --machine-type",
            **f.kw(),
        )
    quota = f.meta.get("quota_metric") or f.meta.get("quota_limit") or None
    shown = f" ({quota})" if quota else ""
    return QuotaExceeded(
        f"{f.where}: quota exceeded{shown}: {f.short}; request more at"
        f" https://console.cloud.google.com/iam-admin/quotas?project={f.project or 'PROJECT'}"
        " or use another --region/--machine-type",
        quota=quota,
        **f.kw(),
    )


def _unauthenticated(f: Failure) -> CloudError | None:
    if not isinstance(f.exc, gexc.Unauthenticated | gexc.Unauthorized):
        return None
    return NotAuthenticated(
        f"{f.where}: not authenticated ({f.short}); run `gcloud auth application-default login`", **f.kw()
    )


def _permission_named(f: Failure) -> str | None:
    """The IAM permission the error names (`compute.instances.create`), never the API's host name
    (`compute.googleapis.com` in the request URL of a bare 403 is not a permission)."""
    if f.meta.get("permission"):
        return f.meta["permission"]
    for pattern in _PERMISSION_RES:
        for m in pattern.finditer(f.text):
            if not m.group(1).endswith(".googleapis.com"):
                return m.group(1)
    return None


def _permission_denied(f: Failure) -> CloudError | None:
    if not (isinstance(f.exc, gexc.Forbidden | gexc.PermissionDenied) or f.reasons & _DENIED):
        return None
    permission = _permission_named(f)
    needed = (role_for_permission(permission) if permission else None) or f.role
    perm = f" ({permission})" if permission else ""
    hosts = _API_RE.findall(f.text)
    api = hosts[0] if hosts else f.api
    if not needed and not permission and api:
        # A bare 403 names nothing: a disabled API can answer so, and so can a missing role.
        proj = f.project or "PROJECT"
        return PermissionDenied(
            f"{f.where}: permission denied by {api}, which names no permission ({f.short}); check that"
            f" the API is enabled (`gcloud services enable {api} --project {proj}`) and that your account"
            f" holds a role on project {proj} that allows this (`gcloud projects get-iam-policy {proj}`)",
            **f.kw(),
        )
    if not needed:
        return PermissionDenied(
            f"{f.where}: permission denied{perm}: {f.short}", permission=permission, **f.kw()
        )
    return PermissionDenied(
        f"{f.where}: permission denied{perm}; grant yourself {needed}"
        f" (`gcloud projects add-iam-policy-binding {f.project or 'PROJECT'}"
        f" --member user:YOU --role {needed}`)",
        permission=permission,
        role=needed,
        **f.kw(),
    )


def _name_taken(f: Failure) -> CloudError | None:
    if not (isinstance(f.exc, gexc.Conflict | gexc.AlreadyExists) or f.reasons & _EXISTS):
        return None
    if "not available" in f.text or "bucket name" in f.text.lower():
        return NameTaken(
            f"{f.where}: that name is taken by someone else (bucket names are global); choose another"
            " with --bucket",
            global_namespace=True,
            **f.kw(),
        )
    return NameTaken(
        f"{f.where}: the name is already in use: {f.short}; choose another name or remove the"
        " existing resource",
        **f.kw(),
    )


def _not_found(f: Failure) -> CloudError | None:
    return (
        ResourceNotFound(f"{f.where}: not found: {f.short}", **f.kw())
        if isinstance(f.exc, gexc.NotFound)
        else None
    )


def _bad_request(f: Failure) -> CloudError | None:
    if not isinstance(f.exc, gexc.BadRequest):
        return None
    return RequestRejected(f"{f.where}: the request was rejected: {f.short}", **f.kw())


MATCHERS: tuple[Matcher, ...] = (
    _credentials_missing,
    _credentials_expired,
    _not_an_api_error,
    _gave_up,
    _api_disabled,
    _billing_disabled,
    _project_not_found,
    _out_of_quota,
    _unauthenticated,
    _permission_denied,
    _name_taken,
    _not_found,
    _bad_request,
)


def translate(failure: Failure) -> CloudError:
    """The first matcher's error; an API error no matcher knows keeps its type name and its words."""
    for matcher in MATCHERS:
        if (error := matcher(failure)) is not None:
            return error
    return CloudError(f"{failure.where}: {type(failure.exc).__name__}: {failure.short}", **failure.kw())


def _error_reasons(exc: Any) -> list[str]:
    reasons: list[str] = []
    reason = getattr(exc, "reason", None)
    if reason:
        reasons.append(str(reason))
    for err in getattr(exc, "errors", None) or ():
        # REST JSON errors carry "reason"; compute_v1.Errors from a failed operation carry "code".
        if isinstance(err, dict):
            r = err.get("reason") or err.get("code")
        else:
            r = getattr(err, "reason", None) or getattr(err, "code", None)
        if r:
            reasons.append(str(r))
    for detail in getattr(exc, "details", None) or ():
        r = detail.get("reason") if isinstance(detail, dict) else getattr(detail, "reason", None)
        if r:
            reasons.append(str(r))
    return reasons


def _error_metadata(exc: Any) -> dict[str, str]:
    meta: dict[str, str] = {}
    for source in [getattr(exc, "metadata", None), *(getattr(exc, "details", None) or ())]:
        if isinstance(source, dict) and "metadata" in source and isinstance(source["metadata"], dict):
            source = source["metadata"]
        if source is None:
            continue
        try:
            meta.update({str(k): str(v) for k, v in dict(source).items()})
        except (TypeError, ValueError):
            continue
    return meta


def _full_text(exc: Any) -> str:
    parts = [str(getattr(exc, "message", "") or exc)]
    for err in getattr(exc, "errors", None) or ():
        parts.append(str(err.get("message", "")) if isinstance(err, dict) else str(err))
    for detail in getattr(exc, "details", None) or ():
        parts.append(str(detail))
    return " ".join(parts)


def _short(exc: Any) -> str:
    """The API's own words: its message, or the per-error messages when the message is just a code."""
    message = str(getattr(exc, "message", "") or exc).strip()
    message = message.splitlines()[0] if message else ""
    extra = []
    for err in getattr(exc, "errors", None) or ():
        m = err.get("message") if isinstance(err, dict) else getattr(err, "message", None)
        if m and str(m) not in message:
            extra.append(str(m).strip())
    if extra and (not message or message.isupper() or len(message) < 20):
        message = "; ".join(extra)
    elif extra:
        message = f"{message} ({'; '.join(extra)})"
    return message[:300]

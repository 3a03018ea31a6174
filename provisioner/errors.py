"""Typed failures a user can act on. Plain exceptions: only `provisioner.cli` turns them into an
`error: ...` line and an exit code, so the engine and the pure modules never depend on click.
And how a message (or a page) shows a value: input quoted, a count, a size."""

from __future__ import annotations

import re


class PypapoError(Exception):
    """A failure the user can act on. The message is one line and names the fix where there is one."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidDistribution(PypapoError):
    """A file offered for publishing is not a valid distribution (bad name, archive, metadata, paths)."""

    exit_code = 2


class ConflictError(PypapoError):
    """A write lost against another writer more times than the retry budget allows, or bytes differ."""

    exit_code = 3


class CloudError(PypapoError):
    """A Google Cloud call failed; `action` is what we were doing, in words a user recognizes."""

    def __init__(self, message: str, *, action: str = "", project: str | None = None) -> None:
        super().__init__(message)
        self.action = action
        self.project = project


class ApiNotEnabled(CloudError):
    """The project has not enabled an API the call needs (`gcloud services enable API`)."""

    def __init__(self, message: str, *, api: str, action: str = "", project: str | None = None) -> None:
        super().__init__(message, action=action, project=project)
        self.api = api


class PermissionDenied(CloudError):
    """The caller lacks a permission; `role` is the smallest predefined role that grants it, if known."""

    def __init__(
        self,
        message: str,
        *,
        permission: str | None = None,
        role: str | None = None,
        action: str = "",
        project: str | None = None,
    ) -> None:
        super().__init__(message, action=action, project=project)
        self.permission = permission
        self.role = role


class NotAuthenticated(CloudError):
    """No usable credentials (none, expired, revoked, refused): `gcloud auth application-default login`."""


class BillingDisabled(CloudError):
    """The project has no billing account linked (`gcloud billing projects link`)."""


class ProjectNotFound(CloudError):
    """The project does not exist or the caller cannot see it (check --project)."""


class QuotaExceeded(CloudError):
    """A quota or rate limit was hit; `quota` is the metric or limit the API named, if any."""

    def __init__(
        self, message: str, *, quota: str | None = None, action: str = "", project: str | None = None
    ) -> None:
        super().__init__(message, action=action, project=project)
        self.quota = quota


class CapacityExhausted(CloudError):
    """The zone has no capacity for the machine type right now (another --zone or --machine-type)."""


class NameTaken(CloudError):
    """The name is in use; `global_namespace` when it is a bucket name, taken by anyone anywhere."""

    def __init__(
        self, message: str, *, global_namespace: bool = False, action: str = "", project: str | None = None
    ) -> None:
        super().__init__(message, action=action, project=project)
        self.global_namespace = global_namespace


class ResourceNotFound(CloudError):
    """The resource the call names does not exist."""


class RequestRejected(CloudError):
    """The API refused the request as invalid (HTTP 400)."""


# What input may show as is inside a message: names, versions, paths, URLs. Anything else (spaces,
# quotes, control or non-ASCII characters) is shown quoted with escapes.
_PLAIN = re.compile(r"[\w.+~=@%,:/-]+", re.ASCII)


def quoted(value: str) -> str:
    """`value`, which came from input (a filename, a member name, a metadata field), as a message
    shows it: as is when plain, else quoted and escaped, so that it can never end the line and
    start a forged one (`error: ...`) nor hide behind look-alike or terminal control characters."""
    return value if _PLAIN.fullmatch(value) else ascii(value)


def one_line(message: str) -> str:
    """A message with every non-printable character escaped: what gets printed is exactly one line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)


def counted(n: int, noun: str) -> str:
    """`n` things as a summary line says it: "1 project", "2,000 projects"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def human_size(n: int) -> str:
    """A size in bytes as a person reads it: "893 B", "1.2 kB", "14.0 MB" (SI units, as pip shows them)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"

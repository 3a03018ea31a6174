"""The one guest-attribute contract between the appliance's scripts and the provisioner.

The startup script (serve mode) and the image builder's bake script write guest attributes under
`pypapo/` through the metadata server; `create`, `rollout`, `status` and `image build` read them back
through `instances.getGuestAttributes`. Key names and values are spelled here only: the templates get
them from `template_context()`, the readers judge what they read with `serving()` and `baking()`.
Pure: plain `{key: value}` mappings in (keys without the namespace), `Report`s out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

NAMESPACE = "pypapo"
QUERY_PATH = f"{NAMESPACE}/"  # getGuestAttributes(queryPath=...) for every key below


class Key(StrEnum):
    """The keys, under NAMESPACE."""

    READY = "ready"  # serve: "false" at start, READY_TRUE once NGINX serves the mounted bucket
    STATUS = "status"  # serve: STATUS_STARTING, then STATUS_READY, or "not ready: REASON"
    ERROR = "error"  # serve and bake: REASON of a failure (absent while none); wins over every other key
    DIGEST = "digest"  # serve: the config digest the running script carries
    # serve, written before READY: CONTENT_OK, or what of the bucket's content is broken for an audience
    # (the conda channel: /healthz/conda's answer). Never blocks readiness: a warning for the waiter.
    CONTENT = "content"
    BAKE = "bake"  # bake: BAKE_DONE (after the versions) or BAKE_FAILED
    GCSFUSE_VERSION = "gcsfuse-version"  # bake: the installed package version (an image label)
    NGINX_VERSION = "nginx-version"  # bake: likewise


READY_TRUE = "true"
READY_FALSE = "false"
STATUS_STARTING = "starting"
STATUS_READY = "ready"
NOT_READY = "not ready"  # status prefix of a final failure: "not ready: REASON"
CONTENT_OK = "ok"
BAKE_DONE = "done"
BAKE_FAILED = "failed"
VERSION_KEYS = (Key.GCSFUSE_VERSION, Key.NGINX_VERSION)


class State(StrEnum):
    """What the guest says. The values are the `appliance` field of `provision status --json`."""

    STARTING = "starting"  # nothing final yet: keep waiting
    READY = "ready"
    FAILED = "error"


@dataclass(frozen=True)
class Report:
    state: State
    detail: str  # the reason of a failure, or what the guest is doing


def _failure(attrs: Mapping[str, str]) -> str | None:
    """The reason of a reported failure: `error`, else a final "not ready: REASON" status."""
    error = attrs.get(Key.ERROR, "")
    if error:
        return error
    status = attrs.get(Key.STATUS, "")
    if status == NOT_READY or status.startswith(NOT_READY + ":"):
        return status.removeprefix(NOT_READY).removeprefix(":").strip() or status
    return None


def serving(attrs: Mapping[str, str]) -> Report:
    """The serving appliance's state. Either failure signal counts (a dropped write must not hide one)."""
    reason = _failure(attrs)
    if reason is not None:
        return Report(State.FAILED, reason)
    ready = attrs.get(Key.READY)
    if ready == READY_TRUE:
        return Report(State.READY, ready)
    if not attrs:
        return Report(State.STARTING, "no guest attributes yet")
    status = attrs.get(Key.STATUS)
    if status and status not in (STATUS_STARTING, STATUS_READY):
        return Report(State.STARTING, status)  # what the script waits for, in its words
    return Report(State.STARTING, f"{NAMESPACE}/{Key.READY}={ready}" if ready is not None else "starting")


def content_warning(attrs: Mapping[str, str]) -> str | None:
    """What of the bucket's content a ready appliance found broken (the conda channel), to be printed as
    a warning, never a failure: no new machine can fix a document of the shared bucket. None when fine
    or not reported (an appliance from before the key, a bake)."""
    value = attrs.get(Key.CONTENT, CONTENT_OK).strip()
    return None if value in ("", CONTENT_OK) else value


def baking(attrs: Mapping[str, str]) -> Report:
    """The image builder's state: `bake=done`, or a failure (`error`, or `bake=failed` alone)."""
    reason = _failure(attrs)
    if reason is None and attrs.get(Key.BAKE) == BAKE_FAILED:
        reason = "see its serial log"
    if reason is not None:
        return Report(State.FAILED, reason)
    if attrs.get(Key.BAKE) == BAKE_DONE:
        return Report(State.READY, BAKE_DONE)
    return Report(
        State.STARTING, f"{NAMESPACE}/{Key.BAKE}={attrs[Key.BAKE]}" if Key.BAKE in attrs else "baking"
    )


def versions(attrs: Mapping[str, str]) -> dict[str, str]:
    """The package versions a finished bake reported (label values), "unknown" where one is missing."""
    return {str(k): attrs.get(k, "unknown") for k in VERSION_KEYS}


def template_context() -> dict[str, str]:
    """The names the templates write: `guest_ns`, `key_<name>`, and the values."""
    return {
        "guest_ns": NAMESPACE,
        **{f"key_{k.name.lower()}": k.value for k in Key},
        "ready_true": READY_TRUE,
        "ready_false": READY_FALSE,
        "status_starting": STATUS_STARTING,
        "status_ready": STATUS_READY,
        "not_ready": NOT_READY,
        "content_ok": CONTENT_OK,
        "bake_done": BAKE_DONE,
        "bake_failed": BAKE_FAILED,
    }

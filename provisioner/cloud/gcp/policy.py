"""The one IAM policy helper: read-modify-write of a member in a role, for every kind of policy we touch.

Four APIs hold the policies pypapo edits: IAP (the tunnel resource), Compute (the instance), Cloud
Storage (the bucket), Resource Manager and IAM admin (the project, a service account). Their policy
objects differ (google.iam.v1 protobuf, compute_v1 proto-plus, storage's dict bindings); the rules do not:

- read and write **version 3**, so conditional bindings (time- or port-limited access, common on IAP)
  are read whole and written back unchanged, never dropped or refused;
- a binding is a role *and* its condition: an edit touches only the binding whose condition equals the
  one asked for (none, or pypapo's own title, description and expression), never another condition's;
- IAM keeps no empty bindings;
- the write carries the read's etag: a concurrent edit makes it fail, and the whole cycle is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud.plan import Condition

POLICY_VERSION = 3
# What a lost etag race looks like: IAP/Resource Manager answer ABORTED or FAILED_PRECONDITION,
# Compute 409/412, Cloud Storage 412.
CONCURRENT_EDIT = (gexc.Aborted, gexc.Conflict, gexc.FailedPrecondition, gexc.PreconditionFailed)
ATTEMPTS = 5

P = TypeVar("P")


def _bindings(policy: Any) -> list[Any]:
    return list(policy.bindings if hasattr(policy, "bindings") else policy)


def _role(binding: Any) -> str:
    return binding["role"] if isinstance(binding, dict) else binding.role


def _members(binding: Any) -> list[str]:
    return list(binding["members"] if isinstance(binding, dict) else binding.members)


def condition_of(binding: Any) -> Condition | None:
    """The binding's condition (None when it has none), whatever the policy kind."""
    if isinstance(binding, dict):
        c = binding.get("condition") or {}
        get = c.get
    else:
        try:
            expr = binding.condition
        except AttributeError:
            return None
        get = lambda field, default="": getattr(expr, field, default)  # noqa: E731
    if not get("expression", ""):
        return None
    return Condition(get("title", "") or "", get("description", "") or "", get("expression", ""))


def _new_binding(policy: Any, role: str, members: list[str], condition: Condition | None) -> Any:
    if isinstance(policy, compute_v1.Policy):
        b = compute_v1.Binding(role=role, members=members)
        if condition:
            b.condition = compute_v1.Expr(**condition.to_dict())
        return b
    doc: dict[str, Any] = {"role": role, "members": set(members)}
    if condition:
        doc["condition"] = condition.to_dict()
    return doc


def members(policy: Any) -> dict[str, set[str]]:
    """role -> members of any of the policy kinds (conditional bindings included)."""
    out: dict[str, set[str]] = {}
    for b in _bindings(policy):
        out.setdefault(_role(b), set()).update(_members(b))
    return out


def has_bindings(policy: Any) -> bool:
    return policy is not None and any(_members(b) for b in _bindings(policy))


def with_member(
    policy: Any, role: str, member: str, *, present: bool = True, condition: Condition | None = None
) -> bool:
    """Add (or remove) `member` in the binding of `role` under exactly `condition` (None: the
    unconditional one), in place; True if it changed. Sets the policy's version to 3, which the write
    must carry for conditional bindings to survive (and which a conditional binding needs)."""
    bindings = _bindings(policy)
    target = next((b for b in bindings if _role(b) == role and condition_of(b) == condition), None)
    have = _members(target) if target is not None else []
    if (member in have) == present:
        return False
    want = [*have, member] if present else [m for m in have if m != member]
    if isinstance(policy, compute_v1.Policy):
        new: list[Any] = [b for b in bindings if b is not target]
        if want:
            at = bindings.index(target) if target is not None else len(new)
            new.insert(at, _new_binding(policy, role, want, condition))
        policy.bindings = new
    elif hasattr(policy, "DESCRIPTOR"):  # google.iam.v1 protobuf
        if target is None:
            added = policy.bindings.add(role=role, members=want)
            if condition:
                added.condition.title = condition.title
                added.condition.description = condition.description
                added.condition.expression = condition.expression
        elif want:
            del target.members[:]
            target.members.extend(want)
        else:
            policy.bindings.remove(target)
    else:  # google.api_core.iam.Policy (Cloud Storage): bindings are dicts
        new = [dict(b) for b in bindings if b is not target]
        if want:
            new.append(_new_binding(policy, role, want, condition))
        policy.bindings = new
    policy.version = POLICY_VERSION
    return True


def carry_over(policy: P, bindings_from: Any) -> P:
    """`policy` (freshly read, for its etag) with the bindings of `bindings_from`, version 3."""
    if isinstance(policy, compute_v1.Policy):
        policy.bindings = list(bindings_from.bindings)
    else:
        del policy.bindings[:]  # type: ignore[attr-defined]
        policy.bindings.extend(bindings_from.bindings)  # type: ignore[attr-defined]
    policy.version = POLICY_VERSION  # type: ignore[attr-defined]
    return policy


def read_modify_write(
    read: Callable[[], P],
    edit: Callable[[P], bool],
    write: Callable[[P], None],
    *,
    attempts: int = ATTEMPTS,
    retry_also: Callable[[Exception], bool] = lambda _exc: False,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """`read()` (version 3), `edit` it, `write` it; True if it changed. A lost etag race (or an error
    `retry_also` accepts, such as a member that has not propagated yet) repeats the whole cycle."""
    for attempt in range(attempts):
        policy = read()
        if not edit(policy):
            return False
        try:
            write(policy)
            return True
        except Exception as exc:
            if attempt == attempts - 1 or not (isinstance(exc, CONCURRENT_EDIT) or retry_also(exc)):
                raise
            sleep(min(0.5 * 2**attempt, 16.0))
    return False


def member_editor(
    role: str, member: str, present: bool, condition: Condition | None = None
) -> Callable[[Any], bool]:
    return lambda policy: with_member(policy, role, member, present=present, condition=condition)

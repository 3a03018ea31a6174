"""Pure: the IAM bindings behind `provision grant/revoke MEMBER --role reader|publisher|verifier`.

One list of `plan.IamChange`s per role and deployment shape; `apply.grant` sends each through the thin
layer (a version 3 read-modify-write with the etag), `--dry-run` prints `change_document` of the same
list. A grant and its revoke are the same list, so a revoke removes exactly what the grant added: the
member from the binding of that role *under that condition*, and nothing else (other members, other
conditions on the same role, other roles stay as they were).

- single VM: everything is scoped by the resource it is set on (the instance's tunnel resource, the
  instance's own policy, the bucket, the VM's service account); on the tunnel a port condition tells
  the two pypapo roles apart (the reader's index port, the verifier's port 22).
- group (`--replicas N`): instances have generated names, so tunnel access sits on the project's tunnel
  resource and reads on the project, each under a condition naming the group's instances
  (`provisioner.cloud.group`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from provisioner.cloud import group, names
from provisioner.cloud import plan as planlib
from provisioner.cloud.plan import Condition, IamChange, IamResource
from provisioner.cloud.settings import Settings


class Role(StrEnum):
    READER = "reader"  # open the tunnel to the index port
    PUBLISHER = "publisher"  # write objects in the bucket
    VERIFIER = "verifier"  # `provision verify`: SSH (OS Login) through IAP to the appliance(s)


ROLE_HELP = {
    Role.READER: "open the IAP tunnel to the index port",
    Role.PUBLISHER: "write objects in the bucket",
    Role.VERIFIER: "SSH to the appliance(s) with OS Login through IAP, for `provision verify`",
}


def _condition(b: group.ConditionalBinding) -> Condition | None:
    return Condition(b.title, b.description, b.expression) if b.expression else None


def _change(kind: IamResource, b: group.ConditionalBinding) -> IamChange:
    resource = b.resource
    if kind is IamResource.SERVICE_ACCOUNT:
        resource = resource.rsplit("/", 1)[-1]  # projects/P/serviceAccounts/EMAIL -> EMAIL
    return IamChange(kind, resource, b.role, b.member, _condition(b))


def _port_condition(s: Settings, label: str, port: int, purpose: str) -> Condition:
    """The single VM's tunnel binding of one pypapo role: this port of the instance only."""
    return Condition(
        f"pypapo {s.instance} {label}",
        f"IAP tunnel to instance {s.instance}, port {port} only ({purpose})",
        f"destination.port == {port}",
    )


def _instance_read(s: Settings, member: str) -> IamChange:
    """The verifier reads the instance (its id, its published host keys): its own binding, so that
    revoking the verifier never takes the reader's `compute.viewer` on the same instance away."""
    name = f"projects/{s.project}/zones/{s.zone}/instances/{s.instance}"
    return IamChange(
        IamResource.PROJECT,
        f"projects/{s.project}",
        planlib.INSTANCE_VIEWER_ROLE,
        member,
        Condition(
            f"pypapo {s.instance} verify (read)",
            f"read instance {s.instance} only (pypapo verify)",
            f'resource.type == "compute.googleapis.com/Instance" && resource.name == "{name}"',
        ),
    )


def _single_vm(s: Settings, member: str, role: Role) -> list[IamChange]:
    tunnel = names.tunnel_resource(s.project, s.zone, s.instance)
    if role is Role.READER:
        # The port condition keeps a reader off sshd (port 22): reading the index is all the role is for.
        return [
            IamChange(
                IamResource.IAP_TUNNEL_INSTANCE,
                tunnel,
                planlib.TUNNEL_ROLE,
                member,
                _port_condition(s, "index port", s.port, "pypapo"),
            ),
            IamChange(IamResource.INSTANCE, f"{s.zone}/{s.instance}", planlib.INSTANCE_VIEWER_ROLE, member),
        ]
    if role is Role.PUBLISHER:
        return [IamChange(IamResource.BUCKET, s.bucket, planlib.PUBLISHER_ROLE, member)]
    return [
        IamChange(
            IamResource.IAP_TUNNEL_INSTANCE,
            tunnel,
            planlib.TUNNEL_ROLE,
            member,
            _port_condition(s, "ssh", 22, "pypapo verify"),
        ),
        IamChange(IamResource.INSTANCE, f"{s.zone}/{s.instance}", group.OS_LOGIN_ROLE, member),
        _instance_read(s, member),
        IamChange(
            IamResource.SERVICE_ACCOUNT, s.service_account_email, group.SERVICE_ACCOUNT_USER_ROLE, member
        ),
    ]


def _group(s: Settings, member: str, role: Role) -> list[IamChange]:
    if role is Role.READER:
        return [
            _change(IamResource.IAP_TUNNEL, group.reader_tunnel_binding(s, member)),
            _change(IamResource.PROJECT, group.reader_viewer_binding(s, member)),
        ]
    if role is Role.PUBLISHER:
        return [IamChange(IamResource.BUCKET, s.bucket, planlib.PUBLISHER_ROLE, member)]
    tunnel, os_login, act_as = group.verifier_bindings(s, member)
    read = dataclasses.replace(
        os_login,
        role=planlib.INSTANCE_VIEWER_ROLE,
        title=f"pypapo {s.instance} verify (read)",
        description=f"read the {s.instance} group's instances only (pypapo verify)",
    )
    return [
        _change(IamResource.IAP_TUNNEL, tunnel),
        _change(IamResource.PROJECT, os_login),
        _change(IamResource.PROJECT, read),
        _change(IamResource.SERVICE_ACCOUNT, act_as),
    ]


def is_group(s: Settings) -> bool:
    return s.group_mode


def grant_changes(s: Settings, member: str, role: str) -> list[IamChange]:
    """The bindings behind `provision grant MEMBER --role ROLE` for this deployment's shape."""
    member = planlib.normalize_member(member)
    build = _group if is_group(s) else _single_vm
    return build(s, member, Role(role))


def revoke_changes(s: Settings, member: str, role: str) -> list[IamChange]:
    """What `provision revoke` removes: the grant's bindings and, for a single VM's reader, the
    unconditional tunnel binding pypapo granted before readers were limited to the index port."""
    changes = grant_changes(s, member, role)
    if not is_group(s) and Role(role) is Role.READER:
        changes.append(dataclasses.replace(changes[0], condition=None))
    return changes


def notes(s: Settings, role: str) -> list[str]:
    """What a grant cannot do by itself, said next to what it does."""
    if Role(role) is Role.VERIFIER:
        return [group.VERIFIER_EXTERNAL_NOTE]
    return []


def role_summary(changes: Iterable[IamChange]) -> str:
    return ", ".join(f"{c.role} on {c.resource_type} {c.resource}" for c in changes)


def change_document(operation: str, role: str, changes: list[IamChange], s: Settings) -> dict[str, Any]:
    """The exact policy change of a grant or revoke: one binding edit per resource, with its condition."""
    action = "add" if operation == "grant" else "remove"
    return {
        "schema_version": 1,
        "kind": "pypapo-iam-change",
        "operation": operation,
        "role": role,
        "deployment": "group" if is_group(s) else "instance",
        "policy_version": 3,
        "bindings": [
            {
                "action": action,
                "resource_type": c.resource_type,
                "resource": c.resource,
                "role": c.role,
                "members": [c.member],
                # None: unconditional, scoped by the resource it is set on
                "condition": c.condition.to_dict() if c.condition else None,
            }
            for c in changes
        ],
        "notes": notes(s, role),
    }


def change_text(doc: dict[str, Any]) -> str:
    mark = "+" if doc["operation"] == "grant" else "-"
    lines = [f"{doc['operation']} {doc['role']} (dry run: nothing sent, no credentials used):"]
    for b in doc["bindings"]:
        lines.append(f"  {mark} {b['role']} for {b['members'][0]} on {b['resource_type']} {b['resource']}")
        c = b["condition"]
        lines.append(f"      condition: {c['title']!r}: {c['expression']}" if c else "      condition: none")
    lines.extend(f"note: {n}" for n in doc["notes"])
    return "\n".join(lines) + "\n"

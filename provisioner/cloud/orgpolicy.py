"""Pure: organization policies that would make `create` wait for nothing, judged before anything is made.

- `constraints/compute.disableGuestAttributesAccess` (boolean): the appliance and the builder report
  through guest attributes; enforced, `pypapo/ready` and `bake=done` never arrive.
- `constraints/compute.vmExternalIpAccess` (list of instance names allowed an external IP): the builder's
  ephemeral IP (its only egress, for the minutes of the bake) is refused unless the list allows all, or
  names the builder, whose name carries a timestamp and so is never on a fixed list.
The effective policies are read by `cloud.gcp.orgpolicy` (real `orgpolicy_v2.Policy` objects).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud import orgpolicy_v2

GUEST_ATTRIBUTES = "constraints/compute.disableGuestAttributesAccess"
EXTERNAL_IP = "constraints/compute.vmExternalIpAccess"


@dataclass(frozen=True)
class Blocked:
    constraint: str
    fix: str

    def line(self) -> str:
        return f"organization policy {self.constraint} {self.fix}"


def _rules(policy: orgpolicy_v2.Policy | None) -> list[orgpolicy_v2.PolicySpec.PolicyRule]:
    return list(policy.spec.rules) if policy is not None and "spec" in policy else []


def guest_attributes_blocked(project: str, policy: orgpolicy_v2.Policy | None) -> Blocked | None:
    # A conditional rule (tags) may or may not apply to the VM: only an unconditional enforce is certain.
    if any(r.enforce and "condition" not in r for r in _rules(policy)):
        return Blocked(
            GUEST_ATTRIBUTES,
            "is enforced: the appliance's readiness (guest attributes) would never arrive; ask an"
            f" organization policy admin to exempt project {project}"
            f" (`gcloud org-policies reset {GUEST_ATTRIBUTES} --project={project}` if inherited, or a"
            " project policy with enforce: false)",
        )
    return None


def external_ip_blocked(project: str, policy: orgpolicy_v2.Policy | None) -> Blocked | None:
    rules = [r for r in _rules(policy) if "condition" not in r]
    if not rules or any(r.allow_all for r in rules):
        return None  # no policy: external IPs are allowed
    return Blocked(
        EXTERNAL_IP,
        "forbids the image builder's ephemeral external IP (its only egress, for the bake):"
        f" allow all for project {project} (a project policy with allowAll: true), or add Cloud NAT on"
        " the builder's subnet and ask for that change",
    )


def blockers(
    project: str,
    *,
    guest_attributes: orgpolicy_v2.Policy | None,
    external_ip: orgpolicy_v2.Policy | None,
    bakes: bool,
) -> list[Blocked]:
    """What stops `create` (`bakes`: it will run the builder) before anything is created."""
    found = [guest_attributes_blocked(project, guest_attributes)]
    if bakes:
        found.append(external_ip_blocked(project, external_ip))
    return [b for b in found if b is not None]

"""The one IAM policy helper, over each policy kind and a stand-in IAP API as strict as the real one
about versions: conditional bindings exist only in version 3 (a version-1 read rewrites their roles to
`ROLE_withcond_HASH` and drops the condition; a version-1 write over them is refused)."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.api_core.iam import Policy as StoragePolicy
from google.cloud import compute_v1
from google.iam.v1 import policy_pb2
from google.type import expr_pb2

from provisioner.cloud.gcp import policy
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.gcp.iam import Iam
from tests.fixtures.iam import StrictPolicies

RESOURCE = "projects/p/iap_tunnel/zones/z/instances/pypapo"
CONDITION = expr_pb2.Expr(title="office hours", expression="request.time.getHours('Europe/Berlin') < 18")


def test_with_member_edits_every_policy_kind_and_drops_empty_bindings() -> None:
    for pol in (policy_pb2.Policy(etag=b"x"), compute_v1.Policy(etag="x"), StoragePolicy(etag="x")):
        assert policy.with_member(pol, "roles/r", "user:a") is True
        assert policy.with_member(pol, "roles/r", "user:a") is False
        assert policy.with_member(pol, "roles/r", "user:b") is True
        assert policy.members(pol) == {"roles/r": {"user:a", "user:b"}}
        assert pol.version == 3
        policy.with_member(pol, "roles/r", "user:a", present=False)
        policy.with_member(pol, "roles/r", "user:b", present=False)
        assert len(list(pol.bindings)) == 0


def test_a_conditional_binding_of_the_role_is_left_alone() -> None:
    pol = policy_pb2.Policy(version=3)
    pol.bindings.add(role="roles/iap.tunnelResourceAccessor", members=["user:a"], condition=CONDITION)
    assert policy.with_member(pol, "roles/iap.tunnelResourceAccessor", "user:a") is True  # unconditional
    assert policy.with_member(pol, "roles/iap.tunnelResourceAccessor", "user:a", present=False) is True
    (kept,) = pol.bindings
    assert kept.condition.expression == CONDITION.expression and list(kept.members) == ["user:a"]


class StrictIap(StrictPolicies):
    """The IAP admin API's policy calls on one tunnel resource that already holds a conditional binding."""

    def __init__(self) -> None:
        initial = policy_pb2.Policy(version=3, etag=b"1")
        initial.bindings.add(
            role="roles/iap.tunnelResourceAccessor", members=["user:ana@x.com"], condition=CONDITION
        )
        super().__init__({RESOURCE: initial})

    @property
    def policy(self) -> policy_pb2.Policy:
        return self.policies[RESOURCE]

    @policy.setter
    def policy(self, value: policy_pb2.Policy) -> None:
        self.policies[RESOURCE] = value


def test_grant_on_a_tunnel_policy_with_a_condition_keeps_the_condition() -> None:
    iap = StrictIap()
    iam = Iam(Clients("p", overrides={"iap": iap}), progress=None)
    assert iam.set_tunnel_member(RESOURCE, "roles/iap.tunnelResourceAccessor", "user:bo@x.com") is True
    by_condition = {(b.role, b.condition.expression): list(b.members) for b in iap.policy.bindings}
    assert by_condition == {
        ("roles/iap.tunnelResourceAccessor", CONDITION.expression): ["user:ana@x.com"],
        ("roles/iap.tunnelResourceAccessor", ""): ["user:bo@x.com"],
    }
    assert iap.policy.version == 3


def test_a_lost_etag_race_repeats_the_whole_read_modify_write() -> None:
    iap = StrictIap()
    iap.races = 2
    iam = Iam(Clients("p", overrides={"iap": iap}), progress=None)
    sleeps: list[float] = []
    changed = policy.read_modify_write(
        lambda: iam._read_iap(RESOURCE),
        policy.member_editor("roles/x", "user:c@x.com", True),
        lambda p: iam._write_iap(RESOURCE, p),
        sleep=sleeps.append,
    )
    assert changed and len(sleeps) == 2
    assert policy.members(iap.policy)["roles/x"] == {"user:c@x.com"}


def test_rollout_carry_over_keeps_conditions_on_the_new_instance() -> None:
    old = StrictIap().policy
    iap = StrictIap()
    iap.policy = policy_pb2.Policy(version=1, etag=b"7")  # the recreated instance: an empty policy
    iam = Iam(Clients("p", overrides={"iap": iap}), progress=None)
    iam.put_tunnel_policy(RESOURCE, old)
    (b,) = iap.policy.bindings
    assert b.condition.expression == CONDITION.expression and iap.policy.version == 3


def test_other_errors_are_not_retried() -> None:
    calls = []

    def write(_p: object) -> None:
        calls.append(1)
        raise gexc.PermissionDenied("iap.tunnelInstances.setIamPolicy denied")

    with pytest.raises(gexc.PermissionDenied):
        policy.read_modify_write(
            policy_pb2.Policy, policy.member_editor("roles/x", "user:a", True), write, sleep=lambda _s: None
        )
    assert calls == [1]

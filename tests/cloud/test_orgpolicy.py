"""Organization policies that would make `create` wait for nothing are found before anything is made:
real `orgpolicy_v2` request and policy objects, api_core error shapes, the create flow over the doubles."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import orgpolicy_v2
from google.type import expr_pb2

from provisioner.cloud import apply as deploy
from provisioner.cloud import orgpolicy
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.gcp.orgpolicy import OrgPolicies
from provisioner.errors import PypapoError
from tests.cloud.test_create import empty_family_cloud, engine_of, run_create, sent, settings

Rule = orgpolicy_v2.PolicySpec.PolicyRule


def policy(*rules: Rule) -> orgpolicy_v2.Policy:
    return orgpolicy_v2.Policy(spec=orgpolicy_v2.PolicySpec(rules=list(rules)))


class FakeOrgPolicyClient:
    """The Org Policy API's getEffectivePolicy: a policy per resource name, or an api_core error."""

    def __init__(self, policies: dict[str, Any]) -> None:
        self.policies = policies
        self.requests: list[orgpolicy_v2.GetEffectivePolicyRequest] = []

    def get_effective_policy(self, request: orgpolicy_v2.GetEffectivePolicyRequest) -> orgpolicy_v2.Policy:
        self.requests.append(request)
        found = self.policies.get(request.name)
        if isinstance(found, Exception):
            raise found
        if found is None:
            raise gexc.NotFound(f"Policy {request.name} not found")
        return found


def org_policies(policies: dict[str, Any], said: list[str]) -> OrgPolicies:
    client = FakeOrgPolicyClient(policies)
    return OrgPolicies(Clients("acme-prod", overrides={"orgpolicy": client}), progress=said.append)


GUEST = "projects/acme-prod/policies/compute.disableGuestAttributesAccess"
EXTERNAL = "projects/acme-prod/policies/compute.vmExternalIpAccess"


def test_enforced_guest_attributes_policy_stops_create_before_anything_is_created() -> None:
    cloud = empty_family_cloud()
    said: list[str] = []
    cloud.org_policies = org_policies({GUEST: policy(Rule(enforce=True))}, said)
    with pytest.raises(PypapoError) as err:
        run_create(cloud, settings())
    assert "constraints/compute.disableGuestAttributesAccess is enforced" in str(err.value)
    assert "--project=acme-prod" in str(err.value) and "nothing was created" in str(err.value)
    assert sent(cloud) == []


def test_external_ip_policy_blocks_the_builder_only_when_create_bakes() -> None:
    deny = policy(Rule(deny_all=True))
    cloud = empty_family_cloud()
    cloud.org_policies = org_policies({EXTERNAL: deny}, [])
    with pytest.raises(PypapoError, match=r"vmExternalIpAccess forbids the image builder's ephemeral"):
        run_create(cloud, settings())
    assert sent(cloud) == []
    # a named list never names a builder (its name carries a timestamp)
    listed = policy(Rule(values=Rule.StringValues(allowed_values=["projects/acme-prod/zones/z/instances/x"])))
    assert orgpolicy.external_ip_blocked("acme-prod", listed) is not None
    assert orgpolicy.external_ip_blocked("acme-prod", policy(Rule(allow_all=True))) is None
    assert orgpolicy.external_ip_blocked("acme-prod", None) is None
    # with the family baked, create runs no builder: the policy is not in the way
    baked = empty_family_cloud()
    engine_of(baked).add_image("pypapo-1", dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    baked.org_policies = org_policies({EXTERNAL: deny}, [])
    run_create(baked, settings())
    assert "instances.insert" in sent(baked) and "images.insert" not in sent(baked)


def test_conditional_or_unenforced_rules_do_not_block() -> None:
    tagged = Rule(enforce=True, condition=expr_pb2.Expr(expression="resource.matchTag('o/env', 'prod')"))
    assert orgpolicy.guest_attributes_blocked("p", policy(tagged)) is None
    assert orgpolicy.guest_attributes_blocked("p", policy(Rule(enforce=False))) is None
    assert orgpolicy.guest_attributes_blocked("p", None) is None


def test_an_unreadable_policy_is_a_note_not_a_failure() -> None:
    said: list[str] = []
    denied = gexc.PermissionDenied("Permission 'orgpolicy.policy.get' denied on resource")
    pols = org_policies({GUEST: denied, EXTERNAL: gexc.NotFound("no policy")}, said)
    assert pols.effective(orgpolicy.GUEST_ATTRIBUTES) is None
    assert pols.effective(orgpolicy.EXTERNAL_IP) is None
    assert len(said) == 1 and "roles/orgpolicy.policyViewer" in said[0] and "not checked" in said[0]
    client = pols.clients.get("orgpolicy")
    assert [r.name for r in client.requests] == [GUEST, EXTERNAL]
    cloud = empty_family_cloud()
    cloud.org_policies = pols
    deploy.check_org_policies(
        cloud, settings(), deploy.planlib.plan_create(settings(), None, startup_script="")
    )

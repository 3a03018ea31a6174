"""Thin layer: the effective organization policies `create` checks first (`cloud.orgpolicy` judges)."""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import orgpolicy_v2

from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.progress import Progress, silent

ORG_POLICY_API = "orgpolicy.googleapis.com"


def _client(credentials: Any) -> Any:
    return orgpolicy_v2.OrgPolicyClient(credentials=credentials)


Clients.register("orgpolicy", ORG_POLICY_API, _client)


class OrgPolicies:
    def __init__(self, clients: Clients, *, progress: Progress | None = None) -> None:
        self.clients = clients
        self.project = clients.project
        self.progress = progress or silent

    def effective(self, constraint: str) -> orgpolicy_v2.Policy | None:
        """The policy in force on the project (inherited ones merged), or None when it cannot be read.

        Reading needs `orgpolicy.policy.get` (roles/orgpolicy.policyViewer) and the Org Policy API; a
        deployer without them is not stopped: the check is advice, so it says what it could not see."""
        name = f"projects/{self.project}/policies/{constraint.removeprefix('constraints/')}"
        request = orgpolicy_v2.GetEffectivePolicyRequest(name=name)
        try:
            return self.clients.get("orgpolicy").get_effective_policy(request=request)
        except gexc.NotFound:
            return None
        except gexc.GoogleAPICallError as exc:  # denied, API disabled (403 SERVICE_DISABLED), unavailable
            reason = " ".join(str(exc).split())
            self.progress(
                f"note: could not read organization policy {constraint} ({reason}); not checked"
                f" (needs roles/orgpolicy.policyViewer and {ORG_POLICY_API})"
            )
            return None

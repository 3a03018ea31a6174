"""Thin layer: IAM admin (the appliance's service account), the IAM policies `grant` edits, and the
project check.

Clients: google-cloud-iam (`iam_admin_v1.IAMClient`) for the service account, its keys and its own
policy (who may act as it), google-cloud-iap (`IdentityAwareProxyAdminServiceClient`) for who may open a
tunnel (an instance's tunnel resource, or the project's `projects/P/iap_tunnel` under a condition),
google-cloud-resource-manager (`ProjectsClient`) for the project's policy (conditional bindings of a
group) and to tell a wrong project apart early. Every policy is read and written as version 3 by the one
read-modify-write of `policy.py`.
"""

from __future__ import annotations

import time
from typing import Any

from google.cloud import iam_admin_v1

from provisioner.cloud.gcp import policy
from provisioner.cloud.gcp.base import (
    IAM_API,
    IAP_API,
    RESOURCE_MANAGER_API,
    Clients,
    gcp_errors,
    get_or_none,
)
from provisioner.cloud.progress import Progress


class Iam:
    def __init__(self, clients: Clients, *, progress: Progress | None = None) -> None:
        self.clients = clients
        self.project = clients.project
        self.progress = progress or (lambda _m: None)

    def get_project(self) -> Any:
        """The project; a clear error if it does not exist. No permission to read it is not fatal:
        resourcemanager.projects.get is a nicety here, the calls that follow report their own errors."""
        from google.api_core import exceptions as gexc

        from provisioner.errors import PypapoError

        with gcp_errors(f"read project {self.project}", project=self.project, api=RESOURCE_MANAGER_API):
            try:
                return self.clients.get("projects").get_project(name=f"projects/{self.project}")
            except gexc.NotFound:
                raise PypapoError(
                    f"project {self.project} does not exist; check --project (`gcloud projects list`)"
                ) from None
            except gexc.PermissionDenied:
                return None

    def get_service_account(self, email: str) -> iam_admin_v1.ServiceAccount | None:
        req = iam_admin_v1.GetServiceAccountRequest(name=f"projects/{self.project}/serviceAccounts/{email}")
        return get_or_none(
            lambda: self.clients.get("iam_admin").get_service_account(request=req),
            f"read service account {email}",
            project=self.project,
            api=IAM_API,
        )

    def list_user_keys(self, email: str) -> list[iam_admin_v1.ServiceAccountKey]:
        req = iam_admin_v1.ListServiceAccountKeysRequest(
            name=f"projects/{self.project}/serviceAccounts/{email}",
            key_types=[iam_admin_v1.ListServiceAccountKeysRequest.KeyType.USER_MANAGED],
        )
        with gcp_errors(f"list the keys of {email}", project=self.project, api=IAM_API):
            return list(self.clients.get("iam_admin").list_service_account_keys(request=req).keys)

    def create_service_account(self, request: iam_admin_v1.CreateServiceAccountRequest) -> None:
        with gcp_errors(
            f"create service account {request.account_id}",
            project=self.project,
            api=IAM_API,
            role="roles/iam.serviceAccountAdmin",
        ):
            account = self.clients.get("iam_admin").create_service_account(request=request)
        self.progress(f"  created service account {account.email}")
        # IAM is eventually consistent: a fresh account can be unknown to other APIs for seconds.
        for _ in range(10):
            if self.get_service_account(account.email) is not None:
                break
            time.sleep(1)

    def delete_service_account_key(self, request: iam_admin_v1.DeleteServiceAccountKeyRequest) -> None:
        with gcp_errors("delete a key of the appliance's service account", project=self.project, api=IAM_API):
            self.clients.get("iam_admin").delete_service_account_key(request=request)
        self.progress(f"  deleted key {request.name.rsplit('/', 1)[-1]}")

    def delete_service_account(self, request: iam_admin_v1.DeleteServiceAccountRequest) -> None:
        with gcp_errors(
            "delete the appliance's service account",
            project=self.project,
            api=IAM_API,
            role="roles/iam.serviceAccountAdmin",
        ):
            self.clients.get("iam_admin").delete_service_account(request=request)
        self.progress(f"  deleted service account {request.name.rsplit('/', 1)[-1]}")

    # --- IAP: who may open a tunnel to this instance ---

    def get_tunnel_policy(self, resource: str) -> Any:
        """The IAP policy of a tunnel resource (version 3), or None when the resource has none."""
        from google.api_core import exceptions as gexc

        with gcp_errors(f"read the IAP tunnel policy of {resource}", project=self.project, api=IAP_API):
            try:
                return self._read_iap(resource)
            except gexc.NotFound:
                return None

    def get_tunnel_members(self, resource: str) -> dict[str, set[str]]:
        with gcp_errors(f"read the IAP policy of {resource}", project=self.project, api=IAP_API):
            return policy.members(self._read_iap(resource))

    def _read_iap(self, resource: str) -> Any:
        return self._read("iap", resource)

    def _write_iap(self, resource: str, new: Any) -> None:
        self._write("iap", resource, new)

    def _read(self, client: str, resource: str) -> Any:
        """GetIamPolicy (version 3) of the IAP, Resource Manager or IAM admin API: one request shape."""
        from google.iam.v1 import iam_policy_pb2, options_pb2

        options = options_pb2.GetPolicyOptions(requested_policy_version=policy.POLICY_VERSION)
        return self.clients.get(client).get_iam_policy(
            request=iam_policy_pb2.GetIamPolicyRequest(resource=resource, options=options)
        )

    def _write(self, client: str, resource: str, new: Any) -> None:
        from google.iam.v1 import iam_policy_pb2

        new.version = policy.POLICY_VERSION
        self.clients.get(client).set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=resource, policy=new)
        )

    def _set_member(
        self,
        client: str,
        resource: str,
        role: str,
        member: str,
        *,
        present: bool,
        condition: policy.Condition | None,
        api: str,
        admin_role: str,
    ) -> bool:
        action = f"{'grant' if present else 'revoke'} {role} on {resource}"
        if condition:
            action += f" (condition {condition.title!r})"
        with gcp_errors(action, project=self.project, api=api, role=admin_role):
            changed = policy.read_modify_write(
                lambda: self._read(client, resource),
                policy.member_editor(role, member, present, condition),
                lambda p: self._write(client, resource, p),
            )
        if changed:
            self.progress(f"  {action}: {member}")
        return changed

    def set_tunnel_member(
        self,
        resource: str,
        role: str,
        member: str,
        *,
        present: bool = True,
        condition: policy.Condition | None = None,
    ) -> bool:
        """Read-modify-write of an IAP tunnel policy: an instance's
        (`projects/P/iap_tunnel/zones/Z/instances/NAME`) or the project's (`projects/P/iap_tunnel`)."""
        return self._set_member(
            "iap",
            resource,
            role,
            member,
            present=present,
            condition=condition,
            api=IAP_API,
            admin_role="roles/iap.admin",
        )

    def set_project_member(
        self, role: str, member: str, *, present: bool = True, condition: policy.Condition | None = None
    ) -> bool:
        """Read-modify-write of the project's own policy (a group's conditional bindings live here)."""
        return self._set_member(
            "projects",
            f"projects/{self.project}",
            role,
            member,
            present=present,
            condition=condition,
            api=RESOURCE_MANAGER_API,
            admin_role="roles/resourcemanager.projectIamAdmin",
        )

    def set_service_account_member(self, email: str, role: str, member: str, *, present: bool = True) -> bool:
        """Read-modify-write of one service account's policy (who may act as that account only)."""
        return self._set_member(
            "iam_admin",
            f"projects/{self.project}/serviceAccounts/{email}",
            role,
            member,
            present=present,
            condition=None,
            api=IAM_API,
            admin_role="roles/iam.serviceAccountAdmin",
        )

    def put_tunnel_policy(self, resource: str, bindings_from: Any) -> None:
        """Put `bindings_from`'s bindings (conditions included) on `resource`, with its etag now."""
        with gcp_errors(f"re-apply the IAP tunnel policy of {resource}", project=self.project, api=IAP_API):
            self._write_iap(resource, policy.carry_over(self._read_iap(resource), bindings_from))

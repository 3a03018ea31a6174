"""Doubles of the two thin layers that are not Compute Engine's: bucket admin (`FakeStorage`, for
`cloud/gcp/storage_admin.py`) and service accounts + IAP tunnel policies (`FakeIam`, for
`cloud/gcp/iam.py`). Each records every request it is sent, into its own list and a shared log (so
a test can assert the order across APIs), and keeps state in real storage / iam_admin_v1 /
google.iam.v1 objects. Compute Engine is doubled at the client level instead (`tests.doubles.compute`),
under the real thin layer; so are the IAM policy APIs in `tests.fixtures.iam`."""

from __future__ import annotations

import copy
from typing import Any

from google.cloud import iam_admin_v1, storage
from google.iam.v1 import policy_pb2

from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp import policy as iam_policy


class FakeStorage:
    """The bucket-admin thin layer; buckets are real storage.Bucket objects with their JSON resource."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.requests: list[tuple[str, Any]] = []
        self.buckets: dict[str, storage.Bucket] = {}
        self.members: dict[str, dict[str, set[str]]] = {}
        self.indexed: set[str] = set()

    def _record(self, entry: tuple[str, Any]) -> None:
        self.requests.append(entry)
        self.log.append(entry)

    def get_bucket(self, name: str) -> storage.Bucket | None:
        b = self.buckets.get(name)
        if b is None:
            return None
        copy_ = storage.Bucket(client=None, name=name)
        copy_._set_properties(copy.deepcopy(b._properties))
        return copy_

    def create_bucket(self, desired: storage.Bucket) -> None:
        self._record(("create_bucket", planlib.bucket_properties(desired)))
        b = storage.Bucket(client=None, name=desired.name)
        b._set_properties({**copy.deepcopy(desired._properties), "id": desired.name, "metageneration": "1"})
        self.buckets[desired.name] = b
        self.members[desired.name] = {"roles/storage.legacyBucketOwner": {"projectOwner:acme-prod"}}

    def patch_bucket(self, desired: storage.Bucket) -> None:
        self._record(("patch_bucket", planlib.bucket_properties(desired)))
        props = self.buckets[desired.name]._properties
        for key in ("iamConfiguration", "versioning", "softDeletePolicy", "lifecycle"):
            props[key] = copy.deepcopy(desired._properties[key])
        props["labels"] = {**props.get("labels", {}), **desired.labels}

    def get_members(self, name: str) -> dict[str, set[str]]:
        return copy.deepcopy(self.members[name])

    def open_repository(self, url: str) -> Any:
        """The engine's `Repository.open(url)`, as far as `create` uses it: `initialize()`."""
        storage = self

        class Repository:
            def initialize(self) -> bool:
                if url in storage.indexed:
                    return False
                storage._record(("initialize_index", url))
                storage.indexed.add(url)
                return True

        return Repository()

    def set_member(self, name: str, role: str, member: str, *, present: bool = True) -> bool:
        members = self.members[name].setdefault(role, set())
        if (member in members) == present:
            return False
        self._record(("set_member", (name, role, member, present)))
        (members.add if present else members.discard)(member)
        return True

    def delete_bucket(self, name: str) -> None:
        self._record(("delete_bucket", name))
        del self.buckets[name]


class FakeIam:
    """Service accounts and IAP tunnel policies (real iam_admin_v1 / google.iam.v1 objects)."""

    def __init__(self, project: str, log: list[tuple[str, Any]]) -> None:
        self.project = project
        self.log = log
        self.requests: list[tuple[str, Any]] = []
        self.accounts: dict[str, iam_admin_v1.ServiceAccount] = {}
        self.keys: dict[str, list[iam_admin_v1.ServiceAccountKey]] = {}
        self.tunnel_policies: dict[str, policy_pb2.Policy] = {}

    def _record(self, entry: tuple[str, Any]) -> None:
        self.requests.append(entry)
        self.log.append(entry)

    def get_project(self) -> None:
        return None

    def get_service_account(self, email: str) -> iam_admin_v1.ServiceAccount | None:
        return self.accounts.get(email)

    def list_user_keys(self, email: str) -> list[iam_admin_v1.ServiceAccountKey]:
        return list(self.keys.get(email, []))

    def create_service_account(self, request: iam_admin_v1.CreateServiceAccountRequest) -> None:
        self._record(("create_service_account", request))
        email = f"{request.account_id}@{self.project}.iam.gserviceaccount.com"
        self.accounts[email] = iam_admin_v1.ServiceAccount(
            name=f"projects/{self.project}/serviceAccounts/{email}",
            email=email,
            display_name=request.service_account.display_name,
        )

    def delete_service_account_key(self, request: iam_admin_v1.DeleteServiceAccountKeyRequest) -> None:
        self._record(("delete_service_account_key", request))
        for email, keys in self.keys.items():
            self.keys[email] = [k for k in keys if k.name != request.name]

    def delete_service_account(self, request: iam_admin_v1.DeleteServiceAccountRequest) -> None:
        self._record(("delete_service_account", request))
        del self.accounts[request.name.rsplit("/", 1)[-1]]

    def get_tunnel_members(self, resource: str) -> dict[str, set[str]]:
        return iam_policy.members(self.tunnel_policies.get(resource, policy_pb2.Policy()))

    def set_tunnel_member(
        self, resource: str, role: str, member: str, *, present: bool = True, condition: Any = None
    ) -> bool:
        policy = policy_pb2.Policy()
        policy.CopyFrom(self.tunnel_policies.get(resource, policy_pb2.Policy()))
        if not iam_policy.with_member(policy, role, member, present=present, condition=condition):
            return False
        self._record(("set_tunnel_iam_policy", (resource, policy)))
        self.tunnel_policies[resource] = policy
        return True

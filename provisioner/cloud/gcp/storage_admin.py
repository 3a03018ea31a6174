"""Thin layer: the bucket itself (create, reconcile properties, IAM bindings, delete).

Object reads and writes are the engine's business (`provisioner/storage.py`); this module only
administers the bucket. It runs unchanged against fake-gcs-server via STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import time
from typing import Any

from google.cloud import storage

from provisioner.cloud.gcp.base import STORAGE_API, Clients, Progress, _echo_progress, gcp_errors, get_or_none
from provisioner.repo.location import gs_url

# The bucket properties `provision create` owns (and reconciles); others are left as they are.
OWNED = ("iamConfiguration", "versioning", "softDeletePolicy", "lifecycle")


class StorageAdmin:
    def __init__(self, clients: Clients, *, progress: Progress | None = _echo_progress) -> None:
        self.clients = clients
        self.project = clients.project
        self.progress = progress or (lambda _m: None)

    @property
    def client(self) -> storage.Client:
        return self.clients.get("storage")

    def get_bucket(self, name: str) -> storage.Bucket | None:
        from provisioner.errors import PypapoError

        try:
            return get_or_none(
                lambda: self.client.get_bucket(name),
                f"read bucket gs://{name}",
                project=self.project,
                api=STORAGE_API,
            )
        except PypapoError as exc:
            # Bucket names are global: a 403 on a bucket we did not make is most often someone else's.
            if "permission denied" in str(exc):
                raise PypapoError(
                    f"bucket gs://{name} exists but you cannot read it: it may belong to another project"
                    " (bucket names are global); choose another --bucket, or get roles/storage.admin on it"
                ) from exc.__cause__
            raise

    def initialize_index(self, name: str, prefix: str) -> bool:
        """Write the empty root index into a new bucket (through the engine); True if it wrote one."""
        from provisioner.repo.engine import Repository

        return Repository.open(gs_url(name, prefix)).initialize()

    def create_bucket(self, desired: storage.Bucket) -> storage.Bucket:
        """Create the bucket with every property of `desired` in the one insert call."""
        with gcp_errors(
            f"create bucket gs://{desired.name}",
            project=self.project,
            api=STORAGE_API,
            role="roles/storage.admin",
        ):
            bucket = self.client.create_bucket(desired, project=self.project, location=desired.location)
        self.progress(f"  created bucket gs://{bucket.name} in {bucket.location}")
        return bucket

    def patch_bucket(self, desired: storage.Bucket) -> storage.Bucket:
        """Bring the owned properties of the existing bucket to `desired`; labels are merged."""
        with gcp_errors(
            f"update bucket gs://{desired.name}",
            project=self.project,
            api=STORAGE_API,
            role="roles/storage.admin",
        ):
            bucket = self.client.get_bucket(desired.name)
            for key in OWNED:
                if key in desired._properties:
                    bucket._patch_property(key, desired._properties[key])
            labels = dict(bucket.labels or {})
            labels.update(desired.labels or {})
            bucket.labels = labels
            bucket.patch()
        self.progress(f"  updated bucket gs://{bucket.name}")
        return bucket

    def get_members(self, name: str) -> dict[str, set[str]]:
        with gcp_errors(f"read the IAM policy of gs://{name}", project=self.project, api=STORAGE_API):
            policy = self.client.bucket(name).get_iam_policy(requested_policy_version=3)
        return {b["role"]: set(b["members"]) for b in policy.bindings}

    def set_member(self, name: str, role: str, member: str, *, present: bool = True) -> bool:
        """Add (or remove) one binding by read-modify-write; the etag makes a concurrent edit retry."""
        from google.api_core import exceptions as gexc

        action = f"{'grant' if present else 'revoke'} {role} on gs://{name}"
        attempts = 8
        for attempt in range(attempts):
            with gcp_errors(action, project=self.project, api=STORAGE_API, role="roles/storage.admin"):
                bucket = self.client.bucket(name)
                policy = bucket.get_iam_policy(requested_policy_version=3)
                bindings = [dict(b, members=set(b["members"])) for b in policy.bindings]
                target = next((b for b in bindings if b["role"] == role and "condition" not in b), None)
                if present and target is not None and member in target["members"]:
                    return False
                if not present and (target is None or member not in target["members"]):
                    return False
                if present and target is None:
                    bindings.append({"role": role, "members": {member}})
                elif present:
                    target["members"].add(member)
                else:
                    target["members"].discard(member)
                policy.bindings = [b for b in bindings if b["members"]]
                policy.version = 3
                try:
                    bucket.set_iam_policy(policy)
                except (gexc.PreconditionFailed, gexc.Conflict):  # etag: someone else edited the policy
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.5 * (attempt + 1))
                    continue
                except gexc.BadRequest as exc:
                    # A service account created seconds ago may not be known to Storage yet.
                    if "does not exist" not in str(exc) or attempt == attempts - 1:
                        raise
                    self.progress(f"  waiting for {member} to propagate to Cloud Storage")
                    time.sleep(min(2**attempt, 16))
                    continue
            self.progress(f"  {action}: {member}")
            return True
        return False

    def delete_bucket(self, name: str) -> None:
        """Delete every object version, then the bucket (soft delete may still keep a copy)."""
        with gcp_errors(
            f"delete bucket gs://{name}", project=self.project, api=STORAGE_API, role="roles/storage.admin"
        ):
            bucket = self.client.bucket(name)
            count = 0
            for blob in self.client.list_blobs(name, versions=True):
                bucket.delete_blob(blob.name, generation=blob.generation)
                count += 1
            bucket.delete()
        self.progress(f"  deleted bucket gs://{name} and {count} object versions")


def bucket_summary(bucket: Any) -> dict[str, Any]:
    """What `provision status` shows of the bucket."""
    return {
        "name": bucket.name,
        "location": bucket.location,
        "uniform_bucket_level_access": bucket.iam_configuration.uniform_bucket_level_access_enabled,
        "public_access_prevention": bucket.iam_configuration.public_access_prevention,
        "versioning": bucket.versioning_enabled,
        "soft_delete_seconds": bucket.soft_delete_policy.retention_duration_seconds,
    }

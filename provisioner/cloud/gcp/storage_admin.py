"""Thin layer: the bucket itself (create, reconcile properties, IAM bindings, delete).

Object reads and writes are the engine's business (`provisioner/storage.py`); this module only
administers the bucket. It runs unchanged against fake-gcs-server via STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

from typing import Any

from google.cloud import storage

from provisioner.cloud.gcp import policy
from provisioner.cloud.gcp.base import STORAGE_API, Clients, gcp_errors, get_or_none
from provisioner.cloud.progress import Progress

# The bucket properties `provision create` owns (and reconciles); others are left as they are.
OWNED = ("iamConfiguration", "versioning", "softDeletePolicy", "lifecycle")


class StorageAdmin:
    def __init__(self, clients: Clients, *, progress: Progress | None = None) -> None:
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
            return policy.members(
                self.client.bucket(name).get_iam_policy(requested_policy_version=policy.POLICY_VERSION)
            )

    def set_member(self, name: str, role: str, member: str, *, present: bool = True) -> bool:
        """Add (or remove) one binding by read-modify-write; the etag makes a concurrent edit retry."""
        from google.api_core import exceptions as gexc

        action = f"{'grant' if present else 'revoke'} {role} on gs://{name}"
        bucket = self.client.bucket(name)

        def not_propagated(exc: Exception) -> bool:
            # A service account created seconds ago may not be known to Storage yet.
            if isinstance(exc, gexc.BadRequest) and "does not exist" in str(exc):
                self.progress(f"  waiting for {member} to propagate to Cloud Storage")
                return True
            return False

        with gcp_errors(action, project=self.project, api=STORAGE_API, role="roles/storage.admin"):
            changed = policy.read_modify_write(
                lambda: bucket.get_iam_policy(requested_policy_version=policy.POLICY_VERSION),
                policy.member_editor(role, member, present),
                bucket.set_iam_policy,
                attempts=8,
                retry_also=not_propagated,
            )
        if changed:
            self.progress(f"  {action}: {member}")
        return changed

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

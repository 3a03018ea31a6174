"""Pure: `provision mirror schedule`, the scheduled mirror, in the same shape as the image rebuild.

Cloud Scheduler posts a build to Cloud Build's builds.create on a cron; the build copies the pinned
pypapo wheel out of the index bucket (never `pip install pypapo` from PyPI: dependency confusion),
and runs `provision mirror --repo gs://BUCKET[/PREFIX] --from URL --lock gs://...` where there is
egress. Its own two service accounts: one that may only start the build, one that runs it with the
publisher role on the index bucket (and read access to the lock's bucket), nothing else.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from google.cloud import scheduler_v1
from google.cloud.devtools import cloudbuild_v1

from provisioner.cloud import names
from provisioner.cloud.image import schedule as img
from provisioner.cloud.image.schedule import RoleGrant, Wheel
from provisioner.cloud.plan import Step
from provisioner.errors import PypapoError
from provisioner.repo import location

INVOKER_SA_ID = "pypapo-mirror-scheduler"
BUILD_SA_ID = "pypapo-mirror-build"
JOB_ID = "pypapo-mirror"
BUILD_TIMEOUT_S = 2 * 60 * 60


@dataclass(frozen=True)
class MirrorSchedule:
    project: str
    region: str
    bucket: str  # the index bucket
    prefix: str
    lock: str  # gs://BUCKET/OBJECT
    source: str  # --from
    mirror_args: tuple[str, ...] = ()  # --python-version, --platform, --no-sdist as given

    @property
    def lock_bucket(self) -> str:
        return self.lock[len("gs://") :].split("/", 1)[0]


def check_lock_url(lock: str) -> str:
    bucket, _, name = lock.removeprefix("gs://").partition("/")
    if not lock.startswith("gs://") or not name or location.bucket_name_problem(bucket):
        raise PypapoError(
            f"--lock {lock!r} must be gs://BUCKET/PATH (the build reads the lock from Cloud Storage)"
        )
    return lock


def roles(s: MirrorSchedule) -> list[RoleGrant]:
    invoker = f"serviceAccount:{names.service_account_email(s.project, INVOKER_SA_ID)}"
    build = f"serviceAccount:{names.service_account_email(s.project, BUILD_SA_ID)}"
    grants = [
        RoleGrant(
            invoker,
            "roles/cloudbuild.builds.editor",
            f"projects/{s.project}",
            "create the build (cloudbuild.builds.create); the narrowest predefined role holding it",
        ),
        RoleGrant(
            invoker,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{names.service_account_email(s.project, BUILD_SA_ID)}",
            "start a build that runs as the build service account (actAs on that account only)",
        ),
        RoleGrant(
            build,
            "roles/storage.objectUser",
            f"gs://{s.bucket}",
            "publish into the index bucket (the publisher role), and read the pinned pypapo wheel",
        ),
        RoleGrant(
            build,
            "roles/logging.logWriter",
            f"projects/{s.project}",
            "write the build's logs (CLOUD_LOGGING_ONLY: no logs bucket to grant)",
        ),
    ]
    if s.lock_bucket != s.bucket:
        grants.append(
            RoleGrant(build, "roles/storage.objectViewer", f"gs://{s.lock_bucket}", "read the lock file")
        )
    return grants


def mirror_command(s: MirrorSchedule) -> list[str]:
    repo = location.gs_url(s.bucket, s.prefix)
    return ["provision", "mirror", "--repo", repo, "--from", s.source, "--lock", s.lock, *s.mirror_args]


def wheel(s: MirrorSchedule, version: str) -> Wheel:
    return Wheel(s.bucket, s.prefix, version)


def build(s: MirrorSchedule, version: str) -> cloudbuild_v1.Build:
    command = " ".join(shlex.quote(a) for a in mirror_command(s))
    return img.wheel_build(
        s.project,
        wheel(s, version),
        ("mirror", [command]),
        timeout_s=BUILD_TIMEOUT_S,
        build_sa_id=BUILD_SA_ID,
        tag="mirror",
    )


def job_name(project: str, region: str) -> str:
    return img.job_path(project, region, JOB_ID)


def job(s: MirrorSchedule, cron: str, time_zone: str, b: cloudbuild_v1.Build) -> scheduler_v1.Job:
    """An authenticated POST of the build to builds.create, never retried (no second mirror run)."""
    description = "pypapo: mirror public dependencies into the index [mirror schedule]"
    return img.build_job((s.project, s.region, JOB_ID), description, cron, time_zone, b, INVOKER_SA_ID)


ACCOUNTS = (
    (INVOKER_SA_ID, "pypapo: starts the scheduled mirror"),
    (BUILD_SA_ID, "pypapo: runs the scheduled mirror"),
)


def steps(s: MirrorSchedule, j: scheduler_v1.Job, grants: Sequence[RoleGrant], version: str) -> list[Step]:
    return img.scheduled_build_steps(s.project, s.region, ACCOUNTS, grants, wheel(s, version), j)

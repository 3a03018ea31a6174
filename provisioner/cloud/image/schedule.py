"""The unattended rebuild: Cloud Scheduler posts a Cloud Build build that runs `provision image build`
and `provision rollout`. Pure builders of the job, the build and the roles, and `apply_schedule`, which
sends them through the thin layer (`cloud.gcp.scheduler`).
"""

from __future__ import annotations

import json
import shlex
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud import scheduler_v1
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from provisioner.cloud import names
from provisioner.cloud.image.plan import BAKE_TIMEOUT_S, READY_TIMEOUT_S, ImageTarget
from provisioner.cloud.plan import Step, request_json
from provisioner.cloud.progress import Progress
from provisioner.errors import PypapoError
from provisioner.repo import layout, location

SCHEDULER_JOB_ID = "pypapo-image-rebuild"
INVOKER_SA_ID = "pypapo-image-scheduler"
BUILD_SA_ID = "pypapo-image-build"
CLI_IMAGE = "gcr.io/google.com/cloudsdktool/google-cloud-cli:slim"
PYTHON_IMAGE = "python:3.12-slim"

# -------------------------------------------------------------------------------------------- schedule

_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = (
    {},
    {},
    {},
    {
        m: i
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
        )
    },
    {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
)
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def validate_cron(expr: str) -> str:
    """A unix-cron expression of exactly 5 fields (what Cloud Scheduler accepts), checked value by value."""
    fields = expr.split()
    if len(fields) != 5:
        raise PypapoError(
            f"--cron {expr!r} has {len(fields)} fields; Cloud Scheduler takes 5 "
            '(minute hour day-of-month month day-of-week), e.g. "0 3 * * 1"'
        )
    for text, (lo, hi), aliases, what in zip(fields, _CRON_RANGES, _CRON_NAMES, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise PypapoError(f"--cron {expr!r}: bad step {step!r} in the {what} field")
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(bounds):
                raise PypapoError(f"--cron {expr!r}: cannot read {part!r} in the {what} field")
            values = []
            for b in bounds:
                v = aliases.get(b.lower()) if not b.isdigit() else int(b)
                if v is None or not lo <= v <= hi:
                    raise PypapoError(
                        f"--cron {expr!r}: {b!r} is out of range {lo}-{hi} for the {what} field"
                    )
                values.append(v)
            if len(values) == 2 and values[0] > values[1]:
                raise PypapoError(f"--cron {expr!r}: range {base!r} runs backwards in the {what} field")
    return " ".join(fields)


def validate_time_zone(tz: str) -> str:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PypapoError(
            f"--time-zone {tz!r} is not an IANA time zone name (e.g. Etc/UTC, Europe/Berlin)"
        ) from None
    return tz


@dataclass(frozen=True)
class RoleGrant:
    member: str
    role: str
    resource: str  # project, bucket or service account it is granted on
    why: str


def schedule_roles(project: str, bucket: str, appliance_sa: str) -> list[RoleGrant]:
    """Every role the unattended rebuild needs, on the narrowest resource that works."""
    invoker = f"serviceAccount:{names.service_account_email(project, INVOKER_SA_ID)}"
    build = f"serviceAccount:{names.service_account_email(project, BUILD_SA_ID)}"
    return [
        RoleGrant(
            invoker,
            "roles/cloudbuild.builds.editor",
            f"projects/{project}",
            "create the build (cloudbuild.builds.create); the narrowest predefined role holding it",
        ),
        RoleGrant(
            invoker,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{names.service_account_email(project, BUILD_SA_ID)}",
            "start a build that runs as the build service account (actAs on that account only)",
        ),
        RoleGrant(
            build,
            "roles/compute.instanceAdmin.v1",
            f"projects/{project}",
            "create, stop and delete the builder; replace the appliance; read guest attributes",
        ),
        RoleGrant(
            build,
            "roles/compute.storageAdmin",
            f"projects/{project}",
            "create and deprecate images (compute.images.create/deprecate) from the builder's disk",
        ),
        RoleGrant(
            build,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{appliance_sa}",
            "recreate the appliance running as its service account (actAs on that account only)",
        ),
        RoleGrant(
            build,
            "roles/iap.admin",
            f"projects/{project}",
            "read and re-apply the appliance's per-instance IAP tunnel policy during rollout",
        ),
        RoleGrant(
            build,
            "roles/storage.objectViewer",
            f"gs://{bucket}",
            "copy the pinned pypapo wheel out of the index bucket",
        ),
        RoleGrant(
            build,
            "roles/logging.logWriter",
            f"projects/{project}",
            "write the build's logs (CLOUD_LOGGING_ONLY: no logs bucket to grant)",
        ),
    ]


@dataclass(frozen=True)
class Wheel:
    """The pypapo wheel the unattended build installs, where `provision publish` put it: in the index
    bucket, below the repository's prefix."""

    bucket: str
    prefix: str
    version: str

    @property
    def object(self) -> str:
        filename = f"pypapo-{self.version}-py3-none-any.whl"
        return location.object_name(self.prefix, layout.dist_object("pypapo", filename))

    @property
    def url(self) -> str:
        return location.gs_url(self.bucket, name=self.object)


def rebuild_build(target: ImageTarget, wheel: Wheel, cli_args: Sequence[str] = ()) -> cloudbuild_v1.Build:
    """The Cloud Build build that rebuilds the image and rolls the appliance onto it.

    Where pypapo comes from: the wheel is copied straight from the index *bucket* (gs://) by object name,
    pinned to the version that created the schedule. Not `pip install pypapo` from PyPI (someone else may
    own that name: dependency confusion), and not through the IAP tunnel (that would need the very
    appliance this build replaces to be healthy, and gcloud plus a tunnel inside the step).
    """
    common = [f"--project={target.project}", f"--zone={target.zone}", *cli_args]
    flags = " ".join(shlex.quote(a) for a in common)
    return wheel_build(
        target.project,
        wheel,
        ("rebuild-and-rollout", [f"provision image build {flags}", f"provision rollout --yes {flags}"]),
        timeout_s=(BAKE_TIMEOUT_S + READY_TIMEOUT_S) + 30 * 60,
        build_sa_id=BUILD_SA_ID,
        tag="golden-image",
    )


def wheel_build(
    project: str,
    wheel: Wheel,
    step: tuple[str, Sequence[str]],
    *,
    timeout_s: int,
    build_sa_id: str,
    tag: str,
) -> cloudbuild_v1.Build:
    """A scheduled build: copy the pypapo wheel out of the index bucket, install it into a venv, and run
    the step's commands (`provision ...`) with it, as the build's own service account."""
    step_id, commands = step
    local = "/workspace/" + wheel.object.rsplit("/", 1)[-1]
    script = (
        "set -eu\n"
        "python -m venv /workspace/venv\n"
        f"/workspace/venv/bin/pip install --quiet --disable-pip-version-check {shlex.quote(local)}\n"
    ) + "".join(f"/workspace/venv/bin/{command}\n" for command in commands)
    return cloudbuild_v1.Build(
        steps=[
            cloudbuild_v1.BuildStep(
                id="fetch-pypapo",
                name=CLI_IMAGE,
                entrypoint="gcloud",
                args=["storage", "cp", wheel.url, "/workspace/"],
            ),
            cloudbuild_v1.BuildStep(id=step_id, name=PYTHON_IMAGE, entrypoint="bash", args=["-c", script]),
        ],
        timeout=duration_pb2.Duration(seconds=timeout_s),
        service_account=names.service_account_path(
            project, names.service_account_email(project, build_sa_id)
        ),
        options=cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
        tags=["pypapo", tag],
    )


def builds_create_uri(project: str, region: str) -> str:
    return f"https://cloudbuild.googleapis.com/v1/projects/{project}/locations/{region}/builds"


def job_path(project: str, region: str, job_id: str) -> str:
    return f"projects/{project}/locations/{region}/jobs/{job_id}"


def job_name(project: str, region: str) -> str:
    return job_path(project, region, SCHEDULER_JOB_ID)


def scheduler_job(
    target: ImageTarget, cron: str, time_zone: str, build: cloudbuild_v1.Build
) -> scheduler_v1.Job:
    """The Cloud Scheduler job: an authenticated POST of the build to Cloud Build's builds.create."""
    return build_job(
        (target.project, target.region, SCHEDULER_JOB_ID),
        "pypapo: rebuild the golden image and roll the appliance onto it [image schedule]",
        cron,
        time_zone,
        build,
        INVOKER_SA_ID,
    )


def build_job(
    where: tuple[str, str, str],
    description: str,
    cron: str,
    time_zone: str,
    build: cloudbuild_v1.Build,
    invoker_sa_id: str,
) -> scheduler_v1.Job:
    """Job `where` = (project, region, job id): POSTs `build` to Cloud Build's builds.create as the
    invoker account, never retried."""
    project, region, job_id = where
    return scheduler_v1.Job(
        name=job_path(project, region, job_id),
        description=description,
        schedule=validate_cron(cron),
        time_zone=validate_time_zone(time_zone),
        http_target=scheduler_v1.HttpTarget(
            uri=builds_create_uri(project, region),
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=request_json(build).encode(),
            oauth_token=scheduler_v1.OAuthToken(
                service_account_email=names.service_account_email(project, invoker_sa_id),
                scope=names.CLOUD_PLATFORM_SCOPE,
            ),
        ),
        # builds.create returns at once (a long-running operation); never start a second build
        retry_config=scheduler_v1.RetryConfig(retry_count=0),
        attempt_deadline=duration_pb2.Duration(seconds=60),
    )


def schedule_steps(
    target: ImageTarget,
    job: scheduler_v1.Job,
    roles: Sequence[RoleGrant],
    wheel: Wheel,
) -> list[Step]:
    accounts = (
        (INVOKER_SA_ID, "pypapo: starts the scheduled image rebuild"),
        (BUILD_SA_ID, "pypapo: runs the image rebuild and rollout"),
    )
    return scheduled_build_steps(target.project, target.region, accounts, roles, wheel, job)


def scheduled_build_steps(
    project: str,
    region: str,
    accounts: Sequence[tuple[str, str]],
    roles: Sequence[RoleGrant],
    wheel: Wheel,
    job: scheduler_v1.Job,
) -> list[Step]:
    """The steps of any scheduled build (image rebuild, mirror): its accounts, their grants, the
    pypapo wheel it installs, and the Cloud Scheduler job."""
    steps = [
        Step(
            method="iam.serviceAccounts.create",
            request={
                "name": f"projects/{project}",
                "accountId": sa,
                "serviceAccount": {"displayName": title},
            },
            why=f"create service account {names.service_account_email(project, sa)} (no keys)",
        )
        for sa, title in accounts
    ]
    steps += [
        Step(
            method="setIamPolicy (add binding)",
            request={"resource": g.resource, "member": g.member, "role": g.role},
            why=f"grant {g.role} on {g.resource}",
            note=g.why,
        )
        for g in roles
    ]
    steps.append(
        Step(
            method="storage.objects.get",
            request={"bucket": wheel.bucket, "object": wheel.object},
            why=f"check that {wheel.url} exists (publish pypapo into the index first)",
        )
    )
    steps.append(
        Step(
            method="cloudscheduler.jobs.create|patch",
            request=scheduler_v1.CreateJobRequest(parent=f"projects/{project}/locations/{region}", job=job),
            why="create or update the Cloud Scheduler job",
        )
    )
    return steps


def job_body(job: scheduler_v1.Job) -> dict[str, Any]:
    return json.loads(job.http_target.body.decode())


def apply_schedule(
    api: Any,
    target: ImageTarget,
    job: scheduler_v1.Job,
    roles: Sequence[RoleGrant],
    wheel: Wheel,
    progress: Progress,
) -> str:
    """Carry out `schedule_steps` through the thin layer (`cloud.gcp.scheduler.ScheduleApi`): check the
    wheel is in the index, make the two accounts, grant the roles, create or update the job. Returns
    what happened to the job ("created", "updated", "updated and resumed")."""
    if not api.object_exists(wheel.bucket, wheel.object):
        raise PypapoError(
            f"{wheel.url} does not exist: publish the pypapo"
            " wheel into the index first (`provision publish dist/pypapo-*.whl`) or pass --pypapo-version"
        )
    for account, title in (
        (INVOKER_SA_ID, "starts the scheduled image rebuild"),
        (BUILD_SA_ID, "runs the image rebuild and rollout"),
    ):
        if api.ensure_service_account(account, f"pypapo: {title}"):
            progress(f"created service account {names.service_account_email(target.project, account)}")
    for grant in roles:
        if api.add_binding(grant):
            progress(f"granted {grant.role} on {grant.resource} to {grant.member}")
    return api.upsert_job(job)

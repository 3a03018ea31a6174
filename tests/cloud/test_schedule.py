"""`provision image schedule`: the Cloud Scheduler job, the build it posts, the two service accounts'
roles, and validation before anything is sent."""

from __future__ import annotations

import base64
import json

import pytest
from google.cloud import scheduler_v1
from google.cloud.devtools import cloudbuild_v1

from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.image import schedule as image_schedule
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError

TARGET = image_plan.ImageTarget(Settings(project="proj-123456", zone="europe-west1-b"))
BUCKET = "proj-123456-pypapo"
WHEEL = image_schedule.Wheel(BUCKET, "", "0.1.0")
INVOKER = "pypapo-image-scheduler@proj-123456.iam.gserviceaccount.com"
BUILDER_SA = "pypapo-image-build@proj-123456.iam.gserviceaccount.com"
APPLIANCE_SA = "pypapo-vm@proj-123456.iam.gserviceaccount.com"


def make_job(
    cron: str = "0 3 * * 1", tz: str = "Europe/Berlin"
) -> tuple[scheduler_v1.Job, cloudbuild_v1.Build]:
    build = image_schedule.rebuild_build(TARGET, WHEEL, ["--instance=index"])
    return image_schedule.scheduler_job(TARGET, cron, tz, build), build


def test_job_posts_the_build_to_cloud_build_as_the_invoker_account() -> None:
    job, build = make_job()
    assert isinstance(job, scheduler_v1.Job)
    assert job.name == "projects/proj-123456/locations/europe-west1/jobs/pypapo-image-rebuild"
    assert (job.schedule, job.time_zone) == ("0 3 * * 1", "Europe/Berlin")
    target = job.http_target
    assert (
        target.uri
        == "https://cloudbuild.googleapis.com/v1/projects/proj-123456/locations/europe-west1/builds"
    )
    assert target.http_method == scheduler_v1.HttpMethod.POST
    assert target.headers["Content-Type"] == "application/json"
    assert target.oauth_token.service_account_email == INVOKER
    assert target.oauth_token.scope == "https://www.googleapis.com/auth/cloud-platform"
    assert "oidc_token" not in target, "Google APIs take OAuth access tokens, not OIDC ID tokens"
    assert job.retry_config.retry_count == 0, "a retried POST would start a second rebuild"
    # the body is exactly the Build proto in its JSON form, as builds.create takes it
    posted = cloudbuild_v1.Build.from_json(target.body.decode())
    assert posted == build


def test_build_runs_as_its_own_account_and_installs_pypapo_from_the_index_bucket() -> None:
    job, _ = make_job()
    body = json.loads(job.http_target.body)
    assert body["serviceAccount"] == f"projects/proj-123456/serviceAccounts/{BUILDER_SA}"
    assert body["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    fetch, run = body["steps"]
    assert fetch["args"][:3] == [
        "storage",
        "cp",
        f"gs://{BUCKET}/simple/pypapo/pypapo-0.1.0-py3-none-any.whl",
    ]
    script = run["args"][1]
    assert (
        "pip install --quiet --disable-pip-version-check /workspace/pypapo-0.1.0-py3-none-any.whl" in script
    )
    assert "pip install pypapo" not in script, "never resolve our own name on PyPI (dependency confusion)"
    build_line = next(line for line in script.splitlines() if "provision image build" in line)
    rollout_line = next(line for line in script.splitlines() if "provision rollout" in line)
    assert script.index(build_line) < script.index(rollout_line) and script.startswith("set -eu")
    for line in (build_line, rollout_line):
        assert (
            "--project=proj-123456" in line and "--zone=europe-west1-b" in line and "--instance=index" in line
        )
    assert "--yes" in rollout_line, "unattended: no question to answer"
    assert int(body["timeout"].rstrip("s")) > image_plan.BAKE_TIMEOUT_S + image_plan.READY_TIMEOUT_S


def test_roles_are_exactly_the_minimal_list_on_the_narrowest_resources() -> None:
    grants = {
        (g.member, g.role, g.resource)
        for g in image_schedule.schedule_roles("proj-123456", BUCKET, APPLIANCE_SA)
    }
    invoker, build = f"serviceAccount:{INVOKER}", f"serviceAccount:{BUILDER_SA}"
    assert grants == {
        (invoker, "roles/cloudbuild.builds.editor", "projects/proj-123456"),
        (invoker, "roles/iam.serviceAccountUser", f"serviceAccount:{BUILDER_SA}"),
        (build, "roles/compute.instanceAdmin.v1", "projects/proj-123456"),
        (build, "roles/compute.storageAdmin", "projects/proj-123456"),
        (build, "roles/iam.serviceAccountUser", f"serviceAccount:{APPLIANCE_SA}"),
        (build, "roles/iap.admin", "projects/proj-123456"),
        (build, "roles/storage.objectViewer", f"gs://{BUCKET}"),
        (build, "roles/logging.logWriter", "projects/proj-123456"),
    }
    roles = {r for _, r, _ in grants}
    assert not roles & {
        "roles/owner",
        "roles/editor",
        "roles/compute.admin",
        "roles/iam.serviceAccountTokenCreator",
    }


@pytest.mark.parametrize(
    "cron", ["0 3 * * 1", "*/15 * * * *", "0 3 1-7 * mon", "30 2 * jan,jul 0-6", "0 0 * * 7"]
)
def test_valid_cron_expressions_pass(cron: str) -> None:
    assert image_schedule.validate_cron(cron) == cron


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 3 * *", "has 4 fields"),
        ("0 0 3 * * 1", "has 6 fields"),
        ("60 3 * * 1", "out of range 0-59"),
        ("0 24 * * 1", "out of range 0-23"),
        ("0 3 0 * *", "out of range 1-31"),
        ("0 3 * 13 *", "out of range 1-12"),
        ("0 3 * * 8", "out of range 0-7"),
        ("0 3 * * mon-sun", "runs backwards"),
        ("*/0 3 * * *", "bad step"),
        ("0 3 * * funday", "out of range"),
        ("@weekly", "has 1 fields"),
    ],
)
def test_invalid_cron_is_rejected_with_the_reason(cron: str, why: str) -> None:
    with pytest.raises(PypapoError, match=why):
        image_schedule.validate_cron(cron)


def test_time_zone_must_be_an_iana_name() -> None:
    assert image_schedule.validate_time_zone("America/New_York") == "America/New_York"
    for bad in ("CEST", "Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(PypapoError, match="IANA"):
            image_schedule.validate_time_zone(bad)


def test_schedule_steps_create_accounts_grant_roles_then_the_job() -> None:
    job, _ = make_job()
    roles = image_schedule.schedule_roles("proj-123456", BUCKET, APPLIANCE_SA)
    steps = image_schedule.schedule_steps(TARGET, job, roles, WHEEL)
    calls = [s.method for s in steps]
    assert calls[:2] == ["iam.serviceAccounts.create"] * 2
    assert calls.count("setIamPolicy (add binding)") == len(roles)
    assert calls[-1] == "cloudscheduler.jobs.create|patch"
    doc = image_plan.steps_document("image schedule", steps)
    sent = doc["steps"][-1]["request"]["job"]
    assert sent["httpTarget"]["oauthToken"]["serviceAccountEmail"] == INVOKER
    assert json.loads(base64.b64decode(sent["httpTarget"]["body"]))["serviceAccount"].endswith(BUILDER_SA)


@pytest.mark.parametrize("replicas", [None, 3])
def test_the_commands_the_build_runs_are_accepted_by_the_cli(monkeypatch, tmp_path, replicas) -> None:
    """The unattended build runs `provision image build` and `provision rollout` with this appliance's
    non-default settings; those exact command lines must parse (checked through --dry-run)."""
    import shlex

    from click.testing import CliRunner

    from provisioner.cli import main
    from provisioner.cli.image import _cli_args

    monkeypatch.chdir(tmp_path)  # no pypapo.toml: the build has none either
    settings = Settings(
        project="proj-123456",
        zone="europe-west1-b",
        instance="index",
        port=8080,
        machine_type="e2-medium",
        replicas=replicas,
    )
    build = image_schedule.rebuild_build(TARGET, WHEEL, _cli_args(settings))
    script = build.steps[1].args[1]
    lines = [line for line in script.splitlines() if "/bin/provision " in line]
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)[1:]
        assert {"--instance=index", "--port=8080", "--machine-type=e2-medium"} <= set(argv)
        assert ("--replicas=3" in argv) == (replicas == 3)  # a group's build rolls the group
        result = CliRunner().invoke(main, [*argv, "--dry-run"])
        assert result.exit_code == 0, result.output
        steps = json.loads(result.stdout)["steps"]
        assert steps
        if replicas and argv[0] == "rollout":
            assert steps[-1]["call"] == "compute.regionInstanceGroupManagers.patch"

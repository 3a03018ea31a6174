"""`provision mirror schedule`: Cloud Scheduler -> Cloud Build running `provision mirror --lock gs://...`.

Checked through `--dry-run` (the exact request objects, no credentials): the build runs the very mirror
command with the lock and narrowing given, from the pypapo wheel in the index bucket; its account gets
the publisher role on that bucket and nothing to do with the VM; the shell step and the example pass
shellcheck.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "mirror-schedule.sh"
BASE = ["mirror", "schedule", "--project", "acme-prod", "--zone", "us-central1-a", "--dry-run"]


def dry_run(*args: str) -> dict:
    result = CliRunner().invoke(main, [*BASE, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_build_runs_the_mirror_from_the_bucket_wheel(tmp_path: Path) -> None:
    doc = dry_run(
        "--lock", "gs://acme-locks/uv.lock", "--python-version", "3.11", "--platform", "linux_x86_64"
    )
    fetch, step = doc["build"]["steps"]
    assert fetch["args"][:3] == [
        "storage",
        "cp",
        "gs://acme-prod-pypapo/simple/pypapo/pypapo-0.1.0-py3-none-any.whl",
    ]
    script = step["args"][1]
    last = shlex.split(script.strip().splitlines()[-1])
    assert last == [
        "/workspace/venv/bin/provision", "mirror", "--repo", "gs://acme-prod-pypapo",
        "--from", "https://pypi.org/simple/", "--lock", "gs://acme-locks/uv.lock",
        "--python-version", "3.11", "--platform", "linux_x86_64",
    ]  # fmt: skip
    assert "pip install pypapo" not in script  # never from PyPI
    (tmp_path / "step.sh").write_text(script)
    check = subprocess.run(
        ["shellcheck", "-s", "bash", str(tmp_path / "step.sh")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    assert doc["build"]["serviceAccount"].endswith(
        "/serviceAccounts/pypapo-mirror-build@acme-prod.iam.gserviceaccount.com"
    )


def test_roles_are_the_publisher_role_and_nothing_of_the_vm() -> None:
    doc = dry_run("--lock", "gs://acme-locks/uv.lock")
    grants = {
        (s["request"]["member"].split(":")[1].split("@")[0], s["request"]["role"], s["request"]["resource"])
        for s in doc["steps"]
        if s["call"].startswith("setIamPolicy")
    }
    assert grants == {
        ("pypapo-mirror-scheduler", "roles/cloudbuild.builds.editor", "projects/acme-prod"),
        ("pypapo-mirror-scheduler", "roles/iam.serviceAccountUser",
         "serviceAccount:pypapo-mirror-build@acme-prod.iam.gserviceaccount.com"),
        ("pypapo-mirror-build", "roles/storage.objectUser", "gs://acme-prod-pypapo"),
        ("pypapo-mirror-build", "roles/logging.logWriter", "projects/acme-prod"),
        ("pypapo-mirror-build", "roles/storage.objectViewer", "gs://acme-locks"),
    }  # fmt: skip
    (job_step,) = [s for s in doc["steps"] if s["call"].startswith("cloudscheduler")]
    job = job_step["request"]["job"]
    assert (
        job["httpTarget"]["uri"]
        == "https://cloudbuild.googleapis.com/v1/projects/acme-prod/locations/us-central1/builds"
    )
    assert job["httpTarget"]["oauthToken"]["serviceAccountEmail"].startswith("pypapo-mirror-scheduler@")
    assert job["retryConfig"].get("retryCount", 0) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lock", "uv.lock"], "must be gs://BUCKET/PATH"),
        (["--lock", "gs://acme-locks/uv.lock", "--platform", "Linux X86"], "--platform"),
        (["--lock", "gs://acme-locks/uv.lock", "--cron", "every night"], "cron"),
        (["--lock", "gs://acme-locks/uv.lock", "--from", "pypi.org"], "--from"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*BASE, *args])
    assert result.exit_code != 0
    assert (
        result.stderr.startswith("error: ")
        and message in result.stderr
        and len(result.stderr.splitlines()) == 1
    )


def test_the_example_lints_and_its_command_is_accepted() -> None:
    check = subprocess.run(["shellcheck", str(EXAMPLE)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    text = EXAMPLE.read_text().replace("\\\n", " ")
    line = re.search(r"^provision (mirror schedule .*)$", text, re.M)
    assert line
    values = {"$PROJECT": "acme-prod", "$ZONE": "us-central1-a", "$BUCKET": "acme-prod-pypapo",
              "$LOCK": "gs://acme-prod-pypapo-locks/requirements.txt", "$@": "--dry-run"}  # fmt: skip
    words = [values.get(w, w) for w in shlex.split(line.group(1))]
    result = CliRunner().invoke(main, words)
    assert result.exit_code == 0, result.output
    assert (
        "--lock gs://acme-prod-pypapo-locks/requirements.txt"
        in json.loads(result.stdout)["build"]["steps"][1]["args"][1]
    )


SCHEDULES = {
    "image": (["image", "schedule"], "pypapo-image-rebuild"),
    "mirror": (["mirror", "schedule", "--lock", "gs://acme-locks/uv.lock"], "pypapo-mirror"),
}


@pytest.mark.parametrize("which", sorted(SCHEDULES))
def test_both_schedules_share_their_flags_and_the_pause_and_delete_of_the_job(which: str) -> None:
    """`image schedule` and `mirror schedule` take the same flags, checked the same way, and stop their
    job the same way (one Cloud Scheduler call, shown by --dry-run)."""
    command, job = SCHEDULES[which]
    where = ["--project", "acme-prod", "--zone", "us-central1-a"]
    runner = CliRunner()
    for flag, verb in (("--disable", "pause"), ("--delete", "delete")):
        result = runner.invoke(main, [*command, *where, flag, "--dry-run"])
        assert result.exit_code == 0, result.output
        (step,) = json.loads(result.stdout)["steps"]
        assert (step["call"], step["step"]) == (f"cloudscheduler.jobs.{verb}", f"{verb} the job")
        assert step["request"]["name"].startswith("projects/acme-prod/locations/us-central1/jobs/")
        assert job in step["request"]["name"]
    both = runner.invoke(main, [*command, *where, "--disable", "--delete", "--dry-run"])
    assert (
        both.exit_code != 0
        and both.stderr.strip() == "error: --disable and --delete exclude each other: pick one"
    )
    cron = runner.invoke(main, [*command, *where, "--cron", "61 * * * *", "--dry-run"])
    assert cron.exit_code != 0 and cron.stderr.startswith("error: --cron '61 * * * *'")
    zone = runner.invoke(main, [*command, *where, "--time-zone", "Mars/Olympus", "--dry-run"])
    assert zone.exit_code != 0 and "Mars/Olympus" in zone.stderr

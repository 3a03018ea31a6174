"""The three dry runs work with no credentials and no network; failures reach the user as one line."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.api_core import exceptions as gexc

from provisioner.appliance import render
from provisioner.cli import image as image_cmd
from provisioner.cli import main
from provisioner.cloud import names, plan
from provisioner.cloud.apply import Cloud
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.gcp.iam import Iam
from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.settings import Settings
from tests.doubles.compute import ComputeEngine

ARGS = ["--project", "proj-123456", "--zone", "europe-west1-b"]
NO_NETWORK = ["unshare", "--net"] if shutil.which("unshare") and os.geteuid() == 0 else []


def dry_run(tmp_path: Path, *argv: str) -> dict:
    """Run the real CLI in a fresh process: credentials point nowhere, and (as root) no network at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "PYPAPO_"))}
    env.update(
        GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"), HOME=str(tmp_path), NO_PROXY="*"
    )
    entry = "import sys; from provisioner.cli import main; sys.argv[0] = 'provision'; main()"
    cmd = [*NO_NETWORK, sys.executable, "-c", entry, *argv, *ARGS, "--dry-run"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "error" not in result.stderr.lower(), result.stderr
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_build_dry_run_shows_a_complete_safe_pipeline_offline(tmp_path) -> None:
    doc = dry_run(tmp_path, "image", "build")
    calls = [s["call"] for s in doc["steps"]]
    assert calls == [
        "compute.instances.insert",
        "compute.instances.getGuestAttributes",
        "compute.instances.stop",
        "compute.images.insert",
        "compute.images.deprecate",
        "compute.instances.delete",
        "compute.disks.delete",
    ]
    builder = doc["steps"][0]["request"]["instanceResource"]
    assert not builder.get("serviceAccounts"), "the builder carries no credentials"
    assert builder["disks"][0]["autoDelete"] is True
    assert builder["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    assert builder["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    meta = {i["key"]: i["value"] for i in builder["metadata"]["items"]}
    appliance = render.render_startup_script(
        render.ApplianceConfig(bucket="proj-123456-pypapo", allowed_sources=(names.IAP_TCP_RANGE,))
    )
    assert appliance in meta["startup-script"], "the real rendered appliance script, run in bake mode"
    image = doc["steps"][3]["request"]["imageResource"]
    assert image["family"] == "pypapo" and image["name"] == doc["image"]
    assert {f["type"] for f in image["guestOsFeatures"]} == set(image_plan.GUEST_OS_FEATURES)


def test_rollout_dry_run_uses_the_create_spec_offline(tmp_path) -> None:
    doc = dry_run(tmp_path, "rollout")
    insert = next(s for s in doc["steps"] if s["call"] == "compute.instances.insert")
    sent = insert["request"]["instanceResource"]
    script = render.render_startup_script(
        render.ApplianceConfig(bucket="proj-123456-pypapo", allowed_sources=(names.IAP_TCP_RANGE,))
    )
    expected = plan.desired_instance(
        Settings(project="proj-123456", zone="europe-west1-b"),
        image=names.family_image("proj-123456", "pypapo"),
        startup_script=script,
    )
    assert sent == plan.request_dict(expected)
    assert sent["deletionProtection"] is True and "accessConfigs" not in sent["networkInterfaces"][0]
    calls = [s["call"] for s in doc["steps"]]
    assert calls.index("iap.getIamPolicy") < calls.index("compute.instances.delete")
    assert calls.index("compute.instances.setDeletionProtection") < calls.index("compute.instances.delete")


def test_schedule_dry_run_shows_accounts_roles_and_job_offline(tmp_path) -> None:
    doc = dry_run(tmp_path, "image", "schedule", "--cron", "0 3 * * 1", "--time-zone", "Europe/Berlin")
    job = doc["steps"][-1]["request"]["job"]
    assert job["schedule"] == "0 3 * * 1" and job["timeZone"] == "Europe/Berlin"
    assert doc["build"]["serviceAccount"].endswith("pypapo-image-build@proj-123456.iam.gserviceaccount.com")
    assert sum(s["call"] == "setIamPolicy (add binding)" for s in doc["steps"]) == 8


def test_schedule_with_a_prefix_copies_the_wheel_from_under_the_prefix(tmp_path) -> None:
    """The rebuild fetches the pypapo wheel where `provision publish --prefix` put it (issue 11, item 7)."""
    doc = dry_run(tmp_path, "image", "schedule", "--prefix", "team/py", "--pypapo-version", "1.2.3")
    wheel = "team/py/simple/pypapo/pypapo-1.2.3-py3-none-any.whl"
    fetch = doc["build"]["steps"][0]
    assert fetch["args"][:3] == ["storage", "cp", f"gs://proj-123456-pypapo/{wheel}"]
    check = next(s for s in doc["steps"] if s["call"] == "storage.objects.get")
    assert check["request"] == {"bucket": "proj-123456-pypapo", "object": wheel}
    # and the build itself runs against the same prefix
    assert "--prefix=team/py" in doc["build"]["steps"][1]["args"][1]


def test_invalid_cron_fails_before_settings_or_credentials() -> None:
    result = CliRunner().invoke(main, ["image", "schedule", "--cron", "0 3 * *", "--dry-run"])
    assert result.exit_code != 0
    assert result.output.strip().startswith("error: --cron '0 3 * *' has 4 fields")


# ------------------------------------------------------------------------- errors reach users as one line


@pytest.fixture
def double(monkeypatch) -> ComputeEngine:
    api = ComputeEngine()
    clients = api.clients()
    cloud = Cloud(Compute(clients), None, Iam(clients))
    monkeypatch.setattr(image_cmd, "connect", lambda settings, progress=True: cloud)
    return api


def test_a_failed_build_is_one_line_and_the_builder_is_gone(double) -> None:
    double.new_guest = lambda _name: bake_done_at_once
    double.fail["images.insert"] = gexc.Forbidden("Required 'compute.images.create' permission")
    result = CliRunner().invoke(main, ["image", "build", *ARGS])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "failed at 'create the image'" in lines[0] and "Traceback" not in result.output
    assert double.instances == {} and double.disks == {}


def test_rollout_says_nothing_to_do_when_already_on_the_newest_image(double) -> None:
    spec = image_cmd.serving_instance_spec(Settings(project="proj-123456", zone="europe-west1-b"))
    double.add_image("pypapo-v1", dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    double.add_appliance(spec, names.image_link("proj-123456", "pypapo-v1"))
    result = CliRunner().invoke(main, ["rollout", *ARGS, "--yes"])
    assert result.exit_code == 0, result.output
    assert "already runs pypapo-v1" in result.output
    assert "instances.delete" not in double.call_names()


@pytest.mark.parametrize("command", ["rollout", "rollback"])
def test_an_image_baked_before_the_page_guard_is_refused_before_anything_is_deleted(double, command) -> None:
    """An older pypapo's image lacks nginx's njs module and the appliance has no egress to install it:
    booting it would fail, after the old instance is gone. Refused up front, naming the fix."""
    spec = image_cmd.serving_instance_spec(Settings(project="proj-123456", zone="europe-west1-b"))
    old = {"pypapo-base": "debian-12", "pypapo-nginx": "1_22_1-9_deb12u1"}  # no pypapo-format: format 1
    current = {**old, "pypapo-format": "2"}
    if command == "rollout":
        double.add_image("pypapo-v1", dt.datetime(2026, 11, 18, tzinfo=dt.UTC), "DEPRECATED", labels=current)
        double.add_image("pypapo-v2", dt.datetime(2026, 11, 25, tzinfo=dt.UTC), labels=old)
        double.add_appliance(spec, names.image_link("proj-123456", "pypapo-v1"))
    else:
        double.add_image("pypapo-v1", dt.datetime(2026, 11, 18, tzinfo=dt.UTC), "DEPRECATED", labels=old)
        double.add_image("pypapo-v2", dt.datetime(2026, 11, 25, tzinfo=dt.UTC), labels=current)
        double.add_appliance(spec, names.image_link("proj-123456", "pypapo-v2"))
    result = CliRunner().invoke(main, [command, *ARGS, "--yes"])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "baked by an older pypapo (image format 1, this version needs 2" in line
    assert "run `provision image build` first" in line
    assert not {"instances.delete", "instances.insert", "images.deprecate"} & set(double.call_names())


def test_image_list_marks_the_serving_image(double) -> None:
    spec = image_cmd.serving_instance_spec(Settings(project="proj-123456", zone="europe-west1-b"))
    double.add_image("pypapo-v1", dt.datetime(2026, 11, 18, tzinfo=dt.UTC), "DEPRECATED")
    double.add_image("pypapo-v2", dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    double.add_appliance(spec, names.image_link("proj-123456", "pypapo-v1"))
    result = CliRunner().invoke(main, ["image", "list", *ARGS, "--output", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["serving"] == "pypapo-v1"
    assert [(i["name"], i["state"], i["serving"]) for i in doc["images"]] == [
        ("pypapo-v2", "ACTIVE", False),
        ("pypapo-v1", "DEPRECATED", True),
    ]


def bake_done_at_once() -> dict[str, str]:
    """Guest attributes of a builder whose bake is already done at the first poll."""
    return {"bake": "done", "gcsfuse-version": "2.5.1", "nginx-version": "1.22.1"}

"""Settings: flags > PYPAPO_* environment > pypapo.toml, defaults, and validation before any API call."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.cloud.settings import load
from provisioner.errors import PypapoError


def test_defaults_derive_region_bucket_subnet_and_image_project(tmp_path: Path) -> None:
    s = load({"project": "acme-prod", "zone": "europe-west4-a"}, env={}, cwd=tmp_path)
    assert (s.region, s.bucket, s.subnet, s.image_project) == (
        "europe-west4",
        "acme-prod-pypapo",
        "default",
        "acme-prod",
    )
    assert (s.instance, s.port, s.image_family, s.network) == ("pypapo", 3333, "pypapo", "default")
    assert s.service_account_email == "pypapo-vm@acme-prod.iam.gserviceaccount.com"


def test_flags_beat_environment_beat_toml(tmp_path: Path) -> None:
    (tmp_path / "pypapo.toml").write_text(
        'project = "from-toml"\nzone = "us-east1-b"\nport = 4000\n'
        'instance = "toml-vm"\nmachine-type = "e2-medium"\n'
    )
    env = {"PYPAPO_PROJECT": "from-env", "PYPAPO_PORT": "5000"}
    s = load({"port": 6000}, env=env, cwd=tmp_path)
    assert s.project == "from-env"  # env over toml
    assert s.port == 6000  # flag over env
    assert s.instance == "toml-vm" and s.machine_type == "e2-medium"  # toml over defaults
    assert s.zone == "us-east1-b"


def test_explicit_config_and_pypapo_table(tmp_path: Path) -> None:
    cfg = tmp_path / "deploy.toml"
    cfg.write_text('[pypapo]\nproject = "acme-prod"\nzone = "asia-south1-c"\nbucket = "acme-wheels"\n')
    s = load({}, env={"PYPAPO_CONFIG": str(cfg)}, cwd=tmp_path)
    assert (s.bucket, s.region) == ("acme-wheels", "asia-south1")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"zone": "us-central1-a"}, "no project: pass --project"),
        ({"project": "acme-prod"}, "no zone: pass --zone"),
        ({"project": "Acme_Prod", "zone": "us-central1-a"}, "is not a valid project ID"),
        ({"project": "acme-prod", "zone": "us-central1"}, "is not a zone name"),
        ({"project": "acme-prod", "zone": "us-central1-a", "region": "europe-west1"}, "is not in --region"),
        ({"project": "acme-prod", "zone": "us-central1-a", "instance": "Pypapo"}, "--instance 'Pypapo'"),
        (
            {"project": "acme-prod", "zone": "us-central1-a", "bucket": "goog-wheels"},
            "may not start with 'goog'",
        ),
        ({"project": "acme-prod", "zone": "us-central1-a", "bucket": "my_google_wheels"}, "may not contain"),
        ({"project": "acme-prod", "zone": "us-central1-a", "bucket": "ab"}, "wrong length"),
        ({"project": "acme-prod", "zone": "us-central1-a", "bucket": "192.168.0.1"}, "IP address"),
        ({"project": "acme-prod", "zone": "us-central1-a", "port": 22}, "--port 22 is outside"),
        ({"project": "acme-prod", "zone": "us-central1-a", "service_account": "vm"}, "--service-account"),
        ({"project": "acme-prod", "zone": "us-central1-a", "machine_type": "big"}, "--machine-type"),
        ({"project": "acme-prod", "zone": "us-central1-a", "prefix": "/team"}, "--prefix"),
        ({"project": "acme-prod", "zone": "us-central1-a", "replicas": 0}, "--replicas 0 must be between 1"),
        ({"project": "acme-prod", "zone": "us-central1-a", "replicas": 13}, "--replicas 13 must be between"),
        (
            {"project": "acme-prod", "zone": "us-central1-a", "replicas": 2, "instance": "a" * 53},
            "too long for a group",
        ),
    ],
)
def test_validation_names_the_flag(flags: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(PypapoError, match=message.replace("(", r"\(")):
        load(flags, env={}, cwd=tmp_path)


def test_toml_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "pypapo.toml"
    bad.write_text('project = "acme-prod"\nzone = "us-central1-a"\nbukcet = "x"\n')
    with pytest.raises(PypapoError, match="unknown setting 'bukcet'"):
        load({}, env={}, cwd=tmp_path)
    bad.write_text("project = \n")
    with pytest.raises(PypapoError, match="is not valid TOML"):
        load({}, env={}, cwd=tmp_path)
    with pytest.raises(PypapoError, match="PYPAPO_PORT: port must be a whole number"):
        load(
            {"project": "acme-prod", "zone": "us-central1-a"}, env={"PYPAPO_PORT": "http"}, cwd=tmp_path / "x"
        )


def test_cli_reads_the_environment(tmp_path: Path) -> None:
    env = {"PYPAPO_PROJECT": "acme-prod", "PYPAPO_ZONE": "us-west1-b", "PYPAPO_PORT": "4444"}
    result = CliRunner().invoke(main, ["plan", "--offline", "--output", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"4444"' in result.output and "us-west1-b" in result.output


def test_cli_bad_setting_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["create", "--project", "acme-prod", "--zone", "mars-1a"], env={})
    assert result.exit_code == 1
    assert result.output.startswith("error: --zone 'mars-1a' is not a zone name")
    assert "Traceback" not in result.output


def test_replicas_come_from_flag_environment_or_toml(tmp_path: Path) -> None:
    base = {"project": "acme-prod", "zone": "us-central1-a"}
    assert load(base, env={}, cwd=tmp_path).replicas is None  # the single VM, as before
    assert not load(base, env={}, cwd=tmp_path).group_mode
    s = load(base, env={"PYPAPO_REPLICAS": "3"}, cwd=tmp_path)
    assert (s.replicas, s.group_mode) == (3, True)
    assert load({**base, "replicas": 2}, env={"PYPAPO_REPLICAS": "3"}, cwd=tmp_path).replicas == 2
    (tmp_path / "pypapo.toml").write_text("replicas = 4\n")
    assert load(base, env={}, cwd=tmp_path).replicas == 4
    with pytest.raises(PypapoError, match="PYPAPO_REPLICAS: replicas must be a whole number"):
        load(base, env={"PYPAPO_REPLICAS": "two"}, cwd=tmp_path)


def test_cli_bad_replicas_is_one_line_error() -> None:
    result = CliRunner().invoke(
        main, ["plan", "--offline", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "0"]
    )
    assert result.exit_code == 1
    assert result.output == (
        "error: --replicas 0 must be between 1 and 12 (the appliance VMs of the regional group;"
        " leave it unset for the single VM)\n"
    )

"""`provision verify --replicas N` checks every instance of the group (their names are generated, so
it lists them), each under its own instance id and published host keys; one unhealthy replica fails
the command and is named."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from provisioner.appliance import verify
from provisioner.cloud import apply as deploy
from provisioner.cloud.settings import Settings
from provisioner.cloud.verify_targets import appliances
from provisioner.errors import PypapoError
from tests.cloud.test_group_deploy import create, group_cloud

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIE8v0pYBx3p1cQ8o0TQq9nT7m0qXg3w5pKJ6m3l0w9dQ"  # an ed25519 public key
GROUP = Settings(project="acme-prod", zone="us-central1-a", replicas=3)


def _created() -> tuple[deploy.Cloud, Any]:
    cloud, engine = group_cloud()
    create(cloud, GROUP)
    for m in engine.group_instances():
        engine.guest[m.name] = lambda: {"hostkeys/ssh-ed25519": KEY, "pypapo/ready": "true"}
    return cloud, engine


def test_every_instance_of_the_group_is_a_target_with_its_id_and_keys() -> None:
    cloud, engine = _created()
    found = appliances(cloud.compute, GROUP)
    members = engine.group_instances()
    assert sorted((a.name, a.zone) for a in found) == sorted((m.name, m.zone) for m in members)
    assert len({a.zone for a in found}) == 3
    for a in found:
        assert a.instance_id == str(engine.instances[a.name].id)
        assert verify.host_key_lines(a.instance_id, a.host_keys) == [
            f"compute.{a.instance_id} ssh-ed25519 {KEY}"
        ]


def test_no_group_names_the_create_command() -> None:
    cloud, _engine = group_cloud()
    with pytest.raises(
        PypapoError, match=r"group pypapo does not exist in us-central1; run `provision create"
    ):
        appliances(cloud.compute, GROUP)


def test_verify_runs_the_suite_on_each_replica_and_names_the_unhealthy_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from provisioner.cli import main

    cloud, engine = _created()
    sick = sorted(m.name for m in engine.group_instances())[1]
    checked: list[verify.Target] = []

    def run_suite(target: verify.Target, expect: verify.Expectations) -> list[verify.Result]:
        assert expect.bucket == "acme-prod-pypapo" and expect.port == 3333
        checked.append(target)
        bad = target.host == sick
        return [verify.Result("nginx serves /healthz", "failed" if bad else "passed", "503" if bad else "")]

    monkeypatch.setattr(verify, "run_suite", run_suite)
    monkeypatch.setattr(verify, "os_login_user", lambda: "ops_example_com")
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, **kw: cloud))
    result = CliRunner().invoke(
        main, ["verify", "--project", "acme-prod", "--zone", "us-central1-a", "--replicas", "3"]
    )
    # each through its own tunnel (in its zone), trusting only its own published key (strict checking)
    zones = {m.name: m.zone for m in engine.group_instances()}
    assert sorted(t.host for t in checked) == sorted(zones)
    assert all(f"--zone={zones[t.host]}" in t.proxy_command for t in checked)
    assert all(t.strict_host_key_checking == "yes" for t in checked)
    assert result.exit_code == 1, result.output
    assert f"1 of 3 appliances are unhealthy (instance {sick}: 1 of 1 checks failed" in result.output
    assert result.output.count("nginx serves /healthz") == 3

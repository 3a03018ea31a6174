"""`provision verify`: how it reaches the appliance, what it expects, and how it reports.

The suite itself runs against a booted appliance in tests/vm (the `vm` marker); here are the parts a
user meets without one: the ssh configuration handed to testinfra (IAP or plain), the hardening the
suite demands of our own units, the table, and the errors.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.appliance import render, verify
from provisioner.cli import main
from provisioner.errors import PypapoError


def _config(target: verify.Target, tmp_path: Path) -> dict[str, str]:
    lines = target.ssh_config(tmp_path).splitlines()
    assert lines[0] == f"Host {verify.SSH_ALIAS}"
    return dict(line.strip().split(" ", 1) for line in lines[1:])


def test_iap_target_tunnels_ssh_through_gcloud(tmp_path: Path) -> None:
    target = verify.Target.iap("my-proj", "europe-west1-b", "pypapo", "alice_example_com")
    cfg = _config(target, tmp_path)
    assert shlex.split(cfg["ProxyCommand"]) == [
        "gcloud", "compute", "start-iap-tunnel", "pypapo", "22", "--listen-on-stdin",
        "--zone=europe-west1-b", "--project=my-proj", "--verbosity=warning",
    ]  # fmt: skip
    assert cfg["User"] == "alice_example_com"
    assert cfg["IdentityFile"].endswith("/.ssh/google_compute_engine")
    assert cfg["UserKnownHostsFile"].endswith("/.ssh/google_compute_known_hosts")
    assert cfg["BatchMode"] == "yes"
    assert cfg["ControlPath"].startswith(str(tmp_path))


def test_plain_host_target(tmp_path: Path) -> None:
    target = verify.Target.from_url("ssh://admin@10.0.0.5:2222", identity_file="/k", known_hosts="/kh")
    cfg = _config(target, tmp_path)
    assert (cfg["HostName"], cfg["User"], cfg["Port"], cfg["IdentityFile"]) == (
        "10.0.0.5",
        "admin",
        "2222",
        "/k",
    )
    assert cfg["UserKnownHostsFile"] == "/kh"
    assert "ProxyCommand" not in cfg
    assert verify.Target.from_url("ssh://box").user == "root"


@pytest.mark.parametrize("url", ["http://host", "ssh://", "ftp://u@h:21"])
def test_bad_host_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(PypapoError, match="ssh://USER@HOST"):
        verify.Target.from_url(url)


def test_suite_demands_the_hardening_our_units_declare() -> None:
    gcsfuse, nginx = verify.expected_hardening("gcsfuse"), verify.expected_hardening("nginx")
    units = render.render_units(render.ApplianceConfig(bucket="some-bucket"))
    declared = verify.parse_directives(units[render.NGINX_UNIT])
    assert nginx["ProtectSystem"] == declared["ProtectSystem"]
    assert nginx["NoNewPrivileges"] == "yes" and gcsfuse["NoNewPrivileges"] == "yes"
    # Mount-namespace sandboxing on the gcsfuse unit would hide the mount from nginx: never demanded.
    assert not {"ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateDevices"} & set(gcsfuse)


def test_hardening_follows_the_port() -> None:
    # Below 1024 nginx needs CAP_NET_BIND_SERVICE; above it, no capability at all.
    assert verify.expected_hardening("nginx", port=3333)["CapabilityBoundingSet"] == ""
    assert verify.expected_hardening("nginx", port=80)["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"


def test_parse_directives_reads_service_section_last_wins() -> None:
    text = "[Unit]\nProtectSystem=no\n[Service]\n# ProtectHome=no\nProtectSystem=full\nProtectSystem=strict\n"
    assert verify.parse_directives(text) == {"ProtectSystem": "strict"}


def test_table_names_failures() -> None:
    table = verify.format_table(
        [
            verify.Result("test_healthz", "passed"),
            verify.Result("test_bucket_mounted_read_only", "failed", "rw"),
        ]
    )
    lines = table.splitlines()
    assert any(line.startswith("test_healthz") and "PASS" in line for line in lines)
    assert any(
        line.startswith("test_bucket_mounted_read_only") and "FAIL" in line and "rw" in line for line in lines
    )
    assert lines[-1] == "1 of 2 checks passed"


def test_unreachable_host_is_one_clear_error(tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once: the preflight says so instead of 45 failed checks.
    res = CliRunner().invoke(
        main,
        ["verify", "--host", "ssh://root@127.0.0.1:1", "--identity-file", str(tmp_path / "none"),
         "--known-hosts", str(tmp_path / "known_hosts")],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "cannot reach root@127.0.0.1 over SSH" in res.output
    assert "--identity-file" in res.output


def test_iap_mode_needs_a_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("PYPAPO_PROJECT", "PYPAPO_ZONE", "PYPAPO_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    res = CliRunner().invoke(main, ["verify"])
    assert res.exit_code != 0
    assert "--project" in res.output


def test_iap_mode_without_gcloud_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No --user: the OS Login user comes from gcloud, which is not on this PATH.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    res = CliRunner().invoke(main, ["verify", "--project", "my-proj-123", "--zone", "us-central1-a"])
    assert res.exit_code != 0
    assert "gcloud is not installed" in res.output and "--user" in res.output

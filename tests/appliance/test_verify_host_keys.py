"""`provision verify` keys host keys as gcloud does (by instance id) and trusts the keys the guest agent
published under `hostkeys/` (type -> base64 blob), so a VM recreated by a rollout is not refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.appliance import verify
from provisioner.errors import PypapoError


def _host_key(tmp_path: Path, kind: str = "ed25519") -> tuple[str, str]:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    key = tmp_path / f"host_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    kind_name, blob = key.with_suffix(".pub").read_text().split()[:2]
    return kind_name, blob


def test_published_keys_become_known_hosts_lines_openssh_finds_under_the_instance_id(tmp_path: Path) -> None:
    kind, blob = _host_key(tmp_path)
    lines = verify.host_key_lines("8345112233445566", {kind: blob})
    assert lines == [f"compute.8345112233445566 {kind} {blob}"]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    found = subprocess.run(
        ["ssh-keygen", "-F", "compute.8345112233445566", "-f", str(known)], capture_output=True, text=True
    )
    assert found.returncode == 0 and blob in found.stdout


def test_a_recreated_vm_is_a_new_host_not_a_changed_key() -> None:
    old = verify.Target.iap("acme", "us-central1-a", "pypapo", "alice", instance_id="111", known_hosts="/k1")
    new = verify.Target.iap("acme", "us-central1-a", "pypapo", "alice", instance_id="222", known_hosts="/k2")
    for target, alias in ((old, "compute.111"), (new, "compute.222")):
        config = target.ssh_config(Path("/tmp"))
        assert f"HostKeyAlias {alias}\n" in config
        assert "StrictHostKeyChecking yes" in config  # the published key must match
    # no key published (an old image's agent): gcloud's file and first-key acceptance, under the id
    plain = verify.Target.iap("acme", "us-central1-a", "pypapo", "alice", instance_id="333")
    config = plain.ssh_config(Path("/tmp"))
    assert "HostKeyAlias compute.333\n" in config and "StrictHostKeyChecking accept-new" in config


def test_hostile_published_values_add_no_line(tmp_path: Path) -> None:
    kind, blob = _host_key(tmp_path)
    _, other = _host_key(tmp_path, "ecdsa")
    hostile = {
        kind: blob + "\n@cert-authority * ssh-ed25519 AAAA",  # a second line
        "ecdsa-sha2-nistp256": blob,  # a blob of another type under this type's name
        "ssh-dss": other,  # a type the agent never publishes
    }
    assert verify.host_key_lines("42", hostile) == []
    with pytest.raises(PypapoError, match="not a number"):
        verify.host_key_lines("42 * ", {kind: blob})


def test_verify_reads_the_published_keys_of_the_instance_through_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import verify as verify_cli
    from provisioner.cloud import names
    from provisioner.cloud import plan as planlib
    from provisioner.cloud.gcp.compute import Compute
    from provisioner.cloud.settings import Settings
    from provisioner.cloud.verify_targets import appliances
    from tests.doubles.compute import ComputeEngine

    kind, blob = _host_key(tmp_path)
    s = Settings(project="acme-prod", zone="us-central1-a")
    engine = ComputeEngine("acme-prod", "us-central1-a")
    engine.add_appliance(planlib.desired_instance(s, image=names.fallback_image(), startup_script=""))
    published = {f"hostkeys/{kind}": blob, "pypapo/ready": "true"}
    engine.guest["pypapo"] = lambda: published
    compute = Compute(engine.clients())
    (found,) = appliances(compute, s)
    asked = engine.requests("instances.get_guest_attributes")
    assert found.instance_id == str(engine.instances["pypapo"].id) and asked[0].query_path == "hostkeys/"
    path = verify_cli._known_hosts_file(verify.host_key_lines(found.instance_id, found.host_keys))
    assert Path(path).read_text() == f"compute.{found.instance_id} {kind} {blob}\n"
    del published[f"hostkeys/{kind}"]  # 404: the agent has published nothing under hostkeys/
    (found,) = appliances(compute, s)
    assert found.host_keys == {} and verify_cli._known_hosts_file([]) == ""

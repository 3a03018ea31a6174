"""`provision create/destroy/status/grant` over doubles (Compute Engine has no emulator).

Compute Engine is the one client-level double, `tests.doubles.compute.ComputeEngine`: the real thin layer
(`cloud/gcp/compute.py`) runs over it. Storage admin and IAM are doubled at the thin layer
(`tests.doubles.layers`). Each records every request object it is sent and keeps state in real
compute_v1 / iam / storage objects, applying each request the way the API does (fingerprints, deletion
protection, stopped-VM-only changes). Everything above, planning, reconciliation, ordering, waiting and
the commands, runs for real.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from click.testing import CliRunner
from google.api_core import exceptions as gexc
from google.cloud import compute_v1, iam_admin_v1

from provisioner.cli import main
from provisioner.cloud import apply as deploy
from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp import policy as iam_policy
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.doubles.compute import ComputeEngine, bake_done, ready_after
from tests.doubles.layers import FakeIam, FakeStorage

SCRIPT = "#!/bin/bash\necho pypapo startup\n"


def settings(**overrides: Any) -> Settings:
    return Settings(project="acme-prod", zone="us-central1-a", **overrides)


def is_builder(name: str) -> bool:
    return name.startswith("pypapo-builder")


def empty_family_cloud() -> deploy.Cloud:
    """A project with nothing of pypapo's. Its builders finish their bake on the second poll; an
    appliance reports ready on its third."""
    log: list[tuple[str, Any]] = []
    storage = FakeStorage(log)
    engine = ComputeEngine("acme-prod", "us-central1-a", log=log)
    engine.new_guest = lambda name: bake_done() if is_builder(name) else ready_after(2)
    clients = engine.clients()
    c = deploy.Cloud(Compute(clients), storage, FakeIam("acme-prod", log), storage.open_repository)
    c.log = log  # type: ignore[attr-defined]  # every write in the order it was sent
    c.engine = engine  # type: ignore[attr-defined]
    return c


def engine_of(cloud: deploy.Cloud) -> ComputeEngine:
    return cloud.engine  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def cloud() -> deploy.Cloud:
    """A project whose image family already has an image (the bake of an empty one: `empty_family_cloud`)."""
    c = empty_family_cloud()
    engine_of(c).add_image("pypapo-20261125", dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    return c


def sent(cloud: deploy.Cloud) -> list[str]:
    return [m for m, _ in cloud.log]  # type: ignore[attr-defined]


def clear(cloud: deploy.Cloud) -> None:
    for part in (cloud.storage, cloud.iam):
        part.requests.clear()
    engine_of(cloud).calls.clear()
    cloud.log.clear()  # type: ignore[attr-defined]


def appliance_polls(engine: ComputeEngine) -> int:
    return sum(r.instance == "pypapo" for r in engine.requests("instances.get_guest_attributes"))


# the first bake: the builder, the image from its stopped disk, the clean-up (its disk went with it)
BAKE = ["instances.insert", "instances.stop", "images.insert", "instances.delete", "disks.delete"]


def run_create(cloud: deploy.Cloud, s: Settings, messages: list[str] | None = None) -> planlib.Plan:
    out = messages if messages is not None else []
    return deploy.create(cloud, s, script=SCRIPT, progress=out.append, sleep=lambda _s: None)


def test_create_from_nothing_bakes_the_image_then_sends_every_resource_once_hardened() -> None:
    cloud = empty_family_cloud()
    s = settings()
    messages: list[str] = []
    engine = engine_of(cloud)
    run_create(cloud, s, messages)

    assert sent(cloud) == [
        "create_bucket",
        "create_service_account",
        "set_member",
        "subnetworks.set_private_ip_google_access",
        "firewalls.insert",  # IAP to SSH and the serving port
        "firewalls.insert",  # the serving port denied to everyone else
        *BAKE,  # the family is empty: `image build` first, its builder has the only egress
        "instances.insert",  # the appliance, from the image just baked
        "initialize_index",  # a fresh bucket serves an empty index, not a 503
    ]
    builder = engine.requests("instances.insert")[0].instance_resource
    assert is_builder(builder.name) and len(builder.network_interfaces[0].access_configs) == 1
    # the builder and its disk are gone: what is left is the appliance and its boot disk
    assert set(engine.instances) == {"pypapo"} and set(engine.disks) == {"pypapo"}
    assert any(
        m.startswith("baking the first image of projects/acme-prod/global/images/family/pypapo")
        for m in messages
    )
    assert any("waiting for the bake" in m for m in messages)
    allow, deny = (r.firewall_resource for r in engine.requests("firewalls.insert"))
    assert (allow.name, deny.name) == ("pypapo-allow-iap", "pypapo-deny-port")
    # ranked: IAP's allow, then the deny, then anything of the network's (default-allow-internal: 65534)
    assert allow.priority < deny.priority < 1000 < 65534
    assert list(deny.source_ranges) == ["0.0.0.0/0"]
    assert [(d.I_p_protocol, list(d.ports)) for d in deny.denied] == [("tcp", ["3333"])]
    assert list(deny.target_service_accounts) == ["pypapo-vm@acme-prod.iam.gserviceaccount.com"]
    bucket = cloud.storage.requests[0][1]
    assert bucket["iamConfiguration"] == {
        "publicAccessPrevention": "enforced",
        "uniformBucketLevelAccess": {"enabled": True},
    }
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["softDeletePolicy"]["retentionDurationSeconds"] == planlib.SOFT_DELETE_SECONDS
    # the VM's account reads the bucket, on the bucket only
    assert cloud.storage.requests[1][1] == (
        "acme-prod-pypapo",
        "roles/storage.objectViewer",
        "serviceAccount:pypapo-vm@acme-prod.iam.gserviceaccount.com",
        True,
    )
    req = engine.requests("instances.insert")[-1]
    assert isinstance(req, compute_v1.InsertInstanceRequest)
    inst = req.instance_resource
    assert inst.service_accounts[0].email == "pypapo-vm@acme-prod.iam.gserviceaccount.com"
    assert "compute@developer" not in inst.service_accounts[0].email
    assert list(inst.network_interfaces[0].access_configs) == []
    # the appliance boots the new image, never plain Debian (it has no egress to install anything)
    assert inst.disks[0].initialize_params.source_image == "projects/acme-prod/global/images/family/pypapo"
    assert [i.family for i in engine.images.values()] == ["pypapo"]
    assert appliance_polls(engine) == 3  # it waited for pypapo/ready: two 404s, then ready
    assert any("the appliance on pypapo is ready" in m for m in messages)
    # a second create bakes nothing
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == []


def test_second_create_changes_nothing_and_says_so(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    clear(cloud)
    messages: list[str] = []
    plan = run_create(cloud, s, messages)
    assert sent(cloud) == []
    assert not plan.changed
    assert any(m.startswith("nothing to change") for m in messages)


def test_create_uses_the_pypapo_image_family_once_it_exists(cloud: deploy.Cloud) -> None:
    assert engine_of(cloud).images["pypapo-20261125"].family == "pypapo"
    run_create(cloud, settings())
    assert "images.insert" not in sent(cloud)
    inst = engine_of(cloud).requests("instances.insert")[-1].instance_resource
    assert inst.disks[0].initialize_params.source_image == "projects/acme-prod/global/images/family/pypapo"


def test_partial_failure_converges_without_recreating(cloud: deploy.Cloud) -> None:
    s = settings()
    engine_of(cloud).fail["firewalls.insert"] = gexc.Forbidden(
        "Quota 'FIREWALLS' exceeded.  Limit: 100.0 globally.",
        errors=[
            {"reason": "quotaExceeded", "message": "Quota 'FIREWALLS' exceeded.  Limit: 100.0 globally."}
        ],
    )
    with pytest.raises(PypapoError, match="quota exceeded"):
        run_create(cloud, s)
    assert "instances.insert" not in sent(cloud)
    clear(cloud)
    del engine_of(cloud).fail["firewalls.insert"]  # the quota was raised
    run_create(cloud, s)
    # bucket, account and subnet were done: only what failed and what came after is sent
    assert sent(cloud) == ["firewalls.insert", "firewalls.insert", "instances.insert", "initialize_index"]
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == []


def test_create_reconciles_hardening_drift_in_place(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    engine = engine_of(cloud)
    inst = engine.instances["pypapo"]
    # someone loosened the VM by hand
    inst.deletion_protection = False
    inst.network_interfaces[0].access_configs = [
        compute_v1.AccessConfig(name="External NAT", nat_i_p="34.1.2.3")
    ]
    items = {i.key: i.value for i in inst.metadata.items}
    items.update({"serial-port-enable": "TRUE", "enable-oslogin": "FALSE", "ssh-keys": "me:ssh-ed25519 AAAA"})
    inst.metadata.items = planlib.metadata_items(items)
    inst.shielded_instance_config.enable_secure_boot = False
    inst.labels = {"team": "infra"}
    engine.firewalls[s.firewall_name].source_ranges = ["0.0.0.0/0"]
    engine.firewalls[s.deny_firewall_name].priority = 65535  # ranked below default-allow-internal
    engine.subnetworks["default"].private_ip_google_access = False
    clear(cloud)

    run_create(cloud, s)

    assert "instances.insert" not in sent(cloud) and "firewalls.insert" not in sent(cloud)
    assert sent(cloud) == [
        "subnetworks.set_private_ip_google_access",
        "firewalls.update",
        "firewalls.update",
        "instances.set_metadata",
        "instances.set_labels",
        "instances.set_deletion_protection",
        "instances.delete_access_config",
        "instances.stop",
        "instances.update_shielded_instance_config",
        "instances.start",
    ]
    inst = engine.instances["pypapo"]
    meta = {i.key: i.value for i in inst.metadata.items}
    assert meta["serial-port-enable"] == "FALSE" and meta["enable-oslogin"] == "TRUE"
    assert "ssh-keys" not in meta
    assert inst.deletion_protection and not list(inst.network_interfaces[0].access_configs)
    assert inst.shielded_instance_config.enable_secure_boot
    assert inst.status == "RUNNING"
    assert inst.labels["team"] == "infra" and inst.labels["app"] == "pypapo"  # other labels are kept
    assert list(engine.firewalls[s.firewall_name].source_ranges) == ["35.235.240.0/20"]
    assert engine.firewalls[s.deny_firewall_name].priority == planlib.DENY_PRIORITY
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == []


def test_create_deletes_user_managed_keys_on_the_appliance_account(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    key = iam_admin_v1.ServiceAccountKey(
        name=f"projects/acme-prod/serviceAccounts/{s.service_account_email}/keys/abc"
    )
    cloud.iam.keys[s.service_account_email] = [key]
    clear(cloud)
    run_create(cloud, s)
    assert [(m, r.name) for m, r in cloud.iam.requests] == [("delete_service_account_key", key.name)]


def test_appliance_error_stops_create_with_the_reason(cloud: deploy.Cloud) -> None:
    s = settings()

    engine_of(cloud).guest["pypapo"] = lambda: {"error": "gcsfuse mount failed"}
    with pytest.raises(PypapoError, match=r"gcsfuse mount failed.*get-serial-port-output"):
        run_create(cloud, s)


def test_a_final_not_ready_status_alone_stops_create_within_seconds(cloud: deploy.Cloud) -> None:
    """The script writes status="not ready: REASON" and error=REASON; a rate-limited metadata server may
    drop the second write. The status alone must end the wait at the next poll, not at the timeout."""
    s = settings(ready_timeout=600)
    now = [0.0]

    engine_of(cloud).guest["pypapo"] = lambda: {
        "ready": "false",
        "status": "not ready: /mnt/pypapo is not mounted",
    }
    with pytest.raises(PypapoError) as err:
        deploy.create(
            cloud, s, script=SCRIPT, progress=lambda _m: None, sleep=lambda t: None, clock=lambda: now[0]
        )
    assert "reported an error: /mnt/pypapo is not mounted" in str(err.value)
    assert "gcloud compute instances get-serial-port-output pypapo --zone us-central1-a" in str(err.value)


def test_create_gives_up_waiting_after_the_timeout(cloud: deploy.Cloud) -> None:
    s = settings(ready_timeout=30)
    engine_of(cloud).guest["pypapo"] = lambda: {}  # the guest never writes: 404 at every poll
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(PypapoError, match="did not report ready within 30s"):
        deploy.create(cloud, s, script=SCRIPT, progress=lambda _m: None, sleep=sleep, clock=lambda: now[0])


def test_destroy_lifts_deletion_protection_keeps_bucket_and_is_idempotent(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    clear(cloud)
    deploy.destroy(cloud, s, delete_bucket=False, progress=lambda _m: None)
    assert sent(cloud) == [
        "instances.set_deletion_protection",  # protection is lifted first, or the delete fails
        "instances.delete",
        "firewalls.delete",
        "firewalls.delete",
        "set_member",  # the VM account's binding leaves the kept bucket
        "delete_service_account",
    ]
    (protection,) = engine_of(cloud).requests("instances.set_deletion_protection")
    assert protection.deletion_protection is False
    assert engine_of(cloud).instances == {} and engine_of(cloud).firewalls == {}
    assert engine_of(cloud).disks == {}  # the boot disk went with the instance
    assert "acme-prod-pypapo" in cloud.storage.buckets
    assert s.service_account_email not in cloud.iam.accounts
    assert "serviceAccount:" + s.service_account_email not in cloud.storage.members["acme-prod-pypapo"].get(
        "roles/storage.objectViewer", set()
    )
    clear(cloud)
    messages: list[str] = []
    deploy.destroy(cloud, s, delete_bucket=False, progress=messages.append)
    assert sent(cloud) == []
    assert any(m.startswith("nothing to delete") for m in messages)


def test_destroy_with_delete_bucket_removes_it(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    deploy.destroy(cloud, s, delete_bucket=True, progress=lambda _m: None)
    assert cloud.storage.buckets == {}
    clear(cloud)
    deploy.destroy(cloud, s, delete_bucket=True, progress=lambda _m: None)
    assert sent(cloud) == []


def test_grant_reader_is_tunnel_access_on_this_instance_only(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    clear(cloud)
    assert deploy.grant(cloud, s, "alice@example.com", "reader", present=True, progress=lambda _m: None) == 2
    resource = "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"
    assert set(cloud.iam.tunnel_policies) == {resource}
    assert cloud.iam.get_tunnel_members(resource) == {
        "roles/iap.tunnelResourceAccessor": {"user:alice@example.com"}
    }
    assert iam_policy.members(engine_of(cloud).instance_policies["pypapo"]) == {
        "roles/compute.viewer": {"user:alice@example.com"}
    }
    # nothing on the bucket: readers go through the VM
    assert all(m != "set_member" for m, _ in cloud.storage.requests)
    assert (
        deploy.grant(cloud, s, "user:alice@example.com", "reader", present=True, progress=lambda _m: None)
        == 0
    )
    assert deploy.grant(cloud, s, "alice@example.com", "reader", present=False, progress=lambda _m: None) == 2
    assert cloud.iam.get_tunnel_members(resource) == {}


def test_grant_publisher_is_object_user_on_the_bucket(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    deploy.grant(
        cloud, s, "ci@acme-prod.iam.gserviceaccount.com", "publisher", present=True, progress=lambda _m: None
    )
    members = cloud.storage.members["acme-prod-pypapo"]
    assert members["roles/storage.objectUser"] == {"serviceAccount:ci@acme-prod.iam.gserviceaccount.com"}
    assert cloud.iam.tunnel_policies == {}
    deploy.grant(
        cloud,
        s,
        "serviceAccount:ci@acme-prod.iam.gserviceaccount.com",
        "publisher",
        present=False,
        progress=lambda _m: None,
    )
    assert cloud.storage.members["acme-prod-pypapo"]["roles/storage.objectUser"] == set()


def test_grant_rejects_a_member_that_is_not_a_principal(cloud: deploy.Cloud) -> None:
    with pytest.raises(PypapoError, match="user:EMAIL"):
        deploy.grant(cloud, settings(), "alice", "publisher", present=True, progress=lambda _m: None)


def test_status_reports_ready_and_drift(cloud: deploy.Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)
    run_create(cloud, s)
    report = deploy.status(cloud, s)
    assert report["in_sync"] and report["instance"]["appliance"] == "ready"
    engine_of(cloud).instances["pypapo"].deletion_protection = False
    report = deploy.status(cloud, s)
    assert not report["in_sync"]
    assert report["drift"][0]["changes"] == [
        {"field": "deletion_protection", "current": False, "desired": True}
    ]


def test_cli_create_destroy_confirmation(cloud: deploy.Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, progress=None: cloud))
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)
    monkeypatch.setattr(deploy.time, "sleep", lambda _s: None)
    args = ["--project", "acme-prod", "--zone", "us-central1-a"]
    runner = CliRunner()
    result = runner.invoke(main, ["create", *args])
    assert result.exit_code == 0, result.output
    assert "pypapo is up" in result.output
    result = runner.invoke(main, ["create", *args])
    assert "nothing to change" in result.output
    result = runner.invoke(main, ["plan", "--output", "json", *args])
    doc = json.loads(result.stdout)
    assert doc["mode"] == "live" and doc["changed"] is False
    assert {r["action"] for r in doc["resources"]} == {"none"}
    engine_of(cloud).instances["pypapo"].deletion_protection = False
    result = runner.invoke(main, ["status", *args])
    assert (
        "appliance ready" in result.stdout and "drift: instance us-central1-a/pypapo: update" in result.stdout
    )
    result = runner.invoke(main, ["plan", *args])
    assert "deletion_protection: false -> true" in result.stdout
    result = runner.invoke(main, ["destroy", *args], input="n\n")
    assert result.exit_code != 0 and "pypapo" in engine_of(cloud).instances  # declined: nothing deleted
    result = runner.invoke(main, ["destroy", "--yes", *args])
    assert result.exit_code == 0, result.output
    assert engine_of(cloud).instances == {}


def test_create_starts_a_stopped_appliance(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    engine_of(cloud).instances["pypapo"].status = "TERMINATED"
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == ["instances.start"]
    assert engine_of(cloud).instances["pypapo"].status == "RUNNING"


def test_every_plan_method_is_sent_by_a_bound_thin_layer_method(cloud: deploy.Cloud) -> None:
    senders = cloud.senders()
    assert set(senders) == set(planlib.Method)
    for method, send in senders.items():
        layer = method.value.split(".", 1)[0]
        owner = getattr(send, "__self__", cloud)  # lambdas go through Cloud.set_member
        assert owner in (cloud, getattr(cloud, "iam" if layer == "iam" else layer)), method


def test_a_failed_first_bake_stops_create_at_once_and_creates_no_appliance() -> None:
    cloud = empty_family_cloud()
    polls = iter([{}, {"error": "apt-get install: E: Unable to locate package gcsfuse"}])
    engine_of(cloud).new_guest = lambda _name: lambda: next(polls)  # the apt step of the bake fails
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(PypapoError) as err:
        deploy.create(
            cloud, settings(), script=SCRIPT, progress=lambda _m: None, sleep=sleep, clock=lambda: now[0]
        )
    assert "Unable to locate package gcsfuse" in str(err.value)
    assert now[0] <= 20  # two polls, not the 30-minute bake timeout
    # no appliance from an image that does not exist
    assert all(is_builder(r.instance_resource.name) for r in engine_of(cloud).requests("instances.insert"))
    assert engine_of(cloud).instances == {} and engine_of(cloud).images == {}  # the builder is gone, no image


def test_cli_create_no_wait_still_waits_for_the_first_bake_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The appliance boots from the family's first image, so --no-wait cannot skip the bake; it skips
    the wait for the appliance, and the last line does not claim it is up."""
    cloud = empty_family_cloud()
    engine = engine_of(cloud)
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, progress=None: cloud))
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)
    monkeypatch.setattr(deploy.time, "sleep", lambda _s: None)
    result = CliRunner().invoke(
        main, ["create", "--no-wait", "--project", "acme-prod", "--zone", "us-central1-a"]
    )
    assert result.exit_code == 0, result.output
    assert "this is waited for even with --no-wait" in result.stderr
    assert [i.family for i in engine.images.values()] == ["pypapo"] and "pypapo" in engine.instances
    assert appliance_polls(engine) == 0  # the appliance itself was not waited for
    assert "pypapo is starting (not waited for: `provision status` says when it is ready)" in result.stdout
    assert "pypapo is up" not in result.stdout
    help_text = CliRunner().invoke(main, ["create", "--help"]).output
    assert "first bake is still waited for" in " ".join(help_text.split())


BROKEN_CHANNEL = (
    "conda channel unavailable: conda/noarch/repodata.json is empty (0 bytes) "
    "(run `provision reindex` on the repository)"
)


def test_a_broken_conda_channel_is_a_warning_naming_the_file_never_a_failed_create(
    cloud: deploy.Cloud,
) -> None:
    """The appliance is ready (its mount and the index's root pages serve) but reports a broken channel
    document of the bucket: `create` finishes, and says what is broken and how to fix it."""
    engine_of(cloud).guest["pypapo"] = lambda: {"ready": "true", "status": "ready", "content": BROKEN_CHANNEL}
    messages: list[str] = []
    run_create(cloud, settings(), messages)
    warnings = [m for m in messages if "warning" in m]
    assert warnings == [f"  warning: the appliance on pypapo serves, but its {BROKEN_CHANNEL}"], messages
    # a healthy channel (or an appliance from before the report) is no warning
    engine_of(cloud).guest["pypapo"] = lambda: {"ready": "true", "content": "ok"}
    messages.clear()
    deploy.wait_ready(cloud, settings(), progress=messages.append, sleep=lambda _s: None)
    assert not [m for m in messages if "warning" in m], messages


def test_status_says_what_content_the_appliance_reports_broken(
    cloud: deploy.Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provision status` is where an admin looks later: the broken channel `create` warned about
    is there too (text and JSON), and gone once the appliance reports it healthy."""
    monkeypatch.setattr(deploy, "startup_script", lambda _s: SCRIPT)
    monkeypatch.setattr(deploy.Cloud, "connect", classmethod(lambda cls, s, progress=None: cloud))
    run_create(cloud, settings())
    engine_of(cloud).guest["pypapo"] = lambda: {"ready": "true", "status": "ready", "content": BROKEN_CHANNEL}
    args = ["status", "--project", "acme-prod", "--zone", "us-central1-a"]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert f"warning: the appliance on pypapo serves, but its {BROKEN_CHANNEL}" in text.stdout
    doc = json.loads(CliRunner().invoke(main, [*args, "--output", "json"]).stdout)
    assert doc["instance"]["content_warning"] == BROKEN_CHANNEL
    engine_of(cloud).guest["pypapo"] = lambda: {"ready": "true", "status": "ready", "content": "ok"}
    assert "warning" not in CliRunner().invoke(main, args).stdout
    assert deploy.status(cloud, settings())["instance"]["content_warning"] is None

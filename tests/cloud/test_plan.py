"""The desired state as real client-library request objects, and `provision plan` (offline, JSON)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from google.cloud import compute_v1, storage

from provisioner.appliance import render
from provisioner.cli import main
from provisioner.cloud import grants, names
from provisioner.cloud import plan as planlib
from provisioner.cloud.settings import Settings

S = Settings(project="acme-prod", zone="europe-west1-b", port=4040)
SCRIPT = "#!/bin/bash\necho serve\n"


def _instance() -> compute_v1.Instance:
    return planlib.desired_instance(S, image=names.fallback_image(), startup_script=SCRIPT)


def test_instance_is_shielded_private_and_locked_down() -> None:
    req = planlib.insert_instance_request(S, _instance())
    assert isinstance(req, compute_v1.InsertInstanceRequest)
    assert (req.project, req.zone) == ("acme-prod", "europe-west1-b")
    inst = req.instance_resource
    assert inst.shielded_instance_config == compute_v1.ShieldedInstanceConfig(
        enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
    )
    assert inst.can_ip_forward is False and "can_ip_forward" in inst  # set explicitly, not defaulted
    assert inst.deletion_protection is True
    (nic,) = inst.network_interfaces
    assert list(nic.access_configs) == [] and list(nic.ipv6_access_configs) == []  # no external IP
    assert nic.subnetwork == "projects/acme-prod/regions/europe-west1/subnetworks/default"
    meta = {i.key: i.value for i in inst.metadata.items}
    assert meta == {
        "enable-oslogin": "TRUE",
        "block-project-ssh-keys": "TRUE",
        "serial-port-enable": "FALSE",
        "enable-guest-attributes": "TRUE",
        "startup-script": SCRIPT,
    }
    (sa,) = inst.service_accounts
    assert sa.email == "pypapo-vm@acme-prod.iam.gserviceaccount.com"
    assert list(sa.scopes) == ["https://www.googleapis.com/auth/cloud-platform"]
    assert inst.labels == {"app": "pypapo", "pypapo-instance": "pypapo"}
    (disk,) = inst.disks
    assert disk.boot and disk.auto_delete
    assert disk.initialize_params.source_image == "projects/debian-cloud/global/images/family/debian-12"
    assert inst.scheduling.automatic_restart and not inst.scheduling.preemptible
    assert inst.machine_type == "zones/europe-west1-b/machineTypes/e2-small"


def test_firewall_admits_only_iap_on_ssh_and_the_port_for_the_vm_account() -> None:
    fw = planlib.desired_firewall(S)
    assert fw.direction == "INGRESS"
    assert list(fw.source_ranges) == ["35.235.240.0/20"]
    assert [(a.I_p_protocol, list(a.ports)) for a in fw.allowed] == [("tcp", ["22", "4040"])]
    assert list(fw.target_service_accounts) == ["pypapo-vm@acme-prod.iam.gserviceaccount.com"]
    assert list(fw.target_tags) == [] and list(fw.source_tags) == []
    assert fw.network == "projects/acme-prod/global/networks/default"


def test_private_google_access_request() -> None:
    req = planlib.private_google_access_request(S)
    assert isinstance(req, compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest)
    assert (req.project, req.region, req.subnetwork) == ("acme-prod", "europe-west1", "default")
    assert req.subnetworks_set_private_ip_google_access_request_resource.private_ip_google_access is True


def test_bucket_properties() -> None:
    bucket = planlib.desired_bucket(S)
    assert isinstance(bucket, storage.Bucket)
    assert bucket.iam_configuration.uniform_bucket_level_access_enabled is True
    assert bucket.iam_configuration.public_access_prevention == "enforced"
    assert bucket.versioning_enabled is True
    assert bucket.soft_delete_policy.retention_duration_seconds == 7 * 24 * 3600
    assert bucket.location == "EUROPE-WEST1"
    assert bucket.name == "acme-prod-pypapo"


def test_service_account_request_and_bucket_binding() -> None:
    req = planlib.service_account_request(S)
    assert (req.name, req.account_id) == ("projects/acme-prod", "pypapo-vm")
    plan = planlib.plan_create(S, None, startup_script=SCRIPT)
    binding = next(r for r in plan.resources if r.kind == "bucket_iam_binding").spec
    assert (binding.resource_type, binding.resource, binding.role, binding.member) == (
        "bucket",
        "acme-prod-pypapo",
        "roles/storage.objectViewer",
        "serviceAccount:pypapo-vm@acme-prod.iam.gserviceaccount.com",
    )


def test_grant_roles_and_resources() -> None:
    reader = grants.grant_changes(S, "alice@example.com", "reader")
    assert [(c.resource_type, c.resource, c.role, c.member) for c in reader] == [
        (
            "iap_tunnel_instance",
            "projects/acme-prod/iap_tunnel/zones/europe-west1-b/instances/pypapo",
            "roles/iap.tunnelResourceAccessor",
            "user:alice@example.com",
        ),
        ("instance", "europe-west1-b/pypapo", "roles/compute.viewer", "user:alice@example.com"),
    ]
    (pub,) = grants.grant_changes(S, "ci@p.iam.gserviceaccount.com", "publisher")
    assert (pub.resource_type, pub.role, pub.member) == (
        "bucket",
        "roles/storage.objectUser",
        "serviceAccount:ci@p.iam.gserviceaccount.com",
    )


def test_guest_attributes_request_and_values() -> None:
    items = [
        compute_v1.GuestAttributesEntry(namespace="pypapo", key="ready", value="true"),
        compute_v1.GuestAttributesEntry(namespace="other", key="ready", value="false"),
    ]
    attrs = compute_v1.GuestAttributes(query_value=compute_v1.GuestAttributesValue(items=items))
    assert planlib.guest_values(attrs) == {"ready": "true"}
    assert planlib.guest_values(None) == {}
    req = planlib.guest_attributes_request(S)
    assert (req.instance, req.query_path) == ("pypapo", "pypapo/")


def test_drift_on_existing_instance_builds_fingerprinted_requests() -> None:
    current = _instance()
    current.metadata.fingerprint = "abc"
    current.metadata.items = planlib.metadata_items(
        {**planlib.desired_metadata(SCRIPT), "serial-port-enable": "TRUE"}
    )
    actual = planlib.Actual(
        instance=current,
        subnetwork=compute_v1.Subnetwork(private_ip_google_access=True),
        firewall=planlib.desired_firewall(S),
    )
    plan = planlib.plan_create(S, actual, startup_script=SCRIPT)
    inst = next(r for r in plan.resources if r.kind == "instance")
    assert inst.action == "update"
    assert inst.changes == [{"field": "metadata.serial-port-enable", "current": "TRUE", "desired": "FALSE"}]
    (step,) = inst.steps
    assert isinstance(step.request, compute_v1.SetMetadataInstanceRequest)
    assert step.request.metadata_resource.fingerprint == "abc"  # lost updates are refused by the API


def test_every_drift_at_once_is_one_ordered_plan_with_one_stop_and_start() -> None:
    """The drift checks run in a fixed order; the changes a stopped VM needs share one stop/start."""
    current = _instance()
    current.status = "RUNNING"
    current.deletion_protection = False
    current.labels = {"team": "infra"}
    current.network_interfaces[0].name = "nic0"
    current.network_interfaces[0].access_configs = [compute_v1.AccessConfig(name="External NAT")]
    current.shielded_instance_config.enable_vtpm = False
    current.service_accounts = [compute_v1.ServiceAccount(email="other@acme-prod.iam.gserviceaccount.com")]
    current.machine_type = (
        "https://www.googleapis.com/compute/v1/projects/acme-prod/zones/europe-west1-b/machineTypes/e2-micro"
    )
    current.can_ip_forward = True
    actual = planlib.Actual(instance=current, subnetwork=compute_v1.Subnetwork(private_ip_google_access=True))
    inst = next(
        r
        for r in planlib.plan_create(S, actual, startup_script="#!/bin/bash\n").resources
        if r.kind == "instance"
    )
    assert [c["field"] for c in inst.changes] == [
        "metadata.startup-script",
        "labels",
        "deletion_protection",
        "network_interfaces.nic0.access_configs",
        "shielded_instance_config",
        "service_accounts",
        "machine_type",
    ]
    M = planlib.Method
    assert [st.method for st in inst.steps] == [
        M.SET_METADATA,
        M.SET_LABELS,
        M.SET_DELETION_PROTECTION,
        M.DELETE_ACCESS_CONFIG,
        M.STOP_INSTANCE,
        M.UPDATE_SHIELDED_INSTANCE_CONFIG,
        M.SET_SERVICE_ACCOUNT,
        M.SET_MACHINE_TYPE,
        M.START_INSTANCE,
    ]
    assert inst.notes == [
        "can_ip_forward is on and cannot be changed in place: `provision destroy` then `provision create`",
        "these changes need a stopped VM: it is stopped, changed and started again",
    ]
    # a stopped VM is only started: no stop, and its status is a change of its own
    current = _instance()
    current.status = "TERMINATED"
    actual.instance = current
    inst = next(
        r for r in planlib.plan_create(S, actual, startup_script=SCRIPT).resources if r.kind == "instance"
    )
    assert inst.changes == [{"field": "status", "current": "TERMINATED", "desired": "RUNNING"}]
    assert [st.method for st in inst.steps] == [M.START_INSTANCE]


def test_cli_offline_json_plan_shows_every_item() -> None:
    result = CliRunner().invoke(
        main,
        ["plan", "--offline", "--output", "json", "--project", "acme-prod", "--zone", "us-central1-a"],
        env={},
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema_version"] == planlib.SCHEMA_VERSION and doc["mode"] == "offline"
    assert list(doc) == sorted(doc)  # a stable, sorted document
    by_kind = {r["kind"]: r for r in doc["resources"]}
    assert [r["kind"] for r in doc["resources"]] == [
        "bucket",
        "service_account",
        "bucket_iam_binding",
        "subnetwork",
        "firewall",
        "firewall",
        "image",  # baked first: the appliance has no egress, so it boots the baked image
        "instance",
    ]
    firewalls = {r["name"]: r["spec"] for r in doc["resources"] if r["kind"] == "firewall"}
    deny = firewalls["pypapo-deny-port"]
    assert deny["denied"] == [{"IPProtocol": "tcp", "ports": ["3333"]}] and deny["sourceRanges"] == [
        "0.0.0.0/0"
    ]
    assert firewalls["pypapo-allow-iap"]["priority"] < deny["priority"] < 65534
    bucket = by_kind["bucket"]["spec"]
    assert bucket["iamConfiguration"] == {
        "publicAccessPrevention": "enforced",
        "uniformBucketLevelAccess": {"enabled": True},
    }
    assert (
        bucket["versioning"] == {"enabled": True}
        and bucket["softDeletePolicy"]["retentionDurationSeconds"] > 0
    )
    assert by_kind["bucket_iam_binding"]["spec"]["role"] == "roles/storage.objectViewer"
    assert by_kind["service_account"]["spec"]["accountId"] == "pypapo-vm"
    assert by_kind["subnetwork"]["steps"][0]["request"][
        "subnetworksSetPrivateIpGoogleAccessRequestResource"
    ] == {"privateIpGoogleAccess": True}
    fw = firewalls["pypapo-allow-iap"]
    assert fw["sourceRanges"] == ["35.235.240.0/20"]
    assert fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["22", "3333"]}]
    assert fw["targetServiceAccounts"] == ["pypapo-vm@acme-prod.iam.gserviceaccount.com"]
    inst = by_kind["instance"]["spec"]
    assert inst["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    assert inst["canIpForward"] is False and inst["deletionProtection"] is True
    assert "accessConfigs" not in inst["networkInterfaces"][0]
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert meta["enable-oslogin"] == "TRUE" and meta["block-project-ssh-keys"] == "TRUE"
    assert meta["serial-port-enable"] == "FALSE"
    expected_script = render.render_startup_script(
        render.ApplianceConfig(bucket="acme-prod-pypapo", port=3333, allowed_sources=("35.235.240.0/20",))
    )
    assert meta["startup-script"] == expected_script
    assert inst["labels"] == {"app": "pypapo", "pypapo-instance": "pypapo"}
    assert inst["serviceAccounts"][0]["email"] == "pypapo-vm@acme-prod.iam.gserviceaccount.com"
    assert (
        inst["disks"][0]["initializeParams"]["sourceImage"]
        == "projects/acme-prod/global/images/family/pypapo"
    )
    image = by_kind["image"]
    assert image["action"] == "create" and image["spec"]["pipeline"] == "provision image build"
    assert "debian-cloud/global/images/family/debian-12" in image["spec"]["builder"]
    assert any("skipped when the family already has an image" in n for n in image["notes"])
    # the same input gives the same document, byte for byte
    again = CliRunner().invoke(
        main,
        ["plan", "--offline", "--output", "json", "--project", "acme-prod", "--zone", "us-central1-a"],
        env={},
    )
    assert again.output == result.output


def test_cli_offline_plan_needs_no_credentials(monkeypatch, tmp_path) -> None:
    # No ADC anywhere: an online call would fail with "no credentials"; offline must not try.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    result = CliRunner().invoke(
        main, ["plan", "--offline", "--project", "acme-prod", "--zone", "us-central1-a"]
    )
    assert result.exit_code == 0, result.output
    assert "35.235.240.0/20" in result.output and "(7 create, 1 update)" in result.output


def test_cli_plan_rejects_bad_settings_before_any_call() -> None:
    result = CliRunner().invoke(
        main, ["plan", "--offline", "--project", "acme-prod", "--zone", "us-central1"]
    )
    assert result.exit_code != 0
    assert "--zone 'us-central1' is not a zone name" in result.output


def test_live_plan_bakes_an_empty_family_before_the_appliance_and_never_after() -> None:
    sub = compute_v1.Subnetwork(name="default", private_ip_google_access=True)
    empty = planlib.plan_create(S, planlib.Actual(subnetwork=sub), startup_script=SCRIPT)
    kinds = [r.kind for r in empty.resources]
    assert kinds.index(planlib.Kind.IMAGE) == kinds.index(planlib.Kind.INSTANCE) - 1
    inst = empty.resources[-1]
    assert inst.spec.disks[0].initialize_params.source_image == names.family_image(S.project, "pypapo")
    assert "boots the image baked just before it" in inst.notes[0]
    family = planlib.Actual(subnetwork=sub, image_family_exists=True)
    baked = planlib.plan_create(S, family, startup_script=SCRIPT)
    assert planlib.Kind.IMAGE not in [r.kind for r in baked.resources]
    # an appliance that already runs (say, from before) is not a reason to bake in `create`
    before = planlib.Actual(subnetwork=sub, instance=_instance())
    running = planlib.plan_create(S, before, startup_script=SCRIPT)
    assert planlib.Kind.IMAGE not in [r.kind for r in running.resources]

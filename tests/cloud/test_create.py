"""`provision create/destroy/status/grant` over a double of the thin layer (Compute has no emulator).

The double replaces only `provisioner/gcp/{compute,storage_admin,iam}.py`: it records every request
object it is sent and keeps state in real compute_v1 / iam / storage objects, applying each request the
way the API does (fingerprints, deletion protection, stopped-VM-only changes). Everything above it,
planning, reconciliation, ordering, waiting and the commands, runs for real.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from google.api_core import exceptions as gexc
from google.cloud import compute_v1, iam_admin_v1, storage
from google.iam.v1 import policy_pb2

from provisioner.cli import main
from provisioner.cloud import apply as deploy
from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp import policy as iam_policy
from provisioner.cloud.gcp.base import translate_error
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.cloud.test_image_double import ComputeDouble, bake_done

SCRIPT = "#!/bin/bash\necho pypapo startup\n"
_fp = itertools.count(1)


def _api_error(exc: Exception, action: str) -> PypapoError:
    # The real thin layer translates every API error the same way.
    return translate_error(exc, action, project="acme-prod")


class FakeCompute:
    """Compute Engine as the thin layer sees it, state in real compute_v1 objects."""

    def __init__(self, project: str, log: list[tuple[str, Any]], *, ready_after: int = 2) -> None:
        self.project = project
        self.log = log
        self.requests: list[tuple[str, Any]] = []
        self.instances: dict[str, compute_v1.Instance] = {}
        self.firewalls: dict[str, compute_v1.Firewall] = {}
        self.subnetworks = {
            ("us-central1", "default"): compute_v1.Subnetwork(
                name="default",
                region="us-central1",
                private_ip_google_access=False,
                ip_cidr_range="10.128.0.0/20",
            )
        }
        self.families: dict[tuple[str, str], compute_v1.Image] = {}
        self.policies: dict[str, compute_v1.Policy] = {}
        self.ready_after = ready_after
        self.polls = 0
        self.fail: dict[str, Exception] = {}

    def _record(self, method: str, request: Any) -> None:
        self.requests.append((method, copy.deepcopy(request)))
        self.log.append((method, self.requests[-1][1]))
        if method in self.fail:
            raise _api_error(self.fail.pop(method), method)

    # reads
    def get_instance(self, zone: str, name: str) -> compute_v1.Instance | None:
        inst = self.instances.get(name)
        return copy.deepcopy(inst) if inst is not None else None

    def get_firewall(self, name: str) -> compute_v1.Firewall | None:
        fw = self.firewalls.get(name)
        return copy.deepcopy(fw) if fw is not None else None

    def get_subnetwork(self, region: str, name: str) -> compute_v1.Subnetwork | None:
        sub = self.subnetworks.get((region, name))
        return copy.deepcopy(sub) if sub is not None else None

    def get_image_from_family(self, project: str, family: str) -> compute_v1.Image | None:
        return self.families.get((project, family))

    def get_guest_attributes(self, request: compute_v1.GetGuestAttributesInstanceRequest):
        assert request.query_path == "pypapo/"
        if request.instance not in self.instances:
            return None
        self.polls += 1
        if self.polls <= self.ready_after:
            return None  # the API answers 404 until the guest writes its first attribute
        entry = compute_v1.GuestAttributesEntry(namespace="pypapo", key="ready", value="true")
        return compute_v1.GuestAttributes(
            query_path="pypapo/", query_value=compute_v1.GuestAttributesValue(items=[entry])
        )

    def get_instance_iam_policy(self, zone: str, name: str) -> compute_v1.Policy:
        return copy.deepcopy(self.policies.get(name, compute_v1.Policy(etag="e0", version=3)))

    # writes
    def insert_instance(self, request: compute_v1.InsertInstanceRequest) -> None:
        self._record("insert_instance", request)
        inst = copy.deepcopy(request.instance_resource)
        source = inst.disks[0].initialize_params.source_image
        project, _, family = source.removeprefix("projects/").partition("/global/images/family/")
        if project != "debian-cloud" and (project, family) not in self.families:
            # the API refuses a boot disk from an empty family
            raise _api_error(gexc.NotFound(f"The resource '{source}' was not found"), "create instance")
        if inst.name in self.instances:
            raise _api_error(
                gexc.Conflict(
                    f"The resource 'projects/{request.project}/zones/{request.zone}/instances/{inst.name}'"
                    " already exists"
                ),
                "create instance",
            )
        inst.status = "RUNNING"
        inst.metadata.fingerprint = f"fp{next(_fp)}"
        inst.label_fingerprint = f"lf{next(_fp)}"
        inst.network_interfaces[0].name = "nic0"
        inst.network_interfaces[0].network_i_p = "10.128.0.2"
        inst.disks[0].source = f"projects/{request.project}/zones/{request.zone}/disks/{inst.name}"
        self.instances[inst.name] = inst

    def _instance(self, request: Any) -> compute_v1.Instance:
        inst = self.instances.get(request.instance)
        if inst is None:
            raise _api_error(
                gexc.NotFound(
                    f"The resource 'projects/{request.project}/zones/{request.zone}/instances/"
                    f"{request.instance}' was not found"
                ),
                "read instance",
            )
        return inst

    def _stopped(self, inst: compute_v1.Instance, what: str) -> None:
        if inst.status != "TERMINATED":
            raise _api_error(gexc.BadRequest(f"The instance must be stopped to change {what}."), what)

    def delete_instance(self, request: compute_v1.DeleteInstanceRequest) -> None:
        self._record("delete_instance", request)
        inst = self._instance(request)
        if inst.deletion_protection:
            raise _api_error(
                gexc.BadRequest(
                    "Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'"
                ),
                "delete instance",
            )
        del self.instances[request.instance]

    def set_deletion_protection(self, request: compute_v1.SetDeletionProtectionInstanceRequest) -> None:
        self._record("set_deletion_protection", request)
        self.instances[request.resource].deletion_protection = request.deletion_protection

    def set_metadata(self, request: compute_v1.SetMetadataInstanceRequest) -> None:
        self._record("set_metadata", request)
        inst = self._instance(request)
        if request.metadata_resource.fingerprint != inst.metadata.fingerprint:
            raise _api_error(
                gexc.PreconditionFailed("Supplied fingerprint does not match current metadata fingerprint."),
                "set metadata",
            )
        inst.metadata = compute_v1.Metadata(
            items=list(request.metadata_resource.items), fingerprint=f"fp{next(_fp)}"
        )

    def set_labels(self, request: compute_v1.SetLabelsInstanceRequest) -> None:
        self._record("set_labels", request)
        inst = self._instance(request)
        body = request.instances_set_labels_request_resource
        assert body.label_fingerprint == inst.label_fingerprint
        inst.labels = dict(body.labels)
        inst.label_fingerprint = f"lf{next(_fp)}"

    def delete_access_config(self, request: compute_v1.DeleteAccessConfigInstanceRequest) -> None:
        self._record("delete_access_config", request)
        for nic in self._instance(request).network_interfaces:
            if nic.name == request.network_interface:
                nic.access_configs = [a for a in nic.access_configs if a.name != request.access_config]

    def update_shielded_instance_config(
        self, request: compute_v1.UpdateShieldedInstanceConfigInstanceRequest
    ) -> None:
        self._record("update_shielded_instance_config", request)
        inst = self._instance(request)
        self._stopped(inst, "Shielded VM options")
        inst.shielded_instance_config = request.shielded_instance_config_resource

    def set_service_account(self, request: compute_v1.SetServiceAccountInstanceRequest) -> None:
        self._record("set_service_account", request)
        inst = self._instance(request)
        self._stopped(inst, "the service account")
        body = request.instances_set_service_account_request_resource
        inst.service_accounts = [compute_v1.ServiceAccount(email=body.email, scopes=list(body.scopes))]

    def set_machine_type(self, request: compute_v1.SetMachineTypeInstanceRequest) -> None:
        self._record("set_machine_type", request)
        inst = self._instance(request)
        self._stopped(inst, "the machine type")
        inst.machine_type = request.instances_set_machine_type_request_resource.machine_type

    def stop_instance(self, request: compute_v1.StopInstanceRequest) -> None:
        self._record("stop_instance", request)
        self._instance(request).status = "TERMINATED"

    def start_instance(self, request: compute_v1.StartInstanceRequest) -> None:
        self._record("start_instance", request)
        self._instance(request).status = "RUNNING"

    def set_instance_member(
        self, zone: str, name: str, role: str, member: str, *, present: bool = True
    ) -> bool:
        policy = self.get_instance_iam_policy(zone, name)
        if not iam_policy.with_member(policy, role, member, present=present):
            return False
        request = compute_v1.SetIamPolicyInstanceRequest(
            project=self.project,
            zone=zone,
            resource=name,
            zone_set_policy_request_resource=compute_v1.ZoneSetPolicyRequest(policy=policy),
        )
        self._record("set_instance_iam_policy", request)
        self.policies[name] = policy
        return True

    def insert_firewall(self, request: compute_v1.InsertFirewallRequest) -> None:
        self._record("insert_firewall", request)
        fw = copy.deepcopy(request.firewall_resource)
        fw.network = f"https://www.googleapis.com/compute/v1/{fw.network}"  # the API returns full URLs
        self.firewalls[fw.name] = fw

    def update_firewall(self, request: compute_v1.UpdateFirewallRequest) -> None:
        self._record("update_firewall", request)
        fw = copy.deepcopy(request.firewall_resource)
        fw.network = f"https://www.googleapis.com/compute/v1/{fw.network}"
        self.firewalls[request.firewall] = fw

    def delete_firewall(self, request: compute_v1.DeleteFirewallRequest) -> None:
        self._record("delete_firewall", request)
        del self.firewalls[request.firewall]

    def set_private_google_access(
        self, request: compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest
    ) -> None:
        self._record("set_private_google_access", request)
        sub = self.subnetworks[(request.region, request.subnetwork)]
        sub.private_ip_google_access = (
            request.subnetworks_set_private_ip_google_access_request_resource.private_ip_google_access
        )


class FakeStorage:
    """The bucket-admin thin layer; buckets are real storage.Bucket objects with their JSON resource."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.requests: list[tuple[str, Any]] = []
        self.buckets: dict[str, storage.Bucket] = {}
        self.members: dict[str, dict[str, set[str]]] = {}
        self.indexed: set[str] = set()

    def _record(self, entry: tuple[str, Any]) -> None:
        self.requests.append(entry)
        self.log.append(entry)

    def get_bucket(self, name: str) -> storage.Bucket | None:
        b = self.buckets.get(name)
        if b is None:
            return None
        copy_ = storage.Bucket(client=None, name=name)
        copy_._set_properties(copy.deepcopy(b._properties))
        return copy_

    def create_bucket(self, desired: storage.Bucket) -> None:
        self._record(("create_bucket", planlib.bucket_properties(desired)))
        b = storage.Bucket(client=None, name=desired.name)
        b._set_properties({**copy.deepcopy(desired._properties), "id": desired.name, "metageneration": "1"})
        self.buckets[desired.name] = b
        self.members[desired.name] = {"roles/storage.legacyBucketOwner": {"projectOwner:acme-prod"}}

    def patch_bucket(self, desired: storage.Bucket) -> None:
        self._record(("patch_bucket", planlib.bucket_properties(desired)))
        props = self.buckets[desired.name]._properties
        for key in ("iamConfiguration", "versioning", "softDeletePolicy", "lifecycle"):
            props[key] = copy.deepcopy(desired._properties[key])
        props["labels"] = {**props.get("labels", {}), **desired.labels}

    def get_members(self, name: str) -> dict[str, set[str]]:
        return copy.deepcopy(self.members[name])

    def open_repository(self, url: str) -> Any:
        """The engine's `Repository.open(url)`, as far as `create` uses it: `initialize()`."""
        storage = self

        class Repository:
            def initialize(self) -> bool:
                if url in storage.indexed:
                    return False
                storage._record(("initialize_index", url))
                storage.indexed.add(url)
                return True

        return Repository()

    def set_member(self, name: str, role: str, member: str, *, present: bool = True) -> bool:
        members = self.members[name].setdefault(role, set())
        if (member in members) == present:
            return False
        self._record(("set_member", (name, role, member, present)))
        (members.add if present else members.discard)(member)
        return True

    def delete_bucket(self, name: str) -> None:
        self._record(("delete_bucket", name))
        del self.buckets[name]


class FakeIam:
    """Service accounts and IAP tunnel policies (real iam_admin_v1 / google.iam.v1 objects)."""

    def __init__(self, project: str, log: list[tuple[str, Any]]) -> None:
        self.project = project
        self.log = log
        self.requests: list[tuple[str, Any]] = []
        self.accounts: dict[str, iam_admin_v1.ServiceAccount] = {}
        self.keys: dict[str, list[iam_admin_v1.ServiceAccountKey]] = {}
        self.tunnel_policies: dict[str, policy_pb2.Policy] = {}

    def _record(self, entry: tuple[str, Any]) -> None:
        self.requests.append(entry)
        self.log.append(entry)

    def get_project(self) -> None:
        return None

    def get_service_account(self, email: str) -> iam_admin_v1.ServiceAccount | None:
        return self.accounts.get(email)

    def list_user_keys(self, email: str) -> list[iam_admin_v1.ServiceAccountKey]:
        return list(self.keys.get(email, []))

    def create_service_account(self, request: iam_admin_v1.CreateServiceAccountRequest) -> None:
        self._record(("create_service_account", request))
        email = f"{request.account_id}@{self.project}.iam.gserviceaccount.com"
        self.accounts[email] = iam_admin_v1.ServiceAccount(
            name=f"projects/{self.project}/serviceAccounts/{email}",
            email=email,
            display_name=request.service_account.display_name,
        )

    def delete_service_account_key(self, request: iam_admin_v1.DeleteServiceAccountKeyRequest) -> None:
        self._record(("delete_service_account_key", request))
        for email, keys in self.keys.items():
            self.keys[email] = [k for k in keys if k.name != request.name]

    def delete_service_account(self, request: iam_admin_v1.DeleteServiceAccountRequest) -> None:
        self._record(("delete_service_account", request))
        del self.accounts[request.name.rsplit("/", 1)[-1]]

    def get_tunnel_members(self, resource: str) -> dict[str, set[str]]:
        return iam_policy.members(self.tunnel_policies.get(resource, policy_pb2.Policy()))

    def set_tunnel_member(self, resource: str, role: str, member: str, *, present: bool = True) -> bool:
        policy = policy_pb2.Policy()
        policy.CopyFrom(self.tunnel_policies.get(resource, policy_pb2.Policy()))
        if not iam_policy.with_member(policy, role, member, present=present):
            return False
        self._record(("set_tunnel_iam_policy", (resource, policy)))
        self.tunnel_policies[resource] = policy
        return True


def settings(**overrides: Any) -> Settings:
    return Settings(project="acme-prod", zone="us-central1-a", **overrides)


class Builders(dict):
    """The guest of every builder VM (`make()` per builder): by default the bake finishes on its
    second poll."""

    def __init__(self, make: Callable[[], Callable[[], dict[str, str]]] = bake_done) -> None:
        super().__init__()
        self.make = make

    def get(self, name: str, default: Any = None) -> Any:
        if name.startswith("pypapo-builder") and name not in self:
            self[name] = self.make()
        return super().get(name, default)


class LinkedImages(ComputeDouble):
    """The image pipeline's double over the same project as FakeCompute: an image it creates is what
    the family then resolves to, and its calls join the shared log (`image.` + method)."""

    def __init__(self, compute: FakeCompute, log: list[tuple[str, Any]]) -> None:
        super().__init__(project="acme-prod", zone="us-central1-a")
        self.compute, self.log = compute, log
        self.guest = Builders()

    def _call(self, name: str, request: Any = None) -> None:
        self.log.append((f"image.{name}", request))
        super()._call(name, request)

    def insert_image(self, request: compute_v1.InsertImageRequest) -> None:
        super().insert_image(request)
        image = self.images[request.image_resource.name]
        self.compute.families[(request.project, image.family)] = image


def empty_family_cloud() -> deploy.Cloud:
    log: list[tuple[str, Any]] = []
    storage = FakeStorage(log)
    compute = FakeCompute("acme-prod", log)
    c = deploy.Cloud(compute, storage, FakeIam("acme-prod", log), storage.open_repository)
    c.images = LinkedImages(compute, log)
    c.log = log  # type: ignore[attr-defined]  # every request in the order it was sent
    return c


@pytest.fixture
def cloud() -> deploy.Cloud:
    """A project whose image family already has an image (the bake of an empty one: `empty_family_cloud`)."""
    c = empty_family_cloud()
    c.compute.families[("acme-prod", "pypapo")] = compute_v1.Image(name="pypapo-20261125", family="pypapo")
    return c


def sent(cloud: deploy.Cloud) -> list[str]:
    return [m for m, _ in cloud.log]  # type: ignore[attr-defined]


def clear(cloud: deploy.Cloud) -> None:
    for part in (cloud.storage, cloud.iam, cloud.compute):
        part.requests.clear()
    cloud.log.clear()  # type: ignore[attr-defined]


BAKE = ["image.insert_instance", "image.stop_instance", "image.insert_image"]


def run_create(cloud: deploy.Cloud, s: Settings, messages: list[str] | None = None) -> planlib.Plan:
    out = messages if messages is not None else []
    return deploy.create(cloud, s, script=SCRIPT, progress=out.append, sleep=lambda _s: None)


def test_create_from_nothing_bakes_the_image_then_sends_every_resource_once_hardened() -> None:
    cloud = empty_family_cloud()
    s = settings()
    messages: list[str] = []
    run_create(cloud, s, messages)

    image_calls = [m for m in sent(cloud) if m.startswith("image.")]
    assert [m for m in sent(cloud) if not m.startswith("image.") or m in BAKE] == [
        "create_bucket",
        "create_service_account",
        "set_member",
        "set_private_google_access",
        "insert_firewall",  # IAP to SSH and the serving port
        "insert_firewall",  # the serving port denied to everyone else
        *BAKE,  # the family is empty: `image build` first, its builder has the only egress
        "insert_instance",  # the appliance, from the image just baked
        "initialize_index",  # a fresh bucket serves an empty index, not a 503
    ]
    builder = cloud.images.requests("insert_instance")[0].instance_resource
    assert (
        builder.name.startswith("pypapo-builder") and len(builder.network_interfaces[0].access_configs) == 1
    )
    assert not cloud.images.instances and not cloud.images.disks  # the builder and its disk are gone
    assert "image.delete_instance" in image_calls
    assert any(
        m.startswith("baking the first image of projects/acme-prod/global/images/family/pypapo")
        for m in messages
    )
    assert any("waiting for the bake" in m for m in messages)
    allow, deny = (r.firewall_resource for m, r in cloud.compute.requests if m == "insert_firewall")
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
    _method, req = cloud.compute.requests[-1]
    assert isinstance(req, compute_v1.InsertInstanceRequest)
    inst = req.instance_resource
    assert inst.service_accounts[0].email == "pypapo-vm@acme-prod.iam.gserviceaccount.com"
    assert "compute@developer" not in inst.service_accounts[0].email
    assert list(inst.network_interfaces[0].access_configs) == []
    # the appliance boots the new image, never plain Debian (it has no egress to install anything)
    assert inst.disks[0].initialize_params.source_image == "projects/acme-prod/global/images/family/pypapo"
    assert [i.family for i in cloud.images.images.values()] == ["pypapo"]
    # a second create bakes nothing
    clear(cloud)
    cloud.images.calls.clear()
    run_create(cloud, s)
    assert sent(cloud) == []
    assert any("the appliance on pypapo is ready" in m for m in messages)
    assert cloud.compute.polls > cloud.compute.ready_after  # it waited for pypapo/ready


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
    cloud.compute.families[("acme-prod", "pypapo")] = compute_v1.Image(
        name="pypapo-20261125", family="pypapo"
    )
    run_create(cloud, settings())
    inst = cloud.compute.requests[-1][1].instance_resource
    assert inst.disks[0].initialize_params.source_image == "projects/acme-prod/global/images/family/pypapo"


def test_partial_failure_converges_without_recreating(cloud: deploy.Cloud) -> None:
    s = settings()
    cloud.compute.fail["insert_firewall"] = gexc.Forbidden(
        "Quota 'FIREWALLS' exceeded.  Limit: 100.0 globally.",
        errors=[
            {"reason": "quotaExceeded", "message": "Quota 'FIREWALLS' exceeded.  Limit: 100.0 globally."}
        ],
    )
    with pytest.raises(PypapoError, match="quota exceeded"):
        run_create(cloud, s)
    assert "insert_instance" not in sent(cloud)
    clear(cloud)
    run_create(cloud, s)
    # bucket, account and subnet were done: only what failed and what came after is sent
    assert sent(cloud) == ["insert_firewall", "insert_firewall", "insert_instance", "initialize_index"]
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == []


def test_create_reconciles_hardening_drift_in_place(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    inst = cloud.compute.instances["pypapo"]
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
    cloud.compute.firewalls[s.firewall_name].source_ranges = ["0.0.0.0/0"]
    cloud.compute.firewalls[s.deny_firewall_name].priority = 65535  # ranked below default-allow-internal
    cloud.compute.subnetworks[("us-central1", "default")].private_ip_google_access = False
    clear(cloud)

    run_create(cloud, s)

    assert "insert_instance" not in sent(cloud) and "insert_firewall" not in sent(cloud)
    assert sent(cloud) == [
        "set_private_google_access",
        "update_firewall",
        "update_firewall",
        "set_metadata",
        "set_labels",
        "set_deletion_protection",
        "delete_access_config",
        "stop_instance",
        "update_shielded_instance_config",
        "start_instance",
    ]
    inst = cloud.compute.instances["pypapo"]
    meta = {i.key: i.value for i in inst.metadata.items}
    assert meta["serial-port-enable"] == "FALSE" and meta["enable-oslogin"] == "TRUE"
    assert "ssh-keys" not in meta
    assert inst.deletion_protection and not list(inst.network_interfaces[0].access_configs)
    assert inst.shielded_instance_config.enable_secure_boot
    assert inst.status == "RUNNING"
    assert inst.labels["team"] == "infra" and inst.labels["app"] == "pypapo"  # other labels are kept
    assert list(cloud.compute.firewalls[s.firewall_name].source_ranges) == ["35.235.240.0/20"]
    assert cloud.compute.firewalls[s.deny_firewall_name].priority == planlib.DENY_PRIORITY
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

    def broken(request: Any) -> compute_v1.GuestAttributes:
        entry = compute_v1.GuestAttributesEntry(namespace="pypapo", key="error", value="gcsfuse mount failed")
        return compute_v1.GuestAttributes(query_value=compute_v1.GuestAttributesValue(items=[entry]))

    cloud.compute.get_guest_attributes = broken
    with pytest.raises(PypapoError, match=r"gcsfuse mount failed.*get-serial-port-output"):
        run_create(cloud, s)


def test_a_final_not_ready_status_alone_stops_create_within_seconds(cloud: deploy.Cloud) -> None:
    """The script writes status="not ready: REASON" and error=REASON; a rate-limited metadata server may
    drop the second write. The status alone must end the wait at the next poll, not at the timeout."""
    s = settings(ready_timeout=600)
    now = [0.0]

    def failing(request: Any) -> compute_v1.GuestAttributes:
        items = [
            compute_v1.GuestAttributesEntry(namespace="pypapo", key=k, value=v)
            for k, v in (("ready", "false"), ("status", "not ready: /mnt/pypapo is not mounted"))
        ]
        return compute_v1.GuestAttributes(query_value=compute_v1.GuestAttributesValue(items=items))

    cloud.compute.get_guest_attributes = failing
    with pytest.raises(PypapoError) as err:
        deploy.create(
            cloud, s, script=SCRIPT, progress=lambda _m: None, sleep=lambda t: None, clock=lambda: now[0]
        )
    assert "reported an error: /mnt/pypapo is not mounted" in str(err.value)
    assert "gcloud compute instances get-serial-port-output pypapo --zone us-central1-a" in str(err.value)


def test_create_gives_up_waiting_after_the_timeout(cloud: deploy.Cloud) -> None:
    s = settings(ready_timeout=30)
    cloud.compute.ready_after = 10**6
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
        "set_deletion_protection",  # protection is lifted first, or the delete fails
        "delete_instance",
        "delete_firewall",
        "delete_firewall",
        "set_member",  # the VM account's binding leaves the kept bucket
        "delete_service_account",
    ]
    protection = next(r for m, r in cloud.compute.requests if m == "set_deletion_protection")
    assert protection.deletion_protection is False
    assert cloud.compute.instances == {} and cloud.compute.firewalls == {}
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
    assert iam_policy.members(cloud.compute.policies["pypapo"]) == {
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
    cloud.compute.instances["pypapo"].deletion_protection = False
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
    cloud.compute.instances["pypapo"].deletion_protection = False
    result = runner.invoke(main, ["status", *args])
    assert (
        "appliance ready" in result.stdout and "drift: instance us-central1-a/pypapo: update" in result.stdout
    )
    result = runner.invoke(main, ["plan", *args])
    assert "deletion_protection: false -> true" in result.stdout
    result = runner.invoke(main, ["destroy", *args], input="n\n")
    assert result.exit_code != 0 and "pypapo" in cloud.compute.instances  # declined: nothing deleted
    result = runner.invoke(main, ["destroy", "--yes", *args])
    assert result.exit_code == 0, result.output
    assert cloud.compute.instances == {}


def test_create_starts_a_stopped_appliance(cloud: deploy.Cloud) -> None:
    s = settings()
    run_create(cloud, s)
    cloud.compute.instances["pypapo"].status = "TERMINATED"
    clear(cloud)
    run_create(cloud, s)
    assert sent(cloud) == ["start_instance"]
    assert cloud.compute.instances["pypapo"].status == "RUNNING"


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
    cloud.images.guest = Builders(lambda: lambda: next(polls))  # the apt step of the bake fails
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(PypapoError) as err:
        deploy.create(
            cloud, settings(), script=SCRIPT, progress=lambda _m: None, sleep=sleep, clock=lambda: now[0]
        )
    assert "Unable to locate package gcsfuse" in str(err.value)
    assert now[0] <= 20  # two polls, not the 30-minute bake timeout
    assert "insert_instance" not in sent(cloud)  # no appliance from an image that does not exist
    assert not cloud.images.instances and not cloud.compute.families  # the builder is gone, no image

"""The thin-layer test double for the golden-image pipeline (Compute Engine has no emulator).

It implements `provisioner.cloud.image.ImageApi`, keeps its state in real compute_v1 / IAM objects, records
every call with its real request object, and behaves like the API where the pipeline depends on it:
NotFound for missing resources, deletion protection blocks a delete, deleting an instance deletes its
auto-delete disks and drops the instance's IAM and IAP tunnel policies. Failures are injected per method.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1
from google.iam.v1 import policy_pb2

from provisioner.cloud import names
from provisioner.cloud.image import plan as image_plan


class ComputeDouble:
    def __init__(self, project: str = "proj-123456", zone: str = "europe-west1-b") -> None:
        self.project = project
        self.zone = zone
        self.instances: dict[str, compute_v1.Instance] = {}
        self.disks: dict[str, compute_v1.Disk] = {}
        self.images: dict[str, compute_v1.Image] = {}
        self.iap: dict[str, policy_pb2.Policy] = {}
        self.instance_policies: dict[str, compute_v1.Policy] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, BaseException] = {}
        # what the guest writes, per instance: a callable returning the attributes on each poll
        self.guest: dict[str, Callable[[], dict[str, str]]] = {}
        self.leave_disk_on_failed_insert = False
        self._clock = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8)))

    # -- helpers for tests

    def _call(self, name: str, request: Any = None) -> None:
        self.calls.append((name, request))
        if name in self.fail:
            raise self.fail[name]

    def call_names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def requests(self, name: str) -> list[Any]:
        return [r for n, r in self.calls if n == name]

    def add_image(
        self, name: str, created: dt.datetime, state: str = "ACTIVE", family: str = "pypapo"
    ) -> None:
        image = compute_v1.Image(
            name=name,
            family=family,
            status="READY",
            creation_timestamp=created.isoformat(timespec="milliseconds"),
            self_link=f"https://www.googleapis.com/compute/v1/projects/{self.project}/global/images/{name}",
        )
        if state != "ACTIVE":
            image.deprecated = compute_v1.DeprecationStatus(state=state)
        self.images[name] = image

    def add_appliance(self, spec: compute_v1.Instance, image: str) -> None:
        self.insert_instance(
            compute_v1.InsertInstanceRequest(
                project=self.project, zone=self.zone, instance_resource=image_plan.with_image(spec, image)
            )
        )
        self.calls.clear()

    # -- ImageApi

    def insert_instance(self, request: compute_v1.InsertInstanceRequest) -> None:
        inst = compute_v1.Instance(compute_v1.Instance.to_dict(request.instance_resource))
        boot = inst.disks[0]
        disk_name = boot.initialize_params.disk_name or inst.name
        if self.leave_disk_on_failed_insert and "insert_instance" in self.fail:
            self.disks[disk_name] = compute_v1.Disk(name=disk_name)
        self._call("insert_instance", request)
        if inst.name in self.instances:
            raise gexc.Conflict(f"The resource 'instances/{inst.name}' already exists")
        source = boot.initialize_params.source_image
        if "/images/family/" in source:
            family = source.rsplit("/", 1)[-1]
            usable = image_plan.newest_usable([i for i in self.images.values() if i.family == family])
            source = usable.self_link if usable else source
        self.disks[disk_name] = compute_v1.Disk(name=disk_name, source_image=source)
        boot.source = f"projects/{self.project}/zones/{self.zone}/disks/{disk_name}"
        inst.status = "RUNNING"
        self.instances[inst.name] = inst

    def get_instance(self, project: str, zone: str, name: str) -> compute_v1.Instance | None:
        self.calls.append(("get_instance", name))
        return self.instances.get(name)

    def guest_attributes(self, request: compute_v1.GetGuestAttributesInstanceRequest) -> dict[str, str]:
        self._call("guest_attributes", request)
        if request.instance not in self.instances:
            raise gexc.NotFound(f"instance {request.instance}")
        writer = self.guest.get(request.instance)
        return writer() if writer else {}

    def stop_instance(self, request: compute_v1.StopInstanceRequest) -> None:
        self._call("stop_instance", request)
        self.instances[request.instance].status = "TERMINATED"

    def delete_instance(self, request: compute_v1.DeleteInstanceRequest) -> None:
        self._call("delete_instance", request)
        inst = self.instances.get(request.instance)
        if inst is None:
            raise gexc.NotFound(f"The resource 'instances/{request.instance}' was not found")
        if inst.deletion_protection:
            raise gexc.BadRequest(
                "Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'"
            )
        del self.instances[request.instance]
        for d in inst.disks:
            if d.auto_delete:
                self.disks.pop(d.source.rsplit("/", 1)[-1], None)
        # the per-instance policies go with the instance
        self.iap.pop(names.tunnel_resource(self.project, self.zone, request.instance), None)
        self.instance_policies.pop(request.instance, None)

    def delete_disk(self, request: compute_v1.DeleteDiskRequest) -> None:
        self._call("delete_disk", request)
        if request.disk not in self.disks:
            raise gexc.NotFound(f"The resource 'disks/{request.disk}' was not found")
        if any(d.source.endswith(f"/disks/{request.disk}") for i in self.instances.values() for d in i.disks):
            raise gexc.BadRequest(f"The disk resource '{request.disk}' is already being used")
        del self.disks[request.disk]

    def get_disk(self, project: str, zone: str, name: str) -> compute_v1.Disk | None:
        self.calls.append(("get_disk", name))
        return self.disks.get(name)

    def set_deletion_protection(self, request: compute_v1.SetDeletionProtectionInstanceRequest) -> None:
        self._call("set_deletion_protection", request)
        self.instances[request.resource].deletion_protection = request.deletion_protection

    def serial_output(self, project: str, zone: str, name: str) -> str:
        self._call("serial_output", name)
        return "startup-script: apt-get: E: Unable to fetch some archives\n"

    def insert_image(self, request: compute_v1.InsertImageRequest) -> None:
        self._call("insert_image", request)
        disk = request.image_resource.source_disk.rsplit("/", 1)[-1]
        if disk not in self.disks:
            raise gexc.NotFound(f"disk {disk}")
        image = compute_v1.Image(compute_v1.Image.to_dict(request.image_resource))
        image.status = "READY"
        self._clock += dt.timedelta(days=7)
        image.creation_timestamp = self._clock.isoformat(timespec="milliseconds")
        image.self_link = (
            f"https://www.googleapis.com/compute/v1/projects/{request.project}/global/images/{image.name}"
        )
        self.images[image.name] = image

    def list_images(self, project: str, family: str) -> list[compute_v1.Image]:
        self._call("list_images", family)
        return [
            compute_v1.Image(compute_v1.Image.to_dict(i)) for i in self.images.values() if i.family == family
        ]

    def deprecate_image(self, request: compute_v1.DeprecateImageRequest) -> None:
        self._call("deprecate_image", request)
        image = self.images[request.image]
        status = request.deprecation_status_resource
        if status.state == "ACTIVE":
            image.deprecated = compute_v1.DeprecationStatus()
            del image.deprecated
        else:
            image.deprecated = compute_v1.DeprecationStatus(compute_v1.DeprecationStatus.to_dict(status))

    def get_iap_policy(self, resource: str) -> Any:
        self._call("get_iap_policy", resource)
        policy = policy_pb2.Policy()
        if resource in self.iap:
            policy.CopyFrom(self.iap[resource])
        return policy

    def set_iap_policy(self, resource: str, policy: Any) -> None:
        self._call("set_iap_policy", resource)
        name = resource.rsplit("/", 1)[-1]
        if name not in self.instances:
            raise gexc.NotFound(resource)
        stored = policy_pb2.Policy()
        stored.CopyFrom(policy)
        self.iap[resource] = stored

    def get_instance_policy(self, project: str, zone: str, name: str) -> compute_v1.Policy | None:
        self._call("get_instance_policy", name)
        return self.instance_policies.get(name, compute_v1.Policy())

    def set_instance_policy(self, project: str, zone: str, name: str, policy: compute_v1.Policy) -> None:
        self._call("set_instance_policy", name)
        if name not in self.instances:
            raise gexc.NotFound(name)
        self.instance_policies[name] = compute_v1.Policy(compute_v1.Policy.to_dict(policy))


def bake_done(gcsfuse: str = "2.5.1", nginx: str = "1.22.1-9+deb12u1") -> Callable[[], dict[str, str]]:
    """A guest that finishes the bake on the second poll."""
    polls = iter([{}, {"bake": "done", "gcsfuse-version": gcsfuse, "nginx-version": nginx}])
    last: dict[str, str] = {}

    def attrs() -> dict[str, str]:
        nonlocal last
        last = next(polls, last)
        return last

    return attrs


class FakeClock:
    """Deterministic time for the polling loops: sleep advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

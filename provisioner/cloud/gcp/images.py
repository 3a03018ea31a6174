"""Thin layer: the Compute Engine and IAP calls of the golden-image pipelines (`cloud.image.run`).

Each method sends one request object built by `provisioner.cloud.image.plan`, waits for its operation with
progress, and turns API errors into one-line `PypapoError`s naming the fix. NotFound is kept apart where
the pipeline decides what it means (clean-up: already gone; reads: None).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud.gcp.base import (
    COMPUTE_API,
    Clients,
    gcp_errors,
    wait_for_operation,
)
from provisioner.cloud.gcp.policy import carry_over
from provisioner.cloud.progress import Progress


class ComputeImageApi:
    """`provisioner.cloud.image.run.ImageApi` over the real clients (`Clients` lets a caller inject its own).

    Instance calls that `provision create` also makes go through the cloud part's `Compute` layer; this
    class adds what only the image pipeline needs (images, disks, guest attributes as a dict, serial
    output, clean-up deletes that keep NotFound apart).
    """

    def __init__(self, clients: Clients, progress: Progress | None = None) -> None:
        from provisioner.cloud.gcp.compute import Compute
        from provisioner.cloud.gcp.iam import Iam

        self.clients = clients
        self.project = clients.project
        self.progress = progress
        self.compute = Compute(clients, progress=progress)
        self.iam = Iam(clients, progress=progress)

    # -- helpers

    def _wait(self, op: Any, what: str, timeout: float = 900.0) -> None:
        wait_for_operation(op, what, project=self.project, progress=self.progress, timeout=timeout)

    def _errors(self, action: str, api: str = COMPUTE_API) -> Any:
        return gcp_errors(action, project=self.project, api=api)

    # -- instances

    def insert_instance(self, request: compute_v1.InsertInstanceRequest) -> None:
        self.compute.insert_instance(request)

    def get_instance(self, project: str, zone: str, name: str) -> compute_v1.Instance | None:
        return self.compute.get_instance(zone, name)

    def guest_attributes(self, request: compute_v1.GetGuestAttributesInstanceRequest) -> dict[str, str]:
        """`{key: value}` under the queried namespace; {} before the guest wrote anything."""
        with self._errors(f"read guest attributes of {request.instance}"):
            try:
                attrs = self.clients.get("instances").get_guest_attributes(request=request)
            except gexc.NotFound:
                return {}
        namespace = request.query_path.rstrip("/")
        return {e.key: e.value for e in attrs.query_value.items if not namespace or e.namespace == namespace}

    def stop_instance(self, request: compute_v1.StopInstanceRequest) -> None:
        self.compute.stop_instance(request)

    def _delete(self, send: Callable[[], Any], action: str, label: str) -> None:
        """Send a delete and wait. NotFound is raised untranslated: for the clean-up and rollout, gone
        is success; every other error is translated as for any call."""
        try:
            op = send()
        except gexc.NotFound:
            raise
        except gexc.GoogleAPIError as exc:
            with self._errors(action):
                raise exc from None
        with self._errors(action):
            self._wait(op, label)

    def delete_instance(self, request: compute_v1.DeleteInstanceRequest) -> None:
        self._delete(
            lambda: self.clients.get("instances").delete(request=request),
            f"delete instance {request.instance}",
            f"delete {request.instance}",
        )

    def set_deletion_protection(self, request: compute_v1.SetDeletionProtectionInstanceRequest) -> None:
        self.compute.set_deletion_protection(request)

    def serial_output(self, project: str, zone: str, name: str) -> str:
        out = self.clients.get("instances").get_serial_port_output(
            request=compute_v1.GetSerialPortOutputInstanceRequest(project=project, zone=zone, instance=name)
        )
        return out.contents

    # -- disks

    def _disks(self) -> Any:
        if "disks" not in _registered:
            Clients.register("disks", COMPUTE_API, _disks_client)
            _registered.add("disks")
        return self.clients.get("disks")

    def delete_disk(self, request: compute_v1.DeleteDiskRequest) -> None:
        what = f"delete disk {request.disk}"
        self._delete(lambda: self._disks().delete(request=request), what, what)

    def get_disk(self, project: str, zone: str, name: str) -> compute_v1.Disk | None:
        with self._errors(f"read disk {name}"):
            try:
                return self._disks().get(project=project, zone=zone, disk=name)
            except gexc.NotFound:
                return None

    # -- images

    def insert_image(self, request: compute_v1.InsertImageRequest) -> None:
        name = request.image_resource.name
        with self._errors(f"create image {name}"):
            # an image copy of a 10 GB disk takes minutes; give it more than a VM insert
            self._wait(self.clients.get("images").insert(request=request), f"create image {name}", 1800.0)

    def list_images(self, project: str, family: str) -> list[compute_v1.Image]:
        with self._errors(f"list the images of family {family}"):
            pager = self.clients.get("images").list(
                request=compute_v1.ListImagesRequest(project=project, filter=f'family = "{family}"')
            )
            return [img for img in pager if img.family == family]

    def deprecate_image(self, request: compute_v1.DeprecateImageRequest) -> None:
        state = request.deprecation_status_resource.state
        with self._errors(f"mark image {request.image} {state}"):
            self._wait(self.clients.get("images").deprecate(request=request), f"mark {request.image} {state}")

    # -- IAP tunnel policy of one instance

    def get_iap_policy(self, resource: str) -> Any:
        return self.iam.get_tunnel_policy(resource)

    def set_iap_policy(self, resource: str, policy: Any) -> None:
        """Put `policy`'s bindings on `resource`, with the etag of the policy there now."""
        self.iam.put_tunnel_policy(resource, policy)

    # -- the instance's own IAM policy (compute.viewer for tunnel users)

    def get_instance_policy(self, project: str, zone: str, name: str) -> compute_v1.Policy | None:
        return self.compute.get_instance_iam_policy(zone, name)

    def set_instance_policy(self, project: str, zone: str, name: str, policy: compute_v1.Policy) -> None:
        """Put `policy`'s bindings on the (new) instance, with the etag of its policy now."""
        current = self.compute.get_instance_iam_policy(zone, name)
        self.compute.put_instance_iam_policy(zone, name, carry_over(current, policy))


_registered: set[str] = set()


def _disks_client(credentials: Any) -> Any:
    return compute_v1.DisksClient(credentials=credentials)

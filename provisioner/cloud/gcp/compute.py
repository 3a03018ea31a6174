"""Thin layer: Compute Engine, the one for every command (create, destroy, status, grant, verify, the
image build, rollout and rollback). Each method sends one request object built elsewhere and waits.

Reads return the real `compute_v1` object or None when it does not exist. Writes wait on the operation
with progress; a delete of what is already gone is done (destroy, the builder's clean-up and rollout
all converge). Every other error leaves as a one-line `PypapoError` naming the fix. Tests run this class
over `tests/doubles/compute.py`, fake compute_v1 clients that keep state in real compute_v1 objects.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud.gcp import policy
from provisioner.cloud.gcp.base import (
    COMPUTE_API,
    Clients,
    gcp_errors,
    get_or_none,
    wait_for_operation,
)
from provisioner.cloud.progress import Progress

# IAM is eventually consistent: a service account created seconds ago can be unknown to Compute Engine
# for up to a minute or so, and the insert fails with 400/404 naming it. Retry that case only.
SA_PROPAGATION_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0)
_SA_UNKNOWN = re.compile(
    r"serviceAccounts?/?[^ ]*@[^ ]*\b.*(not (be )?found|does not exist)|service account .* does not exist",
    re.I,
)


def is_new_service_account_not_visible(exc: BaseException) -> bool:
    """True for the insert error Compute gives while a just-created service account has not propagated."""
    return isinstance(exc, gexc.BadRequest | gexc.NotFound) and bool(_SA_UNKNOWN.search(str(exc)))


class Compute:
    def __init__(
        self,
        clients: Clients,
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clients = clients
        self.project = clients.project
        self.progress = progress
        self.sleep = sleep

    def _wait(self, op: Any, description: str, timeout: float = 900.0) -> None:
        wait_for_operation(op, description, project=self.project, progress=self.progress, timeout=timeout)

    def _send(
        self,
        client: str,
        method: str,
        request: Any,
        description: str,
        *,
        role: str | None = None,
        timeout: float = 900.0,
    ) -> None:
        with gcp_errors(description, project=self.project, api=COMPUTE_API, role=role):
            op = getattr(self.clients.get(client), method)(request=request)
        self._wait(op, description, timeout)

    def _delete(self, client: str, request: Any, description: str) -> bool:
        """Send a delete and wait; False when the resource was already gone."""
        with gcp_errors(description, project=self.project, api=COMPUTE_API):
            try:
                op = self.clients.get(client).delete(request=request)
            except gexc.NotFound:
                return False
        self._wait(op, description)
        return True

    def _get(self, client: str, request: Any, what: str, method: str = "get") -> Any:
        """One read: the resource, or None when it does not exist (`what` names it in errors)."""
        return get_or_none(
            lambda: getattr(self.clients.get(client), method)(request=request),
            f"read {what}",
            project=self.project,
            api=COMPUTE_API,
        )

    # --- reads ---

    def get_instance(self, zone: str, name: str) -> compute_v1.Instance | None:
        req = compute_v1.GetInstanceRequest(project=self.project, zone=zone, instance=name)
        return self._get("instances", req, f"instance {name}")

    def get_disk(self, zone: str, name: str) -> compute_v1.Disk | None:
        req = compute_v1.GetDiskRequest(project=self.project, zone=zone, disk=name)
        return self._get("disks", req, f"disk {name}")

    def get_firewall(self, name: str) -> compute_v1.Firewall | None:
        req = compute_v1.GetFirewallRequest(project=self.project, firewall=name)
        return self._get("firewalls", req, f"firewall rule {name}")

    def get_subnetwork(self, region: str, name: str) -> compute_v1.Subnetwork | None:
        req = compute_v1.GetSubnetworkRequest(project=self.project, region=region, subnetwork=name)
        return self._get("subnetworks", req, f"subnetwork {name}")

    def get_image_from_family(self, project: str, family: str) -> compute_v1.Image | None:
        req = compute_v1.GetFromFamilyImageRequest(project=project, family=family)
        return self._get("images", req, f"image family {project}/{family}", "get_from_family")

    def list_images(self, project: str, family: str) -> list[compute_v1.Image]:
        req = compute_v1.ListImagesRequest(project=project, filter=f'family = "{family}"')
        with gcp_errors(f"list the images of family {family}", project=self.project, api=COMPUTE_API):
            return [img for img in self.clients.get("images").list(request=req) if img.family == family]

    def get_guest_attributes(
        self, request: compute_v1.GetGuestAttributesInstanceRequest
    ) -> compute_v1.GuestAttributes | None:
        # 404 until the guest writes the first attribute under the query path.
        return self._get(
            "instances", request, f"guest attributes of {request.instance}", "get_guest_attributes"
        )

    def serial_output(self, zone: str, name: str) -> str:
        req = compute_v1.GetSerialPortOutputInstanceRequest(project=self.project, zone=zone, instance=name)
        with gcp_errors(f"read the serial console of {name}", project=self.project, api=COMPUTE_API):
            return str(self.clients.get("instances").get_serial_port_output(request=req).contents)

    def get_instance_iam_policy(self, zone: str, name: str) -> compute_v1.Policy:
        req = compute_v1.GetIamPolicyInstanceRequest(
            project=self.project, zone=zone, resource=name, options_requested_policy_version=3
        )
        with gcp_errors(f"read the IAM policy of instance {name}", project=self.project, api=COMPUTE_API):
            return self.clients.get("instances").get_iam_policy(request=req)

    def list_managed_instances(self, region: str, group: str) -> list[compute_v1.ManagedInstance] | None:
        """The regional group's instances with their health and current action; None without the group."""
        groups = self.clients.get("region_instance_group_managers")
        req = compute_v1.ListManagedInstancesRegionInstanceGroupManagersRequest(
            project=self.project, region=region, instance_group_manager=group
        )
        return get_or_none(
            lambda: list(groups.list_managed_instances(request=req)),
            f"list the instances of group {group}",
            project=self.project,
            api=COMPUTE_API,
        )

    def get_region_zones(self, region: str) -> list[str]:
        """The zones of `region` (`regions.get`: a regional group spreads over them)."""
        req = compute_v1.GetRegionRequest(project=self.project, region=region)
        found = self._get("regions", req, f"region {region}")
        if found is None:
            return []
        return sorted(z.rsplit("/", 1)[-1] for z in found.zones)

    def list_instance_templates(self) -> list[compute_v1.InstanceTemplate]:
        req = compute_v1.ListInstanceTemplatesRequest(project=self.project)
        with gcp_errors("list instance templates", project=self.project, api=COMPUTE_API):
            return list(self.clients.get("instance_templates").list(request=req))

    def get_health_check(self, name: str) -> compute_v1.HealthCheck | None:
        req = compute_v1.GetHealthCheckRequest(project=self.project, health_check=name)
        return self._get("health_checks", req, f"health check {name}")

    def get_region_instance_group_manager(
        self, region: str, name: str
    ) -> compute_v1.InstanceGroupManager | None:
        req = compute_v1.GetRegionInstanceGroupManagerRequest(
            project=self.project, region=region, instance_group_manager=name
        )
        return self._get("region_instance_group_managers", req, f"instance group {name}")

    def get_region_backend_service(self, region: str, name: str) -> compute_v1.BackendService | None:
        req = compute_v1.GetRegionBackendServiceRequest(
            project=self.project, region=region, backend_service=name
        )
        return self._get("region_backend_services", req, f"backend service {name}")

    def get_address(self, region: str, name: str) -> compute_v1.Address | None:
        req = compute_v1.GetAddressRequest(project=self.project, region=region, address=name)
        return self._get("addresses", req, f"address {name}")

    def get_forwarding_rule(self, region: str, name: str) -> compute_v1.ForwardingRule | None:
        req = compute_v1.GetForwardingRuleRequest(project=self.project, region=region, forwarding_rule=name)
        return self._get("forwarding_rules", req, f"forwarding rule {name}")

    # --- writes (each waits for its operation) ---

    def insert_instance(self, request: compute_v1.InsertInstanceRequest) -> None:
        description = f"create instance {request.instance_resource.name}"
        for delay in (*SA_PROPAGATION_DELAYS, None):
            with gcp_errors(description, project=self.project, api=COMPUTE_API):
                try:
                    op = self.clients.get("instances").insert(request=request)
                    break
                except (gexc.BadRequest, gexc.NotFound) as exc:
                    if delay is None or not is_new_service_account_not_visible(exc):
                        raise
                if self.progress:
                    self.progress(
                        f"  the new service account is not visible to Compute yet; retry in {delay:.0f}s"
                    )
                self.sleep(delay)
        self._wait(op, description)

    def delete_instance(self, request: compute_v1.DeleteInstanceRequest) -> bool:
        return self._delete("instances", request, f"delete instance {request.instance}")

    def delete_disk(self, request: compute_v1.DeleteDiskRequest) -> bool:
        return self._delete("disks", request, f"delete disk {request.disk}")

    def set_deletion_protection(self, request: compute_v1.SetDeletionProtectionInstanceRequest) -> None:
        state = "on" if request.deletion_protection else "off"
        self._send(
            "instances",
            "set_deletion_protection",
            request,
            f"turn deletion protection {state} on {request.resource}",
        )

    def set_metadata(self, request: compute_v1.SetMetadataInstanceRequest) -> None:
        self._send("instances", "set_metadata", request, f"set metadata of {request.instance}")

    def set_labels(self, request: compute_v1.SetLabelsInstanceRequest) -> None:
        self._send("instances", "set_labels", request, f"set labels of {request.instance}")

    def delete_access_config(self, request: compute_v1.DeleteAccessConfigInstanceRequest) -> None:
        self._send(
            "instances", "delete_access_config", request, f"remove the external IP of {request.instance}"
        )

    def update_shielded_instance_config(
        self, request: compute_v1.UpdateShieldedInstanceConfigInstanceRequest
    ) -> None:
        self._send(
            "instances",
            "update_shielded_instance_config",
            request,
            f"turn on Shielded VM for {request.instance}",
        )

    def set_service_account(self, request: compute_v1.SetServiceAccountInstanceRequest) -> None:
        self._send(
            "instances",
            "set_service_account",
            request,
            f"set the service account of {request.instance}",
            role="roles/iam.serviceAccountUser",
        )

    def set_machine_type(self, request: compute_v1.SetMachineTypeInstanceRequest) -> None:
        self._send("instances", "set_machine_type", request, f"set the machine type of {request.instance}")

    def stop_instance(self, request: compute_v1.StopInstanceRequest) -> None:
        self._send("instances", "stop", request, f"stop instance {request.instance}")

    def start_instance(self, request: compute_v1.StartInstanceRequest) -> None:
        self._send("instances", "start", request, f"start instance {request.instance}")

    def _write_instance_policy(self, zone: str, name: str, new: compute_v1.Policy) -> None:
        """Write `new` (its etag guards against a concurrent edit) as version 3."""
        new.version = policy.POLICY_VERSION
        request = compute_v1.SetIamPolicyInstanceRequest(
            project=self.project,
            zone=zone,
            resource=name,
            zone_set_policy_request_resource=compute_v1.ZoneSetPolicyRequest(policy=new),
        )
        with gcp_errors(f"set the IAM policy of instance {name}", project=self.project, api=COMPUTE_API):
            self.clients.get("instances").set_iam_policy(request=request)

    def put_instance_policy(self, zone: str, name: str, bindings_from: compute_v1.Policy) -> None:
        """Put `bindings_from`'s bindings on the (new) instance, with the etag of its policy now."""
        current = self.get_instance_iam_policy(zone, name)
        self._write_instance_policy(zone, name, policy.carry_over(current, bindings_from))

    def insert_firewall(self, request: compute_v1.InsertFirewallRequest) -> None:
        self._send("firewalls", "insert", request, f"create firewall rule {request.firewall_resource.name}")

    def update_firewall(self, request: compute_v1.UpdateFirewallRequest) -> None:
        self._send("firewalls", "update", request, f"update firewall rule {request.firewall}")

    def delete_firewall(self, request: compute_v1.DeleteFirewallRequest) -> bool:
        return self._delete("firewalls", request, f"delete firewall rule {request.firewall}")

    def insert_image(self, request: compute_v1.InsertImageRequest) -> None:
        # an image copy of a 10 GB disk takes minutes; give it more than a VM insert
        description = f"create image {request.image_resource.name}"
        self._send("images", "insert", request, description, timeout=1800.0)

    def deprecate_image(self, request: compute_v1.DeprecateImageRequest) -> None:
        state = request.deprecation_status_resource.state
        self._send("images", "deprecate", request, f"mark image {request.image} {state}")

    def set_private_google_access(
        self, request: compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest
    ) -> None:
        self._send(
            "subnetworks",
            "set_private_ip_google_access",
            request,
            f"turn on Private Google Access on subnet {request.subnetwork}",
        )

    # --- the group mode's writes (each one request, waited for; a delete of what is gone is done) ---

    def insert_instance_template(self, request: compute_v1.InsertInstanceTemplateRequest) -> None:
        name = request.instance_template_resource.name
        self._send("instance_templates", "insert", request, f"create instance template {name}")

    def delete_instance_template(self, request: compute_v1.DeleteInstanceTemplateRequest) -> bool:
        return self._delete(
            "instance_templates", request, f"delete instance template {request.instance_template}"
        )

    def insert_health_check(self, request: compute_v1.InsertHealthCheckRequest) -> None:
        name = request.health_check_resource.name
        self._send("health_checks", "insert", request, f"create health check {name}")

    def update_health_check(self, request: compute_v1.UpdateHealthCheckRequest) -> None:
        self._send("health_checks", "update", request, f"update health check {request.health_check}")

    def delete_health_check(self, request: compute_v1.DeleteHealthCheckRequest) -> bool:
        return self._delete("health_checks", request, f"delete health check {request.health_check}")

    def insert_region_instance_group_manager(
        self, request: compute_v1.InsertRegionInstanceGroupManagerRequest
    ) -> None:
        name = request.instance_group_manager_resource.name
        self._send(
            "region_instance_group_managers",
            "insert",
            request,
            f"create instance group {name}",
            role="roles/iam.serviceAccountUser",
        )

    def patch_region_instance_group_manager(
        self, request: compute_v1.PatchRegionInstanceGroupManagerRequest
    ) -> None:
        self._send(
            "region_instance_group_managers",
            "patch",
            request,
            f"update instance group {request.instance_group_manager}",
        )

    def resize_region_instance_group_manager(
        self, request: compute_v1.ResizeRegionInstanceGroupManagerRequest
    ) -> None:
        self._send(
            "region_instance_group_managers",
            "resize",
            request,
            f"resize instance group {request.instance_group_manager} to {request.size}",
        )

    def delete_region_instance_group_manager(
        self, request: compute_v1.DeleteRegionInstanceGroupManagerRequest
    ) -> bool:
        return self._delete(
            "region_instance_group_managers",
            request,
            f"delete instance group {request.instance_group_manager} and its instances",
        )

    def insert_region_backend_service(self, request: compute_v1.InsertRegionBackendServiceRequest) -> None:
        name = request.backend_service_resource.name
        self._send("region_backend_services", "insert", request, f"create backend service {name}")

    def delete_region_backend_service(self, request: compute_v1.DeleteRegionBackendServiceRequest) -> bool:
        return self._delete(
            "region_backend_services", request, f"delete backend service {request.backend_service}"
        )

    def insert_address(self, request: compute_v1.InsertAddressRequest) -> None:
        self._send("addresses", "insert", request, f"reserve address {request.address_resource.name}")

    def delete_address(self, request: compute_v1.DeleteAddressRequest) -> bool:
        return self._delete("addresses", request, f"release address {request.address}")

    def insert_forwarding_rule(self, request: compute_v1.InsertForwardingRuleRequest) -> None:
        name = request.forwarding_rule_resource.name
        self._send("forwarding_rules", "insert", request, f"create forwarding rule {name}")

    def delete_forwarding_rule(self, request: compute_v1.DeleteForwardingRuleRequest) -> bool:
        return self._delete("forwarding_rules", request, f"delete forwarding rule {request.forwarding_rule}")

    def set_instance_member(
        self, zone: str, name: str, role: str, member: str, *, present: bool = True
    ) -> bool:
        """Read-modify-write of the instance's own IAM policy (not the project's)."""
        changed = policy.read_modify_write(
            lambda: self.get_instance_iam_policy(zone, name),
            policy.member_editor(role, member, present),
            lambda p: self._write_instance_policy(zone, name, p),
        )
        if not changed:
            return False
        if self.progress:
            self.progress(f"  {'granted' if present else 'revoked'} {role} on instance {name}: {member}")
        return True

"""Pure: the names of Google Cloud resources pypapo uses, one spelling each.

Resource paths (network and subnet URLs, images, the IAP tunnel resource, service accounts), the OAuth
scope and the IAP source range. `plan`, `image`, `apply` and the thin layer take them from here.
"""

from __future__ import annotations

# OAuth scope of the appliance VM, the credentials and the scheduler's token: IAM does the limiting.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAP_TCP_RANGE = "35.235.240.0/20"  # where IAP TCP forwarding connects from (Google-documented)
FALLBACK_IMAGE_PROJECT = "debian-cloud"
FALLBACK_IMAGE_FAMILY = "debian-12"


def network_url(project: str, network: str) -> str:
    return f"projects/{project}/global/networks/{network}"


def subnet_url(project: str, region: str, subnet: str) -> str:
    return f"projects/{project}/regions/{region}/subnetworks/{subnet}"


def family_image(project: str, family: str) -> str:
    return f"projects/{project}/global/images/family/{family}"


def fallback_image() -> str:
    """What an appliance boots while its own image family is empty."""
    return family_image(FALLBACK_IMAGE_PROJECT, FALLBACK_IMAGE_FAMILY)


def image_link(project: str, image: str) -> str:
    return f"projects/{project}/global/images/{image}"


def disk_link(project: str, zone: str, disk: str) -> str:
    return f"projects/{project}/zones/{zone}/disks/{disk}"


def tunnel_resource(project: str, zone: str, instance: str) -> str:
    """The IAP resource for TCP forwarding to one instance: where `provision grant --role reader` writes
    and what `rollout` carries over to the recreated instance."""
    return f"projects/{project}/iap_tunnel/zones/{zone}/instances/{instance}"


def service_account_email(project: str, account_id: str) -> str:
    if ":" in project:  # domain-scoped project example.com:proj -> proj.example.com
        domain, name = project.split(":", 1)
        return f"{account_id}@{name}.{domain}.iam.gserviceaccount.com"
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def service_account_path(project: str, email: str) -> str:
    return f"projects/{project}/serviceAccounts/{email}"


def serial_console_command(project: str, zone: str, instance: str) -> str:
    """The command that shows what a VM's startup script printed (where every failure is explained)."""
    return f"gcloud compute instances get-serial-port-output {instance} --zone {zone} --project {project}"

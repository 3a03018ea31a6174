"""Pure: the golden image's plans. Names, the builder VM, the image, deprecations, the build and
rollout steps as real compute_v1 request objects, rollback targets and the family listing.

The serving VM has no egress, so its patches arrive as a new image; `run` carries these plans out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud import compute_v1

from provisioner.appliance import guest, render
from provisioner.cloud import names, plan
from provisioner.cloud.plan import Step
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError

# ---------------------------------------------------------------------------------------------- constants

DEFAULT_FAMILY = "pypapo"
DEFAULT_KEEP = 3
BUILDER_MACHINE_TYPE = "e2-standard-2"  # apt upgrade + gcsfuse/nginx install: 2 vCPU keeps the bake short
BUILDER_DISK_GB = 10  # the serving image is cloned from this disk, so it is also the image's size
BAKE_TIMEOUT_S = 30 * 60
READY_TIMEOUT_S = 10 * 60

# Guest OS features of the image. The source disk is Debian 12 booted as a Shielded VM:
# - UEFI_COMPATIBLE: required, Shielded VM secure boot and vTPM only exist on UEFI images;
# - VIRTIO_SCSI_MULTIQUEUE: Debian 12's kernel supports multi-queue SCSI; better disk throughput;
# - GVNIC: Debian 12 ships the gve driver; lets the appliance use gVNIC (needed by newer machine series).
# Not SEV_CAPABLE / SEV_SNP_CAPABLE / TDX_CAPABLE: the appliance is not a Confidential VM and we never
# test one, so the image must not claim it. Debian's shim is signed by the Microsoft UEFI CA, which the
# default Shielded VM key database trusts, so no shielded_instance_initial_state is set (setting one
# would *replace* the default db/dbx and could lock out the next signed kernel).
GUEST_OS_FEATURES = ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")

BAKE_MODE_KEY = "pypapo-mode"  # instance attribute that selects the startup script's bake mode

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


# ------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ImageTarget:
    """Where the pipeline works: the shared Settings (project, zone, network, family, ...) and the two
    knobs only the image commands have."""

    settings: Settings
    keep: int = DEFAULT_KEEP
    builder_machine_type: str = BUILDER_MACHINE_TYPE

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.family) or len(self.family) > 39:
            raise PypapoError(
                f"image family {self.family!r} must be lowercase letters, digits and dashes, at most 39 "
                "characters (builder and image names add a timestamp); fix --image-family"
            )
        if self.keep < 1:
            raise PypapoError("--keep must be at least 1 (the image the appliance runs)")

    project = property(lambda self: self.settings.project)
    zone = property(lambda self: self.settings.zone)
    region = property(lambda self: self.settings.region)
    network = property(lambda self: self.settings.network)
    subnet = property(lambda self: self.settings.subnet)
    instance = property(lambda self: self.settings.instance)
    family = property(lambda self: self.settings.image_family)
    image_project = property(lambda self: self.settings.image_project)  # where the family lives


def target_of(
    settings: Settings, keep: int = DEFAULT_KEEP, builder_machine_type: str | None = None
) -> ImageTarget:
    """Where `image build`/`rollout` (and `create`'s first bake) work, from the shared settings."""
    return ImageTarget(settings, keep=keep, builder_machine_type=builder_machine_type or BUILDER_MACHINE_TYPE)


def steps_document(kind: str, steps: Sequence[Step], **extra: Any) -> dict[str, Any]:
    return {"pipeline": kind, **extra, "steps": [s.as_dict() for s in steps]}


# ---------------------------------------------------------------------------------------------- naming


def image_name(family: str, now: dt.datetime) -> str:
    """`FAMILY-vYYYYMMDD-HHMMSS` (UTC): sortable for people; order itself comes from creation_timestamp."""
    return f"{family}-v{now.astimezone(dt.UTC):%Y%m%d-%H%M%S}"


def builder_name(family: str, now: dt.datetime) -> str:
    return f"{family}-builder-{now.astimezone(dt.UTC):%Y%m%d-%H%M%S}"


def label_value(text: str) -> str:
    """Label values allow only lowercase letters, digits, `_` and `-` (63 chars): `2.4.0` -> `2_4_0`."""
    return re.sub(r"[^a-z0-9_-]", "_", text.strip().lower())[:63] or "unknown"


def parse_timestamp(value: str) -> dt.datetime:
    """Compute timestamps are RFC 3339 with an offset (`...-08:00`): compare them as instants."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# ----------------------------------------------------------------------------------------- the builder


def builder_instance(target: ImageTarget, name: str, startup_script: str) -> compute_v1.Instance:
    """The temporary builder VM.

    Egress choice: an *ephemeral external IP* on the existing subnet, not Cloud NAT. It creates no
    long-lived resource (no router, no NAT, no builder subnet to forget and pay for), it disappears with
    the VM, and nothing can reach it: VPC ingress is default-deny and no firewall rule admits it (the only
    pypapo rule targets the appliance's service account, which the builder does not have). Trade-off:
    an organization policy `constraints/compute.vmExternalIpAccess` may forbid external IPs; there the
    insert fails with a clear error and Cloud NAT on the subnet is the way (documented in the README).

    The builder has no service account at all: the bake needs only public apt/package repositories and
    the metadata server (guest attributes), so a compromised package gets no Google credentials.
    """
    z = target.zone
    return compute_v1.Instance(
        name=name,
        description="pypapo golden-image builder (temporary; deleted by `provision image build`)",
        machine_type=f"zones/{z}/machineTypes/{target.builder_machine_type}",
        labels={"pypapo-role": "image-builder", "pypapo-family": target.family},
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,  # deleting the builder deletes its disk, whatever happened before
                type_="PERSISTENT",
                device_name="boot",
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    disk_name=name,
                    source_image=names.fallback_image(),  # the bake starts from plain Debian 12
                    disk_size_gb=BUILDER_DISK_GB,
                    disk_type=f"zones/{z}/diskTypes/pd-balanced",
                ),
            )
        ],
        network_interfaces=[
            compute_v1.NetworkInterface(
                network=names.network_url(target.project, target.network),
                subnetwork=names.subnet_url(target.project, target.region, target.subnet),
                # ephemeral external IP for egress only; see the docstring for why not Cloud NAT
                access_configs=[
                    compute_v1.AccessConfig(
                        name="build-egress", type_="ONE_TO_ONE_NAT", network_tier="PREMIUM"
                    )
                ],
            )
        ],
        shielded_instance_config=plan.desired_shielded(),  # secure boot, vTPM, integrity monitoring
        # the same hardening metadata as the appliance (one place: plan.py), with the bake script
        # The script is the bake wrapper around the appliance script; `pypapo-mode=bake` (render.py's
        # selector) makes even a bare run of the appliance script on this VM bake, never serve.
        metadata=compute_v1.Metadata(
            items=plan.metadata_items(
                {**plan.desired_metadata(render.render_bake_script(startup_script)), BAKE_MODE_KEY: "bake"}
            )
        ),
        service_accounts=[],  # no credentials on the builder
        can_ip_forward=False,
        deletion_protection=False,  # it must always be deletable by the clean-up
        scheduling=compute_v1.Scheduling(automatic_restart=True, on_host_maintenance="MIGRATE"),
    )


# What this pypapo's startup script needs an image to hold already: an appliance has no egress to
# install a missing package. Bump it when the baked package set grows. 2: nginx's njs module (the page
# guard); images baked before it carry no label (format 1).
APPLIANCE_FORMAT = 2
FORMAT_LABEL = "pypapo-format"


def require_bootable(img: compute_v1.Image, why: str = "roll out") -> None:
    """Refuse, before anything is deleted, an image this version's startup script cannot boot."""
    if "pypapo-base" not in img.labels:
        return  # not baked by pypapo (an image family of your own): yours to vouch for
    label = img.labels.get(FORMAT_LABEL, "1")
    found = int(label) if label.isdigit() else 1
    if found < APPLIANCE_FORMAT:
        raise PypapoError(
            f"cannot {why} {img.name}: it was baked by an older pypapo (image format {found}, this version"
            f" needs {APPLIANCE_FORMAT}: nginx's njs module for the page guard) and the appliance has no"
            " egress to install what is missing; run `provision image build` first, then `provision rollout`"
        )


def golden_image(
    target: ImageTarget, name: str, disk: str, now: dt.datetime, versions: dict[str, str]
) -> compute_v1.Image:
    gcsfuse = versions.get(guest.Key.GCSFUSE_VERSION, "unknown")
    nginx = versions.get(guest.Key.NGINX_VERSION, "unknown")
    return compute_v1.Image(
        name=name,
        family=target.family,
        description=f"pypapo appliance, Debian 12, gcsfuse {gcsfuse}, nginx {nginx}, built {now:%Y-%m-%d}",
        source_disk=names.disk_link(target.project, target.zone, disk),
        storage_locations=[target.region],  # next to the appliance; images are global resources
        labels={
            "pypapo-build-date": now.astimezone(dt.UTC).strftime("%Y-%m-%d"),
            "pypapo-gcsfuse": label_value(gcsfuse),
            "pypapo-nginx": label_value(nginx),
            "pypapo-base": "debian-12",
            FORMAT_LABEL: str(APPLIANCE_FORMAT),
        },
        guest_os_features=[compute_v1.GuestOsFeature(type_=f) for f in GUEST_OS_FEATURES],
    )


# ------------------------------------------------------------------------------------------ deprecation


@dataclass(frozen=True)
class Deprecation:
    image: str
    state: str  # ACTIVE, DEPRECATED or OBSOLETE
    request: compute_v1.DeprecateImageRequest


def image_state(img: compute_v1.Image) -> str:
    return img.deprecated.state if "deprecated" in img and img.deprecated.state else "ACTIVE"


def newest_first(images: Iterable[compute_v1.Image]) -> list[compute_v1.Image]:
    """Order by creation time, never by name: a renamed or hand-made image must not jump the queue."""
    return sorted(images, key=lambda i: parse_timestamp(i.creation_timestamp), reverse=True)


def plan_deprecations(
    project: str,
    images: Iterable[compute_v1.Image],
    new_image: str,
    keep: int,
    protect: Iterable[str] = (),
) -> list[Deprecation]:
    """Deprecation requests after `new_image` joined the family.

    Policy: the newest image stays ACTIVE (what the family resolves to); the next `keep - 1` become
    DEPRECATED with `replacement` = the new image: still usable for `provision rollback`, but no longer
    what the family resolves to. Older ones become OBSOLETE: no instance can be created from them any
    more (an unpatched image cannot come back by accident) while they stay inspectable; deleting them is
    a person's decision (`gcloud compute images delete`). The image the appliance runs (`protect`) is
    never made OBSOLETE, so a rollback target always exists. Only changes are requested.
    """
    ordered = newest_first(images)
    family_names = [i.name for i in ordered]
    if new_image not in family_names:
        raise PypapoError(f"image {new_image} is not in the family listing; re-run `provision image build`")
    replacement = names.image_link(project, new_image)
    protected = set(protect)
    out: list[Deprecation] = []
    others = [i for i in ordered if i.name != new_image]
    for rank, img in enumerate(others, start=2):  # the new image is rank 1
        want = "DEPRECATED" if rank <= keep or img.name in protected else "OBSOLETE"
        if image_state(img) == want and img.deprecated.replacement.endswith(f"/images/{new_image}"):
            continue
        out.append(Deprecation(img.name, want, deprecate_request(project, img.name, want, replacement)))
    return out


def deprecate_request(
    project: str, image: str, state: str, replacement: str = ""
) -> compute_v1.DeprecateImageRequest:
    status = compute_v1.DeprecationStatus(state=state)
    if replacement and state != "ACTIVE":
        status.replacement = replacement
    return compute_v1.DeprecateImageRequest(project=project, image=image, deprecation_status_resource=status)


# ----------------------------------------------------------------------------------------- build plan


def build_steps(target: ImageTarget, now: dt.datetime, startup_script: str) -> tuple[str, str, list[Step]]:
    """The build pipeline as reviewable steps: (builder name, image name, steps)."""
    builder = builder_name(target.family, now)
    image = image_name(target.family, now)
    p, z, ip = target.project, target.zone, target.image_project
    preview = golden_image(target, image, builder, now, {k: "<from bake>" for k in guest.VERSION_KEYS})
    steps = [
        Step(
            method="compute.instances.insert",
            request=compute_v1.InsertInstanceRequest(
                project=p, zone=z, instance_resource=builder_instance(target, builder, startup_script)
            ),
            why="create the builder VM (Debian 12, Shielded VM, ephemeral IP, egress only,"
            " no service account)",
        ),
        Step(
            method="compute.instances.getGuestAttributes",
            request=compute_v1.GetGuestAttributesInstanceRequest(
                project=p, zone=z, instance=builder, query_path=guest.QUERY_PATH
            ),
            why=f"wait until the bake reports {guest.NAMESPACE}/{guest.Key.BAKE}={guest.BAKE_DONE}"
            f" (at most {BAKE_TIMEOUT_S // 60} min)",
        ),
        Step(
            method="compute.instances.stop",
            request=compute_v1.StopInstanceRequest(project=p, zone=z, instance=builder),
            why="stop the builder (a consistent disk)",
        ),
        Step(
            method="compute.images.insert",
            request=compute_v1.InsertImageRequest(project=ip, image_resource=preview, force_create=False),
            why=f"create image {image} in family {target.family} from the builder's disk",
            note="labels pypapo-gcsfuse and pypapo-nginx are filled from the bake's guest attributes",
        ),
        Step(
            method="compute.images.deprecate",
            request=deprecate_request(ip, "<each older image>", "DEPRECATED", names.image_link(ip, image)),
            why=f"deprecate older images of {target.family}: newest {target.keep} kept for rollback "
            "(DEPRECATED, replacement = the new image), older ones OBSOLETE",
        ),
        Step(
            method="compute.instances.delete",
            request=compute_v1.DeleteInstanceRequest(project=p, zone=z, instance=builder),
            why="always, even after a failure: delete the builder (its boot disk is auto-deleted)",
        ),
        Step(
            method="compute.disks.delete",
            request=compute_v1.DeleteDiskRequest(project=p, zone=z, disk=builder),
            why="always: delete the builder's disk if it outlived the instance (NotFound is success)",
        ),
    ]
    return builder, image, steps


# ------------------------------------------------------------------------------- rollout and rollback


def with_image(spec: compute_v1.Instance, image: str) -> compute_v1.Instance:
    """The cloud helper's serving-instance spec with only the boot image changed (hardening stays there)."""
    new = compute_v1.Instance(compute_v1.Instance.to_dict(spec))  # a deep copy, the spec stays untouched
    boots = [d for d in new.disks if d.boot]
    if len(boots) != 1 or "initialize_params" not in boots[0]:
        raise PypapoError("the serving instance spec has no boot disk created from an image; report this bug")
    boots[0].initialize_params.source_image = image
    return new


def rollout_steps(target: ImageTarget, spec: compute_v1.Instance, image: str) -> list[Step]:
    p, z, name = target.project, target.zone, spec.name
    resource = names.tunnel_resource(p, z, name)
    return [
        Step(
            method="iap.getIamPolicy",
            request={"resource": resource},
            why=f"read the per-instance IAP tunnel policy of {name} (deleting the instance may drop it)",
        ),
        Step(
            method="compute.instances.getIamPolicy",
            request=compute_v1.GetIamPolicyInstanceRequest(
                project=p, zone=z, resource=name, options_requested_policy_version=3
            ),
            why="read the instance's own IAM policy"
            " (`provision grant --role reader` puts compute.viewer there)",
        ),
        Step(
            method="compute.instances.setDeletionProtection",
            request=compute_v1.SetDeletionProtectionInstanceRequest(
                project=p, zone=z, resource=name, deletion_protection=False
            ),
            why="turn off deletion protection",
        ),
        Step(
            method="compute.instances.delete",
            request=compute_v1.DeleteInstanceRequest(project=p, zone=z, instance=name),
            why=f"delete {name} (its boot disk goes with it; the bucket and packages are untouched)",
        ),
        Step(
            method="compute.instances.insert",
            request=compute_v1.InsertInstanceRequest(
                project=p, zone=z, instance_resource=with_image(spec, image)
            ),
            why=f"recreate {name} from {image} (the `provision create` spec, only the image changed;"
            " deletion protection back on)",
        ),
        Step(
            method="iap.setIamPolicy + compute.instances.setIamPolicy",
            request={"resource": resource, "policy": "<the bindings read in the first two steps>"},
            why="re-apply both policies read before, with the new etags"
            " (users' tunnel commands keep working)",
        ),
        Step(
            method="compute.instances.getGuestAttributes",
            request=compute_v1.GetGuestAttributesInstanceRequest(
                project=p, zone=z, instance=name, query_path=guest.QUERY_PATH
            ),
            why=f"wait until the appliance reports {guest.NAMESPACE}/{guest.Key.READY}={guest.READY_TRUE}",
        ),
    ]


def newest_usable(images: Sequence[compute_v1.Image]) -> compute_v1.Image | None:
    """What the family resolves to: the newest image that is not deprecated."""
    for img in newest_first(images):
        if image_state(img) == "ACTIVE" and img.status in ("READY", ""):
            return img
    return None


def rollback_target(images: Sequence[compute_v1.Image], current: str | None) -> compute_v1.Image:
    """The image just older than the one the appliance runs (by creation time)."""
    ordered = [i for i in newest_first(images) if i.status in ("READY", "")]
    family_names = [i.name for i in ordered]
    if current is None or current not in family_names:
        raise PypapoError(
            "cannot tell which image of the family the appliance runs; use `provision image list` and "
            "`provision rollout` once to put it on a family image"
        )
    idx = family_names.index(current)
    if idx + 1 >= len(ordered):
        raise PypapoError(f"{current} is the oldest image in the family: there is nothing to roll back to")
    return ordered[idx + 1]


def rollback_deprecations(
    project: str, images: Sequence[compute_v1.Image], target_image: str, bad: str
) -> list[compute_v1.DeprecateImageRequest]:
    """Make the rollback target ACTIVE again and the bad image DEPRECATED, so the family (and the next
    `provision rollout`) resolves to the target until a newer build replaces it."""
    states = {i.name: image_state(i) for i in images}
    out = []
    if states.get(target_image) != "ACTIVE":
        out.append(deprecate_request(project, target_image, "ACTIVE"))
    if states.get(bad) != "DEPRECATED":
        out.append(deprecate_request(project, bad, "DEPRECATED", names.image_link(project, target_image)))
    return out


# ----------------------------------------------------------------------------------------- image list


@dataclass(frozen=True)
class ImageRow:
    name: str
    created: dt.datetime
    age_days: int
    state: str
    gcsfuse: str
    nginx: str
    serving: bool


def image_rows(images: Sequence[compute_v1.Image], serving: str | None, now: dt.datetime) -> list[ImageRow]:
    rows = []
    for img in newest_first(images):
        created = parse_timestamp(img.creation_timestamp)
        rows.append(
            ImageRow(
                name=img.name,
                created=created,
                age_days=max(0, (now - created).days),
                state=image_state(img),
                gcsfuse=img.labels.get("pypapo-gcsfuse", "-"),
                nginx=img.labels.get("pypapo-nginx", "-"),
                serving=img.name == serving,
            )
        )
    return rows

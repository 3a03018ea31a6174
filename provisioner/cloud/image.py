"""The golden-image pipeline: build, deprecate, rollout, rollback and the unattended schedule.

The serving VM has no egress, so its patches arrive as a new image. This module is pure: it plans the
steps and builds the real request objects (compute_v1, scheduler_v1, cloudbuild_v1). The orchestration
functions (`run_build`, `run_rollout`, `run_rollback`) take the thin I/O layer (`cloud.gcp.images`) as
an argument, so every step and every failure path is testable without Google Cloud.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import compute_v1, scheduler_v1
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from provisioner.appliance import guest, render
from provisioner.cloud import names, plan
from provisioner.cloud.apply import wait_for_guest
from provisioner.cloud.plan import Step, request_json
from provisioner.errors import PypapoError
from provisioner.repo import layout, location

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

SCHEDULER_JOB_ID = "pypapo-image-rebuild"
INVOKER_SA_ID = "pypapo-image-scheduler"
BUILD_SA_ID = "pypapo-image-build"
CLI_IMAGE = "gcr.io/google.com/cloudsdktool/google-cloud-cli:slim"
PYTHON_IMAGE = "python:3.12-slim"

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


# ------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ImageTarget:
    """Where the pipeline works. Built from the shared Settings by the command layer."""

    project: str
    zone: str
    network: str = "default"
    subnet: str = "default"
    family: str = DEFAULT_FAMILY
    instance: str = "pypapo"
    keep: int = DEFAULT_KEEP
    builder_machine_type: str = BUILDER_MACHINE_TYPE
    region: str = ""
    image_project: str = ""  # where the family lives (default: project)

    def __post_init__(self) -> None:
        if not self.image_project:
            object.__setattr__(self, "image_project", self.project)
        if not self.region:
            object.__setattr__(self, "region", self.zone.rsplit("-", 1)[0])
        if not _NAME_RE.match(self.family) or len(self.family) > 39:
            raise PypapoError(
                f"image family {self.family!r} must be lowercase letters, digits and dashes, at most 39 "
                "characters (builder and image names add a timestamp); fix --image-family"
            )
        if self.keep < 1:
            raise PypapoError("--keep must be at least 1 (the image the appliance runs)")


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


# ------------------------------------------------------------------------------------- the thin layer


class ImageApi(Protocol):
    """What the pipeline needs from Google Cloud; `cloud.gcp.images.ComputeImageApi` implements it.

    Mutating calls wait for their operation; they raise google.api_core exceptions or PypapoError.
    """

    def insert_instance(self, request: compute_v1.InsertInstanceRequest) -> None: ...
    def get_instance(self, project: str, zone: str, name: str) -> compute_v1.Instance | None: ...
    def guest_attributes(self, request: compute_v1.GetGuestAttributesInstanceRequest) -> dict[str, str]: ...
    def stop_instance(self, request: compute_v1.StopInstanceRequest) -> None: ...
    def delete_instance(self, request: compute_v1.DeleteInstanceRequest) -> None: ...
    def delete_disk(self, request: compute_v1.DeleteDiskRequest) -> None: ...
    def get_disk(self, project: str, zone: str, name: str) -> compute_v1.Disk | None: ...
    def set_deletion_protection(self, request: compute_v1.SetDeletionProtectionInstanceRequest) -> None: ...
    def serial_output(self, project: str, zone: str, name: str) -> str: ...
    def insert_image(self, request: compute_v1.InsertImageRequest) -> None: ...
    def list_images(self, project: str, family: str) -> list[compute_v1.Image]: ...
    def deprecate_image(self, request: compute_v1.DeprecateImageRequest) -> None: ...
    def get_iap_policy(self, resource: str) -> Any: ...
    def set_iap_policy(self, resource: str, policy: Any) -> None: ...
    def get_instance_policy(self, project: str, zone: str, name: str) -> compute_v1.Policy | None: ...
    def set_instance_policy(self, project: str, zone: str, name: str, policy: compute_v1.Policy) -> None: ...


Clock = Callable[[], float]
Sleep = Callable[[float], None]
Report = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def read_guest(api: ImageApi, request: compute_v1.GetGuestAttributesInstanceRequest) -> dict[str, str]:
    try:
        return api.guest_attributes(request)
    except gexc.NotFound:
        return {}  # nothing written yet: the namespace does not exist before the first write


def cleanup_builder(api: ImageApi, project: str, zone: str, builder: str) -> list[str]:
    """Delete the builder and its disk; NotFound counts as done. Returns the problems, never raises."""
    problems: list[str] = []
    for call, request in (
        (api.delete_instance, compute_v1.DeleteInstanceRequest(project=project, zone=zone, instance=builder)),
        (api.delete_disk, compute_v1.DeleteDiskRequest(project=project, zone=zone, disk=builder)),
    ):
        try:
            call(request)
        except gexc.NotFound:
            pass
        except Exception as exc:  # clean-up must try every resource and report, not stop at the first
            problems.append(f"{type(request).__name__.removesuffix('Request')} {builder}: {_one_line(exc)}")
    return problems


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@dataclass
class BuildResult:
    image: str
    builder: str
    versions: dict[str, str] = field(default_factory=dict)
    deprecations: list[Deprecation] = field(default_factory=list)


def run_build(
    api: ImageApi,
    target: ImageTarget,
    now: dt.datetime,
    startup_script: str,
    protect: Iterable[str] = (),
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    report: Report = _noop,
    save_log: Callable[[str, str], str] | None = None,
) -> BuildResult:
    """Run the build. The builder and its disk are deleted whatever step fails; a failure surfaces as one
    PypapoError line naming the step, and a clean-up problem is added to that line, never hides it."""
    import time

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    builder, image, steps = build_steps(target, now, startup_script)
    p, z = target.project, target.zone
    result = BuildResult(image=image, builder=builder)
    step = ""
    failure: BaseException | None = None
    try:
        step = "create the builder"
        report(f"creating builder {builder}")
        api.insert_instance(steps[0].request)
        step = "wait for the bake"
        report("waiting for the bake (apt upgrade, gcsfuse, nginx, units)")
        try:
            attrs = wait_for_guest(
                lambda: read_guest(api, steps[1].request),
                guest.baking,
                what=f"the bake on builder {builder}",
                console="",  # the builder is deleted next: its serial log is saved instead
                timeout=BAKE_TIMEOUT_S,
                progress=report,
                goal="finish",
                poll_interval=10.0,
                sleep=sleep,
                clock=clock,
            )
        except PypapoError as exc:
            path = _keep_serial_log(api, p, z, builder, save_log)
            if path:  # the serial log dies with the builder: keep it for the person
                raise PypapoError(f"{exc} (serial console log saved to {path})") from exc
            raise
        result.versions = guest.versions(attrs)
        step = "stop the builder"
        report(f"stopping builder {builder}")
        api.stop_instance(steps[2].request)
        step = "create the image"
        report(
            f"creating image {image} (gcsfuse {result.versions[guest.Key.GCSFUSE_VERSION]},"
            f" nginx {result.versions[guest.Key.NGINX_VERSION]})"
        )
        api.insert_image(
            compute_v1.InsertImageRequest(
                project=target.image_project,
                image_resource=golden_image(target, image, builder, now, result.versions),
                force_create=False,
            )
        )
        step = "deprecate older images"
        family = api.list_images(target.image_project, target.family)
        result.deprecations = plan_deprecations(target.image_project, family, image, target.keep, protect)
        for dep in result.deprecations:
            report(f"marking {dep.image} {dep.state}")
            api.deprecate_image(dep.request)
    except BaseException as exc:
        failure = exc
    finally:
        report(f"deleting builder {builder} and its disk")
        problems = cleanup_builder(api, p, z, builder)
    if isinstance(failure, KeyboardInterrupt | SystemExit):
        raise failure
    cleanup = (
        f"clean-up failed too ({'; '.join(problems)}): run "
        f"`gcloud compute instances delete {builder} --zone={z} --project={p}`"
        if problems
        else f"builder {builder} and its disk deleted"
    )
    if failure is not None:
        made = f"image {image} was created, but " if step == "deprecate older images" else ""
        raise PypapoError(
            f"image build failed at '{step}': {made}{_one_line(failure)}; {cleanup}"
        ) from failure
    if problems:
        raise PypapoError(f"image {image} was created, but {cleanup}")
    return result


def _keep_serial_log(
    api: ImageApi, project: str, zone: str, builder: str, save_log: Callable[[str, str], str] | None
) -> str | None:
    if save_log is None:
        return None
    try:
        return save_log(builder, api.serial_output(project, zone, builder))
    except (gexc.GoogleAPICallError, OSError):
        return None


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


def serving_image(api: ImageApi, target: ImageTarget) -> str | None:
    """Name of the image the appliance's boot disk was created from, or None (no appliance, other image)."""
    inst = api.get_instance(target.project, target.zone, target.instance)
    if inst is None:
        return None
    for d in inst.disks:
        if d.boot and d.source:
            disk = api.get_disk(target.project, target.zone, d.source.rsplit("/", 1)[-1])
            if disk is not None and disk.source_image:
                return disk.source_image.rsplit("/", 1)[-1]
    return None


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


def run_rollout(
    api: ImageApi,
    target: ImageTarget,
    spec: compute_v1.Instance,
    image: str,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    report: Report = _noop,
    ready_timeout: float = READY_TIMEOUT_S,
) -> None:
    """Recreate the appliance from `image` under the same name, keeping its IAP tunnel grants.

    Deleting an instance may drop the IAM policy on its iap_tunnel resource, so the policy is read first
    and re-applied to the new instance (with the new instance's etag). Any failure is one PypapoError line
    naming the step and the way back (`provision rollback`).
    """
    import time

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    steps = rollout_steps(target, spec, image)
    p, z, name = target.project, target.zone, spec.name
    resource = names.tunnel_resource(p, z, name)
    short = image.rsplit("/", 1)[-1]
    tunnel_policy = instance_policy = None
    deleted = restored = False
    step = "read the appliance"
    try:
        if api.get_instance(p, z, name) is not None:
            step = "read the IAP tunnel policy"
            report(f"reading the IAP tunnel policy and IAM policy of {name}")
            tunnel_policy = api.get_iap_policy(resource)
            instance_policy = api.get_instance_policy(p, z, name)
            step = "turn off deletion protection"
            report("turning off deletion protection")
            api.set_deletion_protection(steps[2].request)
            step = "delete the old instance"
            report(f"deleting {name}")
            api.delete_instance(steps[3].request)
            deleted = True
        step = "create the new instance"
        report(f"creating {name} from {short}")
        api.insert_instance(steps[4].request)
        # Re-apply before waiting: even an unhealthy appliance must be reachable to be looked at.
        step = "re-apply the IAM policies"
        if _has_bindings(tunnel_policy):
            report("re-applying the IAP tunnel grants")
            api.set_iap_policy(resource, tunnel_policy)
        if _has_bindings(instance_policy):
            report("re-applying the instance's IAM policy")
            api.set_instance_policy(p, z, name, instance_policy)
        restored = True
        step = "wait until ready"
        report("waiting until the appliance is ready and healthy")
        wait_for_guest(
            lambda: read_guest(api, steps[6].request),
            guest.serving,
            what=f"the appliance on {name}",
            console=names.serial_console_command(p, z, name),
            timeout=ready_timeout,
            progress=report,
            sleep=sleep,
            clock=clock,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not deleted and step != "create the new instance":
            back = "the appliance was not touched"
        elif step == "wait until ready":
            back = "`provision rollback` returns to the previous image"
        else:
            back = "re-run `provision rollout` or `provision rollback`"
        if deleted and not restored and (_has_bindings(tunnel_policy) or _has_bindings(instance_policy)):
            members = sorted(_members(tunnel_policy) | _members(instance_policy))
            back += f"; then re-grant with `provision grant MEMBER --role reader` for: {', '.join(members)}"
        raise PypapoError(
            f"rollout of {name} to {short} failed at '{step}': {_one_line(exc)}; {back}"
        ) from exc


def _has_bindings(policy: Any) -> bool:
    return policy is not None and any(list(b.members) for b in policy.bindings)


def _members(policy: Any) -> set[str]:
    return {m for b in policy.bindings for m in b.members} if policy is not None else set()


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


# -------------------------------------------------------------------------------------------- schedule

_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = (
    {},
    {},
    {},
    {
        m: i
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
        )
    },
    {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
)
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def validate_cron(expr: str) -> str:
    """A unix-cron expression of exactly 5 fields (what Cloud Scheduler accepts), checked value by value."""
    fields = expr.split()
    if len(fields) != 5:
        raise PypapoError(
            f"--cron {expr!r} has {len(fields)} fields; Cloud Scheduler takes 5 "
            '(minute hour day-of-month month day-of-week), e.g. "0 3 * * 1"'
        )
    for text, (lo, hi), aliases, what in zip(fields, _CRON_RANGES, _CRON_NAMES, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise PypapoError(f"--cron {expr!r}: bad step {step!r} in the {what} field")
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(bounds):
                raise PypapoError(f"--cron {expr!r}: cannot read {part!r} in the {what} field")
            values = []
            for b in bounds:
                v = aliases.get(b.lower()) if not b.isdigit() else int(b)
                if v is None or not lo <= v <= hi:
                    raise PypapoError(
                        f"--cron {expr!r}: {b!r} is out of range {lo}-{hi} for the {what} field"
                    )
                values.append(v)
            if len(values) == 2 and values[0] > values[1]:
                raise PypapoError(f"--cron {expr!r}: range {base!r} runs backwards in the {what} field")
    return " ".join(fields)


def validate_time_zone(tz: str) -> str:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PypapoError(
            f"--time-zone {tz!r} is not an IANA time zone name (e.g. Etc/UTC, Europe/Berlin)"
        ) from None
    return tz


@dataclass(frozen=True)
class RoleGrant:
    member: str
    role: str
    resource: str  # project, bucket or service account it is granted on
    why: str


def schedule_roles(project: str, bucket: str, appliance_sa: str) -> list[RoleGrant]:
    """Every role the unattended rebuild needs, on the narrowest resource that works."""
    invoker = f"serviceAccount:{names.service_account_email(project, INVOKER_SA_ID)}"
    build = f"serviceAccount:{names.service_account_email(project, BUILD_SA_ID)}"
    return [
        RoleGrant(
            invoker,
            "roles/cloudbuild.builds.editor",
            f"projects/{project}",
            "create the build (cloudbuild.builds.create); the narrowest predefined role holding it",
        ),
        RoleGrant(
            invoker,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{names.service_account_email(project, BUILD_SA_ID)}",
            "start a build that runs as the build service account (actAs on that account only)",
        ),
        RoleGrant(
            build,
            "roles/compute.instanceAdmin.v1",
            f"projects/{project}",
            "create, stop and delete the builder; replace the appliance; read guest attributes",
        ),
        RoleGrant(
            build,
            "roles/compute.storageAdmin",
            f"projects/{project}",
            "create and deprecate images (compute.images.create/deprecate) from the builder's disk",
        ),
        RoleGrant(
            build,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{appliance_sa}",
            "recreate the appliance running as its service account (actAs on that account only)",
        ),
        RoleGrant(
            build,
            "roles/iap.admin",
            f"projects/{project}",
            "read and re-apply the appliance's per-instance IAP tunnel policy during rollout",
        ),
        RoleGrant(
            build,
            "roles/storage.objectViewer",
            f"gs://{bucket}",
            "copy the pinned pypapo wheel out of the index bucket",
        ),
        RoleGrant(
            build,
            "roles/logging.logWriter",
            f"projects/{project}",
            "write the build's logs (CLOUD_LOGGING_ONLY: no logs bucket to grant)",
        ),
    ]


def wheel_object(prefix: str, version: str) -> str:
    """The pypapo wheel the unattended build installs: its object in the index bucket, below the prefix."""
    return location.object_name(prefix, layout.dist_object("pypapo", f"pypapo-{version}-py3-none-any.whl"))


def rebuild_build(
    target: ImageTarget, bucket: str, prefix: str, version: str, cli_args: Sequence[str] = ()
) -> cloudbuild_v1.Build:
    """The Cloud Build build that rebuilds the image and rolls the appliance onto it.

    Where pypapo comes from: the wheel is copied straight from the index *bucket* (gs://) by object name,
    pinned to the version that created the schedule. Not `pip install pypapo` from PyPI (someone else may
    own that name: dependency confusion), and not through the IAP tunnel (that would need the very
    appliance this build replaces to be healthy, and gcloud plus a tunnel inside the step).
    """
    wheel = wheel_object(prefix, version)
    local = "/workspace/" + wheel.rsplit("/", 1)[-1]
    common = [f"--project={target.project}", f"--zone={target.zone}", *cli_args]
    flags = " ".join(shlex.quote(a) for a in common)
    script = (
        "set -eu\n"
        "python -m venv /workspace/venv\n"
        f"/workspace/venv/bin/pip install --quiet --disable-pip-version-check {shlex.quote(local)}\n"
        f"/workspace/venv/bin/provision image build {flags}\n"
        f"/workspace/venv/bin/provision rollout --yes {flags}\n"
    )
    return cloudbuild_v1.Build(
        steps=[
            cloudbuild_v1.BuildStep(
                id="fetch-pypapo",
                name=CLI_IMAGE,
                entrypoint="gcloud",
                args=["storage", "cp", location.gs_url(bucket, name=wheel), "/workspace/"],
            ),
            cloudbuild_v1.BuildStep(
                id="rebuild-and-rollout", name=PYTHON_IMAGE, entrypoint="bash", args=["-c", script]
            ),
        ],
        timeout=duration_pb2.Duration(seconds=(BAKE_TIMEOUT_S + READY_TIMEOUT_S) + 30 * 60),
        service_account=names.service_account_path(
            target.project, names.service_account_email(target.project, BUILD_SA_ID)
        ),
        options=cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
        tags=["pypapo", "golden-image"],
    )


def builds_create_uri(project: str, region: str) -> str:
    return f"https://cloudbuild.googleapis.com/v1/projects/{project}/locations/{region}/builds"


def job_name(project: str, region: str) -> str:
    return f"projects/{project}/locations/{region}/jobs/{SCHEDULER_JOB_ID}"


def scheduler_job(
    target: ImageTarget, cron: str, time_zone: str, build: cloudbuild_v1.Build
) -> scheduler_v1.Job:
    """The Cloud Scheduler job: an authenticated POST of the build to Cloud Build's builds.create."""
    body = request_json(build).encode()
    return scheduler_v1.Job(
        name=job_name(target.project, target.region),
        description="pypapo: rebuild the golden image and roll the appliance onto it [image schedule]",
        schedule=validate_cron(cron),
        time_zone=validate_time_zone(time_zone),
        http_target=scheduler_v1.HttpTarget(
            uri=builds_create_uri(target.project, target.region),
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=body,
            oauth_token=scheduler_v1.OAuthToken(
                service_account_email=names.service_account_email(target.project, INVOKER_SA_ID),
                scope=names.CLOUD_PLATFORM_SCOPE,
            ),
        ),
        # builds.create returns at once (a long-running operation); never start a second rebuild
        retry_config=scheduler_v1.RetryConfig(retry_count=0),
        attempt_deadline=duration_pb2.Duration(seconds=60),
    )


def schedule_steps(
    target: ImageTarget,
    job: scheduler_v1.Job,
    roles: Sequence[RoleGrant],
    bucket: str,
    prefix: str,
    version: str,
) -> list[Step]:
    p = target.project
    steps = [
        Step(
            method="iam.serviceAccounts.create",
            request={"name": f"projects/{p}", "accountId": sa, "serviceAccount": {"displayName": title}},
            why=f"create service account {names.service_account_email(p, sa)} (no keys)",
        )
        for sa, title in (
            (INVOKER_SA_ID, "pypapo: starts the scheduled image rebuild"),
            (BUILD_SA_ID, "pypapo: runs the image rebuild and rollout"),
        )
    ]
    steps += [
        Step(
            method="setIamPolicy (add binding)",
            request={"resource": g.resource, "member": g.member, "role": g.role},
            why=f"grant {g.role} on {g.resource}",
            note=g.why,
        )
        for g in roles
    ]
    steps.append(
        Step(
            method="storage.objects.get",
            request={"bucket": bucket, "object": wheel_object(prefix, version)},
            why=f"check that {location.gs_url(bucket, name=wheel_object(prefix, version))} exists"
            " (publish pypapo into the index first)",
        )
    )
    steps.append(
        Step(
            method="cloudscheduler.jobs.create|patch",
            request=scheduler_v1.CreateJobRequest(parent=f"projects/{p}/locations/{target.region}", job=job),
            why="create or update the Cloud Scheduler job",
        )
    )
    return steps


def job_body(job: scheduler_v1.Job) -> dict[str, Any]:
    return json.loads(job.http_target.body.decode())

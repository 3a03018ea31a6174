"""The image pipelines carried out: `run_build`, `run_rollout` over the thin I/O layer (`ImageApi`,
`cloud.gcp.images`), so every step and every failure path is testable without Google Cloud.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.appliance import guest
from provisioner.cloud import names
from provisioner.cloud.apply import wait_for_guest
from provisioner.cloud.gcp import policy as iam_policy
from provisioner.cloud.image.plan import (
    BAKE_TIMEOUT_S,
    READY_TIMEOUT_S,
    Deprecation,
    ImageTarget,
    build_steps,
    golden_image,
    plan_deprecations,
    rollout_steps,
)
from provisioner.errors import PypapoError

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
        if iam_policy.has_bindings(tunnel_policy):
            report("re-applying the IAP tunnel grants")
            api.set_iap_policy(resource, tunnel_policy)
        if iam_policy.has_bindings(instance_policy):
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
        members = sorted(_everyone(tunnel_policy) | _everyone(instance_policy))
        if deleted and not restored and members:
            back += f"; then re-grant with `provision grant MEMBER --role reader` for: {', '.join(members)}"
        raise PypapoError(
            f"rollout of {name} to {short} failed at '{step}': {_one_line(exc)}; {back}"
        ) from exc


def _everyone(policy: Any) -> set[str]:
    return set().union(*iam_policy.members(policy).values()) if policy is not None else set()

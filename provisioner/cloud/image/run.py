"""The image pipelines carried out: `run_build`, `run_rollout` over the one thin Compute layer
(`cloud.gcp.compute.Compute`) and, for the tunnel grants a rollout carries over, `cloud.gcp.iam.Iam`;
tests run them over the Compute double, so every step and every failure path is testable without
Google Cloud.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.appliance import guest
from provisioner.cloud import names
from provisioner.cloud import plan as planlib
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

if TYPE_CHECKING:
    from provisioner.cloud.gcp.compute import Compute
    from provisioner.cloud.gcp.iam import Iam

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Report = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def read_guest(api: Compute, request: compute_v1.GetGuestAttributesInstanceRequest) -> dict[str, str]:
    """`{key: value}` under pypapo/; {} before the guest wrote anything (the API answers 404)."""
    return planlib.guest_values(api.get_guest_attributes(request))


def cleanup_builder(api: Compute, zone: str, builder: str) -> list[str]:
    """Delete the builder and its disk; gone counts as done. Returns the problems, never raises."""
    problems: list[str] = []
    for call, request in (
        (
            api.delete_instance,
            compute_v1.DeleteInstanceRequest(project=api.project, zone=zone, instance=builder),
        ),
        (api.delete_disk, compute_v1.DeleteDiskRequest(project=api.project, zone=zone, disk=builder)),
    ):
        try:
            call(request)
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
    api: Compute,
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
            path = _keep_serial_log(api, z, builder, save_log)
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
        problems = cleanup_builder(api, z, builder)
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
    api: Compute, zone: str, builder: str, save_log: Callable[[str, str], str] | None
) -> str | None:
    if save_log is None:
        return None
    try:
        return save_log(builder, api.serial_output(zone, builder))
    except (PypapoError, gexc.GoogleAPICallError, OSError):
        return None  # the bake's own failure is what the person needs; a missing log must not hide it


def serving_image(api: Compute, target: ImageTarget) -> str | None:
    """Name of the image the appliance's boot disk was created from, or None (no appliance, other image)."""
    inst = api.get_instance(target.zone, target.instance)
    if inst is None:
        return None
    for d in inst.disks:
        if d.boot and d.source:
            disk = api.get_disk(target.zone, d.source.rsplit("/", 1)[-1])
            if disk is not None and disk.source_image:
                return disk.source_image.rsplit("/", 1)[-1]
    return None


def run_rollout(
    api: Compute,
    iam: Iam,
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
        if api.get_instance(z, name) is not None:
            step = "read the IAP tunnel policy"
            report(f"reading the IAP tunnel policy and IAM policy of {name}")
            tunnel_policy = iam.get_tunnel_policy(resource)
            instance_policy = api.get_instance_iam_policy(z, name)
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
            iam.put_tunnel_policy(resource, tunnel_policy)
        if iam_policy.has_bindings(instance_policy):
            report("re-applying the instance's IAM policy")
            api.put_instance_policy(z, name, instance_policy)
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

"""The group mode carried out (`--replicas N`): observe, create (and migrate from the single VM), wait
until the group serves, roll out, roll back, status and destroy, over the same thin layer as `apply`.

No API call happens here either: reads and writes go through `Cloud.compute` (and `Cloud.iam` for the
old VM's tunnel readers); what to send is `group_plan`'s and `group`'s. Waiting reads the group's
managed instances (`group.rollout_progress`) and, for a new instance that is not healthy yet, its
guest attributes, so a startup script that reports `pypapo/error` stops the wait at the next poll
with its reason and the serial-console command, as it does for the single VM.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.cloud import compute_v1

from provisioner.appliance import guest
from provisioner.cloud import group, group_plan, names
from provisioner.cloud import plan as planlib
from provisioner.cloud.group_plan import GroupActual
from provisioner.cloud.progress import Progress, silent
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from provisioner.repo.location import gs_url

POLL_SECONDS = 10.0


def senders(compute: Any) -> dict[planlib.Method, Callable[[Any], object]]:
    """The group's plan methods and the thin-layer methods that send them (joined into `Cloud.senders`)."""
    M, c = planlib.Method, compute
    return {
        M.INSERT_INSTANCE_TEMPLATE: c.insert_instance_template,
        M.DELETE_INSTANCE_TEMPLATE: c.delete_instance_template,
        M.INSERT_HEALTH_CHECK: c.insert_health_check,
        M.UPDATE_HEALTH_CHECK: c.update_health_check,
        M.DELETE_HEALTH_CHECK: c.delete_health_check,
        M.INSERT_INSTANCE_GROUP: c.insert_region_instance_group_manager,
        M.PATCH_INSTANCE_GROUP: c.patch_region_instance_group_manager,
        M.RESIZE_INSTANCE_GROUP: c.resize_region_instance_group_manager,
        M.DELETE_INSTANCE_GROUP: c.delete_region_instance_group_manager,
        M.INSERT_BACKEND_SERVICE: c.insert_region_backend_service,
        M.DELETE_BACKEND_SERVICE: c.delete_region_backend_service,
        M.INSERT_ADDRESS: c.insert_address,
        M.DELETE_ADDRESS: c.delete_address,
        M.INSERT_FORWARDING_RULE: c.insert_forwarding_rule,
        M.DELETE_FORWARDING_RULE: c.delete_forwarding_rule,
    }


# --- what exists ---------------------------------------------------------------------------------------


def observe(cloud: Any, s: Settings, *, single_vm: compute_v1.Instance | None = None) -> GroupActual:
    """The group's resources as they are now (each read is one request; None where absent)."""
    c, gn = cloud.compute, group.group_names(s)
    manager = c.get_region_instance_group_manager(s.region, gn.group)
    family = c.get_image_from_family(s.image_project, s.image_family)
    members: list[str] = []
    if single_vm is not None:
        tunnel = cloud.iam.get_tunnel_members(names.tunnel_resource(s.project, s.zone, s.instance))
        members = sorted(tunnel.get(planlib.TUNNEL_ROLE, set()))
    return GroupActual(
        zones=c.get_region_zones(s.region),
        family_image=names.image_link(s.image_project, family.name) if family is not None else "",
        templates=[t for t in c.list_instance_templates() if group_plan.is_pypapo_template(s, t.name)],
        lb_health_check=c.get_health_check(gn.lb_health_check),
        autoheal_health_check=c.get_health_check(gn.autoheal_health_check),
        manager=manager,
        instances=(c.list_managed_instances(s.region, gn.group) or []) if manager is not None else [],
        backend_service=c.get_region_backend_service(s.region, gn.backend_service),
        address=c.get_address(s.region, gn.address),
        forwarding_rule=c.get_forwarding_rule(s.region, gn.forwarding_rule),
        allow_health_checks=c.get_firewall(gn.allow_health_checks),
        allow_lb_clients=c.get_firewall(gn.allow_lb_clients),
        old_vm_tunnel_members=members,
    )


def refuse_if_group(compute: Any, s: Settings) -> None:
    """Without `--replicas`, a command on a group deployment would act on a single VM beside the group
    (a rollout would create one, a destroy would delete the account the group runs as): refuse, naming
    the flag."""
    manager = compute.get_region_instance_group_manager(s.region, group.group_names(s).group)
    if manager is not None:
        raise PypapoError(
            f"pypapo runs as group {manager.name} of {manager.target_size} in {s.region} of {s.project}:"
            f" pass --replicas {manager.target_size} (or set PYPAPO_REPLICAS); without it this command"
            f" would act on a single VM {s.instance}"
        )


def _refuse_forgotten_lb_clients(s: Settings, actual: GroupActual | None) -> None:
    why = group_plan.forgotten_lb_clients(s, actual)
    if why is not None:
        raise PypapoError(why)


# --- waiting until the group serves --------------------------------------------------------------------


class RolloutFailed(PypapoError):
    """New instances did not turn healthy (or reported an error); the update was stopped."""


def _guest_attributes(
    cloud: Any, s: Settings, mi: compute_v1.ManagedInstance
) -> tuple[str, str, Mapping[str, str]]:
    name = mi.name or mi.instance.rsplit("/", 1)[-1]
    zone = group._zone_of(mi.instance)
    request = compute_v1.GetGuestAttributesInstanceRequest(
        project=s.project, zone=zone, instance=name, query_path=guest.QUERY_PATH
    )
    return name, zone, planlib.guest_values(cloud.compute.get_guest_attributes(request))


def _guest_report(cloud: Any, s: Settings, mi: compute_v1.ManagedInstance) -> tuple[str, str, guest.Report]:
    name, zone, attrs = _guest_attributes(cloud, s, mi)
    return name, zone, guest.serving(attrs)


@dataclass(frozen=True)
class Waited:
    progress: group.RolloutProgress
    seconds: float


def wait_group(
    cloud: Any,
    s: Settings,
    *,
    template: str,
    wanted: int,
    back_to: str = "",
    zones: int = 1,
    progress: Progress = silent,
    timeout: float | None = None,
    poll_interval: float = POLL_SECONDS,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Waited:
    """Poll the group until `wanted` instances run `template`, healthy and settled.

    Stops at the first poll that shows a new instance's startup script reporting `pypapo/error`, or a
    new instance still failing `/healthz` after the boot grace, or the time budget (`ready_timeout` per
    wave of one instance per zone). With `back_to`, the update is stopped first (`stop_update_request`):
    the old instances keep serving. Raises `RolloutFailed` naming the instance and its serial console.
    """
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    gn = group.group_names(s)
    waves = max(1, math.ceil(wanted / max(zones, 1)))
    budget = (s.ready_timeout * waves) if timeout is None else timeout
    start = clock()
    last = ""
    while True:
        instances = cloud.compute.list_managed_instances(s.region, gn.group) or []
        elapsed = clock() - start
        state = group.rollout_progress(instances, target_template=template, wanted=wanted, elapsed=elapsed)
        if state.phase is group.RolloutPhase.DONE:
            progress(f"  group {gn.group}: {state.detail} on {template} ({elapsed:.0f}s)")
            _warn_content(cloud, s, instances, template, progress)
            return Waited(state, elapsed)
        new = [mi for mi in instances if group._last(mi.version.instance_template) == template]
        for mi in new:
            if group._health(mi) == group.HEALTHY or (mi.instance_status or "") != "RUNNING":
                continue
            name, zone, report = _guest_report(cloud, s, mi)
            if report.state is guest.State.FAILED:
                _fail(
                    cloud,
                    s,
                    template,
                    back_to,
                    zones,
                    f"{name} ({zone}) reported an error: {report.detail}",
                    name,
                    zone,
                    progress,
                )
        if state.phase is group.RolloutPhase.FAILED:
            failing = [mi for mi in new if group._health(mi) in group.FAILING_HEALTH]
            first = failing[0] if failing else new[0]
            name, zone = first.name or first.instance.rsplit("/", 1)[-1], group._zone_of(first.instance)
            _fail(cloud, s, template, back_to, zones, state.detail, name, zone, progress)
        if state.detail != last:
            progress(f"  {state.detail} ({elapsed:.0f}s)")
            last = state.detail
        if elapsed >= budget:
            pending = [mi for mi in new if group._health(mi) != group.HEALTHY] or new or instances
            first = pending[0] if pending else None
            name = (first.name or first.instance.rsplit("/", 1)[-1]) if first is not None else gn.group
            zone = group._zone_of(first.instance) if first is not None else s.zone
            _fail(
                cloud,
                s,
                template,
                back_to,
                zones,
                f"not every instance was healthy on {template} within {budget:.0f}s ({state.detail})",
                name,
                zone,
                progress,
            )
        sleep(poll_interval)


def _warn_content(cloud: Any, s: Settings, instances: list[Any], template: str, progress: Progress) -> None:
    """The bucket's content as one new instance found it (every replica serves the same bucket): a
    broken conda channel is a warning naming the file and the fix, never a failed rollout."""
    from provisioner.cloud.apply import warn_content

    new = [mi for mi in instances if group._last(mi.version.instance_template) == template]
    if new:
        name, _, attrs = _guest_attributes(cloud, s, new[0])
        warn_content(name, attrs, progress)


def _fail(
    cloud: Any,
    s: Settings,
    template: str,
    back_to: str,
    zones: int,
    why: str,
    instance: str,
    zone: str,
    progress: Progress,
) -> None:
    console = names.serial_console_command(s.project, zone, instance)
    gn = group.group_names(s)
    if back_to:
        progress(f"  stopping the update: {gn.group} goes back to {back_to}, no old instance is replaced")
        cloud.compute.patch_region_instance_group_manager(
            group_plan.stop_update_request(s, back_to=back_to, zones=zones)
        )
        raise RolloutFailed(
            f"rollout of group {gn.group} to {template} stopped: {why}; the instances on {back_to} keep"
            f" serving; see `{console}`"
        )
    raise RolloutFailed(
        f"group {gn.group} on {template}: {why}; see `{console}`, then run `provision create"
        f" --replicas {s.replicas}` again (it converges)"
    )


# --- create (and the migration from a single VM) -------------------------------------------------------


def _part(plan: planlib.Plan, resources: list[planlib.ResourcePlan]) -> planlib.Plan:
    return planlib.Plan(plan.settings, plan.mode, plan.operation, resources)


def create(
    cloud: Any,
    s: Settings,
    *,
    script: str,
    progress: Progress = silent,
    wait: bool = True,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> planlib.Plan:
    """Make or reconcile the group and its load balancer; wait until it serves; only then delete a
    single VM of the same name (the migration). A second run sends nothing."""
    from provisioner.cloud import apply as deploy

    base = deploy.observe(cloud, s)
    _refuse_forgotten_lb_clients(s, base.group)
    plan = planlib.plan_create(s, base, startup_script=script)
    if not plan.changed:
        progress(f"nothing to change: group {s.instance} in {s.project} ({s.region}) matches the plan")
    else:
        deploy.check_org_policies(cloud, s, plan)
        kinds = [r.kind for r in plan.resources]
        if planlib.Kind.IMAGE in kinds:
            # Bake first, then plan again: the template pins the image the bake made.
            head = plan.resources[: kinds.index(planlib.Kind.IMAGE) + 1]
            deploy.apply(
                cloud,
                _part(plan, head),
                progress,
                bake=lambda: deploy.bake_first_image(cloud, s, script, progress, sleep, clock),
            )
            base = deploy.observe(cloud, s)
            plan = planlib.plan_create(s, base, startup_script=script)
        serving = [r for r in plan.resources if r.kind is not planlib.Kind.INSTANCE]
        sent = deploy.apply(cloud, _part(plan, serving), progress)
        clients = group.group_names(s).allow_lb_clients
        if any(r.name == clients and r.action is planlib.Action.CREATE and not r.steps for r in serving):
            # The client rule waited for the address Google just reserved: plan again, send it.
            again = planlib.plan_create(s, deploy.observe(cloud, s), startup_script=script)
            sent += deploy.apply(
                cloud, _part(again, [r for r in again.resources if r.name == clients]), progress
            )
        progress(f"applied {sent} change(s)")
    if cloud.open_repository(gs_url(s.bucket, s.prefix)).initialize():
        progress(f"wrote an empty index into gs://{s.bucket}: publish with `provision publish`")
    for r in plan.resources:
        for note in r.notes:
            progress(f"note: {r.kind} {r.name}: {note}")
    migration = [r for r in plan.resources if r.kind is planlib.Kind.INSTANCE and r.steps]
    if not wait:
        if migration:
            progress(f"the single VM {s.instance} stays until a `provision create` sees the group healthy")
        return plan
    actual = base.group
    assert actual is not None and s.replicas is not None
    template = group_plan.desired_template(s, actual, script)[0].name
    before = actual.current_template if actual.manager is not None else ""
    progress(f"waiting until {s.replicas} instance(s) of group {s.instance} are healthy on {template}")
    wait_group(
        cloud,
        s,
        template=template,
        wanted=s.replicas,
        back_to=before if before and before != template else "",
        zones=len(group_plan.zones_of(s, actual)),
        progress=progress,
        sleep=sleep,
        clock=clock,
    )
    if migration:
        progress(f"the group serves: deleting the single VM {s.instance} ({s.zone}) it replaces")
        deploy.apply(cloud, _part(plan, migration), progress)
        progress(
            f"migrated: {s.instance} is now a group of {s.replicas}"
            f" behind {group.group_names(s).forwarding_rule}"
        )
    return plan


# --- rollout and rollback ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rolled:
    template: str
    previous: str
    changed: bool


def _require_group(cloud: Any, s: Settings) -> GroupActual:
    actual = observe(cloud, s)
    if actual.manager is None:
        raise PypapoError(
            f"no group {group.group_names(s).group} in {s.region} of {s.project}: run"
            f" `provision create --replicas N` first"
        )
    return actual


def roll_to(
    cloud: Any,
    s: Settings,
    template: compute_v1.InstanceTemplate,
    *,
    actual: GroupActual | None = None,
    progress: Progress = silent,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Rolled:
    """A rolling update of the group to `template` (inserted first when new): one new instance per zone
    first, an old one deleted only once its replacement is healthy; waits until every instance runs it.
    A failure stops the update and the old instances keep serving."""
    actual = actual or _require_group(cloud, s)
    assert actual.manager is not None
    current, wanted = actual.current_template, actual.manager.target_size
    zones = len(group_plan.zones_of(s, actual))
    done = group.rollout_progress(actual.instances, target_template=template.name, wanted=wanted, elapsed=0)
    if current == template.name and done.phase is group.RolloutPhase.DONE:
        progress(f"group {actual.manager.name} already runs {template.name} on every instance")
        return Rolled(template.name, current, changed=False)
    if actual.template(template.name) is None:
        image = group.template_image(template).rsplit("/", 1)[-1]
        progress(f"creating instance template {template.name} ({image})")
        cloud.compute.insert_instance_template(group.insert_template_request(s, template))
    progress(
        f"rolling update of group {actual.manager.name} from {current} to {template.name}:"
        f" {zones} new instance(s) at a time, none unavailable"
    )
    cloud.compute.patch_region_instance_group_manager(
        group.rolling_update_request(s, template_name=template.name, zones=zones)
    )
    wait_group(
        cloud,
        s,
        template=template.name,
        wanted=wanted,
        back_to=current if current != template.name else "",
        zones=zones,
        progress=progress,
        sleep=sleep,
        clock=clock,
    )
    return Rolled(template.name, current, changed=True)


def rollout(
    cloud: Any,
    s: Settings,
    image: str,
    *,
    script: str,
    progress: Progress = silent,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Rolled:
    """`provision rollout` for a group: a template of `image` with today's startup script, rolled out."""
    actual = _require_group(cloud, s)
    _refuse_forgotten_lb_clients(s, actual)
    template = group.instance_template(s, image=image, startup_script=script)
    return roll_to(cloud, s, template, actual=actual, progress=progress, sleep=sleep, clock=clock)


def serving_images(actual: GroupActual) -> set[str]:
    """The image names the group's instances run (through their templates)."""
    images = {t.name: group.template_image(t) for t in actual.templates}
    return {
        images[group._last(mi.version.instance_template)].rsplit("/", 1)[-1]
        for mi in actual.instances
        if group._last(mi.version.instance_template) in images
    }


def current_image(actual: GroupActual) -> str:
    template = actual.template(actual.current_template)
    return group.template_image(template).rsplit("/", 1)[-1] if template is not None else ""


def rollback(
    cloud: Any,
    s: Settings,
    *,
    progress: Progress = silent,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Rolled:
    """`provision rollback` for a group: a rolling update back to the template before the current one."""
    actual = _require_group(cloud, s)
    previous = group_plan.previous_template(actual)
    if previous is None:
        raise PypapoError(
            f"group {actual.manager.name if actual.manager else s.instance} runs {actual.current_template},"
            " and no earlier pypapo template exists to roll back to"
        )
    return roll_to(cloud, s, previous, actual=actual, progress=progress, sleep=sleep, clock=clock)


# --- status and destroy --------------------------------------------------------------------------------


def status(cloud: Any, s: Settings) -> dict[str, Any]:
    """The group's instances (zone, image, health, action), the load balancer, and drift."""
    from provisioner.cloud import apply as deploy

    base = deploy.observe(cloud, s)
    actual = base.group
    assert actual is not None
    plan = planlib.plan_create(s, base, startup_script=deploy.startup_script(s))
    images = {t.name: group.template_image(t) for t in actual.templates}
    rows = group.instance_rows(actual.instances, images)
    gn = group.group_names(s)
    manager = actual.manager
    ip = actual.lb_ip
    # The bucket's content as one running replica reports it (they all serve the same bucket).
    running = [mi for mi in actual.instances if mi.instance_status == "RUNNING"]
    content = guest.content_warning(_guest_attributes(cloud, s, running[0])[2]) if running else None
    return {
        "schema_version": planlib.SCHEMA_VERSION,
        "project": s.project,
        "region": s.region,
        "mode": "group",
        "group": None
        if manager is None
        else {
            "name": manager.name,
            "target_size": manager.target_size,
            "template": actual.current_template,
            "image": current_image(actual) or None,
            "zones": group_plan.zones_of(s, actual),
            "healthy": sum(1 for r in rows if r.health == group.HEALTHY),
            "instances": [r.to_dict() for r in rows],
            "content_warning": content,
        },
        "load_balancer": {
            "forwarding_rule": gn.forwarding_rule if actual.forwarding_rule is not None else None,
            "address": ip or None,
            "url": group.lb_url(ip, s.port) if ip else None,
        },
        "single_vm": None if base.instance is None else f"{s.zone}/{s.instance}",
        "bucket": None if base.bucket is None else f"gs://{s.bucket}",
        "service_account": None if base.service_account is None else s.service_account_email,
        "firewalls": [
            name
            for name, fw in (
                (s.firewall_name, base.firewall),
                (gn.allow_health_checks, actual.allow_health_checks),
                (gn.allow_lb_clients, actual.allow_lb_clients),
                (s.deny_firewall_name, base.deny_firewall),
            )
            if fw is not None
        ],
        "private_google_access": bool(base.subnetwork and base.subnetwork.private_ip_google_access),
        "in_sync": not plan.changed,
        "drift": [
            {"kind": r.kind, "name": r.name, "action": r.action, "changes": r.changes}
            for r in plan.resources
            if r.action not in planlib.UNCHANGED
        ],
    }


def destroy(cloud: Any, s: Settings, *, delete_bucket: bool, progress: Progress = silent) -> planlib.Plan:
    """Everything the group mode made, in dependency order, then what both modes share (and a single VM
    left over from before a migration)."""
    from provisioner.cloud import apply as deploy

    base = deploy.observe(cloud, s)
    assert base.group is not None
    shared = planlib.plan_destroy(s, base, delete_bucket=delete_bucket)
    plan = _part(shared, [*group_plan.group_destroy_plans(s, base.group), *shared.resources])
    if not plan.changed:
        progress(f"nothing to delete: no pypapo resources of {s.instance} in {s.project}")
        return plan
    sent = deploy.apply(cloud, plan, progress)
    progress(f"deleted with {sent} call(s)")
    return plan

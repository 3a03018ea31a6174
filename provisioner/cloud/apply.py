"""Orchestration of `provision create/destroy/status/grant/revoke` over the thin layer.

No API call happens here: it reads what exists through `Cloud` (compute, storage, iam), asks
`provisioner.cloud.plan` what to do, and hands each step's request object to the thin-layer method named by
the step. Tests build a `Cloud` whose parts are doubles; everything in this module runs for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner.appliance import guest
from provisioner.cloud import grants, names, orgpolicy
from provisioner.cloud import plan as planlib
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.progress import Progress, silent
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from provisioner.repo.location import gs_url


@dataclass
class Cloud:
    """The three thin-layer parts (each method sends one request object), and how to open the
    repository in the bucket (the engine's business: `create` writes its empty index through it)."""

    compute: Any
    storage: Any
    iam: Any
    open_repository: Callable[[str], Any] = field(default=lambda url: _open_repository(url))
    save_log: Callable[[str, str], str] | None = None  # keeps a failed bake's serial log (the CLI's)
    org_policies: Any = None  # `gcp.orgpolicy.OrgPolicies`: read before anything is created

    @classmethod
    def connect(cls, settings: Settings, *, progress: Progress | None = None) -> Cloud:
        from provisioner.cloud.gcp.compute import Compute
        from provisioner.cloud.gcp.iam import Iam
        from provisioner.cloud.gcp.orgpolicy import OrgPolicies
        from provisioner.cloud.gcp.storage_admin import StorageAdmin

        clients = Clients(settings.project)
        return cls(
            Compute(clients, progress=progress),
            StorageAdmin(clients, progress=progress),
            Iam(clients, progress=progress),
            org_policies=OrgPolicies(clients, progress=progress),
        )

    def set_member(self, change: planlib.IamChange, *, present: bool) -> bool:
        kind, res, role, member = change.resource_type, change.resource, change.role, change.member
        R, condition = planlib.IamResource, change.condition
        if kind is R.BUCKET:
            return self.storage.set_member(res, role, member, present=present)
        if kind in (R.IAP_TUNNEL_INSTANCE, R.IAP_TUNNEL):
            return self.iam.set_tunnel_member(res, role, member, present=present, condition=condition)
        if kind is R.PROJECT:
            return self.iam.set_project_member(role, member, present=present, condition=condition)
        if kind is R.SERVICE_ACCOUNT:
            return self.iam.set_service_account_member(res, role, member, present=present)
        zone, name = res.split("/", 1)  # IamResource.INSTANCE: ZONE/NAME
        return self.compute.set_instance_member(zone, name, role, member, present=present)

    def senders(self) -> dict[planlib.Method, Callable[[Any], object]]:
        """Each plan method and the bound thin-layer method that sends its request."""
        from provisioner.cloud import group_apply

        M, c, st, iam = planlib.Method, self.compute, self.storage, self.iam
        return {
            M.CREATE_BUCKET: st.create_bucket,
            M.PATCH_BUCKET: st.patch_bucket,
            M.DELETE_BUCKET: st.delete_bucket,
            M.ADD_MEMBER: lambda change: self.set_member(change, present=True),
            M.REMOVE_MEMBER: lambda change: self.set_member(change, present=False),
            M.CREATE_SERVICE_ACCOUNT: iam.create_service_account,
            M.DELETE_SERVICE_ACCOUNT: iam.delete_service_account,
            M.DELETE_SERVICE_ACCOUNT_KEY: iam.delete_service_account_key,
            M.SET_PRIVATE_GOOGLE_ACCESS: c.set_private_google_access,
            M.INSERT_FIREWALL: c.insert_firewall,
            M.UPDATE_FIREWALL: c.update_firewall,
            M.DELETE_FIREWALL: c.delete_firewall,
            M.INSERT_INSTANCE: c.insert_instance,
            M.DELETE_INSTANCE: c.delete_instance,
            M.SET_METADATA: c.set_metadata,
            M.SET_LABELS: c.set_labels,
            M.SET_DELETION_PROTECTION: c.set_deletion_protection,
            M.DELETE_ACCESS_CONFIG: c.delete_access_config,
            M.UPDATE_SHIELDED_INSTANCE_CONFIG: c.update_shielded_instance_config,
            M.SET_SERVICE_ACCOUNT: c.set_service_account,
            M.SET_MACHINE_TYPE: c.set_machine_type,
            M.STOP_INSTANCE: c.stop_instance,
            M.START_INSTANCE: c.start_instance,
            **group_apply.senders(c),
        }

    def send(self, step: planlib.Step) -> None:
        self.senders()[planlib.Method(step.method)](step.request)


def _open_repository(url: str) -> Any:
    from provisioner.repo.engine import Repository

    return Repository.open(url)


def allowed_sources(s: Settings) -> tuple[str, ...]:
    """The networks NGINX answers on the serving port (the second wall behind the firewall): IAP's range;
    for a group also Google's health checkers (autohealing and the load balancer judge the instances by
    /healthz: without them every instance would be closed to its own checks) and the `--lb-client`
    ranges (a passthrough load balancer keeps the client's source address)."""
    sources: tuple[str, ...] = (names.IAP_TCP_RANGE,)
    if s.group_mode:
        from provisioner.cloud.group import HEALTH_CHECK_RANGES

        sources += HEALTH_CHECK_RANGES + s.lb_clients
    return sources


def startup_script(s: Settings) -> str:
    """The appliance's startup script, rendered by the appliance part (provisioner/render.py)."""
    from provisioner.appliance.render import ApplianceConfig, render_startup_script

    # NGINX answers only `allowed_sources` (and the machine itself). The script waits for the mount
    # (IAM propagation) until shortly before `create` stops waiting.
    cfg = ApplianceConfig(
        bucket=s.bucket,
        prefix=s.prefix,
        port=s.port,
        allowed_sources=allowed_sources(s),
        ready_timeout_secs=s.ready_timeout,
    )
    return render_startup_script(cfg)


def observe(cloud: Cloud, s: Settings) -> planlib.Actual:
    """What exists now, read through the thin layer."""
    from provisioner.cloud import group_apply

    if not s.group_mode:
        group_apply.refuse_if_group(cloud.compute, s)
    bucket = cloud.storage.get_bucket(s.bucket)
    account = cloud.iam.get_service_account(s.service_account_email)
    actual = planlib.Actual(
        bucket=bucket,
        bucket_members=cloud.storage.get_members(s.bucket) if bucket is not None else {},
        service_account=account,
        service_account_keys=cloud.iam.list_user_keys(s.service_account_email) if account is not None else [],
        subnetwork=cloud.compute.get_subnetwork(s.region, s.subnet),
        firewall=cloud.compute.get_firewall(s.firewall_name),
        deny_firewall=cloud.compute.get_firewall(s.deny_firewall_name),
        instance=cloud.compute.get_instance(s.zone, s.instance),
        image_family_exists=cloud.compute.get_image_from_family(s.image_project, s.image_family) is not None,
    )
    if s.group_mode:
        actual.group = group_apply.observe(cloud, s, single_vm=actual.instance)
    return actual


def apply(
    cloud: Cloud, plan: planlib.Plan, progress: Progress, *, bake: Callable[[], object] | None = None
) -> int:
    """Send every step in order (an image to bake is `bake()`, the whole build); returns how many."""
    count = 0
    for resource in plan.resources:
        if resource.kind is planlib.Kind.IMAGE and resource.action is planlib.Action.CREATE:
            if bake is None:
                raise PypapoError(f"image family {resource.name} is empty: run `provision image build`")
            progress(
                f"baking the first image of {resource.name} (`provision image build`); the appliance"
                " boots from it, so this is waited for even with --no-wait"
            )
            bake()
            count += 1
            continue
        if not resource.steps:
            continue
        progress(f"{resource.action} {resource.kind} {resource.name}")
        for step in resource.steps:
            cloud.send(step)
            count += 1
    return count


class GuestFailed(PypapoError):
    """The guest reported a failure (`pypapo/error`): `detail` is its reason."""

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:.0f}s"


def wait_for_guest(
    read: Callable[[], Mapping[str, str]],
    judge: Callable[[Mapping[str, str]], guest.Report],
    *,
    what: str,
    console: str,
    timeout: float,
    progress: Progress,
    goal: str = "report ready",
    hint: str = "",
    poll_interval: float = 5.0,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Mapping[str, str]:
    """The one guest-attribute waiter (create, rollout, image build): poll `read()` until `judge` says
    ready; a reported failure stops it at the next poll (seconds, not the timeout) with the guest's
    reason and `console`, the command that shows the serial console. Returns the attributes read."""
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    start = clock()
    last = ""
    while True:
        attrs = read()
        report = judge(attrs)
        elapsed = clock() - start
        if report.state is guest.State.READY:
            progress(f"  {what} is ready ({elapsed:.0f}s)")
            warn_content(what, attrs, progress)
            return attrs
        if report.state is guest.State.FAILED:
            see = f"; see `{console}`" if console else ""
            raise GuestFailed(f"{what} reported an error: {report.detail}{see}", detail=report.detail)
        if report.detail != last:
            progress(f"  waiting for {what}: {report.detail} ({elapsed:.0f}s)")
            last = report.detail
        if elapsed >= timeout:
            check = f"; check `{console}`" if console else ""
            raise PypapoError(f"{what} did not {goal} within {_duration(timeout)}{check}{hint}")
        sleep(poll_interval)


def content_message(what: str, warning: str) -> str:
    """How `create`, `rollout` and `status` say that an appliance reports broken content."""
    return f"  warning: {what} serves, but its {warning}"


def warn_content(what: str, attrs: Mapping[str, str], progress: Progress) -> None:
    """A ready appliance's report of broken content (the conda channel), as a warning: it never stops
    `create` or `rollout` (no machine can fix a document of the bucket; the index serves pip users)."""
    warning = guest.content_warning(attrs)
    if warning:
        progress(content_message(what, warning))


def wait_ready(
    cloud: Cloud,
    s: Settings,
    *,
    progress: Progress,
    timeout: float | None = None,
    poll_interval: float = 5.0,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> str:
    """Poll guest attributes pypapo/ until the appliance reports ready (or an error, or time runs out)."""
    request = planlib.guest_attributes_request(s)
    attrs = wait_for_guest(
        lambda: planlib.guest_values(cloud.compute.get_guest_attributes(request)),
        guest.serving,
        what=f"the appliance on {s.instance}",
        console=names.serial_console_command(s.project, s.zone, s.instance),
        timeout=s.ready_timeout if timeout is None else timeout,
        progress=progress,
        hint=" and run `provision create` again (it converges)",
        poll_interval=poll_interval,
        sleep=sleep,
        clock=clock,
    )
    return guest.serving(attrs).detail


def create(
    cloud: Cloud,
    s: Settings,
    *,
    script: str,
    progress: Progress = silent,
    wait: bool = True,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> planlib.Plan:
    """Make or reconcile everything; a second run sends nothing. Returns the plan it carried out."""
    if s.group_mode:
        from provisioner.cloud import group_apply

        return group_apply.create(
            cloud, s, script=script, progress=progress, wait=wait, sleep=sleep, clock=clock
        )
    plan = planlib.plan_create(s, observe(cloud, s), startup_script=script)
    if not plan.changed:
        progress(f"nothing to change: pypapo in {s.project} ({s.zone}/{s.instance}) matches the plan")
    else:
        check_org_policies(cloud, s, plan)
        sent = apply(
            cloud, plan, progress, bake=lambda: bake_first_image(cloud, s, script, progress, sleep, clock)
        )
        progress(f"applied {sent} change(s)")
    if cloud.open_repository(gs_url(s.bucket, s.prefix)).initialize():
        progress(f"wrote an empty index into gs://{s.bucket}: publish with `provision publish`")
    for r in plan.resources:
        for note in r.notes:
            progress(f"note: {r.kind} {r.name}: {note}")
    if wait:
        wait_ready(cloud, s, progress=progress, sleep=sleep, clock=clock)
    return plan


def check_org_policies(cloud: Cloud, s: Settings, plan: planlib.Plan) -> None:
    """Stop before anything is created when an organization policy would make `create` wait for
    nothing (readiness never reported) or refuse the builder's egress; one line naming each fix."""
    if cloud.org_policies is None:
        return
    bakes = any(r.kind is planlib.Kind.IMAGE and r.action is planlib.Action.CREATE for r in plan.resources)
    read = cloud.org_policies.effective
    found = orgpolicy.blockers(
        s.project,
        guest_attributes=read(orgpolicy.GUEST_ATTRIBUTES),
        external_ip=read(orgpolicy.EXTERNAL_IP) if bakes else None,
        bakes=bakes,
    )
    if found:
        raise PypapoError("; ".join(b.line() for b in found) + "; nothing was created")


def bake_first_image(
    cloud: Cloud,
    s: Settings,
    script: str,
    progress: Progress,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> str:
    """The very `provision image build` into the empty family; returns the new image's name."""
    import datetime as dt

    from provisioner.cloud.image import plan as image_plan
    from provisioner.cloud.image import run as image_run

    result = image_run.run_build(
        cloud.compute,
        image_plan.target_of(s),
        dt.datetime.now(dt.UTC),
        script,
        clock=clock,
        sleep=sleep,
        report=progress,
        save_log=cloud.save_log,
    )
    progress(f"image {result.image} baked into family {s.image_family}")
    return result.image


def destroy(cloud: Cloud, s: Settings, *, delete_bucket: bool, progress: Progress = silent) -> planlib.Plan:
    if s.group_mode:
        from provisioner.cloud import group_apply

        return group_apply.destroy(cloud, s, delete_bucket=delete_bucket, progress=progress)
    plan = planlib.plan_destroy(s, observe(cloud, s), delete_bucket=delete_bucket)
    if not plan.changed:
        progress(f"nothing to delete: no pypapo resources of {s.instance} in {s.project}")
        return plan
    sent = apply(cloud, plan, progress)
    progress(f"deleted with {sent} call(s)")
    return plan


def grant(cloud: Cloud, s: Settings, member: str, role: str, *, present: bool, progress: Progress) -> int:
    """Add (or remove) the bindings behind a role; returns how many changed."""
    changes = (grants.grant_changes if present else grants.revoke_changes)(s, member, role)
    if present and role != grants.Role.PUBLISHER:
        _require_appliance(cloud, s)
    changed = 0
    for change in changes:
        if cloud.set_member(change, present=present):
            changed += 1
    verb = "granted" if present else "revoked"
    if changed:
        progress(f"{verb} {role} for {changes[0].member}: {grants.role_summary(changes)}")
    else:
        progress(
            f"nothing to change: {changes[0].member} {'already has' if present else 'does not have'} {role}"
        )
    if present:
        for note in grants.notes(s, role):
            progress(f"note: {note}")
    return changed


def _require_appliance(cloud: Cloud, s: Settings) -> None:
    """Access to an appliance that is not there is a typo (wrong --instance, --zone, --replicas); the
    other shape of the same name is the likeliest one, and its flag is named."""

    def group_exists() -> bool:
        return cloud.compute.list_managed_instances(s.region, s.instance) is not None

    def vm_exists() -> bool:
        return cloud.compute.get_instance(s.zone, s.instance) is not None

    if grants.is_group(s):
        if group_exists():
            return
        if vm_exists():
            raise PypapoError(
                f"{s.instance} is a single VM in {s.zone}, not a group: drop --replicas (and"
                " PYPAPO_REPLICAS) to grant access to it"
            )
        raise PypapoError(
            f"group {s.instance} does not exist in {s.region}; run `provision create --replicas N`"
            " first (or drop --replicas for the single VM)"
        )
    if vm_exists():
        return
    if group_exists():
        raise PypapoError(
            f"{s.instance} is a regional group in {s.region}, not a single VM: pass --replicas N (or set"
            " PYPAPO_REPLICAS) so that the grant covers its instances"
        )
    raise PypapoError(f"instance {s.instance} does not exist in {s.zone}; run `provision create` first")


def status(cloud: Cloud, s: Settings) -> dict[str, Any]:
    """What exists, its hardening drift and whether the appliance reports ready."""
    if s.group_mode:
        from provisioner.cloud import group_apply

        return group_apply.status(cloud, s)
    actual = observe(cloud, s)
    plan = planlib.plan_create(s, actual, startup_script=startup_script(s))
    inst = actual.instance
    attrs = (
        planlib.guest_values(cloud.compute.get_guest_attributes(planlib.guest_attributes_request(s)))
        if inst
        else None
    )
    ready = guest.serving(attrs) if attrs is not None else None
    return {
        "schema_version": planlib.SCHEMA_VERSION,
        "project": s.project,
        "zone": s.zone,
        "instance": None
        if inst is None
        else {
            "name": inst.name,
            "status": inst.status,
            "internal_ip": inst.network_interfaces[0].network_i_p if inst.network_interfaces else None,
            "boot_image": inst.disks[0].source if inst.disks else None,
            "appliance": ready.state.value if ready else None,
            "appliance_detail": ready.detail if ready else None,
            # What of the bucket's content the appliance reports broken (the conda channel), or None.
            "content_warning": guest.content_warning(attrs) if attrs is not None else None,
        },
        "bucket": None if actual.bucket is None else f"gs://{s.bucket}",
        "service_account": None if actual.service_account is None else s.service_account_email,
        "firewall": None if actual.firewall is None else s.firewall_name,
        "deny_firewall": None if actual.deny_firewall is None else s.deny_firewall_name,
        "private_google_access": bool(actual.subnetwork and actual.subnetwork.private_ip_google_access),
        "in_sync": not plan.changed,
        "drift": [
            {"kind": r.kind, "name": r.name, "action": r.action, "changes": r.changes}
            for r in plan.resources
            if r.action not in planlib.UNCHANGED
        ],
    }

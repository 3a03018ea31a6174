"""Commands: the golden image (`image build|list|schedule`, `rollout`, `rollback`)."""

from __future__ import annotations

import datetime as dt
import tempfile
from typing import Any

import click
from google.cloud import compute_v1

from provisioner.appliance import guest
from provisioner.cli import options
from provisioner.cli.options import settings_from_click, settings_options
from provisioner.cli.schedules import Schedule, echo_doc, schedule_options, start_now, stop_job
from provisioner.cloud import group_apply, names, plan
from provisioner.cloud.apply import Cloud
from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.image import run as image_run
from provisioner.cloud.image import schedule as image_schedule
from provisioner.cloud.settings import FIELDS, Settings, flag
from provisioner.errors import PypapoError


def startup_script(settings: Settings) -> str:
    """The appliance's startup script exactly as `provision create` renders it. The same script serves
    and bakes: the builder runs it in bake mode (see `render.render_bake_script`)."""
    from provisioner.cloud.apply import startup_script as appliance_script

    return appliance_script(settings)


def serving_instance_spec(settings: Settings) -> compute_v1.Instance:
    """The serving instance exactly as `provision create` builds it (hardening lives in plan.py only);
    rollout replaces only its boot image."""

    return plan.desired_instance(
        settings,
        image=names.family_image(settings.image_project, settings.image_family),
        startup_script=startup_script(settings),
    )


def connect(settings: Settings, progress: bool = True) -> Cloud:
    """The thin layers: the pipelines use its Compute layer (and its IAM layer for the tunnel grants)."""
    return Cloud.connect(settings, progress=options.progress if progress else None)


def _clients(settings: Settings) -> Any:
    from provisioner.cloud.gcp.base import Clients

    return Clients(settings.project)


def save_serial_log(builder: str, text: str) -> str:
    fd, path = tempfile.mkstemp(prefix=f"{builder}-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


# ------------------------------------------------------------------------------------------ image group


@click.group("image")
def image_group() -> None:
    """The golden image: build it, list the family, schedule unattended rebuilds."""


_keep_option = click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=image_plan.DEFAULT_KEEP,
    show_default=True,
    help="images kept usable for rollback (newest ACTIVE, the rest DEPRECATED; older ones OBSOLETE)",
)


@image_group.command("build")
@settings_options
@_keep_option
@click.option("--builder-machine-type", default=image_plan.BUILDER_MACHINE_TYPE, show_default=True)
@click.option("--dry-run", is_flag=True, help="print the steps and requests; no credentials, no network")
def build_cmd(keep: int, builder_machine_type: str, dry_run: bool, **kwargs: Any) -> None:
    """Bake a new image of the appliance in the image family; deprecate older ones."""
    settings = settings_from_click(kwargs)
    target = image_plan.target_of(settings, keep, builder_machine_type)
    now = dt.datetime.now(dt.UTC)
    script = startup_script(settings)
    if dry_run:
        builder, image, steps = image_plan.build_steps(target, now, script)
        echo_doc(
            image_plan.steps_document(
                "image build", steps, builder=builder, image=image, family=target.family
            )
        )
        return
    cloud = connect(settings)
    api = cloud.compute
    if settings.group_mode:
        protect = group_images(cloud, settings)
    else:
        current = image_run.serving_image(api, target)
        protect = [current] if current else []
    result = image_run.run_build(
        api,
        target,
        now,
        script,
        protect=protect,
        report=options.progress,
        save_log=save_serial_log,
    )
    click.echo(
        f"image {result.image} created in family {target.family}"
        f" (gcsfuse {result.versions.get(guest.Key.GCSFUSE_VERSION)},"
        f" nginx {result.versions.get(guest.Key.NGINX_VERSION)});"
        " run `provision rollout` to serve from it"
    )


@image_group.command("list")
@settings_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_cmd(output: str, **kwargs: Any) -> None:
    """The images of the family, newest first, with age, state and which one the appliance runs."""
    settings = settings_from_click(kwargs)
    target = image_plan.target_of(settings)
    cloud = connect(settings, progress=False)
    api = cloud.compute
    images = api.list_images(target.image_project, target.family)
    if settings.group_mode:
        from provisioner.cloud import group_apply

        serving = group_apply.current_image(group_apply.observe(cloud, settings)) or None
    else:
        serving = image_run.serving_image(api, target)
    rows = image_plan.image_rows(images, serving, dt.datetime.now(dt.UTC))
    if output == "json":
        echo_doc(
            {
                "family": target.family,
                "serving": serving,
                "images": [
                    {
                        "name": r.name,
                        "created": r.created.isoformat(),
                        "age_days": r.age_days,
                        "state": r.state,
                        "gcsfuse": r.gcsfuse,
                        "nginx": r.nginx,
                        "serving": r.serving,
                    }
                    for r in rows
                ],
            }
        )
        return
    if not rows:
        click.echo(f"family {target.family} has no images yet: run `provision image build`")
        return
    click.echo(f"{'':2}{'IMAGE':32} {'AGE':>6}  {'STATE':10} {'GCSFUSE':10} NGINX")
    for r in rows:
        mark = "* " if r.serving else "  "
        click.echo(f"{mark}{r.name:32} {str(r.age_days) + 'd':>6}  {r.state:10} {r.gcsfuse:10} {r.nginx}")
    click.echo(
        f"* = the image {target.instance} runs"
        if serving
        else f"{target.instance} does not run an image of this family (or does not exist)"
    )


@image_group.command("schedule")
@settings_options
@schedule_options(
    cron="0 3 * * 1",
    delete_help="delete the job (the service accounts stay; delete them by hand)",
    run_now_help="also start one rebuild now, as the job would",
)
def schedule_cmd(schedule: Schedule, **kwargs: Any) -> None:
    """Rebuild the image and roll the appliance onto it on a schedule (Cloud Scheduler -> Cloud Build)."""
    settings = settings_from_click(kwargs)
    target = image_plan.target_of(settings)
    name = image_schedule.job_name(target.project, target.region)
    if schedule.disable or schedule.delete:
        stop_job(settings.project, schedule, name, "image schedule")
        return
    wheel = image_schedule.Wheel(settings.bucket, settings.prefix, schedule.pypapo_version)
    build = image_schedule.rebuild_build(target, wheel, _cli_args(settings))
    job = image_schedule.scheduler_job(target, schedule.cron, schedule.time_zone, build)
    roles = image_schedule.schedule_roles(target.project, settings.bucket, settings.service_account_email)
    steps = image_schedule.schedule_steps(target, job, roles, wheel)
    if schedule.dry_run:
        echo_doc(image_plan.steps_document("image schedule", steps, build=plan.request_dict(build)))
        return
    from provisioner.cloud.gcp.scheduler import ScheduleApi

    api = ScheduleApi(_clients(settings))
    what = image_schedule.apply_schedule(api, target, job, roles, wheel, options.progress)
    click.echo(f"scheduler job {name} {what}: {schedule.cron} ({schedule.time_zone})")
    if schedule.run_now:
        start_now(target.project, target.region, build, "rebuild")


def _cli_args(settings: Settings) -> list[str]:
    """Flags that make the unattended build act on exactly this appliance (no pypapo.toml there)."""
    defaults = Settings(project=settings.project, zone=settings.zone)
    out = []
    for key in FIELDS:
        if key in ("project", "zone"):  # rebuild_build passes these itself
            continue
        value = getattr(settings, key)
        if value != getattr(defaults, key):
            values = value if isinstance(value, tuple) else (value,)  # --lb-client once per range
            out.extend(f"{flag(key)}={v}" for v in values)
    return out


# -------------------------------------------------------------------------------------- rollout/rollback


def _confirm(yes: bool, message: str) -> None:
    if not yes and not click.confirm(message, default=False, err=True):
        raise PypapoError("cancelled; pass --yes to run without the question")


@click.command("rollout")
@settings_options
@click.option(
    "--image", "image_name", default=None, help="a specific image of the family (default: the newest)"
)
@click.option("--yes", is_flag=True, help="do not ask before replacing the appliance")
@click.option("--dry-run", is_flag=True, help="print the steps and requests; no credentials, no network")
def rollout_cmd(image_name: str | None, yes: bool, dry_run: bool, **kwargs: Any) -> None:
    """Recreate the appliance from the newest image of the family, same name, grants kept (a group:
    a rolling update to a template of that image, surge first, no instance unavailable)."""
    settings = settings_from_click(kwargs)
    if settings.group_mode:
        _group_rollout(settings, image_name, yes, dry_run)
        return
    target = image_plan.target_of(settings)
    spec = serving_instance_spec(settings)
    if dry_run:
        ref = _named_or_family(target, image_name)
        steps = image_plan.rollout_steps(target, spec, ref)
        echo_doc(
            image_plan.steps_document(
                "rollout",
                steps,
                image=ref,
                note="the family is resolved to its newest ACTIVE image at run time;"
                " the instance gets that exact image",
            )
        )
        return
    cloud = connect(settings)
    api = cloud.compute
    group_apply.refuse_if_group(api, settings)  # a single-VM rollout would create a VM beside a group
    images = api.list_images(target.image_project, target.family)
    chosen = _chosen_image(images, target.family, image_name)
    current = image_run.serving_image(api, target)
    if current == chosen.name:
        click.echo(f"{target.instance} already runs {chosen.name}: nothing to do")
        return
    _confirm(
        yes,
        f"Replace {target.instance} ({current or 'not a family image'}) with {chosen.name}?"
        " The index is down for a few minutes.",
    )
    image_run.run_rollout(
        api,
        cloud.iam,
        target,
        spec,
        names.image_link(target.image_project, chosen.name),
        report=options.progress,
        ready_timeout=settings.ready_timeout,
    )
    click.echo(f"{target.instance} now runs {chosen.name} and is ready")


@click.command("rollback")
@settings_options
@click.option("--yes", is_flag=True, help="do not ask before replacing the appliance")
@click.option("--dry-run", is_flag=True, help="print the steps; needs credentials to find the previous image")
def rollback_cmd(yes: bool, dry_run: bool, **kwargs: Any) -> None:
    """Recreate the appliance from the image before the one it runs (un-deprecating it if needed); a
    group: a rolling update back to the template before the current one."""
    settings = settings_from_click(kwargs)
    if settings.group_mode:
        _group_rollback(settings, yes, dry_run)
        return
    target = image_plan.target_of(settings)
    spec = serving_instance_spec(settings)
    cloud = connect(settings)
    api = cloud.compute
    group_apply.refuse_if_group(api, settings)  # a single-VM rollout would create a VM beside a group
    images = api.list_images(target.image_project, target.family)
    current = image_run.serving_image(api, target)
    previous = image_plan.rollback_target(images, current)
    assert current is not None  # rollback_target raised otherwise
    image_plan.require_bootable(previous, "roll back to")
    changes = image_plan.rollback_deprecations(target.image_project, images, previous.name, current)
    link = names.image_link(target.image_project, previous.name)
    if dry_run:
        steps = [
            plan.Step(
                method="compute.images.deprecate",
                request=c,
                why=f"mark {c.image} {c.deprecation_status_resource.state}",
            )
            for c in changes
        ]
        steps += image_plan.rollout_steps(target, spec, link)
        echo_doc(image_plan.steps_document("rollback", steps, image=link, from_image=current))
        return
    _confirm(yes, f"Replace {target.instance} ({current}) with the previous image {previous.name}?")
    for change in changes:
        options.progress(f"marking {change.image} {change.deprecation_status_resource.state}")
        api.deprecate_image(change)
    image_run.run_rollout(
        api, cloud.iam, target, spec, link, report=options.progress, ready_timeout=settings.ready_timeout
    )
    click.echo(f"{target.instance} rolled back to {previous.name}; {current} is DEPRECATED")


# ------------------------------------------------------------------- rollout/rollback of a group (--replicas)


def group_images(cloud: Any, settings: Settings) -> list[str]:
    """The images a group needs usable (never OBSOLETE: a group recreates, repairs and resizes from
    its template's image): what its instances run, its template's and the template `rollback` uses."""
    from provisioner.cloud import group, group_apply, group_plan

    actual = group_apply.observe(cloud, settings)
    templates = [actual.template(actual.current_template), group_plan.previous_template(actual)]
    named = {group.template_image(t).rsplit("/", 1)[-1] for t in templates if t is not None}
    return sorted(named | group_apply.serving_images(actual))


def _chosen_image(images: list[compute_v1.Image], family: str, image_name: str | None) -> compute_v1.Image:
    if image_name:
        chosen = next((i for i in images if i.name == image_name), None)
        if chosen is None:
            raise PypapoError(f"image {image_name} is not in family {family}; see `provision image list`")
        image_plan.require_bootable(chosen)
        return chosen
    chosen = image_plan.newest_usable(images)
    if chosen is None:
        raise PypapoError(f"family {family} has no usable image: run `provision image build` first")
    image_plan.require_bootable(chosen)
    return chosen


def _named_or_family(target: image_plan.ImageTarget, image_name: str | None) -> str:
    """What a dry-run rollout names: --image, or the family (resolved only when the rollout runs)."""
    if image_name:
        return names.image_link(target.image_project, image_name)
    return names.family_image(target.image_project, target.family)


def _group_rollout(settings: Settings, image_name: str | None, yes: bool, dry_run: bool) -> None:
    from provisioner.cloud import group, group_apply, group_plan

    target = image_plan.target_of(settings)
    script = startup_script(settings)
    if dry_run:
        ref = _named_or_family(target, image_name)
        template = group.instance_template(settings, image=ref, startup_script=script)
        zones = len(group_plan.zones_of(settings, None))
        steps = [
            plan.Step(
                "compute.instanceTemplates.insert",
                group.insert_template_request(settings, template),
                "the new template: today's instance with the new image (skipped if it exists)",
            ),
            plan.Step(
                "compute.regionInstanceGroupManagers.patch",
                group.rolling_update_request(settings, template_name=template.name, zones=zones),
                "rolling update: new instances first, an old one deleted once its replacement is healthy",
            ),
        ]
        echo_doc(
            image_plan.steps_document(
                "rollout",
                steps,
                image=ref,
                group=group.group_names(settings).group,
                note="the family is resolved to its newest ACTIVE image at run time (the template names"
                " that image); max_surge is the group's number of zones, read at run time; a failed"
                " health check stops the update (the group goes back to its template, OPPORTUNISTIC)",
            )
        )
        return
    cloud = connect(settings)
    images = cloud.compute.list_images(target.image_project, target.family)
    chosen = _chosen_image(images, target.family, image_name)
    actual = group_apply.observe(cloud, settings)
    if actual.manager is None:
        raise PypapoError(
            f"no group {settings.instance} in {settings.region}: run `provision create --replicas N` first"
        )
    current = group_apply.current_image(actual)
    _confirm(
        yes,
        f"Roll group {settings.instance} ({current or '?'}) onto {chosen.name}, one zone's worth of new"
        " instances at a time? No instance is taken out before its replacement is healthy.",
    )
    rolled = group_apply.roll_to(
        cloud,
        settings,
        group.instance_template(
            settings, image=names.image_link(target.image_project, chosen.name), startup_script=script
        ),
        actual=actual,
        progress=options.progress,
    )
    if not rolled.changed:
        click.echo(f"group {settings.instance} already runs {chosen.name} ({rolled.template}): nothing to do")
        return
    click.echo(f"group {settings.instance} now runs {chosen.name} ({rolled.template}) on every instance")


def _group_rollback(settings: Settings, yes: bool, dry_run: bool) -> None:
    from provisioner.cloud import group, group_apply, group_plan

    target = image_plan.target_of(settings)
    cloud = connect(settings)
    actual = group_apply.observe(cloud, settings)
    if actual.manager is None:
        raise PypapoError(
            f"no group {settings.instance} in {settings.region}: run `provision create --replicas N` first"
        )
    previous = group_plan.previous_template(actual)
    if previous is None:
        raise PypapoError(
            f"group {settings.instance} runs {actual.current_template}; no earlier pypapo template exists"
            " to roll back to"
        )
    old_image = group.template_image(previous).rsplit("/", 1)[-1]
    bad_image = group_apply.current_image(actual)
    images = cloud.compute.list_images(target.image_project, target.family)
    family = {i.name for i in images}
    changes = (
        image_plan.rollback_deprecations(target.image_project, images, old_image, bad_image)
        if old_image != bad_image and {old_image, bad_image} <= family
        else []
    )
    zones = len(group_plan.zones_of(settings, actual))
    if dry_run:
        steps = [
            plan.Step("compute.images.deprecate", c, f"mark {c.image} {c.deprecation_status_resource.state}")
            for c in changes
        ]
        steps.append(
            plan.Step(
                "compute.regionInstanceGroupManagers.patch",
                group.rolling_update_request(settings, template_name=previous.name, zones=zones),
                f"rolling update back to {previous.name} ({old_image})",
            )
        )
        echo_doc(
            image_plan.steps_document(
                "rollback", steps, template=previous.name, from_template=actual.current_template
            )
        )
        return
    _confirm(yes, f"Roll group {settings.instance} back to {previous.name} ({old_image})?")
    for change in changes:
        options.progress(f"marking {change.image} {change.deprecation_status_resource.state}")
        cloud.compute.deprecate_image(change)
    rolled = group_apply.roll_to(cloud, settings, previous, actual=actual, progress=options.progress)
    click.echo(
        f"group {settings.instance} rolled back to {rolled.template} ({old_image}) from {rolled.previous}"
        + (f"; {bad_image} is DEPRECATED" if changes else "")
    )


COMMANDS: list[click.Command] = [image_group, rollout_cmd, rollback_cmd]

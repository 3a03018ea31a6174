"""Command: `provision mirror schedule` (Cloud Scheduler -> Cloud Build running `provision mirror --lock gs://...`)."""

from __future__ import annotations

from typing import Any

import click

from provisioner.cli.options import settings_from_click, settings_options
from provisioner.cli.schedules import Schedule, echo_doc, schedule_options, start_now, stop_job
from provisioner.cloud import names, plan
from provisioner.errors import PypapoError


@click.command("schedule")
@settings_options
@click.option("--lock", required=True, metavar="gs://BUCKET/PATH", help="the lock file the build mirrors")
@click.option("--from", "source", default="https://pypi.org/simple/", show_default=True, metavar="URL")
@click.option("--python-version", "pythons", multiple=True, metavar="3.X")
@click.option("--platform", "platforms", multiple=True, metavar="TAG")
@click.option("--no-sdist", is_flag=True)
@schedule_options(
    cron="0 4 * * *",
    delete_help="delete the job (the service accounts stay)",
    run_now_help="also start one mirror build now, as the job would",
)
def schedule_command(
    lock: str,
    source: str,
    pythons: tuple[str, ...],
    platforms: tuple[str, ...],
    no_sdist: bool,
    schedule: Schedule,
    **kwargs: Any,
) -> None:
    """Mirror a lock file into the index on a schedule: Cloud Scheduler starts a Cloud Build build that
    runs `provision mirror --repo gs://BUCKET --from URL --lock gs://...` (where there is egress)."""
    from provisioner.cloud import mirror_schedule as ms
    from provisioner.cloud.image import plan as image_plan
    from provisioner.repo import narrow
    from provisioner.repo.upstream import index_url

    narrow.make(pythons, platforms, no_sdist)  # a typo fails here, not in tonight's build
    args = [
        *(a for p in pythons for a in ("--python-version", p)),
        *(a for p in platforms for a in ("--platform", p)),
    ]
    settings = settings_from_click(kwargs)
    s = ms.MirrorSchedule(
        project=settings.project,
        region=settings.region,
        bucket=settings.bucket,
        prefix=settings.prefix,
        lock=ms.check_lock_url(lock),
        source=index_url(source),
        mirror_args=(*args, *(["--no-sdist"] if no_sdist else [])),
    )
    name = ms.job_name(s.project, s.region)
    if schedule.disable or schedule.delete:
        stop_job(s.project, schedule, name, "mirror schedule")
        return
    build = ms.build(s, schedule.pypapo_version)
    job = ms.job(s, schedule.cron, schedule.time_zone, build)
    grants = ms.roles(s)
    if schedule.dry_run:
        steps = ms.steps(s, job, grants, schedule.pypapo_version)
        echo_doc(image_plan.steps_document("mirror schedule", steps, build=plan.request_dict(build)))
        return
    from provisioner.cloud.gcp.base import Clients
    from provisioner.cloud.gcp.scheduler import ScheduleApi

    api = ScheduleApi(Clients(settings.project))
    wheel = ms.wheel(s, schedule.pypapo_version)
    if not api.object_exists(s.bucket, wheel.object):
        raise PypapoError(
            f"{wheel.url} does not exist: publish the pypapo wheel into the index first"
            " (`provision publish dist/pypapo-*.whl`) or pass --pypapo-version"
        )
    for account, title in ms.ACCOUNTS:
        if api.ensure_service_account(account, title):
            click.echo(
                f"  created service account {names.service_account_email(s.project, account)}", err=True
            )
    for grant in grants:
        if api.add_binding(grant):
            click.echo(f"  granted {grant.role} on {grant.resource} to {grant.member}", err=True)
    what = api.upsert_job(job)
    click.echo(f"scheduler job {name} {what}: {schedule.cron} ({schedule.time_zone})")
    if schedule.run_now:
        start_now(s.project, s.region, build, "mirror")

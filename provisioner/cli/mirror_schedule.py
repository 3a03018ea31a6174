"""Command: `provision mirror schedule` (Cloud Scheduler -> Cloud Build running `provision mirror --lock gs://...`)."""

from __future__ import annotations

import json
from typing import Any

import click

from provisioner import __version__
from provisioner.cli.options import settings_from_click, settings_options
from provisioner.cloud import names, plan
from provisioner.errors import PypapoError


@click.command("schedule")
@settings_options
@click.option("--lock", required=True, metavar="gs://BUCKET/PATH", help="the lock file the build mirrors")
@click.option("--from", "source", default="https://pypi.org/simple/", show_default=True, metavar="URL")
@click.option("--python-version", "pythons", multiple=True, metavar="3.X")
@click.option("--platform", "platforms", multiple=True, metavar="TAG")
@click.option("--no-sdist", is_flag=True)
@click.option("--cron", default="0 4 * * *", show_default=True, help="unix-cron, 5 fields")
@click.option("--time-zone", "time_zone", default="Etc/UTC", show_default=True, help="IANA time zone")
@click.option("--disable", is_flag=True, help="pause the job (keeps it and its accounts)")
@click.option("--delete", is_flag=True, help="delete the job (the service accounts stay)")
@click.option("--run-now", is_flag=True, help="also start one mirror build now, as the job would")
@click.option(
    "--pypapo-version",
    default=__version__,
    show_default=True,
    help="pypapo wheel the build installs from the index bucket (publish it there first)",
)
@click.option("--dry-run", is_flag=True, help="print the steps and requests; no credentials, no network")
def schedule_command(
    lock: str,
    source: str,
    pythons: tuple[str, ...],
    platforms: tuple[str, ...],
    no_sdist: bool,
    cron: str,
    time_zone: str,
    disable: bool,
    delete: bool,
    run_now: bool,
    pypapo_version: str,
    dry_run: bool,
    **kwargs: Any,
) -> None:
    """Mirror a lock file into the index on a schedule: Cloud Scheduler starts a Cloud Build build that
    runs `provision mirror --repo gs://BUCKET --from URL --lock gs://...` (where there is egress)."""
    from provisioner.cloud import mirror_schedule as ms
    from provisioner.cloud.image import plan as image_plan
    from provisioner.cloud.image import schedule as img
    from provisioner.repo import narrow
    from provisioner.repo.upstream import index_url

    if disable and delete:
        raise PypapoError("--disable and --delete exclude each other: pick one")
    cron, time_zone = img.validate_cron(cron), img.validate_time_zone(time_zone)
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
    build = ms.build(s, pypapo_version)
    job = ms.job(s, cron, time_zone, build)
    grants = ms.roles(s)
    if dry_run:
        if disable or delete:
            call = "cloudscheduler.jobs.delete" if delete else "cloudscheduler.jobs.pause"
            doc = image_plan.steps_document(
                "mirror schedule", [plan.Step(method=call, request={"name": name}, why=call)]
            )
        else:
            doc = image_plan.steps_document(
                "mirror schedule", ms.steps(s, job, grants, pypapo_version), build=plan.request_dict(build)
            )
        click.echo(json.dumps(doc, indent=2))
        return
    from provisioner.cloud.gcp.base import Clients
    from provisioner.cloud.gcp.scheduler import ScheduleApi

    clients = Clients(settings.project)
    api = ScheduleApi(clients)
    if disable or delete:
        done = api.delete_job(name) if delete else api.pause_job(name)
        verb = "deleted" if delete else "paused"
        click.echo(f"scheduler job {name} {verb}" if done else f"no scheduler job {name}: nothing to do")
        return
    wheel = ms.wheel(s, pypapo_version)
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
    click.echo(f"scheduler job {name} {what}: {cron} ({time_zone})")
    if run_now:
        from provisioner.cloud.gcp.cloudbuild import start_build

        build_id = start_build(clients, s.region, build)
        click.echo(f"mirror started: build {build_id} (`gcloud builds log {build_id} --region={s.region}`)")

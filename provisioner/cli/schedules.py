"""What `image schedule` and `mirror schedule` share: Cloud Scheduler starts a Cloud Build build.

Their flags (`schedule_options`: --cron, --time-zone, --disable, --delete, --run-now, --pypapo-version,
--dry-run, validated into one `Schedule` before anything else runs), pausing or deleting the job, and
starting one build now. Each command keeps what is its own: the build, the job and their roles.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from provisioner import __version__
from provisioner.cloud import plan
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.image import schedule as image_schedule
from provisioner.errors import PypapoError


@dataclass(frozen=True)
class Schedule:
    cron: str
    time_zone: str
    disable: bool
    delete: bool
    run_now: bool
    pypapo_version: str
    dry_run: bool


_FIELDS = ("cron", "time_zone", "disable", "delete", "run_now", "pypapo_version", "dry_run")


def schedule_options(*, cron: str, delete_help: str, run_now_help: str) -> Callable[..., Any]:
    """The shared flags; the command receives them as one validated keyword argument `schedule`."""
    options = [
        click.option("--cron", default=cron, show_default=True, help="unix-cron, 5 fields"),
        click.option("--time-zone", "time_zone", default="Etc/UTC", show_default=True, help="IANA time zone"),
        click.option("--disable", is_flag=True, help="pause the job (keeps it and its accounts)"),
        click.option("--delete", is_flag=True, help=delete_help),
        click.option("--run-now", is_flag=True, help=run_now_help),
        click.option(
            "--pypapo-version",
            default=__version__,
            show_default=True,
            help="pypapo wheel the build installs from the index bucket (publish it there first)",
        ),
        click.option(
            "--dry-run", is_flag=True, help="print the steps and requests; no credentials, no network"
        ),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            flags = {name: kwargs.pop(name) for name in _FIELDS}
            return func(schedule=_validated(Schedule(**flags)), **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _validated(s: Schedule) -> Schedule:
    # Before anything else: a typo must fail in a millisecond, not after creating accounts.
    if s.disable and s.delete:
        raise PypapoError("--disable and --delete exclude each other: pick one")
    cron = image_schedule.validate_cron(s.cron)
    time_zone = image_schedule.validate_time_zone(s.time_zone)
    return Schedule(cron, time_zone, s.disable, s.delete, s.run_now, s.pypapo_version, s.dry_run)


def stop_job(project: str, schedule: Schedule, name: str, operation: str) -> None:
    """--disable (pause) or --delete the job `name`; with --dry-run, print the one call instead."""
    call = "cloudscheduler.jobs.delete" if schedule.delete else "cloudscheduler.jobs.pause"
    if schedule.dry_run:
        step = plan.Step(method=call, request={"name": name}, why=call.rsplit(".", 1)[1] + " the job")
        echo_doc(image_plan.steps_document(operation, [step]))
        return
    from provisioner.cloud.gcp.scheduler import ScheduleApi

    api = ScheduleApi(Clients(project))
    done = api.delete_job(name) if schedule.delete else api.pause_job(name)
    verb = "deleted" if schedule.delete else "paused"
    click.echo(f"scheduler job {name} {verb}" if done else f"no scheduler job {name}: nothing to do")


def start_now(project: str, region: str, build: Any, what: str) -> None:
    """--run-now: one build as the job would start it; `what` names it (rebuild, mirror)."""
    from provisioner.cloud.gcp.cloudbuild import start_build

    build_id = start_build(Clients(project), region, build)
    click.echo(f"{what} started: build {build_id} (`gcloud builds log {build_id} --region={region}`)")


def echo_doc(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))

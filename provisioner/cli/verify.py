"""Commands: verify."""

from __future__ import annotations

import tempfile
from typing import Any

import click

from provisioner.appliance import verify
from provisioner.cli.options import settings_from_click, settings_options
from provisioner.errors import PypapoError


@click.command("verify")
@settings_options
@click.option(
    "--host",
    "ssh_url",
    default=None,
    metavar="ssh://USER@HOST[:PORT]",
    help="check this host over plain SSH instead of the instance through IAP",
)
@click.option(
    "--identity-file",
    "-i",
    default="",
    help="SSH private key (default for IAP: ~/.ssh/google_compute_engine)",
)
@click.option("--known-hosts", default="", help="known_hosts file for --host (default: ~/.ssh/known_hosts)")
@click.option("--user", default="", help="SSH user (default for IAP: your OS Login user from gcloud)")
@click.option(
    "--mount-path", default=verify.DEFAULT_MOUNT_PATH, show_default=True, help="where the bucket is mounted"
)
def verify_command(
    ssh_url: str | None, identity_file: str, known_hosts: str, user: str, mount_path: str, **kwargs: Any
) -> None:
    """Run the appliance's health suite (testinfra over SSH) and print a pass/fail table.

    By default it reaches the instance through IAP (`gcloud compute start-iap-tunnel INSTANCE 22
    --listen-on-stdin`) as your OS Login user; with --replicas, every instance of the group, one
    table each. --host checks any other host the same way.
    """
    if ssh_url:
        target = verify.Target.from_url(ssh_url, identity_file=identity_file, known_hosts=known_hosts)
        if user:
            target = verify.Target.from_url(
                f"ssh://{user}@{target.host}:{target.port}", identity_file, known_hosts
            )
        expect = verify.Expectations(
            port=kwargs.get("port") or verify.DEFAULT_PORT,
            mount_path=mount_path,
            bucket=kwargs.get("bucket") or "",
        )
        host = f"{target.user}@{target.host}:{target.port}"
        checks = [(host, host, target)]
    else:
        settings = settings_from_click(kwargs)
        expect = verify.Expectations(port=settings.port, mount_path=mount_path, bucket=settings.bucket)
        checks = _iap_targets(settings, user or verify.os_login_user(), identity_file)
    failures = []  # (name, failed, total)
    for name, where, target in checks:
        click.echo(f"verifying the appliance on {where}", err=True)
        results = verify.run_suite(target, expect)
        if len(checks) > 1:
            click.echo(f"\n{where}")
        click.echo(verify.format_table(results))
        failed = sum(r.outcome in ("failed", "error") for r in results)
        if failed:
            failures.append((name, failed, len(results)))
    if len(checks) == 1 and failures:
        _, failed, total = failures[0]
        raise PypapoError(f"{failed} of {total} checks failed (see the table): the appliance is unhealthy")
    if failures:
        each = "; ".join(f"{name}: {failed} of {total} checks failed" for name, failed, total in failures)
        raise PypapoError(
            f"{len(failures)} of {len(checks)} appliances are unhealthy ({each}; see the tables)"
        )


def _iap_targets(settings: Any, user: str, identity_file: str) -> list[tuple[str, str, verify.Target]]:
    """The single VM, or every instance of the group, each with a private known_hosts file of the
    host keys its guest agent published (none: the first key is accepted under `compute.ID`, as
    gcloud does)."""
    from provisioner.cloud.apply import Cloud
    from provisioner.cloud.verify_targets import appliances

    checks = []
    for a in appliances(Cloud.connect(settings).compute, settings):
        target = verify.Target.iap(
            settings.project,
            a.zone,
            a.name,
            user,
            identity_file,
            instance_id=a.instance_id,
            known_hosts=_known_hosts_file(verify.host_key_lines(a.instance_id, a.host_keys)),
        )
        name = f"instance {a.name}"
        checks.append((name, f"{name} ({a.zone}, {settings.project}) through IAP", target))
    return checks


def _known_hosts_file(lines: list[str]) -> str:
    if not lines:
        return ""
    fd, path = tempfile.mkstemp(prefix="pypapo-known-hosts-")
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


COMMANDS: list[click.Command] = [verify_command]

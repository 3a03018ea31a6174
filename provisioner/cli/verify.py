"""Commands: verify."""

from __future__ import annotations

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
    --listen-on-stdin`) as your OS Login user; --host checks any other host the same way.
    """
    if ssh_url:
        target = verify.Target.from_url(ssh_url, identity_file=identity_file, known_hosts=known_hosts)
        if user:
            target = verify.Target.from_url(
                f"ssh://{user}@{target.host}:{target.port}", identity_file, known_hosts
            )
        port = kwargs.get("port") or verify.DEFAULT_PORT
        bucket = kwargs.get("bucket") or ""
        where = f"{target.user}@{target.host}:{target.port}"
    else:
        settings = settings_from_click(kwargs)
        user = user or verify.os_login_user()
        instance_id, known = _published_host_keys(settings)
        target = verify.Target.iap(
            settings.project,
            settings.zone,
            settings.instance,
            user,
            identity_file,
            instance_id=instance_id,
            known_hosts=known,
        )
        port, bucket = settings.port, settings.bucket
        where = f"instance {settings.instance} ({settings.zone}, {settings.project}) through IAP"
    click.echo(f"verifying the appliance on {where}", err=True)
    results = verify.run_suite(target, verify.Expectations(port=port, mount_path=mount_path, bucket=bucket))
    click.echo(verify.format_table(results))
    failed = [r.name for r in results if r.outcome in ("failed", "error")]
    if failed:
        raise PypapoError(
            f"{len(failed)} of {len(results)} checks failed (see the table): the appliance is unhealthy"
        )


def _published_host_keys(settings: Any) -> tuple[str, str]:
    """The instance's id and a private known_hosts file of the host keys its guest agent published
    ("" when none are: then the first key is accepted under `compute.ID`, as gcloud does)."""
    import tempfile

    from provisioner.cloud import plan as planlib
    from provisioner.cloud.apply import Cloud

    compute = Cloud.connect(settings).compute
    inst = compute.get_instance(settings.zone, settings.instance)
    if inst is None:
        raise PypapoError(
            f"instance {settings.instance} does not exist in {settings.zone}; run `provision create` first"
        )
    published = planlib.guest_values(
        compute.get_guest_attributes(planlib.host_keys_request(settings)), "hostkeys"
    )
    lines = verify.host_key_lines(str(inst.id), published)
    if not lines:
        return str(inst.id), ""
    fd, path = tempfile.mkstemp(prefix="pypapo-known-hosts-")
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return str(inst.id), path


COMMANDS: list[click.Command] = [verify_command]

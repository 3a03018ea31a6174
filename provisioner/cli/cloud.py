"""Commands: plan, create, status, destroy, grant, revoke (the Google Cloud deployment)."""

from __future__ import annotations

import json
from typing import Any

import click

from provisioner.cli.options import progress, settings_from_click, settings_options
from provisioner.cloud import grants


def _cloud(settings: Any) -> Any:
    from provisioner.cloud.apply import Cloud

    return Cloud.connect(settings, progress=progress)


@click.command("plan")
@settings_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--offline", is_flag=True, help="desired state only: no credentials, no network")
def plan_command(output: str, offline: bool, **kwargs: Any) -> None:
    """Show every resource `create` would make or change, with its full specification."""
    from provisioner.cloud import apply as deploy
    from provisioner.cloud import plan as planlib

    settings = settings_from_click(kwargs)
    script = deploy.startup_script(settings)
    if offline:
        result = planlib.plan_create(settings, None, startup_script=script)
    else:
        result = planlib.plan_create(
            settings, deploy.observe(_cloud(settings), settings), startup_script=script
        )
    click.echo(result.to_json() if output == "json" else result.to_text(), nl=False)


@click.command("create")
@settings_options
@click.option(
    "--no-wait",
    is_flag=True,
    help="do not wait for the appliance to report ready (`provision status` tells); an empty image"
    " family's first bake is still waited for, since the appliance boots from the image it makes",
)
def create_command(no_wait: bool, **kwargs: Any) -> None:
    """Create or reconcile the bucket, service account, firewall, subnet access and VM (idempotent)."""
    from provisioner.cli.image import save_serial_log
    from provisioner.cloud import apply as deploy

    settings = settings_from_click(kwargs)
    script = deploy.startup_script(settings)
    cloud = _cloud(settings)
    cloud.save_log = save_serial_log  # a failed first bake keeps the builder's serial log
    cloud.iam.get_project()  # a wrong --project fails here, with a clear message
    deploy.create(cloud, settings, script=script, progress=progress, wait=not no_wait)
    # with --no-wait nothing has said the appliance serves yet: say so instead of "up"
    up = "is starting (not waited for: `provision status` says when it is ready)" if no_wait else "is up"
    if settings.group_mode:
        click.echo(
            f"pypapo {up}: group {settings.instance} of {settings.replicas} in {settings.region},"
            f" bucket gs://{settings.bucket}. Next: `provision status --replicas {settings.replicas}`"
            " (instances, the load balancer's URL), `provision grant` and `provision tunnel`."
        )
        return
    click.echo(
        f"pypapo {up}: {settings.instance} in {settings.zone}, bucket gs://{settings.bucket}."
        f" Next: `provision grant user:EMAIL --role reader` and `provision tunnel`."
    )


@click.command("status")
@settings_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_command(output: str, **kwargs: Any) -> None:
    """What exists, whether it drifted from the plan, and whether the appliance reports ready."""
    from provisioner.cloud import apply as deploy

    settings = settings_from_click(kwargs)
    report = deploy.status(_cloud(settings), settings)
    if output == "json":
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    if report.get("mode") == "group":
        click.echo(_group_status_text(report, settings.instance), nl=False)
        return
    inst = report["instance"]
    click.echo(f"project {report['project']}, zone {report['zone']}")
    if inst:
        click.echo(
            f"  instance {inst['name']}: {inst['status']}, {inst['internal_ip']},"
            f" appliance {inst['appliance']} ({inst['appliance_detail']})"
        )
        if inst.get("content_warning"):
            click.echo(deploy.content_message(f"the appliance on {inst['name']}", inst["content_warning"]))
    else:
        click.echo(f"  instance {settings.instance}: does not exist")
    click.echo("\n".join(_shared_status_lines(report, report["firewall"] or "does not exist")))


def _shared_status_lines(report: dict[str, Any], firewall: str) -> list[str]:
    """What both modes' status shows after their own resources: bucket, account, firewall, drift."""
    lines = [
        f"  bucket: {report['bucket'] or 'does not exist'}",
        f"  service account: {report['service_account'] or 'does not exist'}",
        f"  firewall: {firewall}",
        f"  private Google access: {'on' if report['private_google_access'] else 'off'}",
    ]
    if report["in_sync"]:
        lines.append("  in sync with the plan")
    for d in report["drift"]:
        fields = ", ".join(c["field"] for c in d["changes"])
        lines.append(f"  drift: {d['kind']} {d['name']}: {d['action']}" + (f" ({fields})" if fields else ""))
    return lines


def _group_status_text(report: dict[str, Any], name: str) -> str:
    from provisioner.cloud import apply as deploy

    lines = [f"project {report['project']}, region {report['region']}"]
    g = report["group"]
    if g is None:
        lines.append(f"  group {name}: does not exist (`provision create --replicas N`)")
    else:
        lines.append(
            f"  group {g['name']}: {g['healthy']} of {g['target_size']} healthy, template {g['template']}"
            f" (image {g['image'] or '?'}), zones {', '.join(g['zones'])}"
        )
        lines.append(f"    {'INSTANCE':24} {'ZONE':16} {'IMAGE':32} {'STATUS':10} {'HEALTH':10} ACTION")
        for i in g["instances"]:
            lines.append(
                f"    {i['name']:24} {i['zone']:16} {i['image']:32} {i['status']:10}"
                f" {i['health']:10} {i['action']}"
            )
        if g.get("content_warning"):
            lines.append(deploy.content_message(f"group {g['name']}", g["content_warning"]))
    lb = report["load_balancer"]
    lines.append(
        f"  load balancer: {lb['url']} (forwarding rule {lb['forwarding_rule']})"
        if lb["url"]
        else "  load balancer: does not exist"
    )
    if report["single_vm"]:
        lines.append(
            f"  single VM {report['single_vm']}: still there (the migration deletes it once the group serves)"
        )
    lines += _shared_status_lines(report, ", ".join(report["firewalls"]) or "none")
    return "\n".join(lines) + "\n"


@click.command("destroy")
@settings_options
@click.option("--delete-bucket", is_flag=True, help="also delete the bucket and every package in it")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def destroy_command(delete_bucket: bool, yes: bool, **kwargs: Any) -> None:
    """Delete the VM, firewall rule and service account; keep the bucket unless --delete-bucket."""
    from provisioner.cloud import apply as deploy

    settings = settings_from_click(kwargs)
    what = f"instance {settings.instance} ({settings.zone}), firewall rules {settings.firewall_name}"
    what += f" and {settings.deny_firewall_name}"
    if settings.group_mode:
        from provisioner.cloud.group import group_names

        what = (
            f"group {settings.instance} ({settings.region}) with its instances, templates, health checks,"
            f" load balancer and address, firewall rules {settings.firewall_name},"
            f" {group_names(settings).allow_health_checks}"
            f" and {settings.deny_firewall_name} (and a single VM {settings.instance} if one is left)"
        )
    what += f", service account {settings.service_account_email}"
    if delete_bucket:
        what += f" AND bucket gs://{settings.bucket} with every package in it"
    else:
        what += f" (bucket gs://{settings.bucket} is kept)"
    if not yes:
        click.confirm(f"Delete {what} in project {settings.project}?", abort=True, err=True)
    deploy.destroy(_cloud(settings), settings, delete_bucket=delete_bucket, progress=progress)


def _grant_command(present: bool) -> click.Command:
    verb = "grant" if present else "revoke"

    @click.command(verb)
    @click.argument("member")
    @click.option(
        "--role",
        type=click.Choice([r.value for r in grants.Role]),
        required=True,
        help="; ".join(f"{r.value}: {h}" for r, h in grants.ROLE_HELP.items()),
    )
    @settings_options
    @click.option("--dry-run", is_flag=True, help="print the exact policy change; no credentials, no network")
    @click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
    def command(member: str, role: str, dry_run: bool, output: str, **kwargs: Any) -> None:
        from provisioner.cloud import apply as deploy

        settings = settings_from_click(kwargs)
        if dry_run:
            changes = (grants.grant_changes if present else grants.revoke_changes)(settings, member, role)
            doc = grants.change_document(verb, role, changes, settings)
            text = (
                json.dumps(doc, indent=2, sort_keys=True) + "\n"
                if output == "json"
                else grants.change_text(doc)
            )
            click.echo(text, nl=False)
            return
        deploy.grant(_cloud(settings), settings, member, role, present=present, progress=progress)

    command.help = (
        f"{verb.capitalize()} MEMBER (user:EMAIL, group:EMAIL, serviceAccount:EMAIL) the reader role"
        " (roles/iap.tunnelResourceAccessor on the tunnel, roles/compute.viewer to read the instance),"
        " the publisher role (roles/storage.objectUser on the bucket) or the verifier role (the tunnel"
        " to port 22, roles/compute.osLogin, roles/iam.serviceAccountUser on the VM's account). For a"
        " group (--replicas N) the tunnel and read bindings are conditioned on the group's instances"
        " (IAM policy version 3). --dry-run prints the exact policy change and needs no credentials."
    )
    return command


COMMANDS: list[click.Command] = [
    plan_command,
    create_command,
    status_command,
    destroy_command,
    _grant_command(True),
    _grant_command(False),
]

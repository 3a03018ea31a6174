"""Commands: tunnel (gcloud IAP TCP forwarding to the appliance) and client-config."""

from __future__ import annotations

from typing import Any

import click

from provisioner.cli.options import settings_from_click, settings_options, settings_options_except

TUNNEL_URL = "http://localhost:3333/simple/"  # `provision tunnel`'s default local port


@click.command("tunnel")
@settings_options_except("port")
@click.option(
    "--port", "local_port", type=int, default=None, help="local port (default: the serving port, 3333)"
)
@click.option(
    "--remote-port", type=int, default=None, help="the appliance's serving port (default: 3333) [PYPAPO_PORT]"
)
def tunnel_command(local_port: int | None, remote_port: int | None, **kwargs: Any) -> None:
    """Open the IAP tunnel to the appliance (gcloud compute start-iap-tunnel) until Ctrl-C. For a group
    (--replicas N) it picks a healthy instance and moves to another one when that one is lost, on the
    same local port."""
    from provisioner.access import tunnel

    settings = settings_from_click({**kwargs, "port": remote_port})
    targets = tunnel.GroupTargets(settings, _group_lister(settings)) if settings.group_mode else None
    tunnel.run(settings, local_port or settings.port, say=click.echo, targets=targets)


def _group_lister(settings: Any) -> Any:
    """The group's managed instances, read with the caller's credentials (the reader's conditional
    compute.viewer)."""
    from provisioner.cloud.gcp.base import Clients
    from provisioner.cloud.gcp.compute import Compute

    return Compute(Clients(settings.project)).list_managed_instances


def _lb_address(settings: Any) -> tuple[str, bool]:
    """The internal load balancer's reserved address, and whether any client range may reach it."""
    from provisioner.cloud import group
    from provisioner.cloud.gcp.base import Clients
    from provisioner.cloud.gcp.compute import Compute
    from provisioner.errors import PypapoError

    compute = Compute(Clients(settings.project))
    names = group.group_names(settings)
    address = compute.get_address(settings.region, names.address)
    if address is None or not address.address:
        raise PypapoError(
            f"{settings.instance} has no internal load balancer in {settings.region} (address"
            f" {names.address} does not exist): a single VM has none, `provision create --replicas N`"
            " makes one; or use the tunnel (`--via tunnel`)"
        )
    return address.address, compute.get_firewall(names.allow_lb_clients) is not None


@click.command("client-config")
@click.option(
    "--tool",
    type=click.Choice(["pip", "uv", "poetry", "pdm", "pipenv", "conda", "mamba", "pixi"]),
    required=True,
)
@click.option(
    "--via",
    type=click.Choice(["tunnel", "lb"]),
    default="tunnel",
    show_default=True,
    help="tunnel: the index through `provision tunnel` on localhost; lb: the group's internal load"
    " balancer, for clients inside the VPC (reads its address: needs --project/--zone)",
)
@click.option(
    "--url",
    default=None,
    help=f"pypapo's index URL as the client sees it (default with --via tunnel: {TUNNEL_URL})",
)
@click.option(
    "--package",
    "packages",
    multiple=True,
    metavar="NAME",
    help="a private package (repeat; every private name, transitive ones included; default: a placeholder)",
)
@click.option(
    "--public-index",
    default="https://pypi.org/simple/",
    show_default=True,
    metavar="URL|none",
    help="the index for everything else (a company proxy), or `none` when pypapo mirrors everything "
    "(`provision mirror`)",
)
@settings_options
def client_config_command(
    tool: str, via: str, url: str | None, packages: tuple[str, ...], public_index: str, **kwargs: Any
) -> None:
    """Print client configuration that keeps private names, direct or transitive, away from the public
    index (stdout), and on stderr what it joins, why it is safe, and the command that checks it."""
    from provisioner.errors import PypapoError
    from provisioner.repo import clientconfig

    if via == "lb":
        if url is not None:
            raise PypapoError("pass --url or --via lb, not both (--via lb reads the balancer's URL)")
        from provisioner.cloud import group

        settings = settings_from_click(kwargs)
        ip, reachable = _lb_address(settings)
        url = group.lb_url(ip, settings.port)
        click.echo(
            f"# {url}: the internal load balancer, for clients inside the VPC in {settings.region};"
            " no IAM check on this path, only the client ranges of the firewall rule"
            f" {group.group_names(settings).allow_lb_clients}",
            err=True,
        )
        if not reachable:
            click.echo(
                f"# warning: no client range may reach it yet (firewall rule"
                f" {group.group_names(settings).allow_lb_clients} does not exist): run `provision create"
                " --replicas N --lb-client CIDR` with their ranges (see the README)",
                err=True,
            )
    cfg = clientconfig.render(tool, url or TUNNEL_URL, packages, public_index)
    click.echo(cfg.text, nl=False)
    click.echo(f"# {cfg.file}: {cfg.note}", err=True)
    click.echo(f"# merge into {cfg.file}: {', '.join(cfg.joins)}", err=True)
    click.echo(f"# check it (where {cfg.file} is): {cfg.verify}", err=True)
    if cfg.env:
        exports = " ".join(f"{k}={v}" for k, v in cfg.env)
        click.echo(
            "# and in the environment of every install (shell profile, CI job, Dockerfile ENV), so that a"
            f" lost replica costs a retry, not the install: export {exports}",
            err=True,
        )


COMMANDS: list[click.Command] = [tunnel_command, client_config_command]

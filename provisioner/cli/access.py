"""Commands: tunnel (gcloud IAP TCP forwarding to the appliance) and client-config."""

from __future__ import annotations

from typing import Any

import click

from provisioner.cli.options import settings_from_click, settings_options_except


@click.command("tunnel")
@settings_options_except("port")
@click.option(
    "--port", "local_port", type=int, default=None, help="local port (default: the serving port, 3333)"
)
@click.option(
    "--remote-port", type=int, default=None, help="the appliance's serving port (default: 3333) [PYPAPO_PORT]"
)
def tunnel_command(local_port: int | None, remote_port: int | None, **kwargs: Any) -> None:
    """Open the IAP tunnel to the appliance (gcloud compute start-iap-tunnel) until Ctrl-C."""
    from provisioner.access import tunnel

    settings = settings_from_click({**kwargs, "port": remote_port})
    tunnel.run(settings, local_port or settings.port, say=click.echo)


@click.command("client-config")
@click.option(
    "--tool",
    type=click.Choice(["pip", "uv", "poetry", "pdm", "pipenv", "conda", "mamba", "pixi"]),
    required=True,
)
@click.option("--url", default="http://localhost:3333/simple/", show_default=True, help="pypapo's index URL")
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
def client_config_command(tool: str, url: str, packages: tuple[str, ...], public_index: str) -> None:
    """Print client configuration that keeps private names, direct or transitive, away from the public
    index (stdout), and on stderr what it joins, why it is safe, and the command that checks it."""
    from provisioner.repo import clientconfig

    cfg = clientconfig.render(tool, url, packages, public_index)
    click.echo(cfg.text, nl=False)
    click.echo(f"# {cfg.file}: {cfg.note}", err=True)
    click.echo(f"# merge into {cfg.file}: {', '.join(cfg.joins)}", err=True)
    click.echo(f"# check it (where {cfg.file} is): {cfg.verify}", err=True)


COMMANDS: list[click.Command] = [tunnel_command, client_config_command]

"""The `provision` command line. Each command lives in a module of `provisioner.commands`."""

from __future__ import annotations

import importlib

import click

from provisioner import __version__

# One module per concern; each exports COMMANDS, a list of click commands or groups.
_COMMAND_MODULES = ("repo", "appliance", "cloud", "tunnel", "image", "verify")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """pypapo: a private Python package index in a GCS bucket, served by a hardened VM behind IAP."""


for _name in _COMMAND_MODULES:
    for _command in importlib.import_module(f"provisioner.commands.{_name}").COMMANDS:
        main.add_command(_command)

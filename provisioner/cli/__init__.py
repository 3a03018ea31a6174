"""The `provision` command line: the only package that imports click (and may import every room).

Each command lives in a module of `provisioner.cli`; the logic it calls lives in the rooms
(`repo`, `appliance`, `cloud`, `access`). A `PypapoError` from anywhere becomes one `error: ...` line
and its exit code.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from provisioner import __version__
from provisioner.errors import PypapoError, one_line

# The exit status of a process killed by SIGPIPE, as a shell reports it (128 + 13).
SIGPIPE_EXIT = 128 + signal.SIGPIPE

# One module per concern; each exports COMMANDS, a list of click commands or groups. The modules load
# lazily: the Compute client library alone takes over a second to import, and `provision publish` in a
# CI job should not pay for it.
_COMMANDS: dict[str, str] = {
    "publish": "repo",
    "yank": "repo",
    "unyank": "repo",
    "remove": "repo",
    "list": "repo",
    "reindex": "repo",
    "mirror": "mirror",
    "render": "appliance",
    "serve": "appliance",
    "demo": "appliance",
    "plan": "cloud",
    "create": "cloud",
    "status": "cloud",
    "destroy": "cloud",
    "grant": "cloud",
    "revoke": "cloud",
    "tunnel": "access",
    "client-config": "access",
    "image": "image",
    "rollout": "image",
    "rollback": "image",
    "verify": "verify",
}


class _UserError(click.ClickException):
    """How click shows a `PypapoError`: `error: MESSAGE` on stderr, the error's own exit code."""

    def __init__(self, error: PypapoError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: object = None) -> None:
        # One line, whatever the message quotes (filenames, metadata, object names from a bucket).
        click.echo(f"error: {one_line(self.format_message())}", err=True)


def _load(module: str) -> dict[str, click.Command]:
    commands = importlib.import_module(f"provisioner.cli.{module}").COMMANDS
    return {c.name: c for c in commands if c.name}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        return _load(module).get(cmd_name) if module else None

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PypapoError as exc:
            raise _UserError(exc) from None
        except BrokenPipeError:
            # The reader went away (`provision list | head`): stop quietly, as a tool killed by SIGPIPE
            # does, and keep Python from complaining when it flushes stdout on the way out.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(SIGPIPE_EXIT)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """pypapo: a private Python package index in a GCS bucket, served by a hardened VM behind IAP."""

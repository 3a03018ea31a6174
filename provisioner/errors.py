"""Errors a user sees as one clear line (no traceback) and a non-zero exit."""

from __future__ import annotations

import click


class PypapoError(click.ClickException):
    """A failure the user can act on. The message is one line and names the fix where there is one."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class InvalidDistribution(PypapoError):
    """A file offered for publishing is not a valid distribution (bad name, archive, metadata, paths)."""

    exit_code = 2


class ConflictError(PypapoError):
    """A write lost against another writer more times than the retry budget allows, or bytes differ."""

    exit_code = 3

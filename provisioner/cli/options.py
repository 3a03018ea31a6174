"""Click options for the deployment settings (`provisioner.cloud.settings` holds the rules, click-free)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from provisioner.cloud.settings import (
    _INT_FIELDS,
    _LIST_FIELDS,
    _OPTION_HELP,
    CONFIG_FILE,
    FIELDS,
    Settings,
    flag,
    load,
)


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Click options for every setting plus --config; the command receives them as keyword arguments.

    Pass them on with `settings_from_click(kwargs)`, which pops them and returns validated `Settings`.
    """
    return settings_options_except()(func)


def settings_options_except(*excluded: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like `settings_options` without some fields (a command that gives the flag another meaning)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(FIELDS):
            if field in excluded:
                continue
            func = click.option(
                flag(field),
                field,
                type=int if field in _INT_FIELDS else str,
                default=None,
                multiple=field in _LIST_FIELDS,
                metavar="CIDR" if field in _LIST_FIELDS else None,
                help=_OPTION_HELP.get(field),
            )(func)
        return click.option(
            "--config",
            "config",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"settings file (default: ./{CONFIG_FILE} if present) [PYPAPO_CONFIG]",
        )(func)

    return decorate


def settings_from_click(kwargs: dict[str, Any]) -> Settings:
    """Pop the settings options out of a command's kwargs and build validated `Settings`."""
    flags = {field: kwargs.pop(field, None) for field in FIELDS}
    return load(flags, config=kwargs.pop("config", None))


def progress(message: str) -> None:
    """The CLI's one progress printer for long cloud operations: stderr, so JSON on stdout stays clean."""
    click.echo(message, err=True)

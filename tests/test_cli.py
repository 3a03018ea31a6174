"""The command registry: every command a module defines is reachable, and nothing is listed twice."""

from __future__ import annotations

import importlib
import pkgutil

from click.testing import CliRunner

import provisioner.cli
from provisioner.cli import _COMMANDS, main


def test_every_defined_command_is_registered_under_its_module() -> None:
    defined = {}
    for info in pkgutil.iter_modules(provisioner.cli.__path__):
        for command in getattr(importlib.import_module(f"provisioner.cli.{info.name}"), "COMMANDS", []):
            defined[command.name] = info.name
    assert defined == _COMMANDS


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in _COMMANDS:
        assert f"  {name} " in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["publsh"])
    assert result.exit_code == 2
    assert "No such command" in result.output

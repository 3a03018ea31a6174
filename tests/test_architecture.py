"""The tree is the architecture: which room may import which, and only `provisioner.cli` knows click."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "provisioner"
ROOMS = ("repo", "appliance", "cloud", "access", "cli")
# What each room may import from the others (errors and the package root are open to all).
ALLOWED = {
    "repo": set(),
    "appliance": {"repo"},
    "cloud": {"repo", "appliance"},
    "access": {"repo", "cloud"},
    "cli": {"repo", "appliance", "cloud", "access"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "provisioner" and parts[1] in ROOMS else None


def _modules(room: str | None = None) -> list[Path]:
    base = PACKAGE / room if room else PACKAGE
    return sorted(p for p in base.rglob("*.py") if "_templates" not in p.parts)


@pytest.mark.parametrize("room", ROOMS)
def test_a_room_imports_only_the_rooms_it_may(room: str) -> None:
    bad = []
    for path in _modules(room):
        for module in _imports(path):
            other = _room(module)
            if other and other != room and other not in ALLOWED[room]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_click() -> None:
    bad = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if "cli" not in path.relative_to(PACKAGE).parts[:1]
        and any(m == "click" or m.startswith("click.") for m in _imports(path))
    ]
    assert not bad, f"click imported outside provisioner/cli: {bad}"


def test_every_room_says_what_it_is_for() -> None:
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"provisioner/{room}/__init__.py: say what it may import"

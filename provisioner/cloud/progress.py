"""What long operations say while they run: a `Progress` callable the caller passes in.

Nothing in `cloud/` prints: `cli/` decides how progress looks (`cli.output.progress`, to stderr so
JSON on stdout stays clean); a library caller or a test passes its own, or `silent`.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def silent(_message: str) -> None:
    return None

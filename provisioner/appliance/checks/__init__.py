"""The testinfra suite of a healthy appliance (``test_appliance.py``), run by ``provision verify``.

It is shipped in the wheel and run against a host over SSH; the project's own test run does not collect
it (its testpaths is ``tests``). ``SUITE`` is its path for ``pytest.main``.
"""

from __future__ import annotations

from pathlib import Path

SUITE = Path(__file__).with_name("test_appliance.py")

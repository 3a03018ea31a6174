"""Where the vm test cannot run it says why, and in CI (PYPAPO_REQUIRE_VM=1) that is a failure, not a skip."""

from __future__ import annotations

import pytest

from tests.vm import test_appliance_vm as vm


def test_missing_tool_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYPAPO_REQUIRE_VM", raising=False)
    monkeypatch.setattr(vm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        vm.shutil, "which", lambda tool: None if tool == "systemd-nspawn" else f"/usr/bin/{tool}"
    )
    with pytest.raises(pytest.skip.Exception, match="systemd-nspawn is not installed"):
        vm.check_prerequisites()


def test_not_root_fails_when_the_vm_test_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPAPO_REQUIRE_VM", "1")
    monkeypatch.setattr(vm.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match=r"PYPAPO_REQUIRE_VM=1.*needs root"):
        vm.check_prerequisites()

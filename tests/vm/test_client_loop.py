"""The HA test's client loop counts every way an install can go wrong as a failed install.

A check that raised inside `install` (a missing dist-info after pip said it succeeded) used to end the
loop's thread silently: the loop then reported no failure at all, only fewer installs."""

from __future__ import annotations

import subprocess
import time

from tests.vm.balancer import ClientLoop


def test_an_exception_in_an_install_is_a_failed_install_and_the_loop_goes_on() -> None:
    def install(n: int) -> subprocess.CompletedProcess[str]:
        if n == 1:
            raise AssertionError("vmprobe_app-1.0.dist-info missing")
        time.sleep(0.01)
        return subprocess.CompletedProcess(["pip"], 0, "", "")

    loop = ClientLoop(install)
    loop.start()
    loop.wait_installs_since(0.0, 3, timeout=10)
    loop.stop()
    assert [o.detail for o in loop.failures] == ["AssertionError: vmprobe_app-1.0.dist-info missing"]

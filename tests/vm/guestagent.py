"""The test's stand-in for google-guest-agent's startup-script runner, installed into the guest's rootfs.

On Compute Engine, google-startup-scripts.service (After=network-online.target) runs
``google_metadata_script_runner startup`` at every boot: it fetches the ``startup-script`` metadata value,
writes it to a file, executes it and logs each line with a ``startup-script:`` prefix. Here a oneshot unit
with the same ordering runs the rendered script from /var/lib/pypapo-test/startup-script the same way.

On a new instance the agent also makes the SSH host keys before sshd starts (the golden image has none:
the bake removed them); HOSTKEYS_UNIT does that here with ``ssh-keygen -A``.
"""

from __future__ import annotations

from pathlib import Path

UNIT = "pypapo-test-guest-agent-standin.service"
SCRIPT_PATH = "var/lib/pypapo-test/startup-script"

UNIT_TEXT = """[Unit]
Description=TEST STAND-IN for google-guest-agent's startup-script runner (pypapo vm test)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
KillMode=process
ExecStart=/usr/local/libexec/pypapo-test-run-startup-script
StandardOutput=journal+console
StandardError=inherit

[Install]
WantedBy=multi-user.target
"""

HOSTKEYS_UNIT = "pypapo-test-guest-agent-hostkeys.service"
HOSTKEYS_TEXT = """[Unit]
Description=TEST STAND-IN for google-guest-agent's SSH host key set-up (pypapo vm test)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""

RUNNER = """#!/bin/bash
# TEST STAND-IN for google_metadata_script_runner (pypapo vm test): run the startup script like it does.
set -o pipefail
tmp=$(mktemp -d /run/startup-scripts.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
install -m 0755 /var/lib/pypapo-test/startup-script "$tmp/startup-script"
echo "Starting startup scripts (test stand-in)."
"$tmp/startup-script" 2>&1 | sed -u 's/^/startup-script: /'
rc=$?
echo "startup-script exit status $rc"
echo "Finished running startup scripts."
exit $rc
"""


def install(root: Path, startup_script: str) -> None:
    (root / SCRIPT_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / SCRIPT_PATH).write_text(startup_script)
    runner = root / "usr/local/libexec/pypapo-test-run-startup-script"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(RUNNER)
    runner.chmod(0o755)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit, text in ((UNIT, UNIT_TEXT), (HOSTKEYS_UNIT, HOSTKEYS_TEXT)):
        (root / "etc/systemd/system" / unit).write_text(text)
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to(f"/etc/systemd/system/{unit}")

"""The guest-attribute contract: what the scripts write is what the provisioner reads, judged one way."""

from __future__ import annotations

import re
import subprocess

from provisioner.appliance import guest, render
from provisioner.appliance.guest import Key, State

SERVE = render.ApplianceConfig(bucket="proj-123456-pypapo")


def test_serving_reports_ready_only_on_ready_true() -> None:
    assert guest.serving({}) == guest.Report(State.STARTING, "no guest attributes yet")
    assert guest.serving({"ready": "false", "status": "starting"}).state is State.STARTING
    assert guest.serving({"ready": "true", "status": "ready"}) == guest.Report(State.READY, "true")


def test_serving_fails_on_error_or_on_a_final_status_alone() -> None:
    # Both are written on failure; either may be the one a rate-limited metadata server dropped.
    assert guest.serving({"ready": "false", "error": "nginx is not running"}) == guest.Report(
        State.FAILED, "nginx is not running"
    )
    only_status = {"ready": "false", "status": "not ready: /mnt/pypapo is not mounted"}
    assert guest.serving(only_status) == guest.Report(State.FAILED, "/mnt/pypapo is not mounted")
    assert guest.serving({"status": "not ready"}).state is State.FAILED
    # an error wins over a stale ready=true
    assert guest.serving({"ready": "true", "error": "x"}).state is State.FAILED


def test_serving_shows_what_the_script_waits_for() -> None:
    waiting = {"ready": "false", "status": "waiting for the bucket mount (IAM propagation)"}
    assert guest.serving(waiting) == guest.Report(State.STARTING, waiting["status"])
    assert "not ready" not in guest.serving(waiting).detail


def test_baking() -> None:
    assert guest.baking({}).state is State.STARTING
    assert guest.baking({"gcsfuse-version": "2.5.1"}).state is State.STARTING
    assert guest.baking({"bake": "done"}).state is State.READY
    assert guest.baking({"bake": "failed"}) == guest.Report(State.FAILED, "see its serial log")
    assert guest.baking({"bake": "failed", "error": "apt: exit 100"}).detail == "apt: exit 100"
    assert guest.versions({"gcsfuse-version": "2.5.1"}) == {
        "gcsfuse-version": "2.5.1",
        "nginx-version": "unknown",
    }


def _written_keys(script: str) -> set[str]:
    return set(re.findall(r"^\s*(?:report|unreport|put) ([a-z-]+)\b", script, re.M))


def test_the_scripts_write_only_contract_keys() -> None:
    serve = render.render_startup_script(SERVE)
    assert _written_keys(serve) == {Key.READY, Key.STATUS, Key.ERROR, Key.DIGEST}
    assert f"/guest-attributes/{guest.NAMESPACE}/$1" in serve
    bake = render.render_bake_script(serve)
    assert _written_keys(bake) - _written_keys(serve) == {Key.BAKE, Key.GCSFUSE_VERSION, Key.NGINX_VERSION}


# -------------------------------------------------------------------------------------- the bake wrapper


def _run_wrapper(tmp_path, appliance: str) -> tuple[list[str], str]:
    """Run the builder's startup script with curl and dpkg-query replaced by recorders (no network)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    puts = tmp_path / "puts"
    # one line per call, the arguments separated by US (a value may hold spaces)
    (bin_dir / "curl").write_text(f"#!/bin/sh\n{{ printf '%s\\037' \"$@\"; echo; }} >> {puts}\n")
    (bin_dir / "dpkg-query").write_text(
        '#!/bin/sh\ncase "$*" in *gcsfuse*) echo 2.5.1;; *) echo 1.22.1-9;; esac\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = tmp_path / "builder.sh"
    script.write_text(render.render_bake_script(appliance))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return (puts.read_text().splitlines() if puts.exists() else []), out.stdout


def _attrs(puts: list[str]) -> dict[str, str]:
    """{key: value} from the recorded `curl ... -X PUT --data VALUE ... .../guest-attributes/pypapo/KEY`."""
    out = {}
    for line in puts:
        words = line.rstrip("\x1f").split("\x1f")
        out[words[-1].rsplit("/", 1)[-1]] = words[words.index("--data") + 1]
    return out


def test_bake_wrapper_reports_versions_then_done(tmp_path) -> None:
    puts, stdout = _run_wrapper(tmp_path, '#!/bin/bash\n[ "$1" = bake ] || exit 9\necho "pypapo: baked"\n')
    attrs = _attrs(puts)
    assert attrs == {"gcsfuse-version": "2.5.1", "nginx-version": "1.22.1-9", "bake": "done"}
    assert guest.baking(attrs).state is State.READY
    assert guest.versions(attrs) == {"gcsfuse-version": "2.5.1", "nginx-version": "1.22.1-9"}
    assert _attrs(puts[-1:]) == {"bake": "done"}, "done comes last: versions are there when it is seen"
    assert "pypapo: baked" in stdout and "pypapo-bake: done" in stdout


def test_bake_wrapper_reports_a_failed_bake(tmp_path) -> None:
    puts, stdout = _run_wrapper(tmp_path, "#!/bin/bash\nexit 3\n")
    attrs = _attrs(puts)
    assert attrs["bake"] == "failed" and "gcsfuse-version" not in attrs
    assert "pypapo-bake: failed (status 3)" in stdout
    assert guest.baking(attrs) == guest.Report(
        State.FAILED, "appliance script exited with status 3 in bake mode"
    )


def test_bake_wrapper_around_the_real_appliance_script_passes_shellcheck(tmp_path) -> None:
    appliance = render.render_startup_script(render.ApplianceConfig(bucket="proj-123456-pypapo"))
    script = tmp_path / "builder.sh"
    script.write_text(render.render_bake_script(appliance))
    result = subprocess.run(
        ["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout

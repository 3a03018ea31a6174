"""The guest-attribute contract: what the scripts write is what the provisioner reads, judged one way."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.appliance import guest, render
from provisioner.appliance.guest import Key, State
from tests.fixtures import metadata

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
    return set(re.findall(r"\bga_(?:put|delete|note) ([a-z-]+)\b", script))


def test_the_scripts_write_only_contract_keys() -> None:
    serve = render.render_startup_script(SERVE)
    assert _written_keys(serve) == {Key.READY, Key.STATUS, Key.ERROR, Key.DIGEST, Key.CONTENT}
    assert f"/guest-attributes/{guest.NAMESPACE}/$2" in serve
    bake = render.render_bake_script(serve)
    assert _written_keys(bake) - _written_keys(serve) == {Key.BAKE, Key.GCSFUSE_VERSION, Key.NGINX_VERSION}


# -------------------------------------------------------------------------------------- the bake wrapper


def _run_wrapper(tmp_path: Path, appliance: str, md: metadata.MetadataServer) -> str:
    """Run the builder's startup script against the metadata stand-in (on loopback), with a private
    /run and /var/lib (its guest-attribute budget lives there).

    Its curl goes to the stand-in instead of metadata.google.internal; dpkg-query answers two versions.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private /run for the script's guest-attribute budget)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    metadata.curl_shim(bin_dir, md.url)
    (bin_dir / "dpkg-query").write_text(
        '#!/bin/sh\ncase "$*" in *gcsfuse*) echo 2.5.1;; *) echo 1.22.1-9;; esac\n'
    )
    (bin_dir / "dpkg-query").chmod(0o755)
    script = tmp_path / "builder.sh"
    script.write_text(
        render.render_bake_script(appliance).replace("export PATH=", f"export PATH={bin_dir}:", 1)
    )
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs t /run && mount -t tmpfs t /var/lib && exec bash "$0"', str(script)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout + out.stderr


def _writes(md: metadata.MetadataServer) -> list[tuple[str, str | None]]:
    return [(q.key.split("/", 1)[1], q.value) for q in md.queries() if q.outcome == "stored"]


def test_bake_wrapper_reports_versions_then_done(tmp_path: Path) -> None:
    with metadata.serving() as md:
        out = _run_wrapper(tmp_path, '#!/bin/bash\n[ "$1" = bake ] || exit 9\necho "pypapo: baked"\n', md)
        attrs = md.guest_attributes(guest.NAMESPACE)
        writes = _writes(md)
    assert attrs == {"gcsfuse-version": "2.5.1", "nginx-version": "1.22.1-9", "bake": "done"}
    assert guest.baking(attrs).state is State.READY
    assert guest.versions(attrs) == {"gcsfuse-version": "2.5.1", "nginx-version": "1.22.1-9"}
    assert writes[-1] == ("bake", "done"), "done comes last: versions are there when it is seen"
    assert "pypapo: baked" in out and "pypapo-bake: done" in out


def test_a_dropped_bake_done_is_written_again_within_the_limit(tmp_path: Path) -> None:
    """The metadata server may drop a write silently: the wrapper reads back and writes it again."""
    with metadata.serving() as md:
        md.drop_next("pypapo/bake", "done")
        start = time.monotonic()
        out = _run_wrapper(tmp_path, "#!/bin/bash\nexit 0\n", md)
        elapsed = time.monotonic() - start
        attrs = md.guest_attributes(guest.NAMESPACE)
        outcomes = [q.outcome for q in md.queries()]
        per_minute, per_second = md.max_rate()
    assert attrs["bake"] == "done"
    assert "dropped: injected" in outcomes and "dropped: rate limit" not in outcomes
    assert "did not stick" in out
    assert per_minute <= metadata.PER_MINUTE and per_second <= metadata.PER_SECOND
    assert elapsed < 20, f"the dropped write cost {elapsed:.0f}s"


def test_bake_wrapper_reports_the_failed_step(tmp_path: Path) -> None:
    reason = "packages: apt-get update: E: Failed to fetch http://deb.debian.org/x 404"
    failing = f"#!/bin/bash\nmkdir -p /run/pypapo\necho '{reason}' > {render.FAILURE_FILE}\nexit 3\n"
    with metadata.serving() as md:
        out = _run_wrapper(tmp_path, failing, md)
        attrs = md.guest_attributes(guest.NAMESPACE)
    assert attrs["bake"] == "failed" and "gcsfuse-version" not in attrs
    assert "pypapo-bake: failed (status 3)" in out
    assert guest.baking(attrs) == guest.Report(
        State.FAILED, "bake: packages: apt-get update: E: Failed to fetch http://deb.debian.org/x 404"
    )
    with metadata.serving() as md:
        _run_wrapper(tmp_path / "again", "#!/bin/bash\nexit 4\n", md) if (
            tmp_path / "again"
        ).mkdir() is None else None
        assert guest.baking(md.guest_attributes(guest.NAMESPACE)).detail == (
            "bake: appliance script exited with status 4"
        )


def test_bake_wrapper_around_the_real_appliance_script_passes_shellcheck(tmp_path) -> None:
    appliance = render.render_startup_script(render.ApplianceConfig(bucket="proj-123456-pypapo"))
    script = tmp_path / "builder.sh"
    script.write_text(render.render_bake_script(appliance))
    result = subprocess.run(
        ["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_content_warning_only_for_a_reported_problem() -> None:
    assert guest.content_warning({"ready": "true", "content": "ok"}) is None
    assert guest.content_warning({"ready": "true"}) is None  # an appliance from before the key
    broken = "conda channel unavailable: conda/channeldata.json is not JSON (run `provision reindex` ...)"
    assert guest.content_warning({"ready": "true", "content": broken}) == broken
    # never a failure: the appliance is ready whatever its content says
    assert guest.serving({"ready": "true", "content": broken}).state is guest.State.READY

"""The rendered VM files pass their own linters: nginx -t, systemd-analyze verify/security, shellcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner.appliance.render import (
    GCSFUSE_UNIT,
    NGINX_CONFIG_PATH,
    NGINX_RUNTIME_DIR,
    NGINX_UNIT,
    PAGE_GUARD_PATH,
    UNIT_DIR,
    ApplianceConfig,
    render_nginx_conf,
    render_page_guard,
    render_startup_script,
    render_units,
    render_vm_files,
)
from tests.fixtures import tools
from tests.fixtures.tools import need

CONFIGS = [
    ApplianceConfig(bucket="my-bucket"),
    ApplianceConfig(bucket="team.bucket-1", prefix="team/python", port=8080, mount_path="/srv/index"),
    ApplianceConfig(bucket="low-port", port=80, file_cache_max_size_mb=-1, metadata_cache_ttl_secs=0),
    # as the cloud renders it: the kernel wall on the nginx unit (IAP, health checkers, a client range)
    ApplianceConfig(
        bucket="walled", allowed_sources=("35.235.240.0/20", "35.191.0.0/16", "130.211.0.0/22", "10.8.0.0/16")
    ),
]
IDS = ["default", "prefix", "low-port", "walled"]


@pytest.mark.parametrize(
    ("env", "outcome"),
    [({}, pytest.skip.Exception), ({"CI": "true"}, pytest.fail.Exception),
     ({"PYPAPO_REQUIRE_VM": "1"}, pytest.fail.Exception), ({"CI": "false"}, pytest.skip.Exception)],
)  # fmt: skip
def test_a_missing_linter_skips_with_the_fix_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], outcome: type[BaseException]
) -> None:
    for var in ("CI", "PYPAPO_REQUIRE_VM"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(tools.shutil, "which", lambda _tool: None)
    monkeypatch.setattr(tools, "Path", lambda _p: tmp_path / "sbin")  # nothing in /usr/sbin either
    with pytest.raises(outcome, match=r"systemd-analyze is not installed \(apt-get install systemd"):
        need("systemd-analyze", "systemd")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_vm_nginx_config_passes_nginx_t(cfg: ApplianceConfig, tmp_path: Path) -> None:
    nginx = need("nginx")
    # The VM's file, with only its runtime directory moved into the test prefix (nginx -t creates the
    # temp paths and checks the pid path there) and its page guard beside the config (js_import reads it).
    vm_files = render_vm_files(cfg)
    runtime = tmp_path / "run"
    runtime.mkdir()
    guard = tmp_path / "page-guard.js"
    guard.write_text(vm_files[PAGE_GUARD_PATH])
    conf = render_nginx_conf(
        cfg, root_dir=cfg.mount_path, listen=str(cfg.port), runtime_dir=str(runtime), guard_path=str(guard)
    )
    vm_conf = vm_files[NGINX_CONFIG_PATH]
    assert conf == vm_conf.replace(NGINX_RUNTIME_DIR, str(runtime)).replace(PAGE_GUARD_PATH, str(guard))
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[warn]" not in proc.stderr and "[emerg]" not in proc.stderr, proc.stderr


def test_serve_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = need("nginx")
    conf = render_nginx_conf(
        ApplianceConfig(bucket="local-directory"),
        root_dir=str(tmp_path / "repo"),
        listen="127.0.0.1:3333",
        runtime_dir=str(tmp_path),
        access_log=str(tmp_path / "access.log"),
        user="root",
        guard_path=str(tmp_path / "page-guard.js"),
    )
    (tmp_path / "page-guard.js").write_text(render_page_guard())
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[warn]" not in proc.stderr, proc.stderr


def _units_with_stub_gcsfuse(cfg: ApplianceConfig, tmp_path: Path) -> list[Path]:
    """The VM's units, except that ExecStart points at a stub gcsfuse (not installable on this host).

    systemd-analyze verify refuses a missing executable; everything else is verified as rendered.
    """
    stub = tmp_path / "bin" / "gcsfuse"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    vm_files = render_vm_files(cfg)
    stubbed = render_units(ApplianceConfig(**{**cfg.__dict__, "gcsfuse_bin": str(stub)}))
    paths = []
    for name in (GCSFUSE_UNIT, NGINX_UNIT):
        assert stubbed[name] == vm_files[f"{UNIT_DIR}/{name}"].replace(cfg.gcsfuse_bin, str(stub))
        path = tmp_path / name
        path.write_text(stubbed[name])
        paths.append(path)
    return paths


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("systemd-analyze", "systemd"), "verify", *map(str, paths)], capture_output=True, text=True
    )


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_units_pass_systemd_analyze_verify(cfg: ApplianceConfig, tmp_path: Path) -> None:
    proc = _verify(_units_with_stub_gcsfuse(cfg, tmp_path))
    # verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt hardening key and a bad value are reported."""
    gcsfuse_unit, _ = _units_with_stub_gcsfuse(CONFIGS[0], tmp_path)
    text = gcsfuse_unit.read_text()
    broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes").replace(
        "DevicePolicy=closed", "DevicePolicy=closedd"
    )
    assert broken != text
    gcsfuse_unit.write_text(broken)
    proc = _verify([gcsfuse_unit])
    assert "NoNewPrivilegez" in proc.stderr
    assert "closedd" in proc.stderr


@pytest.mark.parametrize(("unit", "threshold"), [(NGINX_UNIT, 2.5), (GCSFUSE_UNIT, 5.0)])
def test_units_are_sandboxed(unit: str, threshold: float, tmp_path: Path) -> None:
    """systemd's own exposure score: NGINX fully sandboxed; gcsfuse as far as a visible mount allows."""
    paths = {p.name: p for p in _units_with_stub_gcsfuse(CONFIGS[0], tmp_path)}
    proc = subprocess.run(
        [
            need("systemd-analyze", "systemd"),
            "security",
            "--offline=yes",
            f"--threshold={int(threshold * 10)}",
            str(paths[unit]),
        ],
        capture_output=True,
        text=True,
    )
    # --threshold takes 0..100 (exposure x10); a higher exposure exits non-zero.
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"Overall exposure level for {unit}" in proc.stdout


def test_the_walled_unit_is_scored_with_an_ip_allow_list(tmp_path: Path) -> None:
    """systemd's own reading of the kernel wall: an allow list (not none) on the nginx unit, and a lower
    exposure than the same unit without it."""

    def security(cfg: ApplianceConfig, name: str) -> str:
        path = tmp_path / name / NGINX_UNIT
        path.parent.mkdir()
        path.write_text(render_units(cfg)[NGINX_UNIT])
        proc = subprocess.run(
            [need("systemd-analyze", "systemd"), "security", "--offline=yes", str(path)],
            capture_output=True,
            text=True,
        )
        return proc.stdout

    walled, bare = security(CONFIGS[3], "walled"), security(CONFIGS[0], "bare")
    assert "Service defines IP address allow list with non-localhost entries" in walled, walled[-3000:]
    assert "Service does not define an IP address allow list" in bare

    def exposure(out: str) -> float:
        return float(out.split(f"Overall exposure level for {NGINX_UNIT}: ")[1].split()[0])

    assert exposure(walled) < exposure(bare)


def test_gcsfuse_unit_has_no_mount_namespace(tmp_path: Path) -> None:
    """A private mount namespace would hide the mount from NGINX: none of the options that create one."""
    text = render_units(CONFIGS[0])[GCSFUSE_UNIT]
    settings = [
        line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")
    ]
    for key in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "DynamicUser",
        "RootDirectory",
        "MountFlags",
    ):
        assert key not in settings, key
    assert "Restart=always" in text
    assert text.count("fusermount3 -uz") == 2


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_startup_script_passes_shellcheck(cfg: ApplianceConfig, tmp_path: Path) -> None:
    shellcheck = need("shellcheck")
    script = tmp_path / "startup.sh"
    script.write_text(render_startup_script(cfg))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    proc = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout

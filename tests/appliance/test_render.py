"""What the VM gets: rendered from one ApplianceConfig, embedded verbatim in the startup script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from provisioner.appliance.render import (
    APT_PIN_PATH,
    APT_SOURCE_PATH,
    GCSFUSE_CONFIG_PATH,
    NGINX_CONFIG_PATH,
    PAGE_GUARD_PATH,
    UNIT_DIR,
    ApplianceConfig,
    config_digest,
    render_nginx_conf,
    render_startup_script,
    render_vm_files,
    template_dir,
)
from provisioner.cli import main
from provisioner.errors import PypapoError

CFG = ApplianceConfig(bucket="acme-pypi", prefix="team/python", port=3333)


def embedded_files(script: str) -> dict[str, str]:
    """The heredocs the startup script writes: write_file PATH MODE <<'DELIM' ... DELIM."""
    out = {}
    for m in re.finditer(r"^write_file (\S+) 0644 <<'(\w+)'\n(.*?)^\2$", script, re.M | re.S):
        out[m.group(1)] = m.group(3)
    for m in re.finditer(r"^  cat >(\S+) <<'(\w+)'\n(.*?)^\2$", script, re.M | re.S):
        out[m.group(1)] = m.group(3)
    return out


def test_vm_files_are_the_documented_set() -> None:
    assert set(render_vm_files(CFG)) == {
        APT_PIN_PATH,
        APT_SOURCE_PATH,
        GCSFUSE_CONFIG_PATH,
        NGINX_CONFIG_PATH,
        PAGE_GUARD_PATH,
        f"{UNIT_DIR}/pypapo-gcsfuse.service",
        f"{UNIT_DIR}/pypapo-nginx.service",
    }


@pytest.mark.parametrize(
    "cfg",
    [CFG, ApplianceConfig(bucket="b-1"), ApplianceConfig(bucket="x.y-z", port=80, mount_path="/srv/pypi")],
)
def test_startup_script_embeds_every_file_verbatim(cfg: ApplianceConfig) -> None:
    script = render_startup_script(cfg)
    assert script.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail" in script
    assert embedded_files(script) == render_vm_files(cfg)
    assert config_digest(render_vm_files(cfg)) in script


def test_gcsfuse_config() -> None:
    conf = yaml.safe_load(render_vm_files(CFG)[GCSFUSE_CONFIG_PATH])
    assert conf["only-dir"] == "team/python"
    assert conf["implicit-dirs"] is True
    assert "ro" in conf["file-system"]["fuse-options"]
    assert "allow_other" in conf["file-system"]["fuse-options"]
    # gcsfuse parses octal modes only from strings: 0444 must not arrive as decimal 444.
    assert conf["file-system"]["file-mode"] == "0444"
    assert conf["file-system"]["dir-mode"] == "0555"
    assert conf["metadata-cache"]["ttl-secs"] == CFG.metadata_cache_ttl_secs
    assert conf["metadata-cache"]["stat-cache-max-size-mb"] == CFG.stat_cache_max_size_mb
    assert conf["file-cache"]["max-size-mb"] == CFG.file_cache_max_size_mb
    assert conf["cache-dir"] == CFG.file_cache_dir

    custom = ApplianceConfig(bucket="b-1", metadata_cache_ttl_secs=5, file_cache_max_size_mb=-1)
    conf = yaml.safe_load(render_vm_files(custom)[GCSFUSE_CONFIG_PATH])
    assert "only-dir" not in conf  # no prefix: the bucket root is the repository
    assert conf["metadata-cache"]["ttl-secs"] == 5
    assert conf["file-cache"]["max-size-mb"] == -1


def test_units_follow_the_config() -> None:
    files = render_vm_files(CFG)
    mount = files[f"{UNIT_DIR}/pypapo-gcsfuse.service"]
    assert (
        "ExecStart=/usr/bin/gcsfuse --foreground --config-file=/etc/pypapo/gcsfuse.yaml acme-pypi /mnt/pypapo"
        in mount
    )
    assert "ExecStartPre=-/usr/bin/fusermount3 -uz /mnt/pypapo" in mount
    assert "ExecStopPost=-/usr/bin/fusermount3 -uz /mnt/pypapo" in mount
    nginx = files[f"{UNIT_DIR}/pypapo-nginx.service"]
    assert "-c /etc/pypapo/nginx.conf" in nginx
    assert "DynamicUser=yes" in nginx
    assert "CAP_NET_BIND_SERVICE" not in nginx  # 3333 needs no privilege
    low = render_vm_files(ApplianceConfig(bucket="b-1", port=80))[f"{UNIT_DIR}/pypapo-nginx.service"]
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in low
    # NGINX must outlive the mount (503 meanwhile), so it must not be bound to it.
    assert "BindsTo=" not in nginx and "Requires=" not in nginx


def test_vm_nginx_config_serves_the_mount() -> None:
    conf = render_vm_files(CFG)[NGINX_CONFIG_PATH]
    assert "root /mnt/pypapo;" in conf
    assert "listen 3333 default_server;" in conf
    assert "if (!-f /mnt/pypapo/simple/index.html)" in conf
    assert "server_tokens off;" in conf
    assert "absolute_redirect off;" in conf
    assert "autoindex off;" in conf
    assert "syslog:server=unix:/run/systemd/journal/dev-log" in conf
    assert re.search(r"^user ", conf, re.M) is None  # unprivileged master: no user switch


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket": "gs://acme"},
        {"bucket": "Acme"},
        {"bucket": "a"},
        {"bucket": "acme; rm -rf /"},
        {"bucket": "acme", "prefix": "/team"},
        {"bucket": "acme", "prefix": "team/"},
        {"bucket": "acme", "prefix": "team/../other"},
        {"bucket": "acme", "prefix": "team x"},
        {"bucket": "acme", "prefix": "a'b"},
        {"bucket": "acme", "port": 0},
        {"bucket": "acme", "port": 70000},
        {"bucket": "acme", "mount_path": "mnt/pypapo"},
        {"bucket": "acme", "mount_path": "/mnt/py papo"},
        {"bucket": "acme", "mount_path": "/"},
        {"bucket": "acme", "mount_path": "/tmp/pypapo"},
        {"bucket": "acme", "mount_path": "/home/me/pypapo"},
        {"bucket": "acme", "file_cache_dir": "/mnt/pypapo/cache"},
        {"bucket": "acme", "metadata_cache_ttl_secs": -5},
    ],
)
def test_unsafe_or_wrong_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(PypapoError):
        ApplianceConfig(**kwargs)  # type: ignore[arg-type]


def test_nginx_conf_refuses_unsafe_paths() -> None:
    for bad in ("relative/dir", "/tmp/a b", "/tmp/a;b", '/tmp/a"b'):
        with pytest.raises(PypapoError):
            render_nginx_conf(CFG, root_dir=bad, listen="3333", runtime_dir="/run/x")
    with pytest.raises(PypapoError):
        render_nginx_conf(CFG, root_dir="/srv", listen="3333; evil", runtime_dir="/run/x")


def test_unknown_mode_is_refused_before_anything_happens(tmp_path: Path) -> None:
    script = tmp_path / "startup.sh"
    script.write_text(render_startup_script(CFG))
    proc = subprocess.run(["bash", str(script), "destroy"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown mode 'destroy'" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYPAPO_MODE": "nonsense"},
    )
    assert proc.returncode == 2


def test_templates_come_from_the_checkout_in_development() -> None:
    root = template_dir()
    assert (root / "startup" / "nginx.conf.j2").is_file()
    assert (root / "systemd" / "pypapo-gcsfuse.service.j2").is_file()


def test_provision_render_writes_what_the_vm_gets(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["render", "--out", str(out), "--bucket", "acme-pypi", "--prefix", "team/python"]
    )
    assert result.exit_code == 0, result.output
    for vm_path, text in render_vm_files(CFG).items():
        assert (out / vm_path.lstrip("/")).read_text() == text
    script = out / "startup-script.sh"
    assert script.read_text() == render_startup_script(CFG)
    assert script.stat().st_mode & 0o111


def test_provision_render_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["render", "--out", str(tmp_path), "--bucket", "gs://acme"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("error: invalid bucket name")

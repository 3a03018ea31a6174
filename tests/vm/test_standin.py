"""The gcsfuse stand-in is as strict as gcsfuse: what real gcsfuse refuses, it refuses, before mounting.

Run on this machine (no VM): the stand-in script with its data files relocated by PYPAPO_TEST_*, against
a fake-gcs-server on loopback. Mounting (implicit-dirs) needs root and /dev/fuse, as the VM test does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from provisioner.appliance import render
from tests.fixtures.gcs import FakeGCS
from tests.vm import standin


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, args: list[str], endpoint: str | None = None, timeout: float = 30):  # type: ignore[no-untyped-def]
    script = tmp_path / "gcsfuse"
    script.write_text(standin.script())
    script.chmod(0o755)
    endpoint_file = tmp_path / "gcs-endpoint"
    endpoint_file.write_text((endpoint or f"http://127.0.0.1:{_closed_port()}") + "\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYPAPO_TEST_GCSFUSE_PARAMS": str(standin.PARAMS_FILE),
        "PYPAPO_TEST_GCS_ENDPOINT_FILE": str(endpoint_file),
        "PYPAPO_TEST_RCLONE": str(standin.rclone_binary()),
    }
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)


# Validation passed when the stand-in goes on to check the bucket (nothing listens on that port).
PASSED = "cannot reach storage"


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gcsfuse.yaml"
    path.write_text(text)
    return f"--config-file={path}"


def test_the_appliance_config_and_command_line_are_accepted(tmp_path: Path) -> None:
    cfg = render.ApplianceConfig(bucket="b-1", prefix="team/python")
    conf = render.render_gcsfuse_config(cfg)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = _run(tmp_path, ["--foreground", _config(tmp_path, conf), "b-1", str(mnt)])
    assert PASSED in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--implicit-dir"], "Error: unknown flag: --implicit-dir"),
        (["--stat-cache-ttl-secs", "5"], "unknown flag: --stat-cache-ttl-secs"),
        (["--uid", "nobody"], 'invalid argument "nobody" for "--uid" flag'),
        (["--implicit-dirs=maybe"], 'invalid argument "maybe" for "--implicit-dirs" flag'),
        (["--log-severity=loud"], "invalid log severity"),
        (["--file-mode=0999"], "not an octal number"),
        # a bool takes no separate value: `true` becomes a third positional argument
        (["--implicit-dirs", "true"], "received 3"),
    ],
)
def test_flags_gcsfuse_refuses_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    res = _run(tmp_path, [*args, "bucket", str(tmp_path)])
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert PASSED not in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--implicit-dirs=false", "--foreground=true", "-o", "ro", "-o=allow_other"],
        ["--implicit-dirs", "--only-dir=team", "--metadata-cache-ttl-secs", "60", "-foreground"],
        ["--kernel-list-cache-ttl-secs=-1", "--debug_fuse", "--app-name", "x"],
    ],
)
def test_flags_gcsfuse_takes_are_taken(tmp_path: Path, args: list[str]) -> None:
    res = _run(tmp_path, [*args, "bucket", str(tmp_path)])
    assert PASSED in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("implicit-dir: true\n", "'' has invalid keys: implicit-dir"),
        ("file-system:\n  fuse-option:\n    - ro\n", "'file-system' has invalid keys: fuse-option"),
        ("metadata-cache:\n  ttl: 60\n", "'metadata-cache' has invalid keys: ttl"),
        ("nonsense:\n  a: 1\n", "'' has invalid keys: nonsense"),
        ("implicit-dirs: yes-please\n", "config key implicit-dirs"),
        ("metadata-cache:\n  ttl-secs: sixty\n", "config key metadata-cache.ttl-secs"),
        ("file-system:\n\tuid: 0\n", "tab character"),
    ],
)
def test_config_keys_gcsfuse_refuses_are_refused(tmp_path: Path, text: str, message: str) -> None:
    res = _run(tmp_path, [_config(tmp_path, text), "bucket", str(tmp_path)])
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert PASSED not in res.stderr


def test_the_package_depends_on_what_gcsfuse_depends_on(tmp_path: Path) -> None:
    deb = standin.build_gcsfuse_deb(tmp_path)
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fields.splitlines() == ["Package: gcsfuse", f"Version: {render.GCSFUSE_VERSION}", "Depends: fuse"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/gcsfuse" in listing and f".{standin.LIBEXEC}/rclone" in listing


class _Forbidden(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"error": {"code": 403, "message": "no storage.objects.list"}}'
        self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _forbidden_storage() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_grant_not_yet_propagated_fails_the_mount_as_gcsfuse_does(tmp_path: Path) -> None:
    with _forbidden_storage() as url:
        res = _run(tmp_path, ["--foreground", "bucket", str(tmp_path)], endpoint=url)
    assert res.returncode != 0
    assert "Error while mounting gcsfuse" in res.stderr and "storage.objects.list" in res.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="mounting needs root and FUSE"
)
@pytest.mark.parametrize("implicit", [True, False])
def test_directories_need_implicit_dirs_or_placeholders(
    tmp_path: Path, fake_gcs: FakeGCS, implicit: bool
) -> None:
    bucket = fake_gcs.create_bucket()
    b = fake_gcs.client().bucket(bucket)
    for name in (
        "top.txt",
        "simple/index.html",
        "simple/demo/index.html",
        "kept/",
        "kept/file",
        "kept/sub/x",
    ):
        b.blob(name).upload_from_string(b"x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    flag = "--implicit-dirs" if implicit else "--implicit-dirs=false"
    script = tmp_path / "gcsfuse"
    script.write_text(standin.script())
    script.chmod(0o755)
    (tmp_path / "gcs-endpoint").write_text(fake_gcs.url + "\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYPAPO_TEST_GCSFUSE_PARAMS": str(standin.PARAMS_FILE),
        "PYPAPO_TEST_GCS_ENDPOINT_FILE": str(tmp_path / "gcs-endpoint"),
        "PYPAPO_TEST_RCLONE": str(standin.rclone_binary()),
    }
    mount = subprocess.Popen(
        [str(script), "--foreground", flag, "-o", "ro", bucket, str(mnt)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["mountpoint", "-q", str(mnt)]).returncode != 0:
            assert mount.poll() is None, mount.stderr.read().decode() if mount.stderr else ""
            assert time.monotonic() < deadline, "the stand-in did not mount"
            time.sleep(0.2)
        seen = sorted(os.listdir(mnt))
        if implicit:
            assert seen == ["kept", "simple", "top.txt"]
            assert (mnt / "simple/index.html").is_file()
        else:
            # only `kept/` has a placeholder; `kept/sub` and `simple` are implied by names alone
            assert seen == ["kept", "top.txt"]
            assert sorted(os.listdir(mnt / "kept")) == ["file"]
            assert not (mnt / "simple/index.html").exists()
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        mount.terminate()
        mount.wait(10)


def test_the_stand_in_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "gcsfuse"
    script.write_text(standin.script())
    res = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout

"""Package sources for the fresh-install path, served to the guest from the host end of its veth.

The startup script installs nginx and fuse3 from the VM's Debian mirror and gcsfuse from Google's
``gcsfuse-<codename>`` repository at https://packages.cloud.google.com/apt, fetching Google's key from
that host first. The guest cannot reach either, so the test serves both from one nginx on the host end
of the veth:

- the guest's Debian mirror: a signed repository of the .debs apt itself chose (``rootfs.debs()``), at
  ``http://HOST/debian``; the test's guest lists it in its sources.list the way any image lists its
  mirror. The script does not name a Debian mirror, so nothing of the script is bypassed.
- Google's host: the guest's /etc/hosts maps packages.cloud.google.com to HOST, and a test CA that the
  guest trusts signs a certificate for that name. The script's own commands run unchanged: they fetch
  ``/apt/doc/apt-key.gpg`` (our test repository key), add the repository line they add on GCE, and
  ``apt-get install gcsfuse`` gets the stand-in from ``/apt/dists/gcsfuse-bookworm``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.vm import standin

GOOGLE_HOST = "packages.cloud.google.com"
GOOGLE_KEY_PATH = "apt/doc/apt-key.gpg"


def _run(cmd: list[str], **kw: object) -> str:
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {res.stderr[-2000:]}")
    return res.stdout


@dataclass
class SigningKey:
    """A throw-away OpenPGP key in its own GNUPGHOME, for signing the test's Release files."""

    home: Path

    @classmethod
    def create(cls, home: Path) -> SigningKey:
        home.mkdir(mode=0o700, parents=True)
        key = cls(home)
        key.gpg("--quick-gen-key", "pypapo vm test repository <nobody@invalid>", "ed25519", "sign", "never")
        return key

    def gpg(self, *args: str) -> str:
        return _run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                    env={**os.environ, "GNUPGHOME": str(self.home)})  # fmt: skip

    @classmethod
    def cached(cls, home: Path) -> SigningKey:
        """The key in HOME, made once: the scripts pin its fingerprint, so cached images stay valid."""
        if not (home / "pubring.kbx").exists():
            tmp = home.with_name(home.name + ".new")
            shutil.rmtree(tmp, ignore_errors=True)
            cls.create(tmp)
            # the agent serves the directory it was started for: stop it before the directory moves
            _run(["gpgconf", "--homedir", str(tmp), "--kill", "gpg-agent"])
            os.rename(tmp, home)
        return cls(home)

    def fingerprint(self) -> str:
        rows = [line.split(":") for line in self.gpg("--with-colons", "--list-keys").splitlines()]
        return next(r[9] for i, r in enumerate(rows) if r[0] == "fpr" and rows[i - 1][0] == "pub")

    def armored_public(self) -> str:
        return self.gpg("--armor", "--export")

    def sign_release(self, dist: Path) -> None:
        self.gpg("--yes", "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
        self.gpg("--yes", "--armor", "--detach-sign", "-o", str(dist / "Release.gpg"), str(dist / "Release"))


def build_repo(top: Path, suite: str, debs: list[Path], key: SigningKey, component: str = "main") -> None:
    """A signed apt repository under TOP (dists/SUITE, pool/COMPONENT) holding DEBS."""
    pool = top / "pool" / component
    pool.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, pool / deb.name)
    arch = _run(["dpkg", "--print-architecture"]).strip()
    bindir = top / "dists" / suite / component / f"binary-{arch}"
    bindir.mkdir(parents=True, exist_ok=True)
    packages = _run(["dpkg-scanpackages", "--multiversion", f"pool/{component}", "/dev/null"], cwd=top)
    (bindir / "Packages").write_text(packages)
    (bindir / "Packages.gz").write_bytes(gzip.compress(packages.encode()))
    dist = top / "dists" / suite
    release = _run(
        [
            "apt-ftparchive",
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "-o", f"APT::FTPArchive::Release::Codename={suite}",
            "-o", f"APT::FTPArchive::Release::Components={component}",
            "-o", f"APT::FTPArchive::Release::Architectures={arch}",
            "-o", "APT::FTPArchive::Release::Origin=pypapo-vm-test",
            "release", ".",
        ],
        cwd=dist,
    )  # fmt: skip
    (dist / "Release").write_text(release)
    key.sign_release(dist)


@dataclass
class TestCA:
    """A throw-away CA and a server certificate it signs for one host name."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def create(cls, directory: Path, hostname: str) -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
        key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(ca_key),
                "-out",
                str(ca_cert),
                "-days",
                "2",
                "-subj",
                "/CN=pypapo vm test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ]
        )
        _run(
            [
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                f"/CN={hostname}",
            ]
        )
        ext = directory / "server.ext"
        ext.write_text(f"subjectAltName=DNS:{hostname}\nextendedKeyUsage=serverAuth\n")
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
              "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)])  # fmt: skip
        return cls(ca_cert, cert, key)


def build_google_tree(top: Path, suite: str, key: SigningKey) -> None:
    """What the script fetches from packages.cloud.google.com: the key, and gcsfuse (the stand-in)."""
    deb = standin.build_gcsfuse_deb(top.parent)
    build_repo(top / "apt", suite, [deb], key)
    (top / GOOGLE_KEY_PATH).parent.mkdir(parents=True, exist_ok=True)
    (top / GOOGLE_KEY_PATH).write_text(key.armored_public())


def impersonate_google(root: Path, address: str, ca: TestCA) -> None:
    """Make the system in ROOT reach Google's package host at ADDRESS and trust the test CA's certificate."""
    with open(root / "etc/hosts", "a") as hosts:
        hosts.write(f"{address} {GOOGLE_HOST}\n")
    shutil.copy2(ca.ca_cert, root / "usr/local/share/ca-certificates/pypapo-vm-test-ca.crt")
    with open(root / "etc/ssl/certs/ca-certificates.crt", "a") as bundle:
        bundle.write(ca.ca_cert.read_text())


class PackageServer:
    """Debian's nginx on the host end of the veth: the guest's mirror (:80) and Google's host (:443)."""

    def __init__(self, workdir: Path, address: str, mirror_top: Path, google_top: Path, ca: TestCA) -> None:
        self.workdir, self.address = workdir, address
        self.access_log = workdir / "access.log"
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""daemon off;
user root;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {self.access_log};
  client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fcgi; uwsgi_temp_path {workdir}/uwsgi; scgi_temp_path {workdir}/scgi;
  default_type application/octet-stream;
  server {{ listen {address}:80; location /debian/ {{ alias {mirror_top}/; }} }}
  server {{
    listen {address}:443 ssl; server_name {GOOGLE_HOST};
    ssl_certificate {ca.server_cert}; ssl_certificate_key {ca.server_key};
    root {google_top};
  }}
}}
"""
        )
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(conf), "-e", str(workdir / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/debian/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # nginx answered (403/404 for the directory): it is up
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = (workdir / "error.log").read_text()
                    raise RuntimeError(f"package server did not start: {err}") from None
                time.sleep(0.1)

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

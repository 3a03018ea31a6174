"""Run Debian's NGINX in the foreground over a directory repository (`provision serve`, the demo, tests).

The config is the VM's own (`render_nginx_conf`), with a private prefix, pid file and temp paths in a
temporary directory: nothing under /etc/nginx or /var/lib/nginx is read or written.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner import loopback
from provisioner.appliance.render import (
    NJS_MODULE_PATH,
    NJS_PACKAGE,
    ROOT_PAGES,
    SENTINEL,
    ApplianceConfig,
    render_nginx_conf,
    render_page_guard,
)
from provisioner.errors import PypapoError

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
INSTALL_HINT = "nginx is not installed: run `sudo apt-get install nginx` (Debian/Ubuntu)"
NJS_HINT = (
    f"nginx's njs module ({NJS_MODULE_PATH}, the appliance's page guard) is not installed: "
    f"run `sudo apt-get install {NJS_PACKAGE}` (Debian/Ubuntu)"
)


def find_nginx() -> str:
    """Path of the nginx binary, or a PypapoError that says how to install it (or its njs module)."""
    found = next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None) or shutil.which("nginx")
    if not found:
        raise PypapoError(INSTALL_HINT)
    if not os.path.isfile(NJS_MODULE_PATH):
        raise PypapoError(NJS_HINT)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Fail early and clearly: NGINX would retry bind() for seconds, and another server could answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as NGINX does: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as exc:
            msg = f"cannot listen on {host}:{port} ({exc.strerror}): pick another with --port"
            raise PypapoError(msg) from exc


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _stdout_is_socket() -> bool:
    # NGINX cannot open /dev/stdout when it is a socket (systemd's journal stream).
    try:
        return stat.S_ISSOCK(os.fstat(1).st_mode)
    except OSError:
        return True


UNPRIVILEGED_USER = "nobody nogroup"  # Debian's: nginx takes the group of the same name otherwise


def _others_can_read(path: Path) -> bool:
    """Whether a user who is neither owner nor group member can reach PATH and list it."""
    for part in (path, *path.parents):
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH or (part == path and not mode & stat.S_IROTH):
            return False
    return True


def worker_user(repo: Path) -> str:
    """Who NGINX's workers run as when `provision serve` runs as root: never root when it can be helped.

    The repository's owner when that is not root (it can read its own files); else `nobody` when anyone
    may read the repository; else, with a warning that names the fix, root (nobody could not read it).
    """
    owner = repo.stat().st_uid
    if owner != 0:
        return pwd.getpwuid(owner).pw_name
    if _others_can_read(repo):
        return UNPRIVILEGED_USER
    print(
        f"warning: nginx workers run as root: {repo} is root's and private (an unprivileged worker could "
        f"not read it); make it readable (chmod o+rx on it and its parents) or serve it as its owner",
        file=sys.stderr,
    )
    return "root"


@dataclass
class Server:
    """A running NGINX over `repo`."""

    repo: Path
    host: str
    port: int
    process: subprocess.Popen[bytes]
    runtime_dir: Path
    access_log: Path | None

    @property
    def url(self) -> str:
        """Base URL of the index (the root serves it too)."""
        return f"http://{_url_host(self.host)}:{self.port}/simple/"

    @property
    def root_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def browse_url(self) -> str:
        """The browsable site (ui/ in the repository)."""
        return f"{self.root_url}/ui/"

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT lets downloads finish), then SIGTERM/SIGKILL if it lingers."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def wait(self) -> int:
        return self.process.wait()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If we are killed outright (SIGKILL), NGINX in its own session would live on: have the kernel send
    # it SIGTERM when we die. Linux only, which is where Debian's nginx runs.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block, so NGINX is stopped either way."""

    def _terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_until_up(proc: subprocess.Popen[bytes], host: str, port: int, err_path: Path) -> None:
    deadline = time.monotonic() + 15
    url = f"http://{_url_host(host)}:{port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = err_path.read_text(errors="replace").strip().splitlines()
            last = err[-1] if err else f"exit status {proc.returncode}"
            if "Address already in use" in last or "could not bind" in last:
                raise PypapoError(f"port {port} on {host} is in use: pick another with --port")
            raise PypapoError(f"nginx failed to start: {last}")
        try:
            loopback.get(url, timeout=2, limit=0)  # any status: a 503 from /healthz is NGINX up (the
            return  # repository may be empty)
        except OSError:
            time.sleep(0.05)
    raise PypapoError(f"nginx did not answer on {host}:{port} within 15 s")


@contextlib.contextmanager
def running(
    repo: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 3333,
    access_log: str | Path | None = None,
    quiet: bool = False,
) -> Iterator[Server]:
    """NGINX serving `repo` until the block ends.

    `access_log`: a file; None logs to our stdout (or, `quiet`, to a file in the temp dir). NGINX's own
    errors go to a file and are reported if it fails.
    """
    repo_path = Path(repo).resolve()
    if not repo_path.is_dir():
        raise PypapoError(f"{repo} is not a directory: publish into it first (provision publish --repo DIR)")
    nginx = find_nginx()
    if port == 0:
        port = free_port(host if ":" not in host else "127.0.0.1")
    else:
        check_port_free(host, port)
    with tempfile.TemporaryDirectory(prefix="pypapo-serve-") as tmp:
        runtime = Path(tmp)
        if access_log is not None:
            log_target = str(Path(access_log).resolve())
        elif quiet or _stdout_is_socket():
            log_target = str(runtime / "access.log")
        else:
            log_target = "/dev/stdout"
        user = worker_user(repo_path) if os.geteuid() == 0 else None
        guard_path = runtime / "page-guard.js"
        guard_path.write_text(render_page_guard())
        conf = render_nginx_conf(
            ApplianceConfig(bucket="local-directory", port=port),
            root_dir=str(repo_path),
            listen=_listen(host, port),
            runtime_dir=str(runtime),
            access_log=log_target,
            error_log="stderr",
            user=user,
            worker_processes="2",
            guard_path=str(guard_path),
        )
        conf_path = runtime / "nginx.conf"
        conf_path.write_text(conf)
        err_path = runtime / "error.log"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [nginx, "-p", str(runtime), "-e", "stderr", "-c", str(conf_path), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if log_target != "/dev/stdout" else None,
                stderr=err,
                # Own process group: Ctrl-C reaches only us, and we stop NGINX gracefully.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        server = Server(
            repo=repo_path,
            host=host,
            port=port,
            process=proc,
            runtime_dir=runtime,
            access_log=Path(log_target) if log_target != "/dev/stdout" else None,
        )
        try:
            _wait_until_up(proc, host, port, err_path)
            yield server
        finally:
            server.stop()


def serve_forever(repo: str | Path, *, host: str, port: int, access_log: str | None = None) -> None:
    """`provision serve`: run until Ctrl-C (or SIGTERM), then stop NGINX cleanly."""
    find_nginx()
    repo_path = Path(repo)
    if repo_path.is_dir() and not (repo_path / SENTINEL).is_file():
        print(
            f"warning: {repo_path / SENTINEL} does not exist: every page answers 503 until you publish "
            f"(provision publish --repo {repo} FILE...)",
            file=sys.stderr,
        )
    elif repo_path.is_dir():
        pages = [repo_path / p for p in ROOT_PAGES]
        broken = [p for p in pages if not p.is_file() or p.stat().st_size == 0]
        if broken:
            print(
                f"warning: {', '.join(map(str, broken))} missing or empty: the index and "
                f"/healthz answer 503 until you run provision reindex --repo {repo}",
                file=sys.stderr,
            )

    try:
        # Ctrl-C may come at any moment, even while NGINX is still starting: `running` stops it anyway.
        with sigterm_as_interrupt(), running(repo, host=host, port=port, access_log=access_log) as server:
            print(f"serving {server.repo} at {server.url} (and {server.root_url}/); Ctrl-C stops", flush=True)
            print(f"browse: {server.browse_url}", flush=True)
            if proxied := loopback.proxy_warning(host):
                print(proxied, file=sys.stderr, flush=True)
            code = server.wait()
            err = (server.runtime_dir / "error.log").read_text(errors="replace").strip().splitlines()
            raise PypapoError(f"nginx exited (status {code}): {err[-1] if err else 'no message'}")
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)

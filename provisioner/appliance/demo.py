"""`provision demo`: publish example packages into a local repository, serve it, pip-install from it.

Everything is real: the wheels are built by provisioner.appliance.sample, published by the engine, served by
Debian's nginx with the VM's own config, and installed by pip into a throwaway virtualenv.
"""

from __future__ import annotations

import html
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from provisioner import loopback
from provisioner.appliance import sample
from provisioner.appliance import serve as serving
from provisioner.errors import PypapoError
from provisioner.repo.engine import Repository

Echo = Callable[[str], None]

LIBRARY = "pypapo-demo-greeting"
APP = "pypapo-demo-app"


# What the site shows of them: a Markdown README, a reStructuredText one, and a yanked release.
GREETING_README = """# pypapo-demo-greeting

A greeting from a private index: `greet(name)` returns one line.

## Use it

```python
from pypapo_demo_greeting import greet

print(greet("team"))
```

## Changes

- **1.1.0**: the greeting names the version that made it.
- **1.0.0**: the first release (yanked, see its reason).
"""
APP_README = """pypapo-demo-app
===============

Prints a greeting from ``pypapo-demo-greeting``, a dependency that only the private index holds.

Run it
------

::

    python -c 'import pypapo_demo_app; pypapo_demo_app.main()'
"""
YANKED = "1.0.0"
YANK_REASON = "Superseded by 1.1.0 (the demo yanks it to show what a yank looks like)"


def build_demo_dists(dest: Path) -> list[Path]:
    """Two projects with a dependency between them: the app needs the greeting library."""
    greeting_mod = {
        "pypapo_demo_greeting/__init__.py": (
            '__version__ = "{v}"\n\n\ndef greet(name: str) -> str:\n'
            '    return f"hello {{name}}, from a private index (greeting {v})"\n'
        )
    }
    app_mod = {
        "pypapo_demo_app/__init__.py": (
            'from pypapo_demo_greeting import greet\n\n\ndef main() -> None:\n    print(greet("pypapo"))\n'
        )
    }

    def greeting(v: str) -> dict[str, str]:
        return {path: text.format(v=v) for path, text in greeting_mod.items()}

    def meta(name: str, v: str, summary: str, readme: str, kind: str, needs: list[str] | None = None) -> str:
        return sample.core_metadata(
            name, v, summary=summary, description=readme, description_content_type=kind,
            requires_python=">=3.9", requires_dist=needs or [], headers=["License-Expression: MIT"],
        )  # fmt: skip

    def greeting_meta(v: str) -> str:
        return meta(LIBRARY, v, "A greeting from a private index", GREETING_README, "text/markdown")

    app_meta = meta(
        APP,
        "1.0.0",
        "Prints a greeting from a private dependency",
        APP_README,
        "text/x-rst",
        [f"{LIBRARY}>=1.0"],
    )
    return [
        sample.build_wheel(dest, LIBRARY, YANKED, modules=greeting(YANKED), metadata=greeting_meta(YANKED)),
        sample.build_sdist(dest, LIBRARY, YANKED, modules=greeting(YANKED), pkg_info=greeting_meta(YANKED)),
        sample.build_wheel(
            dest, LIBRARY, "1.1.0", modules=greeting("1.1.0"), metadata=greeting_meta("1.1.0")
        ),
        sample.build_wheel(dest, APP, "1.0.0", modules=app_mod, metadata=app_meta),
    ]


def clean_env(home: Path) -> dict[str, str]:
    """An environment that lets no machine-wide pip/uv configuration in (PIP_FIND_LINKS, pip.conf...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return loopback.without_proxy_for_loopback(env)  # pip asks the demo's own nginx, never a proxy


def _pick_port(port: int, echo: Echo) -> int:
    if port == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            echo(f"port {port} is in use; serving on a free port instead")
            return 0
    return port


def run_demo(*, repo: Path, port: int, keep_serving: bool, echo: Echo = print) -> None:
    """Publish into `repo` (kept: `provision serve --repo` serves it again); scratch work in a temp dir."""
    serving.find_nginx()  # fail first, with the install hint, before building anything
    with serving.sigterm_as_interrupt():
        _run_demo(repo=repo, port=port, keep_serving=keep_serving, echo=echo)


def _run_demo(*, repo: Path, port: int, keep_serving: bool, echo: Echo) -> None:
    repo_dir = repo.resolve()
    with tempfile.TemporaryDirectory(prefix="pypapo-demo-") as tmp:
        work = Path(tmp)
        echo(f"==> building example packages ({LIBRARY}, {APP})")
        dists = build_demo_dists(work / "dists")
        echo(f"==> publishing into {repo_dir} (what `provision publish --repo {repo} FILE...` does)")
        # Built reproducibly: on a re-run the same bytes are already present, which is a no-op.
        repository = Repository.open(str(repo_dir))
        result = repository.publish(dists, skip_existing=True)
        echo(f"    {result.summary()}")
        if result.skipped:
            echo(f"    ({repo} holds the examples as an older pypapo built them; remove it for these)")
        echo(f"==> yanking {LIBRARY} {YANKED} (what `provision yank --reason ...` does)")
        changed = repository.set_yanked(LIBRARY, YANKED, YANK_REASON)
        echo(f"    {changed} files yanked" if changed else "    already yanked")

        access_log = work / "access.log"
        access_log.unlink(missing_ok=True)
        port = _pick_port(port, echo)
        with serving.running(repo_dir, port=port, access_log=access_log, quiet=True) as server:
            echo(f"==> serving {repo_dir} with nginx at {server.url} (and at {server.root_url}/)")
            home = work / "home"
            home.mkdir(exist_ok=True)
            venv = work / "venv"
            echo(f"==> pip install {APP} into a throwaway virtualenv ({venv})")
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)],
                check=True,
                env=clean_env(home),
            )
            cmd = [
                sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--isolated",
                "install", "--no-cache-dir", "--index-url", server.url, APP,
            ]  # fmt: skip
            echo("    $ pip " + " ".join(cmd[3:]))
            proc = subprocess.run(cmd, env=clean_env(home), capture_output=True, text=True)
            for line in proc.stdout.strip().splitlines():
                echo(f"    {line}")
            if proc.returncode != 0:
                raise PypapoError(f"pip install failed: {proc.stderr.strip().splitlines()[-1:]}")
            run = subprocess.run(
                [str(venv / "bin" / "python"), "-c", "import pypapo_demo_app; pypapo_demo_app.main()"],
                env=clean_env(home),
                capture_output=True,
                text=True,
                check=True,
            )
            echo(
                f"    $ python -c 'import pypapo_demo_app; pypapo_demo_app.main()'\n    {run.stdout.strip()}"
            )
            echo("==> what nginx served (pip read the .metadata files to resolve, then fetched the wheels):")
            for line in access_log.read_text().splitlines():
                parts = line.split('"')
                if len(parts) > 3 and "/healthz" not in parts[1]:
                    status = parts[2].split()[0]
                    echo(f"    {parts[1]} -> {status} {parts[3]}")
            echo(show_site(server.browse_url, repo, readme=not result.skipped))
            echo(usage_text(server.root_url))
            echo(f"    Serve it again later: provision serve --repo {repo}")
            if keep_serving:
                try:
                    echo(f"==> still serving {server.url}; Ctrl-C stops")
                    server.wait()
                except KeyboardInterrupt:
                    echo("stopping nginx")


def show_site(browse_url: str, repo: Path, *, readme: bool = True) -> str:
    """What the browsable site shows of the demo, checked as nginx serves it (a demo that claims a
    page it does not serve would mislead); `readme`: the READMEs are this version's."""

    def get(url: str) -> str:
        try:
            code, body = loopback.get(url, timeout=10)
        except OSError as exc:
            raise PypapoError(f"the site does not answer at {url}: {exc}") from None
        if code != 200:
            raise PypapoError(f"the site answers {code} at {url}: run provision reindex --repo {repo}")
        return body.decode("utf-8")

    listing, page = get(browse_url), get(f"{browse_url}{LIBRARY}/")
    reason = html.escape(YANK_REASON, quote=False)
    wanted = {listing: (LIBRARY, APP), page: (reason, "Use it") if readme else (reason,)}
    for body, needles in wanted.items():
        missing = [n for n in needles if n not in body]
        if missing:
            raise PypapoError(f"the site does not show {missing[0]!r}: run provision reindex --repo {repo}")
    return f"""==> the browsable site (open it in a browser; through the tunnel it is http://localhost:PORT/ui/):
    {browse_url}  every project, newest first; typing in its search box filters them
    {browse_url}{LIBRARY}/  its README, every release with its files, and why {YANKED} was yanked"""


def usage_text(root_url: str) -> str:
    url = f"{root_url}/simple/"
    return f"""==> point your tools at it (the index is at {url} and also at {root_url}/):
    pip:     pip install --index-url {url} {APP}
    uv:      uv pip install --index-url {url} {APP}
             (pyproject.toml) [[tool.uv.index]]  name = "pypapo"  url = "{url}"
    poetry:  poetry source add --priority=primary pypapo {root_url}
             (pyproject.toml) [[tool.poetry.source]]  name = "pypapo"  url = "{root_url}"
    pdm:     (pyproject.toml) [[tool.pdm.source]]  name = "pypapo"  url = "{url}"
    pipenv:  (Pipfile) [[source]]  name = "pypapo"  url = "{url}"  verify_ssl = false
    On GCP the same index comes through the IAP tunnel: `provision tunnel` then the same URLs."""

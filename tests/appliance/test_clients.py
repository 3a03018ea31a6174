"""Real pip, uv, poetry, pdm and pipenv install real wheels through `provision serve`.

Every client runs in a clean environment (no PIP_*/UV_* from this machine, PIP_CONFIG_FILE=/dev/null,
HOME, XDG dirs and caches in tmp), so a wheel can only come from the index; the access log proves it.
The demo set (tests/fixtures/nginx.py): chain-a -> chain-b -> chain-c, where chain-b 2.0 needs a
chain-c that does not exist, so resolvers must read chain-b 2.0's metadata and back off to 1.0;
yank-me 2.0 is yanked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.nginx import LocalIndex

pytestmark = pytest.mark.clients

BIN = Path(sys.executable).parent
EXPECTED = {
    "pypapo-chain-a": "1.0",
    "pypapo-chain-b": "1.0",
    "pypapo-chain-c": "1.0",
    "pypapo-yank-me": "1.0",
}
WANTED = ["pypapo-chain-a", "pypapo-yank-me"]


def wheel(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    assert not any(k.startswith("PIP_FIND") or k.startswith("UV_INDEX") for k in env)
    return env


def poetry_env(tmp: Path) -> dict[str, str]:
    """poetry with its virtualenv in the project, its cache, config and data in tmp."""
    return clean_env(
        tmp,
        POETRY_VIRTUALENVS_IN_PROJECT="true",
        POETRY_VIRTUALENVS_OPTIONS_NO_PIP="true",
        POETRY_CACHE_DIR=str(tmp / "poetry-cache"),
        POETRY_CONFIG_DIR=str(tmp / "poetry-config"),
        POETRY_DATA_DIR=str(tmp / "poetry-data"),
        POETRY_NO_INTERACTION="1",
        POETRY_PYTHON=sys.executable,
    )


def pdm_env(tmp: Path, python: Path) -> dict[str, str]:
    """pdm installing into the existing virtualenv of `python`, cache and config in tmp."""
    return clean_env(
        tmp,
        PDM_CHECK_UPDATE="false",
        PDM_CACHE_DIR=str(tmp / "pdm-cache"),
        PDM_CONFIG_FILE=str(tmp / "pdm-config.toml"),
        PDM_NON_INTERACTIVE="1",
        PDM_PYTHON=str(python),
    )


def pipenv_env(tmp: Path) -> dict[str, str]:
    """pipenv with its virtualenv in the project and its cache in tmp."""
    return clean_env(
        tmp,
        PIPENV_VENV_IN_PROJECT="1",
        PIPENV_NOSPIN="1",
        PIPENV_YES="1",
        PIPENV_IGNORE_VIRTUALENVS="1",
        PIPENV_CACHE_DIR=str(tmp / "pipenv-cache"),
        PIPENV_PYTHON=sys.executable,
    )


def run(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def installed(python: Path, env: dict[str, str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    dists = json.loads(run([str(python), "-c", code], env=env).stdout)
    norm = {k.lower().replace("_", "-").replace(".", "-"): v for k, v in dists.items()}
    return {k: v for k, v in norm.items() if k.startswith("pypapo-") or k == "mixed-case-name"}


def assert_resolved_from_metadata(index: LocalIndex, since: int, prefix: str = "/simple/") -> None:
    """The resolver read chain-b 2.0's .metadata and never downloaded a wheel it did not install."""
    requested = {path for method, path, status in index.requests(since) if status in (200, 304)}
    b2 = f"{prefix}pypapo-chain-b/{wheel('pypapo-chain-b', '2.0')}"
    assert b2 + ".metadata" in requested
    assert b2 not in requested
    yanked = f"{prefix}pypapo-yank-me/{wheel('pypapo-yank-me', '2.0')}"
    assert yanked not in requested
    # ... and every wheel it installed came through this index.
    for project, version in EXPECTED.items():
        assert f"{prefix}{project}/{wheel(project, version)}" in requested, project


def imports_work(python: Path, env: dict[str, str]) -> None:
    run([str(python), "-c", "import pypapo_chain_a, pypapo_chain_b, pypapo_chain_c, pypapo_yank_me"], env=env)


def make_venv(path: Path, env: dict[str, str]) -> Path:
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], env=env)
    return path / "bin" / "python"


# --- pip ----------------------------------------------------------------------------------------------


def pip(python: Path, index: LocalIndex, *reqs: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "--isolated",
            "install", "--no-cache-dir", "--index-url", index.url, *reqs,
        ],
        env=env,
    )  # fmt: skip


def test_pip_installs_through_the_index(demo_index: LocalIndex, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    python = make_venv(tmp_path / "venv", env)
    mark = demo_index.log_mark()
    pip(python, demo_index, *WANTED, env=env)
    assert installed(python, env) == EXPECTED
    imports_work(python, env)
    assert_resolved_from_metadata(demo_index, mark)


def test_pip_takes_a_yanked_version_only_when_pinned(demo_index: LocalIndex, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    python = make_venv(tmp_path / "venv", env)
    proc = pip(python, demo_index, "pypapo-yank-me==2.0", env=env)
    assert installed(python, env) == {"pypapo-yank-me": "2.0"}
    assert "yanked" in (proc.stdout + proc.stderr).lower()


def test_pip_with_a_non_normalized_name(demo_index: LocalIndex, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    python = make_venv(tmp_path / "venv", env)
    pip(python, demo_index, "MIXED_case.Name", env=env)
    assert installed(python, env) == {"mixed-case-name": "1.0"}


# --- uv -----------------------------------------------------------------------------------------------


def uv_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(
        tmp_path,
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
    )


def test_uv_installs_through_the_index(demo_index: LocalIndex, tmp_path: Path) -> None:
    env = uv_env(tmp_path)
    venv = tmp_path / "venv"
    run([str(BIN / "uv"), "venv", "--quiet", "--python", sys.executable, str(venv)], env=env)
    python = venv / "bin" / "python"
    mark = demo_index.log_mark()
    uv_pip = [str(BIN / "uv"), "pip", "install", "--python", str(python), "--index-url", demo_index.url]
    run([*uv_pip, *WANTED], env=env)
    assert installed(python, env) == EXPECTED
    imports_work(python, env)
    assert_resolved_from_metadata(demo_index, mark)
    # uv asked for PEP 691 JSON and got it.
    log = demo_index.access_log.read_bytes()[mark:].decode()
    assert '"GET /simple/pypapo-chain-b/ HTTP/1.1" 200' in log
    assert '"application/vnd.pypi.simple.v1+json" "application/vnd.pypi.simple.v1+json' in log

    pinned = run([*uv_pip, "pypapo-yank-me==2.0"], env=env)
    assert installed(python, env)["pypapo-yank-me"] == "2.0"
    assert "yanked" in pinned.stderr.lower()


# --- poetry -------------------------------------------------------------------------------------------

PYPROJECT = """\
[project]
name = "consumer"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["pypapo-chain-a", "pypapo-yank-me"]
"""


@pytest.mark.parametrize("where", ["root", "simple"])
def test_poetry_installs_through_the_index(demo_index: LocalIndex, tmp_path: Path, where: str) -> None:
    """The article's source is the bare root URL; /simple/ works as well."""
    url = demo_index.root_url if where == "root" else demo_index.url
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        PYPROJECT
        + f"""
[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "pypapo"
url = "{url}"
priority = "primary"
"""
    )
    env = poetry_env(tmp_path)
    mark = demo_index.log_mark()
    run([str(BIN / "poetry"), "install", "--no-root"], env=env, cwd=project)
    python = project / ".venv" / "bin" / "python"
    assert installed(python, env) == EXPECTED
    imports_work(python, env)
    assert_resolved_from_metadata(demo_index, mark, prefix="/" if where == "root" else "/simple/")
    assert (project / "poetry.lock").exists()


# --- pdm ----------------------------------------------------------------------------------------------


def test_pdm_installs_through_the_index(demo_index: LocalIndex, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # A source named "pypi" replaces PyPI itself: nothing can come from elsewhere.
    (project / "pyproject.toml").write_text(
        PYPROJECT
        + f"""
[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "pypi"
url = "{demo_index.url}"
"""
    )
    # The project's own virtualenv (PDM_PYTHON at an existing venv makes pdm install into it).
    python = make_venv(project / ".venv", clean_env(tmp_path))
    env = pdm_env(tmp_path, python)
    mark = demo_index.log_mark()
    run([str(BIN / "pdm"), "install", "--no-self"], env=env, cwd=project)
    assert installed(python, env) == EXPECTED
    imports_work(python, env)
    assert_resolved_from_metadata(demo_index, mark)


# --- pipenv -------------------------------------------------------------------------------------------


def test_pipenv_installs_through_the_index(demo_index: LocalIndex, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pipfile").write_text(
        f"""\
[[source]]
name = "pypapo"
url = "{demo_index.url}"
verify_ssl = false

[packages]
pypapo-chain-a = "*"
pypapo-yank-me = "*"
"""
    )
    env = pipenv_env(tmp_path)
    mark = demo_index.log_mark()
    run([str(BIN / "pipenv"), "install"], env=env, cwd=project)
    python = project / ".venv" / "bin" / "python"
    assert installed(python, env) == EXPECTED
    imports_work(python, env)
    assert_resolved_from_metadata(demo_index, mark)
    lock = json.loads((project / "Pipfile.lock").read_text())
    assert lock["default"]["pypapo-chain-b"]["version"] == "==1.0"


# --- the README's main command ------------------------------------------------------------------------


def test_provision_demo_publishes_serves_and_pip_installs(nginx_bin: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    proc = subprocess.Popen(
        [str(BIN / "provision"), "demo", "--port", "0", "--keep-serving"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "still serving" in line:
                break
        output = "".join(lines)
        assert "Successfully installed pypapo-demo-app-1.0.0 pypapo-demo-greeting-1.1.0" in output
        assert "hello pypapo, from a private index (greeting 1.1.0)" in output
        assert ".whl.metadata HTTP/1.1 -> 200 text/plain; charset=utf-8" in output
        url = re.search(r"still serving (http://127\.0\.0\.1:\d+/simple/)", output)
        assert url, output
        # --keep-serving: the index is still there for other clients.
        with urllib.request.urlopen(url.group(1) + "pypapo-demo-app/") as resp:
            assert b"pypapo_demo_app-1.0.0-py3-none-any.whl" in resp.read()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert (tmp_path / "demo-repo" / "simple" / "pypapo-demo-app" / "index.json").is_file()

"""One index for everything: mirror a real public closure, stop the upstream, and install it with every tool.

The upstream stand-in is a real index on loopback (`provision serve`) carrying the real wheels of the
closure of requests, flask, pydantic, rich and numpy (tests/fixtures/closure.py). `provision mirror`
brings that closure into pypapo, which also carries the private acme-app -> acme-lib -> requests.
Then the upstream is STOPPED, and pip, uv, poetry, pdm, pipenv and conda's pip section, each
configured with `provision client-config --public-index none` exactly as printed, install the public
closure plus the private packages from pypapo alone.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from provisioner.appliance import sample
from provisioner.cli import main
from provisioner.repo.engine import Repository
from tests.access.test_confusion import check
from tests.appliance.test_clients import BIN, clean_env, make_venv, pdm_env, pipenv_env, poetry_env, run
from tests.fixtures.closure import TOP, closure_wheels, pins
from tests.fixtures.nginx import LocalIndex, _start, _stop

pytestmark = pytest.mark.clients

PRIVATE = ("acme-app", "acme-lib")
WANTED = (*TOP, "acme-app")


@dataclass
class Mirrored:
    pypapo: LocalIndex
    upstream_port: int


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Mirrored]:
    base = tmp_path_factory.mktemp("one-index")
    Repository.open(str(base / "upstream")).publish(closure_wheels(base / "wheels"))
    Repository.open(str(base / "pypapo")).publish(
        [
            sample.build_wheel(base / "private", "acme-app", "1.0", requires_dist=["acme-lib"]),
            sample.build_wheel(base / "private", "acme-lib", "1.0", requires_dist=["requests"]),
        ]
    )
    upstream = _start(base / "upstream", base)
    result = CliRunner().invoke(
        main,
        ["mirror", "--repo", str(base / "pypapo"), "--from", upstream.url, *TOP, "--python-version", "3.11"],
    )
    assert result.exit_code == 0, result.output
    assert f"added {len(pins())} files" in result.stdout, result.stdout
    code, err = _stop(upstream)  # from here on the public index is gone
    assert code == 0, err.decode(errors="replace")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", upstream.port), timeout=2).close()
    pypapo = _start(base / "pypapo", base)
    yield Mirrored(pypapo, upstream.port)
    code, err = _stop(pypapo)
    assert code == 0, err.decode(errors="replace")


def config(tool: str, url: str) -> tuple[str, str]:
    args = ["client-config", "--tool", tool, "--url", url, "--public-index", "none"]
    result = CliRunner().invoke(main, [*args, *(a for n in PRIVATE for a in ("--package", n))])
    assert result.exit_code == 0, result.output
    (verify,) = [line for line in result.stderr.splitlines() if line.startswith("# check it")]
    return result.stdout, verify.split(": ", 1)[1]


def works(python: Path, env: dict[str, str]) -> None:
    """The closure imports and runs (numpy's C extension included) and acme-lib is the private one."""
    code = (
        "import requests, flask, pydantic, rich, numpy, importlib.metadata as m; "
        "assert numpy.arange(4).sum() == 6; "
        "print(m.version('acme-lib'), m.version('numpy'), m.version('requests'))"
    )
    out = run([str(python), "-c", code], env=env).stdout.split()
    names = {n.split("-")[0].lower().replace("_", "-"): n.split("-")[1] for n in pins()}
    assert out == ["1.0", names["numpy"], names["requests"]]


PYPROJECT = (
    '[project]\nname = "consumer"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
    f"dependencies = {list(WANTED)!r}\n\n".replace("'", '"')
)


def test_pip_and_condas_pip_section(mirrored: Mirrored, tmp_path: Path) -> None:
    for tool in ("pip", "conda"):
        text, verify = config(tool, mirrored.pypapo.url)
        (tmp_path / tool).mkdir()
        env = clean_env(tmp_path / tool)
        python = make_venv(tmp_path / tool / "venv", env)
        if tool == "pip":
            (tmp_path / "pip.conf").write_text(text)
            env["PIP_CONFIG_FILE"] = str(tmp_path / "pip.conf")
            args = list(WANTED)
        else:
            section = next(d for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict))["pip"]
            args = [w for item in section for w in item.split()] + list(TOP)
        check(verify, tmp_path, env)
        run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-cache-dir", *args],
            env=env,
        )
        works(python, env)


def test_uv(mirrored: Mirrored, tmp_path: Path) -> None:
    text, verify = config("uv", mirrored.pypapo.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + text)
    env = clean_env(tmp_path, UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never")
    env["UV_PYTHON"] = sys.executable
    check(verify, project, env)
    run([str(BIN / "uv"), "sync", "--frozen"], env=env, cwd=project)
    works(project / ".venv" / "bin" / "python", env)


def test_poetry(mirrored: Mirrored, tmp_path: Path) -> None:
    text, verify = config("poetry", mirrored.pypapo.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + "[tool.poetry]\npackage-mode = false\n\n" + text)
    env = poetry_env(tmp_path)
    check(verify, project, env)
    run([str(BIN / "poetry"), "install", "--no-root"], env=env, cwd=project)
    works(project / ".venv" / "bin" / "python", env)


def test_pdm(mirrored: Mirrored, tmp_path: Path) -> None:
    text, verify = config("pdm", mirrored.pypapo.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + "[tool.pdm]\ndistribution = false\n\n" + text)
    python = make_venv(project / ".venv", clean_env(tmp_path))
    env = pdm_env(tmp_path, python)
    check(verify, project, env)
    run([str(BIN / "pdm"), "sync", "--no-self"], env=env, cwd=project)
    works(python, env)


def test_pipenv(mirrored: Mirrored, tmp_path: Path) -> None:
    text, verify = config("pipenv", mirrored.pypapo.url)
    project = tmp_path / "project"
    project.mkdir()
    # The snippet's [packages] table is last: the project's own public requirements join it.
    (project / "Pipfile").write_text(text + "".join(f'{n} = "*"\n' for n in TOP))
    env = pipenv_env(tmp_path)
    check(verify, project, env)
    run([str(BIN / "pipenv"), "sync"], env=env, cwd=project)
    works(project / ".venv" / "bin" / "python", env)

"""Dependency confusion, the way the attack works, against the configuration exactly as printed.

Two real indexes on loopback (`provision serve`, with access logs): pypapo carries the private
acme-app 1.0 -> acme-lib 1.0 -> public-thing; the "public" stand-in for PyPI carries public-thing 1.0
and, like an attacker, acme-app 99.0 and acme-lib 99.0. The consumer depends on acme-app only, so
acme-lib is reached transitively. Each tool gets `provision client-config` output as it is printed,
resolves and installs; the private versions must win, the printed check must pass, and the public
index's log must show no request for a private name's files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.appliance import sample
from provisioner.cli import main
from provisioner.repo.engine import Repository
from tests.appliance.test_clients import BIN, clean_env, make_venv, pdm_env, pipenv_env, poetry_env, run
from tests.fixtures.nginx import LocalIndex, _start, stop_all

pytestmark = pytest.mark.clients

PRIVATE = ("acme-app", "acme-lib")
SAFE = {"acme-app": "1.0", "acme-lib": "1.0", "public-thing": "1.0"}


@dataclass
class Indexes:
    pypapo: LocalIndex
    public: LocalIndex
    full: LocalIndex  # pypapo that also carries public-thing (as `provision mirror` leaves it)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Indexes]:
    base = tmp_path_factory.mktemp("confusion")
    priv, pub = base / "private-dists", base / "public-dists"
    private = [
        sample.build_wheel(priv, "acme-app", "1.0", requires_dist=["acme-lib"]),
        sample.build_wheel(priv, "acme-lib", "1.0", requires_dist=["public-thing"]),
    ]
    public_thing = sample.build_wheel(pub, "public-thing", "1.0")
    attacker = [
        sample.build_wheel(pub, "acme-app", "99.0", requires_dist=["acme-lib"]),
        sample.build_wheel(pub, "acme-lib", "99.0", requires_dist=["public-thing"]),
    ]
    Repository.open(str(base / "pypapo")).publish(private)
    Repository.open(str(base / "public")).publish([public_thing, *attacker])
    Repository.open(str(base / "full")).publish([*private, public_thing])
    started = [_start(base / name, base) for name in ("pypapo", "public", "full")]
    yield Indexes(*started)
    stop_all(started)


def client_config(tool: str, url: str, public: str) -> tuple[str, str]:
    """`provision client-config` as a user runs it: (the configuration on stdout, the check command)."""
    args = ["client-config", "--tool", tool, "--url", url, "--public-index", public]
    result = CliRunner().invoke(main, [*args, *(a for n in PRIVATE for a in ("--package", n))])
    assert result.exit_code == 0, result.output
    (verify,) = [line for line in result.stderr.splitlines() if line.startswith("# check it")]
    return result.stdout, verify.split(": ", 1)[1]


def assert_no_private_download(public: LocalIndex, mark: int) -> None:
    requested = [path for _m, path, _s in public.requests(mark)]
    for name in PRIVATE:
        files = [p for p in requested if p.startswith(f"/simple/{name}/") and not p.endswith("/")]
        assert not files, f"the public index served {files}"


PYPROJECT = """\
[project]
name = "consumer"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["acme-app"]

"""


def test_the_stand_in_attack_is_real(indexes: Indexes, tmp_path: Path) -> None:
    """Control: pip with --extra-index-url takes the attacker's 99.0 (what the configurations prevent)."""
    env = clean_env(tmp_path)
    python = make_venv(tmp_path / "venv", env)
    run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "--isolated", "install", "--no-cache-dir",
            "--index-url", indexes.pypapo.url, "--extra-index-url", indexes.public.url, "acme-app",
        ],
        env=env,
    )  # fmt: skip
    assert installed_all(python, env)["acme-lib"] == "99.0"


def installed_all(python: Path, env: dict[str, str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps("
        "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"
    )
    found = json.loads(run([str(python), "-c", code], env=env).stdout)
    return {k: v for k, v in found.items() if k in SAFE}


def check(verify: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["bash", "-c", verify], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"{verify}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_uv_transitive_private_name_stays_private(indexes: Indexes, tmp_path: Path) -> None:
    text, verify = client_config("uv", indexes.pypapo.url, indexes.public.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + text)
    env = clean_env(tmp_path, UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never")
    env["UV_PYTHON"] = sys.executable
    mark = indexes.public.log_mark()
    out = check(verify, project, env)  # `uv lock` and the printed check
    assert "acme-lib" in out and indexes.pypapo.url.rstrip("/") in out
    run([str(BIN / "uv"), "sync", "--frozen"], env=env, cwd=project)
    assert installed_all(project / ".venv" / "bin" / "python", env) == SAFE
    assert_no_private_download(indexes.public, mark)
    assert ("GET", "/simple/public-thing/", 200) in indexes.public.requests(mark)


def test_poetry_transitive_private_name_stays_private(indexes: Indexes, tmp_path: Path) -> None:
    text, verify = client_config("poetry", indexes.pypapo.url, indexes.public.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + "[tool.poetry]\npackage-mode = false\n\n" + text)
    env = poetry_env(tmp_path)
    mark = indexes.public.log_mark()
    check(verify, project, env)
    run([str(BIN / "poetry"), "install", "--no-root"], env=env, cwd=project)
    assert installed_all(project / ".venv" / "bin" / "python", env) == SAFE
    assert_no_private_download(indexes.public, mark)


def test_pdm_transitive_private_name_stays_private(indexes: Indexes, tmp_path: Path) -> None:
    text, verify = client_config("pdm", indexes.pypapo.url, indexes.public.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT + "[tool.pdm]\ndistribution = false\n\n" + text)
    python = make_venv(project / ".venv", clean_env(tmp_path))
    env = pdm_env(tmp_path, python)
    mark = indexes.public.log_mark()
    check(verify, project, env)
    run([str(BIN / "pdm"), "sync", "--no-self"], env=env, cwd=project)
    assert installed_all(python, env) == SAFE
    assert_no_private_download(indexes.public, mark)


def test_pipenv_transitive_private_name_stays_private(indexes: Indexes, tmp_path: Path) -> None:
    text, verify = client_config("pipenv", indexes.pypapo.url, indexes.public.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pipfile").write_text(text)
    env = pipenv_env(tmp_path)
    mark = indexes.public.log_mark()
    check(verify, project, env)
    run([str(BIN / "pipenv"), "sync"], env=env, cwd=project)
    assert installed_all(project / ".venv" / "bin" / "python", env) == SAFE
    assert_no_private_download(indexes.public, mark)


@pytest.mark.parametrize("tool", ["pip", "conda"])
def test_pip_gets_pypapo_alone_and_never_asks_the_public_index(
    indexes: Indexes, tmp_path: Path, tool: str
) -> None:
    """pip cannot route names: the printed configuration is pypapo alone, even when a public index is
    given, and says so. With the public dependency in pypapo (mirrored) everything installs from it."""
    text, verify = client_config(tool, indexes.full.url, indexes.public.url)
    assert indexes.public.url not in text
    env = clean_env(tmp_path)
    python = make_venv(tmp_path / "venv", env)
    mark = indexes.public.log_mark()
    if tool == "pip":
        (tmp_path / "pip.conf").write_text(text)
        env["PIP_CONFIG_FILE"] = str(tmp_path / "pip.conf")
        args = ["acme-app"]
    else:  # conda's pip section, as conda hands it to pip
        import yaml

        section = next(d for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict))["pip"]
        args = [word for item in section for word in item.split()]
    check(verify, tmp_path, env)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-cache-dir", *args], env=env)
    assert installed_all(python, env) == SAFE
    assert indexes.public.requests(mark) == []

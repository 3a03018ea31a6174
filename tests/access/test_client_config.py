"""`provision client-config`: the text parses as its file format and pins private names to pypapo.

End-to-end installs through the index with each client are the appliance part's tests; here the
configuration is parsed (tomllib, configparser, yaml) and, for poetry, checked by `poetry check`.
"""

from __future__ import annotations

import configparser
import functools
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.errors import PypapoError
from provisioner.repo import clientconfig

URL = "http://localhost:4444/simple/"
PKGS = ("acme-core", "acme-utils")


def render(tool: str) -> clientconfig.ClientConfig:
    return clientconfig.render(tool, URL, PKGS)


def test_uv_pypapo_first_then_the_public_index_as_default() -> None:
    doc = tomllib.loads(render("uv").text)
    assert doc["tool"]["uv"]["index"] == [
        {"name": "pypapo", "url": URL},
        {"name": "public", "url": clientconfig.PYPI, "default": True},
    ]
    assert doc["tool"]["uv"]["index-strategy"] == "first-index"
    # Sources pin direct dependencies only; the safety must not depend on them.
    assert "sources" not in doc["tool"]["uv"]


def test_every_tool_gets_pypapo_alone_without_a_public_index() -> None:
    uv = tomllib.loads(clientconfig.render("uv", URL, PKGS, "none").text)
    assert uv["tool"]["uv"]["index"] == [{"name": "pypapo", "url": URL, "default": True}]
    poetry = tomllib.loads(clientconfig.render("poetry", URL, PKGS, "none").text)
    assert poetry["tool"]["poetry"]["source"] == [{"name": "pypapo", "url": URL, "priority": "primary"}]
    pdm = tomllib.loads(clientconfig.render("pdm", URL, PKGS, "none").text)
    assert pdm["tool"]["pdm"]["source"] == [{"name": "pypi", "url": URL}]
    pipenv = tomllib.loads(clientconfig.render("pipenv", URL, PKGS, "none").text)
    assert [s["url"] for s in pipenv["source"]] == [URL]
    for tool in clientconfig.TOOLS:
        cfg = clientconfig.render(tool, URL, PKGS, "none")
        assert "pypi.org" not in cfg.text, tool
        assert "only" in cfg.note, tool


def test_poetry_pypapo_primary_public_supplemental(tmp_path: Path) -> None:
    cfg = render("poetry")
    doc = tomllib.loads(cfg.text)
    assert doc["tool"]["poetry"]["source"] == [
        {"name": "pypapo", "url": URL, "priority": "primary"},
        {"name": "PyPI", "priority": "supplemental"},
    ]
    company = tomllib.loads(clientconfig.render("poetry", URL, PKGS, "https://proxy.example/simple").text)
    assert company["tool"]["poetry"]["source"][1] == {
        "name": "public",
        "url": "https://proxy.example/simple/",
        "priority": "supplemental",
    }
    # poetry itself accepts it in a project
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["acme-core", "acme-utils"]\n\n'
        + cfg.text
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "POETRY_"))}
    poetry = Path(sys.executable).parent / "poetry"
    result = subprocess.run(
        [str(poetry), "check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pdm_routes_private_names_to_pypapo_and_away_from_pypi() -> None:
    doc = tomllib.loads(render("pdm").text)
    pypapo, pypi = doc["tool"]["pdm"]["source"]
    assert (pypapo["url"], pypapo["include_packages"]) == (URL, list(PKGS))
    assert pypi["url"] == clientconfig.PYPI and pypi["exclude_packages"] == list(PKGS)
    assert doc["tool"]["pdm"]["resolution"]["respect-source-order"] is True


def test_pipenv_each_private_package_names_its_index() -> None:
    doc = tomllib.loads(render("pipenv").text)
    assert [s["name"] for s in doc["source"]] == ["pypi", "pypapo"]
    assert doc["source"][1]["url"] == URL and doc["source"][1]["verify_ssl"] is False
    assert doc["packages"] == {n: {"version": "*", "index": "pypapo"} for n in PKGS}


def test_names_are_normalized() -> None:
    cfg = clientconfig.render("pdm", URL, ["Acme_Core", "acme.utils"])
    assert tomllib.loads(cfg.text)["tool"]["pdm"]["source"][0]["include_packages"] == list(PKGS)


def test_pip_is_pypapo_alone_even_when_a_public_index_is_given() -> None:
    cfg = render("pip")
    parser = configparser.ConfigParser()
    parser.read_string(cfg.text)
    assert dict(parser["global"]) == {
        "index-url": URL,
        "timeout": "10",
        "retries": "5",
        "resume-retries": "5",
    }
    assert cfg.single_index
    assert "cannot keep a name away from a second index" in cfg.note
    assert "provision mirror" in cfg.note
    assert "extra-index-url" not in "".join(
        line for line in cfg.text.splitlines() if not line.startswith("#")
    )


def test_pip_reads_the_lost_replica_settings_from_the_printed_file(tmp_path: Path) -> None:
    """pip itself (this venv's) takes timeout, retries and resume-retries from the file as printed; a pip
    older than 25.1 ignores resume-retries without complaint (pip skips unknown keys)."""
    conf = tmp_path / "pip.conf"
    conf.write_text(render("pip").text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), XDG_CONFIG_DIRS=str(tmp_path), HOME=str(tmp_path))
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    for line in ("global.timeout='10'", "global.retries='5'", "global.resume-retries='5'"):
        assert line in listed.splitlines(), listed
    parsed = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--help"], env=env, capture_output=True, text=True
    )
    assert parsed.returncode == 0, parsed.stderr


def test_pip_trusts_the_balancers_plain_http_host_and_only_off_loopback() -> None:
    """pip ignores an http:// index off loopback ("not a trusted or secure host"): the balancer's URL
    gets its host:port trusted, judged by pip's own origin check; the tunnel's localhost needs nothing."""
    from pip._internal.models.link import Link
    from pip._internal.network.session import PipSession

    lb = "http://10.128.0.50:4040/simple/"
    parser = configparser.ConfigParser()
    parser.read_string(clientconfig.render("pip", lb).text)
    trusted = parser["global"]["trusted-host"]
    assert trusted == "10.128.0.50:4040"
    assert not PipSession().is_secure_origin(Link(lb))
    assert PipSession(trusted_hosts=[trusted]).is_secure_origin(Link(lb))
    conda = yaml.safe_load(clientconfig.render("conda", lb).text)
    pip_section = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert pip_section[:2] == [f"--index-url {lb}", f"--trusted-host {trusted}"]
    for url in (URL, "http://127.0.0.1:3333/simple/", "https://pypapo.example/simple/"):
        parser = configparser.ConfigParser()
        parser.read_string(clientconfig.render("pip", url).text)
        assert "trusted-host" not in parser["global"], url
        assert PipSession().is_secure_origin(Link(url)), url


def test_uv_and_poetry_get_their_timeout_and_retries_as_environment() -> None:
    """uv and poetry read their HTTP timeout (and uv its retries) from the environment only."""
    assert dict(render("uv").env) == {"UV_HTTP_TIMEOUT": "10", "UV_HTTP_RETRIES": "5"}
    assert dict(render("poetry").env) == {"POETRY_REQUESTS_TIMEOUT": "10"}
    result = CliRunner().invoke(main, ["client-config", "--tool", "uv"])
    assert result.exit_code == 0
    assert "export UV_HTTP_TIMEOUT=10 UV_HTTP_RETRIES=5" in result.stderr
    assert "UV_HTTP" not in result.stdout  # stdout stays the file alone
    assert "export" not in CliRunner().invoke(main, ["client-config", "--tool", "pip"]).stderr


@pytest.mark.parametrize("tool", ["pipenv", "conda"])
def test_pipenv_and_condas_pip_read_the_lost_replica_settings_from_the_printed_environment(tool: str) -> None:
    """pipenv (its vendored pip) and a conda environment's `pip:` list read no pip setting from their
    files: the printed `export` reaches the very pip they run, whose option parser takes them as the
    install's timeout, retries and resume-retries (without them: 15 s, and no resume before pip 25.2)."""
    env = dict(render(tool).env)
    assert env == {"PIP_TIMEOUT": "10", "PIP_RETRIES": "5", "PIP_RESUME_RETRIES": "5"}
    pip = "pipenv.patched.pip" if tool == "pipenv" else "pip"
    program = (
        f"from {pip}._internal.commands import create_command; "
        "o, _ = create_command('install').parse_args([]); print(o.timeout, o.retries, o.resume_retries)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    run = functools.partial(subprocess.run, [sys.executable, "-c", program], capture_output=True, text=True)
    assert run(env=clean, check=True).stdout.split() != ["10.0", "5", "5"]
    assert run(env={**clean, **env}, check=True).stdout.split() == ["10.0", "5", "5"]
    result = CliRunner().invoke(main, ["client-config", "--tool", tool])
    assert "export PIP_TIMEOUT=10 PIP_RETRIES=5 PIP_RESUME_RETRIES=5" in result.stderr


def test_conda_pip_section_uses_index_url_only() -> None:
    cfg = render("conda")
    doc = yaml.safe_load(cfg.text)
    pip_section = next(d for d in doc["dependencies"] if isinstance(d, dict))["pip"]
    assert pip_section == [f"--index-url {URL}", *PKGS]
    assert cfg.single_index and "cannot keep a name away" in cfg.note


def test_urls_are_normalized_and_validated() -> None:
    assert f'url = "{URL}"' in clientconfig.render("uv", URL.rstrip("/")).text
    with pytest.raises(PypapoError, match=r"--url .* must be an http"):
        clientconfig.render("uv", "localhost:3333/simple")
    with pytest.raises(PypapoError, match=r"--public-index .* must be an http"):
        clientconfig.render("uv", URL, PKGS, "pypi.org")


def test_cli_prints_config_on_stdout_and_what_it_joins_and_the_check_on_stderr() -> None:
    result = CliRunner().invoke(
        main, ["client-config", "--tool", "pip", "--url", "http://localhost:5555/simple/"]
    )
    assert result.exit_code == 0
    assert "index-url = http://localhost:5555/simple/" in result.stdout
    assert "cannot keep a name away" in result.stderr
    result = CliRunner().invoke(main, ["client-config", "--tool", "uv", "--package", "acme-core"])
    assert "# merge into pyproject.toml: [[tool.uv.index]], [tool.uv]" in result.stderr
    assert "# check it (where pyproject.toml is): uv lock && python3 -c " in result.stderr
    assert "sources" not in result.stdout


def _cloud_build_substitute(text: str, values: dict[str, str]) -> str:
    """Cloud Build's substitution: $$ is a literal $, $NAME and ${NAME} are replaced (unknown: error)."""
    import re

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        assert name in values, f"${name} is not a substitution Cloud Build knows"
        return values[name]

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


def test_cloudbuild_example_opens_the_tunnel_and_installs_in_one_step(tmp_path: Path) -> None:
    doc = yaml.safe_load((Path(__file__).parents[2] / "examples" / "cloudbuild.yaml").read_text())
    (step,) = doc["steps"]
    assert step["entrypoint"] == "bash"
    values = {**doc["substitutions"], "PROJECT_ID": "acme-prod"}
    script = _cloud_build_substitute(step["args"][-1], values)
    # the command line bash runs (line continuations joined, quotes removed)
    joined = " ".join(script.replace("\\\n", " ").replace('"', "").split())
    assert (
        "gcloud compute start-iap-tunnel pypapo 3333 --local-host-port=localhost:3333"
        " --zone=us-central1-a --project=acme-prod" in joined
    )
    assert 'pip install --index-url "http://localhost:3333/simple/"' in script
    assert "extra-index-url" not in script
    assert _cloud_build_substitute(doc["serviceAccount"], values).endswith(
        "pypapo-build@acme-prod.iam.gserviceaccount.com"
    )
    assert doc["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a user-specified account
    path = tmp_path / "step.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    check = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


# --- --via lb: the group's internal load balancer, for clients inside the VPC ---------------------------


class _Addresses:
    """compute_v1.AddressesClient.get as the API answers it: the reserved address, else 404."""

    def __init__(self, addresses: dict[tuple[str, str], str]) -> None:
        self.addresses = addresses

    def get(self, request: Any) -> Any:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        ip = self.addresses.get((request.region, request.address))
        if ip is None:
            raise gexc.NotFound(
                f"The resource 'projects/{request.project}/regions/{request.region}/addresses/"
                f"{request.address}' was not found"
            )
        return compute_v1.Address(name=request.address, address=ip, address_type="INTERNAL")


class _Firewalls:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def get(self, request: Any) -> Any:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        if request.firewall not in self.names:
            raise gexc.NotFound(
                f"The resource 'projects/{request.project}/global/firewalls/{request.firewall}'"
            )
        return compute_v1.Firewall(name=request.firewall)


def _project(monkeypatch: pytest.MonkeyPatch, addresses: dict[tuple[str, str], str], rules: set[str]) -> None:
    from provisioner.cloud.gcp import base

    real = base.Clients
    overrides = {"addresses": _Addresses(addresses), "firewalls": _Firewalls(rules)}
    monkeypatch.setattr(base, "Clients", lambda project: real(project, overrides=overrides))


WHERE = ["--project", "acme-prod", "--zone", "us-central1-b"]


def test_via_lb_prints_the_balancers_url_for_every_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    _project(monkeypatch, {("us-central1", "pypapo-ilb"): "10.128.0.50"}, {"pypapo-allow-ilb"})
    result = CliRunner().invoke(
        main, ["client-config", "--tool", "uv", "--via", "lb", *WHERE, "--package", "acme-core"]
    )
    assert result.exit_code == 0, result.output
    assert 'url = "http://10.128.0.50:3333/simple/"' in result.stdout
    assert "localhost" not in result.stdout
    assert "# http://10.128.0.50:3333/simple/: the internal load balancer" in result.stderr
    assert "no IAM check on this path" in result.stderr and "warning" not in result.stderr
    pip = CliRunner().invoke(
        main, ["client-config", "--tool", "pip", "--via", "lb", *WHERE, "--port", "4040"]
    )
    assert "index-url = http://10.128.0.50:4040/simple/" in pip.stdout  # the serving port setting
    conda = CliRunner().invoke(main, ["client-config", "--tool", "mamba", "--via", "lb", *WHERE])
    assert "http://10.128.0.50:3333/conda" in conda.stdout


def test_via_lb_warns_when_no_client_range_may_reach_the_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    _project(monkeypatch, {("us-central1", "pypapo-ilb"): "10.128.0.50"}, set())
    result = CliRunner().invoke(main, ["client-config", "--tool", "pip", "--via", "lb", *WHERE])
    assert result.exit_code == 0
    assert "# warning: no client range may reach it yet (firewall rule pypapo-allow-ilb does not exist)" in (
        result.stderr
    )


def test_via_lb_without_a_balancer_or_with_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _project(monkeypatch, {("europe-west1", "pypapo-ilb"): "10.0.0.9"}, set())  # another region's
    result = CliRunner().invoke(main, ["client-config", "--tool", "pip", "--via", "lb", *WHERE])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: pypapo has no internal load balancer in us-central1 (address pypapo-ilb")
    assert "`provision create --replicas N`" in line and "--via tunnel" in line
    both = ["client-config", "--tool", "pip", "--via", "lb", "--url", "http://10.0.0.9:3333/simple/", *WHERE]
    result = CliRunner().invoke(main, both)
    assert result.exit_code == 1 and "pass --url or --via lb, not both" in result.output
    # the tunnel is still the default, and needs no project
    assert (
        "http://localhost:3333/simple/" in CliRunner().invoke(main, ["client-config", "--tool", "pip"]).stdout
    )

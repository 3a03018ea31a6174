"""`provision client-config --tool conda|mamba|pixi`: the channel beside the index first, strict channel
priority, the pip section kept, and a check command that fails when a private name comes from elsewhere.
A real conda client honouring strict priority against a second channel: tests/appliance/test_conda_clients.py.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import yaml
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.repo import clientconfig

URL = "http://localhost:4444/simple/"
CHANNEL = "http://localhost:4444/conda"
PKGS = ("acme-core", "acme-utils")


def render(tool: str) -> clientconfig.ClientConfig:
    return clientconfig.render(tool, URL, PKGS)


def test_the_channel_is_beside_the_index_wherever_the_tunnel_is() -> None:
    assert clientconfig.channel_url("http://localhost:4444/simple/") == CHANNEL
    assert clientconfig.channel_url("http://127.0.0.1:9/team/simple/") == "http://127.0.0.1:9/team/conda"


def test_condarc_puts_the_channel_first_with_strict_priority() -> None:
    cfg = render("mamba")
    assert cfg.file == ".condarc"
    assert yaml.safe_load(cfg.text) == {"channels": [CHANNEL, "conda-forge"], "channel_priority": "strict"}
    assert "never take that name from conda-forge" in cfg.note and "does NOT protect a name" in cfg.note


def test_environment_yml_has_the_channel_and_keeps_the_pip_section() -> None:
    cfg = render("conda")
    doc = yaml.safe_load(cfg.text)
    assert doc["channels"] == [CHANNEL, "conda-forge", "nodefaults"]
    assert [d for d in doc["dependencies"] if d in PKGS] == list(PKGS)
    pip_section = next(d for d in doc["dependencies"] if isinstance(d, dict))["pip"]
    assert pip_section == [f"--index-url {URL}", *PKGS]
    # The .condarc form rides along as a comment block that parses once uncommented.
    block = "\n".join(line.removeprefix("#   ") for line in cfg.text.splitlines() if line.startswith("#   "))
    assert yaml.safe_load(block) == {"channels": [CHANNEL, "conda-forge"], "channel_priority": "strict"}


def test_pixi_toml_channel_first_strict_and_pypapo_for_pypi() -> None:
    doc = tomllib.loads(render("pixi").text)
    assert doc["workspace"]["channels"] == [CHANNEL, "conda-forge"]
    assert doc["workspace"]["channel-priority"] == "strict"
    assert set(doc["dependencies"]) == set(PKGS)
    assert doc["pypi-options"]["index-url"] == URL
    assert doc["pypi-options"]["index-strategy"] == "first-index"
    alone = tomllib.loads(clientconfig.render("pixi", URL, PKGS, "none").text)
    assert alone["pypi-options"] == {"index-url": URL}


def _check(cfg: clientconfig.ClientConfig, listing: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The printed command minus the tool that produces the listing: feed it our listing instead.
    program = cfg.verify.split("|", 1)[1]
    return subprocess.run(program, shell=True, input=listing, text=True, capture_output=True, cwd=tmp_path)


def test_the_check_commands_fail_when_a_private_name_comes_from_conda_forge(tmp_path: Path) -> None:
    ours = f"{CHANNEL}/noarch/acme-core-1.0-0.conda#0123"
    theirs = "https://conda.anaconda.org/conda-forge/noarch/acme-utils-9.0-0.tar.bz2#4567"
    mine = f"{CHANNEL}/noarch/acme-utils-1.0-0.tar.bz2#89ab"
    explicit = "# platform: linux-64\n@EXPLICIT\n{}\n{}\n"  # `conda list --explicit`
    lock = "packages:\n- conda: {}\n  sha256: x\n- conda: {}\n"  # pixi.lock
    for tool, template in (("mamba", explicit), ("pixi", lock)):
        cfg = render(tool)
        good = _check(cfg, template.format(ours, mine), tmp_path)
        assert good.returncode == 0, good.stderr
        assert f"acme-core {ours}" in good.stdout
        bad = _check(cfg, template.format(ours, theirs), tmp_path)
        assert bad.returncode == 1 and "NOT from pypapo: ['acme-utils']" in bad.stderr


def test_cli_offers_the_conda_tools() -> None:
    for tool in ("conda", "mamba", "pixi"):
        result = CliRunner().invoke(
            main, ["client-config", "--tool", tool, "--url", URL, "--package", "acme-core"]
        )
        assert result.exit_code == 0, result.output
        assert CHANNEL in result.stdout and "strict" in result.stdout


def test_without_a_public_index_the_channel_is_the_only_one() -> None:
    cfg = clientconfig.render("mamba", URL, PKGS, "none")
    assert yaml.safe_load(cfg.text)["channels"] == [CHANNEL]
    assert cfg.single_index and "only channel" in cfg.note
    assert yaml.safe_load(clientconfig.render("conda", URL, PKGS, "none").text)["channels"] == [
        CHANNEL,
        "nodefaults",
    ]

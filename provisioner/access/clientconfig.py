"""Pure: client configuration for the index, safe from dependency confusion where the tool allows it.

Dependency confusion: a client that looks for a private name on PyPI as well can install an attacker's
higher version from PyPI. The safe shapes pin private names to pypapo (uv explicit index + sources,
poetry explicit source, pdm include/exclude_packages, pipenv `index =`) or use pypapo as the only
index (pip --index-url). pip cannot pin per package: --extra-index-url is never safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.errors import PypapoError

TOOLS = ("pip", "uv", "poetry", "pdm", "pipenv", "conda")
PYPI = "https://pypi.org/simple"
PLACEHOLDER = "your-private-package"


@dataclass(frozen=True)
class ClientConfig:
    tool: str
    file: str  # where the text goes
    text: str  # the configuration itself (comments included, parseable as the file's format)
    safe: bool  # protected from dependency confusion as written
    note: str  # one plain sentence on why (or why not)


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def render(tool: str, url: str, packages: Sequence[str] = ()) -> ClientConfig:
    """The configuration for `tool` pointing at `url` (the index's /simple/ URL)."""
    if tool not in TOOLS:
        raise PypapoError(f"unknown tool {tool!r}; choose one of {', '.join(TOOLS)}")
    if not url.startswith(("http://", "https://")):
        raise PypapoError(f"--url {url!r} must be an http(s) URL like http://localhost:3333/simple/")
    url = url if url.endswith("/") else url + "/"
    names = list(packages) or [PLACEHOLDER]
    return _RENDERERS[tool](url, names)


def _pip(url: str, names: list[str]) -> ClientConfig:
    text = (
        "# pip.conf (Linux: ~/.config/pip/pip.conf, or PIP_CONFIG_FILE; Windows: pip.ini)\n"
        "# pypapo is the ONLY index. pip cannot pin a package to an index: with --extra-index-url pip\n"
        "# takes the highest version from ANY index, so a public package with a private name wins.\n"
        "# Never add extra-index-url here; mirror public dependencies into pypapo instead.\n"
        "[global]\n"
        f"index-url = {url}\n"
    )
    return ClientConfig(
        "pip",
        "pip.conf",
        text,
        True,
        "safe only as the single index (--index-url); pip with --extra-index-url is NOT safe from"
        " dependency confusion",
    )


def _uv(url: str, names: list[str]) -> ClientConfig:
    sources = "".join(f'{n} = {{ index = "pypapo" }}\n' for n in names)
    text = (
        "# pyproject.toml: private packages come from pypapo only (explicit index + sources pin);\n"
        "# everything else from PyPI. uv's default index-strategy first-index never mixes indexes.\n"
        "[[tool.uv.index]]\n"
        'name = "pypapo"\n'
        f'url = "{url}"\n'
        "explicit = true\n"
        "\n"
        "[tool.uv]\n"
        'index-strategy = "first-index"\n'
        "\n"
        "[tool.uv.sources]\n"
        f"{sources}"
    )
    return ClientConfig(
        "uv",
        "pyproject.toml",
        text,
        True,
        "safe: an explicit index is used only for the packages pinned to it in [tool.uv.sources]",
    )


def _poetry(url: str, names: list[str]) -> ClientConfig:
    deps = "".join(f'{n} = {{ version = "*", source = "pypapo" }}\n' for n in names)
    text = (
        "# pyproject.toml: an explicit source is searched only for dependencies that name it.\n"
        "[[tool.poetry.source]]\n"
        'name = "pypapo"\n'
        f'url = "{url}"\n'
        'priority = "explicit"\n'
        "\n"
        "[tool.poetry.dependencies]\n"
        f"{deps}"
    )
    return ClientConfig(
        "poetry",
        "pyproject.toml",
        text,
        True,
        'safe: priority = "explicit" keeps pypapo for the pinned packages, PyPI never serves them',
    )


def _pdm(url: str, names: list[str]) -> ClientConfig:
    text = (
        "# pyproject.toml: private names only from pypapo, and never from PyPI.\n"
        "[[tool.pdm.source]]\n"
        'name = "pypapo"\n'
        f'url = "{url}"\n'
        f"include_packages = {_toml_list(names)}\n"
        "\n"
        "[[tool.pdm.source]]\n"
        'name = "pypi"\n'
        f'url = "{PYPI}"\n'
        f"exclude_packages = {_toml_list(names)}\n"
        "\n"
        "[tool.pdm.resolution]\n"
        "respect-source-order = true\n"
    )
    return ClientConfig(
        "pdm",
        "pyproject.toml",
        text,
        True,
        "safe: include_packages/exclude_packages route each private name to pypapo alone",
    )


def _pipenv(url: str, names: list[str]) -> ClientConfig:
    packages = "".join(f'{n} = {{ version = "*", index = "pypapo" }}\n' for n in names)
    text = (
        "# Pipfile: packages without `index =` come from the first source (PyPI) only;\n"
        "# private ones name pypapo. Keep PIPENV_INSTALL_SEARCH_ALL_SOURCES unset.\n"
        "[[source]]\n"
        'name = "pypi"\n'
        f'url = "{PYPI}"\n'
        "verify_ssl = true\n"
        "\n"
        "[[source]]\n"
        'name = "pypapo"\n'
        f'url = "{url}"\n'
        f"verify_ssl = {'true' if url.startswith('https') else 'false'}\n"
        "\n"
        "[packages]\n"
        f"{packages}"
    )
    return ClientConfig(
        "pipenv",
        "Pipfile",
        text,
        True,
        "safe: each private package names its index, and pipenv searches only that one for it",
    )


def _conda(url: str, names: list[str]) -> ClientConfig:
    pkgs = "".join(f"      - {n}\n" for n in names)
    text = (
        "# environment.yml: conda itself cannot read a Python simple index; its pip section can.\n"
        "# pip rules apply: pypapo as the only pip index (--index-url), never --extra-index-url.\n"
        "name: myenv\n"
        "dependencies:\n"
        "  - python=3.11\n"
        "  - pip\n"
        "  - pip:\n"
        f"      - --index-url {url}\n"
        f"{pkgs}"
    )
    return ClientConfig(
        "conda",
        "environment.yml",
        text,
        True,
        "safe only as written, with pypapo as the single pip index (--index-url): conda has no"
        " per-package index pinning for pip packages, and --extra-index-url is NOT safe",
    )


_RENDERERS = {"pip": _pip, "uv": _uv, "poetry": _poetry, "pdm": _pdm, "pipenv": _pipenv, "conda": _conda}

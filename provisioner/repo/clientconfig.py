"""Pure: client configuration that keeps private names away from the public index, for every tool.

Dependency confusion: a client that may look a private name up on a public index can install an
attacker's higher version from it, and a private package reached only *transitively* (acme-app from
pypapo depends on acme-lib, also private) is the case most configurations miss:

- uv applies `[tool.uv.sources]` to direct dependencies only. What holds for every dependency is the
  index order with `index-strategy = "first-index"` (uv's default): uv stops at the first index that
  knows a name, so with pypapo first a name pypapo carries never reaches the public index.
- poetry applies `source =` only to dependencies that are declared (and, in poetry 2, declared in
  `[project]` too). What holds for every dependency is the priorities: the public index as a
  `supplemental` source is asked only when no primary source (pypapo) has a matching package.
- pdm filters every lookup by `include_packages`/`exclude_packages`.
- pipenv searches a package's named index only, and the default (first) source for the rest.
- pip (and conda's pip section) cannot route a name to an index at all: with `--extra-index-url` the
  highest version on ANY index wins. The only safe pip is pypapo as its only index, with the public
  dependencies mirrored into it (`provision mirror`).

With `--public-index none` (pypapo carries everything) every tool gets pypapo alone.

Surviving a lost replica (a group behind the internal passthrough balancer): a connection to a replica
that lost its network goes silent (Google's balancer answers nothing for a backend), so a client must
give up on a silent connection itself and ask again, which then reaches a healthy replica. pip's
`timeout` is a socket timeout (each connect and each read, not the whole download); urllib3 retries a
GET that timed out or lost its connection before the response headers (`retries`), and pip >= 25.1
resumes a file download cut mid-body with a Range request (`resume-retries`, off by default before
25.2). uv retries timeouts, resets and cut bodies by itself (UV_HTTP_RETRIES, default 3) but waits 30 s
(UV_HTTP_TIMEOUT); poetry retries 5 times by itself and waits POETRY_REQUESTS_TIMEOUT (15 s). Those are
environment variables only, so they come as `env`. pipenv locks and installs with the pip it vendors,
and conda runs an environment's `pip:` list with that environment's pip: neither reads a Pipfile or an
environment.yml for pip's network settings (a requirements list takes no --timeout), but every pip reads
PIP_<OPTION> from the environment, so they get pip's three settings as `env` too.
Every configuration comes with a command that checks the resolved result and exits non-zero when a
private name would come from anywhere but pypapo.

In `repo/` because two places print it: `provision client-config` and the install snippets of the
site's project pages (written by the engine, which imports nothing outside `repo/`).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from provisioner.errors import PypapoError
from provisioner.repo.layout import normalize

TOOLS = ("pip", "uv", "poetry", "pdm", "pipenv", "conda", "mamba", "pixi")
PYPI = "https://pypi.org/simple/"
PLACEHOLDER = "your-private-package"

# How long a client waits on a silent connection before it asks again (seconds of silence, not a whole
# download), and how often it asks. Below the balancer's detection (2 checks 5 s apart), well above what
# a healthy replica takes to answer: a retry from a slow but healthy replica costs a request, not an install.
STALL_TIMEOUT = 10
RETRIES = 5
# pip's settings for a lost replica, as pip reads them from the environment (PIP_ + the long option).
PIP_ENV = (
    ("PIP_TIMEOUT", str(STALL_TIMEOUT)),
    ("PIP_RETRIES", str(RETRIES)),
    ("PIP_RESUME_RETRIES", str(RETRIES)),
)


@dataclass(frozen=True)
class ClientConfig:
    tool: str
    file: str  # where the text goes
    joins: tuple[str, ...]  # the tables/sections of that file the snippet merges into
    text: str  # the configuration itself (comments included, parseable as the file's format)
    single_index: bool  # pypapo is the only index (the tool cannot be given a second one safely)
    note: str  # one plain sentence on why it is safe (and what the tool cannot do)
    verify: str  # a shell command, run where the file is, that fails unless private names come from pypapo
    # environment variables for settings the tool reads from nowhere else (its timeout and retries)
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Ctx:
    url: str  # pypapo's /simple/ URL, with its trailing slash
    public: str | None  # the public index (None: pypapo carries everything)
    names: list[str]  # private names, PEP 503 normalized


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _http_url(value: str, flag: str) -> str:
    if not value.startswith(("http://", "https://")) or any(c in value for c in " \"'\n\\"):
        raise PypapoError(f"{flag} {value!r} must be an http(s) URL like http://localhost:3333/simple/")
    return value if value.endswith("/") else value + "/"


def render(
    tool: str, url: str, packages: Sequence[str] = (), public_index: str | None = PYPI
) -> ClientConfig:
    """The configuration for `tool` pointing at `url` (the index's /simple/ URL); `public_index` is the
    index for everything else, None when pypapo mirrors everything."""
    if tool not in TOOLS:
        raise PypapoError(f"unknown tool {tool!r}; choose one of {', '.join(TOOLS)}")
    url = _http_url(url, "--url")
    public = None if public_index in (None, "none") else _http_url(public_index, "--public-index")
    if public is not None and public.rstrip("/") == url.rstrip("/"):
        public = None
    names = [normalize(n) for n in packages] or [PLACEHOLDER]
    return _RENDERERS[tool](_Ctx(url, public, list(dict.fromkeys(names))))


# --- verification commands ------------------------------------------------------------------------------
# Each reads what the tool resolved and lists, for every private name, where it comes from.


def _program(ctx: _Ctx, body: str) -> str:
    """A python3 -c program (double quotes only, so it sits in single quotes in a shell)."""
    head = f"import json, sys, tomllib; names = {json.dumps(ctx.names)}; url = {json.dumps(ctx.url)}; "
    tail = '; sys.exit(f"NOT from pypapo: {bad}" if bad else 0)'
    return shlex.quote(head + body + tail)


def _check(setup: str, load: str, origin: str, ctx: _Ctx, ok: str) -> str:
    body = (
        f"{load}; bad = [n for n in names if n in found and not ({ok})]; "
        f"[print(n, {origin}) for n in names if n in found]"
    )
    return f"{setup} && python3 -c {_program(ctx, body)}"


def _pip_verify(ctx: _Ctx, pip: str = "python3 -m pip install") -> str:
    body = (
        'got = {i["metadata"]["name"].lower().replace("_", "-").replace(".", "-"): '
        'i["download_info"]["url"] for i in json.load(sys.stdin)["install"]}; '
        "[print(n, u) for n, u in got.items()]; bad = [n for n, u in got.items() if not u.startswith(url)]"
    )
    return (
        f"{pip} --dry-run --ignore-installed --quiet --report - {' '.join(ctx.names)}"
        f" | python3 -c {_program(ctx, body)}"
    )


# --- the tools --------------------------------------------------------------------------------------------


def _single_index_note(tool: str, ctx: _Ctx) -> str:
    if ctx.public is None:
        return (
            f"safe: pypapo is {tool}'s only index (it must carry the public dependencies: provision mirror)"
        )
    return (
        f"{tool} cannot keep a name away from a second index (with --extra-index-url the highest version"
        f" on ANY index wins), so this is pypapo as the only index: mirror the public dependencies into"
        f" it with `provision mirror` (then --public-index none)"
    )


def _pip_trusted_host(url: str) -> str | None:
    """pip ignores an http:// index unless it is on loopback or a trusted host (the load balancer's
    `http://10.x.x.x:PORT/simple/`): the host:port to trust, or None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname in (None, "localhost"):
        return None
    try:
        if ipaddress.ip_address(parts.hostname).is_loopback:
            return None
    except ValueError:
        pass
    return parts.netloc


def _pip(ctx: _Ctx) -> ClientConfig:
    trusted = _pip_trusted_host(ctx.url)
    trust = (
        "# plain http off loopback: pip ignores such an index unless its host is trusted\n"
        f"trusted-host = {trusted}\n"
        if trusted
        else ""
    )
    text = (
        "# pip.conf (Linux: ~/.config/pip/pip.conf or PIP_CONFIG_FILE; Windows: %APPDATA%\\pip\\pip.ini)\n"
        "# joins [global]. pypapo is the ONLY index: pip cannot pin a package to an index, and with\n"
        "# extra-index-url it takes the highest version from ANY index, so a public package with a\n"
        "# private name would win. Never add extra-index-url; mirror public dependencies into pypapo.\n"
        "[global]\n"
        f"index-url = {ctx.url}\n"
        f"{trust}"
        "# A replica lost behind the load balancer goes silent: give up on a silent connection after\n"
        "# `timeout` seconds and ask again (a healthy replica answers), and resume a download cut\n"
        "# mid-file (pip >= 25.1; older pips ignore the key).\n"
        f"timeout = {STALL_TIMEOUT}\n"
        f"retries = {RETRIES}\n"
        f"resume-retries = {RETRIES}\n"
    )
    return ClientConfig(
        "pip", "pip.conf", ("[global]",), text, True, _single_index_note("pip", ctx), _pip_verify(ctx)
    )


def _uv(ctx: _Ctx) -> ClientConfig:
    if ctx.public is None:
        indexes = (
            "# pypapo replaces PyPI (default = true): the only index.\n"
            f'[[tool.uv.index]]\nname = "pypapo"\nurl = "{ctx.url}"\ndefault = true\n'
        )
        note = "safe: pypapo is uv's only index"
    else:
        indexes = (
            "# pypapo FIRST, then the public index as the default (always the last one asked).\n"
            "# first-index: uv takes a name from the first index that has it, so a name pypapo carries\n"
            "# (direct or transitive) is never looked up on the public index. Do not use\n"
            '# "unsafe-best-match" or "unsafe-first-match", nor --extra-index-url on the command line.\n'
            f'[[tool.uv.index]]\nname = "pypapo"\nurl = "{ctx.url}"\n\n'
            f'[[tool.uv.index]]\nname = "public"\nurl = "{ctx.public}"\ndefault = true\n\n'
            f'[tool.uv]\nindex-strategy = "first-index"\n'
        )
        note = (
            "safe: pypapo is asked first and, under first-index, a name it carries is never taken from"
            " the public index ([tool.uv.sources] alone would pin direct dependencies only)"
        )
    joins = ("[[tool.uv.index]]",) if ctx.public is None else ("[[tool.uv.index]]", "[tool.uv]")
    text = (
        "# pyproject.toml: joins "
        + " and ".join(joins)
        + " (these index entries before any other; in uv.toml: [[index]] and the top level)\n"
        + indexes
    )
    verify = _check(
        "uv lock",
        'found = {p["name"]: p.get("source", {}) for p in tomllib.load(open("uv.lock", "rb"))["package"]}',
        "found[n]",
        ctx,
        'found[n].get("registry", "").rstrip("/") == url.rstrip("/")',
    )
    env = (("UV_HTTP_TIMEOUT", str(STALL_TIMEOUT)), ("UV_HTTP_RETRIES", str(RETRIES)))
    return ClientConfig("uv", "pyproject.toml", joins, text, False, note, verify, env)


def _poetry(ctx: _Ctx) -> ClientConfig:
    sources = f'[[tool.poetry.source]]\nname = "pypapo"\nurl = "{ctx.url}"\npriority = "primary"\n'
    if ctx.public is None:
        sources = "# pypapo is the only source (a primary source turns the implicit PyPI off).\n" + sources
        note = "safe: pypapo is poetry's only source"
    else:
        public = (
            '[[tool.poetry.source]]\nname = "PyPI"\npriority = "supplemental"\n'
            if ctx.public == PYPI
            else f'[[tool.poetry.source]]\nname = "public"\nurl = "{ctx.public}"\npriority = "supplemental"\n'
        )
        sources = (
            "# pypapo primary, the public index supplemental: poetry asks a supplemental source only\n"
            "# when no primary source has a package matching the requirement, for direct and transitive\n"
            "# dependencies alike. (A requirement pypapo cannot satisfy, say acme-lib>=3 while pypapo has\n"
            "# 2.x, would fall through: keep private requirements satisfiable, or use --public-index none.)\n"
            + sources
            + "\n"
            + public
        )
        note = (
            "safe: pypapo primary and the public index supplemental (a `source =` pin alone covers"
            " declared dependencies only)"
        )
    text = "# pyproject.toml: joins [[tool.poetry.source]] (these entries, in this order)\n" + sources
    verify = _check(
        "poetry lock",
        'found = {p["name"]: p.get("source", {}) '
        'for p in tomllib.load(open("poetry.lock", "rb"))["package"]}',
        'found[n].get("url", "PyPI")',
        ctx,
        'found[n].get("url", "").rstrip("/") == url.rstrip("/")',
    )
    env = (("POETRY_REQUESTS_TIMEOUT", str(STALL_TIMEOUT)),)  # poetry retries 5 times by itself
    return ClientConfig(
        "poetry", "pyproject.toml", ("[[tool.poetry.source]]",), text, False, note, verify, env
    )


def _pdm(ctx: _Ctx) -> ClientConfig:
    if ctx.public is None:
        body = (
            '# A source named "pypi" replaces PyPI: pypapo is the only index.\n'
            f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{ctx.url}"\n'
        )
        note = "safe: pypapo is pdm's only index"
    else:
        body = (
            "# Private names only from pypapo (include_packages), and never from the public index\n"
            '# (exclude_packages; the source named "pypi" replaces the default PyPI).\n'
            f'[[tool.pdm.source]]\nname = "pypapo"\nurl = "{ctx.url}"\n'
            f"include_packages = {_toml_list(ctx.names)}\n\n"
            f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{ctx.public}"\n'
            f"exclude_packages = {_toml_list(ctx.names)}\n\n"
            "[tool.pdm.resolution]\nrespect-source-order = true\n"
        )
        note = (
            "safe: include_packages/exclude_packages route each private name to pypapo alone,"
            " transitive ones too"
        )
    joins = (
        ("[[tool.pdm.source]]",) if ctx.public is None else ("[[tool.pdm.source]]", "[tool.pdm.resolution]")
    )
    text = "# pyproject.toml: joins " + " and ".join(joins) + "\n" + body
    verify = _check(
        "pdm lock -S static_urls",
        'found = {p["name"]: [f["url"] for f in p.get("files", [])] '
        'for p in tomllib.load(open("pdm.lock", "rb"))["package"]}',
        "found[n]",
        ctx,
        "found[n] and all(u.startswith(url) for u in found[n])",
    )
    return ClientConfig("pdm", "pyproject.toml", joins, text, False, note, verify)


def _pipenv(ctx: _Ctx) -> ClientConfig:
    verify_ssl = "true" if ctx.url.startswith("https") else "false"
    if ctx.public is None:
        sources = f'[[source]]\nname = "pypapo"\nurl = "{ctx.url}"\nverify_ssl = {verify_ssl}\n'
        packages = "".join(f'{n} = "*"\n' for n in ctx.names)
        note = "safe: pypapo is pipenv's only source"
        ok = "True"
    else:
        public_name = "pypi" if ctx.public == PYPI else "public"
        sources = (
            "# The public index FIRST (the default source: packages without `index =` come from it\n"
            '# only); every private name, direct or transitive, is listed with index = "pypapo" and\n'
            "# searched there only. Keep PIPENV_INSTALL_SEARCH_ALL_SOURCES unset.\n"
            f'[[source]]\nname = "{public_name}"\nurl = "{ctx.public}"\n'
            f"verify_ssl = {'true' if ctx.public.startswith('https') else 'false'}\n\n"
            f'[[source]]\nname = "pypapo"\nurl = "{ctx.url}"\nverify_ssl = {verify_ssl}\n'
        )
        packages = "".join(f'{n} = {{ version = "*", index = "pypapo" }}\n' for n in ctx.names)
        note = "safe: each private name is listed with its index, and pipenv searches only that one for it"
        ok = "found[n].get('index') == 'pypapo'"
    text = (
        "# Pipfile: joins [[source]] (these entries, in this order) and [packages]\n"
        + sources
        + ("\n[packages]\n" + packages)
    )
    verify = _check(
        "pipenv lock",
        'found = json.load(open("Pipfile.lock"))["default"]',
        'found[n].get("index", "(default source)")',
        ctx,
        ok,
    )
    return ClientConfig(
        "pipenv", "Pipfile", ("[[source]]", "[packages]"), text, ctx.public is None, note, verify, PIP_ENV
    )


# --- conda channels ---------------------------------------------------------------------------------------
# The conda channel is served beside the index (`/conda`); strict channel priority is what keeps a
# private conda name from being taken from conda-forge, and it has limits worth printing.

PUBLIC_CHANNEL = "conda-forge"
STRICT_NOTE = (
    "channel_priority strict: once pypapo's channel (listed first) has a package name, conda, mamba"
    " and pixi never take that name from conda-forge, not even a higher version; it does NOT protect a"
    " name pypapo's channel lacks (not published yet, every build removed, a typo): that one is"
    " resolved from conda-forge, so publish a private name before anyone depends on it; nor a spec"
    " that names its channel (conda-forge::NAME), -c conda-forge on the command line, a channel list"
    " with conda-forge first, or channel_priority flexible/disabled; the pip: section is pip's rules"
)


def channel_url(index_url: str) -> str:
    """The conda channel beside the index: `.../simple/` -> `.../conda`."""
    base = index_url[: -len("simple/")] if index_url.endswith("/simple/") else index_url
    return f"{base.rstrip('/')}/conda"


def _conda_channels(ctx: _Ctx) -> list[str]:
    # --public-index none: pypapo carries everything, so its channel is the only one too.
    return [channel_url(ctx.url)] + ([PUBLIC_CHANNEL] if ctx.public is not None else [])


def _strict_note(ctx: _Ctx, spelled: str = "channel_priority strict") -> str:
    if ctx.public is None:
        return "safe: pypapo's channel is the only channel (it must carry every conda dependency)"
    return STRICT_NOTE.replace("channel_priority strict", spelled, 1)


def _condarc(ctx: _Ctx) -> str:
    channels = "".join(f"  - {c}\n" for c in _conda_channels(ctx))
    return f"channels:\n{channels}channel_priority: strict\n"


def _conda_names(ctx: _Ctx) -> list[str]:
    return [n if n != PLACEHOLDER else "your-private-conda-package" for n in ctx.names]


def _conda_env(ctx: _Ctx) -> ClientConfig:
    pkgs = "".join(f"      - {n}\n" for n in ctx.names)
    conda_pkgs = "".join(f"  - {n}\n" for n in _conda_names(ctx))
    trusted = _pip_trusted_host(ctx.url)
    trust = f"      - --trusted-host {trusted}\n" if trusted else ""
    channels = "".join(f"  - {c}\n" for c in _conda_channels(ctx))
    condarc = "".join(f"#   {line}\n" for line in _condarc(ctx).splitlines())
    text = (
        "# environment.yml: pypapo's conda channel first, then conda-forge (nodefaults: not Anaconda's).\n"
        "# Strict priority lives in ~/.condarc (or the environment's .condarc):\n"
        f"{condarc}"
        "# The `- pip:` list is pip, with pip's rules: pypapo as the only pip index (--index-url), never\n"
        "# --extra-index-url.\n"
        "name: myenv\n"
        "channels:\n"
        f"{channels}"
        "  - nodefaults\n"
        "dependencies:\n"
        "  - python=3.11\n"
        f"{conda_pkgs}"
        "  - pip\n"
        "  - pip:\n"
        f"      - --index-url {ctx.url}\n"
        f"{trust}"
        f"{pkgs}"
    )
    return ClientConfig(
        "conda",
        "environment.yml",
        ("channels:", "dependencies:", "dependencies: - pip:"),
        text,
        True,
        f"{_strict_note(ctx)}. {_single_index_note('conda pip section', ctx)}",
        _pip_verify(ctx).replace(
            "python3 -m pip install", f"python3 -m pip install --index-url {ctx.url}", 1
        ),
        PIP_ENV,
    )


def _conda_url_check(ctx: _Ctx, source: str) -> str:
    """`source` prints package URLs (`conda list --explicit`, a pixi.lock); the program lists each
    private package's URL and fails unless it is in pypapo's channel."""
    names = _conda_names(ctx)
    body = (
        f"channel = {json.dumps(channel_url(ctx.url) + '/')}; "
        'urls = [w for w in sys.stdin.read().split() if w.split("#")[0].endswith((".conda", ".tar.bz2"))]; '
        'found = {u.split("#")[0].rsplit("/", 1)[-1].rsplit("-", 2)[0]: u for u in urls}; '
        "bad = [n for n in names if n in found and not found[n].startswith(channel)]; "
        "[print(n, found[n]) for n in names if n in found]"
    )
    return f"{source} python3 -c {_program(_Ctx(ctx.url, ctx.public, names), body)}"


def _mamba(ctx: _Ctx) -> ClientConfig:
    text = (
        "# ~/.condarc (conda and mamba; micromamba also reads ~/.mambarc): pypapo's conda channel first.\n"
        f"{_condarc(ctx)}"
    )
    return ClientConfig(
        "mamba",
        ".condarc",
        ("channels:", "channel_priority:"),
        text,
        ctx.public is None,
        _strict_note(ctx),
        _conda_url_check(ctx, "mamba list -n myenv --explicit |"),
    )


def _pixi(ctx: _Ctx) -> ClientConfig:
    channels = _toml_list(_conda_channels(ctx))
    deps = "".join(f'{n} = "*"\n' for n in _conda_names(ctx))
    pypi = f'index-url = "{ctx.url}"\n'
    if ctx.public is not None:
        # pixi resolves PyPI packages with uv: first-index stops at pypapo for every name it carries.
        pypi += f'extra-index-urls = ["{ctx.public}"]\nindex-strategy = "first-index"\n'
    text = (
        "# pixi.toml: pypapo's conda channel first; strict priority (pixi's default, spelled out).\n"
        "[workspace]\n"
        'name = "myproject"\n'
        f"channels = {channels}\n"
        'platforms = ["linux-64", "osx-arm64", "win-64"]\n'
        'channel-priority = "strict"\n'
        "\n"
        "[dependencies]\n"
        f"{deps}"
        "\n"
        "[pypi-options]\n"
        f"{pypi}"
    )
    verify = _conda_url_check(ctx, "pixi install && cat pixi.lock |")
    return ClientConfig(
        "pixi",
        "pixi.toml",
        ("[workspace] channels", "[dependencies]", "[pypi-options]"),
        text,
        ctx.public is None,
        _strict_note(ctx, 'channel-priority = "strict"'),
        verify,
    )


_RENDERERS = {
    "pip": _pip,
    "uv": _uv,
    "poetry": _poetry,
    "pdm": _pdm,
    "pipenv": _pipenv,
    "conda": _conda_env,
    "mamba": _mamba,
    "pixi": _pixi,
}

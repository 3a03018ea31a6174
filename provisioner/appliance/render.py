"""Render the appliance's files (startup script, systemd units, NGINX and gcsfuse configs).

Pure: strings in, strings out. The templates are real files: `startup/` and `systemd/` at the top of the
repository, shipped in the wheel as `provisioner/_templates/{startup,systemd}`.

The VM gets (see `render_vm_files`):

    /etc/pypapo/gcsfuse.yaml                      gcsfuse config (read-only, implicit dirs, caches)
    /etc/pypapo/nginx.conf                        NGINX config (the same template `provision serve` uses)
    /etc/pypapo/page-guard.js                     its page guard (njs): a 0-byte page is a 503, not a 200
    /etc/systemd/system/pypapo-gcsfuse.service    the mount (Restart=always, stale-mount clean-up)
    /etc/systemd/system/pypapo-nginx.service      NGINX, sandboxed, unprivileged (DynamicUser)
    /etc/apt/sources.list.d/pypapo-gcsfuse.list   Google's gcsfuse-bookworm apt repository

The startup script (`render_startup_script`) embeds them all and is selected into a mode at run time:
first argument `serve`|`bake`, else `$PYPAPO_MODE`, else the instance attribute `pypapo-mode`, else
`serve`. See the header of `startup/startup.sh.j2`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import jinja2

from provisioner.appliance import guest
from provisioner.errors import PypapoError
from provisioner.repo import layout
from provisioner.repo import location as loc
from provisioner.repo.conda import layout as conda_layout
from provisioner.repo.conda import repodata as conda_repodata
from provisioner.repo.site import render as site_render

# Where the VM's files live. Public: the checks, the VM tests and the docs refer to them.
CONFIG_DIR = "/etc/pypapo"
GCSFUSE_CONFIG_PATH = f"{CONFIG_DIR}/gcsfuse.yaml"
NGINX_CONFIG_PATH = f"{CONFIG_DIR}/nginx.conf"
PAGE_GUARD_PATH = f"{CONFIG_DIR}/page-guard.js"
UNIT_DIR = "/etc/systemd/system"
GCSFUSE_UNIT = "pypapo-gcsfuse.service"
NGINX_UNIT = "pypapo-nginx.service"
APT_SOURCE_PATH = "/etc/apt/sources.list.d/pypapo-gcsfuse.list"
APT_KEYRING_PATH = "/etc/apt/keyrings/pypapo-gcsfuse.asc"
APT_PIN_PATH = "/etc/apt/preferences.d/pypapo-gcsfuse.pref"
GCSFUSE_KEY_URL = "https://packages.cloud.google.com/apt/doc/apt-key.gpg"
# The primary keys Google signs packages.cloud.google.com with (the keyring Google's own Debian images
# bootstrap from: GoogleCloudPlatform/compute-image-tools, daisy_workflows/image_build/debian/fai_config/
# package_config/GCE_SPECIFIC.asc, "Update packages.cloud.google.com apt keyring" #2311, 2024-05-03).
# The startup script keeps only these of the keys it downloads: a look-alike key is never trusted.
GOOGLE_APT_KEY_FINGERPRINTS = (
    "A362B822F6DEDC652817EA46B53DC80D13EDEF05",  # Rapture Automatic Signing Key (2022-03-07)
    "35BAA0B33E9EB396F59CA838C0BA5CE6DC6315A3",  # Artifact Registry Repository Signer
)
# The gcsfuse release the appliance installs (pinned: its config keys and flags are what the unit and
# config use; tests/vm carries this release's parameter list for the stand-in).
GCSFUSE_VERSION = "3.11.2"
# Where a failed run leaves its reason (the bake wrapper reports it; a person reads it over SSH).
FAILURE_FILE = "/run/pypapo/failure"
NGINX_RUNTIME_DIR = "/run/pypapo-nginx"
# The VM's access log: the journal, via its syslog socket (journalctl -t pypapo_nginx).
JOURNAL_ACCESS_LOG = "syslog:server=unix:/run/systemd/journal/dev-log,nohostname,tag=pypapo_nginx"
# The file whose presence proves the repository (not an empty mountpoint) is what NGINX sees.
SENTINEL = layout.ROOT_HTML
# NGINX core tests a file's existence, never its size: the page guard is njs, Debian's
# libnginx-mod-http-js (0.7.9 for nginx 1.22 in bookworm), loaded by absolute path (no modules-enabled).
ROOT_PAGES = (layout.ROOT_HTML, layout.ROOT_JSON)
NJS_PACKAGE = "libnginx-mod-http-js"
NJS_MODULE_PATH = "/usr/lib/nginx/modules/ngx_http_js_module.so"
# /healthz/conda reads conda/channeldata.json for the subdirs it lists; one larger than this (about
# 200,000 names) is reported rather than read on every check.
CHANNELDATA_CHECK_MAX_MIB = 64
# What the appliance installs from Debian (the startup script, the image bake, the VM test's mirror).
DEBIAN_PACKAGES = ("curl", "ca-certificates", "fuse3", "nginx", NJS_PACKAGE)

_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class ApplianceConfig:
    """Everything the VM's files depend on. Validated on construction (values end up in shell and units)."""

    bucket: str  # GCS bucket name (no gs://)
    prefix: str = ""  # object prefix inside the bucket, '' or 'team/x'
    port: int = 3333  # serving port
    mount_path: str = "/mnt/pypapo"
    metadata_cache_ttl_secs: int = 60
    stat_cache_max_size_mb: int = 32
    file_cache_max_size_mb: int = 1024
    file_cache_dir: str = "/var/cache/pypapo-gcsfuse"
    type_cache_max_size_mb: int = 4
    negative_cache_ttl_secs: int = 5  # how long "not found" is remembered: bounds publish-to-visible delay
    gcsfuse_bin: str = "/usr/bin/gcsfuse"
    nginx_bin: str = "/usr/sbin/nginx"
    # How long `provision create` waits for readiness (its --ready-timeout): the script waits for the
    # mount until shortly before that, counted from the machine's start, then reports why it gave up.
    ready_timeout_secs: int = 600
    gcsfuse_apt_suite: str = "gcsfuse-bookworm"
    # NGINX's own wall behind the firewall: only these source networks (and loopback) get an answer on the
    # serving port; any other connection is closed without one. Empty: every source (`provision serve`,
    # which listens on loopback). The cloud passes IAP's and the health checkers' ranges.
    allowed_sources: tuple[str, ...] = ()
    gcsfuse_version: str = GCSFUSE_VERSION
    gcsfuse_key_fingerprints: tuple[str, ...] = GOOGLE_APT_KEY_FINGERPRINTS

    def __post_init__(self) -> None:
        if self.bucket.startswith("gs://"):
            raise PypapoError(f"invalid bucket name {self.bucket!r}: give the bare name, e.g. my-bucket")
        problem = loc.bucket_name_problem(self.bucket)
        if problem:
            raise PypapoError(f"bucket name {self.bucket!r} {problem} ({loc.BUCKET_RULE})")
        problem = loc.prefix_problem(self.prefix)
        if problem:
            raise PypapoError(f"prefix {self.prefix!r} {problem}")
        if not 1 <= self.port <= 65535:
            raise PypapoError(f"invalid port {self.port}: use 1-65535")
        for name in ("mount_path", "file_cache_dir", "gcsfuse_bin", "nginx_bin"):
            value = getattr(self, name)
            if not _PATH_RE.match(value) or ".." in PurePosixPath(value).parts or value == "/":
                raise PypapoError(f"invalid {name} {value!r}: use an absolute path of [A-Za-z0-9._/-]")
        hidden = ("/tmp", "/var/tmp", "/home", "/root", "/run/user", "/dev", "/proc", "/sys", "/etc")
        if any(PurePosixPath(self.mount_path).is_relative_to(h) for h in hidden):
            # NGINX's sandbox (PrivateTmp, ProtectHome, PrivateDevices, ...) would not see the mount there.
            raise PypapoError(f"mount_path {self.mount_path} is hidden from the NGINX sandbox: use /mnt/...")
        if PurePosixPath(self.file_cache_dir).is_relative_to(self.mount_path):
            raise PypapoError("file_cache_dir must not be inside mount_path")
        for name in (
            "metadata_cache_ttl_secs",
            "stat_cache_max_size_mb",
            "file_cache_max_size_mb",
            "type_cache_max_size_mb",
            "negative_cache_ttl_secs",
        ):
            if getattr(self, name) < -1:
                raise PypapoError(f"invalid {name} {getattr(self, name)}: use -1 (unlimited), 0 or more")
        if self.ready_timeout_secs < 1:
            raise PypapoError("ready_timeout_secs must be at least 1")
        if not re.fullmatch(r"gcsfuse-[a-z]+", self.gcsfuse_apt_suite):
            raise PypapoError(f"invalid gcsfuse apt suite {self.gcsfuse_apt_suite!r}")
        networks = []
        for source in self.allowed_sources:
            try:
                networks.append(str(ipaddress.ip_network(source, strict=True)))
            except ValueError:
                raise PypapoError(
                    f"invalid allowed source {source!r}: use a network like 10.0.0.0/8"
                ) from None
        object.__setattr__(self, "allowed_sources", tuple(networks))
        if not re.fullmatch(r"[0-9][0-9A-Za-z.+~-]*", self.gcsfuse_version):
            raise PypapoError(f"invalid gcsfuse version {self.gcsfuse_version!r}")
        if not self.gcsfuse_key_fingerprints or not all(
            re.fullmatch(r"[0-9A-F]{40}", f) for f in self.gcsfuse_key_fingerprints
        ):
            raise PypapoError(
                "gcsfuse_key_fingerprints: give one or more 40-digit upper-case hex fingerprints"
            )

    @property
    def location(self) -> str:
        return loc.gs_url(self.bucket, self.prefix)


def template_dir() -> Path:
    """The installed package's `_templates`, or the repository's top level in an editable checkout."""
    installed = Path(__file__).resolve().parent.parent / "_templates"
    if (installed / "startup").is_dir() and (installed / "systemd").is_dir():
        return installed
    return Path(__file__).resolve().parents[2]


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # Bash uses `{#` (${#array[@]}): Jinja comments are `{## ... ##}` in these templates.
        comment_start_string="{##",
        comment_end_string="##}",
    )


def _render(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


def _greater_q_patterns() -> list[str]:
    """Regexes over "JJJJ:HHHH" (two q-values as 4-digit thousandths) that match when JJJJ > HHHH.

    NGINX cannot compare numbers; fixed-width digit strings compare like numbers, and "greater" is the
    first differing digit being larger: a common prefix (back-reference), then digit d against [0-(d-1)].
    """
    patterns = []
    for pos in range(4):
        rest = 3 - pos
        for d in range(1, 10):
            if pos == 0 and d > 1:  # the first digit is 0 or 1 (q <= 1.000)
                break
            prefix = f"(\\d{{{pos}}})" if pos else "()"
            tail = f"\\d{{{rest}}}" if rest else ""
            patterns.append(f"~^{prefix}{d}{tail}:\\1[0-{d - 1}]{tail}$")
    return patterns


def render_nginx_conf(
    cfg: ApplianceConfig,
    *,
    root_dir: str,
    listen: str,
    runtime_dir: str,
    access_log: str | None = None,
    error_log: str = "stderr",
    user: str | None = None,
    worker_processes: str = "auto",
    guard_path: str = PAGE_GUARD_PATH,
) -> str:
    """The NGINX config serving the repository at `root_dir` (the mount on the VM, a directory locally).

    `listen` is an NGINX listen address (`3333`, `127.0.0.1:3333`); `runtime_dir` holds the pid file and
    temp paths (must be writable); `access_log` defaults to the journal (VM). `user` is only for a master
    running as root (`provision serve` as root): the VM's NGINX runs unprivileged and needs none.
    `guard_path` is where the page guard (`render_page_guard`) is written beside it.
    """
    for name, value in (("root_dir", root_dir), ("runtime_dir", runtime_dir), ("guard_path", guard_path)):
        if not value.startswith("/") or any(c in value for c in " \t\n;\"'{}$\\"):
            raise PypapoError(f"invalid {name} {value!r}: need an absolute path without spaces or quotes")
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]:|[0-9.]+:|localhost:)?[0-9]{1,5}", listen):
        raise PypapoError(f"invalid listen address {listen!r}")
    if access_log is None:
        access_log = JOURNAL_ACCESS_LOG
    for name, value in (("access_log", access_log), ("error_log", error_log)):
        if any(c in value for c in " \t\n;\"'{}$\\"):
            raise PypapoError(f"invalid {name} {value!r}")
    return _render(
        "startup/nginx.conf.j2",
        cfg=cfg,
        root_dir=root_dir.rstrip("/") or "/",
        listen=listen,
        runtime_dir=runtime_dir.rstrip("/"),
        access_log=access_log,
        error_log=error_log,
        user=user,
        worker_processes=worker_processes,
        sentinel=SENTINEL,
        root_pages=ROOT_PAGES,
        njs_module=NJS_MODULE_PATH,
        guard_path=guard_path,
        site_csp=site_render.content_security_policy(),
        site_csp_remote_images=site_render.content_security_policy(remote_images=True),
        site_remote_images=layout.UI_REMOTE_IMAGES,
        # The site's pages beside the list's head and the project pages (stored gzip'd), and its
        # files beside them that the page guard checks (a 0-byte one breaks every page).
        ui_pages=layout.UI_LIST_FILES,
        ui_files="|".join(re.escape(PurePosixPath(n).name) for n in (layout.UI_OLD_DATA, *layout.UI_ASSETS)),
        greater_q_patterns=_greater_q_patterns(),
        # Bounded unrolled loops: NGINX has no lowercase; names with more are answered 404.
        max_upper=48,
        max_separator_runs=16,
        conda_subdirs="|".join(conda_layout.SUBDIRS),
        empty_repodata=_nginx_literal(conda_repodata.empty_template("$pypapo_subdir")),
        empty_channeldata=_nginx_literal(conda_repodata.dump_channeldata({})),
    )


def _nginx_literal(body: bytes | str) -> str:
    """`body` inside a single-quoted NGINX string (which knows \\n and \\' escapes)."""
    text = body.decode() if isinstance(body, bytes) else body
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def render_page_guard() -> str:
    """The njs module nginx.conf's `js_set` variables come from (template startup/page-guard.js.j2)."""
    return _render(
        "startup/page-guard.js.j2",
        root_pages=ROOT_PAGES,
        subdirs=list(conda_layout.SUBDIRS),
        conda_dir=conda_layout.CONDA,
        channeldata=conda_layout.CHANNELDATA,
        repodata=conda_layout.REPODATA,
        repodata_variants=(conda_layout.REPODATA_ZST, conda_layout.SHARD_INDEX),
        channeldata_max_mib=CHANNELDATA_CHECK_MAX_MIB,
        packed=layout.PACKED,
    )


def render_gcsfuse_config(cfg: ApplianceConfig) -> str:
    return _render("startup/gcsfuse.yaml.j2", cfg=cfg)


def render_units(cfg: ApplianceConfig) -> dict[str, str]:
    """Unit file name -> content."""
    ctx = {
        "cfg": cfg,
        "gcsfuse_config_path": GCSFUSE_CONFIG_PATH,
        "nginx_config_path": NGINX_CONFIG_PATH,
        "runtime_dir": NGINX_RUNTIME_DIR,
        "gcsfuse_unit": GCSFUSE_UNIT,
        "nginx_unit": NGINX_UNIT,
    }
    return {
        GCSFUSE_UNIT: _render("systemd/pypapo-gcsfuse.service.j2", **ctx),
        NGINX_UNIT: _render("systemd/pypapo-nginx.service.j2", **ctx),
    }


def render_vm_files(cfg: ApplianceConfig) -> dict[str, str]:
    """Absolute VM path -> content: every file the startup script writes."""
    files = {
        APT_SOURCE_PATH: (
            f"# pypapo: Google's gcsfuse repository (written by the pypapo startup script)\n"
            f"deb [signed-by={APT_KEYRING_PATH}] https://packages.cloud.google.com/apt "
            f"{cfg.gcsfuse_apt_suite} main\n"
        ),
        APT_PIN_PATH: (
            f"# pypapo: the gcsfuse release the appliance is made for (written by its startup script)\n"
            f"Package: gcsfuse\nPin: version {cfg.gcsfuse_version}\nPin-Priority: 1001\n"
        ),
        GCSFUSE_CONFIG_PATH: render_gcsfuse_config(cfg),
        NGINX_CONFIG_PATH: render_nginx_conf(
            cfg, root_dir=cfg.mount_path, listen=str(cfg.port), runtime_dir=NGINX_RUNTIME_DIR
        ),
        PAGE_GUARD_PATH: render_page_guard(),
    }
    for name, text in render_units(cfg).items():
        files[f"{UNIT_DIR}/{name}"] = text
    return files


def config_digest(files: dict[str, str]) -> str:
    """A short digest of the VM files: the startup script reports it so a waiter knows which config runs."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()[:16]


def _heredoc_delimiter(files: dict[str, str]) -> str:
    base = "PYPAPO_EOF"
    delim = base
    n = 0
    while any(delim in text for text in files.values()):
        n += 1
        delim = f"{base}_{n}"
    return delim


def render_startup_script(cfg: ApplianceConfig) -> str:
    """The bash script for instance metadata `startup-script` (and for baking the golden image).

    Run without arguments it serves (idempotent, every boot); `bake` as first argument, PYPAPO_MODE=bake,
    or instance attribute `pypapo-mode=bake` installs/upgrades packages and writes and enables the units
    without mounting or starting anything.
    """
    files = render_vm_files(cfg)
    return _render(
        "startup/startup.sh.j2",
        cfg=cfg,
        files=files,
        digest=config_digest(files),
        delimiter=_heredoc_delimiter(files),
        apt_source_path=APT_SOURCE_PATH,
        apt_keyring_path=APT_KEYRING_PATH,
        apt_pin_path=APT_PIN_PATH,
        gcsfuse_key_url=GCSFUSE_KEY_URL,
        failure_file=FAILURE_FILE,
        gcsfuse_config_path=GCSFUSE_CONFIG_PATH,
        nginx_config_path=NGINX_CONFIG_PATH,
        page_guard_path=PAGE_GUARD_PATH,
        debian_packages=DEBIAN_PACKAGES,
        njs_package=NJS_PACKAGE,
        njs_module=NJS_MODULE_PATH,
        unit_dir=UNIT_DIR,
        gcsfuse_unit=GCSFUSE_UNIT,
        nginx_unit=NGINX_UNIT,
        **guest.template_context(),
    )


BAKE_DELIMITER = "PYPAPO_APPLIANCE_SCRIPT_EOF"


def render_bake_script(appliance_script: str) -> str:
    """The image builder's startup script: the appliance script verbatim, run with `bake`, then the
    guest attributes that tell `image build` how the bake went (see `startup/bake.sh.j2`)."""
    if BAKE_DELIMITER in appliance_script:
        raise PypapoError(f"the appliance script contains {BAKE_DELIMITER}; report this bug")
    body = appliance_script if appliance_script.endswith("\n") else appliance_script + "\n"
    return _render(
        "startup/bake.sh.j2",
        script=body,
        delimiter=BAKE_DELIMITER,
        failure_file=FAILURE_FILE,
        **guest.template_context(),
    )

"""Pure: the repository layout contract (docs/architecture.md): object names, content types, caching."""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name

from provisioner.repo.conda import layout as conda_layout

SIMPLE = "simple"
ROOT_HTML = f"{SIMPLE}/index.html"
ROOT_JSON = f"{SIMPLE}/index.json"
PAGE_NAMES = ("index.html", "index.json")
METADATA_SUFFIX = ".metadata"
DIST_SUFFIXES = (".whl", ".tar.gz", ".zip")

# The browsable site (provisioner/repo/site): derived pages, never read back to compute state.
UI = "ui"
# The site's pages (the list's, the search shards, the project pages) are stored gzip'd as NAME.gz
# (provisioner/repo/site/packed.py): nginx's gzip_static sends them as they are, and gunzips them for a
# client that takes no gzip. A publish uploads ~5x fewer bytes of them. Plain gzip files, typed
# application/octet-stream and with no Content-Encoding: GCS never transcodes them, and gcsfuse reads
# the bytes stored.
PACKED = ".gz"
UI_LIST = f"{UI}/index.html{PACKED}"  # the list's head: its newest rows (provisioner/repo/site/paging.py)
UI_SHARDS = 16  # the search index (and the list's data) in this many shards, by name
# What an older pypapo wrote instead of the shards (the whole list's data in one object): `reindex`
# and the first publish of this version delete it.
UI_OLD_DATA = f"{UI}/projects.json"
UI_ASSETS = ("site.css", "site.js", "favicon.svg")
# The site's one setting, and not derived: while this object exists, README images from https URLs are
# shown (`provision reindex --site-remote-images`), and nginx's policy for /ui/ allows them.
UI_REMOTE_IMAGES = f"{UI}/remote-images"

HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
METADATA_TYPE = "text/plain; charset=utf-8"
# Never a gzip type for .tar.gz: GCS would transcode and clients would get the wrong bytes/hash.
DIST_TYPE = "application/octet-stream"

PAGE_CACHE = "max-age=0, must-revalidate"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"


def normalize(name: str) -> str:
    """PEP 503 normalized project name (packaging's own rule, not a copy of it)."""
    return canonicalize_name(name)


_NORMALIZED = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def is_normalized(name: str) -> bool:
    """A valid project name in PEP 503 normalized form (what a project directory must be called)."""
    return bool(_NORMALIZED.match(name)) and "--" not in name


# Project names that collide with the served layout: the index is also served at `/`, where a project
# `simple` would be linked as `simple/` (the root index itself), `healthz` is the health check, and the
# other top-level paths belong to what the appliance serves or will serve (the browsable site, the
# conda channel, their assets). One list; publish refuses these (normalized) names.
RESERVED_PROJECTS = frozenset({"simple", "healthz", "ui", "site", "conda", "static", "api", "pypi"})


def is_reserved(project: str) -> bool:
    return project in RESERVED_PROJECTS


# PyPI's "too similar" rule (warehouse's ultranormalize_name): names equal once separators are dropped,
# `i`/`l` are read as `1` and `o` as `0` are one name to a reader. Applied to names already valid
# (ASCII letters, digits, `-_.`), which leaves these as the confusable characters.
_CONFUSABLE = str.maketrans({"-": None, "_": None, ".": None, "l": "1", "i": "1", "o": "0"})


def confusable_key(project: str) -> str:
    """What a project name looks like to a reader: two projects with the same key cannot coexist."""
    return project.lower().translate(_CONFUSABLE)


def project_html(project: str) -> str:
    return f"{SIMPLE}/{project}/index.html"


def project_json(project: str) -> str:
    return f"{SIMPLE}/{project}/index.json"


def dist_object(project: str, filename: str) -> str:
    return f"{SIMPLE}/{project}/{filename}"


def metadata_object(project: str, filename: str) -> str:
    return f"{SIMPLE}/{project}/{filename}{METADATA_SUFFIX}"


def ui_project(project: str) -> str:
    return f"{UI}/{project}/index.html{PACKED}"


def ui_release(project: str, filename: str) -> str:
    """The site's cache of what a release's page shows (its rendered README, ...), per metadata file."""
    return f"{UI}/{project}/{filename}.json"


def ui_page(page: str) -> str:
    """A page of the list by its id ('' the head; provisioner/repo/site/paging.py)."""
    return UI_LIST if not page else f"{UI}/older-{page}.html{PACKED}"


def ui_shard(k: int) -> str:
    """Search shard `k` (0..UI_SHARDS-1): every project whose name hashes to k."""
    return f"{UI}/search-{k:x}.json{PACKED}"


UI_SHARD_NAMES = tuple(ui_shard(k) for k in range(UI_SHARDS))
# An older page's id (site/paging.py): 1..M from a reindex, N-HEX sealed by a publish.
UI_PAGE_ID = r"[1-9][0-9]*(?:-[0-9a-f]{6})?"
# The served names (under ui/) of the list's older pages and of the shards, as a regular expression.
UI_LIST_FILES = rf"older-{UI_PAGE_ID}\.html|search-[0-9a-f]\.json"
_UI_PAGE = re.compile(rf"{UI}/(?:(?:[^/]+/)?index\.html|{UI_LIST_FILES})")


def is_packed(name: str) -> bool:
    """One of the site's pages as stored (gzip'd)."""
    return name.endswith(PACKED) and bool(_UI_PAGE.fullmatch(name.removesuffix(PACKED)))


def is_unpacked_page(name: str) -> bool:
    """A site page as the version before stored it (plain, without `.gz`): not served any more,
    deleted by the site's rebuild (the first publish of this version, or `reindex`)."""
    return bool(_UI_PAGE.fullmatch(name))


def ui_asset(name: str) -> str:
    return f"{UI}/{name}"


def is_dist_filename(filename: str) -> bool:
    return filename.endswith(DIST_SUFFIXES)


_UI_TYPES = {
    ".html": HTML_TYPE,
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def content_type(name: str) -> str:
    if conda_layout.is_channel_object(name):
        return conda_layout.content_type(name)
    if name.startswith(f"{UI}/"):
        return next((t for ext, t in _UI_TYPES.items() if name.endswith(ext)), DIST_TYPE)
    if name.endswith(".html"):
        return HTML_TYPE
    if name.endswith(".json"):
        return JSON_TYPE
    if name.endswith(METADATA_SUFFIX):
        return METADATA_TYPE
    return DIST_TYPE


def cache_control(name: str) -> str:
    """Pages must be revalidated; distributions and their metadata files never change."""
    if conda_layout.is_channel_object(name):
        return IMMUTABLE_CACHE if conda_layout.is_immutable(name) else PAGE_CACHE
    if name.endswith((".html", ".json")) or name.startswith(f"{UI}/"):
        return PAGE_CACHE
    return IMMUTABLE_CACHE

"""Pure: the repository layout contract (docs/architecture.md): object names, content types, caching."""

from __future__ import annotations

import re
from dataclasses import dataclass

SIMPLE = "simple"
ROOT_HTML = f"{SIMPLE}/index.html"
ROOT_JSON = f"{SIMPLE}/index.json"
PAGE_NAMES = ("index.html", "index.json")
METADATA_SUFFIX = ".metadata"
DIST_SUFFIXES = (".whl", ".tar.gz", ".zip")

HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
METADATA_TYPE = "text/plain; charset=utf-8"
# Never a gzip type for .tar.gz: GCS would transcode and clients would get the wrong bytes/hash.
DIST_TYPE = "application/octet-stream"

PAGE_CACHE = "max-age=0, must-revalidate"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"

_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return _NORMALIZE.sub("-", name).lower()


_NORMALIZED = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def is_normalized(name: str) -> bool:
    """A valid project name in PEP 503 normalized form (what a project directory must be called)."""
    return bool(_NORMALIZED.match(name)) and "--" not in name


def project_html(project: str) -> str:
    return f"{SIMPLE}/{project}/index.html"


def project_json(project: str) -> str:
    return f"{SIMPLE}/{project}/index.json"


def dist_object(project: str, filename: str) -> str:
    return f"{SIMPLE}/{project}/{filename}"


def metadata_object(project: str, filename: str) -> str:
    return f"{SIMPLE}/{project}/{filename}{METADATA_SUFFIX}"


def is_dist_filename(filename: str) -> bool:
    return filename.endswith(DIST_SUFFIXES)


def content_type(name: str) -> str:
    if name.endswith(".html"):
        return HTML_TYPE
    if name.endswith(".json"):
        return JSON_TYPE
    if name.endswith(METADATA_SUFFIX):
        return METADATA_TYPE
    return DIST_TYPE


def cache_control(name: str) -> str:
    """Pages must be revalidated; distributions and their metadata files never change."""
    if name.endswith((".html", ".json")):
        return PAGE_CACHE
    return IMMUTABLE_CACHE


@dataclass(frozen=True)
class Location:
    """Where a repository lives: a GCS bucket (+ optional prefix) or a local directory."""

    kind: str  # "gcs" or "dir"
    bucket: str = ""
    prefix: str = ""  # GCS object-name prefix without trailing slash
    path: str = ""  # directory path

    def __str__(self) -> str:
        if self.kind == "gcs":
            return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"
        return self.path


_BUCKET_PART = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
BUCKET_RULE = (
    "3-63 characters (222 with dots): lowercase letters, digits, hyphens, underscores, dots; starts and"
    " ends with a letter or digit; no 'goog' prefix, no 'google'"
)


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid GCS bucket name, or None. The one copy of Cloud Storage's naming rules."""
    if not 3 <= len(name) <= 222:
        return "has the wrong length"
    parts = name.split(".")
    if not all(_BUCKET_PART.match(p) for p in parts) or (len(parts) == 1 and len(name) > 63):
        return "is not valid"
    if name.startswith("goog"):
        return "may not start with 'goog'"
    if "google" in name or "g00gle" in name:
        return "may not contain 'google'"
    if all(p.isdigit() for p in parts) and len(parts) == 4:
        return "may not be an IP address"
    return None


def parse_location(text: str) -> Location:
    """`gs://BUCKET[/PREFIX]` or a directory path. Raises ValueError with a readable reason."""
    text = text.strip()
    if not text:
        raise ValueError("empty repository location: pass --repo gs://BUCKET[/PREFIX] or a directory")
    if text.startswith("gs://"):
        rest = text[len("gs://") :]
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        problem = bucket_name_problem(bucket)
        if problem:
            raise ValueError(f"invalid bucket name in {text!r}: {bucket!r} {problem} ({BUCKET_RULE})")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ValueError(f"invalid prefix in {text!r}: no empty, '.' or '..' path segments")
        return Location(kind="gcs", bucket=bucket, prefix=prefix)
    if "://" in text:
        raise ValueError(f"unsupported repository location {text!r}: use gs://BUCKET[/PREFIX] or a directory")
    return Location(kind="dir", path=text)

"""Pure: where a repository lives. The one bucket-name rule, the one prefix rule, the one `gs://` formatter.

Every entry point (`--repo`, `--bucket/--prefix`, the VM's config) judges a location with these functions,
so a prefix that one of them accepts is accepted by all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_BUCKET_PART = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
BUCKET_RULE = (
    "3-63 characters (222 with dots): lowercase letters, digits, hyphens, underscores, dots; starts and"
    " ends with a letter or digit; no 'goog' prefix, no 'google'"
)
# Object-name segments that are safe in a shell word, a systemd unit, gcsfuse's only-dir and a URL path.
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
PREFIX_RULE = (
    "path segments of letters, digits, '.', '_' and '-' like team/python (no leading or trailing /, no '..')"
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


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` is not a valid object prefix for a repository, or None ('' is the bucket's root)."""
    if not prefix:
        return None
    if any(part in ("", ".", "..") or not _PREFIX_SEGMENT.match(part) for part in prefix.split("/")):
        return f"is not valid: use {PREFIX_RULE}"
    return None


def gs_url(bucket: str, prefix: str = "", name: str = "") -> str:
    """`gs://BUCKET[/PREFIX][/NAME]`: the one place that joins a bucket, its prefix and an object name."""
    path = "/".join(part for part in (prefix, name) if part)
    return f"gs://{bucket}/{path}" if path else f"gs://{bucket}"


def object_name(prefix: str, name: str) -> str:
    """An object's full name in the bucket: `name` below the repository's prefix."""
    return f"{prefix}/{name}" if prefix else name


@dataclass(frozen=True)
class Location:
    """Where a repository lives: a GCS bucket (+ optional prefix) or a local directory."""

    kind: Literal["gcs", "dir"]
    bucket: str = ""
    prefix: str = ""  # GCS object-name prefix without trailing slash
    path: str = ""  # directory path

    def __str__(self) -> str:
        return gs_url(self.bucket, self.prefix) if self.kind == "gcs" else self.path


def parse_location(text: str) -> Location:
    """`gs://BUCKET[/PREFIX]` or a directory path. Raises ValueError with a readable reason."""
    text = text.strip()
    if not text:
        raise ValueError("empty repository location: pass --repo gs://BUCKET[/PREFIX] or a directory")
    if text.startswith("gs://"):
        rest = text[len("gs://") :]
        bucket, _, prefix = rest.partition("/")
        problem = bucket_name_problem(bucket)
        if problem:
            raise ValueError(f"invalid bucket name in {text!r}: {bucket!r} {problem} ({BUCKET_RULE})")
        problem = prefix_problem(prefix)
        if problem:
            raise ValueError(f"invalid prefix in {text!r}: {prefix!r} {problem}")
        return Location(kind="gcs", bucket=bucket, prefix=prefix)
    if "://" in text:
        raise ValueError(f"unsupported repository location {text!r}: use gs://BUCKET[/PREFIX] or a directory")
    return Location(kind="dir", path=text)

"""Pure: the project state (the project's PEP 691 JSON, the source of truth) and the pages rendered from it.

A project state is the dict that is stored as `simple/<project>/index.json`. File entries carry two
private keys (PEP 691 reserves a leading underscore for the index): `_version` (the version, so pages
and `remove NAME VERSION` need no archive) and `_fingerprint` (a cheap identity of the stored object,
so `reindex` only rehashes what changed).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

API_VERSION = "1.1"


def upload_time(when: dt.datetime) -> str:
    """PEP 700 upload-time: ISO 8601 UTC with microseconds and a Z suffix."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version_key(v: str) -> tuple:
    try:
        return (1, Version(v), v)
    except InvalidVersion:  # never from publish (validated), but reindex may meet odd files
        return (0, Version("0"), v)


def file_entry(
    *,
    filename: str,
    version: str,
    sha256: str,
    size: int,
    requires_python: str | None,
    metadata_sha256: str | None,
    uploaded: str,
    yanked: bool | str = False,
    fingerprint: str = "",
) -> dict[str, Any]:
    core: dict[str, str] | bool = {"sha256": metadata_sha256} if metadata_sha256 else False
    entry: dict[str, Any] = {
        "filename": filename,
        "url": quote(filename),
        "hashes": {"sha256": sha256},
    }
    if requires_python:
        entry["requires-python"] = requires_python
    entry.update(
        {
            "core-metadata": core,
            "dist-info-metadata": core,  # PEP 714: the legacy alias, for older clients
            "yanked": yanked,
            "size": size,
            "upload-time": uploaded,
            "_version": version,
            "_fingerprint": fingerprint,
        }
    )
    return entry


def project_state(project: str, files: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The full project JSON for a set of file entries: sorted files, PEP 700 sorted versions."""
    ordered = sorted(files, key=lambda f: (_version_key(f["_version"]), f["filename"]))
    versions: list[str] = []
    for f in ordered:
        if f["_version"] not in versions:
            versions.append(f["_version"])
    return {
        "meta": {"api-version": API_VERSION},
        "name": project,
        "versions": versions,
        "files": ordered,
    }


def empty_state(project: str) -> dict[str, Any]:
    return project_state(project, [])


def dumps(doc: dict[str, Any]) -> bytes:
    """Deterministic JSON bytes (same state, same bytes)."""
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def loads_project(data: bytes, project: str) -> dict[str, Any]:
    """Parse a stored project JSON; a missing or unreadable one is an empty project."""
    if not data:
        return empty_state(project)
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ValueError("not a project page")
    return project_state(project, doc["files"])


def root_state(projects: Iterable[str]) -> dict[str, Any]:
    return {
        "meta": {"api-version": API_VERSION},
        "projects": [{"name": p} for p in sorted(set(projects))],
    }


def loads_root(data: bytes) -> list[str]:
    """Project names of a stored root JSON. Raises ValueError (or KeyError/TypeError) if corrupt."""
    if not data:
        return []
    doc = json.loads(data)
    names = [p["name"] for p in doc["projects"]]
    if not all(isinstance(n, str) for n in names):
        raise ValueError("project names must be strings")
    return names


_HEAD = (
    '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="{api}">\n'
    "    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n"
)
_TAIL = "  </body>\n</html>\n"


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def render_project_html(state: dict[str, Any]) -> bytes:
    """PEP 503 project page with PEP 592/629/658/714 attributes, relative links."""
    title = _attr(f"Links for {state['name']}")
    out = [_HEAD.format(api=API_VERSION, title=title)]
    for f in state["files"]:
        attrs = [f'href="{_attr(f["url"])}#sha256={f["hashes"]["sha256"]}"']
        if f.get("requires-python"):
            attrs.append(f'data-requires-python="{_attr(f["requires-python"])}"')
        core = f.get("core-metadata")
        if core:
            value = f"sha256={core['sha256']}"
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')
        yanked = f.get("yanked")
        if yanked is not False and yanked is not None:
            reason = yanked if isinstance(yanked, str) else ""
            attrs.append(f'data-yanked="{_attr(reason)}"')
        out.append(f"    <a {' '.join(attrs)}>{html.escape(f['filename'])}</a><br>\n")
    out.append(_TAIL)
    return "".join(out).encode()


def render_root_html(projects: Iterable[str]) -> bytes:
    out = [_HEAD.format(api=API_VERSION, title="Simple index")]
    for p in sorted(set(projects)):
        out.append(f'    <a href="{_attr(quote(p))}/">{html.escape(p)}</a><br>\n')
    out.append(_TAIL)
    return "".join(out).encode()


def public_json(state: dict[str, Any]) -> dict[str, Any]:
    """The state without private keys (for display)."""
    return {
        **state,
        "files": [{k: v for k, v in f.items() if not k.startswith("_")} for f in state["files"]],
    }

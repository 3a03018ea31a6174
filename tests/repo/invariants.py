"""What must hold of a repository at every moment, whatever crashed or raced: checked from a snapshot."""

from __future__ import annotations

import json

from provisioner.repo import layout
from provisioner.repo.model import ProjectState, RootState
from provisioner.repo.pages import render_project_html, render_root_html


def broken_links(snapshot: dict[str, bytes]) -> list[str]:
    """Files a project page lists whose object (or metadata file) is gone: pip would get a 404."""
    missing = []
    for name, data in snapshot.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[2] == "index.json" and data:
            for f in json.loads(data)["files"]:
                if f"simple/{parts[1]}/{f['filename']}" not in snapshot:
                    missing.append(f"simple/{parts[1]}/{f['filename']}")
                if f["core-metadata"] and f"simple/{parts[1]}/{f['filename']}.metadata" not in snapshot:
                    missing.append(f"simple/{parts[1]}/{f['filename']}.metadata")
    return missing


def unlisted_pages(snapshot: dict[str, bytes]) -> list[str]:
    """Projects with a page that the root index does not list (a new project is listed first)."""
    root = RootState.from_json(snapshot.get(layout.ROOT_JSON, b""))
    return [
        parts[1]
        for name in snapshot
        if len(parts := name.split("/")) == 3 and parts[2] == "index.json" and parts[1] not in root.projects
    ]


def out_of_step(snapshot: dict[str, bytes]) -> list[str]:
    """HTML pages that do not render their JSON (allowed only until the next write or reindex)."""
    stale = []
    root = RootState.from_json(snapshot.get(layout.ROOT_JSON, b""))
    if layout.ROOT_JSON in snapshot and snapshot.get(layout.ROOT_HTML) != render_root_html(root):
        stale.append(layout.ROOT_HTML)
    for name, data in snapshot.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[2] == "index.json":
            html = layout.project_html(parts[1])
            if snapshot.get(html) != render_project_html(ProjectState.from_json(data, parts[1])):
                stale.append(html)
    return stale


def listed_files(snapshot: dict[str, bytes], project: str) -> dict[str, dict]:
    data = snapshot.get(layout.project_json(project), b"")
    return {f["filename"]: f for f in json.loads(data)["files"]} if data else {}

"""Pure: the PEP 503 HTML pages rendered from the state (PEP 592/629/658/714 attributes, relative links)."""

from __future__ import annotations

import html
from urllib.parse import quote

from provisioner.repo.model import API_VERSION, ProjectState, RootState

_HEAD = (
    '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="{api}">\n'
    "    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n"
)
_TAIL = "  </body>\n</html>\n"


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def render_project_html(state: ProjectState) -> bytes:
    """The project page: one link per file, relative (`<filename>#sha256=...`)."""
    title = _attr(f"Links for {state.name}")
    out = [_HEAD.format(api=API_VERSION, title=title)]
    for f in state.files:
        attrs = [f'href="{_attr(quote(f.filename))}#sha256={f.sha256}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{_attr(f.requires_python)}"')
        if f.metadata_sha256:
            value = f"sha256={f.metadata_sha256}"
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')  # PEP 714: the legacy name
        if f.yanked is not False:
            reason = f.yanked if isinstance(f.yanked, str) else ""
            attrs.append(f'data-yanked="{_attr(reason)}"')
        out.append(f"    <a {' '.join(attrs)}>{html.escape(f.filename)}</a><br>\n")
    out.append(_TAIL)
    return "".join(out).encode()


def render_root_html(root: RootState) -> bytes:
    """The root page: one relative link (`<project>/`) per project."""
    out = [_HEAD.format(api=API_VERSION, title="Simple index")]
    for p in root.projects:
        out.append(f'    <a href="{_attr(quote(p))}/">{html.escape(p)}</a><br>\n')
    out.append(_TAIL)
    return "".join(out).encode()

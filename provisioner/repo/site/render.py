"""Pure: the site's pages from a project's state (its JSON) and the core metadata of one release.

- `release_info(metadata)`: what a page shows of a release's core metadata (summary, README, URLs...).
- `list_entry(state, info)`: one project's row of the list, kept in the aggregate: the search shards
  `ui/search-<k>.json` (which site.js loads to search every project).
- `render_project(...)`, `list_page(...)`: the two kinds of HTML page (`paging` cuts the list into
  pages and places rows on them).

Every link is relative (`../`, `../../simple/...`), so the site works through a tunnel on any port and
behind any path prefix. Pages carry no inline script or style: the Content-Security-Policy forbids both.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from packaging.metadata import parse_email
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from provisioner.errors import human_size
from provisioner.repo import clientconfig
from provisioner.repo.model import FileEntry, ProjectState
from provisioner.repo.site import apart, bounds, readme

# The index URL printed in snippets when the page is read without JavaScript; the script replaces it
# with the URL the page was actually reached at (tunnel port, path prefix).
DEFAULT_INDEX_URL = "http://localhost:3333/simple/"
SNIPPET_TOOLS = ("pip", "uv", "poetry", "pdm")
AGGREGATE_VERSION = 1
# A license field longer than this is the license text itself: the page links the metadata instead.
LICENSE_MAX = 80
# What the list and the search index (loaded by every visitor) keep of a release's summary and its
# keywords: PyPI refuses a summary over 512 characters; one of megabytes would weigh on every page.
SUMMARY_MAX = 512
KEYWORDS_MAX = 512


def content_security_policy(*, remote_images: bool = False) -> str:
    """The policy the appliance sends with every /ui/ response: the site's own script and styles,
    nothing inline, no frames, no forms, no requests elsewhere (https images only if opted in)."""
    images = "'self' https:" if remote_images else "'self'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@dataclass(frozen=True)
class ReleaseInfo:
    """What a project page shows from one release's core metadata."""

    summary: str = ""
    readme_html: str = ""
    requires_python: str = ""
    license: str = ""
    project_urls: tuple[tuple[str, str], ...] = ()
    requires_dist: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    author: str = ""


class ListEntry(NamedTuple):
    """One project on the list page and in the search index. A tuple, stored as a JSON array, one
    project a line: a publish splices its line into the aggregate and its row into the list."""

    name: str
    summary: str
    version: str  # the latest non-yanked version ('' when every version is yanked)
    uploaded: str  # the newest upload-time of its files (PEP 700 format): the list's order
    releases: int
    keywords: tuple[str, ...] = ()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def source_digest(paths: Iterable[Path]) -> str:
    """A short digest of these files' bytes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# What a cached ReleaseInfo was rendered with: a different renderer or sanitizer renders anew. Ours
# by the source of the modules that make a ReleaseInfo (an upgrade that changes how a README renders
# re-renders every cached one: no version number to forget to bump); readme_renderer's Markdown
# backend is cmarkgfm up to 45 and comrak from 46: whichever is installed.
RENDERER = "|".join(
    [f"pypapo-site-{AGGREGATE_VERSION}"]
    + [f"{d}-{_version(d)}" for d in ("readme_renderer", "nh3", "cmarkgfm", "comrak", "docutils", "pygments")]
    + [source_digest(Path(f) for f in (__file__, readme.__file__, bounds.__file__, apart.__file__))]
)


def dumps_info(info: ReleaseInfo, metadata_sha256: str, remote_images: bool) -> bytes:
    """The cache of one release's ReleaseInfo (`ui/<project>/<filename>.json`): rendering a README
    costs ~1 ms, and a reindex would otherwise render every project's again."""
    doc = {
        "renderer": RENDERER,
        "metadata-sha256": metadata_sha256,
        "remote-images": remote_images,
        "info": {k: list(map(list, v)) if k == "project_urls" else v for k, v in asdict(info).items()},
    }
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def loads_info(data: bytes, metadata_sha256: str, remote_images: bool) -> ReleaseInfo | None:
    """The cached ReleaseInfo if it was rendered from this very metadata file the same way, else None."""
    try:
        doc = json.loads(data)
        if (doc["renderer"], doc["metadata-sha256"], doc["remote-images"]) != (
            RENDERER,
            metadata_sha256,
            remote_images,
        ):
            return None
        i = doc["info"]
        return ReleaseInfo(
            summary=str(i["summary"]),
            readme_html=str(i["readme_html"]),
            requires_python=str(i["requires_python"]),
            license=str(i["license"]),
            project_urls=tuple((str(a), str(b)) for a, b in i["project_urls"]),
            requires_dist=tuple(map(str, i["requires_dist"])),
            keywords=tuple(map(str, i["keywords"])),
            author=str(i["author"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _keywords(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The keywords, as many whole ones as KEYWORDS_MAX characters hold (one alone: cut to fit)."""
    kept: list[str] = []
    room = KEYWORDS_MAX
    for k in (k.strip() for k in raw.get("keywords", [])):
        if not k:
            continue
        if len(k) > room:
            if not kept:
                kept.append(_bounded(k, KEYWORDS_MAX))
            break
        kept.append(k)
        room -= len(k) + 2  # ", " between them on the page
    return tuple(kept)


def _license(raw: Mapping[str, Any]) -> str:
    if raw.get("license_expression"):
        return str(raw["license_expression"])
    classifiers = [
        c.rsplit("::", 1)[-1].strip() for c in raw.get("classifiers", []) if c.startswith("License ::")
    ]
    text = _first_line(raw.get("license"))
    if text and len(text) <= LICENSE_MAX and "\n" not in str(raw.get("license", "")).strip():
        return text
    return ", ".join(classifiers) or ("see the core metadata" if text else "")


def _urls(raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    urls: list[tuple[str, str]] = []
    if raw.get("home_page"):
        urls.append(("Homepage", raw["home_page"]))
    for label, url in (raw.get("project_urls") or {}).items():
        urls.append((label, url))
    if raw.get("download_url"):
        urls.append(("Download", raw["download_url"]))
    # Only web links: a URL of another scheme (javascript:, data:, file:) is not shown at all.
    return tuple(
        (label, url) for label, url in urls if url.strip().lower().startswith(("https://", "http://"))
    )


def release_info(metadata: bytes | None, *, remote_images: bool = False) -> ReleaseInfo:
    """The page's view of a release's core metadata (a wheel's METADATA / an sdist's PKG-INFO)."""
    if not metadata:
        return ReleaseInfo()
    raw, _unparsed = parse_email(metadata)
    return ReleaseInfo(
        summary=_bounded(_first_line(raw.get("summary")), SUMMARY_MAX),
        readme_html=readme.render(
            raw.get("description"), raw.get("description_content_type"), remote_images=remote_images
        ),
        requires_python=raw.get("requires_python", "") or "",
        license=_license(raw),
        project_urls=_urls(raw),
        requires_dist=tuple(raw.get("requires_dist", [])),
        keywords=_keywords(raw),
        author=_first_line(raw.get("author") or raw.get("author_email") or raw.get("maintainer")),
    )


# --- what a state says ---------------------------------------------------------------------------


def _yanked(f: FileEntry) -> bool:
    return f.yanked is not False


def releases(state: ProjectState) -> list[tuple[str, list[FileEntry]]]:
    """(version, files) newest first."""
    by_version: dict[str, list[FileEntry]] = {}
    for f in state.files:
        by_version.setdefault(f.version, []).append(f)
    return [(v, by_version[v]) for v in reversed(state.versions) if v in by_version]


def latest(state: ProjectState) -> tuple[str, list[FileEntry]] | None:
    """The newest release with a file that is not yanked (what an unpinned install gets), else None."""
    for version, files in releases(state):
        if any(not _yanked(f) for f in files):
            return version, files
    return None


def metadata_source(state: ProjectState) -> FileEntry | None:
    """The file whose `.metadata` the page shows: the latest non-yanked release's first wheel with one
    (any release's when every version is yanked)."""
    chosen = latest(state) or next(iter(releases(state)), None)
    if chosen is None:
        return None
    for f in chosen[1]:
        if f.metadata_sha256:
            return f
    return None


def likely_source(filenames: Iterable[str]) -> str | None:
    """Of the wheels a publish adds, the one whose metadata the page will most likely show (the
    newest version's first wheel, as `metadata_source` picks once they are stored), or None."""
    wheels = []
    for filename in filenames:
        try:
            _name, version, _build, _tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, ValueError):
            continue
        wheels.append((version, filename))
    if not wheels:
        return None
    newest = max(v for v, _f in wheels)
    return min(f for v, f in wheels if v == newest)


def list_entry(state: ProjectState, info: ReleaseInfo) -> ListEntry:
    newest = max((f.upload_time for f in state.files), default="")
    chosen = latest(state)
    return ListEntry(
        name=state.name,
        summary=info.summary,
        version=chosen[0] if chosen else "",
        uploaded=newest,
        releases=len(state.versions),
        keywords=info.keywords,
    )


# --- the aggregate (a search shard, ui/search-<k>.json): the list's data and the search index ----


_FIELDS = list(ListEntry._fields)


_AGG_HEAD = (
    json.dumps({"version": AGGREGATE_VERSION, "fields": _FIELDS}, separators=(",", ":"))[:-1]
    + ',"projects":[\n'
).encode()
_AGG_TAIL = b"\n]}\n"


def _aggregate_line(e: ListEntry) -> bytes:
    return json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()  # a tuple: an array


def dumps_aggregate(entries: Mapping[str, ListEntry]) -> bytes:
    """`{"version": 1, "fields": [...], "projects": [[name, summary, ...], ...]}`, sorted by name,
    one project a line (a shard of the search index, or the whole of an older pypapo's)."""
    lines = b",\n".join(_aggregate_line(entries[name]) for name in sorted(entries))
    return _AGG_HEAD + lines + _AGG_TAIL


def dependency_names(info: ReleaseInfo) -> set[str]:
    """The normalized names of a release's dependencies (what `held` is asked about)."""
    out = set()
    for text in info.requires_dist:
        try:
            out.add(canonicalize_name(Requirement(text).name))
        except InvalidRequirement:
            continue
    return out


def metadata_dependency_names(metadata: bytes | None) -> set[str]:
    """`dependency_names` of the release info `release_info(metadata)` makes, without rendering its
    README: what a publish asks `held` about while the README renders."""
    if not metadata:
        return set()
    raw, _unparsed = parse_email(metadata)
    return dependency_names(ReleaseInfo(requires_dist=tuple(raw.get("requires_dist", []))))


def loads_aggregate(data: bytes) -> dict[str, ListEntry]:
    """The aggregate's entries; raises ValueError (KeyError, TypeError) when it is not one."""
    if not data:
        return {}
    doc = json.loads(data)
    if doc.get("version") != AGGREGATE_VERSION or doc.get("fields") != _FIELDS:
        raise ValueError("unknown aggregate version")
    out: dict[str, ListEntry] = {}
    for p in doc["projects"]:
        name, summary, version, uploaded, releases, keywords = p
        if not (isinstance(name, str) and isinstance(summary, str) and isinstance(version, str)):
            raise TypeError("aggregate entry fields must be strings")
        if not (isinstance(uploaded, str) and isinstance(releases, int) and isinstance(keywords, list)):
            raise TypeError("malformed aggregate entry")
        out[name] = ListEntry(name, summary, version, uploaded, releases, tuple(keywords))
    return out


# --- HTML ----------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, base: str, body: str, *, description: str = "") -> bytes:
    """A whole page. `base` is the relative path to ui/ ('' or '../')."""
    meta = f'<meta name="description" content="{_e(description)}">\n' if description else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"{meta}<title>{_e(title)}</title>\n"
        f'<link rel="stylesheet" href="{base}site.css">\n'
        f'<link rel="icon" href="{base}favicon.svg" type="image/svg+xml">\n'
        f'<script src="{base}site.js" defer></script>\n'
        "</head>\n<body>\n"
        '<a class="pp-skip" href="#main">Skip to content</a>\n'
        f'<header class="pp-top"><a class="pp-brand" href="{base or "./"}">pypapo</a>'
        f'<span class="pp-sub">private Python packages</span></header>\n'
        f'<main id="main" tabindex="-1">\n{body}</main>\n'
        '<footer class="pp-foot">Served by pypapo. Pip, uv, poetry and pdm install from the '
        f'<a href="{base}../simple/">simple index</a>.</footer>\n'
        "</body>\n</html>\n"
    ).encode()


def _time(ts: str) -> str:
    """An upload-time as a <time> element: the date shown, the full time in the attribute/title."""
    if not ts:
        return ""
    day = ts[:10]
    shown = ts[:16].replace("T", " ") + " UTC"
    return f'<time datetime="{_e(ts)}" title="{_e(shown)}">{_e(day)}</time>'


def _tags(filename: str) -> str:
    """Python, ABI and platform tags of a wheel ('source' for an sdist)."""
    try:
        if filename.endswith(".whl"):
            _n, _v, _b, tags = parse_wheel_filename(filename)
            pythons = sorted({t.interpreter for t in tags})
            abis = sorted({t.abi for t in tags})
            platforms = sorted({t.platform for t in tags})
            return " · ".join([".".join(pythons), ".".join(abis), ".".join(platforms)])
        parse_sdist_filename(filename)
        return "source"
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return ""


def _yank_reason(f: FileEntry) -> str:
    y = f.yanked
    return y if isinstance(y, str) else ""


def _dependency(req_text: str, held: set[str], base: str) -> str:
    try:
        req = Requirement(req_text)
    except InvalidRequirement:
        return f"<li><code>{_e(req_text)}</code></li>"
    name = canonicalize_name(req.name)
    rest = _e(str(req)[len(req.name) :])
    label = _e(req.name)
    if name in held:
        label = f'<a href="{base}{quote(name)}/">{label}</a>'
    return f"<li><code>{label}{rest}</code></li>"


# The command each tool's configuration goes with; the configuration is `provision client-config`'s.
_INSTALL = {
    "pip": "pip install {project}",
    "uv": "uv add {project}",
    "poetry": "poetry add {project}",
    "pdm": "pdm add {project}",
}


def _snippets(project: str, index_url: str) -> str:
    quick = f"pip install --index-url {index_url} {project}"
    out = [
        f'<pre class="pp-quick" tabindex="0"><code data-index-url>{_e(quick)}</code></pre>\n'
        '<p class="pp-muted">With a configuration that keeps private names away from the public index:</p>\n'
    ]
    for tool in SNIPPET_TOOLS:
        cfg = clientconfig.render(tool, index_url, [project])
        text = f"# {_INSTALL[tool].format(project=project)}   (with this in {cfg.file})\n{cfg.text}"
        out.append(
            f'<details class="pp-snippet"><summary>{tool} <span class="pp-muted">({_e(cfg.file)})'
            f'</span></summary>\n<pre tabindex="0"><code data-index-url>{_e(text)}</code></pre></details>\n'
        )
    return "".join(out)


def render_project(
    state: ProjectState,
    info: ReleaseInfo,
    held: Iterable[str],
    *,
    origin: str = "",
    index_url: str = DEFAULT_INDEX_URL,
) -> bytes:
    """`ui/<project>/index.html`: README, metadata, install snippets, every release and its files."""
    project = state.name
    held_set = set(held)
    base = "../"
    files_url = f"../../simple/{quote(project)}/"
    chosen = latest(state)
    all_releases = releases(state)
    version = chosen[0] if chosen else ""
    parts: list[str] = []
    heading = f'{_e(project)} <span class="pp-version">{_e(version)}</span>' if version else _e(project)
    parts.append(f'<nav class="pp-crumbs" aria-label="Breadcrumb"><a href="{base}">All projects</a></nav>\n')
    parts.append(f"<h1>{heading}</h1>\n")
    if info.summary:
        parts.append(f'<p class="pp-summary">{_e(info.summary)}</p>\n')
    if not chosen:
        parts.append('<p class="pp-warn" role="note">Every version of this project is yanked.</p>\n')
    if origin:
        parts.append(f'<p class="pp-note" role="note">Mirrored from <code>{_e(origin)}</code>.</p>\n')

    parts.append('<div class="pp-cols">\n<div class="pp-main">\n')
    parts.append('<section aria-labelledby="install"><h2 id="install">Install</h2>\n')
    parts.append(_snippets(project, index_url))
    parts.append("</section>\n")
    parts.append('<section aria-labelledby="readme-heading"><h2 id="readme-heading">Description</h2>\n')
    if info.readme_html:
        parts.append(f'<article class="pp-readme">\n{info.readme_html}\n</article>\n')
    else:
        parts.append('<p class="pp-muted">This release has no description.</p>\n')
    parts.append("</section>\n")

    parts.append('<section aria-labelledby="releases"><h2 id="releases">Releases</h2>\n')
    for n, (v, files) in enumerate(all_releases):
        yanked = all(_yanked(f) for f in files)
        reason = next((_yank_reason(f) for f in files if _yank_reason(f)), "")
        when = max(f.upload_time for f in files)
        badge = ""
        if yanked:
            badge = ' <span class="pp-yanked">yanked</span>'
        opened = " open" if n == 0 or v == version else ""
        parts.append(
            f'<details class="pp-release" id="v-{_e(v)}"{opened}><summary><span class="pp-rv">{_e(v)}</span>'
            f"{badge} {_time(when)}</summary>\n"
        )
        if yanked:
            text = f"Yanked: {_e(reason)}" if reason else "Yanked (no reason given)"
            parts.append(f'<p class="pp-yank-reason">{text}. pip and uv skip it unless pinned with ==.</p>\n')
        parts.append(
            '<div class="pp-table"><table>\n<thead><tr><th scope="col">File</th><th scope="col">Tags</th>'
            '<th scope="col">Size</th><th scope="col">Uploaded</th><th scope="col">SHA-256</th></tr></thead>'
            "\n<tbody>\n"
        )
        for f in files:
            sha = f.sha256
            mark = ' <span class="pp-yanked">yanked</span>' if _yanked(f) and not yanked else ""
            link = f'<a href="{files_url}{_e(quote(f.filename))}#sha256={_e(sha)}">{_e(f.filename)}</a>'
            parts.append(
                f"<tr><td>{link}{mark}</td>"
                f"<td>{_e(_tags(f.filename))}</td><td>{human_size(f.size)}</td>"
                f'<td>{_time(f.upload_time)}</td><td><code class="pp-sha">{_e(sha)}</code></td></tr>\n'
            )
        parts.append("</tbody></table></div>\n</details>\n")
    parts.append("</section>\n</div>\n")

    side = ['<aside class="pp-side" aria-labelledby="about"><h2 id="about">About</h2>\n<dl>\n']
    if chosen:
        side.append(f"<dt>Latest version</dt><dd>{_e(version)}</dd>\n")
    if info.requires_python:
        side.append(f"<dt>Requires Python</dt><dd><code>{_e(info.requires_python)}</code></dd>\n")
    if info.license:
        side.append(f"<dt>License</dt><dd>{_e(info.license)}</dd>\n")
    if info.author:
        side.append(f"<dt>Author</dt><dd>{_e(info.author)}</dd>\n")
    side.append(f'<dt>Index page</dt><dd><a href="{files_url}">simple/{_e(project)}/</a></dd>\n')
    side.append("</dl>\n")
    if info.project_urls:
        side.append('<h3>Project links</h3>\n<ul class="pp-links">\n')
        side.extend(
            f'<li><a href="{_e(url)}" rel="nofollow noopener noreferrer">{_e(label)}</a></li>\n'
            for label, url in info.project_urls
        )
        side.append("</ul>\n")
    if info.requires_dist:
        side.append('<h3>Dependencies</h3>\n<ul class="pp-deps">\n')
        side.extend(_dependency(r, held_set, base) + "\n" for r in info.requires_dist)
        side.append("</ul>\n")
    if info.keywords:
        side.append(f"<h3>Keywords</h3>\n<p>{_e(', '.join(info.keywords))}</p>\n")
    side.append("</aside>\n</div>\n")
    parts.extend(side)
    return _page(f"{project} · pypapo", base, "".join(parts), description=info.summary)


def list_row(e: ListEntry) -> str:
    """One project's row of a list page: one line (every field escaped; JSON would escape a newline
    too), so that a change replaces its line. Names are PEP 503 normalized ([a-z0-9-]): their own
    URL path."""
    esc = html.escape
    name = esc(e.name)
    version = esc(e.version) if e.version else '<span class="pp-yanked">yanked</span>'
    summary = f'<p class="pp-muted">{esc(e.summary)}</p>' if e.summary else ""
    when = esc(e.uploaded)
    return (
        f'<li id="p-{name}"><a class="pp-name" href="{name}/">{name}</a>'
        f' <span class="pp-version">{version}</span> <time datetime="{when}" '
        f'title="{when[:16].replace("T", " ")} UTC">{when[:10]}</time>{summary}</li>\n'
    )


def older_page(page: str) -> str:
    """A list page's URL relative to ui/, by its id ('' the head)."""
    return "./" if not page else f"older-{page}.html"


def list_page(rows: str, count: int, *, newer: str | None, older: str | None, layout: str = "") -> bytes:
    """A page of the list (`paging`): the head (`newer` None; it carries `layout`, which older pages
    there are and where the list is cut) or an older page (`newer` the id of the next newer page, ''
    the head), with `count` rows (`list_row` lines). `older`: the id of the next older page, if any.
    Every page has the search box (site.js searches every project, on every page) and the links."""
    head = newer is None
    links = []
    if not head:
        links.append('<a href="./">Newest projects</a>')
        links.append(f'<a rel="prev" href="{older_page(newer or "")}">\u2190 Newer</a>')
    if older is not None:
        links.append(f'<a rel="next" href="{older_page(older)}">Older projects \u2192</a>')
    data = f' data-pages="{html.escape(layout)}"' if head else ""
    nav = f'<nav class="pp-pages" aria-label="Pages"{data}>{" ".join(links)}</nav>\n'
    if count:
        kind = "project" if head else "older project"
        text = f"{count} {kind}{'' if count == 1 else 's'} on this page, newest upload first."
    else:
        text = "Nothing published yet." if head and older is None else "No project on this page any more."
    title = "Projects" if head else "Older projects"
    body = (
        f"<h1>{title}</h1>\n"
        '<div class="pp-search" role="search" hidden>\n'
        '<label for="q">Search every project</label>\n'
        '<input id="q" type="search" autocomplete="off" spellcheck="false" '
        'placeholder="name, summary or keyword" aria-describedby="count">\n'
        "</div>\n"
        f'<p id="count" class="pp-muted" aria-live="polite">{text}</p>\n'
        f"{nav}"
        f'<ul class="pp-list" id="projects">\n{rows}</ul>\n'
        + (f'<nav class="pp-pages" aria-label="More pages">{" ".join(links)}</nav>\n' if links else "")
    )
    return _page(f"{title} · pypapo", "", body, description="Every project in this pypapo repository")

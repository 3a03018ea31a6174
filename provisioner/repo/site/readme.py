"""Pure: a project's README (core metadata `Description`) rendered as PyPI renders it, then made inert.

The choice of renderer is warehouse's (`warehouse/utils/readme.py`): no content type or `text/x-rst`
is reStructuredText, `text/markdown` is Markdown (its `variant` parameter: GFM or CommonMark),
`text/plain` is preformatted text, and anything that fails to render falls back to plain text.
`readme_renderer` already sanitizes with nh3; a README is untrusted, so the result goes through a
second, stricter allowlist of our own:

- no scripts, styles, event handlers, iframes, objects, forms or inputs (readme_renderer allows
  disabled checkboxes), no `javascript:`/`data:` URLs (only http, https, mailto and relative links);
- every `id` is prefixed (`readme-`) and in-page links follow, so a README cannot clobber the page's
  own elements;
- class names of the site's own styles (`pp-...`) are removed, so a README cannot dress up as the page;
- no images unless `remote_images` (then https ones): a remote image is a request to a third party
  each time someone opens the page, and a relative one points at a file of the project's source
  tree that the repository does not hold (a broken image and a 404). The alt text stays;
- self-links without text (the heading anchors) are dropped: a link needs a name for a screen reader;
  code blocks get `tabindex="0"` so that one that scrolls sideways can be scrolled from the keyboard.
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import nh3
import readme_renderer.markdown
import readme_renderer.rst
import readme_renderer.txt
from pygments.token import STANDARD_TYPES

ID_PREFIX = "readme-"
SITE_CLASS_PREFIX = "pp-"

_TAGS = {
    "a", "abbr", "acronym", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup",
    "dd", "del", "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "picture", "pre", "section", "span",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "tt", "ul", "var",
}  # fmt: skip
_ATTRIBUTES = {
    "*": {"id"},
    "a": {"href", "title"},
    "abbr": {"title"},
    "acronym": {"title"},
    "img": {"width", "height", "alt", "align"},  # src: see _filter
    "p": {"align"},
    "div": {"align"},
    "th": {"align"},
    "td": {"align", "colspan", "rowspan"},
    "ol": {"start"},
    **{f"h{n}": {"align"} for n in range(1, 7)},
}
# Classes: only Pygments' token classes (what highlighting needs) and readme_renderer's structural
# ones. Never the site's own (`pp-...`), so a README cannot dress up as the page.
_CLASSES = frozenset(STANDARD_TYPES.values()) | {"highlight", "code", "literal-block", "notranslate"}
_ALLOWED_CLASSES = {tag: set(_CLASSES) for tag in ("span", "code", "pre", "div")}
# Removed together with their content (the others are unwrapped and keep their text).
_DROP_WITH_CONTENT = {"script", "style", "template", "iframe", "object", "embed", "noscript", "svg", "math"}
_SCHEMES = {"http", "https", "mailto"}
_EMPTY_LINK = re.compile(r"<a [^>]*></a>")
_PRE = re.compile(r"<pre(?=[\s>])")
_FRAGMENT = re.compile(r'href="#')

_RENDERERS = {
    "": readme_renderer.rst,
    "text/x-rst": readme_renderer.rst,
    "text/plain": readme_renderer.txt,
    "text/markdown": readme_renderer.markdown,
}


def _remote_image(tag: str, attr: str, value: str) -> str | None:
    # Only with remote images opted in (a Python callback per attribute is slow: not the default).
    if tag == "img" and attr == "src":
        return value if value.strip().lower().startswith("https://") else None
    return value


def sanitize(html: str, *, remote_images: bool = False) -> str:
    """Our allowlist over HTML from readme_renderer (or anywhere): what is left cannot run."""
    attributes = _ATTRIBUTES
    if remote_images:
        attributes = {**_ATTRIBUTES, "img": _ATTRIBUTES["img"] | {"src"}}
    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=attributes,
        allowed_classes=_ALLOWED_CLASSES,
        attribute_filter=_remote_image if remote_images else None,
        id_prefix=ID_PREFIX,
        link_rel="nofollow noopener noreferrer ugc",
        url_schemes=_SCHEMES,
        strip_comments=True,
    )
    # In-page links follow the prefixed ids; a code block that scrolls sideways must be reachable
    # from the keyboard. (nh3's output is canonical: every attribute is quoted with ".)
    cleaned = _FRAGMENT.sub(f'href="#{ID_PREFIX}', cleaned)
    return _PRE.sub('<pre tabindex="0"', _EMPTY_LINK.sub("", cleaned))


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    if not value:
        return "", {}
    msg = EmailMessage()
    msg["content-type"] = value
    params = dict(msg["content-type"].params)
    params.pop("charset", None)
    return msg.get_content_type(), params


def render(description: str | None, content_type: str | None, *, remote_images: bool = False) -> str:
    """Safe HTML for a README; '' when there is none."""
    if not description or not description.strip():
        return ""
    kind, params = _content_type(content_type)
    renderer = _RENDERERS.get(kind, readme_renderer.txt)
    variant = {"variant": params["variant"]} if kind == "text/markdown" and "variant" in params else {}
    rendered = renderer.render(description, **variant)
    if rendered is not None and renderer is readme_renderer.txt:
        rendered = f"<pre>{rendered}</pre>"
    if rendered is None:  # what PyPI does with a README that does not render
        rendered = f"<pre>{readme_renderer.txt.render(description)}</pre>"
    return sanitize(rendered, remote_images=remote_images)

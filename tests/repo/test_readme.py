"""The site's README rendering gives readme_renderer's HTML (what PyPI shows), then our sanitizer's.

`readme.render` renders Markdown with readme_renderer's own steps but its highlighting set up once
per process; these tests hold it to the bytes of readme_renderer's own `render` for every kind of
README: Markdown (GFM and CommonMark), reStructuredText and plain text, written here and taken from
the core metadata of every distribution installed in this environment (real READMEs)."""

from __future__ import annotations

import importlib.metadata
from email.message import EmailMessage

import pytest
import readme_renderer.markdown
import readme_renderer.rst
import readme_renderer.txt

from provisioner.repo.site import apart, readme
from tests.repo.test_site import HOSTILE_MARKDOWN, HOSTILE_RST

MARKDOWN = [
    HOSTILE_MARKDOWN,
    """# Title with `code` and <em>markup</em>

Intro paragraph linking [usage](#usage), [a footnote][^note] and https://example.com.

## Usage

```python
from x import y  # a comment
print(f"{y!r}" if y < 3 and y > 1 else 'no & no')
```

```Python
def upper_cased_language(): ...
```

```no-such-language-at-all
plain <b>text</b> &amp; entities
```

```
no language at all
```

    indented code block

```sh
echo "$HOME" | grep -v '<x>'
```

```javascript
const a = `template ${b}`; // </code></pre> inside a comment
```

> [!NOTE]
> an alert

- [x] done
- [ ] not done

| left | right |
|:-----|------:|
| `a`  | ~~b~~ |

<details><summary>more</summary>

inner *markdown*

</details>

:smile: shortcode, <https://autolink.example.com>

[^note]: the footnote text
""",
    "just one line",
    "```\nunterminated fence",
    "<pre lang=\"python\"><code>print('raw pre from the author')</code></pre>\n",
]

RST = [
    HOSTILE_RST,
    """Project
=======

A paragraph with ``literal`` and a `link <https://example.com>`_.

.. code-block:: python

   def f(x):
       return x < 3

.. code:: no-such-language

   plain

* a list
* of items

=====  =====
a      b
=====  =====
1      2
=====  =====
""",
    "Broken `rst <\n\n.. unknown-directive::\n",
]

PLAIN = ["plain <b>text</b> & more\n\n  indented", HOSTILE_MARKDOWN]


def reference(description: str, content_type: str | None) -> str:
    """What `readme.render` gives, with readme_renderer's own render of each kind (warehouse's rule)."""
    if not description or not description.strip():
        return ""
    kind, params = "", {}
    if content_type:
        msg = EmailMessage()
        msg["content-type"] = content_type
        kind, params = msg.get_content_type(), dict(msg["content-type"].params)
    renderer = {
        "": readme_renderer.rst,
        "text/x-rst": readme_renderer.rst,
        "text/plain": readme_renderer.txt,
        "text/markdown": readme_renderer.markdown,
    }.get(kind, readme_renderer.txt)
    variant = {"variant": params["variant"]} if kind == "text/markdown" and "variant" in params else {}
    rendered = renderer.render(description, **variant)
    if rendered is not None and renderer is readme_renderer.txt:
        rendered = f"<pre>{rendered}</pre>"
    if rendered is None:
        rendered = f"<pre>{readme_renderer.txt.render(description)}</pre>"
    return readme.sanitize(rendered)


CASES = (
    [(text, "text/markdown") for text in MARKDOWN]
    + [(text, "text/markdown; variant=GFM") for text in MARKDOWN]
    + [(text, "text/markdown; variant=CommonMark; charset=utf-8") for text in MARKDOWN]
    + [(text, "text/markdown; variant=NoSuchVariant") for text in MARKDOWN[:2]]
    + [(text, "text/x-rst") for text in RST]
    + [(text, None) for text in RST]
    + [(text, "text/plain") for text in PLAIN]
    + [(MARKDOWN[1], "application/unknown")]
)


@pytest.mark.parametrize(("text", "content_type"), CASES)
def test_a_readme_renders_as_readme_renderer_renders_it(text: str, content_type: str | None) -> None:
    assert readme.render(text, content_type) == reference(text, content_type)


def test_a_long_restructuredtext_readme_renders_apart_as_readme_renderer_renders_it() -> None:
    # Past RST_APART characters docutils runs in a child process: the same bytes as in this one.
    text = RST[1] + "".join(
        f"\n\n1.{i}.0\n{'-' * len(f'1.{i}.0')}\n\n- Fixed *this* (``code``), see `docs <https://e.x/{i}>`_.\n"
        "- Added ``--flag``; caf\u00e9 \u2713.\n"
        for i in range(400)
    )
    assert len(text) > apart.RST_APART
    out = readme.render(text, "text/x-rst")
    assert out == reference(text, "text/x-rst") and out.count(">1.") == 400 and not out.startswith("<pre")


def test_the_installed_distributions_readmes_render_as_readme_renderer_renders_them() -> None:
    seen = 0
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        text = meta.get_payload() or meta.get("Description") or ""  # type: ignore[attr-defined]
        if not text.strip():
            continue
        content_type = meta.get("Description-Content-Type")
        assert readme.render(text, content_type) == reference(text, content_type), dist.name
        seen += 1
    assert seen >= 50  # a real corpus: this environment's READMEs (Markdown and reST)


def test_the_fast_markdown_steps_are_in_use_and_highlight() -> None:
    # The probe passed for this readme_renderer: its own render is not what runs.
    assert readme._markdown() is readme._markdown_steps
    out = readme.render("```python\nimport os\n```\n", "text/markdown")
    assert '<span class="kn">import</span>' in out  # highlighted, the classes our allowlist keeps

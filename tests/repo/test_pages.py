"""Rendering of project and root pages from the project state (pure)."""

from __future__ import annotations

import datetime as dt
import html.parser
import json

from provisioner.repo import pages as index


def _entry(filename: str, version: str, **kw) -> dict:
    args = {
        "filename": filename,
        "version": version,
        "sha256": "ab" * 32,
        "size": 10,
        "requires_python": None,
        "metadata_sha256": None,
        "uploaded": "2024-01-01T00:00:00.000000Z",
    }
    args.update(kw)
    return index.file_entry(**args)


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []
        self.meta: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))
        if tag == "meta":
            d = dict(attrs)
            self.meta[d["name"] or ""] = d["content"]


def _parse(page: bytes) -> _Links:
    p = _Links()
    p.feed(page.decode())
    return p


def test_versions_sorted_by_version_semantics_not_text() -> None:
    state = index.project_state(
        "demo",
        [_entry("demo-1.10-py3-none-any.whl", "1.10"), _entry("demo-1.9-py3-none-any.whl", "1.9"),
         _entry("demo-1.9.tar.gz", "1.9"), _entry("demo-1.10rc1-py3-none-any.whl", "1.10rc1")],
    )  # fmt: skip
    assert state["versions"] == ["1.9", "1.10rc1", "1.10"]
    assert [f["filename"] for f in state["files"]][:2] == ["demo-1.9-py3-none-any.whl", "demo-1.9.tar.gz"]


def test_project_html_carries_every_attribute_with_relative_links() -> None:
    state = index.project_state(
        "demo",
        [
            _entry("demo-1.0-py3-none-any.whl", "1.0", requires_python=">=3.9", metadata_sha256="cd" * 32),
            _entry("demo-0.9.tar.gz", "0.9", yanked="broken <build>"),
            _entry("demo-0.8.tar.gz", "0.8", yanked=True),
        ],
    )
    page = _parse(index.render_project_html(state))
    assert page.meta["pypi:repository-version"] == "1.1"
    by_name = {link["href"].split("#")[0]: link for link in page.links}
    wheel = by_name["demo-1.0-py3-none-any.whl"]
    assert wheel["href"] == "demo-1.0-py3-none-any.whl#sha256=" + "ab" * 32
    assert wheel["data-requires-python"] == ">=3.9"  # parser unescapes &gt;
    assert wheel["data-core-metadata"] == wheel["data-dist-info-metadata"] == "sha256=" + "cd" * 32
    assert "data-yanked" not in wheel
    assert by_name["demo-0.9.tar.gz"]["data-yanked"] == "broken <build>"
    assert by_name["demo-0.8.tar.gz"]["data-yanked"] == ""
    assert "data-core-metadata" not in by_name["demo-0.9.tar.gz"]


def test_local_version_filename_is_url_quoted() -> None:
    state = index.project_state("demo", [_entry("demo-1.0+local-py3-none-any.whl", "1.0+local")])
    assert state["files"][0]["url"] == "demo-1.0%2Blocal-py3-none-any.whl"
    assert b'href="demo-1.0%2Blocal-py3-none-any.whl#sha256=' in index.render_project_html(state)


def test_json_is_pep691_with_pep700_fields_and_deterministic() -> None:
    files = [_entry("demo-1.0.tar.gz", "1.0"), _entry("demo-0.1.tar.gz", "0.1")]
    a = index.dumps(index.project_state("demo", files))
    b = index.dumps(index.project_state("demo", list(reversed(files))))
    assert a == b
    doc = json.loads(a)
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["versions"] == ["0.1", "1.0"]
    assert doc["files"][0]["core-metadata"] is False
    assert {"size", "upload-time", "yanked", "hashes", "url"} <= set(doc["files"][0])


def test_upload_time_format() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 12, tzinfo=dt.UTC)
    assert index.upload_time(when) == "2024-05-06T07:08:09.000012Z"


def test_root_pages_list_projects_relatively() -> None:
    page = _parse(index.render_root_html(["zeta", "alpha"]))
    assert [link["href"] for link in page.links] == ["alpha/", "zeta/"]
    assert page.meta["pypi:repository-version"] == "1.1"
    assert index.root_state(["b", "a", "b"])["projects"] == [{"name": "a"}, {"name": "b"}]

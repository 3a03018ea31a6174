"""The state model and the pages rendered from it, read back with pypi-simple (an independent parser)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pypi_simple import IndexPage, ProjectPage, RepositoryPage

from provisioner.repo.model import FileEntry, ProjectState, RootState, upload_time
from provisioner.repo.pages import render_project_html, render_root_html


def _entry(filename: str, version: str, **kw) -> FileEntry:
    args = {
        "filename": filename,
        "version": version,
        "sha256": "ab" * 32,
        "size": 10,
        "requires_python": None,
        "metadata_sha256": None,
        "upload_time": "2024-01-01T00:00:00.000000Z",
    }
    args.update(kw)
    return FileEntry(**args)


def test_versions_sorted_by_version_semantics_not_text() -> None:
    state = ProjectState.of(
        "demo",
        [_entry("demo-1.10-py3-none-any.whl", "1.10"), _entry("demo-1.9-py3-none-any.whl", "1.9"),
         _entry("demo-1.9.tar.gz", "1.9"), _entry("demo-1.10rc1-py3-none-any.whl", "1.10rc1")],
    )  # fmt: skip
    assert state.versions == ["1.9", "1.10rc1", "1.10"]
    assert [f.filename for f in state.files][:2] == ["demo-1.9-py3-none-any.whl", "demo-1.9.tar.gz"]
    assert json.loads(state.to_json())["versions"] == ["1.9", "1.10rc1", "1.10"]


def _demo_state() -> ProjectState:
    return ProjectState.of(
        "demo",
        [
            _entry("demo-1.0-py3-none-any.whl", "1.0", requires_python=">=3.9", metadata_sha256="cd" * 32),
            _entry("demo-0.9.tar.gz", "0.9", yanked="broken <build>"),
            _entry("demo-0.8.tar.gz", "0.8", yanked=True),
        ],
    )


def test_project_html_carries_every_attribute_with_relative_links() -> None:
    page = render_project_html(_demo_state())
    parsed = ProjectPage.from_html("demo", page)
    assert parsed.repository_version == "1.1"
    by_name = {p.filename: p for p in parsed.packages}
    wheel = by_name["demo-1.0-py3-none-any.whl"]
    assert wheel.url == "demo-1.0-py3-none-any.whl"  # relative
    assert wheel.digests == {"sha256": "ab" * 32}
    assert wheel.requires_python == ">=3.9"
    assert wheel.has_metadata is True and wheel.metadata_digests == {"sha256": "cd" * 32}
    assert wheel.is_yanked is False
    assert (by_name["demo-0.9.tar.gz"].is_yanked, by_name["demo-0.9.tar.gz"].yanked_reason) == (
        True,
        "broken <build>",
    )
    assert by_name["demo-0.8.tar.gz"].is_yanked is True
    assert not by_name["demo-0.8.tar.gz"].yanked_reason
    assert by_name["demo-0.9.tar.gz"].has_metadata is None
    # PEP 714: the legacy attribute next to the new one (pypi-simple reads only data-core-metadata).
    attrs = {link.text: link.attrs for link in RepositoryPage.from_html(page).links}
    assert attrs["demo-1.0-py3-none-any.whl"]["data-dist-info-metadata"] == "sha256=" + "cd" * 32
    assert "data-dist-info-metadata" not in attrs["demo-0.9.tar.gz"]


def test_project_json_is_pep691_with_pep700_fields_and_the_pep714_alias() -> None:
    doc = json.loads(_demo_state().to_json())
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "demo"
    assert doc["versions"] == ["0.8", "0.9", "1.0"]
    wheel = doc["files"][2]
    assert wheel["filename"] == "demo-1.0-py3-none-any.whl"
    assert wheel["url"] == "demo-1.0-py3-none-any.whl"
    assert wheel["hashes"] == {"sha256": "ab" * 32}
    assert wheel["requires-python"] == ">=3.9"
    assert wheel["core-metadata"] == wheel["dist-info-metadata"] == {"sha256": "cd" * 32}
    assert (wheel["yanked"], wheel["size"], wheel["upload-time"]) == (
        False,
        10,
        "2024-01-01T00:00:00.000000Z",
    )
    sdist = doc["files"][1]
    assert sdist["core-metadata"] is False and sdist["dist-info-metadata"] is False
    assert sdist["yanked"] == "broken <build>" and doc["files"][0]["yanked"] is True
    assert "requires-python" not in sdist
    # An independent PEP 691 reader agrees.
    parsed = {p.filename: p for p in ProjectPage.from_json_data(doc).packages}
    assert parsed["demo-1.0-py3-none-any.whl"].metadata_digests == {"sha256": "cd" * 32}
    assert parsed["demo-0.9.tar.gz"].yanked_reason == "broken <build>"
    assert parsed["demo-1.0-py3-none-any.whl"].upload_time == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_local_version_filename_is_url_quoted() -> None:
    state = ProjectState.of("demo", [_entry("demo-1.0+local-py3-none-any.whl", "1.0+local")])
    assert json.loads(state.to_json())["files"][0]["url"] == "demo-1.0%2Blocal-py3-none-any.whl"
    (package,) = ProjectPage.from_html("demo", render_project_html(state)).packages
    assert package.url == "demo-1.0%2Blocal-py3-none-any.whl"
    assert package.version == "1.0+local"


def test_json_is_deterministic() -> None:
    files = [_entry("demo-1.0.tar.gz", "1.0"), _entry("demo-0.1.tar.gz", "0.1")]
    assert ProjectState.of("demo", files).to_json() == ProjectState.of("demo", files[::-1]).to_json()


# Bytes as pypapo writes them today: they must survive a read and a rewrite unchanged.
STORED = (
    b'{"meta":{"api-version":"1.1"},"name":"demo","versions":["1.0"],"files":[{"filename":'
    b'"demo-1.0-py3-none-any.whl","url":"demo-1.0-py3-none-any.whl","hashes":{"sha256":"'
    + b"ab"
    * 32
    + b'"},'
    b'"requires-python":">=3.9","core-metadata":{"sha256":"' + b"cd" * 32 + b'"},"dist-info-metadata":'
    b'{"sha256":"' + b"cd" * 32 + b'"},"yanked":"\xc3\xa4 reason","size":10,"upload-time":'
    b'"2024-01-01T00:00:00.000000Z","_version":"1.0","_fingerprint":"dir:10:1"},{"filename":"demo-1.0.tar.gz",'
    b'"url":"demo-1.0.tar.gz","hashes":{"sha256":"' + b"ef" * 32 + b'"},"core-metadata":false,'
    b'"dist-info-metadata":false,"yanked":false,"size":3,"upload-time":"2024-01-02T00:00:00.000000Z",'
    b'"_version":"1.0","_fingerprint":"gcs:3:00"}]}\n'
)


def test_stored_project_json_round_trips_byte_for_byte() -> None:
    state = ProjectState.from_json(STORED, "demo")
    assert state.to_json() == STORED
    wheel = state.files[0]
    assert (wheel.version, wheel.yanked, wheel.fingerprint) == ("1.0", "ä reason", "dir:10:1")
    assert wheel.metadata_sha256 == "cd" * 32 and state.files[1].metadata_sha256 is None


def test_unknown_private_keys_are_carried_through_a_rewrite() -> None:
    doc = json.loads(STORED)
    doc["_origin"] = {"index": "https://pypi.org/simple/"}
    doc["files"][0]["_origin"] = "https://files.example/demo-1.0-py3-none-any.whl"
    doc["files"][0]["x-public-unknown"] = 1  # not ours to vouch for: dropped
    state = ProjectState.from_json(json.dumps(doc).encode(), "demo")
    yanked = state.with_files(f.with_yanked(True) for f in state.files)
    out = json.loads(yanked.to_json())
    assert out["_origin"] == {"index": "https://pypi.org/simple/"}
    assert out["files"][0]["_origin"] == "https://files.example/demo-1.0-py3-none-any.whl"
    assert list(out["files"][0])[-1] == "_origin"  # after the known keys
    assert "x-public-unknown" not in out["files"][0]
    assert out["files"][0]["yanked"] is True


@pytest.mark.parametrize(
    "files",
    [
        "[1]",
        '[{"filename": "x.whl"}]',
        '[{"filename": "x.whl", "_version": "1", "hashes": {"sha256": "a"}, "core-metadata": "yes",'
        ' "yanked": false, "size": 1, "upload-time": "t"}]',
        '[{"filename": "x.whl", "_version": "1", "hashes": {"sha256": "a"}, "core-metadata": false,'
        ' "yanked": 0, "size": 1, "upload-time": "t"}]',
        '[{"filename": "x.whl", "_version": "1", "hashes": {"sha256": "a"}, "core-metadata": false,'
        ' "yanked": false, "size": "1", "upload-time": "t"}]',
    ],
)
def test_entries_pypapo_could_not_have_written_are_corrupt(files: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        ProjectState.from_json(b'{"files": ' + files.encode() + b"}", "demo")


def test_upload_time_format() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 12, tzinfo=dt.UTC)
    assert upload_time(when) == "2024-05-06T07:08:09.000012Z"


def test_root_pages_list_projects_relatively() -> None:
    root = RootState.of(["zeta", "alpha", "zeta"])
    page = IndexPage.from_html(render_root_html(root))
    assert page.projects == ["alpha", "zeta"]
    assert page.repository_version == "1.1"
    assert [link.url for link in RepositoryPage.from_html(render_root_html(root)).links] == [
        "alpha/",
        "zeta/",
    ]
    assert json.loads(root.to_json()) == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": "alpha"}, {"name": "zeta"}],
    }
    assert RootState.from_json(root.to_json()) == root

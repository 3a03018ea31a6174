"""The engine on both backends: layout, immutability, all-or-nothing batches, yank, remove, reindex."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pypi_simple import DistributionPackage, IndexPage, ProjectPage, RepositoryPage

from provisioner.appliance import sample
from provisioner.errors import ConflictError, InvalidDistribution, PypapoError
from provisioner.repo.engine import Repository
from provisioner.repo.site.paging import shard_of
from provisioner.repo.store import open_store, waves
from tests.fixtures.gcs import RepoHandle

MakeDist = Callable[..., Path]


def _json(snapshot: dict[str, bytes], name: str) -> dict:
    return json.loads(snapshot[name])


def _html(snapshot: dict[str, bytes], project: str) -> dict[str, DistributionPackage]:
    """The project's HTML page as pip would read it (pypi-simple, not our renderer)."""
    page = ProjectPage.from_html(project, snapshot[f"simple/{project}/index.html"])
    return {p.filename: p for p in page.packages}


def _root_html(snapshot: dict[str, bytes]) -> list[str]:
    return IndexPage.from_html(snapshot["simple/index.html"]).projects


def test_publish_writes_the_full_layout(repo: RepoHandle, make_wheel: MakeDist, make_sdist: MakeDist) -> None:
    wheel = make_wheel("Foo.Bar", "1.0", requires_python=">=3.9")
    sdist = make_sdist("Foo.Bar", "1.0")
    result = Repository.open(repo.location).publish([wheel, sdist])
    assert result.published == [wheel.name, sdist.name]
    snap = repo.snapshot()
    assert set(snap) == {
        "simple/index.html",
        "simple/index.json",
        "simple/foo-bar/index.html",
        "simple/foo-bar/index.json",
        f"simple/foo-bar/{wheel.name}",
        f"simple/foo-bar/{wheel.name}.metadata",
        f"simple/foo-bar/{sdist.name}",
        # The browsable site (tests/repo/test_site.py)
        "ui/index.html.gz",  # the site's pages, stored gzip'd (nginx's gzip_static serves them)
        *(f"ui/search-{k:x}.json.gz" for k in range(16)),  # the search index, in shards by name
        "ui/site.css",
        "ui/site.js",
        "ui/favicon.svg",
        "ui/foo-bar/index.html.gz",
        f"ui/foo-bar/{wheel.name}.json",  # what its page shows of the wheel's metadata (README, ...)
    }
    assert snap[f"simple/foo-bar/{wheel.name}"] == wheel.read_bytes()
    with zipfile.ZipFile(wheel) as zf:
        assert snap[f"simple/foo-bar/{wheel.name}.metadata"] == zf.read("foo_bar-1.0.dist-info/METADATA")
    page = _json(snap, "simple/foo-bar/index.json")
    files = {f["filename"]: f for f in page["files"]}
    assert page["name"] == "foo-bar" and page["versions"] == ["1.0"]
    assert files[wheel.name]["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    meta_hash = hashlib.sha256(snap[f"simple/foo-bar/{wheel.name}.metadata"]).hexdigest()
    assert files[wheel.name]["core-metadata"] == {"sha256": meta_hash}
    assert files[wheel.name]["requires-python"] == ">=3.9"
    assert files[wheel.name]["dist-info-metadata"] == {"sha256": meta_hash}  # PEP 714 alias
    assert files[sdist.name]["core-metadata"] is False
    assert files[sdist.name]["dist-info-metadata"] is False
    assert files[sdist.name]["size"] == sdist.stat().st_size
    html = _html(snap, "foo-bar")
    assert html[wheel.name].url == wheel.name
    assert html[wheel.name].digests == {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    assert html[wheel.name].metadata_digests == {"sha256": meta_hash}
    assert html[wheel.name].requires_python == ">=3.9"
    assert html[sdist.name].has_metadata is None
    links = {
        link.text: link.attrs for link in RepositoryPage.from_html(snap["simple/foo-bar/index.html"]).links
    }
    assert links[wheel.name]["data-dist-info-metadata"] == f"sha256={meta_hash}"  # PEP 714 alias
    assert _json(snap, "simple/index.json")["projects"] == [{"name": "foo-bar"}]
    assert _root_html(snap) == ["foo-bar"]


def test_same_bytes_again_is_a_noop(repo: RepoHandle, make_wheel: MakeDist) -> None:
    wheel = make_wheel("demo", "1.0")
    Repository.open(repo.location).publish([wheel])
    before = repo.snapshot()
    result = Repository.open(repo.location).publish([wheel])
    assert (result.published, result.already_present) == ([], [wheel.name])
    assert repo.snapshot() == before


def _other_bytes_wheel(dest: Path, name: str, version: str) -> Path:
    """A valid wheel with the same filename as sample.build_wheel's, but different contents."""
    path = dest / sample.wheel_filename(name, version)
    path.write_bytes(sample.wheel_bytes(name, version, modules={f"{name}/__init__.py": "x = 'other'\n"}))
    return path


def test_other_bytes_under_an_existing_filename_are_refused(
    repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path
) -> None:
    Repository.open(repo.location).publish([make_wheel("demo", "1.0")])
    before = repo.snapshot()
    other = _other_bytes_wheel(tmp_path, "demo", "1.0")
    fresh = make_wheel("demo", "2.0")
    with pytest.raises(ConflictError, match=r"already exists .* with different bytes"):
        Repository.open(repo.location).publish([fresh, other])
    assert repo.snapshot() == before  # the valid file of the batch was not written either

    result = Repository.open(repo.location).publish([fresh, other], skip_existing=True)
    assert (result.published, result.skipped) == ([fresh.name], [other.name])
    after = repo.snapshot()
    assert after["simple/demo/demo-1.0-py3-none-any.whl"] == before["simple/demo/demo-1.0-py3-none-any.whl"]


def test_an_orphan_object_with_other_bytes_is_also_refused(
    repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path
) -> None:
    # A file stored without a page entry (crash window, manual copy) still counts as existing.
    wheel = make_wheel("demo", "1.0")
    open_store(repo.location).write(f"simple/demo/{wheel.name}", b"something else", if_generation_match=0)
    with pytest.raises(ConflictError):
        Repository.open(repo.location).publish([wheel])


def test_an_orphan_object_with_the_same_bytes_gets_indexed(repo: RepoHandle, make_wheel: MakeDist) -> None:
    wheel = make_wheel("demo", "1.0")
    open_store(repo.location).write(f"simple/demo/{wheel.name}", wheel.read_bytes(), if_generation_match=0)
    result = Repository.open(repo.location).publish([wheel])
    assert result.published == [wheel.name]
    assert [f["filename"] for f in _json(repo.snapshot(), "simple/demo/index.json")["files"]] == [wheel.name]


@pytest.mark.parametrize(
    "breakage",
    ["not-a-zip", "name-mismatch", "traversal", "missing-file"],
)
def test_one_bad_file_leaves_the_repository_byte_for_byte_unchanged(
    repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path, breakage: str
) -> None:
    Repository.open(repo.location).publish([make_wheel("demo", "1.0")])
    before = repo.snapshot()
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    if breakage == "not-a-zip":
        bad.write_bytes(b"garbage")
    elif breakage == "name-mismatch":
        bad.write_bytes(sample.wheel_bytes("bad", "1.0", metadata=sample.core_metadata("good", "1.0")))
    elif breakage == "traversal":
        bad.write_bytes(sample.wheel_bytes("bad", "1.0", extra_files={"../../etc/cron.d/x": b"boom"}))
    batch = [make_wheel("demo", "2.0"), make_wheel("newproj", "1.0"), bad]
    with pytest.raises(InvalidDistribution, match=r"bad-1\.0-py3-none-any\.whl"):
        Repository.open(repo.location).publish(batch)
    assert repo.snapshot() == before


def test_yank_and_unyank(repo: RepoHandle, make_wheel: MakeDist, make_sdist: MakeDist) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_sdist("demo", "1.0"), make_wheel("demo", "2.0")])
    assert r.set_yanked("Demo", "1.0.0", "broken build") == 2  # name and version are normalized
    snap = repo.snapshot()
    yanked = {f["filename"]: f["yanked"] for f in _json(snap, "simple/demo/index.json")["files"]}
    assert yanked == {
        "demo-1.0-py3-none-any.whl": "broken build",
        "demo-1.0.tar.gz": "broken build",
        "demo-2.0-py3-none-any.whl": False,
    }
    assert {name: p.yanked_reason for name, p in _html(snap, "demo").items()} == yanked | {
        "demo-2.0-py3-none-any.whl": None
    }
    assert r.set_yanked("demo", "1.0", None, yanked=False) == 2
    snap = repo.snapshot()
    assert all(f["yanked"] is False for f in _json(snap, "simple/demo/index.json")["files"])
    assert not any(p.is_yanked for p in _html(snap, "demo").values())
    with pytest.raises(PypapoError, match=r"has no version 3\.0"):
        r.set_yanked("demo", "3.0", None)
    with pytest.raises(PypapoError, match="no project nope"):
        r.set_yanked("nope", "1.0", None)


def test_remove_a_version_then_the_last_one(repo: RepoHandle, make_wheel: MakeDist) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0"), make_wheel("keep", "1.0")])
    assert r.remove("demo", "1.0") == ["demo-1.0-py3-none-any.whl"]
    snap = repo.snapshot()
    assert "simple/demo/demo-1.0-py3-none-any.whl" not in snap
    assert "simple/demo/demo-1.0-py3-none-any.whl.metadata" not in snap
    assert _json(snap, "simple/demo/index.json")["versions"] == ["2.0"]
    assert list(_html(snap, "demo")) == ["demo-2.0-py3-none-any.whl"]
    assert r.remove("demo") == ["demo-2.0-py3-none-any.whl"]
    snap = repo.snapshot()
    assert not [name for name in snap if name.startswith("simple/demo/")]
    assert _json(snap, "simple/index.json")["projects"] == [{"name": "keep"}]
    assert _root_html(snap) == ["keep"]
    assert r.projects() == ["keep"]


def test_reindex_rebuilds_lost_pages_and_keeps_yanks_and_upload_times(
    repo: RepoHandle, make_wheel: MakeDist, make_sdist: MakeDist
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_sdist("demo", "1.0"), make_wheel("other", "1.0")])
    r.set_yanked("demo", "1.0", "bad")
    before = repo.snapshot()
    store = open_store(repo.location)
    for name in (
        "simple/index.html",
        "simple/index.json",
        "simple/demo/index.html",
        "simple/other/index.html",
    ):
        store.delete(name)
    result = r.reindex()
    assert repo.snapshot() == before
    assert (result.projects, result.files, result.hashed) == (2, 3, 0)  # nothing rehashed
    assert r.reindex().pages_written == 0  # a second run finds nothing to do


def test_reindex_picks_up_manual_additions_and_deletions(
    repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("gone", "1.0")])
    store = open_store(repo.location)
    # Someone copies a wheel into the bucket by hand (no metadata file, no page entry) ...
    added = sample.wheel_bytes("demo", "2.0", requires_python=">=3.8")
    store.write("simple/demo/demo-2.0-py3-none-any.whl", added, if_generation_match=0)
    manual = sample.wheel_bytes("manual", "1.0")
    store.write("simple/manual/manual-1.0-py3-none-any.whl", manual, if_generation_match=0)
    # ... deletes a file by hand, and drops a corrupt one.
    store.delete("simple/gone/gone-1.0-py3-none-any.whl")
    store.write("simple/demo/demo-3.0-py3-none-any.whl", b"corrupt", if_generation_match=0)
    result = r.reindex()
    assert any("demo-3.0-py3-none-any.whl" in line for line in result.ignored)
    snap = repo.snapshot()
    demo = _json(snap, "simple/demo/index.json")
    assert demo["versions"] == ["1.0", "2.0"]
    new = next(f for f in demo["files"] if f["filename"] == "demo-2.0-py3-none-any.whl")
    assert new["hashes"]["sha256"] == hashlib.sha256(added).hexdigest()
    assert new["requires-python"] == ">=3.8"
    with zipfile.ZipFile(io.BytesIO(added)) as zf:
        assert snap["simple/demo/demo-2.0-py3-none-any.whl.metadata"] == zf.read(
            "demo-2.0.dist-info/METADATA"
        )
    assert "simple/gone/index.json" not in snap
    assert [p["name"] for p in _json(snap, "simple/index.json")["projects"]] == ["demo", "manual"]
    assert _root_html(snap) == ["demo", "manual"]


def test_a_reindex_of_a_bucket_keeps_as_many_reads_in_flight_as_the_store_does(
    gcs_repo: RepoHandle, make_wheel: MakeDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On GCS each read is a round trip: a reindex reads with the store's GCS_THREADS at once (a
    reindex of 500 projects that changes nothing, across a 50 ms link: 11.3 s with 8, 7.7 s with 16)."""
    import threading
    import time

    from provisioner.repo.store.gcs import GCS_THREADS, GCSStore

    r = Repository.open(gcs_repo.location)
    r.publish([make_wheel(f"proj-{i}", "1.0") for i in range(40)])
    lock, now, most = threading.Lock(), [0], [0]
    read = GCSStore.read

    def slow_read(self: GCSStore, name: str) -> tuple[bytes, int]:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.02)  # a round trip
            return read(self, name)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(GCSStore, "read", slow_read)
    assert Repository.open(gcs_repo.location).reindex().pages_written == 0
    assert most[0] >= GCS_THREADS


def test_reindex_verify_rehashes_what_the_fingerprint_cannot_see(
    dir_repo: RepoHandle, make_wheel: MakeDist
) -> None:
    # A same-size edit that restores the mtime fools the directory fingerprint; --verify does not.
    r = Repository.open(dir_repo.location)
    wheel = make_wheel("demo", "1.0")
    r.publish([wheel])
    path = Path(dir_repo.location) / "simple/demo" / wheel.name
    st = path.stat()
    tampered = sample.wheel_bytes("demo", "1.0", modules={"demo/__init__.py": "x = 'tampered'\n"})
    tampered = tampered[: st.st_size].ljust(st.st_size, b"\0")
    path.write_bytes(tampered)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fast = r.reindex()
    assert (fast.hashed, fast.reused) == (0, 1)
    verified = r.reindex(verify=True)
    assert verified.hashed + len(verified.ignored) == 1
    page = _json(dir_repo.snapshot(), "simple/demo/index.json")
    assert all(f["hashes"]["sha256"] != hashlib.sha256(wheel.read_bytes()).hexdigest() for f in page["files"])


def test_distributions_above_the_multipart_limit(gcs_repo: RepoHandle, tmp_path: Path) -> None:
    # > 8 MiB goes through google-cloud-storage's resumable upload, create-only as a multipart one
    # (GCS enforces it when the upload completes; so does the front of fake-gcs-server); publish's
    # own comparison with the stored object tells "the same bytes" from a conflict.
    big = tmp_path / "big-1.0-py3-none-any.whl"
    payload = os.urandom(9 * 1024 * 1024)
    big.write_bytes(sample.wheel_bytes("big", "1.0", extra_files={"big/blob.bin": payload}))
    r = Repository.open(gcs_repo.location)
    assert r.publish([big]).published == [big.name]
    assert gcs_repo.read(f"simple/big/{big.name}") == big.read_bytes()
    other = tmp_path / "other" / big.name
    other.parent.mkdir()
    other.write_bytes(sample.wheel_bytes("big", "1.0", extra_files={"big/blob.bin": payload[::-1]}))
    with pytest.raises(ConflictError):
        r.publish([other])
    assert gcs_repo.read(f"simple/big/{big.name}") == big.read_bytes()


class _CountingStore:
    """Wraps a real store and counts calls (to show what publish touches, not how long it takes)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, attr: str) -> object:
        value = getattr(self.inner, attr)
        if not callable(value):
            return value

        def call(*args: object, **kwargs: object) -> object:
            if attr in ("together", "written_fingerprint", "content_fingerprint"):
                pass  # no object of its own: the calls `together` runs come back through here
            elif attr == "write_many":
                self.calls += [(attr, item[0]) for item in args[0]]  # type: ignore[attr-defined]
            else:
                self.calls.append((attr, str(args[0]) if args else ""))
            return value(*args, **kwargs)

        return call


def test_publish_cost_follows_the_project_not_the_repository(
    dir_repo: RepoHandle, make_wheel: MakeDist, tmp_path: Path
) -> None:
    def publish_counting(location: str, wheel: Path) -> list[tuple[str, str]]:
        store = _CountingStore(open_store(location))
        Repository(store).publish([wheel])  # type: ignore[arg-type]
        return store.calls

    small = publish_counting(str(tmp_path / "small"), make_wheel("demo", "1.0"))
    big = Repository.open(dir_repo.location)
    big.publish([make_wheel(f"filler-{i}", "1.0") for i in range(15)] + [make_wheel("demo", "0.9")])
    grown = publish_counting(dir_repo.location, make_wheel("demo", "1.0"))
    assert not [c for c in grown if c[0] == "list"]  # never lists the repository
    # Root untouched (not a new project): only looked at, to see that its pages are in step.
    assert {c for c in grown if c[1].startswith("simple/index.")} <= {
        ("stat", "simple/index.json"),
        ("stat", "simple/index.html"),
    }
    touched = {name for op, name in grown if name and not (op == "stat" and name.startswith("simple/index."))}
    site = {
        "ui/demo/index.html.gz",
        "ui/index.html.gz",  # the list's head (the row of a project already on it moves there)
        f"ui/search-{shard_of('demo'):x}.json.gz",  # its search shard: one of 16
        "ui/site.css",
        "ui/site.js",
        "ui/favicon.svg",
        "ui/demo/demo-1.0-py3-none-any.whl.json",
        "ui/remote-images",  # the site's setting: one stat
    }
    assert touched - site <= {n for n in touched if n.startswith("simple/demo/")}
    assert len(grown) <= len(small)  # the empty repository also had to create the root index


class _RoundTrips:
    """Wraps a store and counts the round trips a caller waits for, as on GCS, where each request is
    one and `together`'s go side by side: a logical clock, the calls run in turn (deterministic).
    Single-threaded callers only (the index without the site)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.clock = 0

    def __getattr__(self, attr: str) -> object:
        value = getattr(self.inner, attr)
        if attr not in ("check", "read", "stat", "write", "delete", "list"):
            return value

        def call(*args: object, **kwargs: object) -> object:
            self.clock += 1
            return value(*args, **kwargs)

        return call

    def write_many(self, items: list, *, after: list | tuple = ()) -> list[int]:
        self.clock += len(waves(len(items), after))
        return self.inner.write_many(items, after=after)  # type: ignore[attr-defined]

    def together(self, calls: list[Callable[[], object]]) -> list[object]:
        start, ends, results = self.clock, [], []
        for call in calls:
            self.clock = start
            results.append(call())
            ends.append(self.clock)
        self.clock = max(ends, default=start)
        return results


def test_a_publish_waits_for_few_round_trips(repo: RepoHandle, make_wheel: MakeDist) -> None:
    """From a laptop every round trip to the bucket is tens of milliseconds: a publish reads all it
    decides on and writes against in one round, then uploads the wheel, its metadata file, the
    project JSON and its page (before: 15, a new project 23, three files 23, a yank 9)."""
    Repository.open(repo.location).publish([make_wheel("demo", "1.0")])
    store = _RoundTrips(open_store(repo.location))
    r = Repository(store, site=False)  # type: ignore[arg-type]
    r.publish([make_wheel("demo", "2.0")])
    assert store.clock == 5
    snapshot = repo.snapshot()
    assert _json(snapshot, "simple/demo/index.json")["versions"] == ["1.0", "2.0"]
    assert set(_html(snapshot, "demo")) == {"demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"}
    assert r.reindex().pages_written == 0  # the fingerprints recorded are the ones the store lists
    # A new project: the root listed first (its JSON read with its page's generation, then both
    # written), the same four uploads, and one read of the root after (a racing remove may unlist it).
    store.clock = 0
    r.publish([make_wheel("other", "1.0")])
    assert store.clock == 9
    assert _root_html(repo.snapshot()) == ["demo", "other"]
    # Many files of one project (a release's wheels for several platforms): still five, the files
    # side by side, then their metadata files.
    store.clock = 0
    r.publish([make_wheel("demo", v) for v in ("3.0", "3.1", "3.2")])
    assert store.clock == 5
    assert _json(repo.snapshot(), "simple/demo/index.json")["versions"] == ["1.0", "2.0", "3.0", "3.1", "3.2"]
    # A yank: one round of reads, the JSON, the page.
    store.clock = 0
    r.set_yanked("demo", "3.0", "broken")
    assert store.clock == 3
    assert _html(repo.snapshot(), "demo")["demo-3.0-py3-none-any.whl"].yanked_reason == "broken"


def test_a_corrupt_project_page_is_reported_and_rebuilt_by_reindex(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0")])
    store = open_store(repo.location)
    _data, gen = store.read("simple/demo/index.json")
    store.write("simple/demo/index.json", b"{not json", if_generation_match=gen)
    with pytest.raises(PypapoError, match=r"index\.json is corrupt: run `provision reindex`"):
        r.publish([make_wheel("demo", "2.0")])
    r.reindex()
    assert _json(repo.snapshot(), "simple/demo/index.json")["versions"] == ["1.0"]
    assert r.publish([make_wheel("demo", "2.0")]).published == ["demo-2.0-py3-none-any.whl"]


def test_a_corrupt_root_index_is_reported_and_rebuilt_by_reindex(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0")])
    before = repo.snapshot()
    store = open_store(repo.location)
    _data, gen = store.read("simple/index.json")
    store.write("simple/index.json", b'{"projects": [{"nom": 1}]}', if_generation_match=gen)
    with pytest.raises(PypapoError, match=r"simple/index\.json is corrupt"):
        r.publish([make_wheel("other", "1.0")])
    r.reindex()
    assert repo.snapshot() == before


def test_initialize_gives_a_new_repository_an_empty_index_once(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    repository = Repository.open(repo.location)
    assert repository.initialize() is True
    snap = repo.snapshot()
    site = {"ui/index.html.gz", "ui/site.css", "ui/site.js", "ui/favicon.svg"}
    site |= {f"ui/search-{k:x}.json.gz" for k in range(16)}
    assert set(snap) == {"simple/index.html", "simple/index.json"} | site  # /ui/ answers too
    assert _json(snap, "simple/index.json")["projects"] == []
    assert "Nothing published yet" in gzip.decompress(snap["ui/index.html.gz"]).decode()
    assert RepositoryPage.from_html(snap["simple/index.html"]).links == []

    repository.publish([make_wheel("demo", "1.0")])
    before = repo.snapshot()
    assert repository.initialize() is False
    assert repo.snapshot() == before  # an existing index is never touched


def test_reindex_from_scratch_in_worker_processes_equals_the_in_process_rebuild(
    tmp_path: Path, make_wheel: MakeDist, make_sdist: MakeDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many unvouched files on a directory repository go to worker processes; the pages must be the
    # ones the in-process path writes, invalid files reported the same way.
    import shutil

    from provisioner.repo import reindex as repository

    a, b = tmp_path / "a", tmp_path / "b"
    r = Repository.open(str(a))
    r.publish([make_wheel("demo", "1.0"), make_wheel("demo", "2.0"), make_sdist("demo", "2.0")])
    r.publish([make_wheel("other", "1.0", requires_python=">=3.9")])
    store = open_store(str(a))
    store.write("simple/demo/demo-3.0-py3-none-any.whl", b"corrupt", if_generation_match=0)
    for page in a.rglob("index.*"):
        page.unlink()
    shutil.copytree(a, b)  # copy2 keeps the mtimes the upload times fall back to

    used: list[int] = []
    real = repository._rebuild_in_processes

    def spy(store: object, outputs: object, jobs: list, verify: bool, beside: object) -> Iterator[object]:
        for out in real(store, outputs, jobs, verify, beside):  # type: ignore[arg-type]
            used.append(1)
            yield out

    monkeypatch.setattr(repository, "_rebuild_in_processes", spy)
    monkeypatch.setattr(repository, "cpu_count", lambda: 2)
    monkeypatch.setattr(repository, "PROCESS_POOL_MIN", 1)
    in_workers = Repository.open(str(a)).reindex()
    monkeypatch.setattr(repository, "PROCESS_POOL_MIN", 10**9)
    in_process = Repository.open(str(b)).reindex()

    assert len(used) == 2  # both projects were rebuilt by the workers
    assert in_workers.summary() == in_process.summary()
    assert (in_workers.files, in_workers.parsed, len(in_workers.ignored)) == (4, 4, 1)
    snap_a, snap_b = (RepoHandle(str(d), "dir").snapshot() for d in (a, b))
    assert snap_a == snap_b
    demo = _json(snap_a, "simple/demo/index.json")
    assert demo["versions"] == ["1.0", "2.0"]
    other = _json(snap_a, "simple/other/index.json")
    assert other["files"][0]["requires-python"] == ">=3.9"


@pytest.mark.parametrize(
    ("metadata", "simple"),
    [
        (
            b"Metadata-Version: 2.1\nName: Foo.Bar\nVersion: 1.0\nRequires-Python: >=3.8 \n\nbody\nName: x\n",
            True,
        ),
        (b"name:foo\nVERSION:\t1.0\nrequires-python:\n", True),
        (b"Name: foo\nVersion: 1.0\nLicense: MIT\n  continued\nRequires-Python: <4\n", True),
        (b"Name: foo\nName: bar\nVersion: 1\n", False),  # repeated
        (b"Name: foo\n  continued\nVersion: 1\n", False),
        (b" Name: foo\nVersion: 1\n", False),
        (b"Name: foo\r\nVersion: 1\r\n", False),
        (b"Name: f\xc3\xb6o\nVersion: 1\n", False),
        (b"Name: foo\nnot a header\nVersion: 1\n", False),
        (b"Name: foo\n", False),
        (b"\nName: foo\nVersion: 1\n", False),  # an empty first line: no headers at all
    ],
)
def test_the_metadata_fields_reindex_reads_are_the_ones_packaging_reads(
    metadata: bytes, simple: bool
) -> None:
    # distfile reads Name/Version/Requires-Python of plain header blocks itself (reindex parses
    # thousands); whatever it accepts must read exactly as packaging's parse_email reads it.
    from packaging.metadata import parse_email

    from provisioner.repo.dist import _simple_headers

    fast = _simple_headers(metadata)
    raw, _unparsed = parse_email(metadata)
    ref = {k: raw[k] for k in ("name", "version", "requires_python") if k in raw}  # type: ignore[literal-required]
    assert (fast is not None) == simple  # anything unusual goes to packaging
    assert fast is None or fast == ref


def test_a_page_rewritten_between_a_publish_s_first_round_and_its_json_write_is_not_left_stale(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    # A reindex's converge renders the project's pages from the JSON it read (the old one) and
    # writes them after this publish read their generations, just before this publish writes its
    # JSON. This publish's page writes then lose their compare-and-swaps and converge: the pages
    # list the new file (else pip, reading HTML, would not see 2.0 until the next reindex).
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0")])
    store = open_store(repo.location)
    real = type(r.store).write
    raced: list[str] = []

    def write(self: object, name: str, data: bytes, *, if_generation_match: int) -> int:
        if name == "simple/demo/index.json" and not raced:
            old, gen = store.read("simple/demo/index.html")
            store.write("simple/demo/index.html", old, if_generation_match=gen)  # the old state, anew
            raced.append(name)
        return real(self, name, data, if_generation_match=if_generation_match)

    r.store.write = write.__get__(r.store)  # type: ignore[method-assign]
    r.publish([make_wheel("demo", "2.0")])
    assert raced
    assert list(_html(repo.snapshot(), "demo")) == ["demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"]
    assert Repository.open(repo.location).reindex().pages_written == 0


def test_reindex_batch_losing_a_race_to_a_publisher_merges_into_what_it_wrote(
    repo: RepoHandle, make_wheel: MakeDist
) -> None:
    # A publisher lands between reindex's reads and its batched page writes: that project's
    # compare-and-swap fails, and the retry merges into the publisher's page (nothing lost, HTML
    # matching the JSON); the other project's page comes from the batch.
    r = Repository.open(repo.location)
    r.publish([make_wheel("demo", "1.0"), make_wheel("other", "1.0")])
    store = open_store(repo.location)
    for name in ("simple/demo/index.json", "simple/demo/index.html", "simple/other/index.json"):
        store.delete(name)
    late = make_wheel("demo", "2.0")
    racer = Repository.open(repo.location)
    real = type(r.store).write_many
    raced: list[bool] = []

    def write_many(self: object, items: list, *, after: list | tuple = ()) -> list[int]:
        if any(name == "simple/demo/index.json" for name, *_ in items) and not raced:
            raced.append(True)
            racer.publish([late])
        return real(self, items, after=after)

    r.store.write_many = write_many.__get__(r.store)  # type: ignore[method-assign]
    result = r.reindex()
    assert raced
    snap = repo.snapshot()
    demo = _json(snap, "simple/demo/index.json")
    assert [f["filename"] for f in demo["files"]] == [
        "demo-1.0-py3-none-any.whl",
        "demo-2.0-py3-none-any.whl",
    ]
    assert list(_html(snap, "demo")) == ["demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"]
    assert list(_html(snap, "other")) == ["other-1.0-py3-none-any.whl"]
    assert result.files == 3
    assert Repository.open(repo.location).reindex().pages_written == 0

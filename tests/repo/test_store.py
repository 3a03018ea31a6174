"""The Store interface: the same compare-and-swap semantics on a directory and on (fake) GCS."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from google.auth.credentials import Credentials

from provisioner.appliance import sample
from provisioner.errors import PypapoError
from provisioner.repo.engine import Repository
from provisioner.repo.store import PreconditionFailed, WriteItem, open_store
from provisioner.repo.store.gcs import MULTIPART_LIMIT, GCSStore
from tests.fixtures.gcs import FakeGCS, RepoHandle


def test_cas_semantics(repo: RepoHandle) -> None:
    store = open_store(repo.location)
    store.check()
    assert store.read("simple/a/index.json") == (b"", 0)
    g1 = store.write("simple/a/index.json", b"one", if_generation_match=0)
    assert g1 > 0
    with pytest.raises(PreconditionFailed):
        store.write("simple/a/index.json", b"two", if_generation_match=0)
    data, gen = store.read("simple/a/index.json")
    assert (data, gen) == (b"one", g1)
    g2 = store.write("simple/a/index.json", b"two", if_generation_match=g1)
    assert g2 != g1
    with pytest.raises(PreconditionFailed):  # a stale generation loses
        store.write("simple/a/index.json", b"three", if_generation_match=g1)
    with pytest.raises(PreconditionFailed):  # a stale delete loses (on GCS: the front, as GCS does)
        store.delete("simple/a/index.json", if_generation_match=g1)
    assert store.read("simple/a/index.json") == (b"two", g2)
    store.write("simple/b/x.whl", b"wheel", if_generation_match=0)
    listed = {i.name: i for i in store.list("simple/")}
    assert set(listed) == {"simple/a/index.json", "simple/b/x.whl"}
    assert listed["simple/b/x.whl"].size == 5
    assert store.stat("simple/b/x.whl").fingerprint == listed["simple/b/x.whl"].fingerprint
    store.delete("simple/a/index.json", if_generation_match=g2)
    assert store.read("simple/a/index.json") == (b"", 0)
    assert repo.snapshot() == {"simple/b/x.whl": b"wheel"}


def test_fingerprint_changes_with_content(repo: RepoHandle) -> None:
    store = open_store(repo.location)
    g = store.write("simple/p/f.whl", b"aaaa", if_generation_match=0)
    before = store.stat("simple/p/f.whl").fingerprint
    store.write("simple/p/f.whl", b"bbbb", if_generation_match=g)
    assert store.stat("simple/p/f.whl").fingerprint != before


def test_gcs_objects_get_content_type_and_cache_control(gcs_repo: RepoHandle, fake_gcs: FakeGCS) -> None:
    store = open_store(gcs_repo.location)
    for name in (
        "simple/p/index.html",
        "simple/p/index.json",
        "simple/p/p-1.tar.gz",
        "simple/p/p.whl.metadata",
    ):
        store.write(name, b"x", if_generation_match=0)
    bucket = fake_gcs.client().bucket(gcs_repo._bucket)
    blobs = {b.name.split("/", 1)[1]: b for b in bucket.list_blobs()}
    got = {n: (b.content_type, b.cache_control) for n, b in blobs.items()}
    page, immutable = "max-age=0, must-revalidate", "public, max-age=31536000, immutable"
    assert got == {
        "simple/p/index.html": ("text/html; charset=utf-8", page),
        "simple/p/index.json": ("application/vnd.pypi.simple.v1+json", page),
        "simple/p/p-1.tar.gz": ("application/octet-stream", immutable),
        "simple/p/p.whl.metadata": ("text/plain; charset=utf-8", immutable),
    }


def test_gcs_large_object_goes_resumable_round_trips_and_keeps_its_precondition(gcs_repo: RepoHandle) -> None:
    # Above 8 MiB google-cloud-storage switches to a resumable upload, where GCS enforces
    # if_generation_match when the upload completes (fake-gcs-server does not: its front does).
    store = open_store(gcs_repo.location)
    data = os.urandom(MULTIPART_LIMIT + 1024)
    gen = store.write("simple/big/big-1.0.tar.gz", data, if_generation_match=0)
    assert store.read("simple/big/big-1.0.tar.gz") == (data, gen)
    for stale in (0, gen + 1):
        with pytest.raises(PreconditionFailed):
            store.write("simple/big/big-1.0.tar.gz", data[::-1], if_generation_match=stale)
    assert store.read("simple/big/big-1.0.tar.gz") == (data, gen)


def test_directory_generation_never_repeats(dir_repo: RepoHandle) -> None:
    store = open_store(dir_repo.location)
    gens = [store.write("simple/p/index.json", b"0", if_generation_match=0)]
    for i in range(50):
        gens.append(store.write("simple/p/index.json", str(i).encode(), if_generation_match=gens[-1]))
    assert len(set(gens)) == len(gens)
    assert not [p for p in Path(dir_repo.location).rglob(".pypapo-tmp-*")]  # no temp files left


def test_missing_bucket_is_one_clear_error(fake_gcs: FakeGCS) -> None:
    store = open_store("gs://no-such-bucket-pypapo/x")
    with pytest.raises(PypapoError, match="bucket gs://no-such-bucket-pypapo does not exist"):
        store.check()


def test_bad_locations() -> None:
    for bad in ("gs://", "gs://UPPER", "s3://bucket", "gs://bucket/../x"):
        with pytest.raises(PypapoError):
            open_store(bad)


def test_absent_credentials_name_the_login_command(tmp_path: Path) -> None:
    # No emulator, no ADC file, no key, no metadata server: google.auth finds nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    env.update(GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(sample.wheel_bytes("demo", "1.0"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "provision"), "publish", "--repo", "gs://some-bucket", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "gcloud auth application-default login" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_configured_project_does_not_matter(
    gcs_repo: RepoHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bucket names the data; object operations never use a project, so a "wrong" default
    # project (another team's) cannot send writes elsewhere or break publishing.
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "some-other-project")
    store = open_store(gcs_repo.location)
    store.check()
    store.write("simple/x/index.json", b"{}", if_generation_match=0)
    assert gcs_repo.read("simple/x/index.json") == b"{}"


def test_directory_repository_needs_an_existing_parent(tmp_path: Path) -> None:
    with pytest.raises(PypapoError, match="does not exist: create it or fix --repo"):
        open_store(str(tmp_path / "typo" / "repo")).check()
    open_store(str(tmp_path / "repo")).check()  # a new repository under an existing directory is fine


def test_write_many_is_one_compare_and_swap_per_object(repo: RepoHandle) -> None:
    store = open_store(repo.location)
    store.check()
    g_a = store.write("simple/a/index.json", b"a1", if_generation_match=0)
    g_b = store.write("simple/b/index.json", b"b1", if_generation_match=0)
    store.write("simple/b/index.json", b"b2", if_generation_match=g_b)  # someone else got there first
    results = store.write_many(
        [
            WriteItem("simple/a/index.json", b"a2", g_a),  # current: replaced
            WriteItem("simple/b/index.json", b"b3", g_b),  # stale: refused, left as it was
            WriteItem("simple/c/index.json", b"c1", 0),  # create-only on an absent object
        ]
    )
    assert results[1] == 0 and results[0] and results[2]
    assert store.read("simple/a/index.json") == (b"a2", results[0])
    assert store.read("simple/b/index.json")[0] == b"b2"
    assert store.read("simple/c/index.json") == (b"c1", results[2])
    assert store.write_many([]) == []


def test_directory_write_many_leaves_no_temporary_files(dir_repo: RepoHandle) -> None:
    store = open_store(dir_repo.location)
    g = store.write("simple/p/index.json", b"1", if_generation_match=0)
    store.write_many(
        [WriteItem("simple/p/index.json", b"2", g + 1), WriteItem("simple/p/index.html", b"<html>", 0)]
    )
    root = Path(dir_repo.location)
    assert sorted(p.name for p in (root / "simple/p").iterdir()) == ["index.html", "index.json"]
    assert (root / "simple/p/index.html").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="named twice"):
        store.write_many([WriteItem("simple/p/x.json", b"1", 0), WriteItem("simple/p/x.json", b"2", 0)])


def test_write_many_after_writes_an_item_only_once_the_one_it_waits_for_is_written(
    repo: RepoHandle,
) -> None:
    store = open_store(repo.location)
    store.check()
    g = store.write("simple/a/index.json", b"a1", if_generation_match=0)
    results = store.write_many(
        [
            WriteItem("simple/a/index.json", b"a2", g + 7),  # stale: refused ...
            WriteItem("simple/b/index.json", b"b1", 0),
            WriteItem("simple/a/index.html", b"<a2>", 0),  # ... so this one is not even tried
            WriteItem("simple/b/index.html", b"<b1>", 0),
        ],
        after=[None, None, 0, 1],
    )
    assert results[0] == 0 and results[2] == 0 and results[1] and results[3]
    assert store.read("simple/a/index.html") == (b"", 0)
    assert store.read("simple/b/index.html")[0] == b"<b1>"
    with pytest.raises(ValueError, match="unconditional"):
        store.write_many([WriteItem("simple/c/x", b"", 0), WriteItem("simple/c/y", b"", 0)], after=[1, 0])


def test_permission_denied_names_the_role_to_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    # fake-gcs-server never answers 403, so a loopback server answers every request as Cloud Storage
    # does for an account without object access (same status and error body shape).
    import http.server
    import json
    import threading

    body = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "caller does not have storage.objects.list access",
                "errors": [{"reason": "forbidden", "domain": "global"}],
            }
        }
    ).encode()

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(PypapoError) as info:
            open_store("gs://team-pkgs").check()
    finally:
        server.shutdown()
    message = str(info.value)
    assert message.startswith("permission denied on gs://team-pkgs")
    assert "roles/storage.objectUser" in message and "--role publisher" in message
    assert "\n" not in message


@pytest.mark.parametrize("how", ["write", "write_many"])
def test_a_directory_removed_by_a_concurrent_delete_before_the_temporary_file_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """`delete` removes a project directory it leaves empty; another writer may have made that very
    directory an instant before and not yet put its temporary file in it. Its write must still land
    (it failed with FileNotFoundError, seen once in test_concurrency: publishers racing a reindex)."""
    store = open_store(str(tmp_path / "repo"))
    target = str(tmp_path / "repo" / "ui" / "shared")
    removed: list[str] = []
    real_makedirs, real_mkdir = os.makedirs, Path.mkdir

    def race(path: str) -> None:
        if str(path) == target and not removed:  # the other writer's rmdir, exactly in the window
            os.rmdir(path)
            removed.append(str(path))

    def makedirs(path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        real_makedirs(path, mode, exist_ok)
        race(path)

    def mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        real_mkdir(self, mode, parents, exist_ok)
        race(str(self))

    monkeypatch.setattr(os, "makedirs", makedirs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    if how == "write":
        store.write("ui/shared/index.html", b"<p>page</p>", if_generation_match=0)
    else:
        store.write_many(
            [
                WriteItem("ui/shared/index.html", b"<p>page</p>", 0),
                WriteItem("ui/index.html", b"<p>list</p>", 0),
            ]
        )
    assert removed == [target]
    assert store.read("ui/shared/index.html")[0] == b"<p>page</p>"


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsynced from now on (files and directories), in order."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_the_directory_store_fsyncs_every_object_but_those_marked_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page, a metadata file and the site's list are fsynced before their rename (and their
    directory after); an item marked not durable (a release-info cache, which every reader checks
    against its stamps) is not, nor is its directory for it alone. A single write is always durable."""
    store = open_store(str(tmp_path / "repo"))
    synced = _record_fsyncs(monkeypatch)
    durable = ["ui/demo/index.html", "simple/demo/demo-1.0-py3-none-any.whl.metadata", "ui/projects.json"]
    cache = WriteItem("ui/other/other-1.0-py3-none-any.whl.json", b"x", 0, durable=False)
    assert all(store.write_many([*(WriteItem(n, b"x", 0) for n in durable), cache]))
    files = [s for s in synced if not os.path.isdir(s)]  # the temporary files, before their rename
    dirs = {os.path.relpath(s, tmp_path / "repo") for s in synced if os.path.isdir(s)}
    assert len(files) == 3  # of the four objects, the cache is not fsynced
    assert dirs == {"ui/demo", "simple/demo", "ui"}
    synced.clear()
    store.write("ui/other/index.html", b"x", if_generation_match=0)
    assert len(synced) == 2  # the page and its directory


def _record_durability(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directory store's durability steps from now on, in order: "fsync" (a file or a
    directory), "syncfs", "rename"."""
    from provisioner.repo.store import directory

    events: list[str] = []
    real_fsync, real_syncfs, real_replace = os.fsync, directory._syncfs, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def syncfs(fd: int, path: str) -> None:
        events.append("syncfs")
        real_syncfs(fd, path)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(directory, "_syncfs", syncfs)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _batch(n: int, tag: bytes) -> list[WriteItem]:
    return [WriteItem(f"simple/p-{i}/index.html", tag + b"%d" % i, 0) for i in range(n)]


def test_a_reindex_sized_batch_is_made_durable_by_syncfs_before_its_first_rename_and_after_its_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two syncfs calls instead of an fsync per file and per directory: every byte is on disk
    before any rename shows it, every rename before the batch returns (a reindex from scratch of
    20,000 wheels with the site: ~4.5 CPU s less). A publish's handful still fsyncs each file."""
    from provisioner.repo.store import directory

    store = open_store(str(tmp_path / "repo"))
    events = _record_durability(monkeypatch)
    n = directory.SYNCFS_MIN
    assert all(store.write_many(_batch(n, b"page ")))
    assert events == ["syncfs", *["rename"] * n, "syncfs"]
    assert store.read(f"simple/p-{n - 1}/index.html")[0] == b"page %d" % (n - 1)
    events.clear()
    assert all(store.write_many([WriteItem("simple/q/index.html", b"q", 0)]))
    assert events == ["fsync", "rename", "fsync"]  # the file, then its directory


def test_the_store_reads_the_filesystem_type_statfs_gives(tmp_path: Path) -> None:
    """What decides on syncfs is the kernel's own word for the filesystem (coreutils' stat -f)."""
    from provisioner.repo.store import directory

    out = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True)
    assert directory._filesystem_type(str(tmp_path)) == int(out.stdout, 16)


def test_on_a_fuse_mount_a_large_batch_still_fsyncs_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs on FUSE (an sshfs, an rclone or gcsfuse mount written through) reaches no server:
    only an fsync per file does."""
    from provisioner.repo.store import directory

    monkeypatch.setattr(directory, "_filesystem_type", lambda path: 0x65735546)  # FUSE_SUPER_MAGIC
    store = open_store(str(tmp_path / "repo"))
    events = _record_durability(monkeypatch)
    n = directory.SYNCFS_MIN
    assert all(store.write_many(_batch(n, b"page ")))
    assert "syncfs" not in events
    assert events[:n] == ["fsync"] * n and events[n : 2 * n] == ["rename"] * n  # files, renames
    assert events[2 * n :] == ["fsync"] * n  # each project's directory


def test_a_syncfs_that_fails_leaves_every_object_as_it_was_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that reports a write-back error (EIO) before the renames: the batch raises, and no
    object was replaced by bytes that may not be on disk."""
    import errno

    from provisioner.repo.store import directory

    store = open_store(str(tmp_path / "repo"))
    n = directory.SYNCFS_MIN
    assert all(store.write_many(_batch(n, b"old ")))

    def failing(fd: int, path: str) -> None:
        raise OSError(errno.EIO, "syncfs: Input/output error", path)

    monkeypatch.setattr(directory, "_syncfs", failing)
    batch = [WriteItem(i.name, b"new", store.read(i.name)[1]) for i in _batch(n, b"")]
    with pytest.raises(OSError, match="Input/output error"):
        store.write_many(batch)
    assert [store.read(i.name)[0] for i in batch] == [b"old %d" % k for k in range(n)]
    assert not [p for p in (tmp_path / "repo").rglob(".pypapo-tmp-*")]


def test_a_publish_hands_its_release_info_cache_to_the_store_as_not_durable(
    dir_repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the directory store skips is the caller's to say: the site's release-info cache goes
    without fsync, its page with one (in the project's directory, one file fsynced of the two)."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(sample.wheel_bytes("demo", "1.0"))
    other = tmp_path / "other-1.0-py3-none-any.whl"
    other.write_bytes(sample.wheel_bytes("other", "1.0"))
    Repository.open(dir_repo.location).publish([other])  # the site exists: this publish splices it
    synced = _record_fsyncs(monkeypatch)
    Repository.open(dir_repo.location).publish([wheel])
    ui_demo = os.path.join(dir_repo.location, "ui", "demo")
    assert os.path.isfile(os.path.join(ui_demo, "demo-1.0-py3-none-any.whl.json"))
    assert len([s for s in synced if os.path.dirname(s) == ui_demo]) == 1  # the page's temporary file


class _Tokens(Credentials):
    """Credentials whose token must first be fetched (as a fresh `provision publish` process's),
    counting the fetches; each takes a token endpoint's round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches = 0
        self._count = threading.Lock()

    def refresh(self, request: object) -> None:
        with self._count:
            self.fetches += 1
        time.sleep(0.05)
        self.token = "token"


def test_a_fresh_process_fetches_one_token_for_its_requests_side_by_side(
    gcs_repo: RepoHandle, tmp_path: Path
) -> None:
    """A publish's first round is several requests at once; google-auth refreshes without a lock,
    so each would fetch a token of its own (with workload identity federation, an exchange each)."""
    from google.cloud import storage

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(sample.wheel_bytes("demo", "1.0"))
    creds = _Tokens()
    client = storage.Client(project="pypapo-test", credentials=creds)
    store = GCSStore(gcs_repo._bucket, gcs_repo._prefix, client=client)
    assert Repository(store).publish([wheel]).published == [wheel.name]
    assert creds.fetches == 1


def test_requests_in_flight_side_by_side_keep_their_connections(
    gcs_repo: RepoHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch (a publish's last round, a mirror's uploads) has up to 16 requests in flight: each
    must find room in the HTTP client's pool, or it opens a connection of its own and throws it away
    after (urllib3 says so), which on GCS costs a TCP and a TLS handshake per request."""
    store = open_store(gcs_repo.location)
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        for batch in range(4):
            items = [WriteItem(f"simple/p/{batch}-{i}.txt", b"x" * 1000, 0) for i in range(48)]
            assert all(store.write_many(items))
            assert all(gen for _data, gen in store.together([partial(store.read, i.name) for i in items]))
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]

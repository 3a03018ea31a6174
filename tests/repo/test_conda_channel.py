"""The conda channel's layout and commands on both backends: repodata as conda writes it, the .zst twin,
CEP 16 shards that a publish touches one name at a time, `removed`, reindex, list, and names that are
both a Python project and a conda package."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from provisioner.appliance import conda_sample as cs
from provisioner.appliance import sample
from provisioner.cli import main
from provisioner.repo.conda import repodata as rdata
from provisioner.repo.conda import shards as sh
from provisioner.repo.store import open_store
from tests.fixtures.gcs import RepoHandle


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def publish(repo: RepoHandle, *paths: Path) -> str:
    result = run("publish", "--repo", repo.location, *map(str, paths))
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_consistent(snap: dict[str, bytes], subdir: str) -> rdata.Repodata:
    """repodata.json.zst, the shard index and every shard agree with repodata.json."""
    raw = snap[f"conda/{subdir}/repodata.json"]
    rd = rdata.loads(raw, subdir)
    assert zstandard.ZstdDecompressor().decompress(snap[f"conda/{subdir}/repodata.json.zst"]) == raw
    index = sh.decode_index(snap[f"conda/{subdir}/repodata_shards.msgpack.zst"])
    assert set(index) == rd.names()
    for name, digest in index.items():
        shard = snap[f"conda/{subdir}/shards/{digest}.msgpack.zst"]
        assert sh.encode_shard(rd.for_name(name)).data == shard
        assert sh.decode_shard(shard, subdir) == rd.for_name(name)
    return rd


def test_repodata_records_as_conda_writes_them(repo: RepoHandle, tmp_path: Path) -> None:
    lib = cs.build_package(tmp_path, "lib", "1.0")
    app = cs.build_package(tmp_path, "app", "2.0", depends=["lib >=1"], fmt=".tar.bz2")
    tool = cs.build_package(tmp_path, "tool", "0.1", subdir="linux-64")
    out = publish(repo, lib, app, tool)
    assert (
        "uploaded conda/noarch/lib-1.0-0.conda" in out
        and out.splitlines()[-1] == "published 3, already present 0, skipped 0"
    )
    snap = repo.snapshot()
    assert snap["conda/noarch/lib-1.0-0.conda"] == lib.read_bytes()
    doc = json.loads(snap["conda/noarch/repodata.json"])
    assert doc["info"] == {"subdir": "noarch"} and doc["repodata_version"] == 1 and doc["removed"] == []
    assert list(doc["packages"]) == ["app-2.0-0.tar.bz2"] and list(doc["packages.conda"]) == [
        "lib-1.0-0.conda"
    ]
    record = doc["packages"]["app-2.0-0.tar.bz2"]
    assert record["depends"] == ["lib >=1"] and record["constrains"] == []
    assert record["size"] == app.stat().st_size and record["timestamp"] == cs.TIMESTAMP_MS
    assert record["noarch"] == "generic" and record["subdir"] == "noarch"
    assert record["sha256"] == hashlib.sha256(app.read_bytes()).hexdigest()
    assert record["md5"] == hashlib.md5(app.read_bytes()).hexdigest()
    linux = json.loads(snap["conda/linux-64/repodata.json"])
    assert linux["packages.conda"]["tool-0.1-0.conda"]["arch"] == "x86_64"
    assert_consistent(snap, "noarch")
    assert_consistent(snap, "linux-64")
    channeldata = json.loads(snap["conda/channeldata.json"])
    assert channeldata["subdirs"] == ["linux-64", "noarch"]
    assert channeldata["packages"]["tool"]["subdirs"] == ["linux-64"]
    assert channeldata["packages"]["app"]["version"] == "2.0"
    # NGINX serves the location only once the root index exists: a conda-only publish writes it.
    assert "simple/index.html" in snap


def test_a_publish_rewrites_one_shard_and_the_index_not_every_record(
    repo: RepoHandle, tmp_path: Path
) -> None:
    publish(repo, *(cs.build_package(tmp_path, f"pkg{i}", "1.0") for i in range(12)))
    before = repo.snapshot()
    publish(repo, cs.build_package(tmp_path, "pkg3", "1.1"))
    after = repo.snapshot()
    changed = sorted(n for n in after if before.get(n) != after[n])
    new_shards = [n for n in changed if "/shards/" in n]
    assert len(new_shards) == 1
    assert changed == sorted(
        [
            "conda/noarch/pkg3-1.1-0.conda",
            "conda/noarch/repodata.json",
            "conda/noarch/repodata.json.zst",
            "conda/noarch/repodata_shards.msgpack.zst",
            "conda/channeldata.json",
            *new_shards,
        ]
    )
    rd = assert_consistent(after, "noarch")
    assert {fn for fn, _ in rd.for_name("pkg3").records()} == {"pkg3-1.0-0.conda", "pkg3-1.1-0.conda"}
    # The other shards are the very same objects, and a client's cache of them stays valid.
    index_before = sh.decode_index(before["conda/noarch/repodata_shards.msgpack.zst"])
    index_after = sh.decode_index(after["conda/noarch/repodata_shards.msgpack.zst"])
    assert {n: h for n, h in index_after.items() if n != "pkg3"} == {
        n: h for n, h in index_before.items() if n != "pkg3"
    }


def test_remove_lists_the_file_in_removed_and_keeps_it(repo: RepoHandle, tmp_path: Path) -> None:
    old, new = cs.build_package(tmp_path, "lib", "1.0"), cs.build_package(tmp_path, "lib", "2.0")
    publish(repo, old, new)
    result = run("remove", "--repo", repo.location, "--yes", "lib", "2.0")
    assert result.exit_code == 0, result.output
    assert "removed conda/noarch/lib-2.0-0.conda from the index" in result.stdout
    snap = repo.snapshot()
    rd = assert_consistent(snap, "noarch")
    assert set(rd.conda) == {"lib-1.0-0.conda"} and rd.removed == {"lib-2.0-0.conda"}
    assert snap["conda/noarch/lib-2.0-0.conda"] == new.read_bytes()  # lock files naming it still install
    assert json.loads(snap["conda/channeldata.json"])["packages"]["lib"]["version"] == "1.0"
    missing = run("remove", "--repo", repo.location, "--yes", "lib", "9.9")
    assert missing.exit_code == 1 and "has no version 9.9 (versions: 1.0)" in missing.stderr
    # Publishing the same bytes again puts it back: an explicit act, like re-publishing a removed wheel.
    publish(repo, new)
    rd = assert_consistent(repo.snapshot(), "noarch")
    assert set(rd.conda) == {"lib-1.0-0.conda", "lib-2.0-0.conda"} and rd.removed == set()
    everything = run("remove", "--repo", repo.location, "--yes", "lib")
    assert everything.exit_code == 0 and everything.stdout.splitlines()[-1] == "removed 2 conda packages"
    snap = repo.snapshot()
    assert json.loads(snap["conda/channeldata.json"])["packages"] == {}
    assert assert_consistent(snap, "noarch").removed == {"lib-1.0-0.conda", "lib-2.0-0.conda"}


def test_reindex_rebuilds_the_channel_from_the_packages(repo: RepoHandle, tmp_path: Path) -> None:
    publish(
        repo,
        cs.build_package(tmp_path, "a", "1.0"),
        cs.build_package(tmp_path, "b", "1.0", subdir="osx-arm64"),
    )
    publish(repo, cs.build_package(tmp_path, "a", "1.1", fmt=".tar.bz2"))
    assert run("remove", "--repo", repo.location, "--yes", "a", "1.0").exit_code == 0
    good = repo.snapshot()
    store = open_store(repo.location)

    def lose(keep_repodata: bool) -> None:  # a bucket edited by hand, a publisher killed midway
        for name in good:
            derived = name.startswith("conda/") and not name.endswith((".conda", ".tar.bz2"))
            if derived and not (keep_repodata and name.endswith("/repodata.json")):
                store.delete(name)

    lose(keep_repodata=True)
    result = run("reindex", "--repo", repo.location)
    assert result.exit_code == 0, result.output
    assert "conda channel: 2 packages in 2 subdirs" in result.stdout
    rebuilt = repo.snapshot()
    for subdir in ("noarch", "osx-arm64"):
        assert_consistent(rebuilt, subdir)
        for name in (
            f"conda/{subdir}/repodata.json",
            f"conda/{subdir}/repodata.json.zst",
            "conda/channeldata.json",
        ):
            assert rebuilt[name] == good[name]
        index = f"conda/{subdir}/repodata_shards.msgpack.zst"
        assert sh.decode_index(rebuilt[index]) == sh.decode_index(good[index])
    assert "a-1.0-0.conda" in rdata.loads(rebuilt["conda/noarch/repodata.json"], "noarch").removed
    # Without its repodata.json a subdir's `removed` list is gone too: the file is back in the index.
    lose(keep_repodata=False)
    result = run("reindex", "--repo", repo.location)
    assert result.exit_code == 0 and "conda channel: 3 packages in 2 subdirs" in result.stdout
    assert "a-1.0-0.conda" in assert_consistent(repo.snapshot(), "noarch").conda


def test_reindex_ignores_an_invalid_object_with_a_warning(dir_repo: RepoHandle, tmp_path: Path) -> None:
    publish(dir_repo, cs.build_package(tmp_path, "a", "1.0"))
    (Path(dir_repo.location) / "conda/noarch/junk-1.0-0.conda").write_bytes(b"not a package")
    result = CliRunner().invoke(main, ["reindex", "--repo", dir_repo.location])
    assert result.exit_code == 0
    assert "warning: ignored conda/noarch/junk-1.0-0.conda: not a valid .conda" in result.stderr
    assert set(assert_consistent(dir_repo.snapshot(), "noarch").conda) == {"a-1.0-0.conda"}


def test_a_long_conda_reindex_shows_its_progress(
    repo: RepoHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel's reindex (`--verify` reads every package again) says how far it is, as the
    index's does: the packages done of those listed, a line a tenth in a log."""
    import provisioner.cli.repo as cli_repo

    publish(repo, *(cs.build_package(tmp_path, f"p{i}", "1.0") for i in range(4)))
    monkeypatch.setattr(cli_repo, "PROGRESS_AFTER", 0.0)
    result = run("reindex", "--repo", repo.location, "--verify")
    assert result.exit_code == 0, result.output
    conda = [line for line in result.stderr.splitlines() if line.startswith("conda reindex:")]
    assert conda == [f"conda reindex: {n} of 4 packages" for n in range(5)]
    assert "conda channel: 4 packages in 1 subdir" in result.stdout


def test_list_and_a_name_in_both_channels(repo: RepoHandle, tmp_path: Path) -> None:
    publish(repo, cs.build_package(tmp_path, "shared", "1.0"), sample.build_wheel(tmp_path, "shared", "2.0"))
    publish(repo, cs.build_package(tmp_path, "onlyconda", "3.0", subdir="linux-64"))
    listing = run("list", "--repo", repo.location)
    assert listing.stdout.splitlines() == [
        "shared",
        "onlyconda  (conda: linux-64)",
        "shared  (conda: noarch)",
    ]
    assert run("list", "--repo", repo.location, "--channel", "conda").stdout.splitlines() == [
        "onlyconda",
        "shared",
    ]
    files = run("list", "--repo", repo.location, "onlyconda")
    assert files.exit_code == 0 and files.stdout.startswith("3.0  linux-64/onlyconda-3.0-0.conda  ")
    for command in (["list"], ["remove", "--yes"]):
        ambiguous = run(*command, "--repo", repo.location, "shared")
        assert ambiguous.exit_code == 1
        assert (
            "both a Python project and a conda package" in ambiguous.stderr
            and "--channel" in ambiguous.stderr
        )
    before = repo.snapshot()
    assert run("remove", "--repo", repo.location, "--yes", "--channel", "conda", "shared").exit_code == 0
    after = repo.snapshot()
    assert (
        after["simple/shared/index.json"] == before["simple/shared/index.json"]
    )  # the Python side untouched
    assert "shared" not in json.loads(after["conda/channeldata.json"])["packages"]
    assert run("list", "--repo", repo.location, "shared").stdout.startswith(
        "2.0  shared-2.0-py3-none-any.whl"
    )


def test_corrupt_repodata_is_refused_with_the_fix(dir_repo: RepoHandle, tmp_path: Path) -> None:
    publish(dir_repo, cs.build_package(tmp_path, "a", "1.0"))
    (Path(dir_repo.location) / "conda/noarch/repodata.json").write_bytes(b"{broken")
    result = run("publish", "--repo", dir_repo.location, str(cs.build_package(tmp_path, "b", "1.0")))
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == "error: conda/noarch/repodata.json is corrupt: run `provision reindex` to rebuild it"
    )
    assert run("reindex", "--repo", dir_repo.location).exit_code == 0
    assert set(assert_consistent(dir_repo.snapshot(), "noarch").conda) == {"a-1.0-0.conda"}


def test_reindex_rewrites_a_shard_whose_bytes_are_not_its_name(repo: RepoHandle, tmp_path: Path) -> None:
    """A shard is content-addressed and created once, so nothing rewrote a 0-byte or truncated one (a hand
    upload, another tool): NGINX answers 503 naming `provision reindex`, and reindex must then repair it,
    not stop on a zstd traceback."""
    publish(repo, cs.build_package(tmp_path, "a", "1.0"), cs.build_package(tmp_path, "b", "1.0"))
    good = repo.snapshot()
    store = open_store(repo.location)
    index = sh.decode_index(good["conda/noarch/repodata_shards.msgpack.zst"])
    empty, truncated = (f"conda/noarch/shards/{index[n]}.msgpack.zst" for n in ("a", "b"))
    store.write(empty, b"", if_generation_match=store.stat(empty).generation)
    store.write(truncated, good[truncated][:-3], if_generation_match=store.stat(truncated).generation)
    result = run("reindex", "--repo", repo.location)
    assert result.exit_code == 0, result.output
    assert repo.snapshot() == good
    # Same size, other bytes.
    flipped = bytes([good[empty][0] ^ 1]) + good[empty][1:]
    store.write(empty, flipped, if_generation_match=store.stat(empty).generation)
    assert run("reindex", "--repo", repo.location).exit_code == 0
    assert repo.snapshot() == good

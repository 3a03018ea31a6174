"""The conda channel: publish, remove, list and reindex conda packages over a Store.

Concurrency model (the engine's, applied to a channel; both backends, see store.py):
- package files are created with a create-only precondition and are immutable.
- `conda/<subdir>/repodata.json` is the subdir's source of truth; every change is a read-modify-write
  conditional on the generation read, retried with jittered backoff.
- everything else is derived and *converges* the way the engine's HTML pages do: the derived object's
  generation is read BEFORE the source is read, and the write is conditional on it, so whoever writes
  it last derived it from the latest source:
    repodata.json -> repodata.json.zst (all of it) and the shard index (the touched names' shards);
    the shard indexes -> conda/channeldata.json (the touched names' entries).
  A publish reads the derived objects' generations before its repodata write and tries once with
  them (no extra read in the common case); on a conflict it converges from fresh reads.
- shards are content-addressed (`shards/<sha256>.msgpack.zst`), created once, never rewritten: a
  publish writes one new shard per touched name and the shard index, not every record.
A publisher killed between its writes leaves a derived object behind its source until the next write
to that subdir or `provision reindex`; clients never see a record whose package file is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from provisioner.errors import ConflictError, InvalidDistribution, PypapoError, counted, quoted
from provisioner.repo import reindex as reindexing
from provisioner.repo.conda import layout
from provisioner.repo.conda import repodata as rdata
from provisioner.repo.conda import shards as sh
from provisioner.repo.conda.package import CondaPackage, PackageError, parse_package
from provisioner.repo.conda.repodata import Repodata
from provisioner.repo.publish import read_offered
from provisioner.repo.reindex import Progress
from provisioner.repo.store import ObjectInfo, PreconditionFailed, Store, WriteItem, holds
from provisioner.repo.writer import MAX_ATTEMPTS, IndexWriter, backoff

# repodata.json.zst: level 16 takes seconds for a 10,000-record subdir; 9 is within 10% of its size.
ZST_LEVEL = 9
Echo = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def load_packages(paths: Iterable[str | Path]) -> list[CondaPackage]:
    """Read and validate conda package files; the first invalid one raises InvalidDistribution."""
    out: dict[str, CondaPackage] = {}
    for p in paths:
        path = Path(p)
        data = read_offered(path, "a conda package")
        try:
            pkg = parse_package(path.name, data)
        except PackageError as exc:
            raise InvalidDistribution(f"{quoted(path.name)}: {exc}") from None
        if pkg.filename in out and out[pkg.filename].sha256 != pkg.sha256:
            raise InvalidDistribution(f"{pkg.filename}: given twice with different contents")
        out[pkg.filename] = pkg
    return list(out.values())


@dataclass
class CondaPlan:
    """What a publish will do, decided before anything is written."""

    todo: list[CondaPackage] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # The repodata read (and parsed) while planning, reused by the first write attempt.
    reads: dict[str, tuple[Repodata, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CondaFile:
    """One package as `list` shows it."""

    subdir: str
    filename: str
    version: str
    build: str
    size: int
    timestamp_ms: int


@dataclass
class CondaReindexResult:
    subdirs: int = 0
    packages: int = 0
    parsed: int = 0
    reused: int = 0
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"conda channel: {counted(self.packages, 'package')} in {counted(self.subdirs, 'subdir')} "
            f"({self.reused:,} unchanged by md5, {self.parsed:,} read and validated)"
            + (f"; ignored {counted(len(self.ignored), 'invalid object')}" if self.ignored else "")
        )


class Channel:
    """The conda channel under `conda/` of a repository location."""

    def __init__(self, store: Store, *, echo: Echo | None = None) -> None:
        self.store = store
        self.echo = echo or _quiet

    # -- reading ----------------------------------------------------------------------------------
    def _repodata(self, subdir: str, data: bytes) -> Repodata:
        try:
            return rdata.loads(data, subdir)
        except rdata.CorruptRepodata:
            raise _corrupt(subdir) from None

    def read_repodata(self, subdir: str) -> tuple[Repodata, int]:
        data, gen = self.store.read(layout.repodata_object(subdir))
        return self._repodata(subdir, data), gen

    def channeldata(self) -> dict[str, dict[str, Any]]:
        try:
            return rdata.load_channeldata(self.store.read(layout.CHANNELDATA)[0])
        except rdata.CorruptRepodata:
            raise PypapoError(f"{layout.CHANNELDATA} is corrupt: run `provision reindex`") from None

    def names(self) -> list[str]:
        return sorted(self.channeldata())

    def has(self, name: str) -> bool:
        return name.lower() in self.channeldata()

    def files(self, name: str) -> list[CondaFile]:
        """Every live package of `name`, newest version last."""
        entry = self.channeldata().get(name.lower())
        if entry is None:
            raise PypapoError(f"no conda package {name} in {self.store.location}: see `provision list`")
        out = []
        for subdir in entry["subdirs"]:
            rd, _gen = self.read_repodata(subdir)
            for fn, r in rd.for_name(name.lower()).records():
                out.append(
                    CondaFile(
                        subdir, fn, r["version"], r["build"], int(r["size"]), int(r.get("timestamp", 0))
                    )
                )
        return sorted(out, key=lambda f: (rdata.version_key(f.version), f.build, f.subdir, f.filename))

    # -- publish ----------------------------------------------------------------------------------
    def plan(self, packages: Sequence[CondaPackage], *, skip_existing: bool = False) -> CondaPlan:
        """Decide for the whole batch; raises ConflictError (nothing written) on an immutable clash."""
        plan = CondaPlan()
        for pkg in packages:
            if pkg.subdir not in plan.reads:
                plan.reads[pkg.subdir] = self.read_repodata(pkg.subdir)
            rd = plan.reads[pkg.subdir][0]
            record = rd.get(pkg.filename)
            stored_sha = record["sha256"] if record else None
            if stored_sha is None:
                existing, gen = self.store.read(layout.package_object(pkg.subdir, pkg.filename))
                if gen and existing != pkg.data:
                    stored_sha = "(stored object)"
            if stored_sha is None or (stored_sha == pkg.sha256 and record is None):
                plan.todo.append(pkg)  # new, or its file is there but not indexed (removed, or a crash)
            elif stored_sha == pkg.sha256:
                plan.already_present.append(pkg.filename)
            elif skip_existing:
                plan.skipped.append(pkg.filename)
            else:
                raise ConflictError(
                    f"{pkg.filename} already exists in {self.store.location}/{layout.CONDA}/{pkg.subdir} "
                    "with different bytes; files are immutable: publish a new build number or version "
                    "(or pass --skip-existing)"
                )
        return plan

    def publish(self, plan: CondaPlan, progress: Echo | None = None) -> list[str]:
        """Upload the planned packages and index them, subdir by subdir. Returns the filenames."""
        say = progress or self.echo
        groups: dict[str, list[CondaPackage]] = {}
        for pkg in plan.todo:
            groups.setdefault(pkg.subdir, []).append(pkg)
        done: list[str] = []
        for subdir, group in sorted(groups.items()):
            for pkg in group:
                IndexWriter(self.store).create_object(layout.package_object(subdir, pkg.filename), pkg.data)
                say(f"uploaded {layout.CONDA}/{subdir}/{pkg.filename} ({pkg.size:,} bytes)")
            now = _now_ms()

            def add(rd: Repodata, group: list[CondaPackage] = group, now: int = now) -> bool:
                changed = False
                for pkg in group:
                    if rd.get(pkg.filename) is None:
                        rd.add(pkg.filename, pkg.record(now))
                        changed = True
                return changed

            self._update(subdir, add, {p.name for p in group}, first=plan.reads.get(subdir))
            done += [p.filename for p in group]
        return done

    # -- remove -----------------------------------------------------------------------------------
    def remove(self, name: str, version: str | None = None) -> list[str]:
        """Take every package of `name` (of `version`) out of the index: its record goes, its filename
        joins `removed`; the file stays (lock files that name its URL keep installing)."""
        name = name.lower()
        files = self.files(name)
        if version is not None and not any(f.version == version for f in files):
            versions = ", ".join(dict.fromkeys(f.version for f in files)) or "none"
            raise PypapoError(f"conda package {name} has no version {version} (versions: {versions})")
        removed: dict[str, list[str]] = {}
        for subdir in sorted({f.subdir for f in files}):

            def drop(rd: Repodata) -> bool:
                hit = [
                    fn
                    for fn, r in rd.records()
                    if r["name"] == name and (version is None or r["version"] == version)
                ]
                for fn in hit:
                    rd.remove(fn)
                removed[rd.subdir] = [f"{rd.subdir}/{fn}" for fn in hit]  # the last attempt's
                return bool(hit)

            self._update(subdir, drop, {name})
        return sorted(fn for hits in removed.values() for fn in hits)

    # -- the write protocol -----------------------------------------------------------------------
    def _update(
        self,
        subdir: str,
        change: Callable[[Repodata], bool],
        names: set[str],
        *,
        first: tuple[Repodata, int] | None = None,
    ) -> None:
        """Apply `change` to the subdir's repodata under CAS, then converge what derives from it."""
        zst_gen = self._generation(layout.repodata_zst_object(subdir))
        index_data, index_gen = self.store.read(layout.shard_index_object(subdir))
        written = self._cas_repodata(subdir, change, first=first)
        if written is None:
            return
        rd, body = written
        self._write_zst(subdir, body, zst_gen)
        self._write_index(subdir, rd, names, index_data, index_gen)
        self._converge_channeldata(names, {subdir})

    def _cas_repodata(
        self,
        subdir: str,
        change: Callable[[Repodata], bool],
        *,
        first: tuple[Repodata, int] | None = None,
        repair: bool = False,
    ) -> tuple[Repodata, bytes] | None:
        """Read-modify-write of the subdir's repodata.json, conditional on the generation read, retried
        while others win. `first`: a read to start from; `repair`: a corrupt file counts as empty
        (reindex) and an absent one is written even unchanged. The state and bytes written, or None."""
        for attempt in range(MAX_ATTEMPTS):
            if first is not None:
                rd, gen = first
                first = None
            else:
                data, gen = self.store.read(layout.repodata_object(subdir))
                try:
                    rd = rdata.loads(data, subdir)
                except rdata.CorruptRepodata:
                    if not repair:
                        raise _corrupt(subdir) from None
                    rd = Repodata(subdir)
            if not change(rd) and (gen or not repair):
                return None
            body = rdata.dumps(rd)
            try:
                self.store.write(layout.repodata_object(subdir), body, if_generation_match=gen)
                return rd, body
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(
            f"gave up updating {layout.repodata_object(subdir)} after {MAX_ATTEMPTS} conflicts"
        )

    def _generation(self, name: str) -> int:
        info = self.store.stat(name)
        return info.generation if info else 0

    def _try_then_converge(self, name: str, data: bytes, gen: int, fresh: Callable[[], bytes]) -> None:
        """Write `data` if `name` is still at `gen`; else derive it anew (`fresh` reads the source
        after we read the generation) until a write wins."""
        try:
            self.store.write(name, data, if_generation_match=gen)
        except PreconditionFailed:
            self._converge(name, fresh)

    def _converge(self, name: str, fresh: Callable[[], bytes]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            gen = self._generation(name)
            try:
                self.store.write(name, fresh(), if_generation_match=gen)
                return
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(f"gave up writing {name} after {MAX_ATTEMPTS} conflicting writes; retry")

    def _write_zst(self, subdir: str, body: bytes, gen: int) -> None:
        def fresh() -> bytes:
            return _zst(self.store.read(layout.repodata_object(subdir))[0])

        self._try_then_converge(layout.repodata_zst_object(subdir), _zst(body), gen, fresh)

    def _shards_for(self, rd: Repodata, names: Iterable[str]) -> dict[str, sh.Shard]:
        """Each name's shard (written create-only: content-addressed, so an existing one is the same)."""
        out = {name: sh.encode_shard(rd.for_name(name)) for name in names}
        items = [WriteItem(layout.shard_object(rd.subdir, s.sha256), s.data, 0) for s in out.values()]
        self.store.write_many(items)
        return out

    def _index_with(self, current: bytes, subdir: str, shards: dict[str, sh.Shard], rd: Repodata) -> bytes:
        try:
            entries = sh.decode_index(current)
        except sh.CorruptShardIndex:
            entries = {n: sh.encode_shard(rd.for_name(n)).sha256 for n in rd.names()}
        for name, shard in shards.items():
            entries[name] = shard.sha256
        for name in [n for n in entries if n in shards and n not in rd.names()]:
            del entries[name]
        return sh.encode_index(subdir, entries)

    def _write_index(self, subdir: str, rd: Repodata, names: set[str], data: bytes, gen: int) -> None:
        shards = self._shards_for(rd, names & rd.names())
        first = self._index_with(data, subdir, shards, rd)

        def fresh() -> bytes:
            # The generation was read by the caller first; now the current index and repodata.
            current, _ = self.store.read(layout.shard_index_object(subdir))
            latest, _ = self.read_repodata(subdir)
            return self._index_with(current, subdir, self._shards_for(latest, names & latest.names()), latest)

        self._try_then_converge(layout.shard_index_object(subdir), first, gen, fresh)

    def _name_in_subdirs(
        self, name: str, subdirs: Iterable[str], cache: dict[str, dict[str, str]]
    ) -> dict[str, Repodata]:
        """A name's records per subdir, from the shard indexes (read once per convergence) and shards."""
        out: dict[str, Repodata] = {}
        for subdir in subdirs:
            if subdir not in cache:
                try:
                    cache[subdir] = sh.decode_index(self.store.read(layout.shard_index_object(subdir))[0])
                except sh.CorruptShardIndex:
                    cache[subdir] = {}
            digest = cache[subdir].get(name)
            if digest:
                data, gen = self.store.read(layout.shard_object(subdir, digest))
                if gen:
                    out[subdir] = _stored_shard(subdir, digest, data)
        return out

    def _converge_channeldata(self, names: set[str], subdirs: set[str]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            data, gen = self.store.read(layout.CHANNELDATA)
            try:
                packages = rdata.load_channeldata(data)
            except rdata.CorruptRepodata:
                packages = {}
            where = subdirs | set(rdata.channeldata_subdirs(packages))
            cache: dict[str, dict[str, str]] = {}
            for name in names:
                entry = rdata.channeldata_entry(self._name_in_subdirs(name, sorted(where), cache))
                if entry is None:
                    packages.pop(name, None)
                else:
                    packages[name] = entry
            body = rdata.dump_channeldata(packages)
            if body == data:
                return
            try:
                self.store.write(layout.CHANNELDATA, body, if_generation_match=gen)
                return
            except PreconditionFailed:
                backoff(attempt)
        raise ConflictError(f"gave up writing {layout.CHANNELDATA} after {MAX_ATTEMPTS} conflicting writes")

    # -- reindex ----------------------------------------------------------------------------------
    def reindex(
        self,
        *,
        verify: bool = False,
        workers: int | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> CondaReindexResult:
        """Rebuild every subdir's repodata, zst, shards and channeldata from the stored packages.

        Filenames in a subdir's `removed` list stay out. A package whose stored md5 (GCS object
        metadata) and size match its record keeps the record; every other package is read and
        validated again (`verify`: all of them). `progress` hears where it is, as the index's
        reindex tells it: the objects listed, then the packages done of those listed."""
        result = CondaReindexResult()
        tell = progress or (lambda _progress: None)
        by_subdir: dict[str, dict[str, ObjectInfo]] = {}
        listing = reindexing.Listing(self.store, f"{layout.CONDA}/", tell)
        for info in listing:
            parts = info.name.split("/")
            if len(parts) == 3 and parts[1] in layout.SUBDIRS and layout.is_package_filename(parts[2]):
                by_subdir.setdefault(parts[1], {})[parts[2]] = info
            elif len(parts) == 3 and parts[2] == layout.REPODATA and parts[1] in layout.SUBDIRS:
                by_subdir.setdefault(parts[1], {})
        all_names: set[str] = set()
        total, done = sum(len(objects) for objects in by_subdir.values()), 0
        tell(Progress(listing.count, 0, total))
        with ThreadPoolExecutor(max_workers=max(1, workers or self.store.reads_in_flight)) as pool:
            for subdir, objects in sorted(by_subdir.items()):
                try:
                    old, _gen = self.read_repodata(subdir)
                except PypapoError:
                    old = Repodata(subdir)  # corrupt: rebuilt from the packages
                rebuilt: dict[str, rdata.Record] = {}
                for r in pool.map(
                    functools.partial(self._rebuild_one, subdir, old, verify=verify, result=result),
                    list(objects),
                    list(objects.values()),
                ):
                    if r:
                        rebuilt[r[0]] = r[1]
                    done += 1
                    tell(Progress(listing.count, done, total))  # a --verify reads every package: minutes

                def merge(rd: Repodata, rebuilt: dict[str, rdata.Record] = rebuilt, objects=objects) -> bool:
                    before = rdata.dumps(rd)
                    keep = {
                        fn: r
                        for fn, r in rd.records()
                        if fn not in objects and self.store.stat(layout.package_object(rd.subdir, fn))
                    }  # published after our listing
                    rd.packages, rd.conda = {}, {}
                    for fn, r in {**rebuilt, **keep}.items():
                        if fn not in rd.removed:
                            rd.table(fn)[fn] = r
                    return rdata.dumps(rd) != before

                self._update_full(subdir, merge)
                final, _ = self.read_repodata(subdir)
                all_names |= final.names()
                result.subdirs += 1
                result.packages += len(final.packages) + len(final.conda)
        all_names |= set(self._safe_channeldata())
        if all_names or by_subdir:
            self._converge_channeldata(all_names, set(by_subdir))
        return result

    def _safe_channeldata(self) -> dict[str, dict[str, Any]]:
        try:
            return self.channeldata()
        except PypapoError:
            return {}

    def _rebuild_one(
        self,
        subdir: str,
        old: Repodata,
        filename: str,
        info: ObjectInfo,
        verify: bool,
        result: CondaReindexResult,
    ) -> tuple[str, rdata.Record] | None:
        prev = old.get(filename)
        if (
            prev is not None
            and not verify
            and info.fingerprint == f"gcs:{prev.get('size')}:{prev.get('md5')}"
        ):
            result.reused += 1
            return filename, prev
        data, gen = self.store.read(layout.package_object(subdir, filename))
        if not gen:
            return None
        try:
            pkg = parse_package(filename, data)
        except PackageError as exc:
            result.ignored.append(f"{layout.package_object(subdir, filename)}: {exc}")
            return None
        if pkg.subdir != subdir:
            result.ignored.append(
                f"{layout.package_object(subdir, filename)}: belongs to subdir {pkg.subdir}"
            )
            return None
        result.parsed += 1
        stamp = int(prev["timestamp"]) if prev and "timestamp" in prev else info.updated_ns // 1_000_000
        return filename, pkg.record(stamp)

    def _update_full(self, subdir: str, change: Callable[[Repodata], bool]) -> None:
        """`_update` for reindex: every name's shard, and the derived objects even when unchanged. A
        stored shard that is not the bytes it is named after (0 bytes, truncated) is rewritten."""
        self._cas_repodata(subdir, change, repair=True)
        latest, _ = self.read_repodata(subdir)

        def fresh_zst() -> bytes:
            return _zst(self.store.read(layout.repodata_object(subdir))[0])

        def fresh_index() -> bytes:
            current, _ = self.read_repodata(subdir)
            shards = self._shards_for(current, current.names())
            return sh.encode_index(subdir, {n: s.sha256 for n, s in shards.items()})

        zst_name, index_name = layout.repodata_zst_object(subdir), layout.shard_index_object(subdir)
        if self.store.read(zst_name)[0] != _zst(rdata.dumps(latest)):
            self._converge(zst_name, fresh_zst)
        index_data, _ = self.store.read(index_name)
        encoded = {n: sh.encode_shard(latest.for_name(n)) for n in latest.names()}
        want = {n: shard.sha256 for n, shard in encoded.items()}
        try:
            current_index = sh.decode_index(index_data)
        except sh.CorruptShardIndex:
            current_index = {}
        missing = False
        for shard in encoded.values():
            name = layout.shard_object(subdir, shard.sha256)
            info = self.store.stat(name)
            if info is None:
                missing = True
            elif not holds(self.store, info, shard.data):
                # Content-addressed: whoever rewrites it meanwhile writes these very bytes.
                with contextlib.suppress(PreconditionFailed):
                    self.store.write(name, shard.data, if_generation_match=info.generation)
        if current_index != want or missing:
            self._converge(index_name, fresh_index)


def _stored_shard(subdir: str, digest: str, data: bytes) -> Repodata:
    """A stored shard's records; its name is the sha256 of its bytes, so other bytes are corrupt."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise PypapoError(
            f"{layout.shard_object(subdir, digest)} is corrupt (its bytes do not match its name): "
            "run `provision reindex` to rewrite it"
        )
    return sh.decode_shard(data, subdir)


def _corrupt(subdir: str) -> PypapoError:
    return PypapoError(f"{layout.repodata_object(subdir)} is corrupt: run `provision reindex` to rebuild it")


def _zst(body: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZST_LEVEL).compress(body)

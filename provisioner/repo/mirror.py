"""`provision mirror`: bring public distributions into the repository, verified, with their upstream state.

1. What to mirror: requirements resolved with their whole closure as a universal resolution (every
   marker, every platform: `uv pip compile --universal` against `--from` alone, no configuration,
   no cache), or a lock file taken as it is (its versions, files and hashes).
2. The upstream pages of every project, read concurrently; the files of each version, narrowed by
   --python-version/--platform/--no-sdist. A lock's file must be the one the index lists under that
   name: same sha256 and, when the lock has URLs, the same URL.
3. Refusals before any download: a name published privately here (mirroring it would let a public
   package shadow a private one), a file already stored with other bytes, a project mirrored from
   another index.
4. Every new file (and its PEP 658 metadata file, when the upstream serves one) downloaded
   concurrently into a scratch directory, every byte checked against the upstream's sha256 and the
   lock's, every archive validated like a publish. Any failure refuses the whole run: nothing is written.
5. Then the engine imports them project by project under its compare-and-swap (safe while others
   publish), keeping the upstream's upload time, requires-python and yank state and recording where
   the project came from (`_mirror` in the project JSON). Files already stored are not downloaded
   again; their yank state follows the upstream's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from provisioner.errors import PypapoError, counted, human_size
from provisioner.repo import locks, narrow
from provisioner.repo.dist import DistError, parse_dist
from provisioner.repo.engine import Repository
from provisioner.repo.importing import MirroredFile
from provisioner.repo.model import Yanked
from provisioner.repo.store import open_store
from provisioner.repo.upstream import Upstream, UpstreamFile, UpstreamProject

WORKERS = 8
Echo = Callable[[str], None]
Progress = Callable[[int], None]  # bytes just downloaded


class MirrorError(PypapoError):
    """The mirror run is refused; nothing was written."""


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class Planned:
    project: str
    file: UpstreamFile


@dataclass
class MirrorPlan:
    source: str  # --from, without credentials
    pins: list[locks.Pin]
    new: list[Planned] = field(default_factory=list)
    present: list[Planned] = field(default_factory=list)
    narrowed_out: int = 0
    # The upstream's yank state of every stored file of the projects in this run (filename -> state).
    upstream_yanks: dict[str, dict[str, Yanked]] = field(default_factory=dict)

    @property
    def new_bytes(self) -> int:
        return sum(p.file.size or 0 for p in self.new)


@dataclass
class MirrorResult:
    plan: MirrorPlan
    added: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0
    yanks_updated: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def summary(self) -> str:
        projects = len({p.project for p in self.plan.new})
        if not self.plan.new:
            present = counted(len(self.plan.present), "file")
            text = f"nothing new from {self.plan.source}: {present} already present"
        else:
            verb = "would add" if self.dry_run else "added"
            size = human_size(self.plan.new_bytes if self.dry_run else self.downloaded_bytes)
            text = (
                f"{verb} {counted(len(self.plan.new), 'file')} ({size}) of {counted(projects, 'project')}"
                f" from {self.plan.source}; {len(self.plan.present):,} already present"
            )
        if self.plan.narrowed_out:
            text += f"; {self.plan.narrowed_out:,} left out by --python-version/--platform/--no-sdist"
        if self.yanks_updated:
            text += f"; yank state of {counted(self.yanks_updated, 'file')} updated from upstream"
        return text + f" ({counted(len(self.plan.pins), 'version')}, {self.seconds:.1f} s)"


# --- 1. what to mirror -------------------------------------------------------------------------------------


def _uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise PypapoError("resolving requirements needs uv: `pip install uv` (or mirror a lock file with --lock)")


def read_requirements(path: str) -> list[str]:
    """Requirement lines of a requirements file; options that would choose another index are refused."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PypapoError(f"{path}: {exc.strerror or exc}") from None
    reqs = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise PypapoError(
                f"{path}: option line {line!r} is not taken (the index is --from; use --lock for a lock file)"
            )
        reqs.append(line)
    return reqs


def resolve(requirements: Sequence[str], upstream: Upstream, n: narrow.Narrowing) -> list[locks.Pin]:
    """The whole closure of `requirements` on the upstream, for every platform and marker."""
    parsed = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise PypapoError(f"invalid requirement {text!r}: {exc}") from None
        if req.url:
            raise PypapoError(f"{text!r} points at a URL: the mirror takes requirements from --from only")
        parsed.append(req)
    # An unknown name gets its own clear line (uv would say it in a paragraph).
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda r: upstream.project(r.name), parsed))
    with tempfile.TemporaryDirectory(prefix="pypapo-resolve-") as tmp:
        reqfile = Path(tmp) / "requirements.in"
        reqfile.write_text("".join(f"{r}\n" for r in parsed))
        # Isolated: no uv/pip configuration or environment, --from as the only index, no cache.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV"))}
        env.update(UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", HOME=tmp, XDG_CONFIG_HOME=tmp)
        cmd = [
            _uv_bin(), "pip", "compile", "--universal", "--no-config", "--no-header", "--no-annotate",
            "--no-cache", "--quiet", "--index-url", upstream.url, "--index-strategy", "first-index",
            "--python", sys.executable, "--python-version", str(min(n.pythons)) if n.pythons else
            f"{sys.version_info.major}.{sys.version_info.minor}", str(reqfile),
        ]  # fmt: skip
        if n.no_sdist:
            cmd[-1:-1] = ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise PypapoError(
            f"cannot resolve {' '.join(requirements)} on {upstream.shown}: {_uv_reason(proc.stderr)}"
        )
    pins: dict[tuple[str, str], locks.Pin] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        pin = locks.Pin(canonicalize_name(req.name), str(Version(spec.version)))
        pins[(pin.project, pin.version)] = pin
    return list(pins.values())


def _uv_reason(stderr: str) -> str:
    """uv's explanation on one line."""
    lines = [line.strip(" ×╰─▶│").strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith("hint:")]
    text = " ".join(lines[1:] if len(lines) > 1 and lines[0].startswith("No solution") else lines)
    return text[:600] or "uv failed without a message"


def read_lock(path: str, source: str) -> list[locks.Pin]:
    """The pins of a lock file (a path, or gs://BUCKET/OBJECT as the scheduled mirror reads it)."""
    if path.startswith("gs://"):
        bucket, _, name = path[len("gs://") :].partition("/")
        data, gen = open_store(f"gs://{bucket}").read(name) if name else (b"", 0)
        if not gen:
            raise PypapoError(f"{path}: no such object (give --lock gs://BUCKET/PATH/TO/uv.lock)")
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PypapoError(f"{path}: {exc.strerror or exc}") from None
    pins = locks.parse(path, data, source)
    if not pins:
        raise PypapoError(f"{path}: locks no distribution from an index: nothing to mirror")
    return pins


# --- 2./3. the plan -------------------------------------------------------------------------------------


def _select(pin: locks.Pin, page: UpstreamProject, where: str) -> list[UpstreamFile]:
    """The upstream files a pin takes; a lock's file must be the one the index lists."""
    of_version = [f for f in page.files if f.version == pin.version]
    if pin.files:
        by_name = {f.filename: f for f in of_version}
        chosen = []
        for locked in pin.files:
            up = by_name.get(locked.filename)
            if up is None:
                raise MirrorError(f"{where}: {locked.filename} is not on {page.url} (the lock names it)")
            if up.sha256 != locked.sha256:
                raise MirrorError(
                    f"{where}: {locked.filename} has sha256 {locked.sha256} in the lock but {up.sha256}"
                    f" on {page.url}: refusing to mirror anything"
                )
            if locked.url is not None and locked.url.partition("#")[0] != up.url:
                raise MirrorError(
                    f"{where}: {locked.filename} points at {locked.url}, but {page.url} serves it from"
                    f" {up.url}: a lock that points elsewhere is not mirrored"
                )
            chosen.append(up)
        return chosen
    if pin.hashes:
        chosen = [f for f in of_version if f.sha256 in pin.hashes]
        if not chosen:
            raise MirrorError(
                f"{where}: no file of {pin.project}=={pin.version} on {page.url} has one of the lock's hashes"
            )
        return chosen
    if not of_version:
        raise MirrorError(f"{pin.project}=={pin.version} has no wheel or sdist on {page.url}")
    return of_version


def plan(
    repo: Repository,
    upstream: Upstream,
    pins: list[locks.Pin],
    n: narrow.Narrowing,
    where: str,
) -> MirrorPlan:
    projects = sorted({p.project for p in pins})
    with ThreadPoolExecutor(WORKERS) as pool:
        pages = dict(zip(projects, pool.map(upstream.project, projects), strict=True))
        states = dict(zip(projects, pool.map(repo.mirror_status, projects), strict=True))
    for project, status in states.items():
        if status.private:
            raise MirrorError(
                f"{project} is published privately in {repo.store.location}: refusing to mirror it from"
                f" {upstream.shown} (a public {project} must never shadow the private one)"
            )
        if status.origin is not None and not locks.same_index(status.origin, upstream.shown):
            raise MirrorError(
                f"{project} was mirrored from {status.origin}: refusing to add files from {upstream.shown}"
                " (remove it first to change its upstream)"
            )
    result = MirrorPlan(upstream.shown, pins)
    for project, page in pages.items():
        stored = states[project].files
        result.upstream_yanks[project] = {f.filename: f.yanked for f in page.files if f.filename in stored}
    seen: set[str] = set()
    for pin in pins:
        stored = states[pin.project].files
        for f in _select(pin, pages[pin.project], where):
            if f.filename in seen:
                continue
            seen.add(f.filename)
            if not narrow.keeps(n, f.filename, f.requires_python):
                result.narrowed_out += 1
                continue
            have = stored.get(f.filename)
            if have is None:
                result.new.append(Planned(pin.project, f))
            elif have == f.sha256:
                result.present.append(Planned(pin.project, f))
            else:
                raise MirrorError(
                    f"{f.filename} is stored in {repo.store.location} with sha256 {have}, but"
                    f" {upstream.shown} serves {f.sha256}: refusing to mirror anything"
                )
    return result


# --- 4. download and verify ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    planned: Planned
    path: Path
    metadata: bytes | None  # the upstream's PEP 658 file, verified


def _fetch(upstream: Upstream, p: Planned, scratch: Path, progress: Progress) -> _Fetched:
    f = p.file
    path = scratch / f.filename
    sha, size = upstream.download(f.url, path)
    if sha != f.sha256:
        raise MirrorError(
            f"{f.filename} from {upstream.shown} has sha256 {sha}, but the index lists {f.sha256}:"
            " refusing to mirror anything"
        )
    if f.size is not None and size != f.size:
        raise MirrorError(
            f"{f.filename}: {size} bytes, but the index lists {f.size}: refusing to mirror anything"
        )
    progress(size)
    meta = None
    if f.metadata_sha256 and f.filename.endswith(".whl"):
        data = upstream.fetch(f.metadata_url)
        if hashlib.sha256(data).hexdigest() != f.metadata_sha256:
            raise MirrorError(
                f"{f.filename}.metadata from {upstream.shown} does not match the index's core-metadata"
                " hash: refusing to mirror anything"
            )
        meta = data
    return _Fetched(p, path, meta)


def _validate(fetched: _Fetched) -> MirroredFile:
    f = fetched.planned.file
    try:
        # check_crc=False: the bytes are the upstream's (sha256 checked); names, paths and metadata
        # are still validated like a publish.
        dist = parse_dist(f.filename, fetched.path.read_bytes(), check_crc=False)
    except DistError as exc:
        raise MirrorError(f"{f.filename} from upstream is not a valid distribution: {exc}") from None
    if dist.project != fetched.planned.project:
        raise MirrorError(f"{f.filename} is a file of {dist.project}, not {fetched.planned.project}")
    return MirroredFile(
        path=fetched.path,
        project=dist.project,
        filename=dist.filename,
        version=dist.version,
        sha256=dist.sha256,
        size=dist.size,
        requires_python=f.requires_python if f.requires_python is not None else dist.requires_python,
        metadata=fetched.metadata if fetched.metadata is not None else dist.metadata,
        upload_time=f.upload_time,
        yanked=f.yanked,
    )


# --- the run ------------------------------------------------------------------------------------------------


def mirror(
    repo: Repository,
    upstream: Upstream,
    pins: list[locks.Pin],
    n: narrow.Narrowing,
    *,
    where: str = "",
    dry_run: bool = False,
    echo: Echo = _quiet,
    progress: Callable[[int], Progress] | None = None,
    workers: int = WORKERS,
    started: float | None = None,
) -> MirrorResult:
    """Mirror `pins` from `upstream` into `repo`. `progress(total_bytes)` returns the per-chunk callback
    (a progress bar); nothing is written unless every file downloaded and verified. `started` (a
    time.monotonic() value) is when the run began, resolution included."""
    started = time.monotonic() if started is None else started
    repo.store.check()
    the_plan = plan(repo, upstream, pins, n, where or upstream.shown)
    result = MirrorResult(the_plan, dry_run=dry_run)
    if dry_run:
        for p in the_plan.new:
            echo(f"would add {p.file.filename} ({human_size(p.file.size or 0)})")
        result.seconds = time.monotonic() - started
        return result
    tick = progress(the_plan.new_bytes) if progress and the_plan.new else (lambda _n: None)
    with tempfile.TemporaryDirectory(prefix="pypapo-mirror-") as tmp:
        scratch = Path(tmp)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            fetched = list(pool.map(lambda p: _fetch(upstream, p, scratch, tick), the_plan.new))
            files = list(pool.map(_validate, fetched))
        result.downloaded_bytes = sum(f.size for f in files)
        # Everything is verified: now write. New projects join the root index first, in one update
        # (listed before their pages exist, as the engine requires); then every object, and every
        # project's pages in one batch, each page under its own compare-and-swap.
        groups: dict[str, list[MirroredFile]] = {}
        for f in files:
            groups.setdefault(f.project, []).append(f)
        repo.ensure_listed(*groups)
        outcomes = repo.import_mirrored(groups, origin=upstream.shown, yanks=the_plan.upstream_yanks)
        for _project, outcome in sorted(outcomes.items()):
            result.added += outcome.added
            result.yanks_updated += outcome.yanks_updated
            for name in outcome.added:
                echo(f"added {name}")
    result.seconds = time.monotonic() - started
    return result

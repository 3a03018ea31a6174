"""Pure: what a lock file pins (uv.lock, pylock.toml, poetry.lock, requirements.txt with hashes).

A lock is taken as it is: its versions, its files, its hashes. Anything that is not a distribution
from an index (git, a URL, a local path, an editable) is refused, and so is a lock that names another
index than the one mirrored from, or a requirement without a hash. `--from` is compared with the
lock's own index URLs; file URLs are compared with the upstream's later (mirror.py), by filename.
"""

from __future__ import annotations

import shlex
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provisioner.errors import PypapoError

LOCK_KINDS = ("uv.lock", "pylock.toml", "poetry.lock", "requirements.txt")


class LockError(PypapoError):
    """The lock file cannot be mirrored as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class LockedFile:
    filename: str
    sha256: str
    url: str | None = None  # where the lock says it is (None: poetry.lock names files only)


@dataclass(frozen=True)
class Pin:
    """One version a lock pins, and how its files are chosen."""

    project: str  # normalized
    version: str  # normalized
    files: tuple[LockedFile, ...] = ()  # exactly these files (uv.lock, pylock.toml, poetry.lock)
    hashes: frozenset[str] = field(default_factory=frozenset)  # any file with one of these (requirements)


def same_index(a: str, b: str) -> bool:
    """Two index URLs name the same index (credentials, case of the host and a trailing slash aside)."""

    def key(u: str) -> tuple[str, str, str]:
        p = urllib.parse.urlsplit(u.strip())
        host = (p.hostname or "").lower()
        netloc = f"{host}:{p.port}" if p.port else host
        return p.scheme.lower(), netloc, p.path.rstrip("/")

    return key(a) == key(b)


def kind_of(name: str) -> str:
    base = PurePosixPath(name).name
    if base == "uv.lock":
        return "uv.lock"
    if base == "pylock.toml" or (base.startswith("pylock.") and base.endswith(".toml")):
        return "pylock.toml"
    if base == "poetry.lock":
        return "poetry.lock"
    if base.endswith(".txt") or base.endswith(".in"):
        return "requirements.txt"
    raise LockError(
        f"{name}: not a lock file pypapo reads (uv.lock, pylock.toml, poetry.lock, requirements.txt"
        " with --hash)"
    )


def _version(where: str, project: str, raw: object) -> str:
    try:
        return str(Version(str(raw)))
    except InvalidVersion:
        raise LockError(f"{where}: {project} has no valid version ({raw!r})") from None


def _sha(where: str, what: str, value: object) -> str:
    text = str(value or "")
    algo, _, digest = text.partition(":") if ":" in text else ("sha256", "", text)
    if algo != "sha256" or len(digest) != 64:
        raise LockError(f"{where}: {what} has no sha256 hash (got {text or 'none'!r})")
    return digest.lower()


def _filename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def parse(name: str, data: bytes, source: str) -> list[Pin]:
    """The pins of lock file `name` (its bytes), checked against the index `source` (--from)."""
    kind = kind_of(name)
    try:
        if kind == "requirements.txt":
            return _requirements(name, data.decode(), source)
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockError(f"{name}: not a readable {kind} ({exc})") from None
    return {"uv.lock": _uv, "pylock.toml": _pylock, "poetry.lock": _poetry}[kind](name, doc, source)


def _uv(where: str, doc: dict, source: str) -> list[Pin]:
    pins = []
    for pkg in doc.get("package", []):
        project = canonicalize_name(str(pkg.get("name", "")))
        src = pkg.get("source", {})
        if any(k in src for k in ("virtual", "editable", "directory")):
            continue  # the project itself (or a workspace member): nothing to mirror
        if "registry" not in src:
            kind = next(iter(src), "no source")
            raise LockError(f"{where}: {project} comes from {kind} {src.get(kind, '')}, not from an index")
        if not same_index(str(src["registry"]), source):
            raise LockError(
                f"{where}: {project} is locked from {src['registry']}, not from --from {source}:"
                " pass --from with the lock's index"
            )
        files = []
        for item in [pkg["sdist"]] if "sdist" in pkg else []:
            files.append(item)
        files += pkg.get("wheels", [])
        locked = []
        for f in files:
            if "url" not in f:
                raise LockError(f"{where}: a file of {project} has no url")
            fn = _filename(f["url"])
            locked.append(LockedFile(fn, _sha(where, fn, f.get("hash")), f["url"]))
        pins.append(Pin(project, _version(where, project, pkg.get("version")), tuple(locked)))
    return pins


def _pylock(where: str, doc: dict, source: str) -> list[Pin]:
    if "lock-version" not in doc:
        raise LockError(f"{where}: no lock-version: not a PEP 751 pylock.toml")
    pins = []
    for pkg in doc.get("packages", []):
        project = canonicalize_name(str(pkg.get("name", "")))
        for kind in ("vcs", "directory", "archive"):
            if kind in pkg:
                raise LockError(f"{where}: {project} comes from a {kind}, not from an index")
        index = pkg.get("index")
        if index is not None and not same_index(str(index), source):
            raise LockError(
                f"{where}: {project} is locked from {index}, not from --from {source}:"
                " pass --from with the lock's index"
            )
        locked = []
        for f in ([pkg["sdist"]] if "sdist" in pkg else []) + pkg.get("wheels", []):
            url = f.get("url")
            if url is None:
                raise LockError(f"{where}: a file of {project} has no url (a local path is not mirrored)")
            fn = f.get("name") or _filename(url)
            locked.append(LockedFile(fn, _sha(where, fn, (f.get("hashes") or {}).get("sha256")), url))
        if not locked:
            raise LockError(f"{where}: {project} lists no files")
        pins.append(Pin(project, _version(where, project, pkg.get("version")), tuple(locked)))
    return pins


def _poetry(where: str, doc: dict, source: str) -> list[Pin]:
    pins = []
    for pkg in doc.get("package", []):
        project = canonicalize_name(str(pkg.get("name", "")))
        src = pkg.get("source")
        if src:
            if src.get("type") != "legacy":
                raise LockError(
                    f"{where}: {project} comes from {src.get('type')} {src.get('url', '')}, not from an index"
                )
            if not same_index(str(src.get("url", "")), source):
                raise LockError(
                    f"{where}: {project} is locked from {src.get('url')}, not from --from {source}:"
                    " pass --from with the lock's index"
                )
        files = pkg.get("files") or []
        if not files:
            raise LockError(f"{where}: {project} lists no files (poetry lock records them with hashes)")
        locked = tuple(LockedFile(f["file"], _sha(where, f["file"], f.get("hash"))) for f in files)
        pins.append(Pin(project, _version(where, project, pkg.get("version")), locked))
    return pins


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append(buf.strip())
        buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _requirements(where: str, text: str, source: str) -> list[Pin]:
    pins = []
    for line in _logical_lines(text):
        words = shlex.split(line)
        if words[0] in ("-i", "--index-url") or words[0].startswith("--index-url="):
            url = words[1] if len(words) > 1 and "=" not in words[0] else words[0].partition("=")[2]
            if not same_index(url, source):
                raise LockError(f"{where}: points at index {url}, not at --from {source}")
            continue
        if words[0] in ("--extra-index-url", "-f", "--find-links", "-e", "--editable", "-r", "-c"):
            raise LockError(f"{where}: `{words[0]}` is not taken: a lock is one file from one index")
        if words[0].startswith("-"):
            continue  # other pip options (--no-binary, ...) do not choose files
        spec: list[str] = []
        hashes: list[str] = []
        it = iter(words)
        for w in it:
            if w == "--hash":
                hashes.append(next(it, ""))
            elif w.startswith("--hash="):
                hashes.append(w.partition("=")[2])
            else:
                spec.append(w)
        try:
            req = Requirement(" ".join(spec))
        except InvalidRequirement as exc:
            raise LockError(f"{where}: cannot read {line!r}: {exc}") from None
        project = canonicalize_name(req.name)
        if req.url:
            raise LockError(f"{where}: {project} points at {req.url}, not at an index")
        exact = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        if len(exact) != 1:
            raise LockError(f"{where}: {project} is not pinned with == (a lock pins every version)")
        if not hashes:
            raise LockError(
                f"{where}: {project}=={exact[0].version} has no --hash (generate a lock with"
                " `uv pip compile --universal --generate-hashes` or `pip-compile --generate-hashes`)"
            )
        digests = frozenset(_sha(where, project, h) for h in hashes)
        pins.append(Pin(project, _version(where, project, exact[0].version), hashes=digests))
    return pins

"""Read a PEP 503/691 index (PyPI's simple API, a company proxy, another pypapo): project pages and files.

Pages are asked for as PEP 691 JSON and read as PEP 503 HTML when that is what comes back. Everything
the page says is checked before it is believed: every distribution must carry a sha256, name a file of
the project asked for, and sit at an http(s) URL. Downloads stream to disk while being hashed, over
one keep-alive connection per thread and host, and retry transient failures (connection errors, 5xx,
429) with backoff. Any other failure is an UpstreamError with one readable line.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import http.client
import io
import json
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from provisioner import loopback
from provisioner.errors import PypapoError
from provisioner.repo import layout

PYPI = "https://pypi.org/simple/"
ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
TIMEOUT = 60.0
ATTEMPTS = 4
MAX_PAGE_BYTES = 64 * 1024 * 1024  # PyPI's largest project pages are a few MB
CHUNK = 1024 * 1024
USER_AGENT = "pypapo-mirror"
_T = TypeVar("_T")


class UpstreamError(PypapoError):
    """The upstream index is unreachable, refuses, or answers something that is not an index."""


class NotFound(UpstreamError):
    pass


@dataclass(frozen=True)
class UpstreamFile:
    """One distribution as the upstream index lists it."""

    filename: str
    url: str  # absolute
    sha256: str
    version: str  # normalized, from the filename
    requires_python: str | None
    yanked: bool | str
    upload_time: str | None  # PEP 700, as the upstream wrote it
    size: int | None
    metadata_sha256: str | None  # PEP 658/714: the upstream serves FILE.metadata with this hash

    @property
    def metadata_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path=parts.path + layout.METADATA_SUFFIX, fragment=""))


@dataclass(frozen=True)
class UpstreamProject:
    name: str  # normalized
    url: str  # the page's URL
    files: tuple[UpstreamFile, ...]


def index_url(text: str) -> str:
    """The index's base URL, validated, with a trailing slash."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PypapoError(f"--from {display(text)!r} must be an http(s) index URL like {PYPI}")
    return text if text.endswith("/") else text + "/"


def display(url: str) -> str:
    """The URL without credentials (for messages and records)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _file_version(filename: str, project: str) -> str | None:
    """The normalized version a distribution filename carries; None if it is no wheel/sdist (.egg,
    .exe, ...: pypapo serves neither). A file of another project is garbage."""
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    if canonicalize_name(name) != project:
        raise ValueError(f"lists {filename}, a file of another project")
    return str(version)


def _metadata_hash(value: object) -> str | None:
    if isinstance(value, dict):
        sha = value.get("sha256")
        return sha if isinstance(sha, str) and len(sha) == 64 else None
    return None


def _yanked(value: object) -> bool | str:
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str):
        return value or True
    raise ValueError(f"yanked must be a boolean or a string, not {value!r}")


def _entry(project: str, page_url: str, raw: dict[str, object]) -> UpstreamFile | None:
    filename, href = raw.get("filename"), raw.get("url")
    if not isinstance(filename, str) or not isinstance(href, str):
        raise ValueError("a file entry without filename or url")
    version = _file_version(filename, project)
    if version is None:
        return None
    url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{filename} is at {url!r}, not an http(s) URL")
    hashes = raw.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not sha and fragment.startswith("sha256="):
        sha = fragment[len("sha256=") :]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise ValueError(f"{filename} has no sha256 (pypapo verifies every byte against it)")
    rp = raw.get("requires-python")
    size = raw.get("size")
    upload = raw.get("upload-time")
    meta = raw.get("core-metadata", raw.get("dist-info-metadata"))
    return UpstreamFile(
        filename=filename,
        url=url,
        sha256=sha.lower(),
        version=version,
        requires_python=rp if isinstance(rp, str) and rp else None,
        yanked=_yanked(raw.get("yanked")),
        upload_time=upload if isinstance(upload, str) else None,
        size=size if isinstance(size, int) and size >= 0 else None,
        metadata_sha256=_metadata_hash(meta),
    )


class _Links(html.parser.HTMLParser):
    """PEP 503 anchors as PEP 691 file entries."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.files: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        a = {k: (v if v is not None else "") for k, v in attrs}
        href = a.get("href")
        if not href:
            return
        path = urllib.parse.urlsplit(href).path
        entry: dict[str, object] = {"filename": urllib.parse.unquote(path.rsplit("/", 1)[-1]), "url": href}
        if "data-requires-python" in a:
            entry["requires-python"] = a["data-requires-python"]
        if "data-yanked" in a:
            entry["yanked"] = a["data-yanked"] or True
        meta = a.get("data-core-metadata", a.get("data-dist-info-metadata"))
        if meta and meta.startswith("sha256="):
            entry["core-metadata"] = {"sha256": meta[len("sha256=") :]}
        self.files.append(entry)


def parse_project_page(project: str, page_url: str, content_type: str, body: bytes) -> UpstreamProject:
    """Pure: a project page (PEP 691 JSON or PEP 503 HTML) as typed files. ValueError if it is not one."""
    if "json" in content_type:
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise ValueError("the JSON page has no files list")
        raw = doc["files"]
        if not all(isinstance(f, dict) for f in raw):
            raise ValueError("a file entry is not an object")
    elif "html" in content_type:
        parser = _Links()
        parser.feed(body.decode("utf-8", errors="replace"))
        raw = parser.files
    else:
        raise ValueError(f"answered {content_type or 'no content type'}, not a simple index page")
    files = [f for f in (_entry(project, page_url, r) for r in raw) if f is not None]
    return UpstreamProject(project, page_url, tuple(files))


@dataclass(frozen=True)
class Proxy:
    """A forward proxy the environment names (`https_proxy`, `http_proxy`), as pip and uv take it:
    spoken to in plain HTTP (`http://`) or over TLS (`https://`, the proxy's certificate checked)."""

    host: str
    port: int
    authorization: str | None  # Proxy-Authorization, from user:password in its URL
    scheme: str = "http"

    @property
    def shown(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class _Inner:
    """TLS to the index inside the TLS to an https:// proxy: Python's ssl cannot wrap an SSLSocket
    (it would write the index's records past the proxy's TLS), so this runs the index's TLS over
    memory buffers and carries its records through the outer socket. What http.client uses of a
    socket: sendall, makefile("rb") (a response's reader: closing it leaves the connection open,
    as a socket's does, for the next request), close."""

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, host: str) -> None:
        self._outer = outer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._run(self._tls.do_handshake)

    def _run(self, step: Callable[..., _T], *args: object) -> _T:
        while True:
            try:
                result = step(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self._outer.recv(CHUNK)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        if data := self._outgoing.read():
            self._outer.sendall(data)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._run(self._tls.write, view) :]

    def recv_into(self, buffer: memoryview) -> int:
        try:
            data = self._run(self._tls.read, len(buffer))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0
        buffer[: len(data)] = data
        return len(data)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self._outer.close()


class _Reader(io.RawIOBase):
    def __init__(self, inner: _Inner) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._inner.recv_into(buffer)


class _TunnelOverTLS(http.client.HTTPSConnection):
    """https://`host` through an https:// proxy: TLS to the proxy, CONNECT, then TLS to `host`."""

    def __init__(self, proxy: Proxy, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._via = proxy

    def connect(self) -> None:
        raw = socket.create_connection((self._via.host, self._via.port), self.timeout)
        outer = self._context.wrap_socket(raw, server_hostname=self._via.host)
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self._via.authorization:
            lines.append(f"Proxy-Authorization: {self._via.authorization}")
        outer.sendall(("\r\n".join([*lines, "", ""])).encode("latin-1"))
        # The proxy's answer, read as http.client reads its own tunnel's: nothing follows it until
        # the TLS below speaks first.
        answer = self.response_class(outer, method="CONNECT")  # type: ignore[arg-type]
        _version, status, reason = answer._read_status()  # type: ignore[attr-defined]
        while answer.fp.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # its headers
        if status != 200:
            outer.close()
            raise OSError(f"Tunnel connection failed: {status} {reason.strip()}")
        self.sock = _Inner(outer, self._context, self.host)  # type: ignore[assignment]


def _basic(parts: urllib.parse.SplitResult) -> str | None:
    """The Basic credentials `user:password@` in a URL give (None without them)."""
    if parts.username is None:
        return None
    user, pw = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy for `scheme`://`host`/ as the environment says (None: `no_proxy` names the host, or
    no proxy is set). Raises UpstreamError for one that cannot be used (a socks5:// proxy...)."""
    url = loopback.environment_proxy(scheme, host)
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(
            f"{scheme}_proxy {display(url)} is not an http:// or https:// proxy address: pypapo speaks "
            "HTTP to its proxy (a CONNECT tunnel for https), as pip and uv do"
        )
    default = 443 if parts.scheme == "https" else 80
    return Proxy(parts.hostname, parts.port or default, _basic(parts), parts.scheme)


class Upstream:
    """An index at `url`; thread-safe (each thread keeps its own connections). Through the proxy the
    environment names, if any (a company network's egress): https by a CONNECT tunnel, http by
    asking the proxy for the absolute URL."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT) -> None:
        self.url = index_url(url)
        self.timeout = timeout
        self._local = threading.local()
        parts = urllib.parse.urlsplit(self.url)
        self._auth = _basic(parts)
        self._auth_host = parts.hostname
        self._auth_tls = parts.scheme == "https"
        self._proxies: dict[tuple[str, str], Proxy | None] = {}  # by (scheme, host), read once

    @property
    def shown(self) -> str:
        return display(self.url)

    # -- HTTP -------------------------------------------------------------------------------------------
    def _proxy(self, scheme: str, host: str) -> Proxy | None:
        key = (scheme, host)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(scheme, host)  # (two threads may both look: the same answer)
        return self._proxies[key]

    def _connection(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str, int | None], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "pool", {}
        )
        key = (scheme, host, port)
        conn = pool.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            proxy = self._proxy(scheme, host)
            if proxy is None:
                conn = cls(host, port, timeout=self.timeout)
            elif scheme == "https" and proxy.scheme == "https":
                conn = _TunnelOverTLS(proxy, host, port, self.timeout)
            elif scheme == "https":  # TLS to the index itself, inside the proxy's tunnel
                conn = cls(proxy.host, proxy.port, timeout=self.timeout)
                tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                conn.set_tunnel(host, port, headers=tunnel)
            else:  # plain http: the absolute URL asked of the proxy, over TLS to an https:// one
                via = http.client.HTTPSConnection if proxy.scheme == "https" else http.client.HTTPConnection
                conn = via(proxy.host, proxy.port, timeout=self.timeout)
            pool[key] = conn
        return conn

    def _target(self, parts: urllib.parse.SplitResult) -> tuple[str, dict[str, str]]:
        """What GET asks for `parts`, and the headers that go with it: the path, or through a proxy
        for plain http the absolute URL (with the proxy's credentials)."""
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        proxy = self._proxy(parts.scheme, parts.hostname or "") if parts.scheme == "http" else None
        if proxy is None:
            return path, {}
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        absolute = f"http://{netloc}{path}"  # (credentials of the index go in Authorization)
        return absolute, {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}

    def _drop(self, scheme: str, host: str, port: int | None) -> None:
        conn = self._local.__dict__.get("pool", {}).pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def _request(self, url: str, accept: str, sink: Path | None = None) -> tuple[str, str, bytes, str, int]:
        """GET `url` (following redirects): (final URL, content type, body, sha256, size). With `sink`
        the body streams into that file instead of memory (body is then b"")."""
        for attempt in range(ATTEMPTS):
            current = url
            try:
                for _hop in range(6):
                    parts = urllib.parse.urlsplit(current)
                    if parts.scheme not in ("http", "https") or not parts.hostname:
                        raise UpstreamError(
                            f"{display(url)} leads to {display(current)!r}, not an http(s) URL"
                        )
                    conn = self._connection(parts.scheme, parts.hostname, parts.port)
                    path, via = self._target(parts)
                    headers = {
                        "Accept": accept,
                        "User-Agent": USER_AGENT,
                        "Accept-Encoding": "identity",
                        **via,
                    }
                    # The index's credentials go to its host only, and never in clear when it is
                    # an https index that redirects to http:// (as requests strips them then).
                    if (
                        self._auth
                        and parts.hostname == self._auth_host
                        and not (self._auth_tls and parts.scheme == "http")
                    ):
                        headers["Authorization"] = self._auth
                    try:
                        conn.request("GET", path, headers=headers)
                        resp = conn.getresponse()
                    except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                        # A keep-alive connection the server closed meanwhile: once more, on a new one.
                        self._drop(parts.scheme, parts.hostname, parts.port)
                        conn = self._connection(parts.scheme, parts.hostname, parts.port)
                        conn.request("GET", path, headers=headers)
                        resp = conn.getresponse()
                    if resp.status in (301, 302, 303, 307, 308):
                        resp.read()
                        location = resp.getheader("Location")
                        if not location:
                            raise UpstreamError(f"{display(current)} redirects nowhere")
                        current = urllib.parse.urljoin(current, location)
                        continue
                    if resp.status == 404:
                        resp.read()
                        raise NotFound(f"{display(current)}: 404 Not Found")
                    if resp.status in (429, 500, 502, 503, 504):
                        resp.read()
                        raise _Transient(f"{display(current)}: {resp.status} {resp.reason}")
                    if resp.status != 200:
                        resp.read()
                        raise UpstreamError(f"{display(current)}: {resp.status} {resp.reason}")
                    ctype = (resp.getheader("Content-Type") or "").lower()
                    return (current, ctype, *self._body(resp, current, sink))
                raise UpstreamError(f"{display(url)}: too many redirects")
            except (OSError, http.client.HTTPException, _Transient) as exc:
                self._drop_all()
                if attempt + 1 == ATTEMPTS:
                    reason = str(exc) if isinstance(exc, _Transient) else f"{type(exc).__name__}: {exc}"
                    parts = urllib.parse.urlsplit(current)
                    proxy = self._proxy(parts.scheme, parts.hostname or "")
                    via = f" through the proxy {proxy.shown} ({parts.scheme}_proxy)" if proxy else ""
                    check = "--from, the network and the proxy" if proxy else "--from and the network"
                    raise UpstreamError(f"cannot reach {self.shown}{via} ({reason}); check {check}") from None
                time.sleep(random.uniform(0.1, 0.5) * 2**attempt)
        raise AssertionError("unreachable")

    def _body(self, resp: http.client.HTTPResponse, url: str, sink: Path | None) -> tuple[bytes, str, int]:
        digest = hashlib.sha256()
        size = 0
        if sink is None:
            body = resp.read(MAX_PAGE_BYTES + 1)
            if len(body) > MAX_PAGE_BYTES:
                raise UpstreamError(f"{display(url)}: page larger than {MAX_PAGE_BYTES} bytes")
            digest.update(body)
            return body, digest.hexdigest(), len(body)
        with open(sink, "wb") as out:
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return b"", digest.hexdigest(), size

    def _drop_all(self) -> None:
        for conn in self._local.__dict__.pop("pool", {}).values():
            conn.close()

    # -- the index ------------------------------------------------------------------------------------
    def project(self, name: str) -> UpstreamProject:
        """The project page of `name`; NotFound if the index does not know it."""
        project = layout.normalize(name)
        url = urllib.parse.urljoin(self.url, urllib.parse.quote(project) + "/")
        try:
            final, ctype, body, _sha, _size = self._request(url, ACCEPT)
        except NotFound:
            raise NotFound(f"no project {project} on {self.shown}") from None
        try:
            return parse_project_page(project, final, ctype, body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"{self.shown} answered garbage for {project}: {exc}") from None

    def download(self, url: str, dest: Path) -> tuple[str, int]:
        """Stream `url` into `dest`: (sha256, size)."""
        _final, _ctype, _body, sha, size = self._request(url, "*/*", sink=dest)
        return sha, size

    def fetch(self, url: str) -> bytes:
        return self._request(url, "*/*")[2]


class _Transient(Exception):
    """A failure worth retrying (5xx, 429)."""

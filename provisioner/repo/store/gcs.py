"""I/O: the GCS backend. Objects in a bucket under an optional prefix, via google-cloud-storage.

Generations and request preconditions are GCS's own; uploads up to MULTIPART_LIMIT are one multipart
request, larger ones resumable (GCS enforces the precondition on both).

Every request is bounded: it is retried (the client library's own notion of a transient error, with
jittered backoff) until PYPAPO_GCS_TIMEOUT seconds (default 60) have passed since it started, and
each attempt waits at most what is left of that budget. A request that has had no answer for a few
seconds says what it is waiting for, then how long it has waited, through `notify` (the CLI: stderr).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from provisioner.errors import PypapoError
from provisioner.repo import layout
from provisioner.repo.location import gs_url, object_name
from provisioner.repo.pools import finish_all, process_pool
from provisioner.repo.store import ObjectInfo, PreconditionFailed, WriteItem, waves

# google-cloud-storage sends uploads up to this size as one multipart request, larger ones resumable.
MULTIPART_LIMIT = 8 * 1024 * 1024
GCS_THREADS = 16
READ_POOLS = ("pypapo-gcs-read1", "pypapo-gcs-read2")  # `together`'s, by depth (not write_many's)

LIST_PAGE = 1000

TIMEOUT_ENV = "PYPAPO_GCS_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds one request may take, its retries included
CONNECT_TIMEOUT = 10.0  # per attempt (a TCP connect that takes longer is not coming)
READ_TIMEOUT = 30.0  # per attempt: silence on an open connection (not a transfer's total time)
NOTICE_AFTER = 3.0  # a request waiting longer than this says what it waits for
PROGRESS_EVERY = 5.0  # ... and then how long it has waited, this often

T = TypeVar("T")
Notify = Callable[[str], None]


def gcs_timeout() -> float:
    """The request budget from PYPAPO_GCS_TIMEOUT (seconds), or the default."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise PypapoError(f"{TIMEOUT_ENV} must be a number of seconds above 0, not {raw!r}")
    return value


@dataclass
class _Call:
    action: str
    started: float
    last_error: str = ""


@dataclass
class _Watch:
    """The requests in flight, and one thread that speaks for the slowest of them."""

    notify: Notify
    location: str
    endpoint: str
    timeout: float
    calls: dict[int, _Call] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    said: float = 0.0  # when we last said something (monotonic); 0: not yet
    thread: threading.Thread | None = None

    def begin(self, action: str) -> int:
        call = _Call(action, time.monotonic())
        with self.lock:
            self.calls[id(call)] = call
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="pypapo-gcs-watch", daemon=True)
                self.thread.start()
        return id(call)

    def failed(self, key: int, exc: Exception) -> None:
        with self.lock:
            if key in self.calls:
                self.calls[key].last_error = _reason(exc)

    def end(self, key: int) -> None:
        with self.lock:
            self.calls.pop(key, None)
            if not self.calls:
                self.said = 0.0  # the next slow request announces itself again

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                if not self.calls:
                    continue
                oldest = min(self.calls.values(), key=lambda c: c.started)
                now = time.monotonic()
                waited = now - oldest.started
                if waited < NOTICE_AFTER or (self.said and now - self.said < PROGRESS_EVERY):
                    continue
                first = not self.said
                self.said = now
            why = f": {oldest.last_error}" if oldest.last_error else ": no answer yet"
            if first:
                self.notify(
                    f"waiting for {self.location} ({self.endpoint}) to answer ({oldest.action}){why}; "
                    f"retrying for up to {self.timeout:g} s ({TIMEOUT_ENV})"
                )
            else:
                self.notify(f"still waiting for {self.location}: {waited:.0f} s of {self.timeout:g} s{why}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _reason(exc: BaseException) -> str:
    """What went wrong on the wire, short: urllib3 wraps `[Errno 111] Connection refused` in a
    paragraph naming the pool and the URL."""
    text = _first_line(exc)
    if m := _ERRNO.search(text):
        return m.group(0).strip()
    if "timed out" in text.lower():
        return "no answer (timed out)"
    return text[:200]


def _widen_pool(client: object) -> None:
    """Room in the HTTP client's connection pool for every request this store has in flight: past
    requests' default of 10, each request more opens a connection of its own (a TCP and a TLS
    handshake: round trips) and closes it after. A pool configured otherwise (mutual TLS) stays."""
    from requests.adapters import HTTPAdapter

    session = getattr(client, "_http", None)
    if session is None or not hasattr(session, "get_adapter"):
        return
    for prefix in ("https://", "http://"):  # (http: the emulator's)
        if type(session.get_adapter(prefix)) is HTTPAdapter:
            size = GCS_THREADS * (len(READ_POOLS) + 1)  # write_many's threads and together's, nested
            session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=size))


def _fingerprint(size: int | None, digest: str) -> str:
    return f"gcs:{size}:{digest}"


def _credentials_error() -> PypapoError:
    return PypapoError(
        "no usable Google credentials: run `gcloud auth application-default login` "
        "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key)"
    )


class GCSStore:
    """Objects in a GCS bucket under an optional prefix, via google-cloud-storage."""

    # Each read is a round trip: as many in flight as the client's connection pool keeps.
    reads_in_flight = GCS_THREADS

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: object | None = None,
        timeout: float | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.location = gs_url(bucket, self.prefix)
        self._client = client
        self._bucket = None
        self._refresh_lock = threading.Lock()
        self.timeout = gcs_timeout() if timeout is None else timeout
        self.endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "storage.googleapis.com"
        self._watch = _Watch(notify, self.location, self.endpoint, self.timeout) if notify else None

    def _call(self, action: str, fn: Callable[[tuple[float, float]], T]) -> T:
        """fn(timeout) with the library's retries replaced by ours: transient errors are retried with
        jittered backoff until `self.timeout` has passed since the start, each attempt given at most
        what is left. Anything else (NotFound, PreconditionFailed, ...) goes straight to the caller."""
        from google.cloud.storage.retry import _should_retry  # the library's own transient-error test

        start = time.monotonic()
        deadline = start + self.timeout
        key = self._watch.begin(action) if self._watch else 0
        try:
            for attempt in range(1_000_000):
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    return fn((min(CONNECT_TIMEOUT, remaining), min(READ_TIMEOUT, remaining)))
                except Exception as exc:
                    if not _should_retry(exc):
                        raise
                    if self._watch:
                        self._watch.failed(key, exc)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._gave_up(exc) from None
                    # Back off, but never past the deadline: the budget is spent trying, so "did not
                    # answer within N s" is true when it is said.
                    time.sleep(min(random.uniform(0.1, min(8.0, 0.5 * 2**attempt)), left))
            raise AssertionError("unreachable")
        finally:
            if self._watch:
                self._watch.end(key)

    def _gave_up(self, exc: Exception) -> PypapoError:
        return PypapoError(
            f"{self.location} did not answer within {self.timeout:g} s ({TIMEOUT_ENV}); last error: "
            f"{_reason(exc)}. Check the network path to {self.endpoint} (proxy, firewall, DNS, "
            f"Private Google Access), or give it longer with {TIMEOUT_ENV}=SECONDS"
        )

    # -- plumbing ---------------------------------------------------------------------------------
    def _get_bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            if self._client is None:
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    self._client = storage.Client(project=None)
                else:
                    import google.auth
                    import google.auth.exceptions

                    try:
                        creds, _project = google.auth.default(
                            scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                        )
                    except google.auth.exceptions.DefaultCredentialsError:
                        raise _credentials_error() from None
                    # The bucket names the data; object calls need no project.
                    self._client = storage.Client(project=None, credentials=creds)
            _widen_pool(self._client)
            self._bucket = self._client.bucket(self.bucket_name)  # type: ignore[attr-defined]
        return self._bucket

    def _full(self, name: str) -> str:
        return object_name(self.prefix, name)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _translate(self, exc: Exception) -> Exception:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        if isinstance(exc, aexc.RefreshError | aexc.DefaultCredentialsError):
            return _credentials_error()
        if isinstance(exc, gexc.Unauthorized):
            return _credentials_error()
        if isinstance(exc, gexc.Forbidden):
            return PypapoError(
                f"permission denied on gs://{self.bucket_name}: publishing needs roles/storage.objectUser on"
                " the bucket (`provision grant MEMBER --role publisher`); reading needs"
                " roles/storage.objectViewer (or your credentials are another account's)"
            )
        if isinstance(exc, gexc.NotFound):
            return self._missing_bucket()
        if isinstance(exc, gexc.GoogleAPIError | OSError):
            # A server error that is not transient: one line.
            return PypapoError(f"request to gs://{self.bucket_name} failed ({_first_line(exc)}); retry")
        return exc

    def _missing_bucket(self) -> PypapoError:
        return PypapoError(
            f"bucket gs://{self.bucket_name} does not exist (or is in another project): check --repo, "
            "or create it with `provision create`"
        )

    # -- interface --------------------------------------------------------------------------------
    def check(self) -> None:
        bucket = self._get_bucket()
        try:
            # objects.list is what objectViewer/objectAdmin grant (buckets.get is not); 404 = no bucket.
            self._call(
                "listing objects",
                lambda timeout: list(
                    bucket.client.list_blobs(
                        bucket, prefix=self._full(""), max_results=1, retry=None, timeout=timeout
                    )
                ),
            )
        except PypapoError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    def read(self, name: str) -> tuple[bytes, int]:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            data = self._call(
                f"reading {name}", lambda timeout: blob.download_as_bytes(retry=None, timeout=timeout)
            )
        except PypapoError:
            raise
        except gexc.NotFound:
            return b"", 0
        except Exception as exc:
            raise self._translate(exc) from None
        # The download response carries x-goog-generation: bytes and generation of the same version.
        return data, int(blob.generation)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        blob.cache_control = layout.cache_control(name)
        # Uploads up to MULTIPART_LIMIT go as a single multipart request (precondition enforced by
        # GCS and by fake-gcs-server); larger distributions go resumable, where GCS enforces it too.
        # A retried upload whose first attempt did land fails its precondition: callers re-read, as
        # they do when another writer got there first.
        try:
            self._call(
                f"writing {name}",
                lambda timeout: blob.upload_from_string(
                    data,
                    content_type=layout.content_type(name),
                    if_generation_match=if_generation_match,
                    retry=None,
                    timeout=timeout,
                ),
            )
        except PypapoError:
            raise
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None
        return int(blob.generation)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            self._call(
                f"deleting {name}",
                lambda timeout: blob.delete(
                    if_generation_match=if_generation_match, retry=None, timeout=timeout
                ),
            )
        except PypapoError:
            raise
        except gexc.NotFound:
            if if_generation_match not in (None, 0):
                raise PreconditionFailed(name) from None
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None

    def remove_stale_temporaries(self) -> int:
        return 0  # uploads are atomic: a killed one leaves nothing behind

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        results = [0] * len(items)

        def one(i: int) -> None:
            j = after[i] if i < len(after) else None
            if j is not None and not results[j]:
                return
            item = items[i]
            with contextlib.suppress(PreconditionFailed):
                results[i] = self.write(item.name, item.data, if_generation_match=item.if_generation_match)

        # Network-bound: requests in flight side by side, on threads kept for the process (a small
        # batch, a publish's, would otherwise wait for them to start).
        self._refresh_once()  # (a token expires within a long mirror run or reindex)
        for wave in waves(len(items), after):
            pool = process_pool("pypapo-gcs", GCS_THREADS)
            finish_all([pool.submit(one, i) for i in wave])
        return results

    def _refresh_once(self) -> None:
        """A token fetched once before requests fan out: google-auth refreshes without a lock, so
        every thread of a fresh process would fetch its own (N token requests, or N workload
        identity exchanges, where one does)."""
        creds = getattr(self._get_bucket().client, "_credentials", None)
        if creds is None or creds.valid:
            return
        with self._refresh_lock:
            if creds.valid:
                return
            from google.auth.transport.requests import Request

            with contextlib.suppress(Exception):  # the requests refresh again and say what failed
                creds.refresh(Request())

    def _info(self, blob) -> ObjectInfo:
        digest = blob.md5_hash or blob.crc32c or ""
        if digest:
            digest = base64.b64decode(digest).hex()
        updated = blob.updated or blob.time_created
        updated_ns = int(updated.timestamp() * 1e9) if updated else time.time_ns()
        return ObjectInfo(
            name=self._rel(blob.name),
            size=int(blob.size or 0),
            generation=int(blob.generation),
            fingerprint=_fingerprint(blob.size, digest),
            updated_ns=updated_ns,
        )

    def written_fingerprint(self, data: bytes, generation: int) -> str:
        # GCS computes the md5 of what a single (non-composite) upload stored: these very bytes.
        return self.content_fingerprint(data)

    def content_fingerprint(self, data: bytes) -> str:
        return _fingerprint(len(data), hashlib.md5(data).hexdigest())

    def together(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        # A call that calls `together` again (a project's JSON with its pages' generations, in a
        # publish's first round) gets the next pool: a pool waiting on its own threads can deadlock.
        me = threading.current_thread().name
        level = next((i for i, pool in enumerate(READ_POOLS) if me.startswith(pool)), -1)
        if len(calls) < 2 or level + 1 == len(READ_POOLS):
            return [call() for call in calls]
        self._refresh_once()
        futures = [process_pool(READ_POOLS[level + 1], GCS_THREADS).submit(call) for call in calls]
        finish_all(futures)
        return [f.result() for f in futures]

    def stat(self, name: str) -> ObjectInfo | None:
        bucket = self._get_bucket()
        try:
            blob = self._call(
                f"reading {name}",
                lambda timeout: bucket.get_blob(self._full(name), retry=None, timeout=timeout),
            )
        except PypapoError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        return self._info(blob) if blob is not None else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        bucket = self._get_bucket()
        fields = "items(name,size,generation,md5Hash,crc32c,updated,timeCreated),nextPageToken"

        def page(token: str | None, timeout: tuple[float, float]) -> tuple[list, str | None]:
            listing = bucket.client.list_blobs(
                bucket, prefix=self._full(prefix), fields=fields, page_token=token,
                max_results=None, page_size=LIST_PAGE, retry=None, timeout=timeout,
            )  # fmt: skip
            blobs = list(next(listing.pages, []))
            return blobs, listing.next_page_token

        token: str | None = None
        while True:
            # Page by page, each its own bounded request (a retry repeats that page, not the listing).
            try:
                blobs, token = self._call(f"listing {prefix or 'objects'}", functools.partial(page, token))
            except PypapoError:
                raise
            except Exception as exc:
                raise self._translate(exc) from None
            for blob in blobs:
                yield self._info(blob)
            if not token:
                return

"""I/O: the GCS backend. Objects in a bucket under an optional prefix, via google-cloud-storage.

Generations and request preconditions are GCS's own; uploads up to MULTIPART_LIMIT are one multipart
request, larger ones resumable (GCS enforces the precondition on both).
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from provisioner.errors import PypapoError
from provisioner.repo import layout
from provisioner.repo.location import gs_url, object_name
from provisioner.repo.store import ObjectInfo, PreconditionFailed, WriteItem, waves

# google-cloud-storage sends uploads up to this size as one multipart request, larger ones resumable.
MULTIPART_LIMIT = 8 * 1024 * 1024
GCS_THREADS = 16


def _credentials_error() -> PypapoError:
    return PypapoError(
        "no usable Google credentials: run `gcloud auth application-default login` "
        "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key)"
    )


class GCSStore:
    """Objects in a GCS bucket under an optional prefix, via google-cloud-storage."""

    def __init__(self, bucket: str, prefix: str = "", *, client: object | None = None) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.location = gs_url(bucket, self.prefix)
        self._client = client
        self._bucket = None

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
            # Network trouble or a server error that survived the client's retries: one line.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return PypapoError(f"request to gs://{self.bucket_name} failed ({first}); retry")
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
            list(bucket.client.list_blobs(bucket, prefix=self._full(""), max_results=1))
        except Exception as exc:
            raise self._translate(exc) from None

    def read(self, name: str) -> tuple[bytes, int]:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            data = blob.download_as_bytes()
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
        try:
            blob.upload_from_string(
                data, content_type=layout.content_type(name), if_generation_match=if_generation_match
            )
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None
        return int(blob.generation)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        from google.api_core import exceptions as gexc

        blob = self._get_bucket().blob(self._full(name))
        try:
            blob.delete(if_generation_match=if_generation_match)
        except gexc.NotFound:
            if if_generation_match not in (None, 0):
                raise PreconditionFailed(name) from None
        except gexc.PreconditionFailed:
            raise PreconditionFailed(name) from None
        except Exception as exc:
            raise self._translate(exc) from None

    def write_many(self, items: Sequence[WriteItem], *, after: Sequence[int | None] = ()) -> list[int]:
        results = [0] * len(items)

        def one(i: int) -> None:
            j = after[i] if i < len(after) else None
            if j is not None and not results[j]:
                return
            name, data, expected = items[i]
            with contextlib.suppress(PreconditionFailed):
                results[i] = self.write(name, data, if_generation_match=expected)

        # Network-bound: requests in flight side by side.
        with ThreadPoolExecutor(max_workers=GCS_THREADS) as pool:
            for wave in waves(len(items), after):
                list(pool.map(one, wave))
        return results

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
            fingerprint=f"gcs:{blob.size}:{digest}",
            updated_ns=updated_ns,
        )

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            blob = self._get_bucket().get_blob(self._full(name))
        except Exception as exc:
            raise self._translate(exc) from None
        return self._info(blob) if blob is not None else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        bucket = self._get_bucket()
        fields = "items(name,size,generation,md5Hash,crc32c,updated,timeCreated),nextPageToken"
        try:
            for blob in bucket.client.list_blobs(bucket, prefix=self._full(prefix), fields=fields):
                yield self._info(blob)
        except Exception as exc:
            raise self._translate(exc) from None

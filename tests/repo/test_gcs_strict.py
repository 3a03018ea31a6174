"""The GCS stand-in refuses what GCS refuses (tests/fixtures/gcs_front.py in front of fake-gcs-server).

Each case is one where fake-gcs-server alone carries out a request GCS refuses, so that a test of
our code on the GCS backend would pass whatever the code did: a conditional delete, a resumable
upload's precondition (checked by GCS when the upload completes), and a partial response."""

from __future__ import annotations

import os

import pytest
import requests
from google.api_core import exceptions as gexc

from provisioner.repo.store import PreconditionFailed, open_store
from provisioner.repo.store.gcs import MULTIPART_LIMIT
from tests.fixtures.gcs import FakeGCS
from tests.fixtures.gcs_front import FieldsError, parse_fields, select


@pytest.fixture
def bucket(fake_gcs: FakeGCS):
    return fake_gcs.client().bucket(fake_gcs.create_bucket())


def test_a_delete_on_a_stale_generation_is_refused_and_the_object_stays(bucket) -> None:
    blob = bucket.blob("simple/a/index.json")
    blob.upload_from_string(b"one")
    first = blob.generation
    blob.upload_from_string(b"two")
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("simple/a/index.json").delete(if_generation_match=first)
    with pytest.raises(gexc.PreconditionFailed):  # 0: only if there is none
        bucket.blob("simple/a/index.json").delete(if_generation_match=0)
    assert bucket.blob("simple/a/index.json").download_as_bytes() == b"two"
    bucket.blob("simple/a/index.json").delete(if_generation_match=blob.generation)
    assert bucket.get_blob("simple/a/index.json") is None


def test_a_resumable_upload_is_refused_when_it_completes_if_its_condition_no_longer_holds(
    bucket, fake_gcs: FakeGCS
) -> None:
    """As GCS: the session starts while there is no object; another writer creates it; the upload's
    last request is refused, and the other writer's bytes stay."""
    session = bucket.blob("simple/big/big-1.0.tar.gz").create_resumable_upload_session(if_generation_match=0)
    bucket.blob("simple/big/big-1.0.tar.gz").upload_from_string(b"theirs", if_generation_match=0)
    data = b"ours" * 1000
    answer = requests.put(
        session, data=data, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
    )
    assert answer.status_code == 412
    assert answer.json()["error"]["errors"][0]["reason"] == "conditionNotMet"
    assert bucket.blob("simple/big/big-1.0.tar.gz").download_as_bytes() == b"theirs"


def test_a_large_write_through_the_store_keeps_its_precondition(fake_gcs: FakeGCS) -> None:
    name = fake_gcs.create_bucket()
    store = open_store(f"gs://{name}")
    data = os.urandom(MULTIPART_LIMIT + 1)
    gen = store.write("simple/big/big-1.0.tar.gz", data, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        store.write("simple/big/big-1.0.tar.gz", b"x" + data, if_generation_match=0)
    assert store.read("simple/big/big-1.0.tar.gz") == (data, gen)


def test_a_listing_answers_only_the_fields_it_asks_for(bucket, fake_gcs: FakeGCS) -> None:
    bucket.blob("simple/p/p-1.0.tar.gz").upload_from_string(b"sdist")
    client = fake_gcs.client()
    [blob] = client.list_blobs(bucket, fields="items(name),nextPageToken")
    assert (blob.name, blob.size, blob.generation, blob.md5_hash) == (
        "simple/p/p-1.0.tar.gz",
        None,
        None,
        None,
    )
    [full] = client.list_blobs(bucket)
    assert full.size == 5 and full.generation
    with pytest.raises(gexc.BadRequest):
        list(client.list_blobs(bucket, fields="items(name"))


def test_the_store_s_listing_asks_for_every_field_it_reads(fake_gcs: FakeGCS) -> None:
    store = open_store(f"gs://{fake_gcs.create_bucket()}")
    gen = store.write("simple/p/p-1.0.tar.gz", b"sdist", if_generation_match=0)
    [info] = store.list("simple/")
    assert (info.name, info.size, info.generation) == ("simple/p/p-1.0.tar.gz", 5, gen)
    assert info.fingerprint == store.stat("simple/p/p-1.0.tar.gz").fingerprint


def test_partial_response_selectors() -> None:
    assert parse_fields("items(name,size),nextPageToken") == {
        "items": {"name": {}, "size": {}},
        "nextPageToken": {},
    }
    assert parse_fields("a/b,c") == {"a": {"b": {}}, "c": {}}
    doc = {"items": [{"name": "x", "size": "5", "md5Hash": "h"}], "kind": "storage#objects"}
    assert select(doc, parse_fields("items(name)")) == {"items": [{"name": "x"}]}
    for bad in ("items(name", "items)", "", "a,,b", "a/"):
        with pytest.raises(FieldsError):
            parse_fields(bad)

"""Pure: CEP 16 sharded repodata (what rattler's gateway reads: rattler_conda_types `Shard` and
`ShardedRepodata`).

- `<subdir>/repodata_shards.msgpack.zst`: zstd(msgpack({"version": 1, "info": {"subdir", "base_url":
  "./", "shards_base_url": "./shards/", "created_at"}, "shards": {name: sha256 as 32 raw bytes}})).
- `<subdir>/shards/<sha256 hex>.msgpack.zst`: zstd(msgpack({"packages", "packages.conda", "removed"}))
  for one package name; the hash is of these compressed bytes, so a shard's URL names its content and
  it is served immutable. `sha256` and `md5` of records are raw bytes, as the CEP specifies.

Encoding is deterministic (sorted keys, fixed compression level): the same records give the same shard,
so a publish that touches one name writes one new shard, and two publishers that agree write the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

from provisioner.repo.conda.repodata import Record, Repodata

INDEX_VERSION = 1
LEVEL = 19  # shards and the index are small; the best ratio costs little time
MAX_INDEX_BYTES = 256 * 1024 * 1024  # decompressed; bounds what a corrupt stored index can cost


class CorruptShardIndex(ValueError):
    """A stored shard index does not decode."""


@dataclass(frozen=True)
class Shard:
    sha256: str  # hex of `data`
    data: bytes  # the compressed bytes, as stored


def _pack_record(record: Record) -> Record:
    out = dict(sorted(record.items()))
    for key in ("sha256", "md5"):
        if isinstance(out.get(key), str):
            out[key] = bytes.fromhex(out[key])
    return out


def _unpack_record(record: Record) -> Record:
    out = dict(record)
    for key in ("sha256", "md5"):
        if isinstance(out.get(key), bytes):
            out[key] = out[key].hex()
    return out


def encode_shard(part: Repodata) -> Shard:
    """The shard of one name (`part` = Repodata.for_name(name))."""
    doc = {
        "packages": {fn: _pack_record(r) for fn, r in sorted(part.packages.items())},
        "packages.conda": {fn: _pack_record(r) for fn, r in sorted(part.conda.items())},
        "removed": sorted(part.removed),
    }
    data = zstandard.ZstdCompressor(level=LEVEL).compress(msgpack.packb(doc, use_bin_type=True))
    return Shard(hashlib.sha256(data).hexdigest(), data)


def decode_shard(data: bytes, subdir: str) -> Repodata:
    doc = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_INDEX_BYTES), raw=False
    )
    return Repodata(
        subdir,
        {fn: _unpack_record(r) for fn, r in doc.get("packages", {}).items()},
        {fn: _unpack_record(r) for fn, r in doc.get("packages.conda", {}).items()},
        set(doc.get("removed", [])),
    )


def encode_index(subdir: str, shards: dict[str, str], now: dt.datetime | None = None) -> bytes:
    """The shard index for `shards` (name -> sha256 hex)."""
    created = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    doc: dict[str, Any] = {
        "info": {"base_url": "./", "created_at": created, "shards_base_url": "./shards/", "subdir": subdir},
        "shards": {name: bytes.fromhex(h) for name, h in sorted(shards.items())},
        "version": INDEX_VERSION,
    }
    return zstandard.ZstdCompressor(level=LEVEL).compress(msgpack.packb(doc, use_bin_type=True))


def decode_index(data: bytes) -> dict[str, str]:
    """name -> sha256 hex of a stored shard index (b"": none yet)."""
    if not data:
        return {}
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_INDEX_BYTES)
        doc = msgpack.unpackb(raw, raw=False)
        return {str(name): bytes(h).hex() for name, h in doc["shards"].items()}
    except (zstandard.ZstdError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptShardIndex(str(exc)) from None

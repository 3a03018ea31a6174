"""Pure: the conda channel's part of the layout contract (docs/architecture.md): object names, subdirs,
content types and caching.

    conda/channeldata.json
    conda/<subdir>/repodata.json           the classic index (the channel's source of truth)
    conda/<subdir>/repodata.json.zst       the same bytes, zstd-compressed (CEP 15)
    conda/<subdir>/repodata_shards.msgpack.zst   CEP 16 shard index: name -> sha256 of its shard
    conda/<subdir>/shards/<sha256>.msgpack.zst   one shard per package name, content-addressed
    conda/<subdir>/<name>-<version>-<build>.conda | .tar.bz2
"""

from __future__ import annotations

from typing import Literal

CONDA = "conda"
CHANNELDATA = f"{CONDA}/channeldata.json"
REPODATA = "repodata.json"
REPODATA_ZST = "repodata.json.zst"
SHARD_INDEX = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"
SHARD_SUFFIX = ".msgpack.zst"

PackageFormat = Literal[".conda", ".tar.bz2"]
PACKAGE_SUFFIXES: tuple[PackageFormat, ...] = (".conda", ".tar.bz2")

# The platform subdirs conda and rattler know (rattler_conda_types::Platform), plus noarch. A package's
# subdir must be one of them, and NGINX answers an empty repodata.json for each one nothing was
# published into (conda and pixi ask for noarch and the platform's subdir of every channel).
PLATFORM_SUBDIRS = (
    "linux-32",
    "linux-64",
    "linux-aarch64",
    "linux-armv6l",
    "linux-armv7l",
    "linux-loongarch64",
    "linux-ppc",
    "linux-ppc64",
    "linux-ppc64le",
    "linux-riscv32",
    "linux-riscv64",
    "linux-s390x",
    "osx-64",
    "osx-arm64",
    "win-32",
    "win-64",
    "win-arm64",
    "freebsd-32",
    "freebsd-64",
    "freebsd-arm64",
    "emscripten-wasm32",
    "emscripten-wasm64",
    "wasi-wasm32",
    "zos-z",
    "ios-arm64",
    "iossimulator-64",
    "iossimulator-arm64",
    "android-32",
    "android-64",
    "android-aarch64",
    "android-armv7a",
)
NOARCH = "noarch"
SUBDIRS = (NOARCH, *PLATFORM_SUBDIRS)

JSON_TYPE = "application/json"
ZSTD_TYPE = "application/zstd"
PACKAGE_TYPE = "application/octet-stream"  # never a compression type: clients must get the bytes hashed


def is_package_filename(filename: str) -> bool:
    return filename.endswith(PACKAGE_SUFFIXES)


def is_channel_object(name: str) -> bool:
    return name.startswith(f"{CONDA}/")


def package_object(subdir: str, filename: str) -> str:
    return f"{CONDA}/{subdir}/{filename}"


def repodata_object(subdir: str) -> str:
    return f"{CONDA}/{subdir}/{REPODATA}"


def repodata_zst_object(subdir: str) -> str:
    return f"{CONDA}/{subdir}/{REPODATA_ZST}"


def shard_index_object(subdir: str) -> str:
    return f"{CONDA}/{subdir}/{SHARD_INDEX}"


def shard_object(subdir: str, sha256_hex: str) -> str:
    return f"{CONDA}/{subdir}/{SHARDS_DIR}/{sha256_hex}{SHARD_SUFFIX}"


def content_type(name: str) -> str:
    if name.endswith(".json"):
        return JSON_TYPE
    if name.endswith(".zst"):
        return ZSTD_TYPE
    return PACKAGE_TYPE


def is_immutable(name: str) -> bool:
    """Packages and content-addressed shards never change; the indexes are revalidated."""
    return is_package_filename(name) or f"/{SHARDS_DIR}/" in name

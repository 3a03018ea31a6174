"""The test's stand-in for gcsfuse: a Debian package named ``gcsfuse`` whose /usr/bin/gcsfuse is a script.

Compute Engine's gcsfuse mounts a bucket from storage.googleapis.com; this machine cannot reach Google, so
the test ships a package with the same name and the same command line (flags, ``--config-file``, BUCKET,
MOUNTPOINT) that mounts the bucket from the fake-gcs-server on the host side of the veth with Debian's
``rclone mount`` (read-only, honouring the config file's ``only-dir`` prefix). It refuses flags that real
gcsfuse does not have, so a typo in the appliance's unit still fails here. The only thing it takes from
outside its command line is the emulator's address, from /etc/pypapo-test/gcs-endpoint, which the test
writes (on GCE that role is played by the metadata server's credentials and Google's DNS).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

STANDIN_VERSION = "0.0.0+pypapo.test.standin"

GCSFUSE_SCRIPT = r"""#!/bin/bash
# TEST STAND-IN for gcsfuse, built by pypapo's vm test (tests/vm/standin.py). NOT Google's gcsfuse.
# Accepts gcsfuse's command line and config file, and mounts the bucket read-only with `rclone mount`
# against the fake-gcs-server whose URL is in /etc/pypapo-test/gcs-endpoint.
set -euo pipefail

die() { echo "gcsfuse (test stand-in): $*" >&2; exit 2; }

if [ "${1:-}" = "--version" ] || [ "${1:-}" = "-v" ]; then
  echo "gcsfuse version 0.0.0 (test stand-in for pypapo's vm test, mounts with rclone)"
  exit 0
fi

config="" foreground=0 only_dir="" uid="" gid="" file_mode="" dir_mode="" ro=0 allow_other=0 ttl=""
positional=()
while (($#)); do
  arg=$1; shift
  case "$arg" in
    --*=*) val=${arg#*=}; arg=${arg%%=*}; set -- "$val" "$@" ;;
  esac
  case "$arg" in
    --config-file) config=$1; shift ;;
    --foreground) foreground=1 ;;
    --only-dir) only_dir=$1; shift ;;
    --uid) uid=$1; shift ;;
    --gid) gid=$1; shift ;;
    --file-mode) file_mode=$1; shift ;;
    --dir-mode) dir_mode=$1; shift ;;
    --stat-cache-ttl|--type-cache-ttl) ttl=$1; shift ;;
    -o)
      IFS=, read -ra opts <<<"$1"; shift
      for o in "${opts[@]}"; do
        case "$o" in
          ro) ro=1 ;;
          rw) ro=0 ;;
          allow_other) allow_other=1 ;;
          nodev|nosuid|noexec|noatime|relatime|default_permissions|_netdev) ;;
          *) die "unsupported -o option: $o" ;;
        esac
      done ;;
    --implicit-dirs|--debug_fuse|--debug_gcs|--debug_mutex|--enable-nonexistent-type-cache) ;;
    --app-name|--log-file|--log-format|--log-severity|--temp-dir|--cache-dir|--key-file|--billing-project\
    |--max-conns-per-host|--kernel-list-cache-ttl-secs|--metadata-cache-ttl-secs|--stat-cache-max-size-mb\
    |--type-cache-max-size-mb|--file-cache-max-size-mb|--rename-dir-limit|--sequential-read-size-mb\
    |--client-protocol|--custom-endpoint) shift ;;
    -*) die "unknown flag: $arg" ;;
    *) positional+=("$arg") ;;
  esac
done
((${#positional[@]} == 2)) || die "usage: gcsfuse [flags] BUCKET MOUNTPOINT (got: ${positional[*]:-nothing})"
bucket=${positional[0]} mountpoint=${positional[1]}

# The config file is YAML; read the few keys the stand-in honours without a YAML parser. A missing
# config file is an error, as it is for gcsfuse.
yaml_get() {  # yaml_get SECTION KEY: a scalar, or a block list joined with commas (SECTION "" = top level)
  awk -v sec="$1" -v key="$2" '
    function emit(v) { gsub(/["\047]/, "", v); print v; done = 1; exit }
    collecting && /^[ ]*- / { v = $0; sub(/^[ ]*- [ ]*/, "", v); list = list (list == "" ? "" : ",") v; next }
    collecting { emit(list) }
    /^[^ #][^:]*:/ {
      cur = $1; sub(/:.*/, "", cur)
      if (sec == "" && cur == key) { v = $0; sub(/^[^:]*:[ ]*/, "", v); if (v != "") emit(v); collecting = 1 }
      next
    }
    sec != "" && cur == sec && $1 == key":" {
      v = $0; sub(/^[^:]*:[ ]*/, "", v); if (v != "") emit(v); collecting = 1
    }
    END { if (collecting && !done) { gsub(/["\047]/, "", list); print list } }' "$config"
}
if [ -n "$config" ]; then
  [ -r "$config" ] || die "cannot read config file $config"
  : "${only_dir:=$(yaml_get "" only-dir)}"
  v=$(yaml_get file-system uid); [ -z "$v" ] || uid=$v
  v=$(yaml_get file-system gid); [ -z "$v" ] || gid=$v
  v=$(yaml_get file-system file-mode); [ -z "$v" ] || file_mode=$v
  v=$(yaml_get file-system dir-mode); [ -z "$v" ] || dir_mode=$v
  v=$(yaml_get metadata-cache ttl-secs); [ -z "$v" ] || ttl=${v}s
  IFS=, read -ra fuse_opts <<<"$(yaml_get file-system fuse-options)"
  for o in "${fuse_opts[@]}"; do
    case "$o" in
      ro) ro=1 ;;
      rw) ro=0 ;;
      allow_other) allow_other=1 ;;
      *) die "unsupported fuse-options entry: $o" ;;
    esac
  done
fi
[ -d "$mountpoint" ] || die "mount point $mountpoint is not a directory"
endpoint=$(cat /etc/pypapo-test/gcs-endpoint) || die "no /etc/pypapo-test/gcs-endpoint (set up by the test)"

export RCLONE_CONFIG_GCS_TYPE="google cloud storage" RCLONE_CONFIG_GCS_ANONYMOUS=true
export RCLONE_CONFIG_GCS_ENDPOINT="${endpoint%/}/storage/v1/" RCLONE_CONFIG=/dev/null
args=(mount "gcs:$bucket${only_dir:+/${only_dir#/}}" "$mountpoint" --devname "$bucket" --log-level NOTICE)
((ro)) && args+=(--read-only)
((allow_other)) && args+=(--allow-other)
[ -z "$uid" ] || [ "$uid" = -1 ] || args+=(--uid "$uid")
[ -z "$gid" ] || [ "$gid" = -1 ] || args+=(--gid "$gid")
[ -z "$file_mode" ] || args+=(--file-perms "$file_mode")
[ -z "$dir_mode" ] || args+=(--dir-perms "$dir_mode")
[ -z "$ttl" ] || [ "$ttl" = -1s ] || args+=(--dir-cache-time "${ttl}")
if ((foreground)); then
  exec rclone "${args[@]}"
fi
# Like gcsfuse without --foreground: return once the file system is mounted.
exec rclone "${args[@]}" --daemon
"""

CONTROL = """Package: gcsfuse
Version: {version}
Architecture: all
Maintainer: pypapo vm test <nobody@invalid>
Depends: rclone, fuse3
Section: misc
Priority: optional
Description: TEST STAND-IN for gcsfuse (pypapo vm test)
 Mounts a bucket of a local fake-gcs-server with rclone. Not Google's gcsfuse.
"""


def build_gcsfuse_deb(outdir: Path) -> Path:
    """Build gcsfuse_<version>_all.deb into OUTDIR with dpkg-deb; returns its path."""
    tree = outdir / "gcsfuse-standin"
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN/control").write_text(CONTROL.format(version=STANDIN_VERSION))
    script = tree / "usr/bin/gcsfuse"
    script.write_text(GCSFUSE_SCRIPT)
    script.chmod(0o755)
    deb = outdir / f"gcsfuse_{STANDIN_VERSION}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb

#!/bin/bash
# TEST STAND-IN for gcsfuse, built by pypapo's vm test (tests/vm/standin.py). NOT Google's gcsfuse.
# Accepts exactly gcsfuse's command line and config file (its parameter list, from upstream
# cfg/params.yaml), and mounts the bucket read-only with rclone against the fake-gcs-server whose URL is
# in /etc/pypapo-test/gcs-endpoint.
set -euo pipefail
params=${PYPAPO_TEST_GCSFUSE_PARAMS:-@SHARE@/params.tsv}
endpoint_file=${PYPAPO_TEST_GCS_ENDPOINT_FILE:-/etc/pypapo-test/gcs-endpoint}
rclone=${PYPAPO_TEST_RCLONE:-@LIBEXEC@/rclone}

die() { echo "Error: $*" >&2; exit 1; }

declare -A flag_type=() flag_path=() path_type=() section=() value=()
while IFS=$'\t' read -r path flag type; do
  case "$path" in "#"*) continue ;; esac
  flag_type[$flag]=$type
  flag_path[$flag]=$path
  if [ -n "$path" ]; then
    path_type[$path]=$type
    p=$path
    while [[ "$p" == *.* ]]; do p=${p%.*}; section[$p]=1; done
  fi
done <"$params"
flag_type[config-file]=string

is_bool() { case "$1" in 1 | t | T | TRUE | true | True | 0 | f | F | FALSE | false | False) return 0 ;; esac; return 1; }
truthy() { case "$1" in 1 | t | T | TRUE | true | True) return 0 ;; esac; return 1; }
check_value() { # check_value WHAT TYPE VALUE: gcsfuse's decoding of that type
  case "$2" in
    bool) is_bool "$3" || die "invalid argument \"$3\" for $1: strconv.ParseBool: parsing \"$3\": invalid syntax" ;;
    int) [[ "$3" =~ ^-?[0-9]+$ ]] || die "invalid argument \"$3\" for $1: strconv.ParseInt: parsing \"$3\": invalid syntax" ;;
    float64) [[ "$3" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || die "invalid argument \"$3\" for $1: not a float" ;;
    octal) [[ "$3" =~ ^[0-7]+$ ]] || die "invalid argument \"$3\" for $1: not an octal number" ;;
    duration) [[ "$3" =~ ^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$ ]] || die "invalid argument \"$3\" for $1: time: invalid duration \"$3\"" ;;
    logSeverity) [[ "${3^^}" =~ ^(TRACE|DEBUG|INFO|WARNING|ERROR|OFF)$ ]] || die "invalid log severity \"$3\" for $1" ;;
    protocol) [[ "${3,,}" =~ ^(http1|http2|grpc)$ ]] || die "invalid client protocol \"$3\" for $1" ;;
  esac
}

if [ "${1:-}" = "--version" ] || [ "${1:-}" = "-v" ]; then
  echo "gcsfuse version @VERSION@ (TEST STAND-IN for pypapo's vm test, mounts with rclone)"
  exit 0
fi

# --- flags: cobra/pflag, after gcsfuse's convertToPosixArgs (-name is --name) --------------------------
declare -A flags=()
positional=()
while (($#)); do
  arg=$1
  shift
  case "$arg" in
    --) positional+=("$@"); break ;;
    -h | --help) echo "Usage: gcsfuse [flags] bucket mount_point (TEST STAND-IN)"; exit 0 ;;
    -?*) ;;
    *) positional+=("$arg"); continue ;;
  esac
  name=${arg#-}
  name=${name#-}
  has=0 val=""
  if [[ "$name" == *=* ]]; then val=${name#*=}; name=${name%%=*}; has=1; fi
  type=${flag_type[$name]-}
  [ -n "$type" ] || die "unknown flag: --$name"
  if [ "$type" = bool ]; then
    if ((!has)); then val=true; fi # `--flag value` is not a value for a bool: it stays positional
  elif ((!has)); then
    (($#)) || die "flag needs an argument: --$name"
    val=$1
    shift
  fi
  check_value "\"--$name\" flag" "$type" "$val"
  if [ "$type" = "[]string" ] && [ -n "${flags[$name]-}" ]; then val="${flags[$name]},$val"; fi
  flags[$name]=$val
done
((${#positional[@]} == 2)) || die "accepts between 2 and 3 arg(s), received ${#positional[@]} (usage: gcsfuse [flags] bucket mount_point)"
bucket=${positional[0]} mountpoint=${positional[1]}

# --- the config file: YAML (the block subset gcsfuse configs use), every key checked ------------------
# yaml_leaves FILE: "path<TAB>value" per scalar, list items joined with commas; refuses what it cannot read.
yaml_leaves() {
  awk '
    function fail(msg) { print "Error: error while reading the config: yaml: line " NR ": " msg > "/dev/stderr"; bad = 1; exit 1 }
    function unq(v) { sub(/[ \t]+#.*$/, "", v); sub(/[ \t]+$/, "", v)
      if (v ~ /^".*"$/ || v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2); return v }
    function path(d,   i, p) { p = keys[0]; for (i = 1; i <= d; i++) p = p "." keys[i]; return p }
    function flush() { if (listpath != "") { print listpath "\t" list; listpath = ""; list = "" } }
    BEGIN { depth = 0 } # a number: an unset variable would index keys[""]
    /^[ \t]*(#.*)?$/ { next }
    /\t/ { fail("found a tab character that violates indentation") }
    {
      line = $0; match(line, /^ */); ind = RLENGTH; body = substr(line, ind + 1)
      if (body ~ /^- /) {
        if (listpath == "" || ind < listind) fail("unexpected list item")
        item = unq(substr(body, 3)); list = list (list == "" ? "" : ",") item; next
      }
      flush()
      if (body !~ /^[A-Za-z0-9_.-]+:( |$)/) fail("cannot read: " body)
      key = body; sub(/:.*/, "", key); rest = body; sub(/^[^:]*:[ ]*/, "", rest)
      while (depth > 0 && ind <= inds[depth - 1]) depth--
      if (depth == 0 && ind > 0 && !started) fail("bad indentation")
      started = 1
      keys[depth] = key; inds[depth] = ind
      rest = unq(rest)
      if (rest == "") { listpath = path(depth); listind = ind; list = ""; haslist = 1; depth++; continue_map = 1 }
      else if (rest ~ /^\[.*\]$/) { v = substr(rest, 2, length(rest) - 2); gsub(/[ "\047]/, "", v); print path(depth) "\t" v }
      else print path(depth) "\t" rest
    }
    END { if (!bad) flush() }' "$1"
}
if [ -n "${flags[config-file]-}" ]; then
  config=${flags[config-file]}
  [ -r "$config" ] || die "error while reading the config: open $config: no such file or directory"
  leaves="$(yaml_leaves "$config")" || exit 1
  while IFS=$'\t' read -r path val; do
    [ -n "$path" ] || continue
    type=${path_type[$path]-}
    if [ -z "$type" ]; then
      if [ -n "${section[$path]-}" ] && [ -z "$val" ]; then continue; fi # an empty section
      # mapstructure's ErrorUnused: the innermost known section names the key it does not know.
      parent=$path
      while [[ "$parent" == *.* ]]; do
        parent=${parent%.*}
        if [ -n "${section[$parent]-}" ]; then break; fi
      done
      if [ -n "${section[$parent]-}" ] && [ "$parent" != "$path" ]; then
        rest=${path#"$parent".}
        die "error while unmarshalling config: decoding failed due to the following error(s):"$'\n\n'"'$parent' has invalid keys: ${rest%%.*}"
      fi
      die "error while unmarshalling config: decoding failed due to the following error(s):"$'\n\n'"'' has invalid keys: ${path%%.*}"
    fi
    check_value "config key $path" "$type" "$val"
    value[$path]=$val
  done <<<"$leaves"
fi
# Flags win over the config file.
for name in "${!flags[@]}"; do
  if [ -n "${flag_path[$name]-}" ]; then value[${flag_path[$name]}]=${flags[$name]}; fi
done
get() { printf '%s' "${value[$1]-}"; }

ro=0 allow_other=0
IFS=, read -ra opts <<<"$(get file-system.fuse-options)"
for o in "${opts[@]}"; do
  case "$o" in
    ro) ro=1 ;;
    rw) ro=0 ;;
    allow_other) allow_other=1 ;;
    nodev | nosuid | noexec | noatime | relatime | default_permissions | _netdev | "") ;;
    *) die "mount: unsupported fuse option: $o" ;;
  esac
done
only_dir=$(get only-dir)
only_dir=${only_dir#/}
only_dir=${only_dir%/}
[ -d "$mountpoint" ] || die "mount point $mountpoint is not a directory"
endpoint=$(cat "$endpoint_file") || die "no $endpoint_file (set up by the test)"
endpoint=${endpoint%/}

# --- at mount, gcsfuse v3 checks the bucket (GetStorageLayout, then a listing) -------------------------
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
code=$(curl -sS -o "$listing" -w '%{http_code}' --max-time 20   "$endpoint/storage/v1/b/$bucket/o?maxResults=1000${only_dir:+&prefix=$only_dir/}") || code=000
case "$code" in
  200) ;;
  401 | 403)
    die "Error while mounting gcsfuse: mountWithArgs: failed to open bucket \"$bucket\": GetStorageLayout: googleapi: Error $code: Caller does not have storage.objects.list access to the Google Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)., forbidden"
    ;;
  404) die "Error while mounting gcsfuse: mountWithArgs: failed to open bucket \"$bucket\": bucket does not exist" ;;
  *) die "Error while mounting gcsfuse: mountWithArgs: cannot reach storage ($code)" ;;
esac

export RCLONE_CONFIG_GCS_TYPE="google cloud storage" RCLONE_CONFIG_GCS_ANONYMOUS=true
export RCLONE_CONFIG_GCS_ENDPOINT="$endpoint/storage/v1/" RCLONE_CONFIG=/dev/null
args=(mount "gcs:$bucket${only_dir:+/$only_dir}" "$mountpoint" --devname "$bucket" --log-level NOTICE)
if ! truthy "$(get implicit-dirs)"; then
  # Only directories with a placeholder object (and parents that have one) exist for gcsfuse then.
  declare -A placeholder=() implied=()
  while read -r name; do
    name=${name#"${only_dir:+$only_dir/}"}
    if [[ "$name" == */ ]]; then placeholder[${name%/}]=1; fi
    d=$name
    while [[ "$d" == */* ]]; do d=${d%/*}; [ -z "$d" ] || implied[$d]=1; done
  done < <(grep -o '"name": *"[^"]*"' "$listing" | sed 's/^"name": *"//; s/"$//')
  for d in "${!implied[@]}"; do
    visible=1 p=$d
    while :; do
      if [ -z "${placeholder[$p]-}" ]; then visible=0; break; fi
      [[ "$p" == */* ]] || break
      p=${p%/*}
    done
    if ((!visible)); then args+=(--filter "- /$d/**"); fi
  done
fi
((ro)) && args+=(--read-only)
((allow_other)) && args+=(--allow-other)
uid=$(get file-system.uid) gid=$(get file-system.gid)
[ -z "$uid" ] || [ "$uid" = -1 ] || args+=(--uid "$uid")
[ -z "$gid" ] || [ "$gid" = -1 ] || args+=(--gid "$gid")
[ -z "$(get file-system.file-mode)" ] || args+=(--file-perms "$(get file-system.file-mode)")
[ -z "$(get file-system.dir-mode)" ] || args+=(--dir-perms "$(get file-system.dir-mode)")
ttl=$(get metadata-cache.ttl-secs)
[ -z "$ttl" ] || [ "$ttl" = -1 ] || args+=(--dir-cache-time "${ttl}s")
rm -f "$listing"
trap - EXIT
if truthy "$(get foreground)"; then
  exec "$rclone" "${args[@]}"
fi
# Like gcsfuse without --foreground: return once the file system is mounted.
exec "$rclone" "${args[@]}" --daemon

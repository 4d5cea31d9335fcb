#!/usr/bin/env bash
# Builds the images the Kubernetes node tier runs, with no container registry: Debian's
# buildah, root filesystems made by mmdebstrap from Debian's mirror, and binaries built
# here. Each image is written as a docker-archive tarball into .cache/images/ (what
# `ctr -n k8s.io images import FILE` takes, with its tag), and .cache/images/images.json
# maps each name to its ref and archive. `make image` calls this script.
#
#   localhost/hookline:<pyproject version>  the Dockerfile, --build-arg BASE_IMAGE=localhost/hookline-base:bookworm
#   localhost/redis:7                       Debian's redis-server (7.0)
#   localhost/pause:3.10                    tools/pause/pause.c, static, the pod sandbox
#   localhost/jaeger:<tools/jaeger version> .cache/bin/jaeger (tools/build.sh jaeger)
#
# Usage: tools/image.sh [hookline|redis|pause|jaeger ...]   (default: all four)
#
# Needs root (buildah with runc, mmdebstrap in root mode). Everything it keeps lives in
# ${XDG_CACHE_HOME:-~/.cache}/hookline-images (HOOKLINE_IMAGES_CACHE overrides it):
# buildah's storage (never /var/lib/containers), the root filesystems, keyed by a hash of
# mmdebstrap's inputs, and the archives, keyed by a hash of each image's inputs; an
# image whose inputs did not change is linked, not rebuilt. The script runs in a mount
# namespace of its own, so every mount buildah or mmdebstrap makes goes when it ends.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "image: needs root (buildah with runc, mmdebstrap); run it with sudo" >&2
  exit 1
fi
for cmd in buildah mmdebstrap runc gcc unshare flock; do
  command -v "$cmd" >/dev/null || {
    echo "image: $cmd is missing (make system-deps installs it)" >&2
    exit 1
  }
done
if [ -z "${HOOKLINE_IMAGE_NS:-}" ]; then
  export HOOKLINE_IMAGE_NS=$$
  exec unshare --mount --propagation private -- "$0" "$@"
fi

out=${HOOKLINE_IMAGE_DIR:-$repo/.cache/images}
cache=${HOOKLINE_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline-images}
# The CA bundle pip trusts for PyPI (this machine's, with the TLS-intercepting proxy's CA):
# a build secret of the pip step, never a layer. Empty or missing: pip's own bundle.
pip_ca=${HOOKLINE_PIP_CA-/etc/ssl/certs/ca-certificates.crt}
suite=bookworm
mirrors=(
  "deb http://deb.debian.org/debian $suite main"
  "deb http://deb.debian.org/debian $suite-updates main"
  "deb http://deb.debian.org/debian-security $suite-security main"
)
# As Debian's and Python's slim images do: no manuals, docs or translations, but the
# copyright files stay.
dpkg_opts=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
)
env_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

mkdir -p "$out" "$cache/rootfs" "$cache/archives" "$cache/storage" "$cache/tmp"
out=$(cd "$out" && pwd)
exec 9>"$cache/lock"
if ! flock -n 9; then
  echo "image: another tools/image.sh holds $cache/lock; waiting ..."
  flock 9
fi
# Holding the lock, anything left in tmp/ is a killed run's.
rm -rf "${cache:?}/tmp/"*
run=$(mktemp -d "$cache/tmp/run.XXXXXX")
work=$(mktemp -d "$cache/tmp/work.XXXXXX")
export TMPDIR=$cache/tmp
# A storage configuration of our own: /etc/containers/storage.conf may name another
# driver or root. overlay: the kernel's, on the cache's filesystem (ext4 here).
cat >"$run/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/storage"
runroot = "$run/storage"
EOF
export CONTAINERS_STORAGE_CONF=$run/storage.conf
# buildah (as root) keeps a blob info cache in /var/lib/containers/cache, with no option to
# move it. In this mount namespace that path is made unwritable (a read-only bind of the
# deepest folder of it that exists), so buildah keeps that cache in memory and nothing is
# written outside the cache folder; an existing cache of the machine's is left alone.
blob_cache_parent=/var/lib/containers/cache
while [ ! -e "$blob_cache_parent" ]; do blob_cache_parent=$(dirname "$blob_cache_parent"); done
case "$cache/" in
  "$blob_cache_parent"/*) ;;  # the cache folder itself is below it: leave it writable
  *) mount --bind "$blob_cache_parent" "$blob_cache_parent"
     mount -o remount,bind,ro "$blob_cache_parent" "$blob_cache_parent" ;;
esac
export BUILDAH_ISOLATION=oci
buildah() { command buildah --root "$cache/storage" --runroot "$run/storage" --storage-driver overlay "$@"; }
# Working containers left by a failed step go with the run (all in our own storage).
# buildah makes /etc/cni/net.d (a lock file) and runc /run/containerd-style state even
# with host networking; what was not there before goes with the script.
made_here=()
for p in /etc/cni /run/containerd; do [ -e "$p" ] || made_here+=("$p"); done
cleanup() {
  local rc=$?
  buildah rm --all >/dev/null 2>&1 || true
  rm -rf "$run" "$work" "${made_here[@]}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

hash_of() { sha256sum | cut -c1-16; }
script_sum=$(hash_of <"$0")
human() { numfmt --to=iec --suffix=B "$1"; }

# rootfs NAME PACKAGES: sets rootfs_tar and rootfs_key. A root filesystem tarball of
# Debian minbase plus PACKAGES, made once per machine for a given set of inputs.
rootfs() {
  local name=$1 include=$2
  local args=(--variant=minbase --include="$include" --format=tar "${dpkg_opts[@]}")
  rootfs_key=$(printf '%s\n' "$(mmdebstrap --version)" "$(dpkg --print-architecture)" \
    "$suite" "${args[@]}" "${mirrors[@]}" | hash_of)
  rootfs_tar=$cache/rootfs/$name-$rootfs_key.tar
  [ -s "$rootfs_tar" ] && return
  echo "image: making the $name root filesystem (mmdebstrap $suite, +$include) ..."
  local start=$SECONDS
  rm -f "$rootfs_tar.tmp"
  mmdebstrap --quiet "${args[@]}" "$suite" "$rootfs_tar.tmp" "${mirrors[@]}"
  # The runtime mounts /dev; no device nodes in a layer.
  tar --delete --wildcards -f "$rootfs_tar.tmp" './dev/?*' 2>/dev/null || true
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  find "$cache/rootfs" -name "$name-*.tar" ! -name "$(basename "$rootfs_tar")" -delete
  echo "image: made the $name root filesystem in $((SECONDS - start)) s ($(human "$(stat -c %s "$rootfs_tar")"))"
}

# from_rootfs NAME TAR: a buildah working container holding TAR as its one layer.
from_rootfs() {
  local c
  c=$(buildah from --name "hookline-$1-$$" scratch)
  buildah add --quiet "$c" "$2" / >/dev/null
  echo "$c"
}

# tarball DIR TAR: DIR's contents as a tarball of root-owned files (owners as numbers).
tarball() {
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$1" -cf "$2" .
}

declare -A refs=() archives=() keys=()

# publish NAME REF KEY: the built image REF into the per-machine archive for KEY, and
# linked from .cache/images/NAME.tar.
publish() {
  local name=$1 ref=$2 key=$3
  local archive=$cache/archives/$name-$key.tar
  rm -f "$archive.tmp"
  buildah push --quiet "$ref" "docker-archive:$archive.tmp:$ref" >/dev/null
  mv "$archive.tmp" "$archive"
  find "$cache/archives" -name "$name-*.tar" ! -name "$name-$key.tar" -delete
}

# smoke REF USER COMMAND...: COMMAND runs in a container of REF as USER, with no network.
smoke() {
  local ref=$1 user=$2 c
  shift 2
  c=$(buildah from --pull-never --name "hookline-smoke-$$" "$ref")
  local log
  if ! log=$(buildah run --network none --user "$user" "$c" -- "$@" 2>&1); then
    echo "$log" >&2
    echo "image: check failed in $ref as $user: $*" >&2
    exit 1
  fi
  buildah rm "$c" >/dev/null
}

# image NAME REF KEY BUILD-FUNCTION: builds unless the archive for KEY exists.
image() {
  local name=$1 ref=$2 key=$3 fn=$4
  local archive=$cache/archives/$name-$key.tar
  local start=$SECONDS
  if [ -s "$archive" ]; then
    echo "image: $ref is up to date ($name-$key)"
  else
    echo "image: building $ref ..."
    "$fn" "$ref"
    if declare -F "check_$name" >/dev/null; then "check_$name" "$ref"; fi
    publish "$name" "$ref" "$key"
    echo "image: built $ref in $((SECONDS - start)) s"
  fi
  ln -sfn "$archive" "$out/$name.tar"
  echo "image: $ref -> $out/$name.tar ($(human "$(stat -L -c %s "$out/$name.tar")"))"
  refs[$name]=$ref
  archives[$name]=$out/$name.tar
  keys[$name]=$key
}

# --- the Python base: Debian bookworm's python3 (3.11) -------------------------------
base_ref=localhost/hookline-base:$suite
base_rootfs() {
  # passwd: the Dockerfile's final stage creates its user with groupadd/useradd.
  rootfs python-base python3,python3-venv,ca-certificates,passwd
  base_tar=$rootfs_tar
  base_key=$rootfs_key
}
base_image() {
  base_rootfs
  # Tagged with its key too, so a changed root filesystem replaces it.
  if buildah inspect --type image "localhost/hookline-base:$base_key" >/dev/null 2>&1; then
    buildah tag "localhost/hookline-base:$base_key" "$base_ref"
    return
  fi
  echo "image: importing the base root filesystem as $base_ref ..."
  local c
  c=$(from_rootfs base "$base_tar")
  buildah config --env "PATH=$env_path" --env LANG=C.UTF-8 --cmd '["python3"]' \
    --label org.opencontainers.image.description="Debian $suite minbase with python3 (mmdebstrap)" "$c"
  buildah commit --quiet --rm "$c" "$base_ref" >/dev/null
  buildah tag "$base_ref" "localhost/hookline-base:$base_key"
  # Bases of older root filesystems go (their layers with the final prune).
  local old
  for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/hookline-base:' |
    grep -v -e ":$suite\$" -e ":$base_key\$"); do
    buildah rmi "$old" >/dev/null
  done
}

# --- hookline: the project's Dockerfile on that base ---------------------------------
build_hookline() {
  base_image
  local secret=()
  [ -n "$pip_ca" ] && [ -f "$pip_ca" ] && secret=(--secret "id=pipca,src=$pip_ca")
  # Host network: pip reaches PyPI as this machine does (no CNI network for builds here).
  buildah bud --quiet --network host --pull=never --format docker \
    --build-arg "BASE_IMAGE=$base_ref" "${secret[@]}" \
    -f "$repo/Dockerfile" -t "$1" "$repo" >/dev/null
}
check_hookline() {
  # As the chart runs it: uid 10001, the virtualenv's hookline and python, no pip.
  smoke "$1" 10001:10001 hookline --help
  smoke "$1" 10001:10001 python -c 'import hookline.cli, hookline.receiver, hookline.dispatcher, hookline.operator'
  smoke "$1" 10001:10001 sh -c '! python -m pip --version 2>/dev/null'
}
hookline_image() {
  base_rootfs
  local version key
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)
  # The build context is what .dockerignore lets through: pyproject.toml and src/.
  key=$(
    cd "$repo"
    {
      echo "$script_sum $base_key"
      sha256sum Dockerfile .dockerignore pyproject.toml
      find src -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | hash_of
  )
  image hookline "localhost/hookline:$version" "$key" build_hookline
}

# --- redis: Debian's redis-server ------------------------------------------------------
build_redis() {
  local owner c
  owner=$(tar -xOf "$redis_tar" ./etc/passwd | awk -F: '$1=="redis"{print $3":"$4}')
  [ -n "$owner" ] || { echo "image: no redis user in the redis root filesystem" >&2; exit 1; }
  mkdir -p "$work/redis/usr/local/bin" "$work/redis/data"
  # The official redis image builds redis with protected mode off, so a bare
  # `redis-server --appendonly yes` serves other pods; Debian's is built with it on.
  # This wrapper, first on PATH, gives the same default; an explicit
  # `--protected-mode yes` (or one in a config file) still wins, as it comes later.
  cat >"$work/redis/usr/local/bin/redis-server" <<'EOF'
#!/bin/sh
# localhost/redis:7 (hookline tools/image.sh): Debian's redis-server, protected mode off
# by default as in the official redis image.
case "${1:-}" in
  -v | --version | -h | --help | --test-memory | --check-system)
    exec /usr/bin/redis-server "$@" ;;
  "" | --*) exec /usr/bin/redis-server --protected-mode no "$@" ;;
  *) conf=$1; shift; exec /usr/bin/redis-server "$conf" --protected-mode no "$@" ;;
esac
EOF
  chmod 0755 "$work/redis/usr/local/bin/redis-server"
  tarball "$work/redis" "$work/redis.tar"
  # /data belongs to redis: its working directory, where the AOF and RDB files go.
  tar --numeric-owner --owner="${owner%:*}" --group="${owner#*:}" --mtime=@0 \
    -C "$work/redis" -cf "$work/redis-data.tar" ./data
  c=$(from_rootfs redis "$redis_tar")
  buildah add --quiet "$c" "$work/redis.tar" / >/dev/null
  buildah add --quiet "$c" "$work/redis-data.tar" / >/dev/null
  buildah config --env "PATH=$env_path" --env LANG=C.UTF-8 --workingdir /data \
    --user "$owner" --port 6379 --cmd '["redis-server"]' \
    --label org.opencontainers.image.title=redis \
    --label org.opencontainers.image.description="Debian $suite redis-server (mmdebstrap)" "$c"
  buildah commit --quiet --rm "$c" "$1" >/dev/null
}
check_redis() { smoke "$1" redis redis-server --version; }
redis_image() {
  rootfs redis redis-server
  redis_tar=$rootfs_tar
  image redis localhost/redis:7 "$(echo "$script_sum $rootfs_key" | hash_of)" build_redis
}

# --- pause: the pod sandbox ------------------------------------------------------------
build_pause() {
  local c
  mkdir -p "$work/pause"
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/pause/pause" "$here/pause/pause.c"
  tarball "$work/pause" "$work/pause.tar"
  c=$(buildah from --name "hookline-pause-$$" scratch)
  buildah add --quiet "$c" "$work/pause.tar" / >/dev/null
  # 65535: the user Kubernetes' own pause image runs as.
  buildah config --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.title=pause "$c"
  buildah commit --quiet --rm "$c" "$1" >/dev/null
}
check_pause() { smoke "$1" 65535:65535 /pause --version; }
pause_image() {
  local key
  key=$({ echo "$script_sum"; gcc --version | head -1; dpkg-query -W libc6-dev; cat "$here/pause/pause.c"; } | hash_of)
  image pause localhost/pause:3.10 "$key" build_pause
}

# --- jaeger: the statically built all-in-one -----------------------------------------
build_jaeger() {
  local c root=$work/jaeger
  mkdir -p "$root/tmp" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  cp -L "$jaeger_bin" "$root/jaeger"
  # Debian's CA bundle, from the base root filesystem: not this machine's, which trusts
  # the TLS-intercepting proxy.
  tar -xOf "$base_tar" ./etc/ssl/certs/ca-certificates.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\njaeger:x:10001:10001:jaeger:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\njaeger:x:10001:\n' >"$root/etc/group"
  # `localhost` resolves from files (its default config binds localhost:8888); a pod's
  # /etc/hosts is the kubelet's, mounted over this one.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  tarball "$root" "$work/jaeger.tar"
  c=$(buildah from --name "hookline-jaeger-$$" scratch)
  buildah add --quiet "$c" "$work/jaeger.tar" / >/dev/null
  # The embedded all-in-one config listens on ${JAEGER_LISTEN_HOST:-localhost}: in a
  # container it must be every interface, or a Service cannot reach it (as the
  # project's own image sets it).
  buildah config --entrypoint '["/jaeger"]' --user 10001:10001 --workingdir /tmp \
    --env HOME=/tmp --env JAEGER_LISTEN_HOST=0.0.0.0 --port 4317 --port 4318 --port 16686 \
    --label org.opencontainers.image.title=jaeger "$c"
  buildah commit --quiet --rm "$c" "$1" >/dev/null
}
check_jaeger() { smoke "$1" 10001:10001 /jaeger components; }
jaeger_image() {
  jaeger_bin=$repo/.cache/bin/jaeger
  if [ ! -x "$jaeger_bin" ]; then
    echo "image: $jaeger_bin is missing: run tools/build.sh jaeger first" >&2
    exit 1
  fi
  base_rootfs
  local version key
  version=$(awk '$1=="github.com/jaegertracing/jaeger"{print $2}' "$here/jaeger/go.mod")
  key=$({ echo "$script_sum $base_key"; sha256sum <"$jaeger_bin"; } | hash_of)
  image jaeger "localhost/jaeger:${version#v}" "$key" build_jaeger
}

want=${*:-hookline redis pause jaeger}
total=$SECONDS
for name in $want; do
  case $name in
    hookline | redis | pause | jaeger) "${name}_image" ;;
    *) echo "image: unknown image $name (hookline, redis, pause, jaeger)" >&2; exit 2 ;;
  esac
done

# Names, refs and archives for the tests; entries of images not built in this run stay.
entries=()
for n in "${!refs[@]}"; do entries+=("$n" "${refs[$n]}" "${archives[$n]}" "${keys[$n]}"); done
python3 - "$out/images.json" "${entries[@]}" <<'EOF'
import json, os, sys
path, fields = sys.argv[1], sys.argv[2:]
try:
    with open(path) as f:
        images = json.load(f)
except (OSError, ValueError):
    images = {}
for i in range(0, len(fields), 4):
    name, ref, archive, key = fields[i : i + 4]
    images[name] = {"ref": ref, "archive": archive, "key": key}
images = {n: v for n, v in sorted(images.items()) if os.path.exists(v["archive"])}
with open(path + ".tmp", "w") as f:
    json.dump(images, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
EOF
# Images no tag names any more (earlier builds) leave the store.
buildah rmi --prune >/dev/null 2>&1 || true
echo "image: done in $((SECONDS - total)) s; $out/images.json"

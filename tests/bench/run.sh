#!/usr/bin/env bash
# Broker benchmark: durable publishes/s over ZeroMQ at batch sizes 1, 16 and 256 with 1 and 8
# concurrent publishers (pipelined: up to 1,000 messages in flight per publisher), fetch
# throughput reading 1,000-message ranges, and broker memory (RssAnon: resident memory beyond
# LMDB's file-backed mapped pages). Run on demand; figures go to docs/benchmarks.md.
#   tests/bench/run.sh [BUILD_DIR]      (default: build; configure with -DBUILD_TESTING=ON)
# Environment: BENCH_MESSAGES (per run, default 500000), BENCH_RUNS (default 3; medians are
# reported), BENCH_BYTES (data size, default 100),
# BENCH_SYNC (true|false, default true).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
broker=$build/broker/herald-broker
bench=$build/tests/bench/herald-bench
messages=${BENCH_MESSAGES:-500000}
bytes=${BENCH_BYTES:-100}
sync=${BENCH_SYNC:-true}
[[ -x $broker && -x $bench ]] || { echo "build first: cmake --build $build" >&2; exit 1; }

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/herald-bench.XXXXXX)
req="tcp://127.0.0.1:$(port)"
live="tcp://127.0.0.1:$(port)"
pid=""
start_broker() {
  rm -rf "$dir/data"
  "$broker" --listen "$req" --live "$live" --data-dir "$dir/data" --sync="$sync" \
    --map-size 8G --retention-messages 0 --log-level warn 2>>"$dir/broker.log" &
  pid=$!
  for _ in $(seq 100); do
    "$build/cli/herald" ping --broker "$req" --timeout 100 >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "broker did not start" >&2; cat "$dir/broker.log" >&2; exit 1
}
stop_broker() { kill -TERM "$pid"; wait "$pid" || true; }
trap 'kill -TERM $pid 2>/dev/null || true; rm -rf "$dir"' EXIT

echo "# herald broker benchmark $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores; sync=$sync data=${bytes}B"
echo "# fdatasync probe: $(dd if=/dev/zero of="$dir/probe" bs=4k count=1000 oflag=dsync 2>&1 | tail -1)"
# median VALUES...: the middle value of an odd count.
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
rate_of() { sed -n 's/.* rate=\([0-9]*\).*/\1/p'; }
stat_of() { "$build/cli/herald" stats --broker "$req" | sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p"; }
runs=${BENCH_RUNS:-3}
for publishers in 1 8; do
  for batch in 1 16 256; do
    rates=() rss=() commits=()
    for _ in $(seq "$runs"); do
      start_broker
      rates+=("$("$bench" publish "$req" "$publishers" "$batch" "$messages" 100 "$bytes" | rate_of)")
      rss+=("$(awk '/RssAnon/ {print $2}' /proc/$pid/status)")
      commits+=("$(stat_of batches)")
      stop_broker
    done
    echo "publish publishers=$publishers batch=$batch messages=$messages median_rate=$(median "${rates[@]}")/s runs=[${rates[*]}] commits=[${commits[*]}] rss_anon_kib=$(median "${rss[@]}")"
  done
done
start_broker
"$bench" publish "$req" 1 256 100096 1 "$bytes" >/dev/null
rates=()
for _ in $(seq "$runs"); do
  rates+=("$("$bench" fetch "$req" bench.t0 1000 1000 | rate_of)")
done
echo "fetch range=1000 messages_per_run=~1000000 median_rate=$(median "${rates[@]}")/s runs=[${rates[*]}] rss_anon_kib=$(awk '/RssAnon/ {print $2}' /proc/$pid/status)"
stop_broker

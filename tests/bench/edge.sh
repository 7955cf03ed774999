#!/usr/bin/env bash
# Edge benchmark: Herald (herald-broker + herald-edge) against Nchan (nginx with the nchan
# module) in the same run, with Herald/Nchan ratios. Run on demand (never by CTest), as root so
# that it can raise the descriptor limit; figures go to docs/benchmarks.md.
#   tests/bench/edge.sh [BUILD_DIR]      (default: build; configure with -DBUILD_TESTING=ON)
# Needs: wrk, nginx and libnginx-mod-nchan (Debian), curl, taskset, 2+ cores.
#
# Servers run pinned to core EDGE_SERVER_CPU (one core for broker and edge together, or for the
# nginx master and its one worker); load tools run on EDGE_LOAD_CPU.
#   1. HTTP publishes/s, keep-alive, wrk for EDGE_SECONDS per run (tests/bench/edge_publish.lua:
#      100-byte bodies cycling over 100 topics): Herald durable (--sync=true) over each of
#      EDGE_DURABLE_CONNS connections, Herald relaxed (--sync=false) and Nchan over each of
#      EDGE_CONNS connections. Server CPU per publish from /proc/PID/stat.
#   2. SSE fan-out (herald-sse-load, tests/bench/sse_load.c): EDGE_SUBS subscribers on one topic,
#      EDGE_RATES messages/s for EDGE_SECONDS: deliveries/s, server CPU per delivery (utime+stime
#      of broker+edge, or of nginx master+worker), p50/p99 publish-to-delivery latency (durable
#      commit included for Herald), and a check that every subscriber got every message once, in
#      order. Herald durable, Herald relaxed, Nchan.
#   3. Memory per idle SSE connection: RSS of herald-edge (and of the nginx worker) before and
#      after opening EDGE_IDLE streams, divided by EDGE_IDLE.
# Every process started here is ended by its PID; every load is bounded in count and time.
# Environment: EDGE_SECONDS (10), EDGE_SUBS (1000), EDGE_RATES ("50 500"), EDGE_IDLE (10000),
# EDGE_DURABLE_CONNS ("16 64 256"), EDGE_CONNS ("16 64"), EDGE_SOURCES
# (127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4: source addresses for the streams),
# EDGE_SERVER_CPU (0), EDGE_LOAD_CPU (1), EDGE_ONLY (publish|sse|idle: one part only).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
broker=$build/broker/herald-broker
edge=$build/edge/herald-edge
load=$build/tests/bench/herald-sse-load
lua=tests/bench/edge_publish.lua
secs=${EDGE_SECONDS:-10}
subs=${EDGE_SUBS:-1000}
rates=${EDGE_RATES:-50 500}
idle=${EDGE_IDLE:-10000}
durable_conns=${EDGE_DURABLE_CONNS:-16 64 256}
conns_list=${EDGE_CONNS:-16 64}
sources=${EDGE_SOURCES:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}
scpu=${EDGE_SERVER_CPU:-0}
lcpu=${EDGE_LOAD_CPU:-1}
only=${EDGE_ONLY:-}
nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
[[ -x $broker && -x $edge && -x $load ]] || { echo "build first: cmake --build $build" >&2; exit 1; }
bash scripts/deps.sh bench >/dev/null  # nginx + Nchan, wrk
for tool in wrk nginx curl taskset; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -f $nchan_module ]] || { echo "needs libnginx-mod-nchan ($nchan_module)" >&2; exit 1; }

nchan_locations='    location = /sub {
      nchan_subscriber eventsource;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
    }'
# shellcheck source=tests/bench/edge_lib.sh
source tests/bench/edge_lib.sh

declare -A R   # results: R[key]=value

# ---- 1. HTTP publish ----------------------------------------------------------------------

# wrk_run KEY PORT TEMPLATE CONNS CPU_PIDS...: publishes/s, non-2xx count, p50/p99, CPU/publish.
wrk_run() {
  local key=$1 p=$2 template=$3 c=$4; shift 4
  local out="$dir/wrk.$key" c0 c1
  c0=$(cpu_of "$@")
  cmd taskset -c "$lcpu" wrk -t1 -c"$c" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$p" -- "'$template'" 100 100
  timeout $((secs + 30)) taskset -c "$lcpu" wrk -t1 -c"$c" -d"${secs}s" --latency -s "$lua" \
    "http://127.0.0.1:$p" -- "$template" 100 100 >"$out" 2>&1 || true
  c1=$(cpu_of "$@")
  local rps n2 errs reqs p50 p99
  rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  n2=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out"); n2=${n2:-0}
  errs=$(grep -o 'Socket errors:.*' "$out" || true)
  p50=$(awk '$1=="50%" {print $2}' "$out"); p99=$(awk '$1=="99%" {print $2}' "$out")
  R[$key.rps]=${rps:-0}
  R[$key.cpu_us]=$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="${reqs:-0}" 'BEGIN {printf "%.2f", n ? d / hz * 1e6 / n : 0}')
  say "publish $key connections=$c requests=${reqs:-0} publishes_per_s=${rps:-0} non_2xx=$n2 latency_p50=$p50 latency_p99=$p99 server_cpu_us_per_publish=${R[$key.cpu_us]} ${errs}"
  [[ ${rps:-0} -gt 0 ]] || { say "wrk output:"; cat "$out"; }
  if [[ $n2 != 0 ]]; then R[$key.rps]="${R[$key.rps]} ($n2 non-2xx)"; fi
}

publish_part() {
  say ""
  say "## 1. HTTP publishes/s, keep-alive, wrk ${secs}s, 100-byte bodies over 100 topics"
  for c in $durable_conns; do
    start_herald true
    wrk_run "herald_durable_c$c" "$h_port" "/v1/topics/bench.%d/messages" "$c" "$hb_pid" "$he_pid"
    stop_herald
  done
  for c in $conns_list; do
    start_herald false
    wrk_run "herald_relaxed_c$c" "$h_port" "/v1/topics/bench.%d/messages" "$c" "$hb_pid" "$he_pid"
    stop_herald
    start_nchan
    # shellcheck disable=SC2086
    wrk_run "nchan_c$c" "$n_port" "/pub?id=bench.%d" "$c" "$nm_pid" $nw_pids
    stop_nchan
  done
}

# ---- 2. SSE fan-out -----------------------------------------------------------------------

# sse_run KEY PORT SUB_PATH PUB_PATH RATE CPU_PIDS
sse_run() {
  local key=$1 p=$2 sub=$3 pub=$4 rate=$5 cpus=$6 out="$dir/sse.$1"
  cmd taskset -c "$lcpu" "$load" --port "$p" --sub-path "'$sub'" --pub-path "'$pub'" --conns "$subs" \
    --rate "$rate" --seconds "$secs" --sources "$sources" --cpu-pids "$cpus"
  timeout $((secs * 3 + 120)) taskset -c "$lcpu" "$load" --port "$p" --sub-path "$sub" \
    --pub-path "$pub" --conns "$subs" --rate "$rate" --seconds "$secs" --sources "$sources" \
    --cpu-pids "$cpus" >"$out" 2>&1 || true
  sed 's/^/  /' "$out"
  local line; line=$(grep '^sse ' "$out" || true)
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  R[$key.dps]=$(get deliveries_per_s); R[$key.cpu]=$(get cpu_us_per_delivery)
  R[$key.p50]=$(get p50_ms); R[$key.p99]=$(get p99_ms)
  R[$key.ok]=$(if grep -q '^failure' "$out" || [[ -z $line ]]; then echo "FAILED: $(grep -c '^failure' "$out") failure lines"; else echo "all $subs got every message once, in order"; fi)
}

sse_part() {
  say ""
  say "## 2. SSE: $subs subscribers on one topic, ${secs}s per rate; server on core $scpu, load on core $lcpu"
  for rate in $rates; do
    for sync in true false; do
      local mode; [[ $sync == true ]] && mode=durable || mode=relaxed
      start_herald "$sync"
      say "# herald $mode, $rate msg/s"
      sse_run "sse_herald_${mode}_r$rate" "$h_port" "/v1/sse?topic=sse.r$rate" \
        "/v1/topics/sse.r$rate/messages" "$rate" "$hb_pid,$he_pid"
      say "  edge metrics: $(curl -sf "http://127.0.0.1:$h_port/metrics" | grep -E '^herald_edge_(deliveries|live_messages|backfills|catchups|resets|slow_client_disconnects|publish_errors)_total' | tr '\n' ' ')"
      stop_herald
    done
    start_nchan
    say "# nchan, $rate msg/s"
    sse_run "sse_nchan_r$rate" "$n_port" "/sub?id=sse.r$rate" "/pub?id=sse.r$rate" "$rate" \
      "$(echo "$nm_pid $nw_pids" | xargs | tr ' ' ',')"
    stop_nchan
  done
}

# ---- 3. memory per idle SSE connection ------------------------------------------------------

# idle_run KEY PORT SUB_PATH RSS_PIDS...
idle_run() {
  local key=$1 p=$2 sub=$3; shift 3
  local out="$dir/idle.$key" before after lp
  before=$(rss_kib "$@")
  cmd taskset -c "$lcpu" "$load" --port "$p" --sub-path "'$sub'" --conns "$idle" --sources "$sources" --hold 120
  taskset -c "$lcpu" "$load" --port "$p" --sub-path "$sub" --conns "$idle" --sources "$sources" \
    --hold 120 >"$out" 2>&1 &
  lp=$!; pids+=("$lp")
  for _ in $(seq 900); do grep -q '^connected' "$out" && break; sleep 0.1; done
  sleep 2 # let the server finish what it does for new streams
  after=$(rss_kib "$@")
  stop "$lp"
  local line; line=$(grep '^connected' "$out" || echo "connected n=0")
  local n; n=$(sed -n 's/.* n=\([0-9]*\).*/\1/p' <<<"$line")
  R[$key.bytes]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", n ? (a - b) * 1024 / n : 0}')
  R[$key.n]=$n
  say "idle $key streams=$n rss_before_kib=$before rss_after_kib=$after bytes_per_stream=${R[$key.bytes]} ($line)"
  grep '^failure' "$out" | head -5 || true
}

idle_part() {
  say ""
  say "## 3. Memory per idle SSE stream, $idle streams"
  start_herald true
  idle_run idle_herald "$h_port" "/v1/sse?topic=idle" "$he_pid"
  say "  (herald-broker RSS meanwhile: $(rss_kib "$hb_pid") KiB)"
  stop_herald
  start_nchan
  # shellcheck disable=SC2086
  idle_run idle_nchan "$n_port" "/sub?id=idle" $nw_pids
  stop_nchan
}

say "# herald edge benchmark $(date -u +%Y-%m-%dT%H:%MZ), source $PWD, commit $(git rev-parse --short HEAD 2>/dev/null || echo '? (not a git checkout)')$(git diff --quiet HEAD -- edge broker 2>/dev/null || echo ' (edge/ or broker/ modified)'), herald-edge built $(date -u -r "$edge" +%H:%M:%SZ)"
say "# $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); servers on core $scpu, load tools on core $lcpu; $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
say "# fdatasync probe: $(dd if=/dev/zero of="$dir/probe" bs=4k count=1000 oflag=dsync 2>&1 | tail -1)"
# The machines are shared: the load average before each part shows whether anything else ran.
loadavg() { say "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
loadavg
[[ -z $only || $only == publish ]] && publish_part && loadavg
[[ -z $only || $only == sse ]] && sse_part && loadavg
[[ -z $only || $only == idle ]] && idle_part && loadavg

# Anything the servers logged at warn or above (every Herald run appends to one log).
say ""
say "# server logs: herald $(cat "$dir"/broker.log "$dir"/edge.log 2>/dev/null | grep -c 'level=\(warn\|error\)' || true) warn/error lines, nginx $(grep -c '\[\(warn\|error\|crit\|alert\|emerg\)\]' "$dir"/nginx/error.log 2>/dev/null || true) warn+ lines"
cat "$dir"/broker.log "$dir"/edge.log 2>/dev/null | grep 'level=\(warn\|error\)' | head -5 | sed 's/^/#   /' || true
grep '\[\(warn\|error\|crit\|alert\|emerg\)\]' "$dir"/nginx/error.log 2>/dev/null | head -5 | sed 's/^/#   /' || true

# ---- summary ------------------------------------------------------------------------------

ratio() { awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "${2:--}" "${3:--}" "$(ratio "${2:-}" "${3:-}")"; }
say ""
say "## Summary (Herald / Nchan on the same run)"
say "| figure | Herald | Nchan | Herald/Nchan |"
say "|---|---|---|---|"
if [[ -z $only || $only == publish ]]; then
  first=${conns_list%% *}
  for c in $durable_conns; do
    row "HTTP publishes/s, durable, $c conns (Nchan: $first conns)" "${R[herald_durable_c$c.rps]:-}" "${R[nchan_c$first.rps]:-}"
  done
  for c in $conns_list; do
    row "HTTP publishes/s, relaxed, $c conns" "${R[herald_relaxed_c$c.rps]:-}" "${R[nchan_c$c.rps]:-}"
    row "server CPU µs per publish, relaxed, $c conns" "${R[herald_relaxed_c$c.cpu_us]:-}" "${R[nchan_c$c.cpu_us]:-}"
  done
fi
if [[ -z $only || $only == sse ]]; then
  for rate in $rates; do
    for mode in durable relaxed; do
      k=sse_herald_${mode}_r$rate n=sse_nchan_r$rate
      row "SSE deliveries/s, $rate msg/s, $mode" "${R[$k.dps]:-}" "${R[$n.dps]:-}"
      row "server CPU µs per delivery, $rate msg/s, $mode" "${R[$k.cpu]:-}" "${R[$n.cpu]:-}"
      row "p50 ms, $rate msg/s, $mode" "${R[$k.p50]:-}" "${R[$n.p50]:-}"
      row "p99 ms, $rate msg/s, $mode" "${R[$k.p99]:-}" "${R[$n.p99]:-}"
    done
    say "| delivery check, $rate msg/s | durable: ${R[sse_herald_durable_r$rate.ok]}; relaxed: ${R[sse_herald_relaxed_r$rate.ok]} | ${R[sse_nchan_r$rate.ok]} | |"
  done
fi
if [[ -z $only || $only == idle ]]; then
  row "bytes of RSS per idle SSE stream ($idle streams)" "${R[idle_herald.bytes]:-}" "${R[idle_nchan.bytes]:-}"
fi

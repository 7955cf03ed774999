#!/usr/bin/env bash
# Edge benchmark, long polling and HTTP streaming: Herald (herald-broker + herald-edge) against
# Nchan (nginx with the nchan module) in the same run, with Herald/Nchan ratios. Run on demand
# (never by CTest), as root so that it can raise the descriptor limit; figures go to
# docs/benchmarks.md ("Edge: long polling and HTTP streaming").
#   tests/bench/edge_poll.sh [BUILD_DIR]      (default: build; configure with -DBUILD_TESTING=ON)
# Needs: nginx and libnginx-mod-nchan (Debian), curl, taskset, 2+ cores.
#
# Servers run pinned to core POLL_SERVER_CPU (broker and edge together, or the nginx master and
# its one worker); the load tool (herald-poll-load, tests/bench/poll_load.c) on POLL_LOAD_CPU.
#   1. Long polling: POLL_CLIENTS long-pollers on one topic, POLL_RATE messages/s for
#      POLL_SECONDS. Each re-polls at once after every answer with the validators of its last
#      one (Herald: GET /v1/poll?topic=T&wait=30 with If-None-Match: W/"CURSOR"; Nchan: GET
#      /lp?id=T, nchan_subscriber longpoll, with If-Modified-Since + If-None-Match from the
#      last answer's Last-Modified + Etag). Deliveries/s, server CPU per delivery (utime+stime of
#      broker+edge, or nginx master+worker, from /proc), p50/p99 publish-to-delivery latency,
#      and a check that every poller got every message once, in order.
#   2. HTTP streaming: POLL_CLIENTS streams (Herald GET /v1/stream, chunked NDJSON; Nchan
#      nchan_subscriber http-chunked), same rate and figures.
#      Parts 1 and 2 run Herald durable (--sync=true), Herald relaxed (--sync=false) and Nchan.
#   3. Held long polls: RSS of herald-edge (of the nginx worker) before and after POLL_HOLD
#      long polls are held (Herald wait=60, Nchan subscriber timeout 300 s), polls per GB.
# Every process started here is ended by its PID; every load is bounded in count and time.
# Environment: POLL_SECONDS (10), POLL_CLIENTS (1000), POLL_RATE (500), POLL_HOLD (10000),
# POLL_SOURCES (127.0.0.1,...,127.0.0.8), POLL_SERVER_CPU (0), POLL_LOAD_CPU (1),
# POLL_ONLY (poll|stream|hold: one part only), POLL_MODES ("durable relaxed nchan").
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
broker=$build/broker/herald-broker
edge=$build/edge/herald-edge
load=$build/tests/bench/herald-poll-load
secs=${POLL_SECONDS:-10}
clients=${POLL_CLIENTS:-1000}
rate=${POLL_RATE:-500}
idle=${POLL_HOLD:-10000}
sources=${POLL_SOURCES:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8}
scpu=${POLL_SERVER_CPU:-0}
lcpu=${POLL_LOAD_CPU:-1}
only=${POLL_ONLY:-}
modes=${POLL_MODES:-durable relaxed nchan}
nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
[[ -x $broker && -x $edge && -x $load ]] || { echo "build first: cmake --build $build" >&2; exit 1; }
bash scripts/deps.sh bench >/dev/null  # nginx + Nchan, wrk
for tool in nginx curl taskset; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -f $nchan_module ]] || { echo "needs libnginx-mod-nchan ($nchan_module)" >&2; exit 1; }

nchan_buffer=$((rate * secs + 1000))
nchan_http_extra='  keepalive_timeout 300s;'
nchan_locations='    location = /lp {
      nchan_subscriber longpoll;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
      nchan_subscriber_timeout 300s;
    }
    location = /chunked {
      nchan_subscriber http-chunked;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
      nchan_subscriber_timeout 300s;
    }'
# shellcheck source=tests/bench/edge_lib.sh
source tests/bench/edge_lib.sh

declare -A R   # results: R[key]=value

# ---- 1 and 2. long polling and streaming under load ---------------------------------------

# load_run KEY MODE PORT SUB_PATH PUB_PATH CPU_PIDS
load_run() {
  local key=$1 mode=$2 p=$3 sub=$4 pub=$5 cpus=$6 out="$dir/load.$1"
  cmd taskset -c "$lcpu" "$load" --mode "$mode" --port "$p" --sub-path "'$sub'" --pub-path "'$pub'" \
    --conns "$clients" --rate "$rate" --seconds "$secs" --sources "$sources" --cpu-pids "$cpus"
  timeout $((secs * 3 + 120)) taskset -c "$lcpu" "$load" --mode "$mode" --port "$p" \
    --sub-path "$sub" --pub-path "$pub" --conns "$clients" --rate "$rate" --seconds "$secs" \
    --sources "$sources" --cpu-pids "$cpus" >"$out" 2>&1 || true
  sed 's/^/  /' "$out"
  local line; line=$(grep "^$mode " "$out" || true)
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  R[$key.dps]=$(get deliveries_per_s); R[$key.cpu]=$(get cpu_us_per_delivery)
  R[$key.p50]=$(get p50_ms); R[$key.p99]=$(get p99_ms); R[$key.aps]=$(get answers_per_s)
  R[$key.mpa]=$(get msgs_per_answer)
  if [[ -n $line ]] && ! grep -q '^failure' "$out"; then
    R[$key.ok]="all $clients got all $(get published) once, in order"
  else
    R[$key.ok]="FAILED: failed_clients=$(get failed_clients) skipped=$(get skipped) late=$(get late) dups=$(get dups) dropped=$(get dropped)"
  fi
}

# part MODE (poll|stream): Herald durable, Herald relaxed, Nchan
part() {
  local mode=$1 m hpath npath topic
  if [[ $mode == poll ]]; then topic=lp hpath="/v1/poll?topic=lp&wait=30" npath="/lp?id=lp"
  else topic=st hpath="/v1/stream?topic=st" npath="/chunked?id=st"; fi
  say ""
  say "## $mode: $clients clients on one topic, $rate msg/s for ${secs}s; server on core $scpu, load on core $lcpu"
  for m in $modes; do
    if [[ $m == nchan ]]; then
      start_nchan
      say "# nchan $mode"
      load_run "${mode}_nchan" "$mode" "$n_port" "$npath" "/pub?id=$topic" \
        "$(echo "$nm_pid $nw_pids" | xargs | tr ' ' ',')"
      stop_nchan
    else
      start_herald "$([[ $m == durable ]] && echo true || echo false)"
      say "# herald $m $mode"
      load_run "${mode}_$m" "$mode" "$h_port" "$hpath" "/v1/topics/$topic/messages" "$hb_pid,$he_pid"
      R[${mode}_$m.metrics]=$(curl -sf "http://127.0.0.1:$h_port/metrics" | grep -E '^herald_edge_(long_polls|polls|deliveries|resets|slow_client|publish_errors)[a-z_]* ' | tr '\n' ' ' || true)
      say "  edge metrics: ${R[${mode}_$m.metrics]}"
      stop_herald
    fi
  done
}

# ---- 3. held long polls ---------------------------------------------------------------------

# hold_run KEY PORT SUB_PATH RSS_PIDS...
hold_run() {
  local key=$1 p=$2 sub=$3; shift 3
  local out="$dir/hold.$key" before after lp
  before=$(rss_kib "$@")
  cmd taskset -c "$lcpu" "$load" --mode poll --port "$p" --sub-path "'$sub'" --conns "$idle" --sources "$sources" --hold 50
  taskset -c "$lcpu" "$load" --mode poll --port "$p" --sub-path "$sub" --conns "$idle" \
    --sources "$sources" --hold 50 >"$out" 2>&1 &
  lp=$!; pids+=("$lp")
  for _ in $(seq 900); do grep -q '^connected' "$out" && break; sleep 0.1; done
  sleep 3 # let the server take every request and register every poll
  after=$(rss_kib "$@")
  stop "$lp"
  local line; line=$(grep '^connected' "$out" || echo "connected n=0")
  local n; n=$(sed -n 's/.* n=\([0-9]*\).*/\1/p' <<<"$line")
  R[$key.bytes]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", n ? (a - b) * 1024 / n : 0}')
  R[$key.pergb]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", (a > b ? n / ((a - b) * 1024 / 1e9) : 0)}')
  R[$key.n]=$n
  say "hold $key polls=$n rss_before_kib=$before rss_after_kib=$after bytes_per_poll=${R[$key.bytes]} polls_per_GB=${R[$key.pergb]} ($line; $(grep '^hold' "$out" || echo 'ended by SIGTERM'))"
  grep '^failure' "$out" | head -5 || true
}

hold_part() {
  say ""
  say "## 3. Held long polls, $idle polls on one topic"
  start_herald true
  hold_run hold_herald "$h_port" "/v1/poll?topic=idle&wait=60" "$he_pid"
  say "  (herald-broker RSS meanwhile: $(rss_kib "$hb_pid") KiB; edge polls_held: $(curl -sf "http://127.0.0.1:$h_port/metrics" | grep -E '^herald_edge_long_polls_held' | tr '\n' ' ' || true))"
  stop_herald
  start_nchan
  # shellcheck disable=SC2086
  hold_run hold_nchan "$n_port" "/lp?id=idle" $nw_pids
  stop_nchan
}

say "# herald edge poll/stream benchmark $(date -u +%Y-%m-%dT%H:%MZ), source $PWD, commit $(git rev-parse --short HEAD 2>/dev/null || echo '? (not a git checkout)')$(git diff --quiet HEAD -- edge broker 2>/dev/null || echo ' (edge/ or broker/ modified)'), herald-edge built $(date -u -r "$edge" +%H:%M:%SZ)"
say "# $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); servers on core $scpu, load on core $lcpu; $(nginx -v 2>&1)"
loadavg() { say "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
loadavg
[[ -z $only || $only == poll ]] && part poll && loadavg
[[ -z $only || $only == stream ]] && part stream && loadavg
[[ -z $only || $only == hold ]] && hold_part && loadavg

say ""
say "# server logs: herald $(cat "$dir"/broker.log "$dir"/edge.log 2>/dev/null | grep -c 'level=\(warn\|error\)' || true) warn/error lines, nginx $(grep -c '\[\(warn\|error\|crit\|alert\|emerg\)\]' "$dir"/nginx/error.log 2>/dev/null || true) warn+ lines"
cat "$dir"/broker.log "$dir"/edge.log 2>/dev/null | grep 'level=\(warn\|error\)' | head -5 | sed 's/^/#   /' || true
grep '\[\(warn\|error\|crit\|alert\|emerg\)\]' "$dir"/nginx/error.log 2>/dev/null | head -5 | sed 's/^/#   /' || true

# ---- summary ------------------------------------------------------------------------------

ratio() { awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "${2:--}" "${3:--}" "${4:--}" "$(ratio "${2:-}" "${4:-}")" "$(ratio "${3:-}" "${4:-}")"; }
say ""
say "## Summary (Herald / Nchan on the same run)"
say "| figure | Herald durable | Herald relaxed | Nchan | durable/Nchan | relaxed/Nchan |"
say "|---|---|---|---|---|---|"
for mode in poll stream; do
  [[ -z $only || $only == "$mode" ]] || continue
  row "$mode deliveries/s" "${R[${mode}_durable.dps]:-}" "${R[${mode}_relaxed.dps]:-}" "${R[${mode}_nchan.dps]:-}"
  row "$mode server CPU µs per delivery" "${R[${mode}_durable.cpu]:-}" "${R[${mode}_relaxed.cpu]:-}" "${R[${mode}_nchan.cpu]:-}"
  row "$mode latency p50 ms" "${R[${mode}_durable.p50]:-}" "${R[${mode}_relaxed.p50]:-}" "${R[${mode}_nchan.p50]:-}"
  row "$mode latency p99 ms" "${R[${mode}_durable.p99]:-}" "${R[${mode}_relaxed.p99]:-}" "${R[${mode}_nchan.p99]:-}"
  if [[ $mode == poll ]]; then
    row "poll answers/s" "${R[poll_durable.aps]:-}" "${R[poll_relaxed.aps]:-}" "${R[poll_nchan.aps]:-}"
    row "messages per 200 answer" "${R[poll_durable.mpa]:-}" "${R[poll_relaxed.mpa]:-}" "${R[poll_nchan.mpa]:-}"
  fi
  say "| $mode delivery check | ${R[${mode}_durable.ok]:--} | ${R[${mode}_relaxed.ok]:--} | ${R[${mode}_nchan.ok]:--} | | |"
done
if [[ -z $only || $only == hold ]]; then
  row "held long polls per GB of RSS ($idle held)" "${R[hold_herald.pergb]:-}" "" "${R[hold_nchan.pergb]:-}"
  row "bytes of RSS per held long poll" "${R[hold_herald.bytes]:-}" "" "${R[hold_nchan.bytes]:-}"
fi

#!/usr/bin/env bash
# Edge benchmark, WebSocket: Herald (herald-broker + herald-edge, GET /v1/ws) against Nchan's
# websocket subscriber and publisher (nginx with the nchan module) in the same run, with
# Herald/Nchan ratios. Run on demand (never by CTest), as root so that it can raise the
# descriptor limit; figures go to docs/benchmarks.md ("Edge: WebSocket").
#   tests/bench/edge_ws.sh [BUILD_DIR]      (default: build; configure with -DBUILD_TESTING=ON)
# Needs: nginx and libnginx-mod-nchan (Debian), curl, taskset, 2+ cores.
#
# Servers run pinned to core WS_SERVER_CPU (broker and edge together, or the nginx master and
# its one worker); the load tool (herald-ws-load, tests/bench/ws_load.c) on WS_LOAD_CPU.
#   1. Fan-out: WS_SUBS WebSocket subscribers on one topic (Herald /v1/ws?topic=T; Nchan
#      nchan_subscriber websocket), WS_RATES messages/s for WS_SECONDS published over one
#      WebSocket connection (Herald publish frames, answered after the commit; Nchan's
#      websocket publisher at /pub?id=T). Deliveries/s, server CPU per delivery (utime+stime of
#      broker+edge, or nginx master+worker, from /proc), p50/p99 publish-to-delivery latency, and
#      a check that every subscriber got every message once, in order.
#   2. Publish throughput: WS_PUB_CONNS connections (each a run of its own), connection i
#      publishing 100-byte messages to topic bench.(i mod 100) and keeping WS_WINDOW publishes in
#      flight; acknowledged publishes/s over WS_PUB_SECONDS after 1 s of warm-up, the median of
#      WS_PUB_RUNS runs, each on fresh servers. Herald: publish frames on /v1/ws, acknowledged by
#      `published` after the broker's commit; Nchan: frames on its publisher location
#      /pub?id=bench.N, each answered with a channel-info frame once stored in shared memory.
#   3. Memory per idle WebSocket connection: RSS of herald-edge (of the nginx worker) before and
#      after opening WS_IDLE subscribed WebSocket connections, divided by WS_IDLE; for Herald also
#      WS_IDLE connections that subscribe to nothing.
# The machines are shared: for every run the script reports which share of the servers' core
# other processes took meanwhile (from /proc/stat), so that contention shows in the figures.
#   Parts 1 and 2 run each of WS_MODES: Herald durable (--sync=true), Herald relaxed
#   (--sync=false), Nchan (memory store).
# Every process started here is ended by its PID; every load is bounded in count and time
# (the whole run takes about 3 minutes).
# Environment: WS_SECONDS (10), WS_SUBS (1000), WS_RATES (500), WS_PUB_CONNS ("1 100"),
# WS_PUB_SECONDS (5), WS_PUB_RUNS (3), WS_WINDOW (512), WS_IDLE (10000), WS_MODES ("durable
# relaxed nchan"), WS_SOURCES (127.0.0.1,...,127.0.0.8), WS_SERVER_CPU (0), WS_LOAD_CPU (1),
# WS_ONLY (fanout|publish|idle: one part only).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
broker=$build/broker/herald-broker
edge=$build/edge/herald-edge
load=$build/tests/bench/herald-ws-load
secs=${WS_SECONDS:-10}
subs=${WS_SUBS:-1000}
rates=${WS_RATES:-500}
pub_conns=${WS_PUB_CONNS:-1 100}
pub_secs=${WS_PUB_SECONDS:-5}
pub_runs=${WS_PUB_RUNS:-3}
window=${WS_WINDOW:-512}
idle=${WS_IDLE:-10000}
modes=${WS_MODES:-durable relaxed nchan}
sources=${WS_SOURCES:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8}
scpu=${WS_SERVER_CPU:-0}
lcpu=${WS_LOAD_CPU:-1}
only=${WS_ONLY:-}
nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
[[ -x $broker && -x $edge && -x $load ]] || { echo "build first: cmake --build $build" >&2; exit 1; }
bash scripts/deps.sh bench >/dev/null  # nginx + Nchan
for tool in nginx curl taskset; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -f $nchan_module ]] || { echo "needs libnginx-mod-nchan ($nchan_module)" >&2; exit 1; }

# The publisher location of edge_lib.sh takes websocket publishers too (nchan_publisher's
# default is "http websocket"); this adds the websocket subscriber.
nchan_locations='    location = /ws {
      nchan_subscriber websocket;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
    }'
# shellcheck source=tests/bench/edge_lib.sh
source tests/bench/edge_lib.sh

declare -A R   # results: R[key]=value

# The exact command, quoted where the shell needs it.
show() {
  local out="" a
  for a in "$@"; do
    if [[ $a =~ [^A-Za-z0-9_./,:=+-] ]]; then out+=" '$a'"; else out+=" $a"; fi
  done
  say "\$${out}"
}
# Jiffies of core $scpu: busy and total (/proc/stat).
core_ticks() { awk -v c="cpu$scpu" '$1 == c {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat; }
# run_load KEY OUT TIMEOUT ARGS...: herald-ws-load on the load core, its output in OUT, indented.
# The servers ($srv_pids) share core $scpu with whatever else runs on this machine; the share
# other processes took of that core during the run goes to R[KEY.other] (percent).
run_load() {
  local key=$1 out=$2 limit=$3; shift 3
  local b0 t0 b1 t1 s0 s1
  show taskset -c "$lcpu" "$load" "$@"
  read -r b0 t0 < <(core_ticks)
  # shellcheck disable=SC2086
  s0=$(cpu_of $srv_pids)
  timeout "$limit" taskset -c "$lcpu" "$load" "$@" >"$out" 2>&1 || true
  read -r b1 t1 < <(core_ticks)
  # shellcheck disable=SC2086
  s1=$(cpu_of $srv_pids)
  sed 's/^/  /' "$out"
  R[$key.other]=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v s=$((s1 - s0)) \
    'BEGIN {o = t ? (b - s) * 100 / t : 0; printf "%.0f", o < 0 ? 0 : o}')
  say "  core $scpu during the run: $(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", t ? b * 100 / t : 0}')% busy, servers $(awk -v s=$((s1 - s0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", t ? s * 100 / t : 0}')%, other processes ${R[$key.other]}%"
}
# field LINE KEY: the value of KEY=... in LINE
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
herald_sync() { [[ $1 == durable ]] && echo true || echo false; }
edge_metrics() {
  curl -sf "http://127.0.0.1:$h_port/metrics" |
    grep -E '^herald_edge_(deliveries_total\{transport="ws"\}|ws_[a-z_]+|slow_client_disconnects_total|resets_total|publish_errors_total) ' |
    tr '\n' ' ' || true
}

# ---- 1. fan-out -----------------------------------------------------------------------------

fanout_part() {
  say ""
  say "## 1. Fan-out: $subs WebSocket subscribers on one topic, ${secs}s per rate, publisher on one WebSocket; server on core $scpu, load on core $lcpu"
  local rate m key out line cpus
  for rate in $rates; do
    for m in $modes; do
      key=fan_${m}_r$rate out="$dir/fan.$key"
      if [[ $m == nchan ]]; then
        start_nchan
        say "# nchan, $rate msg/s"
        cpus=$(echo "$nm_pid $nw_pids" | xargs | tr ' ' ',') srv_pids="$nm_pid $nw_pids"
        run_load "$key" "$out" $((secs * 3 + 120)) --port "$n_port" --sub-path "/ws?id=ws.r$rate" \
          --pub-ws "/pub?id=ws.r$rate" --frame raw --conns "$subs" --rate "$rate" \
          --seconds "$secs" --sources "$sources" --cpu-pids "$cpus"
        stop_nchan
      else
        start_herald "$(herald_sync "$m")"
        say "# herald $m, $rate msg/s"
        srv_pids="$hb_pid $he_pid"
        run_load "$key" "$out" $((secs * 3 + 120)) --port "$h_port" --sub-path "/v1/ws?topic=ws.r$rate" \
          --subprotocol herald.v1 --pub-ws /v1/ws --frame herald --topic "ws.r$rate" \
          --conns "$subs" --rate "$rate" --seconds "$secs" --sources "$sources" \
          --cpu-pids "$hb_pid,$he_pid"
        say "  edge metrics: $(edge_metrics)"
        stop_herald
      fi
      line=$(grep '^ws ' "$out" || true)
      R[$key.dps]=$(field "$line" deliveries_per_s); R[$key.cpu]=$(field "$line" cpu_us_per_delivery)
      R[$key.p50]=$(field "$line" p50_ms); R[$key.p99]=$(field "$line" p99_ms)
      R[$key.pub_p99]=$(field "$line" pub_p99_ms)
      if [[ -n $line ]] && ! grep -q '^failure' "$out"; then
        R[$key.ok]="all $subs got all $(field "$line" published) once, in order"
      else
        R[$key.ok]="FAILED: failed=$(field "$line" failed_subscribers) skipped=$(field "$line" skipped) late=$(field "$line" late) dups=$(field "$line" dups) dropped=$(field "$line" dropped) $(grep -m1 '^failure' "$out" || true)"
      fi
    done
  done
}

# ---- 2. publish throughput --------------------------------------------------------------------

publish_part() {
  say ""
  say "## 2. Publishes/s over WebSocket: $window in flight per connection, 100-byte data, connection i -> topic bench.(i mod 100), ${pub_secs}s after 1s warm-up, median of $pub_runs runs on fresh servers"
  local c m run key out line rps cpu p50 p99
  for c in $pub_conns; do
    for m in $modes; do
      key=pub_${m}_c$c
      local all_rps=() all_cpu=() all_p50=() all_p99=() all_other=() bad=""
      for run in $(seq "$pub_runs"); do
        out="$dir/pub.$key.$run"
        if [[ $m == nchan ]]; then
          start_nchan
          say "# nchan, $c connection(s), run $run"
          srv_pids="$nm_pid $nw_pids"
          run_load "$key.$run" "$out" $((pub_secs + 90)) --mode publish --port "$n_port" \
            --pub-ws '/pub?id=bench.%d' --frame raw --conns "$c" --window "$window" --bytes 100 \
            --topics 100 --seconds "$pub_secs" --sources "$sources" \
            --cpu-pids "$(echo "$nm_pid $nw_pids" | xargs | tr ' ' ',')"
          stop_nchan
        else
          start_herald "$(herald_sync "$m")"
          say "# herald $m, $c connection(s), run $run"
          srv_pids="$hb_pid $he_pid"
          run_load "$key.$run" "$out" $((pub_secs + 90)) --mode publish --port "$h_port" --pub-ws /v1/ws \
            --subprotocol herald.v1 --frame herald --topic 'bench.%d' --conns "$c" \
            --window "$window" --bytes 100 --topics 100 --seconds "$pub_secs" \
            --sources "$sources" --cpu-pids "$hb_pid,$he_pid"
          say "  edge metrics: $(edge_metrics)"
          stop_herald
        fi
        line=$(grep '^publish ' "$out" || true)
        rps=$(field "$line" publishes_per_s); cpu=$(field "$line" cpu_us_per_publish)
        p50=$(field "$line" ack_p50_ms); p99=$(field "$line" ack_p99_ms)
        all_rps+=("${rps:-0}"); all_cpu+=("${cpu:-0}"); all_p50+=("${p50:-0}"); all_p99+=("${p99:-0}")
        all_other+=("${R[$key.$run.other]:-?}")
        if [[ -z $line ]] || grep -q '^failure' "$out"; then bad+=" run $run: $(grep -m1 '^failure' "$out" || echo 'no result')"; fi
      done
      R[$key.rps]=$(median "${all_rps[@]}"); R[$key.runs]=$(IFS=/; echo "${all_rps[*]}")
      R[$key.cpu]=$(median "${all_cpu[@]}"); R[$key.p50]=$(median "${all_p50[@]}")
      R[$key.p99]=$(median "${all_p99[@]}"); R[$key.bad]=$bad
      R[$key.other]=$(IFS=/; echo "${all_other[*]}")
      say "publish $key median_publishes_per_s=${R[$key.rps]} runs=${R[$key.runs]} median_cpu_us_per_publish=${R[$key.cpu]} median_ack_p50_ms=${R[$key.p50]} median_ack_p99_ms=${R[$key.p99]}${bad:+ FAILURES:$bad}"
    done
  done
}

# ---- 3. memory per idle connection ------------------------------------------------------------

# idle_run KEY PORT SUB_PATH RSS_PIDS...
idle_run() {
  local key=$1 p=$2 sub=$3; shift 3
  local out="$dir/idle.$key" before after lp
  before=$(rss_kib "$@")
  show taskset -c "$lcpu" "$load" --port "$p" --sub-path "$sub" --conns "$idle" --sources "$sources" --hold 120
  taskset -c "$lcpu" "$load" --port "$p" --sub-path "$sub" --conns "$idle" --sources "$sources" \
    --hold 120 >"$out" 2>&1 &
  lp=$!; pids+=("$lp")
  for _ in $(seq 900); do grep -q '^connected' "$out" && break; sleep 0.1; done
  sleep 3 # let the server finish what it does for new connections (Herald: the subscription)
  after=$(rss_kib "$@")
  [[ -z ${idle_probe:-} ]] || say "  while held: $($idle_probe)"
  stop "$lp"
  local line n
  line=$(grep '^connected' "$out" || echo "connected n=0")
  n=$(sed -n 's/.* n=\([0-9]*\).*/\1/p' <<<"$line")
  R[$key.bytes]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", n ? (a - b) * 1024 / n : 0}')
  R[$key.n]=$n R[$key.kib]="$before → $after KiB"
  say "idle $key connections=$n rss_before_kib=$before rss_after_kib=$after bytes_per_connection=${R[$key.bytes]} ($line; $(grep '^idle' "$out" || echo 'ended by SIGTERM'))"
  grep '^failure' "$out" | head -5 || true
}

idle_part() {
  say ""
  say "## 3. Memory per idle WebSocket connection, $idle connections subscribed to one topic"
  start_herald true
  idle_probe=edge_metrics idle_run idle_herald "$h_port" "/v1/ws?topic=idle" "$he_pid"
  say "  (herald-broker RSS meanwhile: $(rss_kib "$hb_pid") KiB)"
  stop_herald
  # For comparison: connections that subscribe to nothing (fresh processes again).
  start_herald true
  idle_run idle_herald_unsub "$h_port" "/v1/ws" "$he_pid"
  stop_herald
  start_nchan
  # shellcheck disable=SC2086
  idle_run idle_nchan "$n_port" "/ws?id=idle" $nw_pids
  stop_nchan
}

say "# herald edge WebSocket benchmark $(date -u +%Y-%m-%dT%H:%MZ), source $PWD, commit $(git rev-parse --short HEAD 2>/dev/null || echo '? (not a git checkout)')$(git diff --quiet HEAD -- edge broker 2>/dev/null || echo ' (edge/ or broker/ modified)'), herald-edge built $(date -u -r "$edge" +%H:%M:%SZ)"
say "# $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); servers on core $scpu, load on core $lcpu; $(nginx -v 2>&1), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
say "# fdatasync probe: $(dd if=/dev/zero of="$dir/probe" bs=4k count=1000 oflag=dsync 2>&1 | tail -1)"
loadavg() { say "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
loadavg
t_begin=$SECONDS
[[ -z $only || $only == fanout ]] && fanout_part && loadavg
[[ -z $only || $only == publish ]] && publish_part && loadavg
[[ -z $only || $only == idle ]] && idle_part && loadavg

say ""
say "# run took $((SECONDS - t_begin)) s"
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
if [[ -z $only || $only == fanout ]]; then
  for rate in $rates; do
    d=fan_durable_r$rate r=fan_relaxed_r$rate n=fan_nchan_r$rate
    row "WS deliveries/s, $subs × $rate msg/s" "${R[$d.dps]:-}" "${R[$r.dps]:-}" "${R[$n.dps]:-}"
    row "server CPU µs per delivery, $rate msg/s" "${R[$d.cpu]:-}" "${R[$r.cpu]:-}" "${R[$n.cpu]:-}"
    row "latency p50 ms, $rate msg/s" "${R[$d.p50]:-}" "${R[$r.p50]:-}" "${R[$n.p50]:-}"
    row "latency p99 ms, $rate msg/s" "${R[$d.p99]:-}" "${R[$r.p99]:-}" "${R[$n.p99]:-}"
    row "publish answer p99 ms, $rate msg/s" "${R[$d.pub_p99]:-}" "${R[$r.pub_p99]:-}" "${R[$n.pub_p99]:-}"
    say "| delivery check, $rate msg/s | ${R[$d.ok]:--} | ${R[$r.ok]:--} | ${R[$n.ok]:--} | | |"
    say "| other processes' share of core $scpu, $rate msg/s | ${R[$d.other]:--}% | ${R[$r.other]:--}% | ${R[$n.other]:--}% | | |"
  done
fi
if [[ -z $only || $only == publish ]]; then
  for c in $pub_conns; do
    d=pub_durable_c$c r=pub_relaxed_c$c n=pub_nchan_c$c
    row "acked publishes/s, $c conn. (median of $pub_runs)" "${R[$d.rps]:-}" "${R[$r.rps]:-}" "${R[$n.rps]:-}"
    say "| runs, $c conn. | ${R[$d.runs]:--} | ${R[$r.runs]:--} | ${R[$n.runs]:--} | | |"
    row "server CPU µs per publish, $c conn." "${R[$d.cpu]:-}" "${R[$r.cpu]:-}" "${R[$n.cpu]:-}"
    row "answer latency p50 ms, $c conn." "${R[$d.p50]:-}" "${R[$r.p50]:-}" "${R[$n.p50]:-}"
    row "answer latency p99 ms, $c conn." "${R[$d.p99]:-}" "${R[$r.p99]:-}" "${R[$n.p99]:-}"
    say "| other processes' share of core $scpu (%), $c conn. | ${R[$d.other]:--} | ${R[$r.other]:--} | ${R[$n.other]:--} | | |"
    [[ -z ${R[$d.bad]:-}${R[$r.bad]:-}${R[$n.bad]:-} ]] ||
      say "| failures, $c conn. | ${R[$d.bad]:--} | ${R[$r.bad]:--} | ${R[$n.bad]:--} | | |"
  done
fi
if [[ -z $only || $only == idle ]]; then
  row "bytes of RSS per idle WS connection, subscribed ($idle)" "${R[idle_herald.bytes]:-}" "" "${R[idle_nchan.bytes]:-}"
  say "| RSS before → after | ${R[idle_herald.kib]:--} | | ${R[idle_nchan.kib]:--} | | |"
  say "| bytes of RSS per idle WS connection, no subscription ($idle) | ${R[idle_herald_unsub.bytes]:--} (${R[idle_herald_unsub.kib]:--}) | | | | |"
fi

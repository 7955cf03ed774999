#!/usr/bin/env bash
# Cluster benchmark (docs/benchmarks.md §Cluster), on a whole local cluster started by
# deploy/local/cluster.sh (brokers, edges, HAProxy on this machine; ports from CLUSTER_PORT up):
#   1. scale: with 1, 2 and 3 brokers (2 edges): durable publishes/s from herald-bench, one
#      instance per broker at once, each publishing to topics that broker owns (direct) and
#      then to topics the next broker owns (forwarded by the broker it reaches); each broker's
#      CPU (/proc/PID/stat) over the run. Then SSE deliveries/s: 3 herald-sse-load instances at
#      once, instance k with its subscribers on edge k mod 2 and its topic owned by broker
#      k mod N, publishing through the same edge.
#   2. resume (3 brokers, 2 edges, HAProxy): 1,000 SSE subscribers through HAProxy, 50 msg/s
#      published through edge 1; edge 0 is SIGKILLed; herald-sse-load --reconnect reopens
#      every dropped stream with Last-Event-ID and reports the time from the first drop until
#      every stream is open again and has every acknowledged message (nothing lost or repeated:
#      its delivery check).
#   3. backfill (1 broker --retention-messages 0, 1 edge): a subscriber of 10 topics on the
#      edge; the broker is SIGKILLed; the same broker (same node id, same data) runs on other
#      ports the edge does not know and gets 1,000,000 messages (10 topics x 100,000) from
#      herald-bench; it is stopped and restarted by cluster.sh start-broker: the edge backfills
#      the subscriber; messages/s from the restart command and from the first event to the last.
#      A stream the edge closes is reopened with Last-Event-ID (as EventSource does).
#      Then the raw fetch throughput from that broker (herald-bench fetch, 1,000-message ranges).
# Run on demand (as root, after a build with tests; about 4 minutes):
#   tests/bench/cluster.sh [BUILD_DIR]
# Environment: CLUSTER_ONLY (scale|resume|backfill), CLUSTER_RUNS (3), CLUSTER_PORT (27400:
# brokers PORT.., alternate broker PORT+90, HAProxy PORT+80, edges PORT+81..), PUB_MESSAGES per
# broker per run (300000), PUB_PUBLISHERS (4), PUB_BATCH (16), DL_CONNS per instance (333),
# DL_RATE per instance (300), DL_SECONDS (5), RS_CONNS (1000), RS_RATE (50), BF_MESSAGES
# (1024000, a multiple of 2048), BF_TOPICS (10), BF_CONNS (1), BF_RECONNECT (1: reopen a stream the edge closes, as
# EventSource does), CLUSTER_KEEP=1 keeps the state directories.
# Everything it starts it ends: clusters by cluster.sh stop, its own processes by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
build=$(realpath "${1:-build}")
only=${CLUSTER_ONLY:-}
runs=${CLUSTER_RUNS:-3}
base=${CLUSTER_PORT:-27400}
pub_messages=${PUB_MESSAGES:-300000}
pub_publishers=${PUB_PUBLISHERS:-4}
pub_batch=${PUB_BATCH:-16}
dl_conns=${DL_CONNS:-333}
dl_rate=${DL_RATE:-300}
dl_seconds=${DL_SECONDS:-5}
rs_conns=${RS_CONNS:-1000}
rs_rate=${RS_RATE:-50}
bf_messages=${BF_MESSAGES:-1024000}
bf_messages=$((bf_messages / 2048 * 2048)) # what herald-bench sends: 8 publishers x batches of 256
bf_topics=${BF_TOPICS:-10}
bf_conns=${BF_CONNS:-1}
bf_reconnect=${BF_RECONNECT:-1}
P=64

broker=$build/broker/herald-broker
bench=$build/tests/bench/herald-bench
sse=$build/tests/bench/herald-sse-load
cli=$build/cli/herald
for b in "$broker" "$build/edge/herald-edge" "$bench" "$sse" "$cli"; do
  [[ -x $b ]] || { echo "build first: cmake --build $build ($b missing)" >&2; exit 1; }
done
command -v haproxy >/dev/null || { echo "haproxy not found: apt-get install haproxy" >&2; exit 1; }
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"

dir=$(mktemp -d /tmp/herald-cluster-bench.XXXXXX)
pids=()      # background processes of ours still running, ended by PID on exit
clusters=()  # state directories of clusters started, stopped on exit
cdir=""      # the current cluster
cleanup() {
  local p c
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for c in "${clusters[@]}"; do
    HERALD_CLUSTER_DIR=$c deploy/local/cluster.sh stop >/dev/null 2>&1 || true
  done
  if [[ ${CLUSTER_KEEP:-0} == 1 ]]; then echo "# state kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local keep=() p; for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; pids=("${keep[@]}"); }
say() { printf '%s\n' "$*"; }
now_ns() { python3 -c 'import time; print(time.monotonic_ns())'; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; } # field KEY <<< "k=v k=v"
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

cl() { HERALD_CLUSTER_DIR=$cdir deploy/local/cluster.sh "$@"; }
start_cluster() { # name brokers edges [broker args]
  cdir=$dir/$1
  clusters+=("$cdir")
  say "\$ HERALD_CLUSTER_BROKERS=$2 HERALD_CLUSTER_EDGES=$3 HERALD_CLUSTER_BROKER_ARGS='${4:-}' deploy/local/cluster.sh start"
  HERALD_CLUSTER_DIR=$cdir HERALD_CLUSTER_BROKERS=$2 HERALD_CLUSTER_EDGES=$3 HERALD_PARTITIONS=$P \
    HERALD_CLUSTER_BROKER_PORT=$base HERALD_CLUSTER_EDGE_PORT=$((base + 81)) \
    HERALD_CLUSTER_HAPROXY_PORT=$((base + 80)) HERALD_CLUSTER_BROKER_ARGS="${4:-}" \
    HERALD_CLUSTER_EDGE_ARGS="--log-level warn" HERALD_BUILD_DIR=$build \
    deploy/local/cluster.sh start >"$dir/$1.start" 2>&1 || { cat "$dir/$1.start"; exit 1; }
}
stop_cluster() { cl stop >/dev/null; }
bpid() { read -r p _ <"$cdir/broker-$1/pid"; echo "$p"; }
epid() { read -r p _ <"$cdir/edge-$1/pid"; echo "$p"; }
bep() { echo "tcp://127.0.0.1:$((base + 2 * $1))"; }
eport() { echo $((base + 81 + $1)); }
# topic PREFIX OWNER BROKERS: the first name PREFIX.K whose partition broker OWNER owns.
topic() {
  python3 - "$@" <<'EOF'
import sys
prefix, owner, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(100000):
    name = f"{prefix}.{k}"
    h = 0xcbf29ce484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    if (h % 64) % n == owner:
        print(name); break
EOF
}

say "# herald cluster benchmark $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- broker edge proto common 2>/dev/null || echo ' (+ uncommitted changes)'), load $(cut -d' ' -f1-3 /proc/loadavg)"
t_begin=$(date +%s)

# ---- 1. scale ------------------------------------------------------------------------------

publish_round() { # N MODE(direct|forwarded) -> prints "rate cpu0% cpu1% ..."
  local n=$1 mode=$2 o target t0 t1 secs=0 s rates=() c0=() c1=() out
  for ((o = 0; o < n; o++)); do c0+=("$(cpu_ticks "$(bpid "$o")")"); done
  t0=$(now_ns)
  local bp=()
  for ((o = 0; o < n; o++)); do
    target=$o
    [[ $mode == forwarded ]] && target=$(((o + 1) % n))
    "$bench" publish "$(bep "$target")" "$pub_publishers" "$pub_batch" "$pub_messages" 100 100 \
      "$o/$n/$P" >"$dir/pub.$o" 2>&1 &
    bp+=($!)
  done
  for p in "${bp[@]}"; do wait "$p" || { cat "$dir"/pub.*; exit 1; }; done
  t1=$(now_ns)
  for ((o = 0; o < n; o++)); do c1+=("$(cpu_ticks "$(bpid "$o")")"); done
  local total=0
  for ((o = 0; o < n; o++)); do
    total=$((total + $(field messages <"$dir/pub.$o")))
    s=$(field seconds <"$dir/pub.$o")
    secs=$(awk -v a="$secs" -v b="$s" 'BEGIN {print (b > a ? b : a)}')
  done
  out=$(awk -v m="$total" -v s="$secs" 'BEGIN {printf "%.0f", m / s}')
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print (b - a) / 1e9}')
  for ((o = 0; o < n; o++)); do
    out+=" $(awk -v d=$((c1[o] - c0[o])) -v hz="$hz" -v w="$wall" 'BEGIN {printf "%.0f", 100 * d / hz / w}')"
  done
  echo "$out"
}

scale() {
  local n=$1 mode r line k dk
  start_cluster "scale$n" "$n" 2
  for mode in direct forwarded; do
    ((n == 1)) && [[ $mode == forwarded ]] && continue
    local rates=() cpus=()
    for ((r = 0; r < runs; r++)); do
      line=$(publish_round "$n" "$mode")
      rates+=("${line%% *}")
      cpus+=("${line#* }")
    done
    say "publish brokers=$n mode=$mode publishers_per_broker=$pub_publishers batch=$pub_batch messages_per_broker=$pub_messages median_rate=$(median "${rates[@]}") runs=[${rates[*]}] broker_cpu_pct_per_run=[$(printf '%s; ' "${cpus[@]}" | sed 's/; $//')]"
  done
  # SSE deliveries: 3 instances at once, topics spread over the brokers, edges alternating.
  local drates=() dcpu=() sp=()
  for ((r = 0; r < runs; r++)); do
    local pidlist c0=() c1=() t0 t1 o sp=()
    pidlist=$(for ((o = 0; o < n; o++)); do printf '%s,' "$(bpid "$o")"; done; printf '%s,%s' "$(epid 0)" "$(epid 1)")
    for ((k = 0; k < 3; k++)); do
      local t
      t=$(topic "dl$r.$k" $((k % n)) "$n")
      [[ $r == 0 ]] && say "\$ $sse --port $(eport $((k % 2))) --sub-path /v1/sse?topic=$t --pub-path /v1/topics/$t/messages --conns $dl_conns --rate $dl_rate --seconds $dl_seconds --cpu-pids $pidlist --drain-ms 20000"
      "$sse" --port "$(eport $((k % 2)))" --sub-path "/v1/sse?topic=$t" \
        --pub-path "/v1/topics/$t/messages" --conns "$dl_conns" --rate "$dl_rate" \
        --seconds "$dl_seconds" --settle-ms 2000 --cpu-pids "$pidlist" --drain-ms 20000 \
        >"$dir/dl.$k" 2>&1 &
      sp+=($!)
      pids+=($!)
    done
    sleep 2.5 # connected and settled: publishing starts about now in each
    for ((o = 0; o < n; o++)); do c0+=("$(cpu_ticks "$(bpid "$o")")"); done
    t0=$(now_ns)
    sleep "$dl_seconds"
    for ((o = 0; o < n; o++)); do c1+=("$(cpu_ticks "$(bpid "$o")")"); done
    t1=$(now_ns)
    local ok=1 sum=0 e0 e1
    for ((k = 0; k < 3; k++)); do
      wait "${sp[k]}" || ok=0
      forget "${sp[k]}"
      local d
      d=$(grep '^sse ' "$dir/dl.$k" | field deliveries_per_s)
      sum=$((sum + ${d:-0}))
    done
    ((ok)) || { say "delivery check failed:"; cat "$dir"/dl.*; }
    e0=$(grep '^sse ' "$dir/dl.0" | field p99_ms)
    drates+=("$sum")
    local cp=""
    for ((o = 0; o < n; o++)); do
      cp+="$(awk -v d=$((c1[o] - c0[o])) -v hz="$hz" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * d / hz / ((b - a) / 1e9)}') "
    done
    dcpu+=("${cp% }")
    say "  deliveries run $r: $sum/s (instances: $(for k in 0 1 2; do grep '^sse ' "$dir/dl.$k" | field deliveries_per_s; done | paste -sd/), p99_ms $(for k in 0 1 2; do grep '^sse ' "$dir/dl.$k" | field p99_ms; done | paste -sd/), check $( ((ok)) && echo ok || echo FAILED))"
  done
  say "deliveries brokers=$n instances=3x$dl_conns rate=3x$dl_rate offered=$((3 * dl_conns * dl_rate)) median_rate=$(median "${drates[@]}") runs=[${drates[*]}] broker_cpu_pct_per_run=[$(printf '%s; ' "${dcpu[@]}" | sed 's/; $//')]"
  if ((n == 3)) && [[ -z $only || $only == resume ]]; then resume; fi
  stop_cluster
}

# ---- 2. resume after an edge kill -------------------------------------------------------------

resume() {
  local r t alls=() comps=() line
  for ((r = 0; r < runs; r++)); do
    t=$(topic "rs$r" 0 3)
    local args=(--port $((base + 80)) --pub-port "$(eport 1)" --sub-path "/v1/sse?topic=$t"
      --pub-path "/v1/topics/$t/messages" --conns "$rs_conns" --rate "$rs_rate" --seconds 8
      --reconnect 1 --drain-ms 15000)
    [[ $r == 0 ]] && say "\$ $sse ${args[*]}    # edge 0 SIGKILLed about 3 s into publishing"
    "$sse" "${args[@]}" >"$dir/rs.out" 2>&1 &
    local sp=$!
    pids+=("$sp")
    for _ in $(seq 100); do grep -q '^connected' "$dir/rs.out" && break; sleep 0.1; done
    sleep 4 # 1 s settle + 3 s of publishing
    local on0
    on0=$(curl -s "http://127.0.0.1:$(eport 0)/metrics" | awk '/^herald_edge_connections\{transport="sse"\}/ {print $2}')
    cl kill-edge 0 KILL >/dev/null
    local ok=1
    wait "$sp" || ok=0
    forget "$sp"
    line=$(grep '^resume ' "$dir/rs.out" || true)
    say "  resume run $r: streams on edge 0 at the kill ${on0:-?}; $line; check $( ((ok)) && echo ok || echo FAILED)"
    ((ok)) || cat "$dir/rs.out"
    alls+=("$(field all_back_ms <<<" $line")")
    comps+=("$(field complete_ms <<<" $line")")
    cl start-edge 0 >/dev/null
  done
  say "resume subscribers=$rs_conns rate=$rs_rate median_all_back_ms=$(median "${alls[@]}") runs=[${alls[*]}] median_complete_ms=$(median "${comps[@]}") runs=[${comps[*]}]"
}

# ---- 3. backfill after a broker restart ---------------------------------------------------------

backfill() {
  start_cluster backfill 1 1 "--retention-messages 0 --map-size 8G"
  local r topics alt=$((base + 90)) data=$cdir/broker-0/data sub_rates=() span_rates=()
  topics=$(seq -f "topic=bench.t%g" 0 $((bf_topics - 1)) | paste -sd'&')
  for ((r = 0; r < runs; r++)); do
    local args=(--port "$(eport 0)" --sub-path "/v1/sse?$topics" --conns "$bf_conns"
      --expect "$bf_messages" --drain-ms 90000 --reconnect "$bf_reconnect")
    [[ $r == 0 ]] && say "\$ $sse ${args[*]}"
    "$sse" "${args[@]}" >"$dir/bf.out" 2>&1 &
    local sp=$! slow0 slow1
    pids+=("$sp")
    for _ in $(seq 100); do grep -q '^connected' "$dir/bf.out" && break; sleep 0.1; done
    sleep 0.5
    slow0=$(curl -s "http://127.0.0.1:$(eport 0)/metrics" | awk '/^herald_edge_slow_client_disconnects_total/ {print $2}')
    cl kill-broker 0 KILL >/dev/null
    [[ $r == 0 ]] && say "\$ $broker --cluster tcp://127.0.0.1:$alt --node-id 0 --listen tcp://127.0.0.1:$alt --live tcp://127.0.0.1:$((alt + 1)) --data-dir $data --partitions $P --retention-messages 0 --map-size 8G"
    "$broker" --cluster "tcp://127.0.0.1:$alt" --node-id 0 --listen "tcp://127.0.0.1:$alt" \
      --live "tcp://127.0.0.1:$((alt + 1))" --data-dir "$data" --partitions "$P" \
      --retention-messages 0 --map-size 8G --log-level warn 2>>"$dir/alt.log" &
    local ap=$!
    pids+=("$ap")
    for _ in $(seq 100); do "$cli" ping --broker "tcp://127.0.0.1:$alt" --timeout 100 >/dev/null 2>&1 && break; sleep 0.1; done
    [[ $r == 0 ]] && say "\$ $bench publish tcp://127.0.0.1:$alt 8 256 $bf_messages $bf_topics 100"
    "$bench" publish "tcp://127.0.0.1:$alt" 8 256 "$bf_messages" "$bf_topics" 100 >"$dir/bfpub.out"
    kill -TERM "$ap"
    wait "$ap" || true
    forget "$ap"
    local t0 first last line ok=1
    t0=$(now_ns)
    cl start-broker 0 >/dev/null
    wait "$sp" || ok=0
    forget "$sp"
    line=$(grep '^expect ' "$dir/bf.out" || true)
    slow1=$(curl -s "http://127.0.0.1:$(eport 0)/metrics" | awk '/^herald_edge_slow_client_disconnects_total/ {print $2}')
    first=$(field first_event_ns <<<" $line")
    last=$(field last_event_ns <<<" $line")
    local ev from_restart
    ev=$(field events <<<" $line")
    from_restart=$(awk -v e="$ev" -v a="$t0" -v b="$last" 'BEGIN {printf "%.0f", e / ((b - a) / 1e9)}')
    sub_rates+=("$from_restart")
    span_rates+=("$(field events_per_s <<<" $line")")
    say "  backfill run $r: $(field messages <"$dir/bfpub.out") published while the edge could not see them ($(field rate <"$dir/bfpub.out")/s); restart to first event $(awk -v a="$t0" -v b="$first" 'BEGIN {printf "%.0f", (b - a) / 1e6}') ms, to last $(awk -v a="$t0" -v b="$last" 'BEGIN {printf "%.0f", (b - a) / 1e6}') ms: $from_restart msgs/s from the restart command, $(field events_per_s <<<" $line")/s first to last event; slow-client disconnects $((${slow1:-0} - ${slow0:-0})); $line; check $( ((ok)) && echo ok || echo FAILED)"
    ((ok)) || cat "$dir/bf.out"
  done
  say "backfill messages=$bf_messages topics=$bf_topics subscribers=$bf_conns median_from_restart=$(median "${sub_rates[@]}") runs=[${sub_rates[*]}] median_first_to_last=$(median "${span_rates[@]}") runs=[${span_rates[*]}]"
  local fr=()
  for ((r = 0; r < runs; r++)); do
    fr+=("$("$bench" fetch "$(bep 0)" bench.t0 1000 1000 | field rate)")
  done
  say "fetch range=1000 messages_per_run=~1000000 median_rate=$(median "${fr[@]}") runs=[${fr[*]}]"
  stop_cluster
}

if [[ -z $only || $only == scale ]]; then
  for n in 1 2 3; do scale "$n"; done
elif [[ $only == resume ]]; then
  start_cluster resume 3 2
  resume
  stop_cluster
fi
if [[ -z $only || $only == backfill ]]; then backfill; fi
say "# done in $(($(date +%s) - t_begin)) s"

#!/usr/bin/env bash
# A whole Herald cluster on this machine: N brokers, M edges and HAProxy in front of the edges,
# plus node operations for failure testing (kill, restart, add an edge, cut a broker's network).
# Usage: deploy/local/cluster.sh COMMAND [ARGS]; `cluster.sh help` lists the commands and the
# environment variables, deploy/local/README.md explains them.
#
# Everything lives in one state directory (HERALD_CLUSTER_DIR, default ./herald-cluster):
#   cluster.env            the settings of the last `start` (every other command reads them)
#   edges                  the edge indices HAProxy knows (start's 0..M-1, plus added ones)
#   haproxy.cfg            generated; haproxy.log, haproxy.pid next to it
#   broker-I/data/         broker I's LMDB environment (kept across stop/start)
#   broker-I/log, edge-I/log    each node's stderr (appended, one "===" line per start)
#   broker-I/pid, edge-I/pid    "PID STARTTIME": a PID is signalled only while the process with
#                               that PID still has that start time (never a recycled PID)
# Nothing here touches a process it did not start, and in netns mode every namespace, veth and
# bridge is named herald[ID]-… (HERALD_NETNS_ID), so nothing else on the machine is affected.
set -euo pipefail

usage() {
  cat <<'TXT'
usage: deploy/local/cluster.sh COMMAND [ARGS]

commands:
  start                  start N brokers, M edges and HAProxy; returns once all of them answer
  stop                   SIGTERM every node (edges, HAProxy, brokers), wait, report; removes the
                         network namespaces; data stays in the state directory
  status                 which nodes are up, each edge's /readyz, HAProxy's view of the edges
                         (exit 0 when everything is up and ready, 1 otherwise)
  info                   the cluster's endpoints as KEY=VALUE lines (for scripts and tests)
  kill-broker I [SIG]    send broker I SIGKILL (or SIG, e.g. TERM) and wait for it to exit
  start-broker I         restart broker I with its data; returns once it answers a ping
  kill-edge I [SIG]      send edge I SIGKILL (or SIG, e.g. TERM for a graceful drain)
  start-edge I           (re)start edge I; an index HAProxy does not know yet is added to it
                         (haproxy.cfg rewritten, HAProxy reloaded without cutting streams)
  cut-broker I           netns mode: set broker I's link down (a network partition, not a kill)
  restore-broker I       netns mode: set it up again
  cut-edge I, restore-edge I    the same for edge I

environment (start records them in the state directory; the other commands use those):
  HERALD_CLUSTER_DIR           state directory                          ./herald-cluster
  HERALD_CLUSTER_BROKERS       number of brokers N                      3
  HERALD_CLUSTER_EDGES         number of edges M                        2
  HERALD_PARTITIONS            partitions P (fixed once data exists)    64
  HERALD_CLUSTER_BROKER_PORT   broker I: requests BASE+2I, live BASE+2I+1   7400
  HERALD_CLUSTER_EDGE_PORT     edge I: HTTP on BASE+I                   8081
  HERALD_CLUSTER_HAPROXY_PORT  HAProxy on 127.0.0.1:PORT                8080
  HERALD_CLUSTER_BROKER_ARGS   extra herald-broker flags (word-split)   (none)
  HERALD_CLUSTER_EDGE_ARGS     extra herald-edge flags (word-split)     (none)
  HERALD_NETNS                 1: every node in its own network namespace   0
  HERALD_NETNS_ID              netns mode: names herald<ID>-…, subnet 10.77.<ID>.0/24  (unset:
                               names herald-…, subnet 10.77.0.0/24)
  HERALD_BUILD_DIR             where the binaries are                   <repo>/build
  HERALD_BUILD                 1: run scripts/build.sh before starting  0
  HERALD_CLUSTER_WAIT          seconds a node may take to come up       15
  HERALD_CLUSTER_STOP_WAIT     seconds a node may take to stop before SIGKILL   10
HERALD_BROKER_<OPTION> and HERALD_EDGE_<OPTION> variables reach the nodes a command starts.
TXT
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

say() { printf 'cluster: %s\n' "$*"; }
die() {
  printf 'cluster: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------- settings --

dir=$(realpath -m "${HERALD_CLUSTER_DIR:-herald-cluster}")

# The settings `start` takes from the environment and records for every later command.
settings_from_env() {
  N=${HERALD_CLUSTER_BROKERS:-3}
  M=${HERALD_CLUSTER_EDGES:-2}
  P=${HERALD_PARTITIONS:-64}
  BPORT=${HERALD_CLUSTER_BROKER_PORT:-7400}
  EPORT=${HERALD_CLUSTER_EDGE_PORT:-8081}
  HPORT=${HERALD_CLUSTER_HAPROXY_PORT:-8080}
  BROKER_ARGS=${HERALD_CLUSTER_BROKER_ARGS:-}
  EDGE_ARGS=${HERALD_CLUSTER_EDGE_ARGS:-}
  NETNS=${HERALD_NETNS:-0}
  NETNS_ID=${HERALD_NETNS_ID:-}
  BUILD_DIR=$(realpath -m "${HERALD_BUILD_DIR:-$repo/build}")
  local v
  for v in N M P BPORT EPORT HPORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, not '${!v}'"
  done
  ((N >= 1 && N <= 90)) || die "HERALD_CLUSTER_BROKERS must be 1..90"
  ((M >= 1 && M <= 150)) || die "HERALD_CLUSTER_EDGES must be 1..150"
  [[ $NETNS == 0 || $NETNS == 1 ]] || die "HERALD_NETNS must be 0 or 1"
  [[ -z $NETNS_ID || ($NETNS_ID =~ ^[0-9]+$ && NETNS_ID -le 255) ]] ||
    die "HERALD_NETNS_ID must be 0..255"
  return 0
}

save_settings() {
  local v
  for v in N M P BPORT EPORT HPORT BROKER_ARGS EDGE_ARGS NETNS NETNS_ID BUILD_DIR; do
    printf '%s=%q\n' "$v" "${!v}"
  done >"$dir/cluster.env"
}

load_settings() {
  [[ -f $dir/cluster.env ]] || die "no cluster in $dir (run start first, or set HERALD_CLUSTER_DIR)"
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
}

derive() {
  WAIT=${HERALD_CLUSTER_WAIT:-15}
  STOP_WAIT=${HERALD_CLUSTER_STOP_WAIT:-10}
  BROKER_BIN=$BUILD_DIR/broker/herald-broker
  EDGE_BIN=$BUILD_DIR/edge/herald-edge
  CLI=$BUILD_DIR/cli/herald
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
  NSPFX=herald$NETNS_ID # herald-b0 or, with HERALD_NETNS_ID=5, herald5-b0
  SUBNET=10.77.${NETNS_ID:-0}
  BRIDGE=$NSPFX-br
}

# ------------------------------------------------------------------------- names, addresses --

broker_host() { if ((NETNS)); then echo "$SUBNET.$((10 + $1))"; else echo 127.0.0.1; fi; }
edge_host() { if ((NETNS)); then echo "$SUBNET.$((100 + $1))"; else echo 127.0.0.1; fi; }
broker_endpoint() { echo "tcp://$(broker_host "$1"):$((BPORT + 2 * $1))"; }
broker_live() { echo "tcp://$(broker_host "$1"):$((BPORT + 2 * $1 + 1))"; }
edge_url() { echo "http://$(edge_host "$1"):$((EPORT + $1))"; }
haproxy_url() { echo "http://127.0.0.1:$HPORT"; }
broker_list() {
  local i out=()
  for ((i = 0; i < N; i++)); do out+=("$(broker_endpoint "$i")"); done
  (
    IFS=,
    echo "${out[*]}"
  )
}
node_ns() { echo "$NSPFX-${1:0:1}$2"; } # node_ns broker 1 -> herald-b1
node_dir() { echo "$dir/$1-$2"; }
edge_indices() { if [[ -f $dir/edges ]]; then sort -nu "$dir/edges"; fi; }

check_index() { # kind index
  [[ $2 =~ ^[0-9]+$ ]] || die "$1 index must be a number, not '$2'"
  if [[ $1 == broker ]]; then
    (($2 < N)) || die "broker $2 does not exist: the cluster has $N brokers (0..$((N - 1)))"
  else
    (($2 < 150)) || die "edge index must be below 150"
  fi
}

# ------------------------------------------------------------------------------- processes --

# The fields of /proc/PID/stat after the command name: [0] state ... [19] start time.
proc_stat() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  echo "${s##*) }"
}

# running PIDFILE: the process recorded there is alive (not a zombie, not a recycled PID).
running() {
  local pid st f
  [[ -f $1 ]] || return 1
  read -r pid st <"$1" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -ra f <<<"$(proc_stat "$pid")" || return 1
  ((${#f[@]} > 19)) && [[ ${f[0]} != Z && ${f[0]} != X && ${f[19]} == "$st" ]]
}
pid_of() {
  local pid
  read -r pid _ <"$1" && echo "$pid"
}

# launch LOG PIDFILE NETNS CWD CMD...: CMD in a new session (a Ctrl-C in this terminal does not
# reach it), stdin from /dev/null, stdout and stderr appended to LOG, in network namespace NETNS
# when not empty. setsid and `ip netns exec` both exec in place (no fork), so $! is CMD's PID.
launch() {
  local log=$1 pidfile=$2 ns=$3 cwd=$4 pid f
  shift 4
  printf '=== %s cluster.sh: %s\n' "$(date '+%F %T')" "$*" >>"$log"
  if [[ -n $ns ]]; then set -- ip netns exec "$ns" "$@"; fi
  (cd "$cwd" && exec setsid "$@" </dev/null >>"$log" 2>&1) &
  pid=$!
  read -ra f <<<"$(proc_stat "$pid")" || true
  echo "$pid ${f[19]:-0}" >"$pidfile"
}

now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  echo $((t / 1000))
}

# wait_gone PIDFILE DEADLINE_MS: 0 once the process has exited, 1 if it is still there then.
wait_gone() {
  while running "$1"; do
    (($(now_ms) < $2)) || return 1
    sleep 0.05
  done
}

node_pidfile() { if [[ $1 == haproxy ]]; then echo "$dir/haproxy.pid"; else echo "$(node_dir "$1" "$2")/pid"; fi; }

# signal_nodes SIG WAIT KIND[:I]...: send SIG to every one of these nodes that runs, all at once,
# then wait up to WAIT s for them to exit (SIGKILL for any still there) and report each. A node
# whose process is gone although its PID file is there ("exited on its own") is reported too.
# Sets SIGNALLED to the number of nodes that were running.
signal_nodes() {
  local sig=${1#SIG} wait=$2 spec kind i f k pid deadline t0
  local files=() names=() pids=()
  shift 2
  for spec in "$@"; do
    kind=${spec%%:*}
    i=${spec#"$kind"}
    i=${i#:}
    f=$(node_pidfile "$kind" "$i")
    if running "$f"; then
      pid=$(pid_of "$f")
      kill -s "$sig" "$pid" 2>/dev/null || true
      files+=("$f")
      names+=("$kind${i:+ $i}")
      pids+=("$pid")
    elif [[ -e $f ]]; then
      rm -f "$f"
      echo "$kind${i:+ $i}: not running (exited on its own or was killed)"
    else
      echo "$kind${i:+ $i}: not running"
    fi
  done
  t0=$(now_ms)
  deadline=$((t0 + wait * 1000))
  for k in "${!files[@]}"; do
    if wait_gone "${files[k]}" "$deadline"; then
      printf '%s: stopped by SIG%s (pid %s, %d ms)\n' "${names[k]}" "$sig" "${pids[k]}" \
        $(($(now_ms) - t0))
    else
      kill -s KILL "${pids[k]}" 2>/dev/null || true
      wait_gone "${files[k]}" $(($(now_ms) + 5000)) || true
      printf '%s: still running %s s after SIG%s (pid %s): killed with SIGKILL\n' "${names[k]}" \
        "$wait" "$sig" "${pids[k]}"
    fi
    rm -f "${files[k]}"
  done
  SIGNALLED=${#files[@]}
}

# node_failed KIND I WHAT: explain why a node did not come up, with the tail of its log.
node_failed() {
  local log
  if [[ $1 == haproxy ]]; then log=$dir/haproxy.log; else log=$(node_dir "$1" "$2")/log; fi
  {
    printf 'cluster: %s%s %s\n' "$1" "${2:+ $2}" "$3"
    printf 'cluster: its log since this start (%s, last 20 lines):\n' "$log"
    # From the last "===" line launch wrote: this start's output, not an earlier run's.
    awk '/^=== / {n = 0} {line[n++] = $0} END {for (i = 0; i < n; i++) print line[i]}' "$log" \
      2>/dev/null | tail -n 20 | sed 's/^/    /'
  } >&2
  return 1
}

# ---------------------------------------------------------------------- network namespaces --

need_root_ip() {
  [[ $(id -u) -eq 0 ]] || die "HERALD_NETNS=1 needs root (ip netns, veth, bridge)"
  command -v ip >/dev/null || die "HERALD_NETNS=1 needs the ip command (apt-get install iproute2)"
}

# The state directory that owns the bridge (kept in the bridge's alias), empty if none.
bridge_owner() { cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true; }

# The bridge in the root namespace: every node's veth is a port of it, and its address is how
# HAProxy and the CLI (in the root namespace) reach the nodes. Its alias names the state
# directory, so a second cluster with the same names is refused instead of taking these over.
netns_bridge() {
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    local owner
    owner=$(bridge_owner)
    [[ -z $owner || $owner == "${dir:0:255}" ]] ||
      die "$BRIDGE and the $NSPFX-* namespaces belong to the cluster in $owner: stop it, or set HERALD_NETNS_ID"
  else
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" alias "${dir:0:255}"
  ip link set "$BRIDGE" up
}

# netns_node KIND I: namespace herald-b1 (or -e1) with loopback up and a veth pair: herald-b1 in
# the root namespace on the bridge, herald-b1p inside with the node's address.
netns_node() {
  local ns host
  ns=$(node_ns "$1" "$2")
  if [[ $1 == broker ]]; then host=$(broker_host "$2"); else host=$(edge_host "$2"); fi
  netns_bridge
  [[ -e /run/netns/$ns ]] || ip netns add "$ns"
  ip -n "$ns" link set lo up
  if ! ip link show "$ns" >/dev/null 2>&1; then
    ip link add "$ns" type veth peer name "${ns}p" netns "$ns"
    ip link set "$ns" master "$BRIDGE"
    ip -n "$ns" addr add "$host/24" dev "${ns}p"
  fi
  ip -n "$ns" link set "${ns}p" up
  ip link set "$ns" up
}

# Removes this cluster's namespaces (their veth pairs go with them) and the bridge, unless the
# bridge belongs to another state directory.
netns_teardown() {
  local ns removed=0 owner
  owner=$(bridge_owner)
  if [[ -n $owner && $owner != "${dir:0:255}" ]]; then
    say "leaving $BRIDGE and the $NSPFX-* namespaces alone: they belong to the cluster in $owner"
    return 0
  fi
  for ns in /run/netns/"$NSPFX"-[be]*; do
    [[ -e $ns ]] || continue
    ns=${ns##*/}
    [[ $ns =~ ^$NSPFX-[be][0-9]+$ ]] || continue
    ip link del "$ns" 2>/dev/null || true
    ip netns del "$ns" && removed=$((removed + 1))
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
    removed=$((removed + 1))
  fi
  ((removed == 0)) || say "removed $removed network namespace(s) and bridge(s) ($NSPFX-*)"
}

link_state() { # kind i -> up | down
  local ns
  ns=$(node_ns "$1" "$2")
  local state
  state=$(ip -br link show "$ns" 2>/dev/null | awk '{print $2}')
  case $state in
    UP) echo up ;;
    "") echo missing ;;
    *) echo down ;;
  esac
}

set_link() { # kind i up|down
  ((NETNS)) || die "cut-$1/restore-$1 need a cluster started with HERALD_NETNS=1"
  need_root_ip
  local ns
  ns=$(node_ns "$1" "$2")
  ip link show "$ns" >/dev/null 2>&1 || die "$1 $2 has no network namespace link ($ns)"
  ip link set "$ns" "$3"
  say "$1 $2: link $ns $3"
}

# --------------------------------------------------------------------------------- brokers --

start_broker() { # i: launch broker i (does not wait)
  local i=$1 d ns="" args
  d=$(node_dir broker "$i")
  mkdir -p "$d/data"
  running "$d/pid" && die "broker $i is already running (pid $(pid_of "$d/pid"))"
  read -ra args <<<"$BROKER_ARGS"
  local port=$((BPORT + 2 * i))
  local net=(--listen "tcp://127.0.0.1:$port" --live "tcp://127.0.0.1:$((port + 1))")
  if ((NETNS)); then
    netns_node broker "$i"
    ns=$(node_ns broker "$i")
    # Bound to every address of its namespace, advertising the namespace's address to peers and
    # edges (a wildcard address is not one anybody can dial).
    net=(--listen "tcp://*:$port" --live "tcp://*:$((port + 1))" --advertise "$(broker_host "$i")")
  fi
  launch "$d/log" "$d/pid" "$ns" "$d" "$BROKER_BIN" --cluster "$(broker_list)" --node-id "$i" \
    "${net[@]}" --data-dir "$d/data" --partitions "$P" "${args[@]}"
}

wait_broker() { # i: until it answers a ping, bounded
  local i=$1 d ep deadline
  d=$(node_dir broker "$i")
  ep=$(broker_endpoint "$i")
  deadline=$(($(now_ms) + WAIT * 1000))
  until "$CLI" ping --broker "$ep" --timeout 200 >/dev/null 2>&1; do
    running "$d/pid" || node_failed broker "$i" "exited before answering a ping on $ep" || return 1
    (($(now_ms) < deadline)) ||
      node_failed broker "$i" "did not answer a ping on $ep within $WAIT s" || return 1
    sleep 0.1
  done
}

# ----------------------------------------------------------------------------------- edges --

start_edge() { # i: launch edge i (does not wait)
  local i=$1 d ns="" args
  d=$(node_dir edge "$i")
  mkdir -p "$d"
  running "$d/pid" && die "edge $i is already running (pid $(pid_of "$d/pid"))"
  read -ra args <<<"$EDGE_ARGS"
  if ((NETNS)); then
    netns_node edge "$i"
    ns=$(node_ns edge "$i")
  fi
  # Every broker, not just one: an edge (re)started while some broker is down still learns the
  # cluster from another.
  launch "$d/log" "$d/pid" "$ns" "$d" "$EDGE_BIN" --listen "$(edge_host "$i"):$((EPORT + i))" \
    --brokers "$(broker_list)" "${args[@]}"
}

wait_edge() { # i: until /readyz answers 200, bounded
  local i=$1 d url deadline
  d=$(node_dir edge "$i")
  url=$(edge_url "$i")/readyz
  deadline=$(($(now_ms) + WAIT * 1000))
  until curl -sf -m 1 -o /dev/null "$url"; do
    running "$d/pid" || node_failed edge "$i" "exited before $url answered 200" || return 1
    (($(now_ms) < deadline)) || node_failed edge "$i" "$url did not answer 200 within $WAIT s" ||
      return 1
    sleep 0.1
  done
}

# --------------------------------------------------------------------------------- haproxy --

# HAProxy's runtime API socket, left out when its path is too long for a Unix socket.
haproxy_socket() {
  local sock=$dir/haproxy.sock
  if ((${#sock} < 100)); then
    echo "    # The runtime API (echo 'show stat' | socat - UNIX:haproxy.sock); it also hands the"
    echo "    # listening socket to the next worker on a reload."
    echo "    stats socket \"$sock\" mode 600 level admin expose-fd listeners"
  fi
}

# haproxy.cfg for the edges in $dir/edges. Every setting is explained: this file is what
# "HAProxy in front of Herald edges" should look like, not just what a test needs.
haproxy_cfg() {
  local i
  cat <<EOF
# Generated by deploy/local/cluster.sh ($(date '+%F %T')); start and start-edge rewrite it.
global
    maxconn 4096
    # Logs (one line per request, a stream's line when it ends) go to haproxy.log.
    log stderr format iso local0 info
    # Runs as master + worker (-W): start-edge adds a server by rewriting this file and sending
    # the master SIGUSR2; a new worker takes over the listener while the old one keeps serving
    # the streams it holds until they end, so a reload never cuts a subscriber. (No
    # hard-stop-after, which would cut them; stop sends SIGTERM, which ends every worker.)
$(haproxy_socket)

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # Keep-alive on both sides, HAProxy's default, stated on purpose: a response is forwarded as
    # it arrives, never buffered, which SSE, NDJSON streams and long polls need. Not
    # "option http-server-close" (it closes the edge-side connection after every response:
    # wrong for streams and a new edge connection per poll) and not "option httpclose" (closes
    # both sides after one exchange).
    option http-keep-alive
    # Requests go to an edge as they arrive; waiting for a request body is switched on below for
    # publishes only (http-request wait-for-body), where it is harmless.
    no option http-buffer-request
    # Local network: a connection either succeeds at once or the edge is gone (a cut netns edge
    # costs this long before the retry below goes to another edge).
    timeout connect 1s
    # Longer than the longest long poll (--poll-max-wait 60 s, default wait 25 s) plus margin, and
    # far longer than the 15 s heartbeat SSE and NDJSON streams carry, so a quiet but healthy
    # stream or poll is never cut; a dead client or edge is noticed within it.
    timeout client 75s
    timeout server 75s
    # Once a connection is a tunnel (a WebSocket after its 101 upgrade) this replaces both timeouts
    # above: long, since a subscriber may stay connected for hours (the edge pings every 20 s).
    timeout tunnel 1h
    # A whole request's headers must arrive within this (the edge's --header-timeout is 10 s too);
    # an idle keep-alive client connection between requests is closed after this.
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 2s
    # A connection refused (or timed out) by a dead edge is retried, each retry on another edge
    # (redispatch 1), so a client never sees a 503 because one edge died: an EventSource would
    # give up for good on a non-200 answer. Only connection failures are retried: nothing has
    # reached an edge yet, so retrying a publish cannot duplicate it.
    retries 3
    option redispatch 1

frontend herald
    bind 127.0.0.1:$HPORT
    # HAProxy's own page (not Herald's API): /haproxy-stats, and /haproxy-stats;csv for scripts
    # (cluster.sh status reads each edge's state there).
    stats enable
    stats uri /haproxy-stats
    stats refresh 5s
    default_backend herald-edges

backend herald-edges
    # Connections live long (SSE, streams, WebSocket, long polls): round robin would hand every
    # edge the same share of new connections however many it already holds; leastconn gives the
    # next one to the edge with the fewest, so a restarted or added edge fills up first.
    balance leastconn
    # "option http-buffer-request", for publishes only (POST /v1/topics/{t}/messages and
    # POST /v1/messages): HAProxy receives the body (up to one buffer, 16 kB) before choosing an
    # edge, so a slow uploader holds no edge connection and a publish that meets a dead edge is
    # retried with its body. Harmless there: the edge itself wants a whole request within its
    # --header-timeout (10 s), the same budget given here (a slower sender gets 408 either way).
    # Never for the GETs: SSE, polls, streams and WebSocket upgrades must reach an edge at once.
    http-request wait-for-body time 10s if METH_POST
    # An edge takes traffic only while /readyz answers 200: it knows the partition map, reaches a
    # broker and is not draining (after SIGTERM /readyz turns 503 at once, so a draining edge
    # leaves the pool within a check or two). One broker down does not fail it.
    option httpchk GET /readyz
    http-check expect status 200
    # Checked every second, and every 250 ms after a failure: an edge that refuses connections
    # (killed) or answers 503 (draining) is out within about 1.25 s, one that does not answer at
    # all (cut-edge) within about 4 s, its checks timing out after "timeout connect" (until then
    # redispatch covers it). A down edge is checked every 500 ms and back after two good answers.
    default-server check inter 1s fastinter 250ms downinter 500ms fall 2 rise 2
EOF
  for i in $(edge_indices); do
    echo "    server edge$i $(edge_host "$i"):$((EPORT + i))"
  done
}

write_haproxy_cfg() {
  haproxy_cfg >"$dir/haproxy.cfg.new"
  local out
  if ! out=$("$HAPROXY" -c -f "$dir/haproxy.cfg.new" 2>&1); then
    printf '%s\n' "$out" >&2
    die "the generated $dir/haproxy.cfg.new does not pass haproxy -c"
  fi
  mv "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"
}

# HAProxy's view of the edges: "edge0 UP" lines from the stats CSV (field 18 is the status).
haproxy_servers() {
  curl -s -m 2 "$(haproxy_url)/haproxy-stats;csv" 2>/dev/null |
    awk -F, '$1 == "herald-edges" && $2 != "BACKEND" && $2 != "FRONTEND" {print $2, $18}'
}

# wait_haproxy_server NAME: until HAProxy routes to it (status UP), bounded; warns otherwise.
wait_haproxy_server() {
  local deadline=$(($(now_ms) + WAIT * 1000))
  until haproxy_servers | grep -qx "$1 UP"; do
    if (($(now_ms) >= deadline)); then
      say "warning: HAProxy does not report $1 UP after $WAIT s: $(haproxy_servers | tr '\n' ' ')" >&2
      return 0
    fi
    sleep 0.1
  done
}

start_haproxy() {
  command -v "$HAPROXY" >/dev/null ||
    die "haproxy not found: apt-get install haproxy (or bash scripts/deps.sh test)"
  running "$dir/haproxy.pid" && die "haproxy is already running (pid $(pid_of "$dir/haproxy.pid"))"
  write_haproxy_cfg
  launch "$dir/haproxy.log" "$dir/haproxy.pid" "" "$dir" "$HAPROXY" -W -db -f "$dir/haproxy.cfg"
  local deadline=$(($(now_ms) + WAIT * 1000))
  until curl -sf -m 1 -o /dev/null "$(haproxy_url)/readyz"; do
    running "$dir/haproxy.pid" || node_failed haproxy "" "exited" || return 1
    (($(now_ms) < deadline)) ||
      node_failed haproxy "" "$(haproxy_url)/readyz did not answer 200 within $WAIT s" || return 1
    sleep 0.1
  done
}

reload_haproxy() {
  write_haproxy_cfg
  if running "$dir/haproxy.pid"; then
    kill -USR2 "$(pid_of "$dir/haproxy.pid")"
    say "haproxy: reloaded with $dir/haproxy.cfg"
  else
    say "haproxy is not running: $dir/haproxy.cfg is rewritten for its next start"
  fi
}

# -------------------------------------------------------------------------------- commands --

check_binaries() {
  local b
  for b in "$BROKER_BIN" "$EDGE_BIN" "$CLI"; do
    [[ -x $b ]] || die "$b not found: build first (bash scripts/build.sh) or run with HERALD_BUILD=1"
  done
  command -v "$HAPROXY" >/dev/null ||
    die "haproxy not found: apt-get install haproxy (or bash scripts/deps.sh test)"
  command -v curl >/dev/null || die "curl not found: apt-get install curl"
}

any_running() {
  local f
  for f in "$dir"/broker-*/pid "$dir"/edge-*/pid "$dir"/haproxy.pid; do
    [[ -e $f ]] && running "$f" && return 0
  done
  return 1
}

start_ok=0
abort_start() {
  local rc=$?
  ((start_ok)) && return
  trap - EXIT INT TERM
  echo "cluster: start failed; stopping what it started" >&2
  stop_all >&2 || true
  exit $((rc ? rc : 1))
}

cmd_start() {
  settings_from_env
  derive
  if [[ ${HERALD_BUILD:-0} == 1 ]]; then
    bash "$repo/scripts/build.sh"
  fi
  check_binaries
  ((NETNS)) && need_root_ip
  mkdir -p "$dir"
  any_running && die "a cluster is already running in $dir (cluster.sh status; cluster.sh stop)"
  save_settings
  seq 0 $((M - 1)) >"$dir/edges"
  rm -f "$dir"/broker-*/pid "$dir"/edge-*/pid "$dir"/haproxy.pid

  trap abort_start EXIT
  trap 'exit 130' INT TERM
  local i t0
  t0=$(now_ms)
  # All brokers at once, then wait for each: they come up in parallel.
  for ((i = 0; i < N; i++)); do start_broker "$i"; done
  for ((i = 0; i < N; i++)); do wait_broker "$i"; done
  for ((i = 0; i < M; i++)); do start_edge "$i"; done
  for ((i = 0; i < M; i++)); do wait_edge "$i"; done
  start_haproxy
  start_ok=1
  trap - EXIT INT TERM

  say "started in $(($(now_ms) - t0)) ms: $N broker(s), $M edge(s), HAProxy ($P partitions, network namespaces $( ((NETNS)) && echo on || echo off))"
  for ((i = 0; i < N; i++)); do
    say "  broker $i  $(broker_endpoint "$i") (live $(broker_live "$i"))  pid $(pid_of "$(node_dir broker "$i")/pid")"
  done
  for ((i = 0; i < M; i++)); do
    say "  edge $i    $(edge_url "$i")  pid $(pid_of "$(node_dir edge "$i")/pid")"
  done
  say "  haproxy   $(haproxy_url)  pid $(pid_of "$dir/haproxy.pid")  (stats $(haproxy_url)/haproxy-stats)"
  say "state, logs and haproxy.cfg in $dir"
  say "try: curl -X POST --data hi $(haproxy_url)/v1/topics/demo/messages; curl -N '$(haproxy_url)/v1/sse?topic=demo'"
}

# Every node that has a PID file, edges first (each gives its clients their cursors and closes
# their streams), then HAProxy, then brokers (each finishes its in-flight commits, closes LMDB).
stop_all() {
  local kind f i stopped=0 nodes
  for kind in edge haproxy broker; do
    nodes=()
    if [[ $kind == haproxy ]]; then
      [[ -e $dir/haproxy.pid ]] && nodes=(haproxy)
    else
      for f in "$dir/$kind"-*/pid; do
        [[ -e $f ]] || continue
        i=${f%/pid}
        nodes+=("$kind:${i##*-}")
      done
    fi
    ((${#nodes[@]})) || continue
    signal_nodes TERM "$STOP_WAIT" "${nodes[@]}"
    stopped=$((stopped + SIGNALLED))
  done
  ((stopped > 0)) || say "nothing was running in $dir"
  if ((NETNS)); then
    need_root_ip
    netns_teardown
  fi
}

cmd_stop() {
  load_settings
  derive
  stop_all
}

cmd_status() {
  load_settings
  derive
  local i d ok=1 line body code pid link=""
  printf 'Herald cluster in %s: %s broker(s), edges %s, %s partitions, network namespaces %s\n' \
    "$dir" "$N" "$(edge_indices | tr '\n' ' ' | sed 's/ $//')" "$P" "$( ((NETNS)) && echo on || echo off)"
  for ((i = 0; i < N; i++)); do
    d=$(node_dir broker "$i")
    ((NETNS)) && link="  link $(link_state broker "$i")"
    if running "$d/pid"; then
      pid=$(pid_of "$d/pid")
      if "$CLI" ping --broker "$(broker_endpoint "$i")" --timeout 500 >/dev/null 2>&1; then
        line="up     pid $pid  $(broker_endpoint "$i")  ping ok$link"
      else
        line="up     pid $pid  $(broker_endpoint "$i")  ping FAILED$link"
        ok=0
      fi
    else
      line="down   $(broker_endpoint "$i")$link"
      ok=0
    fi
    printf 'broker %-3s %s\n' "$i" "$line"
  done
  for i in $(edge_indices); do
    d=$(node_dir edge "$i")
    link=""
    ((NETNS)) && link="  link $(link_state edge "$i")"
    if running "$d/pid"; then
      pid=$(pid_of "$d/pid")
      body=$(curl -s -m 2 -w '\n%{http_code}' "$(edge_url "$i")/readyz" 2>/dev/null || true)
      code=${body##*$'\n'}
      body=${body%$'\n'*}
      [[ $code == 200 ]] || ok=0
      line="up     pid $pid  $(edge_url "$i")$link  readyz ${code:-000} $body"
    else
      line="down   $(edge_url "$i")$link"
      ok=0
    fi
    printf 'edge %-5s %s\n' "$i" "$line"
  done
  if running "$dir/haproxy.pid"; then
    printf 'haproxy    up     pid %s  %s  %s\n' "$(pid_of "$dir/haproxy.pid")" "$(haproxy_url)" \
      "$(haproxy_servers | tr '\n' ',' | sed 's/,$//; s/,/, /g')"
  else
    printf 'haproxy    down   %s\n' "$(haproxy_url)"
    ok=0
  fi
  ((ok))
}

cmd_info() {
  load_settings
  derive
  local i urls=()
  for i in $(edge_indices); do urls+=("$(edge_url "$i")"); done
  echo "HERALD_CLUSTER_DIR=$dir"
  echo "HERALD_CLUSTER_URL=$(haproxy_url)"
  echo "HERALD_CLUSTER_BROKER_ENDPOINTS=$(broker_list)"
  echo "HERALD_CLUSTER_EDGE_URLS=$(
    IFS=,
    echo "${urls[*]}"
  )"
  echo "HERALD_CLUSTER_PARTITIONS=$P"
  echo "HERALD_CLUSTER_NETNS=$NETNS"
}

cmd_kill() { # kind i [sig]
  load_settings
  derive
  check_index "$1" "$2"
  local sig=${3:-KILL}
  sig=${sig#SIG}
  kill -l "$sig" >/dev/null 2>&1 || die "unknown signal '$3'"
  signal_nodes "$sig" "$STOP_WAIT" "$1:$2"
  ((SIGNALLED)) || exit 1
}

cmd_start_broker() {
  load_settings
  derive
  check_index broker "$1"
  ((NETNS)) && need_root_ip
  start_broker "$1"
  wait_broker "$1" || exit 1
  say "broker $1 up: $(broker_endpoint "$1") pid $(pid_of "$(node_dir broker "$1")/pid")"
}

cmd_start_edge() {
  load_settings
  derive
  check_index edge "$1"
  ((NETNS)) && need_root_ip
  start_edge "$1"
  wait_edge "$1" || exit 1
  say "edge $1 up: $(edge_url "$1") pid $(pid_of "$(node_dir edge "$1")/pid")"
  if ! edge_indices | grep -qx "$1"; then
    echo "$1" >>"$dir/edges"
    reload_haproxy
  fi
  running "$dir/haproxy.pid" && wait_haproxy_server "edge$1"
  return 0
}

case "${1:-help}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  info) cmd_info ;;
  kill-broker | kill-edge)
    (($# >= 2)) || die "usage: $1 I [SIGNAL]"
    cmd_kill "${1#kill-}" "$2" "${3:-KILL}"
    ;;
  start-broker)
    (($# == 2)) || die "usage: start-broker I"
    cmd_start_broker "$2"
    ;;
  start-edge)
    (($# == 2)) || die "usage: start-edge I"
    cmd_start_edge "$2"
    ;;
  cut-broker | restore-broker | cut-edge | restore-edge)
    (($# == 2)) || die "usage: $1 I"
    load_settings
    derive
    kind=${1#*-}
    check_index "$kind" "$2"
    if [[ $1 == cut-* ]]; then set_link "$kind" "$2" down; else set_link "$kind" "$2" up; fi
    ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac

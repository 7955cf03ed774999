# Shared by tests/bench/edge.sh and tests/bench/edge_poll.sh (sourced, not run): the descriptor
# limit, a temporary directory, process bookkeeping (every background process ended by PID on
# exit), /proc readings, and starting and stopping Herald (herald-broker + herald-edge) and Nchan
# (nginx with the nchan module) pinned to core $scpu.
# The caller sets: broker, edge, idle, scpu, nchan_module; and before start_nchan:
# nchan_locations (the subscriber location blocks), optionally nchan_buffer, nchan_http_extra.

# Streams and held polls are descriptors: 10,000 of them plus listeners need more than the usual
# 1,024.
# Root can raise the hard limit (unless a container withholds CAP_SYS_RESOURCE); the soft one
# goes up to the hard one in any case.
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
(( $(ulimit -n) >= idle + 1000 )) || { echo "ulimit -n is $(ulimit -n); run as root" >&2; exit 1; }

dir=$(mktemp -d /tmp/herald-edge-bench.XXXXXX)
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()   # every background process still running, ended by PID on exit
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
forget() { local keep=() p; for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; pids=("${keep[@]}"); }
stop() { # stop PID: SIGTERM, wait at most 10 s, then SIGKILL
  local p=$1
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  forget "$p"
}
say() { printf '%s\n' "$*"; }
cmd() { say "\$ $*"; }    # print the exact command about to run
cpu_of() { # utime+stime of the PIDs, in clock ticks
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done
  echo "$t"
}
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)

# ---- servers ------------------------------------------------------------------------------

hb_pid="" he_pid="" h_port=""
start_herald() { # start_herald SYNC
  local sync=$1 req live
  req="tcp://127.0.0.1:$(port)" live="tcp://127.0.0.1:$(port)" h_port=$(port)
  rm -rf "$dir/herald-data"
  cmd taskset -c "$scpu" "$broker" --listen "$req" --live "$live" --data-dir "$dir/herald-data" \
    --sync="$sync" --map-size 8G --log-level warn
  taskset -c "$scpu" "$broker" --listen "$req" --live "$live" --data-dir "$dir/herald-data" \
    --sync="$sync" --map-size 8G --log-level warn 2>>"$dir/broker.log" &
  hb_pid=$!; pids+=("$hb_pid")
  cmd taskset -c "$scpu" "$edge" --listen "127.0.0.1:$h_port" --brokers "$req" --log-level warn
  taskset -c "$scpu" "$edge" --listen "127.0.0.1:$h_port" --brokers "$req" --log-level warn \
    2>>"$dir/edge.log" &
  he_pid=$!; pids+=("$he_pid")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$h_port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "herald did not become ready"; cat "$dir/broker.log" "$dir/edge.log"; exit 1
}
stop_herald() { stop "$he_pid"; stop "$hb_pid"; he_pid="" hb_pid=""; }

nm_pid="" nw_pids="" n_port=""
start_nchan() {
  n_port=$(port)
  mkdir -p "$dir/nginx/tmp"
  # Equivalent to the Herald edge: a publisher location and the caller's subscriber locations
  # ($nchan_locations), messages buffered in shared memory (the memory store; $nchan_buffer per
  # channel), one worker, its own pid and log paths; $nchan_http_extra adds http directives.
  cat >"$dir/nginx/nginx.conf" <<EOF
load_module $nchan_module;
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections $(($(ulimit -n) - 100)); }
http {
  access_log off;
  client_body_temp_path $dir/nginx/tmp/body;
  proxy_temp_path $dir/nginx/tmp/proxy;
  fastcgi_temp_path $dir/nginx/tmp/fastcgi;
  uwsgi_temp_path $dir/nginx/tmp/uwsgi;
  scgi_temp_path $dir/nginx/tmp/scgi;
  keepalive_requests 1000000;
${nchan_http_extra:-}
  nchan_max_reserved_memory 512M;
  server {
    listen 127.0.0.1:$n_port backlog=4096;
    location = /pub {
      nchan_publisher;
      nchan_channel_id \$arg_id;
      nchan_message_buffer_length ${nchan_buffer:-1000};
      nchan_message_timeout 1h;
    }
$nchan_locations
    location = /ready { return 200 "ok\n"; }
  }
}
EOF
  cmd taskset -c "$scpu" nginx -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf" -g "'daemon off;'"
  taskset -c "$scpu" nginx -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf" \
    -g 'daemon off;' \
    2>>"$dir/nginx/stderr.log" &
  nm_pid=$!; pids+=("$nm_pid")
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$n_port/ready" >/dev/null 2>&1; then
      nw_pids=$(ps -o pid= --ppid "$nm_pid" | tr -s ' \n' ' ')
      return 0
    fi
    sleep 0.1
  done
  say "nginx did not start"; cat "$dir/nginx/error.log" "$dir/nginx/stderr.log"; exit 1
}
stop_nchan() { stop "$nm_pid"; nm_pid="" nw_pids=""; }

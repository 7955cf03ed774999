#!/usr/bin/env bash
# The one run command (README "Quick start"): install what Herald needs, build it, start a broker
# (requests tcp://127.0.0.1:7400, live tcp://127.0.0.1:7401, data ./herald-data) and an edge
# (http://127.0.0.1:8080), publish a message with the CLI and over HTTP, read them back, print
# working curl commands, and keep both running until Ctrl-C or SIGTERM, which stop them cleanly.
# HERALD_DEMO_ONLY=1 stops after the demo. Options can be set as HERALD_* environment variables
# (herald-broker --help, herald-edge --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build.sh

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 0' INT TERM

./build/broker/herald-broker &
pids+=($!)
for _ in $(seq 50); do
  ./build/cli/herald ping --timeout 200 >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "run-local: the broker did not start" >&2; exit 1; }
done
./build/edge/herald-edge &
pids+=($!)
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || { echo "run-local: the edge did not start" >&2; exit 1; }
  sleep 0.1
done

echo "== publishing with the CLI (ZeroMQ): herald publish demo 'hello from herald'"
./build/cli/herald publish demo "hello from herald"
echo "== publishing over HTTP: curl -X POST --data 'hello over HTTP' http://127.0.0.1:8080/v1/topics/demo/messages"
curl -sS -X POST --data 'hello over HTTP' http://127.0.0.1:8080/v1/topics/demo/messages
echo
echo "== reading topic demo back: curl 'http://127.0.0.1:8080/v1/topics/demo/messages?after=earliest&limit=5'"
curl -sS 'http://127.0.0.1:8080/v1/topics/demo/messages?after=earliest&limit=5'
echo
cat <<'TXT'

Herald is running: a broker on tcp://127.0.0.1:7400 and an edge on http://127.0.0.1:8080.
  Open http://127.0.0.1:8080/?topic=demo in a browser to watch topic demo live (EventSource).
  Subscribe with Server-Sent Events:   curl -N 'http://127.0.0.1:8080/v1/sse?topic=demo'
  Publish over HTTP:                    curl -X POST --data 'hi' http://127.0.0.1:8080/v1/topics/demo/messages
  Publish with the CLI (ZeroMQ):        ./build/cli/herald publish demo 'hi'
Ctrl-C stops both.
TXT
if [[ "${HERALD_DEMO_ONLY:-0}" == 1 ]]; then
  exit 0
fi
wait "${pids[@]}"

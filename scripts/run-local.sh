#!/usr/bin/env bash
# The one run command (README "Quick start"): install what Herald needs, build it, start a broker
# on 127.0.0.1 (requests tcp://127.0.0.1:7400, live tcp://127.0.0.1:7401, data ./herald-data),
# publish a message with the CLI and read it back, then keep the broker in the foreground until
# Ctrl-C (SIGTERM/SIGINT stop it cleanly). HERALD_DEMO_ONLY=1 stops after the demo.
# Broker options can be set as HERALD_* environment variables (herald-broker --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
cmake --build build -j"$(nproc)"

./build/broker/herald-broker "$@" &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM

for _ in $(seq 50); do
  ./build/cli/herald ping --timeout 200 >/dev/null 2>&1 && break
  kill -0 $broker 2>/dev/null || { echo "run-local: the broker did not start" >&2; exit 1; }
done

echo "== publishing 'hello from herald' to topic demo"
id=$(./build/cli/herald publish demo "hello from herald")
echo "id: $id"
echo "== reading topic demo back (herald fetch demo)"
./build/cli/herald fetch demo --after earliest --limit 5
echo
echo "Herald broker running (pid $broker). Try, in another shell:"
echo "  ./build/cli/herald tail demo"
echo "  ./build/cli/herald publish demo 'another message'"
echo "Ctrl-C stops it."
if [[ "${HERALD_DEMO_ONLY:-0}" == 1 ]]; then
  exit 0
fi
wait $broker

#!/usr/bin/env bash
# The one test command (README "Quick start"; .ci/run runs exactly this):
#   1. install the build and test packages (scripts/deps.sh test)
#   2. check formatting (clang-format, .clang-format)
#   3. build with -Werror and run every CTest test: unit, fuzz-corpus replays, integration
#   4. build with -fsanitize=address,undefined and run the unit tests, the fuzz-corpus replays
#      and the integration subset labelled below (README says which)
#   5. build the libFuzzer targets with clang and run each for a few seconds
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

bash scripts/deps.sh test
echo "== browser test tools (playwright-core from npm; the browser is Debian's chromium)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== format check"
mapfile -t sources < <(git ls-files '*.c' '*.h' 2>/dev/null || find common proto storage broker cli edge tests -name '*.[ch]')
clang-format --dry-run --Werror "${sources[@]}"

echo "== build (warnings are errors)"
cmake -S . -B build -DHERALD_WERROR=ON -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
echo "== tests"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== build with AddressSanitizer and UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DHERALD_WERROR=ON -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=Debug \
  -DHERALD_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$jobs"
echo "== tests under the sanitizers: unit, fuzz replays, integration subset"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -j"$jobs" -L 'unit|fuzz|sanitizer-subset'

echo "== libFuzzer targets (clang), a short run each"
CC=clang cmake -S . -B build-fuzz -DHERALD_FUZZ=ON -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_cursor fuzz_topic fuzz_request
for f in cursor topic request; do
  work=$(mktemp -d)
  cp -r "tests/fuzz/corpus/$f/." "$work/"
  ./build-fuzz/tests/fuzz/fuzz_$f -max_total_time="${HERALD_FUZZ_SECONDS:-10}" -print_final_stats=0 "$work" 2>&1 | tail -1
  rm -rf "$work"
done
echo "== all tests passed"

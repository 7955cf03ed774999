#!/usr/bin/env bash
# Build Herald for running it: install the Debian packages the build needs (scripts/deps.sh build)
# and build into build/ (RelWithDebInfo, no tests). The build step of scripts/run-local.sh and of
# deploy/local/cluster.sh with HERALD_BUILD=1; scripts/test.sh builds its own way.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
cmake --build build -j"$(nproc)"

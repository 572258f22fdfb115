#!/usr/bin/env bash
# Installs what the benchmark needs, builds Wharf in release mode and runs
# bench/bench.py (see there for the BENCH_* knobs).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in docker-registry wrk apache2-utils curl openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# An open-loop load generator for pull latency during garbage collection.
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
cargo build --release --locked -p wharf
exec python3 bench/bench.py "$@"

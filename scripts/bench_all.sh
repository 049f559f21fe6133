#!/usr/bin/env bash
# Runs every benchmark program once, in one session, and prints what it ran
# on: the figures in README's "Benchmarks" section come from one run of this
# script. Usage: bash scripts/bench_all.sh [LOG]   (default: target/bench_all.log)
# Needs a quiet machine: the figures are rates and latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
log="${1:-target/bench_all.log}"
mkdir -p "$(dirname "$log")"
benches=(adhoc_exchange hsm_exchange crypto_throughput hot_path_under_writes health_under_slow_signer adhoc_many
  clone_million rekey_million)
cargo build --locked --release --benches --bins
{
  echo "== bench_all $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "== machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr), $(rustc --version)"
  echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$log"
status=0
for b in "${benches[@]}"; do
  echo "== cargo bench --bench $b" | tee -a "$log"
  start=$(date +%s)
  if ! cargo bench --locked --bench "$b" 2>&1 | sed -e '/^ *Compiling /d' -e '/^ *Finished /d' -e '/^ *Running /d' | tee -a "$log"; then
    echo "== $b FAILED" | tee -a "$log"
    status=1
  fi
  echo "== $b took $(( $(date +%s) - start )) s" | tee -a "$log"
done
echo "== done; log in $log" | tee -a "$log"
exit "$status"

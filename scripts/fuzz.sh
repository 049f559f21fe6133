#!/usr/bin/env bash
# Fuzzes kmf's decoders with cargo-fuzz (libFuzzer; needs the nightly
# toolchain and `cargo install --locked cargo-fuzz`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 60 s for each of bundle receipt ciphertext stored_row config, one
# after another. Each run starts from a scratch copy of the committed seeds
# (fuzz/corpus/<target>) and of fuzz/regressions/<target>, so the repository
# stays clean; what it grew is thrown away. Prints, per target, the
# executions and exec/s (libFuzzer's final stats) and exits non-zero on the
# first crash, with libFuzzer's output and the crash input's path (under
# fuzz/artifacts/<target>/) kept. One libFuzzer process at a time: the
# machines have two cores.
#
# FUZZ_SANITIZER is cargo-fuzz's --sanitizer, default none: kmf forbids
# unsafe code and the targets check for panics and round trips, which need
# no sanitizer, and AddressSanitizer costs 2-3x the executions.
# FUZZ_SANITIZER=address works too (a different sanitizer rebuilds
# everything under fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bundle receipt ciphertext stored_row config)
sanitizer="${FUZZ_SANITIZER:-none}"

# Input size limits per format: room for large real values, not for
# megabyte inputs that only slow the search.
max_len() {
  case "$1" in
    bundle) echo 16384 ;;
    receipt) echo 4096 ;;
    ciphertext) echo 1024 ;;
    stored_row) echo 8192 ;;
    config) echo 8192 ;;
    *) echo "unknown fuzz target '$1' (bundle receipt ciphertext stored_row config)" >&2; exit 2 ;;
  esac
}
for t in "${targets[@]}"; do max_len "$t" >/dev/null; done

echo "== cargo +nightly fuzz build (sanitizer: $sanitizer)"
# Builds every target (a cold build of kmf with the sanitizer takes minutes).
timeout 3600 cargo +nightly fuzz build --sanitizer "$sanitizer" 2>&1 | tail -n 3 \
  || { echo "fuzz build failed" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary=()
for t in "${targets[@]}"; do
  corpus="$work/$t"
  mkdir -p "$corpus" "artifacts/$t"
  cp corpus/"$t"/* "$corpus"/
  [ -d "regressions/$t" ] && cp regressions/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$work/$t.log"
  echo "== fuzz $t for ${seconds}s (max_len $(max_len "$t"))"
  set +e
  # -max_total_time bounds libFuzzer; timeout bounds everything else (a hang
  # in a target is reported by libFuzzer's own -timeout per input).
  timeout $((seconds + 120)) cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$corpus" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  execs="$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)"
  rate="$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -n 1)"
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "FUZZ CRASH $t (exit $status) after ${execs:-?} executions; input:" \
      "$(grep -o 'Test unit written to .*' "$log" | sed 's/Test unit written to //' || echo '(none written)')"
    echo "== fuzz summary"
    printf '%s\n' "${summary[@]}"
    exit 1
  fi
  summary+=("fuzz $t: ${execs:-?} executions, ${rate:-?} exec/s, ${seconds}s, no crash")
  echo "${summary[-1]}"
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"

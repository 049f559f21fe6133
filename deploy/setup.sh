#!/usr/bin/env bash
# Creates everything the three-instance compose cluster mounts, under deploy/data:
#   data/pki/      ca.pem, ca.key          the deployment CA (ca.key never mounted)
#                  ops.pem, ops.key        operator "ops", role admin (kmfctl, grpcurl)
#                  health.pem, health.key  operator "health", role
#                                          cryptographic_auditor (healthcheck only)
#   data/prod/     instance prod:8443 (software KEK): kmf.redb, kek.key,
#                  instance.pem/.key, ca.pem, and sys_id (the instance id, for scripts)
#   data/test/     instance test:8443 (software KEK), the same files
#   data/dev/      instance dev:8443 on a SoftHSM2 token: kmf.redb, tokens/ (the
#                  token "kmf-dev" holding the KEK), instance.pem/.key, ca.pem, sys_id
#   data/secrets/  dev-user.pin (mounted read-only into dev at /run/kmf/user.pin),
#                  dev-so.pin (the token's security officer PIN; never mounted)
# Instance certificates name the service (prod, dev, test: what peers dial)
# and 127.0.0.1 (kmfctl and grpcurl on the host, through the published ports).
# Files the containers read are chowned to uid/gid 10001 (the image's USER);
# private keys, PINs and token files stay mode 0600.
# Needs SoftHSM2 on the host (Debian package softhsm2; build-image.sh installs
# it) to make dev's token: the image carries the same module.
# Usage: deploy/setup.sh [--force]     (--force deletes an existing deploy/data)
# Needs target/release/{kmfd,kmfctl} (or under $CARGO_TARGET_DIR): run deploy/build-image.sh first.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
# KMF_DEPLOY_DATA moves it elsewhere (deploy/smoke.sh uses a temporary one).
DATA="${KMF_DEPLOY_DATA:-$DEPLOY_DIR/data}"
# Where cargo put them: $CARGO_TARGET_DIR (relative to the repository) or target/.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_DIR/$TARGET_DIR" ;; esac
KMFD="${KMFD:-$TARGET_DIR/release/kmfd}"
KMFCTL="${KMFCTL:-$TARGET_DIR/release/kmfctl}"
IMAGE="${IMAGE:-${KMF_IMAGE:-kmf:dev}}"
RUN_UID=10001   # must match USER in deploy/Dockerfile
RUN_GID=10001

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (usage: $0 [--force])" >&2; exit 2 ;;
  esac
done

# The daemons run as uid 10001 and must own their files: chown needs root.
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (e.g. sudo $0): the generated files are chowned to uid $RUN_UID" >&2
  exit 1
fi

for bin in "$KMFD" "$KMFCTL"; do
  if [ ! -x "$bin" ]; then
    echo "missing $bin: run deploy/build-image.sh (or cargo build --release --bins) first" >&2
    exit 1
  fi
done

if [ -e "$DATA" ]; then
  if [ "$force" -ne 1 ]; then
    echo "$DATA already exists; refusing to overwrite it (use --force to delete and recreate it)" >&2
    exit 1
  fi
  echo "== --force: deleting $DATA"
  rm -rf "$DATA"
fi

# Files are created private from the start; nothing here is meant for others.
umask 077
mkdir -p "$DATA/pki"

echo "== PKI: CA, operator ops (admin), operator health (cryptographic_auditor)"
"$KMFCTL" pki init-ca --out "$DATA/pki"
"$KMFCTL" pki issue-operator --ca-dir "$DATA/pki" --name ops --role admin --out "$DATA/pki"
"$KMFCTL" pki issue-operator --ca-dir "$DATA/pki" --name health --role cryptographic_auditor --out "$DATA/pki"

SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so   # same path inside the image
if ! command -v softhsm2-util >/dev/null || [ ! -e "$SOFTHSM_MODULE" ]; then
  echo "SoftHSM2 is missing (softhsm2-util, $SOFTHSM_MODULE): apt-get install softhsm2" >&2
  exit 1
fi

# init_instance NAME [kmfd init flags...]: kmfd init + instance certificate
# for the DNS name NAME (the compose service name; peers dial NAME:8443) and
# 127.0.0.1 (the host reaches it through a published loopback port).
init_instance() {
  local name="$1" dir="$DATA/$1" out sys_id
  shift
  echo "== instance $name in $dir"
  out="$("$KMFD" init --data-dir "$dir" --host "$name:8443" "$@")"
  echo "$out"
  # "initialised instance <sys_id> in DIR (host ...)": the 3rd word.
  sys_id="$(printf '%s\n' "$out" | awk 'NR == 1 && $1 == "initialised" { print $3 }')"
  if [ -z "$sys_id" ]; then
    echo "could not read the sys_id from kmfd init's output" >&2
    exit 1
  fi
  "$KMFCTL" pki issue-instance --ca-dir "$DATA/pki" --sys-id "$sys_id" \
    --host "$name" --host 127.0.0.1 --out "$dir"
  cp "$DATA/pki/ca.pem" "$dir/ca.pem"
  printf '%s\n' "$sys_id" >"$dir/sys_id"
}
init_instance prod
init_instance test

# dev: a SoftHSM2 token in dev's own data dir (tokens/), made here with the
# host's softhsm2-util through a config that points at it; inside the
# container the image's /etc/softhsm/softhsm2.conf names the same directory as
# /data/tokens. Random PINs; the user PIN is mounted into dev, the SO PIN never.
echo "== dev: SoftHSM2 token kmf-dev in $DATA/dev/tokens"
mkdir -p "$DATA/dev/tokens" "$DATA/secrets"
new_pin() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
printf '%s\n' "$(new_pin)" >"$DATA/secrets/dev-user.pin"
printf '%s\n' "$(new_pin)" >"$DATA/secrets/dev-so.pin"
HSM_CONF="$DATA/secrets/softhsm2-setup.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
  "$DATA/dev/tokens" >"$HSM_CONF"
SOFTHSM2_CONF="$HSM_CONF" softhsm2-util --init-token --free --label kmf-dev \
  --pin "$(cat "$DATA/secrets/dev-user.pin")" --so-pin "$(cat "$DATA/secrets/dev-so.pin")"
# kmfd init creates the KEK on the token (AES-256, sensitive, non-extractable).
SOFTHSM2_CONF="$HSM_CONF" init_instance dev --signer pkcs11 --pkcs11-module "$SOFTHSM_MODULE" \
  --pkcs11-token kmf-dev --pkcs11-pin-file "$DATA/secrets/dev-user.pin" --pkcs11-kek-label kmf-kek
rm -f "$HSM_CONF"

echo "== ownership for uid $RUN_UID and modes"
# Certificates are public; keys, KEKs, PINs, tokens and databases stay 0600 / dirs 0700.
for dir in prod dev test; do
  chmod 0644 "$DATA/$dir"/*.pem "$DATA/$dir/sys_id"
done
chmod 0644 "$DATA"/pki/*.pem
chmod 0755 "$DATA" "$DATA/pki"
chmod 0700 "$DATA/secrets"
# The daemons own their whole data dir (redb and SoftHSM2 write there).
chown -R "$RUN_UID:$RUN_GID" "$DATA/prod" "$DATA/dev" "$DATA/test"
# Only the credentials that are mounted into containers; the CA key (ca.key)
# and the SO PIN stay owned by whoever ran this script.
chown "$RUN_UID:$RUN_GID" "$DATA"/pki/ops.pem "$DATA"/pki/ops.key "$DATA"/pki/health.pem "$DATA"/pki/health.key \
  "$DATA/secrets/dev-user.pin"

# Validate each instance as the daemon will see it: inside the image, as uid
# 10001, with its config file (catches ownership mistakes; for dev it logs in
# to the token and checks the KEK). Falls back to the host binary (software
# instances only) when the image has not been built yet.
for dir in prod dev test; do
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "== kmfd config check ($dir, in $IMAGE as uid $RUN_UID)"
    docker run --rm --network none --user "$RUN_UID:$RUN_GID" \
      -v "$DATA/$dir:/data" -v "$DEPLOY_DIR/config/$dir.toml:/etc/kmf/kmfd.toml:ro" \
      -v "$DATA/secrets/dev-user.pin:/run/kmf/user.pin:ro" \
      "$IMAGE" config check --config /etc/kmf/kmfd.toml
  elif [ "$dir" != dev ]; then
    echo "== kmfd config check ($dir, host binary; $IMAGE not built yet)"
    "$KMFD" config check --data-dir "$DATA/$dir" --listen 0.0.0.0:8443
  fi
done

ls -ln "$DATA/pki" "$DATA/prod" "$DATA/dev" "$DATA/test"
echo "== done: prod $(cat "$DATA/prod/sys_id"), dev $(cat "$DATA/dev/sys_id"), test $(cat "$DATA/test/sys_id")"

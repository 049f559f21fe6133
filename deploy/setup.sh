#!/usr/bin/env bash
# Creates everything the two-instance compose cluster mounts, under deploy/data:
#   data/pki/     ca.pem, ca.key          the deployment CA (ca.key never mounted)
#                 ops.pem, ops.key        operator "ops", role admin (for kmfctl)
#                 health.pem, health.key  operator "health", role
#                                         cryptographic_auditor (healthcheck only)
#   data/source/  instance kmf-source:8443 (kmf.redb, kek.key, instance.pem/.key,
#                 ca.pem, and sys_id: the instance id, for scripts)
#   data/target/  instance kmf-target:8443 (same files)
# Files the containers read are chowned to uid/gid 10001 (the image's USER);
# private keys stay mode 0600.
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
IMAGE="${IMAGE:-kmf:dev}"
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

# init_instance NAME: kmfd init + instance certificate for DNS name NAME
# (the compose service name and hostname), peers dial NAME:8443.
init_instance() {
  local name="$1" dir="$DATA/$2" out sys_id
  echo "== instance $name in $dir"
  out="$("$KMFD" init --data-dir "$dir" --host "$name:8443")"
  echo "$out"
  # "initialised instance <sys_id> in DIR (host ...)": the 3rd word.
  sys_id="$(printf '%s\n' "$out" | awk 'NR == 1 && $1 == "initialised" { print $3 }')"
  if [ -z "$sys_id" ]; then
    echo "could not read the sys_id from kmfd init's output" >&2
    exit 1
  fi
  "$KMFCTL" pki issue-instance --ca-dir "$DATA/pki" --sys-id "$sys_id" --host "$name" --out "$dir"
  cp "$DATA/pki/ca.pem" "$dir/ca.pem"
  printf '%s\n' "$sys_id" >"$dir/sys_id"
}
init_instance kmf-source source
init_instance kmf-target target

echo "== ownership for uid $RUN_UID and modes"
# Certificates are public; keys, KEKs and databases stay 0600 / dirs 0700.
chmod 0644 "$DATA"/pki/*.pem "$DATA"/source/*.pem "$DATA"/target/*.pem
chmod 0644 "$DATA"/source/sys_id "$DATA"/target/sys_id
chmod 0755 "$DATA" "$DATA/pki"
# The daemons own their whole data dir (redb writes there).
chown -R "$RUN_UID:$RUN_GID" "$DATA/source" "$DATA/target"
# Only the operator credentials that are mounted into containers; the CA key
# (ca.key) stays owned by whoever ran this script.
chown "$RUN_UID:$RUN_GID" "$DATA"/pki/ops.pem "$DATA"/pki/ops.key "$DATA"/pki/health.pem "$DATA"/pki/health.key

# Validate each instance dir as the daemon will see it: inside the image, as
# uid 10001 (catches ownership mistakes). Falls back to the host binary when
# the image has not been built yet.
for dir in source target; do
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "== kmfd config check ($dir, in $IMAGE as uid $RUN_UID)"
    docker run --rm --network none --user "$RUN_UID:$RUN_GID" \
      -v "$DATA/$dir:/data" "$IMAGE" config check --data-dir /data --listen 0.0.0.0:8443
  else
    echo "== kmfd config check ($dir, host binary; $IMAGE not built yet)"
    "$KMFD" config check --data-dir "$DATA/$dir" --listen 0.0.0.0:8443
  fi
done

ls -ln "$DATA/pki" "$DATA/source" "$DATA/target"
echo "== done: source sys_id $(cat "$DATA/source/sys_id"), target sys_id $(cat "$DATA/target/sys_id")"

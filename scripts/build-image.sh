#!/usr/bin/env bash
# Builds the OCI image of Wharf without network access: a statically linked
# `wharf` (glibc, -C target-feature=+crt-static) in an image made from
# scratch with buildah. Nothing else is in it: /usr/local/bin/wharf,
# /etc/passwd and /etc/group naming the user `wharf` (65532), the CA bundle
# of the host (for the admin commands' HTTPS), /tmp and the data volume
# /var/lib/registry.
#
# The image starts as root and `wharf serve` drops to 65532:65532
# (WHARF_RUN_AS) once it has bound its port and read its TLS key, after
# giving the data directory to that user, so a root-owned bind mount (what
# `docker run -v /opt/data/registry:/var/lib/registry` creates) works.
#
# Writes target/image/wharf-oci.tar (for `podman load`, `skopeo copy
# oci-archive:...`) and target/image/wharf-docker.tar (for `docker load`).
# Needs root, buildah and binutils (strip). Usage: scripts/build-image.sh
#   WHARF_BIN=PATH  use this static binary instead of building one
#   IMAGE=NAME:TAG  image name (default wharf:latest)
#   OUT=DIR         output directory (default target/image)
#   IMAGE_SOURCE=URL the org.opencontainers.image.source label (default: git origin)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-wharf:latest}
OUT=${OUT:-$ROOT/target/image}
TRIPLE=x86_64-unknown-linux-gnu
UID_GID=65532

[ "$(id -u)" = 0 ] || { echo "run as root (buildah's storage and the owners in the image)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "needs buildah (apt-get install buildah)" >&2; exit 1; }

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

if [ -z "${WHARF_BIN:-}" ]; then
  echo "building the static binary (cargo build --release --target $TRIPLE, crt-static)"
  RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release --locked -p wharf --target "$TRIPLE"
  WHARF_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$TRIPLE/release/wharf
fi
[ -x "$WHARF_BIN" ] || { echo "no executable at $WHARF_BIN" >&2; exit 1; }

# The image has no libc: refuse anything that is not fully static (an
# interpreter, i.e. ld.so, or any needed shared library).
if readelf -lW "$WHARF_BIN" | grep -q 'INTERP' || readelf -dW "$WHARF_BIN" | grep -q '(NEEDED)'; then
  echo "$WHARF_BIN is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' --target $TRIPLE" >&2
  exit 1
fi

W=$(mktemp -d /tmp/wharf-image.XXXXXX)
B="buildah --root $W/root --runroot $W/run --storage-driver vfs"
c=
cleanup() {
  [ -n "$c" ] && $B rm "$c" >/dev/null 2>&1 || true
  $B rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

# The tree, with its owners, as it will be in the image.
R=$W/rootfs
mkdir -p "$R/usr/local/bin" "$R/etc/ssl/certs" "$R/var/lib/registry" "$R/tmp"
strip -o "$R/usr/local/bin/wharf" "$WHARF_BIN"
chmod 0755 "$R/usr/local/bin/wharf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nwharf:x:%s:%s:wharf:/var/lib/registry:/sbin/nologin\n' $UID_GID $UID_GID >"$R/etc/passwd"
printf 'root:x:0:\nwharf:x:%s:\n' $UID_GID >"$R/etc/group"
chmod 0644 "$R/etc/passwd" "$R/etc/group"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$R/etc/ssl/certs/ca-certificates.crt"
fi
chmod 1777 "$R/tmp"
chmod 0755 "$R/var/lib/registry"
chown -R 0:0 "$R"
# A fresh (anonymous or named) volume starts with the image's directory and
# so is the service user's from the start.
chown $UID_GID:$UID_GID "$R/var/lib/registry"

REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Where the source lives: IMAGE_SOURCE, else the clone's origin (if any).
SOURCE=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
# Reproducible timestamps: the commit's time unless SOURCE_DATE_EPOCH is set.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)

c=$($B from scratch)
$B add "$c" "$R" / >/dev/null
$B config \
  --arch amd64 --os linux \
  --entrypoint '["/usr/local/bin/wharf"]' \
  --cmd '["serve"]' \
  --env WHARF_RUN_AS=$UID_GID:$UID_GID \
  --env REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry \
  --port 5000/tcp \
  --volume /var/lib/registry \
  --user 0:0 \
  --workingdir / \
  --stop-signal SIGTERM \
  --label org.opencontainers.image.title=wharf \
  --label "org.opencontainers.image.description=Wharf container registry (OCI distribution), a statically linked binary; serves as uid $UID_GID" \
  ${SOURCE:+--label "org.opencontainers.image.source=$SOURCE"} \
  --label org.opencontainers.image.version="$VERSION" \
  --label org.opencontainers.image.revision="$REVISION" \
  --label org.opencontainers.image.created="$CREATED" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$c"
# Committed without a name, so that the archives carry only $IMAGE.
$B commit --quiet --format oci --timestamp "$EPOCH" --iidfile "$W/iid" "$c" >/dev/null
id=$(cat "$W/iid")

mkdir -p "$OUT"
rm -f "$OUT/wharf-oci.tar" "$OUT/wharf-docker.tar"
$B push --quiet "$id" "oci-archive:$OUT/wharf-oci.tar:$IMAGE"
$B push --quiet --format v2s2 "$id" "docker-archive:$OUT/wharf-docker.tar:$IMAGE"

bin_size=$(stat -c %s "$R/usr/local/bin/wharf")
# The image is one layer: its uncompressed size is that layer's tar.
img_size=$(tar -tvf "$OUT/wharf-docker.tar" | awk '$6 ~ /^[0-9a-f]+\.tar$/ {s += $3} END {print s + 0}')
echo "image $IMAGE (wharf $VERSION, $REVISION)"
echo "  binary (stripped): $bin_size bytes"
echo "  image size:        $img_size bytes (uncompressed)"
for f in wharf-oci.tar wharf-docker.tar; do
  printf '  %-18s %s bytes\n' "$f:" "$(stat -c %s "$OUT/$f")"
done
echo "load it with: docker load -i $OUT/wharf-docker.tar   or   podman load -i $OUT/wharf-oci.tar"

#!/usr/bin/env bash
# Builds an OCI layout with two single-platform images (tags amd64, arm64) and
# a two-platform index (tag multi), offline, from busybox-static and umoci.
# Usage: make-images.sh LAYOUT_DIR
set -euo pipefail
L=$1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
rm -rf "$L"
umoci init --layout "$L"
umoci new --image "$L:amd64"
umoci unpack --rootless --image "$L:amd64" "$W/b"
mkdir -p "$W/b/rootfs/bin"
cp /bin/busybox "$W/b/rootfs/bin/busybox"
ln -sf busybox "$W/b/rootfs/bin/sh"
# A layer of random bytes makes every run's images distinct from any other's.
head -c 65536 /dev/urandom > "$W/b/rootfs/random"
umoci repack --image "$L:amd64" "$W/b"
umoci config --image "$L:amd64" --architecture amd64 --os linux --config.cmd /bin/sh
# arm64: the same rootfs plus one more layer.
umoci config --image "$L:amd64" --tag arm64 --architecture arm64
rm -rf "$W/b"
umoci unpack --rootless --image "$L:arm64" "$W/b"
echo arm64 > "$W/b/rootfs/arch"
umoci repack --image "$L:arm64" "$W/b"

ents='[]'
for ref in amd64 arm64; do
  d=$(jq -r --arg r $ref '.manifests[]|select(.annotations["org.opencontainers.image.ref.name"]==$r)|.digest' "$L/index.json")
  s=$(jq -r --arg r $ref '.manifests[]|select(.annotations["org.opencontainers.image.ref.name"]==$r)|.size' "$L/index.json")
  ents=$(jq -c --arg d "$d" --argjson s "$s" --arg a $ref '.+[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,platform:{architecture:$a,os:"linux"}}]' <<<"$ents")
done
jq -cj -n --argjson m "$ents" '{schemaVersion:2,mediaType:"application/vnd.oci.image.index.v1+json",manifests:$m}' > "$W/idx"
dg=$(sha256sum "$W/idx" | cut -d' ' -f1); sz=$(stat -c %s "$W/idx"); cp "$W/idx" "$L/blobs/sha256/$dg"
jq --arg d "sha256:$dg" --argjson s "$sz" '.manifests+=[{mediaType:"application/vnd.oci.image.index.v1+json",digest:$d,size:$s,annotations:{"org.opencontainers.image.ref.name":"multi"}}]' "$L/index.json" > "$L/index.new"
mv "$L/index.new" "$L/index.json"

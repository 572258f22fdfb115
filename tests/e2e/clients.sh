# Client scenarios. Each takes no arguments and uses $MODE (http|https),
# $REG, $SCHEME, $CERTS, $L (OCI layout with amd64, arm64, multi) and $WORK.

tls_flags() { # containers/image tools
  if [ "$MODE" = https ]; then echo "--cert-dir $CERTS/certdir"; else echo "--tls-verify=false"; fi
}

oci_manifest_digest() { # digest of a tag in an OCI layout
  jq -r --arg r "$2" '.manifests[]|select(.annotations["org.opencontainers.image.ref.name"]==$r)|.digest' "$1/index.json"
}

client_skopeo() {
  local p="skopeo/$MODE" w=$WORK/skopeo-$MODE t src dst
  mkdir -p "$w"
  if [ "$MODE" = https ]; then
    t="--cert-dir $CERTS/certdir"; src="--src-cert-dir $CERTS/certdir"; dst="--dest-cert-dir $CERTS/certdir"
  else
    t="--tls-verify=false"; src="--src-tls-verify=false"; dst="--dest-tls-verify=false"
  fi
  if [ "$MODE" = https ]; then
    check_eq "https/HTTP2 negotiated" 2 "$(curl -sS --cacert "$CERTS/ca.crt" --http2 -o /dev/null -w '%{http_version}' "https://$REG/v2/")"
    check_eq "https/HTTP1.1 still served" 1.1 "$(curl -sS --cacert "$CERTS/ca.crt" --http1.1 -o /dev/null -w '%{http_version}' "https://$REG/v2/")"
    check "https/untrusted certificate refused" bash -c "! curl -sS -o /dev/null https://$REG/v2/"
  fi
  check "skopeo/$MODE push" skopeo copy $dst "oci:$L:amd64" "docker://$REG/$p/app:1.0"
  check_eq "skopeo/$MODE pushed digest" "$(oci_manifest_digest "$L" amd64)" "$(reg_digest "$p/app" 1.0)"
  check "skopeo/$MODE pull" skopeo copy $src "docker://$REG/$p/app:1.0" "oci:$w/pulled:1.0"
  check_eq "skopeo/$MODE pulled digest" "$(oci_manifest_digest "$L" amd64)" "$(oci_manifest_digest "$w/pulled" 1.0)"
  local before; before=$(mounts)
  check "skopeo/$MODE copy across repositories" skopeo copy $src $dst "docker://$REG/$p/app:1.0" "docker://$REG/$p/copy:1.0"
  check "skopeo/$MODE copy used a mount" test "$(mounts)" -gt "$before"
  check "skopeo/$MODE push multi-arch index" skopeo copy --all $dst "oci:$L:multi" "docker://$REG/$p/multi:latest"
  check_eq "skopeo/$MODE index digest" "$(oci_manifest_digest "$L" multi)" "$(reg_digest "$p/multi" latest)"
  check_eq "skopeo/$MODE arm64 from index" arm64 "$(skopeo --override-arch arm64 inspect $t "docker://$REG/$p/multi:latest" | jq -r .Architecture)"
  check "skopeo/$MODE pull one platform" skopeo --override-arch arm64 copy $src "docker://$REG/$p/multi:latest" "oci:$w/arm:x"
  check_eq "skopeo/$MODE pulled platform is arm64" "$(oci_manifest_digest "$L" arm64)" "$(oci_manifest_digest "$w/arm" x)"
  check_eq "skopeo/$MODE list-tags" '["1.0"]' "$(skopeo list-tags $t "docker://$REG/$p/copy" | jq -c .Tags)"
  check "skopeo/$MODE delete" skopeo delete $t "docker://$REG/$p/copy:1.0"
  check "skopeo/$MODE deleted image is gone" bash -c "! skopeo inspect $t docker://$REG/$p/copy:1.0"
  check_eq "skopeo/$MODE original survives delete" "$(oci_manifest_digest "$L" amd64)" "$(reg_digest "$p/app" 1.0)"
}

client_podman() {
  local w=$WORK/podman-$MODE p="podman/$MODE" t
  t=$(tls_flags)
  local P="podman --root $w/root --runroot $w/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
  check "podman/$MODE load image" $P pull -q "oci:$L:amd64"
  local id; id=$($P images -q | head -n1)
  check "podman/$MODE tag" $P tag "$id" "$REG/$p/app:v2s2" "$REG/$p/app:oci"
  check "podman/$MODE push docker schema 2" $P push $t --format v2s2 "$REG/$p/app:v2s2"
  check "podman/$MODE push OCI" $P push $t "$REG/$p/app:oci"
  check_eq "podman/$MODE tags" '["oci","v2s2"]' "$(reg_tags "$p/app")"
  check_eq "podman/$MODE v2s2 media type" application/vnd.docker.distribution.manifest.v2+json \
    "$(curl_reg -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "$SCHEME://$REG/v2/$p/app/manifests/v2s2" | jq -r .mediaType)"
  check "podman/$MODE remove local images" $P rmi -a -f
  check "podman/$MODE pull" $P pull $t "$REG/$p/app:oci"
  local before; before=$(mounts)
  check "podman/$MODE tag for another repository" $P tag "$REG/$p/app:oci" "$REG/$p/other:1.0"
  check "podman/$MODE push to another repository" $P push $t "$REG/$p/other:1.0"
  check "podman/$MODE push used a mount" test "$(mounts)" -gt "$before"
  check "podman/$MODE manifest create" $P manifest create "$REG/$p/multi:latest"
  check "podman/$MODE manifest add amd64" $P manifest add "$REG/$p/multi:latest" "oci:$L:amd64"
  check "podman/$MODE manifest add arm64" $P manifest add "$REG/$p/multi:latest" "oci:$L:arm64"
  check "podman/$MODE manifest push --all" $P manifest push --all $t "$REG/$p/multi:latest" "docker://$REG/$p/multi:latest"
  check "podman/$MODE pull --arch arm64" $P pull $t --arch arm64 "$REG/$p/multi:latest"
  check_eq "podman/$MODE pulled arm64" arm64 "$($P image inspect --format '{{.Architecture}}' "$REG/$p/multi:latest")"
  # podman search has no --cert-dir: HTTPS needs --tls-verify=false.
  check "podman/$MODE search (catalog fallback)" bash -c "$P search --tls-verify=false $REG/$p | grep -q '$REG/$p/app'"
}

client_buildah() {
  local w=$WORK/buildah-$MODE p="buildah/$MODE" t
  t=$(tls_flags)
  local B="buildah --root $w/root --runroot $w/run --storage-driver vfs"
  local c; c=$($B from scratch)
  check "buildah/$MODE build from scratch" $B copy "$c" /bin/busybox /bin/busybox
  check "buildah/$MODE config" $B config --arch amd64 --os linux --cmd /bin/busybox "$c"
  check "buildah/$MODE commit" $B commit --format oci "$c" "$REG/$p/app:1.0"
  check "buildah/$MODE push" $B push $t "$REG/$p/app:1.0"
  check "buildah/$MODE remove local images" $B rmi -a -f
  check "buildah/$MODE pull" $B pull $t "$REG/$p/app:1.0"
  local before; before=$(mounts)
  check "buildah/$MODE push to another repository" $B push $t "$REG/$p/app:1.0" "docker://$REG/$p/copy:1.0"
  check "buildah/$MODE push used a mount" test "$(mounts)" -gt "$before"
  check "buildah/$MODE manifest create" $B manifest create e2e-multi
  check "buildah/$MODE manifest add amd64" $B manifest add e2e-multi "oci:$L:amd64"
  check "buildah/$MODE manifest add arm64" $B manifest add e2e-multi "oci:$L:arm64"
  check "buildah/$MODE manifest push --all" $B manifest push --all $t e2e-multi "docker://$REG/$p/multi:latest"
  check "buildah/$MODE pull --arch arm64" $B pull $t --arch arm64 "$REG/$p/multi:latest"
  check_eq "buildah/$MODE pulled arm64" arm64 "$($B inspect --type image --format '{{.OCIv1.Architecture}}' "$REG/$p/multi:latest")"
}

start_dockerd() {
  local d=$WORK/dockerd
  mkdir -p "$d"
  dockerd --data-root "$d/root" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" -H "unix://$d/docker.sock" \
    --storage-driver vfs --iptables=false --ip6tables=false --bridge=none --ip-masq=false --userland-proxy=false \
    >"$d/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST=unix://$d/docker.sock DOCKER_CONFIG=$d/config
  local i
  for i in $(seq 1 200); do docker info >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "dockerd did not start"; tail -n 20 "$d/dockerd.log"; return 1
}

stop_dockerd() {
  [ -n "${DOCKERD_PID:-}" ] && kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null
  DOCKERD_PID=
}

client_docker() {
  local w=$WORK/docker-$MODE p="docker/$MODE"
  mkdir -p "$w"
  if ! docker image inspect e2e/busybox:amd64 >/dev/null 2>&1; then
    check "docker/$MODE load image" bash -c "skopeo copy oci:$L:amd64 docker-archive:$w/img.tar:e2e/busybox:amd64 && docker load -i $w/img.tar"
  fi
  check "docker/$MODE tag" docker tag e2e/busybox:amd64 "$REG/$p/app:1.0"
  check "docker/$MODE push" docker push "$REG/$p/app:1.0"
  check "docker/$MODE remove local copy" docker rmi "$REG/$p/app:1.0"
  check "docker/$MODE pull" docker pull "$REG/$p/app:1.0"
  # The daemon is shared by the HTTP and HTTPS runs, so the image may carry
  # repo digests from both registries: ours must be among them.
  check "docker/$MODE pulled digest" bash -c "docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $REG/$p/app:1.0 | grep -qxF '$REG/$p/app@$(reg_digest "$p/app" 1.0)'"
  local before; before=$(mounts)
  check "docker/$MODE tag for another repository" docker tag "$REG/$p/app:1.0" "$REG/$p/other:1.0"
  check "docker/$MODE push to another repository" docker push "$REG/$p/other:1.0"
  check "docker/$MODE push used a mount" test "$(mounts)" -gt "$before"
  check "docker/$MODE push index (skopeo)" skopeo copy --all $( [ "$MODE" = https ] && echo "--dest-cert-dir $CERTS/certdir" || echo "--dest-tls-verify=false") \
    "oci:$L:multi" "docker://$REG/$p/multi:latest"
  check "docker/$MODE pull --platform linux/arm64" docker pull --platform linux/arm64 "$REG/$p/multi:latest"
  check_eq "docker/$MODE pulled arm64" arm64 "$(docker image inspect --format '{{.Architecture}}' "$REG/$p/multi:latest")"
  if [ "$MODE" = http ]; then
    # docker manifest speaks plain HTTP to any loopback registry, so only here.
    check "docker/$MODE manifest create" docker manifest create --insecure "$REG/$p/list:1" "$REG/$p/app:1.0"
    check "docker/$MODE manifest push" docker manifest push --insecure "$REG/$p/list:1"
    check_eq "docker/$MODE list media type" application/vnd.docker.distribution.manifest.list.v2+json \
      "$(curl_reg -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' "$SCHEME://$REG/v2/$p/list/manifests/1" | jq -r .mediaType)"
  fi
}

start_containerd() {
  local d=$WORK/containerd
  mkdir -p "$d"
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
TOML
  containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  CTR="ctr -a $d/containerd.sock -n e2e"
  local i
  for i in $(seq 1 100); do $CTR version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd did not start"; tail -n 20 "$d/containerd.log"; return 1
}

stop_containerd() {
  [ -n "${CONTAINERD_PID:-}" ] && kill "$CONTAINERD_PID" 2>/dev/null && wait "$CONTAINERD_PID" 2>/dev/null
  CONTAINERD_PID=
}

client_ctr() {
  local w=$WORK/ctr-$MODE p="ctr/$MODE" t
  mkdir -p "$w"
  if [ "$MODE" = https ]; then
    # ctr treats loopback registries as plain HTTP unless a hosts.toml says otherwise.
    mkdir -p "$w/hosts/$REG"
    cat >"$w/hosts/$REG/hosts.toml" <<TOML
server = "https://$REG"
[host."https://$REG"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$CERTS/ca.crt"
TOML
    t="--hosts-dir $w/hosts"
  else
    t="--plain-http"
  fi
  if ! $CTR images ls -q | grep -q '^e2e/x:multi$'; then
    tar -C "$L" -cf "$WORK/oci.tar" .
    check "ctr/$MODE import" $CTR images import --all-platforms --base-name e2e/x "$WORK/oci.tar"
  fi
  check "ctr/$MODE push" $CTR images push $t "$REG/$p/app:1.0" e2e/x:amd64
  check_eq "ctr/$MODE pushed digest" "$(oci_manifest_digest "$L" amd64)" "$(reg_digest "$p/app" 1.0)"
  check "ctr/$MODE pull" $CTR images pull $t "$REG/$p/app:1.0"
  local before; before=$(mounts)
  check "ctr/$MODE push to another repository" $CTR images push $t "$REG/$p/other:1.0" "$REG/$p/app:1.0"
  check "ctr/$MODE push used a mount" test "$(mounts)" -gt "$before"
  check "ctr/$MODE push index" $CTR images push $t "$REG/$p/multi:latest" e2e/x:multi
  check_eq "ctr/$MODE index digest" "$(oci_manifest_digest "$L" multi)" "$(reg_digest "$p/multi" latest)"
  check "ctr/$MODE pull one platform" $CTR images pull $t --platform linux/arm64 "$REG/$p/multi:latest"
  check "ctr/$MODE arm64 content present" bash -c "$CTR content ls | grep -q $(oci_manifest_digest "$L" arm64)"
}

# A full disk: Wharf on a small tmpfs. A push that does not fit fails, leaves
# no blob visible and gives its space back; what was stored before still pulls
# back identical, and pushes that fit work again.
client_diskfull() {
  local w=$WORK/diskfull
  mkdir -p "$w/mnt"
  mount -t tmpfs -o size=24m tmpfs "$w/mnt" || { FAIL=$((FAIL + 1)); FAILED_NAMES+=("diskfull: mount"); return; }
  WHARF_DATA=$w/mnt/data start_wharf diskfull-server || { umount "$w/mnt"; FAIL=$((FAIL + 1)); return; }
  local blobs=$w/mnt/data/docker/registry/v2/blobs
  check "diskfull push an image that fits" skopeo copy --dest-tls-verify=false "oci:$L:amd64" "docker://$REG/full/app:1.0"
  head -c $((40 << 20)) /dev/urandom >"$w/big"
  local d; d=sha256:$(sha256sum "$w/big" | cut -d' ' -f1)
  local code
  code=$(curl -s -o "$w/resp" -w '%{http_code}' -H 'Expect:' --data-binary @"$w/big" "http://$REG/v2/full/big/blobs/uploads/?digest=$d")
  check "diskfull monolithic push that does not fit fails" test "$code" != 201
  check "diskfull error is the JSON envelope" jq -e '.errors[0].code' "$w/resp"
  check "diskfull failed blob not visible" test "$(curl -s -o /dev/null -w '%{http_code}' -I "http://$REG/v2/full/big/blobs/$d")" = 404
  check "diskfull no leftover upload data" test -z "$(find "$w/mnt/data/wharf/uploads" -type f -size +0)"
  local loc
  loc=$(curl -si -X POST "http://$REG/v2/full/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH -H 'Expect:' --data-binary @"$w/big" "$loc")
  check "diskfull chunk that does not fit fails" test "$code" != 202
  check "diskfull failed chunk gave its space back" test -z "$(find "$w/mnt/data/wharf/uploads" -type f -size +0)"
  check "diskfull session still usable" test "$(curl -s -o /dev/null -w '%{http_code}' "$loc")" = 204
  check "diskfull every stored blob matches its digest" bash -c '
    for f in $(find '"$blobs"' -name data); do
      h=$(sha256sum "$f" | cut -d" " -f1); [ "$h" = "$(basename "$(dirname "$f")")" ] || { echo "bad $f"; exit 1; }
    done'
  check "diskfull earlier image pulls back" skopeo copy --src-tls-verify=false "docker://$REG/full/app:1.0" "oci:$w/pulled:1.0"
  check_eq "diskfull earlier image identical" "$(oci_manifest_digest "$L" amd64)" "$(oci_manifest_digest "$w/pulled" 1.0)"
  check "diskfull push that fits works again" skopeo copy --dest-tls-verify=false "oci:$L:arm64" "docker://$REG/full/app:arm64"
  stop_wharf
  umount "$w/mnt"
}

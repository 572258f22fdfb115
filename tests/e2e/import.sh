# Adopting a distribution root: Debian's docker-registry (distribution 2.8.2)
# is filled by skopeo, podman, docker and ctr (single- and multi-arch, OCI and
# Docker types, a deleted tag, two repositories sharing layers); Wharf imports
# the root in place; every image pulls back byte-identical with every
# client; Wharf pushes, deletes and collects at grace 0; then distribution,
# started again on the same root, still pulls every image Wharf did not
# delete. A second copy of the root is imported by `wharf serve` on its own.
# Needs dockerd and containerd started (start_dockerd, start_containerd).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_distribution ROOT: docker-registry on ROOT; sets DIST, DIST_PID.
start_distribution() {
  local port; port=$(free_port)
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' "$1" "$port" >"$WORK/import/dist-$port.yml"
  docker-registry serve "$WORK/import/dist-$port.yml" >>"$WORK/import/dist.log" 2>&1 &
  DIST_PID=$!
  DIST=127.0.0.1:$port
  local i
  for i in $(seq 1 100); do curl -sf "http://$DIST/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "docker-registry did not start"; tail "$WORK/import/dist.log"; return 1
}

stop_distribution() {
  [ -n "${DIST_PID:-}" ] && kill "$DIST_PID" 2>/dev/null && wait "$DIST_PID" 2>/dev/null
  DIST_PID=
}

# raw_digest HOST REPO:TAG: the digest of the manifest bytes a registry serves.
raw_digest() {
  echo "sha256:$(skopeo inspect --tls-verify=false --raw "docker://$1/$2" | sha256sum | cut -d' ' -f1)"
}

client_import() {
  local w=$WORK/import root=$WORK/import/root
  local P="env -u DOCKER_CONFIG podman --root $w/podman/root --runroot $w/podman/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
  mkdir -p "$w"
  start_distribution "$root" || { FAIL=$((FAIL + 1)); FAILED_NAMES+=("import: distribution"); return; }
  local d="--dest-tls-verify=false"
  check "import: skopeo pushes an OCI image to distribution" skopeo copy $d "oci:$L:amd64" "docker://$DIST/imp/skopeo:amd64"
  check "import: skopeo pushes an OCI index" skopeo copy --all $d "oci:$L:multi" "docker://$DIST/imp/skopeo:multi"
  check "import: skopeo pushes Docker types" skopeo copy --format v2s2 $d "oci:$L:arm64" "docker://$DIST/imp/docker-types:arm64"
  check "import: two repositories sharing layers" bash -c "skopeo copy $d oci:$L:amd64 docker://$DIST/imp/shared-a:1 && skopeo copy $d oci:$L:arm64 docker://$DIST/imp/shared-b:1"
  check "import: podman pushes" bash -c "id=\$($P pull -q oci:$L:arm64) && $P push --tls-verify=false \$id docker://$DIST/imp/podman:1"
  if ! docker image inspect e2e/busybox:amd64 >/dev/null 2>&1; then
    skopeo copy "oci:$L:amd64" "docker-archive:$w/img.tar:e2e/busybox:amd64" >>"$LOG" 2>&1 && docker load -i "$w/img.tar" >>"$LOG" 2>&1
  fi
  check "import: docker pushes" bash -c "docker tag e2e/busybox:amd64 $DIST/imp/docker:1 && docker push $DIST/imp/docker:1"
  if ! $CTR images ls -q | grep -q '^e2e/x:multi$'; then
    tar -C "$L" -cf "$WORK/oci.tar" . && $CTR images import --all-platforms --base-name e2e/x "$WORK/oci.tar" >>"$LOG" 2>&1
  fi
  check "import: ctr pushes an index" $CTR images push --plain-http "$DIST/imp/ctr:multi" e2e/x:multi
  check "import: a tag that is deleted" bash -c "skopeo copy --format v2s2 $d oci:$L:amd64 docker://$DIST/imp/deleted:gone && skopeo delete --tls-verify=false docker://$DIST/imp/deleted:gone"
  # What distribution serves, to compare with.
  local refs="imp/skopeo:amd64 imp/skopeo:multi imp/docker-types:arm64 imp/shared-a:1 imp/shared-b:1 imp/podman:1 imp/docker:1 imp/ctr:multi"
  declare -A want
  local r
  for r in $refs; do want[$r]=$(raw_digest "$DIST" "$r"); done
  stop_distribution
  # A layer link to a blob that is not stored: reported, not fatal.
  mkdir -p "$root/docker/registry/v2/repositories/imp/docker/_layers/sha256/$(printf '0%.0s' $(seq 64))"
  printf 'sha256:%064d' 0 >"$root/docker/registry/v2/repositories/imp/docker/_layers/sha256/$(printf '0%.0s' $(seq 64))/link"
  cp -a "$root" "$w/root-copy"

  local nblobs; nblobs=$(find "$root/docker/registry/v2/blobs" -name data | wc -l)
  check "import: gc before the import refuses to delete" bash -c "! '$WHARF' gc --data '$root' --grace 0s >'$w/gc.out' 2>&1 && grep -q 'not fully imported' '$w/gc.out'"
  check_eq "import: and deleted nothing" "$nblobs" "$(find "$root/docker/registry/v2/blobs" -name data | wc -l)"
  rm -rf "$root/wharf"
  check "import: dry run reports and writes nothing" bash -c "'$WHARF' import --data '$root' --dry-run | grep -q 'would import 8 repositories' && test ! -e '$root/wharf'"
  check "import: wharf import" bash -c "'$WHARF' import --data '$root' >'$w/import.out' 2>>'$LOG'"
  check "import: the dangling link is reported" grep -q 'imp/docker: layer link sha256:0000.* is not stored' "$w/import.out"
  check "import: a second run adds nothing" bash -c "'$WHARF' import --data '$root' 2>>'$LOG' | grep -q '(8 imported before), 0 tags, 0 manifests'"

  WHARF_DATA=$root start_wharf wharf-import || { FAIL=$((FAIL + 1)); return; }
  MODE=http SCHEME=http CURL_TLS=""
  for r in $refs; do
    check_eq "import: $r pulls byte-identical (skopeo)" "${want[$r]}" "$(raw_digest "$REG" "$r")"
  done
  check "import: skopeo copies every layer back" skopeo copy --src-tls-verify=false "docker://$REG/imp/shared-b:1" "oci:$w/back:1"
  check "import: podman pulls" $P pull --tls-verify=false "$REG/imp/podman:1"
  check "import: docker pulls" bash -c "docker rmi $DIST/imp/docker:1 >/dev/null; docker pull $REG/imp/docker:1 && docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $REG/imp/docker:1 | grep -qxF '$REG/imp/docker@${want[imp/docker:1]}'"
  check "import: ctr pulls the index" $CTR images pull --plain-http --all-platforms "$REG/imp/ctr:multi"
  check_eq "import: the deleted tag stays deleted" 404 "$(curl -s -o /dev/null -w '%{http_code}' "http://$REG/v2/imp/deleted/manifests/gone")"
  # Wharf's own work on the adopted root.
  check "import: push to Wharf" skopeo copy $d "oci:$L:arm64" "docker://$REG/imp/new:1"
  check "import: delete on Wharf" skopeo delete --tls-verify=false "docker://$REG/imp/shared-b:1"
  check "import: gc at grace 0 beside the server" bash -c "'$WHARF' gc --data '$root' --grace 0s 2>>'$LOG' | grep -q '^freed'"
  check "import: shared layers still pull from the other repository" skopeo copy --src-tls-verify=false "docker://$REG/imp/shared-a:1" "oci:$w/back2:1"
  stop_wharf

  start_distribution "$root" || { FAIL=$((FAIL + 1)); return; }
  for r in $refs; do
    [ "$r" = imp/shared-b:1 ] && continue
    check "import: distribution, started again, still pulls $r" bash -c "skopeo copy --all --src-tls-verify=false docker://$DIST/$r dir:$w/d-${r//[:\/]/_} && test \"\$(skopeo inspect --tls-verify=false --raw docker://$DIST/$r | sha256sum | cut -d' ' -f1 | sed 's/^/sha256:/')\" = '${want[$r]}'"
  done
  stop_distribution

  # The copy: `wharf serve` finds the root and imports it by itself.
  WHARF_DATA=$w/root-copy start_wharf wharf-import-auto || { FAIL=$((FAIL + 1)); return; }
  check "import: serve logs that it found a distribution root" grep -q 'found a distribution root' "$WHARF_DIR/err.log"
  check "import: and imports it in the background" bash -c "for i in \$(seq 1 100); do grep -q 'distribution root imported' '$WHARF_DIR/err.log' && exit 0; sleep 0.1; done; exit 1"
  check_eq "import: every repository is served" '["imp/ctr","imp/docker","imp/docker-types","imp/podman","imp/shared-a","imp/shared-b","imp/skopeo"]' \
    "$(curl -s "http://$REG/v2/_catalog" | jq -c .repositories)"
  check_eq "import: imp/skopeo:multi pulls byte-identical" "${want[imp/skopeo:multi]}" "$(raw_digest "$REG" imp/skopeo:multi)"
  stop_wharf
}

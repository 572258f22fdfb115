# Deleting images frees space, with real clients: skopeo pushes two images
# that share layers, deletes one, `wharf gc` (beside the running server)
# frees exactly what only the deleted one used, and the other still pulls.

blob_bytes() { du -sb "$1/docker/registry/v2/blobs" | cut -f1; }

client_gc() {
  MODE=http SCHEME=http CURL_TLS=""
  local w=$WORK/gc t="--tls-verify=false"
  mkdir -p "$w"
  start_wharf wharf-gc || { FAIL=$((FAIL + 1)); return; }
  local data=$WHARF_DIR/data
  check "gc: push amd64" skopeo copy --dest-tls-verify=false "oci:$L:amd64" "docker://$REG/gc/app:amd64"
  check "gc: push arm64 (shares the busybox layer)" skopeo copy --dest-tls-verify=false "oci:$L:arm64" "docker://$REG/gc/app:arm64"
  check_eq "gc: nothing to free while both are tagged" "would free 0 blobs" \
    "$("$WHARF" gc --data "$data" --grace 0s --dry-run 2>/dev/null | head -n1 | cut -d, -f1)"
  local before; before=$(blob_bytes "$data")
  check "gc: skopeo delete arm64" skopeo delete $t "docker://$REG/gc/app:arm64"
  "$WHARF" gc --data "$data" >"$w/grace.out" 2>/dev/null
  check_eq "gc: within the grace period nothing goes" "freed 0 blobs" "$(head -n1 "$w/grace.out" | cut -d, -f1)"
  check "gc: and says the grace period kept them" grep -q '^kept for the grace period (24h): 2 unreferenced blobs' "$w/grace.out"
  check_eq "gc: dry run counts arm64's own layer and config" "would free 2 blobs" \
    "$("$WHARF" gc --data "$data" --grace 0s --dry-run 2>/dev/null | head -n1 | cut -d, -f1)"
  check_eq "gc: collect" "freed 2 blobs" "$("$WHARF" gc --data "$data" --grace 0s 2>/dev/null | head -n1 | cut -d, -f1)"
  local after; after=$(blob_bytes "$data")
  check "gc: the disk holds less ($before -> $after bytes)" test "$after" -lt "$before"
  check "gc: amd64 still pulls" skopeo copy --src-tls-verify=false "docker://$REG/gc/app:amd64" "oci:$w/back:amd64"
  check_eq "gc: pulled amd64 is identical" "$(oci_manifest_digest "$L" amd64)" "$(oci_manifest_digest "$w/back" amd64)"
  check "gc: arm64 can be pushed again" skopeo copy --dest-tls-verify=false "oci:$L:arm64" "docker://$REG/gc/app:arm64"
  check "gc: and pulls" skopeo copy --src-tls-verify=false "docker://$REG/gc/app:arm64" "oci:$w/back:arm64"
  stop_wharf
}

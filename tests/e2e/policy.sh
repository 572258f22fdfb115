# Project policies with real clients: a quota refuses skopeo's new layer and
# docker's new manifest with a clear error and keeps nothing of them; an
# immutable tag cannot be overwritten by skopeo or docker nor deleted; retention
# (CLI, dry run first) removes the tags its rules do not keep. Needs dockerd
# started (start_dockerd).

client_policy() {
  MODE=http SCHEME=http CURL_TLS=""
  local w=$WORK/policy
  mkdir -p "$w"
  WHARF_ADMIN_PASSWORD=admin-secret-1 start_wharf wharf-policy --config <(printf 'auth:\n  builtin: {}\n') || { FAIL=$((FAIL + 1)); return; }
  export WHARF_SERVER=http://$REG WHARF_USER=admin WHARF_PASSWORD=admin-secret-1
  local cr="--dest-tls-verify=false --dest-creds admin:admin-secret-1"
  check "policy: create project (CLI)" "$WHARF" project add team
  if ! docker image inspect e2e/busybox:amd64 >/dev/null 2>&1; then
    check "policy: load image into docker" bash -c "skopeo copy oci:$L:amd64 docker-archive:$w/img.tar:e2e/busybox:amd64 && docker load -i $w/img.tar"
  fi
  check "policy: docker login" bash -c "echo admin-secret-1 | docker login -u admin --password-stdin $REG"

  echo "--- quota"
  check "policy: skopeo push amd64" skopeo copy $cr "oci:$L:amd64" "docker://$REG/team/app:amd64"
  local used; used=$("$WHARF" project usage team --json | jq .bytes)
  check "policy: quota set just above the usage (CLI)" "$WHARF" project quota team "$((used + 100))"
  check_eq "policy: usage shows the quota" "$((used + 100))" "$("$WHARF" project usage team --json | jq .quota_bytes)"
  check "policy: skopeo push of a new layer refused with the quota message" \
    bash -c "! skopeo copy $cr oci:$L:arm64 docker://$REG/team/app:arm64 2>$w/skopeo.err; grep -q 'quota exceeded: project team uses' $w/skopeo.err"
  check "policy: docker push of a new manifest refused with the quota message" \
    bash -c "docker tag e2e/busybox:amd64 $REG/team/docker:1 && ! docker push $REG/team/docker:1 >$w/docker.out 2>&1; grep -q 'denied: quota exceeded' $w/docker.out"
  check_eq "policy: the refused pushes changed no usage" "$used" "$("$WHARF" project usage team --json | jq .bytes)"
  check_eq "policy: and left no upload data" "0" "$(find "$WHARF_DIR/data/wharf/uploads" -type f | wc -l)"
  check "policy: a developer cannot change the quota" bash -c "echo dev-secret-1 | $WHARF user add dev --password-stdin && $WHARF project member set team dev projectadmin && ! WHARF_USER=dev WHARF_PASSWORD=dev-secret-1 $WHARF project quota team none"
  check "policy: quota removed (CLI)" "$WHARF" project quota team none
  check "policy: docker push now passes" docker push "$REG/team/docker:1"

  echo "--- immutable tags"
  printf '{"immutable": [{"repositories": "app", "tags": "v*"}]}' >"$w/immutable.json"
  check "policy: immutability rule set (CLI)" "$WHARF" project policy team --set "$w/immutable.json"
  check "policy: skopeo push v1" skopeo copy $cr "oci:$L:amd64" "docker://$REG/team/app:v1"
  check "policy: skopeo push of the same image to v1 again" skopeo copy $cr "oci:$L:amd64" "docker://$REG/team/app:v1"
  check "policy: skopeo overwrite of v1 refused" \
    bash -c "! skopeo copy $cr oci:$L:arm64 docker://$REG/team/app:v1 2>$w/imm.err; grep -q 'immutable' $w/imm.err"
  check "policy: docker overwrite of v1 refused" \
    bash -c "docker tag e2e/busybox:amd64 $REG/team/app:v1 && ! docker push $REG/team/app:v1 >$w/dimm.out 2>&1; grep -q 'denied: .*immutable' $w/dimm.out"
  check "policy: skopeo delete of v1 refused" bash -c "! skopeo delete --tls-verify=false --creds admin:admin-secret-1 docker://$REG/team/app:v1"
  check_eq "policy: v1 is still the first image" "$(oci_manifest_digest "$L" amd64)" "$(curl_reg -u admin:admin-secret-1 -sI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/team/app/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}')"
  check "policy: a tag outside the rule moves" skopeo copy $cr "oci:$L:arm64" "docker://$REG/team/app:amd64"

  echo "--- retention"
  for t in r1 r2 r3; do
    check "policy: push $t" skopeo copy $cr "oci:$L:amd64" "docker://$REG/team/ret:$t"
    sleep 0.01
  done
  check "policy: push r4" skopeo copy $cr "oci:$L:arm64" "docker://$REG/team/ret:r4"
  printf '{"retention": [{"repositories": "ret", "keep": {"newest": 2}}]}' >"$w/retention.json"
  check "policy: retention rule set (CLI)" "$WHARF" project policy team --set "$w/retention.json"
  check_eq "policy: dry run lists r2 and r1" "team/ret:r2 team/ret:r1" \
    "$("$WHARF" project retention team --dry-run --json | jq -r '[.tags[] | .repository + ":" + .tag] | join(" ")')"
  check_eq "policy: the dry run removed nothing" '["r1","r2","r3","r4"]' "$(curl_reg -u admin:admin-secret-1 "http://$REG/v2/team/ret/tags/list" | jq -c .tags)"
  check "policy: retention run (CLI)" bash -c "$WHARF project retention team | grep -q '2 tags removed'"
  check_eq "policy: r3 and r4 stay" '["r3","r4"]' "$(curl_reg -u admin:admin-secret-1 "http://$REG/v2/team/ret/tags/list" | jq -c .tags)"
  check "policy: r3 still pulls" skopeo copy --src-tls-verify=false --src-creds admin:admin-secret-1 "docker://$REG/team/ret:r3" "oci:$w/back:r3"
  check_eq "policy: r3 pulled back identical" "$(oci_manifest_digest "$L" amd64)" "$(oci_manifest_digest "$w/back" r3)"
  # Audit records are written in batches at most once a second.
  check "policy: audit names the removed tags (CLI)" bash -c "for i in \$(seq 1 20); do $WHARF audit --action retention.delete | grep -q team/ret:r1 && exit 0; sleep 0.2; done; exit 1"
  # The schedule applies the rules by itself (storage.maintenance.retention.interval).
  for t in r5 r6; do
    check "policy: push $t" skopeo copy $cr "oci:$L:arm64" "docker://$REG/team/ret:$t"
    sleep 0.01
  done
  docker logout "$REG" >/dev/null 2>&1
  stop_wharf
  REGISTRY_STORAGE_MAINTENANCE_RETENTION_INTERVAL=1s start_wharf wharf-policy --config <(printf 'auth:\n  builtin: {}\n') || { FAIL=$((FAIL + 1)); return; }
  check "policy: the scheduled run keeps the newest two" bash -c \
    "for i in \$(seq 1 50); do [ \"\$(curl -sS -u admin:admin-secret-1 http://$REG/v2/team/ret/tags/list | jq -c .tags)\" = '[\"r5\",\"r6\"]' ] && exit 0; sleep 0.1; done; exit 1"

  echo "--- untagged manifests"
  export WHARF_SERVER=http://$REG  # the server restarted on another port
  printf 'auth:\n  builtin: {}\n' >"$w/builtin.yml"
  check "policy: skopeo push team/untag:latest" skopeo copy $cr "oci:$L:amd64" "docker://$REG/team/untag:latest"
  check "policy: skopeo push another image to latest: the first loses its tag" skopeo copy $cr "oci:$L:arm64" "docker://$REG/team/untag:latest"
  check "policy: wharf gc beside the server deletes the untagged manifest" bash -c \
    "$WHARF gc --config $w/builtin.yml --data $WHARF_DIR/data --grace 0s --untagged-age 0s | grep -q ', 1 untagged manifests'"
  check "policy: the audit log names it, deleted by system:gc (CLI)" bash -c \
    "$WHARF audit --action gc.untagged.delete | grep system:gc | grep -q team/untag@$(oci_manifest_digest "$L" amd64)"
  check "policy: latest still pulls" skopeo copy --src-tls-verify=false --src-creds admin:admin-secret-1 "docker://$REG/team/untag:latest" "oci:$w/back:untag"
  check_eq "policy: latest pulled back identical" "$(oci_manifest_digest "$L" arm64)" "$(oci_manifest_digest "$w/back" untag)"
  check_eq "policy: the untagged one is gone" "404" \
    "$(curl_reg -u admin:admin-secret-1 -s -o /dev/null -w '%{http_code}' "http://$REG/v2/team/untag/manifests/$(oci_manifest_digest "$L" amd64)")"
  unset WHARF_SERVER WHARF_USER WHARF_PASSWORD
  stop_wharf
}

# Access control with real clients, over HTTPS with the throwaway CA: the
# login flow of each client against htpasswd and against Wharf's own token
# service (docker's refresh tokens, containerd's OAuth2 POST), refused
# anonymous and wrong-password access, projects, roles and robots.
# Needs dockerd and containerd started (start_dockerd, start_containerd).

auth_tls_config() { # auth_tls_config FILE AUTH_YAML
  # The default login throttle: every client here logs in from 127.0.0.1
  # and each first fails on purpose, then logs in with the right password.
  printf 'http:\n  tls:\n    certificate: %s\n    key: %s\n%s\n' "$CERTS/server.crt" "$CERTS/server.key" "$2" >"$1"
}

# Requests to the token endpoint answered 200 by method.
token_calls() { metric "wharf_http_requests_total{endpoint=\"token\",method=\"$1\",status=\"200\"}"; }

# spray_wrong_passwords USER N: N wrong passwords for USER at the token
# endpoint; succeeds if each was refused (401, or 429 once blocked).
spray_wrong_passwords() {
  local s i
  for i in $(seq 1 "$2"); do
    s=$(token_status "$1" "wrong-$i")
    case $s in 401|429) ;; *) echo "attempt $i: $s"; return 1 ;; esac
  done
}

token_status() { # token_status USER PASSWORD: the token endpoint's status
  curl -sS --cacert "$CERTS/ca.crt" -o /dev/null -w '%{http_code}' -u "$1:$2" "https://$REG/auth/token?service=wharf"
}

ctr_hosts() { # a hosts.toml dir making ctr speak HTTPS with our CA
  local d=$1
  mkdir -p "$d/$REG"
  printf 'server = "https://%s"\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n  ca = "%s"\n' "$REG" "$REG" "$CERTS/ca.crt" >"$d/$REG/hosts.toml"
}

client_auth() {
  MODE=https SCHEME=https CURL_TLS="--cacert $CERTS/ca.crt"
  local w=$WORK/auth c="--cert-dir $CERTS/certdir"
  mkdir -p "$w"
  export REGISTRY_AUTH_FILE=$w/auth.json
  local P="podman --root $w/podman/root --runroot $w/podman/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
  local B="buildah --root $w/buildah/root --runroot $w/buildah/run --storage-driver vfs"
  if ! docker image inspect e2e/busybox:amd64 >/dev/null 2>&1; then
    check "auth: load image into docker" bash -c "skopeo copy oci:$L:amd64 docker-archive:$w/img.tar:e2e/busybox:amd64 && docker load -i $w/img.tar"
  fi
  if ! $CTR images ls -q | grep -q '^e2e/x:multi$'; then
    tar -C "$L" -cf "$WORK/oci.tar" .
    check "auth: import into containerd" $CTR images import --all-platforms --base-name e2e/x "$WORK/oci.tar"
  fi

  echo "--- htpasswd over https"
  check "htpasswd -B" htpasswd -Bbc "$w/htpasswd" alice alice-secret-1
  auth_tls_config "$w/htpasswd.yml" "$(printf 'auth:\n  htpasswd:\n    realm: e2e-realm\n    path: %s\n' "$w/htpasswd")"
  start_wharf wharf-auth-htpasswd --config "$w/htpasswd.yml" || { FAIL=$((FAIL + 1)); return; }
  check_eq "htpasswd: anonymous push gets 401" 401 "$(curl_reg -o /dev/null -w '%{http_code}' -X POST "https://$REG/v2/team/app/blobs/uploads/")"
  check "htpasswd: 401 carries a Basic challenge" bash -c "curl -sS --cacert $CERTS/ca.crt -D - -o /dev/null https://$REG/v2/ | grep -qi '^www-authenticate: Basic realm=\"e2e-realm\"'"
  check "htpasswd: anonymous skopeo push refused" bash -c "! skopeo copy --dest-cert-dir $CERTS/certdir oci:$L:amd64 docker://$REG/team/app:anon"
  check "htpasswd: skopeo login, wrong password refused" bash -c "! skopeo login $c -u alice -p wrong $REG"
  check "htpasswd: skopeo login" skopeo login $c -u alice -p alice-secret-1 "$REG"
  check "htpasswd: skopeo push after login" skopeo copy --dest-cert-dir "$CERTS/certdir" "oci:$L:amd64" "docker://$REG/team/app:1"
  check "htpasswd: podman login, wrong password refused" bash -c "! $P login $c -u alice -p wrong $REG"
  check "htpasswd: podman login" $P login $c -u alice -p alice-secret-1 "$REG"
  check "htpasswd: podman pull" $P pull $c "$REG/team/app:1"
  check "htpasswd: buildah login, wrong password refused" bash -c "! $B login $c -u alice -p wrong $REG"
  check "htpasswd: buildah login" $B login $c -u alice -p alice-secret-1 "$REG"
  check "htpasswd: docker login, wrong password refused" bash -c "! echo wrong | docker login -u alice --password-stdin $REG"
  check "htpasswd: docker login" bash -c "echo alice-secret-1 | docker login -u alice --password-stdin $REG"
  check "htpasswd: docker push" bash -c "docker tag e2e/busybox:amd64 $REG/team/docker:1 && docker push $REG/team/docker:1"
  check "htpasswd: docker pull" bash -c "docker rmi $REG/team/docker:1 && docker pull $REG/team/docker:1"
  check "htpasswd: docker logout" docker logout "$REG"
  ctr_hosts "$w/hosts"
  check "htpasswd: ctr push --user" $CTR images push --hosts-dir "$w/hosts" --user alice:alice-secret-1 "$REG/team/ctr:1" e2e/x:amd64
  check "htpasswd: ctr push with a wrong password refused" bash -c "! $CTR images push --hosts-dir $w/hosts --user alice:wrong $REG/team/ctr:2 e2e/x:amd64"
  check "htpasswd: ctr pull --user" $CTR images pull --hosts-dir "$w/hosts" --user alice:alice-secret-1 "$REG/team/ctr:1"
  skopeo logout "$REG" >/dev/null 2>&1
  stop_wharf

  echo "--- built-in users and tokens over https"
  auth_tls_config "$w/builtin.yml" "$(printf 'auth:\n  builtin: {}\n')"
  WHARF_ADMIN_PASSWORD=admin-secret-1 start_wharf wharf-auth-builtin --config "$w/builtin.yml" || { FAIL=$((FAIL + 1)); return; }
  export WHARF_SERVER=https://$REG WHARF_CACERT=$CERTS/ca.crt WHARF_USER=admin WHARF_PASSWORD=admin-secret-1
  check "builtin: admin creates a user (CLI)" bash -c "echo dev-secret-1 | $WHARF user add dev --password-stdin"
  check "builtin: admin creates a project (CLI)" "$WHARF" project add team
  check "builtin: admin adds a developer (CLI)" "$WHARF" project member set team dev developer
  local secret
  secret=$("$WHARF" robot add ci -p team:push --json | jq -r .secret)
  check "builtin: admin creates a robot (CLI)" test -n "$secret" -a "$secret" != null
  check "builtin: anonymous /v2/ gets a Bearer challenge" bash -c "curl -sS --cacert $CERTS/ca.crt -D - -o /dev/null https://$REG/v2/ | grep -qi '^www-authenticate: Bearer realm=\"https://$REG/auth/token\",service=\"wharf\"'"
  check "builtin: skopeo login, wrong password refused" bash -c "! skopeo login $c -u dev -p wrong $REG"
  check "builtin: skopeo login" skopeo login $c -u dev -p dev-secret-1 "$REG"
  check "builtin: developer pushes to their project" skopeo copy --dest-cert-dir "$CERTS/certdir" "oci:$L:amd64" "docker://$REG/team/app:1"
  check "builtin: developer cannot push to another project" bash -c "! skopeo copy --dest-cert-dir $CERTS/certdir oci:$L:amd64 docker://$REG/other/app:1"
  check "builtin: developer copies across repositories (mount)" skopeo copy --src-cert-dir "$CERTS/certdir" --dest-cert-dir "$CERTS/certdir" "docker://$REG/team/app:1" "docker://$REG/team/copy:1"
  skopeo logout "$REG" >/dev/null 2>&1
  check "builtin: anonymous pull of a private project refused" bash -c "! skopeo inspect $c docker://$REG/team/app:1"
  check "builtin: project made public (CLI)" "$WHARF" project public team true
  check "builtin: anonymous pull of a public project" skopeo inspect $c "docker://$REG/team/app:1"
  check "builtin: anonymous push to a public project refused" bash -c "! skopeo copy --dest-cert-dir $CERTS/certdir oci:$L:amd64 docker://$REG/team/app:anon"
  check "builtin: robot pushes with its secret" skopeo copy --dest-cert-dir "$CERTS/certdir" --dest-creds "robot\$ci:$secret" "oci:$L:amd64" "docker://$REG/team/robot:1"
  check "builtin: robot cannot push elsewhere" bash -c "! skopeo copy --dest-cert-dir $CERTS/certdir --dest-creds 'robot\$ci:$secret' oci:$L:amd64 docker://$REG/other/robot:1"

  check "builtin: podman login, wrong password refused" bash -c "! $P login $c -u dev -p wrong $REG"
  check "builtin: podman login" $P login $c -u dev -p dev-secret-1 "$REG"
  check "builtin: podman pull" $P pull $c "$REG/team/app:1"
  check "builtin: podman push" bash -c "$P tag $REG/team/app:1 $REG/team/podman:1 && $P push $c $REG/team/podman:1"
  check "builtin: buildah login, wrong password refused" bash -c "! $B login $c -u dev -p wrong $REG"
  check "builtin: buildah login" $B login $c -u dev -p dev-secret-1 "$REG"
  check "builtin: buildah pull" $B pull $c "$REG/team/podman:1"

  local before; before=$(token_calls POST)
  check "builtin: docker login, wrong password refused" bash -c "! echo wrong | docker login -u dev --password-stdin $REG"
  check "builtin: docker login" bash -c "echo dev-secret-1 | docker login -u dev --password-stdin $REG"
  check "builtin: docker push" bash -c "docker tag e2e/busybox:amd64 $REG/team/docker:1 && docker push $REG/team/docker:1"
  check "builtin: docker pull" bash -c "docker rmi $REG/team/docker:1 && docker pull $REG/team/docker:1"
  check "builtin: dockerd used its refresh token (OAuth2 POST)" test "$(token_calls POST)" -gt "$before"
  check "builtin: docker cannot push to another project" bash -c "docker tag e2e/busybox:amd64 $REG/other/docker:1 && ! docker push $REG/other/docker:1"
  docker logout "$REG" >/dev/null 2>&1

  ctr_hosts "$w/hosts-builtin"
  before=$(token_calls POST)
  check "builtin: ctr push --user (OAuth2 password grant)" $CTR images push --hosts-dir "$w/hosts-builtin" --user dev:dev-secret-1 "$REG/team/ctr:1" e2e/x:amd64
  check "builtin: containerd asked by POST" test "$(token_calls POST)" -gt "$before"
  check "builtin: ctr push with a wrong password refused" bash -c "! $CTR images push --hosts-dir $w/hosts-builtin --user dev:wrong $REG/team/ctr:2 e2e/x:amd64"
  check "builtin: ctr pull anonymously from the public project" $CTR images pull --hosts-dir "$w/hosts-builtin" "$REG/team/ctr:1"

  echo "--- login throttling"
  local spray
  spray=$("$WHARF" robot add spray -p team:pull --json | jq -r .secret)
  # Blocks last a second here (the default): what is checked does not hang
  # on timing.
  check "throttle: twelve wrong passwords for one account" spray_wrong_passwords 'robot$spray' 12
  check "throttle: another account from the same address still logs in" skopeo login $c -u dev -p dev-secret-1 "$REG"
  skopeo logout "$REG" >/dev/null 2>&1
  check "throttle: the admin sees it (CLI)" bash -c "$WHARF throttle list | grep -qF 'robot\$spray'"
  check "throttle: the admin clears it (CLI)" bash -c "$WHARF throttle clear --account 'robot\$spray' | grep -q 'cleared 1 '"
  check_eq "throttle: the robot logs in again at once" 200 "$(token_status 'robot$spray' "$spray")"
  check "throttle: clearing works on the data directory too" bash -c "$WHARF throttle clear --data $WHARF_DIR/data | grep -q '^cleared '"

  check "builtin: project usage counts the pushed images (CLI)" bash -c "$WHARF project usage team | grep -q '^team/app '"
  check "builtin: admin deletes a repository (CLI)" "$WHARF" repo rm team/robot
  check "builtin: the deleted repository is gone" bash -c "! skopeo inspect $c docker://$REG/team/robot:1"
  check "builtin: a developer may not delete repositories" bash -c "! WHARF_USER=dev WHARF_PASSWORD=dev-secret-1 $WHARF repo rm team/app"
  check "builtin: audit shows dev's pushes (CLI)" bash -c "$WHARF audit --actor dev --action push --outcome ok | grep -q team/app:1"
  check "builtin: audit shows refused logins (CLI)" bash -c "$WHARF audit --action login --outcome failed | grep -q dev"
  check "builtin: audit shows the robot's denied push" bash -c "$WHARF audit --actor 'robot\$ci' --outcome denied | grep -q other/robot"
  check_eq "builtin: catalog of anonymous shows the public project only" '["team/app","team/copy","team/ctr","team/docker","team/podman"]' \
    "$(curl_reg "https://$REG/v2/_catalog" -H "Authorization: Bearer $(curl_reg "https://$REG/auth/token?service=wharf&scope=registry:catalog:*" | jq -r .token)" | jq -c .repositories)"
  unset WHARF_SERVER WHARF_CACERT WHARF_USER WHARF_PASSWORD REGISTRY_AUTH_FILE
  stop_wharf
}

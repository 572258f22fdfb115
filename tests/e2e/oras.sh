# oras-py (the OCI artifact client, PyPI `oras`) against htpasswd over TLS:
# it logs in after the 401 challenge, pushes an artifact and pulls it back
# identical; anonymous uploads of 3 and 64 MiB read their 401 over HTTP/2
# and HTTP/1.1. Needs $ORAS_PYTHON: a python with oras==0.2.43
# (scripts/test.sh makes one).

client_oras() {
  local w=$WORK/oras
  mkdir -p "$w/pulled"
  local py=${ORAS_PYTHON:-python3}
  if ! "$py" -c 'import oras.client' 2>/dev/null; then
    FAIL=$((FAIL + 1)); FAILED_NAMES+=("oras: no python with oras (set ORAS_PYTHON)"); return
  fi
  htpasswd -Bbc "$w/htpasswd" alice alice-secret-1 >>"$LOG" 2>&1
  printf 'http:\n  tls:\n    certificate: %s\n    key: %s\nauth:\n  htpasswd:\n    realm: r\n    path: %s\n' \
    "$CERTS/server.crt" "$CERTS/server.key" "$w/htpasswd" >"$w/config.yml"
  start_wharf wharf-oras --config "$w/config.yml" || { FAIL=$((FAIL + 1)); return; }
  head -c $((3 << 20)) /dev/urandom >"$w/artifact.bin"
  cat >"$w/push.py" <<'PY'
import sys, oras.client
reg, ca, user, password, path, out = sys.argv[1:7]
c = oras.client.OrasClient(hostname=reg, tls_verify=ca, auth_backend="basic")
c.login(username=user, password=password, hostname=reg, config_path=out + "/auth.json")
c.push(files=[path], target=f"{reg}/team/oras:1")
assert c.get_tags(f"{reg}/team/oras") == ["1"], c.get_tags(f"{reg}/team/oras")
c.pull(target=f"{reg}/team/oras:1", outdir=out)
PY
  # Anonymous uploads answered before their body is read: every client
  # must read the challenge, over HTTP/2 and HTTP/1.1 (curl 7.88 reports a
  # reset HTTP/2 stream instead of the answer it had).
  head -c $((64 << 20)) /dev/urandom >"$w/64m.bin"
  local f v
  for f in artifact.bin 64m.bin; do
    for v in --http2 --http1.1; do
      check "oras: anonymous $f upload over TLS ($v) gets the 401 challenge" bash -c \
        "curl -sS $v --cacert $CERTS/ca.crt -o $w/anon.json -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' --data-binary @$w/$f 'https://$REG/v2/team/oras/blobs/uploads/?digest=sha256:$(sha256sum "$w/$f" | cut -d' ' -f1)' | grep -qx 401 && jq -e '.errors[0].code == \"UNAUTHORIZED\"' $w/anon.json"
    done
  done
  # oras-py pushes files from its working directory only.
  check "oras: login and push an artifact" bash -c "cd $w && timeout 300 $py push.py $REG $CERTS/ca.crt alice alice-secret-1 artifact.bin $w/pulled"
  check "oras: pulled artifact is identical" cmp "$w/artifact.bin" "$w/pulled/artifact.bin"
  stop_wharf
}

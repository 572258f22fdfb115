# Helpers shared by the end-to-end scripts. Source it; needs $WORK and $WHARF.

PASS=${PASS:-0}
FAIL=${FAIL:-0}
FAILED_NAMES=()
LOG=${LOG:-$WORK/e2e.log}

# check NAME CMD...: runs CMD with output to the log; counts and reports.
check() {
  local name=$1; shift
  echo "=== $name: $*" >>"$LOG"
  if "$@" >>"$LOG" 2>&1; then
    PASS=$((PASS + 1)); echo "ok   $name"
  else
    FAIL=$((FAIL + 1)); FAILED_NAMES+=("$name"); echo "FAIL $name"
    tail -n 15 "$LOG" | sed 's/^/     | /'
  fi
}

# check_eq NAME EXPECTED ACTUAL
check_eq() {
  if [ "$2" = "$3" ]; then
    PASS=$((PASS + 1)); echo "ok   $1"
  else
    FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); echo "FAIL $1: expected [$2], got [$3]"
  fi
}

# start_wharf NAME [extra serve args...]: starts `wharf serve` on a free
# loopback port with data in $WORK/NAME; sets WHARF_PID, WHARF_PORT, REG.
start_wharf() {
  local name=$1; shift
  local dir=$WORK/$name
  mkdir -p "$dir"
  : >"$dir/out.log"
  "$WHARF" serve --data "${WHARF_DATA:-$dir/data}" --addr 127.0.0.1:${WHARF_FIXED_PORT:-0} "$@" >>"$dir/out.log" 2>>"$dir/err.log" &
  WHARF_PID=$!
  local i line=""
  # Wait for the line wharf prints once its port is bound (not a blind sleep).
  for i in $(seq 1 200); do
    line=$(grep -m1 'wharf listening on' "$dir/out.log" || true)
    [ -n "$line" ] && break
    kill -0 "$WHARF_PID" 2>/dev/null || { echo "wharf exited:"; cat "$dir/err.log"; return 1; }
    sleep 0.05
  done
  [ -n "$line" ] || { echo "wharf did not start"; return 1; }
  WHARF_PORT=$(sed -E 's/.*listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")
  REG=127.0.0.1:$WHARF_PORT
  WHARF_DIR=$dir
}

stop_wharf() {
  if [ -n "${WHARF_PID:-}" ]; then
    kill -TERM "$WHARF_PID" 2>/dev/null || true
    wait "$WHARF_PID" 2>/dev/null || true
    WHARF_PID=
  fi
}

# scheme for curl against the current registry
curl_reg() { curl -sS ${CURL_TLS:-} "$@"; }

# A counter from /metrics (0 if absent).
metric() {
  curl_reg "$SCHEME://$REG/metrics" | awk -v k="$1" 'index($0, k" ")==1 {print $2; found=1} END {if (!found) print 0}'
}

# Mounts answered so far (POST upload_start with 201).
mounts() { metric 'wharf_http_requests_total{endpoint="upload_start",method="POST",status="201"}'; }

# Digest of a manifest as the registry reports it.
reg_digest() {
  curl_reg -I -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json' \
    "$SCHEME://$REG/v2/$1/manifests/$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}'
}

reg_tags() { curl_reg "$SCHEME://$REG/v2/$1/tags/list" | jq -c '.tags'; }

# Makes a throwaway CA and a server certificate for localhost, 127.0.0.1, ::1.
make_certs() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=wharf-e2e-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" -addext basicConstraints=critical,CA:TRUE >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/ext" -out "$d/server.crt" >/dev/null 2>&1
  mkdir -p "$d/certdir" && cp "$d/ca.crt" "$d/certdir/ca.crt"
}

summary() {
  echo
  if [ "$FAIL" -gt 0 ]; then
    echo "failed: ${FAILED_NAMES[*]}"
  fi
  echo "e2e: $PASS passed, $FAIL failed"
}

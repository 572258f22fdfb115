#!/usr/bin/env bash
# End-to-end tests: real clients (skopeo, podman, buildah, docker, ctr) push,
# pull, copy across repositories, push a multi-arch index, pull one platform
# and delete, against `wharf serve` on a free loopback port, over HTTP and
# over HTTPS with a throwaway CA; then log in to htpasswd and built-in
# access control with each of them (auth.sh), free space (gc.sh), apply
# project policies (policy.sh), adopt a distribution root written by Debian's
# docker-registry (import.sh) and push artifacts with oras-py (oras.sh). Needs root and the clients installed
# (scripts/test.sh installs them). Usage: run.sh [client...]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WHARF=${WHARF:-$ROOT/target/release/wharf}
# Lower case: podman derives image names from the path of an OCI layout.
WORK=/tmp/wharf-e2e-$$-$RANDOM
mkdir -p "$WORK"
export WORK WHARF
. "$HERE/lib.sh"
. "$HERE/clients.sh"
. "$HERE/auth.sh"
. "$HERE/gc.sh"
. "$HERE/policy.sh"
. "$HERE/import.sh"
. "$HERE/oras.sh"

CLIENTS=("$@")
[ ${#CLIENTS[@]} -eq 0 ] && CLIENTS=(skopeo podman buildah docker ctr diskfull auth gc policy import oras)

cleanup() {
  stop_wharf; stop_dockerd; stop_containerd; stop_distribution
  if [ "$FAIL" -eq 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else echo "work directory kept: $WORK"; fi
}
trap cleanup EXIT

[ -x "$WHARF" ] || { echo "no wharf binary at $WHARF (cargo build --release)"; exit 1; }
L=$WORK/layout
"$HERE/make-images.sh" "$L" >>"$LOG" 2>&1 || { echo "building test images failed"; tail "$LOG"; exit 1; }
CERTS=$WORK/certs
make_certs "$CERTS"

for c in "${CLIENTS[@]}"; do
  case $c in
    docker) start_dockerd || { FAIL=$((FAIL + 1)); FAILED_NAMES+=(dockerd); continue; } ;;
    ctr) start_containerd || { FAIL=$((FAIL + 1)); FAILED_NAMES+=(containerd); continue; } ;;
  esac
  if [ "$c" = auth ]; then
    echo "--- access control"
    { start_dockerd && start_containerd; } || { FAIL=$((FAIL + 1)); FAILED_NAMES+=(auth-daemons); continue; }
    client_auth
    stop_dockerd; stop_containerd
    continue
  fi
  if [ "$c" = policy ]; then
    echo "--- project policies"
    start_dockerd || { FAIL=$((FAIL + 1)); FAILED_NAMES+=(policy-dockerd); continue; }
    client_policy
    stop_dockerd
    continue
  fi
  if [ "$c" = oras ]; then
    echo "--- oras-py over https with htpasswd"
    client_oras
    continue
  fi
  if [ "$c" = import ]; then
    echo "--- adopting a distribution root"
    { start_dockerd && start_containerd; } || { FAIL=$((FAIL + 1)); FAILED_NAMES+=(import-daemons); continue; }
    client_import
    stop_distribution; stop_dockerd; stop_containerd
    continue
  fi
  if [ "$c" = gc ]; then
    echo "--- deleting frees space"
    client_gc
    continue
  fi
  if [ "$c" = diskfull ]; then
    MODE=http SCHEME=http CURL_TLS=""
    echo "--- full disk"
    client_diskfull
    continue
  fi
  for MODE in http https; do
    if [ "$MODE" = https ]; then
      SCHEME=https; CURL_TLS="--cacert $CERTS/ca.crt"
      printf 'http:\n  tls:\n    certificate: %s\n    key: %s\n' "$CERTS/server.crt" "$CERTS/server.key" >"$WORK/tls.yml"
      start_wharf "wharf-$c-$MODE" --config "$WORK/tls.yml" || { FAIL=$((FAIL + 1)); continue; }
    else
      SCHEME=http; CURL_TLS=""
      start_wharf "wharf-$c-$MODE" || { FAIL=$((FAIL + 1)); continue; }
    fi
    echo "--- $c over $MODE ($REG)"
    "client_$c"
    stop_wharf
  done
  case $c in
    docker) stop_dockerd ;;
    ctr) stop_containerd ;;
  esac
done
summary
[ "$FAIL" -eq 0 ]

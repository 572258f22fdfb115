#!/usr/bin/env bash
# The container image, run the tutorials' way. Builds the image from a
# static wharf (scripts/build-image.sh, offline), loads it into docker (a
# dockerd started here, with its own root and the docker0 bridge, so `-p`
# works) and then into podman (private storage and containers.conf), and for
# each: `run -d -p PORT:5000 -v DIR:/var/lib/registry` on a root-owned DIR,
# push an image, remove it locally and pull it back, check the server runs
# as uid 65532 and the volume is its own, `stop` (graceful, under 3 s),
# start a new container on the same DIR (with REGISTRY_* settings) and pull
# again; then HTTPS with REGISTRY_HTTP_ADDR=0.0.0.0:443 and
# REGISTRY_HTTP_TLS_CERTIFICATE/KEY on a mounted /certs. Also: the image is
# under 40 MB and its configuration (user, env, volume, port, labels).
# Everything it starts or leaves (containers, dockerd, docker0, podman's CNI
# bridge, iptables chains, netns mounts, ip_forward) is undone on exit.
# Needs root, docker.io, podman, buildah, openssl, curl, jq, busybox-static.
# Usage: tests/container/run.sh [docker] [podman]
#   WHARF_BIN=PATH  a statically linked wharf (otherwise build-image.sh builds one)
#   KEEP_WORK=1     keep the work directory
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/wharf-container.XXXXXX)
LOG=$WORK/container.log
export WORK LOG
WHARF=${WHARF_BIN:-}
. "$ROOT/tests/e2e/lib.sh"

summary() {
  echo
  [ "$FAIL" -gt 0 ] && echo "failed: ${FAILED_NAMES[*]}"
  echo "container: $PASS passed, $FAIL failed ($(( $(date +%s) - T_START )) s)"
}

ENGINES=("$@")
[ ${#ENGINES[@]} -eq 0 ] && ENGINES=(docker podman)
T_START=$(date +%s)
MAX_IMAGE_BYTES=40000000
RUN_UID=65532
SCHEME=http CURL_TLS=

# --- what was there before, so that cleanup removes only what we made
had_link() { ip link show "$1" >/dev/null 2>&1; }
cni_chains() { { iptables -t nat -S; iptables -t filter -S; } 2>/dev/null | awk '$1=="-N" && $2 ~ /^CNI-/'; }
HAD_DOCKER0=0; had_link docker0 && HAD_DOCKER0=1
HAD_CNI0=0; had_link cni-podman0 && HAD_CNI0=1
HAD_NETNS=0; [ -e /run/netns ] && HAD_NETNS=1
HAD_VAR_CNI=0; [ -e /var/lib/cni ] && HAD_VAR_CNI=1
HAD_CNI_CHAINS=0; [ -n "$(cni_chains)" ] && HAD_CNI_CHAINS=1
IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
echo "before: docker0=$HAD_DOCKER0 cni-podman0=$HAD_CNI0 /run/netns=$HAD_NETNS /var/lib/cni=$HAD_VAR_CNI CNI chains=$HAD_CNI_CHAINS ip_forward=$IP_FORWARD" >>"$LOG"
DOCKERD_PID=
PODMAN_USED=0

# Removes the CNI chains and the rules that jump to them (iptables or ip6tables).
drop_cni_chains() {
  local ipt=$1 t rule chain
  for t in nat filter mangle; do
    $ipt -t $t -S 2>/dev/null | grep -E '^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*CNI-' | sed 's/^-A/-D/' |
      while read -r rule; do eval "$ipt -t $t $rule"; done
    for chain in $($ipt -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^CNI-/ {print $2}'); do $ipt -t $t -F "$chain"; done
    for chain in $($ipt -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^CNI-/ {print $2}'); do $ipt -t $t -X "$chain"; done
  done
}

cleanup() {
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    docker -H "unix://$WORK/docker/docker.sock" ps -aq |
      xargs -r docker -H "unix://$WORK/docker/docker.sock" rm -f -v >/dev/null 2>&1
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    # its containerd, if it outlived it
    [ -f "$WORK/docker/exec/containerd/containerd.pid" ] && kill "$(cat "$WORK/docker/exec/containerd/containerd.pid")" 2>/dev/null
  fi
  [ "$HAD_DOCKER0" = 0 ] && had_link docker0 && ip link del docker0
  if [ "$PODMAN_USED" = 1 ]; then
    podman_env
    podman rm -a -f -t 0 >/dev/null 2>&1
    podman system reset -f >/dev/null 2>&1
  fi
  [ "$HAD_CNI0" = 0 ] && had_link cni-podman0 && ip link del cni-podman0
  if [ "$HAD_CNI_CHAINS" = 0 ]; then drop_cni_chains iptables; drop_cni_chains ip6tables; fi
  if [ "$HAD_NETNS" = 0 ] && [ -d /run/netns ]; then
    for f in /run/netns/*; do [ -e "$f" ] && { umount "$f" 2>/dev/null; rm -f "$f"; }; done
    while mountpoint -q /run/netns; do umount /run/netns || break; done
    rmdir /run/netns
  fi
  [ "$HAD_VAR_CNI" = 0 ] && rm -rf /var/lib/cni
  echo "$IP_FORWARD" >/proc/sys/net/ipv4/ip_forward
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l
  # The big parts go in any case; the logs stay if something failed.
  rm -rf "$WORK/docker/root" "$WORK/docker/exec" "$WORK/podman/root" "$WORK/podman/run" "$WORK/image"
  if [ "$FAIL" -eq 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else echo "work directory kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    case $USED_PORTS in *" $p "*) continue ;; esac
    [ -z "$(ss -Htln "( sport = :$p )")" ] && { USED_PORTS="$USED_PORTS$p "; echo "$p"; return; }
  done
}

# wait_200 URL [curl args]: until URL answers 200 (20 s at most).
wait_200() {
  local url=$1 i; shift
  for i in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")" = 200 ] && return 0
    sleep 0.2
  done
  echo "$url did not answer 200"; curl -sS -o /dev/null -w '%{http_code}\n' "$@" "$url"; return 1
}

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

# uid_of ENGINE CONTAINER: the real, effective, saved and fs uid of its PID 1.
uid_of() {
  local pid; pid=$($1 inspect --format '{{.State.Pid}}' "$2")
  awk '$1=="Uid:" {print $2":"$3":"$4":"$5}' "/proc/$pid/status"
}

# has_digest ENGINE IMAGE REPO@DIGEST: the local image records that digest.
# (Read again if it is missing: once, podman's inspect right after a pull
# came without it.)
has_digest() {
  local got i
  for i in 1 2 3; do
    got=$($1 image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$2")
    grep -qxF "$3" <<<"$got" && return 0
    echo "repo digests of $2 (try $i):"; echo "$got"
    sleep 0.5
  done
  return 1
}

# not_owned_by DIR UID: prints what in DIR is not the user's (none: ok).
owned_by() {
  local other; other=$(find "$1" ! -uid "$2" -print)
  [ -z "$other" ] || { echo "not owned by $2:"; echo "$other"; return 1; }
}

# logs_have ENGINE CONTAINER TEXT (the engine may write its log a bit later).
logs_have() {
  local i
  for i in $(seq 1 25); do $1 logs "$2" 2>&1 | grep -q -- "$3" && return 0; sleep 0.2; done
  return 1
}

podman_env() {
  unset DOCKER_HOST DOCKER_CONFIG
  export CONTAINERS_CONF=$WORK/podman/containers.conf CONTAINERS_STORAGE_CONF=$WORK/podman/storage.conf
}

start_dockerd_bridge() {
  local d=$WORK/docker
  mkdir -p "$d"
  dockerd --data-root "$d/root" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" -H "unix://$d/docker.sock" \
    --storage-driver vfs --iptables=false --ip6tables=false --ip-forward=false >"$d/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST=unix://$d/docker.sock DOCKER_CONFIG=$d/config
  local i
  for i in $(seq 1 200); do docker info >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "dockerd did not start"; tail -n 20 "$d/dockerd.log"; return 1
}

setup_podman() {
  local d=$WORK/podman
  mkdir -p "$d/tmp"
  local nofile; nofile=$(ulimit -Hn)
  cat >"$d/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/events.log"
tmp_dir = "$d/tmp"
EOF
  cat >"$d/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$d/root"
runroot = "$d/run"
EOF
  PODMAN_USED=1
  podman_env
  podman info >/dev/null
}

# A small image to push, made offline: busybox-static in a tarball.
make_busybox_tar() {
  local r=$WORK/busybox-rootfs
  mkdir -p "$r/bin"
  cp /bin/busybox "$r/bin/busybox"
  ln -sf busybox "$r/bin/sh"
  head -c 65536 /dev/urandom >"$r/random"
  tar -C "$r" -cf "$WORK/busybox.tar" .
}

# The main flow for ENGINE (docker or podman).
tutorial() {
  local E=$1 tls="" certdir=""
  [ "$E" = podman ] && tls=--tls-verify=false
  local t0; t0=$(date +%s)
  local P; P=$(free_port)
  local DIR=$WORK/$E/registry
  REG=127.0.0.1:$P SCHEME=http CURL_TLS=
  mkdir -p "$DIR"   # root's, as `-v` makes it
  check "$E: run -d -p $P:5000 -v DIR:/var/lib/registry" \
    $E run -d -p "$P:5000" -v "$DIR:/var/lib/registry" --name registry wharf
  check "$E: /v2/ answers 200" wait_200 "http://$REG/v2/"
  check "$E: logs say listening" logs_have $E registry "wharf listening on"
  check_eq "$E: server runs as uid $RUN_UID" "$RUN_UID:$RUN_UID:$RUN_UID:$RUN_UID" "$(uid_of $E registry)"
  check "$E: tag" $E tag my-busybox "$REG/my-busybox"
  check "$E: push" $E push $tls "$REG/my-busybox"
  local d; d=$(reg_digest my-busybox latest)
  check "$E: registry has the manifest" test -n "$d"
  check "$E: volume is uid $RUN_UID's" owned_by "$DIR" $RUN_UID
  check "$E: remove the local image" $E rmi my-busybox "$REG/my-busybox"
  check "$E: pull" $E pull $tls "$REG/my-busybox"
  check "$E: pulled digest is the pushed one" has_digest $E "$REG/my-busybox" "$REG/my-busybox@$d"
  local a b; a=$(now_ms)
  check "$E: stop" $E stop -t 10 registry
  b=$(now_ms)
  echo "     ($E stop took $((b - a)) ms)"; echo "$E stop: $((b - a)) ms" >>"$LOG"
  check "$E: stop took less than 3 s" test $((b - a)) -lt 3000
  check_eq "$E: exit code after stop" 0 "$($E inspect --format '{{.State.ExitCode}}' registry)"
  check "$E: rm" $E rm registry

  # A new container on the same directory, with REGISTRY_* settings.
  check "$E: new container on the same volume (REGISTRY_STORAGE_DELETE_ENABLED=false, REGISTRY_LOG_LEVEL=debug)" \
    $E run -d -p "$P:5000" -v "$DIR:/var/lib/registry" --name registry \
    -e REGISTRY_STORAGE_DELETE_ENABLED=false -e REGISTRY_LOG_LEVEL=debug wharf
  check "$E: /v2/ answers 200 again" wait_200 "http://$REG/v2/"
  check "$E: remove the local image again" $E rmi "$REG/my-busybox"
  check "$E: pull from the new container" $E pull $tls "$REG/my-busybox"
  check "$E: same digest from the new container" has_digest $E "$REG/my-busybox" "$REG/my-busybox@$d"
  check_eq "$E: REGISTRY_STORAGE_DELETE_ENABLED=false: DELETE answers 405" 405 \
    "$(status_of -X DELETE "http://$REG/v2/my-busybox/manifests/$d")"
  check_eq "$E: the manifest is still there" "$d" "$(reg_digest my-busybox latest)"
  check "$E: REGISTRY_LOG_LEVEL=debug: debug lines in the log" logs_have $E registry DEBUG
  check_eq "$E: still uid $RUN_UID" "$RUN_UID:$RUN_UID:$RUN_UID:$RUN_UID" "$(uid_of $E registry)"
  check "$E: stop and rm" $E rm -f registry
  $E tag "$REG/my-busybox" my-busybox >>"$LOG" 2>&1

  # HTTPS, the tutorial's command.
  local P2 CD=$WORK/$E/certs DIR2=$WORK/$E/registry-tls
  P2=$(free_port)
  mkdir -p "$CD" "$DIR2"
  cp "$CERTS/server.crt" "$CD/domain.crt"; cp "$CERTS/server.key" "$CD/domain.key"; chmod 600 "$CD/domain.key"
  REG=127.0.0.1:$P2 SCHEME=https CURL_TLS="--cacert $CERTS/ca.crt"
  check "$E: run -d -p $P2:443 -v CERTS:/certs -e REGISTRY_HTTP_ADDR=0.0.0.0:443 -e REGISTRY_HTTP_TLS_*" \
    $E run -d -p "$P2:443" -v "$DIR2:/var/lib/registry" -v "$CD:/certs" --name registry-tls \
    -e REGISTRY_HTTP_ADDR=0.0.0.0:443 -e REGISTRY_HTTP_TLS_CERTIFICATE=/certs/domain.crt \
    -e REGISTRY_HTTP_TLS_KEY=/certs/domain.key wharf
  check "$E: https /v2/ answers 200 (verified with the CA)" wait_200 "https://$REG/v2/" --cacert "$CERTS/ca.crt"
  check "$E: https: plain http is not served" test "$(status_of "http://$REG/v2/")" != 200
  check_eq "$E: https: server runs as uid $RUN_UID (key file 0600 root)" "$RUN_UID:$RUN_UID:$RUN_UID:$RUN_UID" "$(uid_of $E registry-tls)"
  # docker: 127.0.0.0/8 is an insecure registry, so it speaks TLS without
  # verifying; podman verifies with --cert-dir.
  [ "$E" = podman ] && tls="--cert-dir $CERTS/certdir"
  check "$E: https: tag" $E tag my-busybox "$REG/my-busybox"
  check "$E: https: push" $E push $tls "$REG/my-busybox"
  local d2; d2=$(reg_digest my-busybox latest)
  check "$E: https: registry has the manifest" test -n "$d2"
  check "$E: https: remove the local image" $E rmi "$REG/my-busybox"
  check "$E: https: pull" $E pull $tls "$REG/my-busybox"
  check "$E: https: pulled digest is the pushed one" has_digest $E "$REG/my-busybox" "$REG/my-busybox@$d2"
  check "$E: https: stop and rm" $E rm -f registry-tls
  echo "     ($E: $(( $(date +%s) - t0 )) s)"
}

docker_only() {
  # The image's configuration.
  local j; j=$(docker image inspect wharf)
  check_eq "image: user" '0:0' "$(jq -r '.[0].Config.User' <<<"$j")"
  check_eq "image: entrypoint and cmd" '["/usr/local/bin/wharf"]["serve"]' "$(jq -c '.[0].Config.Entrypoint, .[0].Config.Cmd' <<<"$j" | tr -d '\n')"
  check "image: WHARF_RUN_AS=$RUN_UID:$RUN_UID" jq -e ".[0].Config.Env | index(\"WHARF_RUN_AS=$RUN_UID:$RUN_UID\")" <<<"$j"
  check "image: volume /var/lib/registry" jq -e '.[0].Config.Volumes | has("/var/lib/registry")' <<<"$j"
  check "image: port 5000" jq -e '.[0].Config.ExposedPorts | has("5000/tcp")' <<<"$j"
  local v; v=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
  check_eq "image: version label" "$v" "$(jq -r '.[0].Config.Labels["org.opencontainers.image.version"]' <<<"$j")"
  local size; size=$(jq -r '.[0].Size' <<<"$j")
  echo "     (image size: $size bytes)"; echo "image size: $size" >>"$LOG"
  check "image: smaller than 40 MB" test "$size" -lt $MAX_IMAGE_BYTES
  # Nothing but the binary: it runs without a libc in the image, and
  # REGISTRY_* variables reach the configuration.
  local cfg rc; cfg=$(docker run --rm -e REGISTRY_STORAGE_DELETE_ENABLED=false wharf config check 2>>"$LOG")
  rc=$?
  echo "$cfg" >>"$LOG"
  check_eq "image: runs without a libc (config check)" 0 "$rc"
  check_eq "image: data in /var/lib/registry" "rootdirectory: /var/lib/registry" "$(grep -o 'rootdirectory: .*' <<<"$cfg")"
  check_eq "image: -e REGISTRY_STORAGE_DELETE_ENABLED=false reaches the config" "enabled: false" \
    "$(grep -A1 '^  delete:' <<<"$cfg" | grep -o 'enabled: .*')"

  # No -v: docker makes an anonymous volume from the image's directory.
  local P; P=$(free_port)
  REG=127.0.0.1:$P SCHEME=http CURL_TLS=
  check "docker: run without -v (anonymous volume)" docker run -d -p "$P:5000" --name registry-anon wharf
  check "docker: anonymous volume: /v2/ answers 200" wait_200 "http://$REG/v2/"
  check "docker: anonymous volume: push" bash -c "docker tag my-busybox $REG/anon && docker push $REG/anon"
  check "docker: anonymous volume: rm -f -v" docker rm -f -v registry-anon
}

[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
CERTS=$WORK/certs
make_certs "$CERTS"
make_busybox_tar

echo "--- image"
t=$(date +%s)
if [ -n "${WHARF_BIN:-}" ]; then
  check "static binary" bash -c "! readelf -lW '$WHARF_BIN' | grep -q INTERP && ! readelf -dW '$WHARF_BIN' | grep -q NEEDED"
fi
check "scripts/build-image.sh" env OUT="$WORK/image" "$ROOT/scripts/build-image.sh"
[ -f "$WORK/image/wharf-docker.tar" ] || { summary; exit 1; }
grep -E '^  |^image ' "$LOG" | tail -n 5 | sed 's/^/     /'
echo "     ($(( $(date +%s) - t )) s)"

for E in "${ENGINES[@]}"; do
  echo "--- $E"
  t=$(date +%s)
  case $E in
    docker)
      check "docker: start dockerd" start_dockerd_bridge
      docker info >/dev/null 2>&1 || continue
      check "docker: load the image" docker load -i "$WORK/image/wharf-docker.tar"
      check "docker: import a busybox image" docker import "$WORK/busybox.tar" my-busybox:latest
      docker_only
      ;;
    podman)
      check "podman: private configuration" setup_podman
      podman info >/dev/null 2>&1 || continue
      check "podman: load the image" podman load -i "$WORK/image/wharf-oci.tar"
      check "podman: import a busybox image" podman import "$WORK/busybox.tar" my-busybox:latest
      ;;
    *) echo "unknown engine $E"; FAIL=$((FAIL + 1)); continue ;;
  esac
  tutorial "$E"
done
summary
[ "$FAIL" -eq 0 ]

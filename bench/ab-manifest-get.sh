#!/bin/bash
# A/B: the manifest GET rate of two wharf binaries (e.g. static release builds
# of two commits), in turns on the same machine, three rounds of
# wrk -t2 -c64 -d8s each. Usage: bench/ab-manifest-get.sh OLD_BINARY NEW_BINARY
set -e
OLD=${1:?old binary}; NEW=${2:?new binary}
W=$(mktemp -d)
trap 'pkill -f "$W/" || true; rm -rf "$W"' EXIT
start() { # bin name -> port
  "$1" serve --data $W/$2 --addr 127.0.0.1:0 > $W/$2.out 2>/dev/null &
  for i in $(seq 1 100); do grep -q listening $W/$2.out 2>/dev/null && break; sleep 0.05; done
  sed -E 's/.*listening on [^ ]*:([0-9]+) .*/\1/' $W/$2.out
}
push() { # port
  local c='{"architecture":"amd64","os":"linux"}'
  local d=sha256:$(printf '%s' "$c" | sha256sum | cut -d' ' -f1)
  curl -s -o /dev/null -X POST --data-binary "$c" "http://127.0.0.1:$1/v2/ab/app/blobs/uploads/?digest=$d"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"%s","size":%d},"layers":[]}' "$d" ${#c} > $W/m.json
  curl -s -o /dev/null -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' --data-binary @$W/m.json "http://127.0.0.1:$1/v2/ab/app/manifests/v1"
}
PO=$(start "$OLD" old); PN=$(start "$NEW" new)
push $PO; push $PN
for round in 1 2 3; do
  for which in old new; do
    p=$([ $which = old ] && echo $PO || echo $PN)
    r=$(wrk -t2 -c64 -d8s -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://127.0.0.1:$p/v2/ab/app/manifests/v1" | awk '/Requests\/sec/{print $2}')
    echo "round $round $which GET $r"
  done
done

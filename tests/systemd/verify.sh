#!/usr/bin/env bash
# Checks contrib/systemd's units: systemd-analyze verify finds nothing to say
# about them (it reports bad values as warnings and still exits 0, so any
# output fails), and the command line of wharf-gc.service runs: its flags are
# the ones `wharf gc` takes. Usage: WHARF=path/to/wharf tests/systemd/verify.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${WHARF:?set WHARF to the wharf binary}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for unit in contrib/systemd/*; do
  sed "s#/usr/local/bin/wharf#$WHARF#g" "$unit" > "$tmp/$(basename "$unit")"
done
out=$(systemd-analyze verify "$tmp"/*.service "$tmp"/*.timer 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:"
  echo "$out"
  exit 1
fi

# wharf-gc.service's ExecStart, with the paths moved into the scratch directory.
mkdir -p "$tmp/etc" "$tmp/data"
printf 'log:\n  level: error\n' > "$tmp/etc/config.yml"
cmd=$(sed -n 's/^ExecStart=//p' contrib/systemd/wharf-gc.service |
  sed "s#/usr/local/bin/wharf#$WHARF#; s#/etc/wharf#$tmp/etc#; s#/var/lib/wharf#$tmp/data#")
read -ra argv <<< "$cmd"
got=$("${argv[@]}")
case "$got" in
  *"freed 0 blobs"*) echo "systemd units: verified; wharf-gc.service's command ran: $got" ;;
  *) echo "wharf-gc.service's command printed: $got"; exit 1 ;;
esac

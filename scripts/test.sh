#!/usr/bin/env bash
# Everything the tests need, then every test: formatting and lints, unit and
# property tests, API tests, contract suites, the crash and server tests, and
# the end-to-end tests with real clients, and the container image with docker
# and podman. Run as root on Debian (it installs the clients with apt-get).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(skopeo podman buildah containerd docker.io umoci busybox-static jq openssl curl ca-certificates iptables uidmap apache2-utils systemd binutils iproute2 docker-registry python3-venv)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "--- cargo fmt --check"
cargo fmt --all -- --check
echo "--- cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "--- cargo test"
cargo test --workspace --locked
# One release build for everything below, statically linked (glibc with
# crt-static; --target keeps the flag off build scripts and proc macros), so
# the container image takes the very binary the other tests ran.
echo "--- static release build"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --locked -p wharf --target x86_64-unknown-linux-gnu
WHARF_BIN=$PWD/target/x86_64-unknown-linux-gnu/release/wharf
echo "--- systemd units"
WHARF=$WHARF_BIN tests/systemd/verify.sh
# oras-py, the OCI artifact client, from PyPI (pinned), in a venv of its own.
ORAS_VENV=$PWD/target/oras-venv
if ! "$ORAS_VENV/bin/python" -c 'import oras.client' 2>/dev/null; then
  python3 -m venv "$ORAS_VENV"
  "$ORAS_VENV/bin/pip" install -q oras==0.2.43
fi
echo "--- end-to-end tests with real clients"
ORAS_PYTHON=$ORAS_VENV/bin/python WHARF=$WHARF_BIN tests/e2e/run.sh
echo "--- container image"
WHARF_BIN=$WHARF_BIN tests/container/run.sh

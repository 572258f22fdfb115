#!/usr/bin/env bash
# Everything the tests need, then every test: formatting and lints, unit and
# property tests, API tests, contract suites, the crash and server tests, and
# the end-to-end tests with real clients. Run as root on Debian (it installs
# the clients with apt-get). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(skopeo podman buildah containerd docker.io umoci busybox-static jq openssl curl ca-certificates iptables uidmap apache2-utils systemd)
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
cargo build --release --locked -p wharf
echo "--- systemd units"
WHARF=$PWD/target/release/wharf tests/systemd/verify.sh
echo "--- end-to-end tests with real clients"
WHARF=$PWD/target/release/wharf tests/e2e/run.sh

#!/usr/bin/env bash
# Runs every Strait test: formatting, lints, then the whole workspace's tests.
# On a fresh Debian machine (as root) it first installs the command-line
# tools the tests talk to (openssl, curl, dig); without root it names what is
# missing instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool -> Debian package
declare -A PKG=([openssl]=openssl [curl]=curl [dig]=dnsutils)
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: the tests need these Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
# Root-only tests (transparent capture in network namespaces) also need
# nftables, iproute2, python3 (a test app) and setpriv; as root install
# them, otherwise those tests print SKIP and pass.
declare -A ROOT_PKG=([nft]=nftables [ip]=iproute2 [python3]=python3 [setpriv]=util-linux)
root_missing=()
for tool in "${!ROOT_PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || root_missing+=("${ROOT_PKG[$tool]}")
done
if ((${#root_missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${root_missing[*]} (root-only capture tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${root_missing[@]}" >/dev/null
  else
    echo "note: ${root_missing[*]} missing and not root: the capture tests in network namespaces will be skipped"
  fi
elif [ "$(id -u)" != 0 ]; then
  echo "note: not root: the capture tests in network namespaces will be skipped"
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace

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
# Kubernetes manifests are validated against the official schemas
# (kubernetes-validate, pinned) and the CRDs' own (jsonschema) by
# cli/tests/kube.rs. Installed as root; without them those tests skip with
# a message, unless they were installed here (then they must run).
KUBE_PY="kubernetes-validate==1.37.0 jsonschema==4.26.0"
kube_py_ok() { python3 -c 'import kubernetes_validate, jsonschema, yaml' >/dev/null 2>&1; }
if ! kube_py_ok; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing $KUBE_PY"
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
    fi
    # shellcheck disable=SC2086
    python3 -m pip install -q $KUBE_PY 2>/dev/null || python3 -m pip install -q --break-system-packages $KUBE_PY
  else
    echo "note: python packages $KUBE_PY are missing; the Kubernetes schema tests will skip (pip install $KUBE_PY)"
  fi
fi
if kube_py_ok; then
  export STRAIT_REQUIRE_KUBE_VALIDATE=1
fi
# The monitoring test (cli/tests/monitoring.rs) runs the real Prometheus
# server and promtool (Debian's prometheus package) against a running mesh.
# Installed as root; without them that test skips with a message, unless
# they were installed here (then it must run).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing prometheus (monitoring test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "note: prometheus/promtool missing and not root: the monitoring test will be skipped (apt-get install prometheus)"
  fi
fi
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  export STRAIT_REQUIRE_PROMETHEUS=1
fi
# cli/tests/kube_api.rs drives the real kubectl against the fake API
# server: as root install it (the `kubectl` package where the Kubernetes or
# Google Cloud apt repository is configured, else Debian's
# kubernetes-client); without it those tests print SKIPPED and pass.
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing kubectl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null \
      || echo "note: kubectl could not be installed; the kubectl tests will be skipped"
  else
    echo "note: kubectl missing and not root: the kubectl tests against the fake API server will be skipped"
  fi
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
# The image (issue #22): built from the release build with podman or
# buildah when one is installed, its binary extracted and run with
# --version; without an engine image.sh says so and the suite passes.
echo "==> image (scripts/image.sh)"
scripts/image.sh

#!/usr/bin/env bash
# The whole performance comparison in one run (about 5 minutes after the
# builds): a Strait sidecar pair (mTLS) measured side by side with a
# direct connection to nginx and HAProxy configured as the equivalent mTLS
# proxy pair, by the same load generators, pinned to separate cores:
#   wrk (HTTP/1.1 capacity), oha from crates.io (open-loop fixed rate,
#   latency-corrected; `cargo install oha` here when missing), h2load
#   (HTTP/2), iperf3 (one TCP stream), plus TLS
#   micro-benchmarks and the idle memory of a sidecar with 1,000 services.
# Paths: direct, the Strait pair, the Strait cross-cluster path (east
#   sidecar -> west gateway -> west sidecar), HAProxy hop and pairs; wrk also
#   at 1 and 10 connections; strait-bench tunnel times opening a tunnel.
# Observability overhead (bench/observe.sh): the sidecar pair with access
#   logs and tracing at 1% sampling (to strait-bench otlp-sink) against the
#   same pair without, alternating, as a throughput ratio; then both pairs
#   at once, as a ratio of sidecar CPU per request (observe.json).
# Strait is the build users get by default: `cargo build --release -p
# strait-cli` (fat LTO, one codegen unit, mimalloc). PGO=1 measures
# scripts/build-production.sh's build instead (release plus profile-guided
# optimization; about 30 minutes from cold); STRAIT_BIN=path measures a
# given binary. Writes target/bench/results.md, target/bench/results.json and
# docs/performance.md.
# Capture vs explicit (bench/capture.sh, root only): the same sidecar pair
#   reached through its VIP and through transparent capture (nftables
#   rules of `strait proxy capture install` in a pod namespace), wrk and
#   strait-bench oha, alternating; without root, `ip`, `nft` or `setpriv`
#   it is skipped with a message and the rest runs as before.
#
# Knobs (env): DURATION (8s) WARMUP (2s) LEVEL_DURATION (4s) STIME (5) CONNS (50) RATE (2000) and the
# others of bench/reference-bench.sh; CAPTURE_ROUNDS (3) explicit/capture
# pairs, CAPTURE_DIAG=1 and CAPTURE_CLOSE=1 (more ways, see
# bench/capture.sh); ONLY=capture runs the capture comparison alone and rewrites only its
# section of docs/performance.md; BENCH_BIN=path uses a given strait-bench
# instead of building it; OHA=path a given oha (OHA=strait-bench: the
# project's own open-loop generator, same flags, instead of oha); BUILD_NOTE="..." says in the report what
# STRAIT_BIN is (e.g. "release profile, cargo build --release -p strait-cli").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
for t in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client iperf3:iperf3 openssl:openssl curl:curl taskset:util-linux python3:python3; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
# The capture comparison's tools, installed only as root (without root it
# is skipped anyway).
if [ "$(id -u)" = 0 ]; then
  for t in ip:iproute2 nft:nftables setpriv:util-linux; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
  done
fi
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: install ${need[*]} first (sudo apt-get install ${need[*]})" >&2; exit 1
  fi
fi

if [ -n "${BENCH_BIN:-}" ]; then
  B=$BENCH_BIN
else
  echo "==> building strait-bench (release profile)"
  cargo build --release -q -p strait-bench
  B=${CARGO_TARGET_DIR:-$ROOT/target}/release/strait-bench
fi
# Why the capture comparison cannot run here, if it cannot.
CAPTURE_SKIP=
if [ "$(id -u)" != 0 ]; then
  CAPTURE_SKIP="needs root (network namespaces and nftables)"
else
  for t in ip nft setpriv; do
    command -v "$t" >/dev/null 2>&1 || CAPTURE_SKIP="needs $t (apt-get install iproute2 nftables util-linux)"
  done
fi
ONLY=${ONLY:-}
case "$ONLY" in ""|capture) ;; *) echo "error: ONLY=$ONLY: the only part that runs alone is ONLY=capture" >&2; exit 2 ;; esac
if [ "$ONLY" = capture ] && [ -n "$CAPTURE_SKIP" ]; then
  echo "error: ONLY=capture, but the capture comparison $CAPTURE_SKIP" >&2; exit 1
fi
# The binary measured: the release build (PGO=1: with profile-guided
# optimization, scripts/build-production.sh, target/pgo-use/<host>/production/strait).
# STRAIT_BIN=path measures that binary as it is.
if [ -n "${STRAIT_BIN:-}" ]; then
  S=$STRAIT_BIN; BUILD="${BUILD_NOTE:-given binary: $S}"
elif [ "${PGO:-0}" = 1 ]; then
  S=$(scripts/build-production.sh)
  BUILD="release profile with PGO (scripts/build-production.sh)"
else
  echo "==> building strait (release profile: cargo build --release -p strait-cli)"
  cargo build --release -q -p strait-cli
  S=${CARGO_TARGET_DIR:-$ROOT/target}/release/strait
  BUILD="release profile (cargo build --release -p strait-cli: fat LTO, one codegen unit, mimalloc), no PGO"
fi
# The fixed-rate load generator: oha from crates.io (installed here when
# missing), or the project's own with OHA=strait-bench.
if [ "${OHA:-}" = strait-bench ]; then
  OHA_BIN=; LOADGEN="strait-bench oha (the project's own open-loop generator)"
else
  OHA_BIN=${OHA:-$(command -v oha || true)}
  if [ -z "$OHA_BIN" ]; then
    echo "==> installing oha from crates.io (cargo install oha --locked; a few minutes, once)"
    cargo install -q oha --locked
    OHA_BIN=$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")
  fi
  LOADGEN="oha $("$OHA_BIN" --version 2>/dev/null | awk '{print $2}') from crates.io"
fi
BUILD="$BUILD; fixed-rate load generator: $LOADGEN; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' with local changes')"
OUT=$ROOT/target/bench
rm -rf "$OUT"; mkdir -p "$OUT"
W=$(mktemp -d -t strait-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "==> certificates and sidecar configs in $W"
# shellcheck source=../bench/mesh.sh
source "$ROOT/bench/mesh.sh"
mesh_configs
if [ -n "$OHA_BIN" ]; then ln -s "$OHA_BIN" "$W/oha"; else printf '#!/bin/sh\nexec %s oha "$@"\n' "$B" > "$W/oha"; chmod +x "$W/oha"; fi

# Capture vs explicit, in namespaces of its own (bench/capture.sh removes
# them on exit, also on failure).
capture_part() {
  if [ -n "$CAPTURE_SKIP" ]; then
    echo "==> SKIP capture vs explicit: $CAPTURE_SKIP"
    return 0
  fi
  S=$S B=$B W=$W OUT=$OUT BUILD=$BUILD DURATION="${DURATION:-8s}" \
    bash "$ROOT/bench/capture.sh" 2>&1 | tee "$OUT/capture.log"
}
CAPTURE_FAILED=
if [ "$ONLY" = capture ]; then
  capture_part || { echo "error: the capture comparison failed (log: $OUT/capture.log)" >&2; exit 1; }
  python3 bench/capture_report.py "$OUT" "$ROOT/docs/performance.md"
  echo "==> done: $OUT/capture.json, the capture section of docs/performance.md"
  exit 0
fi

# CPU time the hypervisor took from this VM during the measurements (the
# `steal` column of /proc/stat, against user..steal): on a shared host it explains run-to-run spread.
cpu_times() { awk '/^cpu /{t=0; for (i=2;i<=9;i++) t+=$i; print t, $9}' /proc/stat; }
read -r T0 ST0 < <(cpu_times)
echo "==> reference run (nginx direct, HAProxy pairs, Strait pair)"
WORK="$W/ref" OHA="$W/oha" DURATION="${DURATION:-8s}" LEVEL_DURATION="${LEVEL_DURATION:-4s}" STIME="${STIME:-5}" \
CANDIDATE_NAME=strait_2hop_mtls \
CANDIDATE_START="$S proxy --config $W/server.yaml & $S proxy --config $W/client.yaml & wait" \
CANDIDATE_URL=http://127.77.0.1:19082/ CANDIDATE_H2_URL=http://127.77.0.1:19092/ CANDIDATE_TCP_PORT=19083 CANDIDATE_TCP_HOST=127.77.0.1 \
CANDIDATE2_NAME=strait_xcluster_mtls \
CANDIDATE2_START="$S proxy --config $W/xserver.yaml & $S gateway --config $W/gateway.yaml --exports $W/exports.yaml & $S proxy --config $W/xclient.yaml & wait" \
CANDIDATE_EXTRA="$B tunnel --gateway 127.0.0.1:19543 --endpoint 127.0.0.1:19643 --identity spiffe://strait.local/ns/default/sa/server --dst bench.default:19082 --certs $W/xclient --n 300 > $OUT/tunnel.json" \
CANDIDATE2_URL=http://127.77.0.2:19082/ CANDIDATE2_H2_URL=http://127.77.0.2:19092/ CANDIDATE2_TCP_PORT=19083 CANDIDATE2_TCP_HOST=127.77.0.2 \
  bash bench/reference-bench.sh > "$OUT/reference.log" 2>&1 || { tail -30 "$OUT/reference.log"; exit 1; }
cp "$W/ref/results.md" "$OUT/reference.md"
cp -r "$W/ref/raw" "$OUT/raw"
# A failed capture comparison does not cost the rest of the run: it is
# reported at the end, and the exit status says so.
capture_part || { CAPTURE_FAILED=1; rm -f "$OUT/capture/runs.tsv"; echo "==> capture vs explicit FAILED (log: $OUT/capture.log); going on" >&2; }

echo "==> observability overhead (sidecar pair: access log + tracing at 1% against neither)"
S=$S B=$B W=$W OUT=$OUT DURATION="${DURATION:-8s}" bash bench/observe.sh 2>&1 | tee "$OUT/observe.log" \
  || { echo "error: the observability overhead run failed (log: $OUT/observe.log)" >&2; exit 1; }

echo "==> TLS micro-benchmarks (one core)"
taskset -c 1 "$B" tls > "$OUT/tls.json"
echo "==> idle sidecar memory with 1,000 services"
"$B" memory --strait "$S" --services 1000 > "$OUT/memory.json"

read -r T1 ST1 < <(cpu_times)
awk -v t=$((T1 - T0)) -v st=$((ST1 - ST0)) -v b="$BUILD" 'BEGIN{printf "{\"steal_pct\": %.1f, \"build\": \"%s\"}\n", (t > 0 ? 100 * st / t : 0), b}' > "$OUT/host.json"
python3 bench/report.py "$OUT" "$ROOT/docs/performance.md"
echo "==> done: $OUT/results.md, $OUT/results.json, docs/performance.md"
if [ -n "$CAPTURE_FAILED" ]; then echo "error: the capture comparison failed (log: $OUT/capture.log)" >&2; exit 1; fi

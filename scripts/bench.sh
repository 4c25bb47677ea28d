#!/usr/bin/env bash
# The whole performance comparison in one run (about 5 minutes after the
# builds): a Strait sidecar pair (mTLS) measured side by side with a
# direct connection to nginx and HAProxy configured as the equivalent mTLS
# proxy pair, by the same load generators, pinned to separate cores:
#   wrk (HTTP/1.1 capacity), strait-bench oha (open-loop fixed rate,
#   latency-corrected), h2load (HTTP/2), iperf3 (one TCP stream), plus TLS
#   micro-benchmarks and the idle memory of a sidecar with 1,000 services.
# Paths: direct, the Strait pair, the Strait cross-cluster path (east
#   sidecar -> west gateway -> west sidecar), HAProxy hop and pairs; wrk also
#   at 1 and 10 connections; strait-bench tunnel times opening a tunnel.
# Strait is the binary to deploy, built by scripts/build-production.sh
# (production profile with PGO; about 30 minutes from cold, PGO=0 skips the
# training; STRAIT_BIN=path measures a given binary). Writes target/bench/results.md, target/bench/results.json and
# docs/performance.md.
#
# Knobs (env): DURATION (8s) WARMUP (2s) LEVEL_DURATION (4s) STIME (5) CONNS (50) RATE (2000) and the
# others of bench/reference-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
for t in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client iperf3:iperf3 openssl:openssl curl:curl taskset:util-linux python3:python3; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: install ${need[*]} first (sudo apt-get install ${need[*]})" >&2; exit 1
  fi
fi

echo "==> building strait-bench (production profile)"
cargo build --profile production -q -p strait-bench
B=$ROOT/target/production/strait-bench
# The binary to deploy: production profile with PGO (PGO=0: without).
# STRAIT_BIN=path measures that binary as it is (a second run of a build
# already made, without the half hour of building and training). The PGO
# build is target/pgo-use/<host>/production/strait; target/production/strait
# is only a plain production build, if one was ever made.
if [ -n "${STRAIT_BIN:-}" ]; then
  S=$STRAIT_BIN; BUILD="given binary: $S"
else
  S=$(scripts/build-production.sh)
  if [ "${PGO:-1}" = 0 ]; then BUILD="production profile (fat LTO), no PGO"; else BUILD="production profile (fat LTO) with PGO (scripts/build-production.sh)"; fi
fi
OUT=$ROOT/target/bench
rm -rf "$OUT"; mkdir -p "$OUT"
W=$(mktemp -d -t strait-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "==> certificates and sidecar configs in $W"
# shellcheck source=../bench/mesh.sh
source "$ROOT/bench/mesh.sh"
mesh_configs
printf '#!/bin/sh\nexec %s oha "$@"\n' "$B" > "$W/oha"; chmod +x "$W/oha"

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

echo "==> TLS micro-benchmarks (one core)"
taskset -c 1 "$B" tls > "$OUT/tls.json"
echo "==> idle sidecar memory with 1,000 services"
"$B" memory --strait "$S" --services 1000 > "$OUT/memory.json"

read -r T1 ST1 < <(cpu_times)
awk -v t=$((T1 - T0)) -v st=$((ST1 - ST0)) -v b="$BUILD" 'BEGIN{printf "{\"steal_pct\": %.1f, \"build\": \"%s\"}\n", (t > 0 ? 100 * st / t : 0), b}' > "$OUT/host.json"
python3 bench/report.py "$OUT" "$ROOT/docs/performance.md"
echo "==> done: $OUT/results.md, $OUT/results.json, docs/performance.md"

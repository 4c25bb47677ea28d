#!/usr/bin/env bash
# The whole performance comparison in one run (about 5 minutes after the
# production-profile build): a Strait sidecar pair (mTLS) measured side by side with a
# direct connection to nginx and HAProxy configured as the equivalent mTLS
# proxy pair, by the same load generators, pinned to separate cores:
#   wrk (HTTP/1.1 capacity), strait-bench oha (open-loop fixed rate,
#   latency-corrected), h2load (HTTP/2), iperf3 (one TCP stream), plus TLS
#   micro-benchmarks and the idle memory of a sidecar with 1,000 services.
# Paths: direct, the Strait pair, the Strait cross-cluster path (east
#   sidecar -> west gateway -> west sidecar), HAProxy hop and pairs; wrk also
#   at 1 and 10 connections; strait-bench tunnel times opening a tunnel.
# Writes target/bench/results.md, target/bench/results.json and
# docs/performance.md.
#
# Knobs (env): DURATION (8s) WARMUP (2s) LEVEL_DURATION (4s) STIME (5) CONNS (50) RATE (2000) and the
# others of bench/reference-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
for t in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client iperf3:iperf3 openssl:openssl taskset:util-linux python3:python3; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: install ${need[*]} first (sudo apt-get install ${need[*]})" >&2; exit 1
  fi
fi

echo "==> building the production profile (fat LTO; several minutes on two cores)"
cargo build --profile production -q -p strait-cli -p strait-bench
S=$ROOT/target/production/strait
B=$ROOT/target/production/strait-bench
OUT=$ROOT/target/bench
rm -rf "$OUT"; mkdir -p "$OUT"
W=$(mktemp -d -t strait-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "==> certificates and sidecar configs in $W"
$S ca init --out "$W/ca" >/dev/null
for c in bench east west; do $S ca intermediate --ca-dir "$W/ca" --cluster $c >/dev/null; done
issue() { # cluster, service account, out dir, namespace
  $S ca issue --ca-dir "$W/ca" --cluster "$1" --spiffe-id "spiffe://strait.local/ns/$4/sa/$2" --out "$W/$3" >/dev/null
}
issue bench client client default; issue bench server server default
# Cross-cluster path: east client sidecar -> west gateway -> west server sidecar.
issue east client xclient default; issue west server xserver default
issue west gateway-west gateway strait-system
# A server sidecar (certs in $W/NAME): mTLS in on port IN, plaintext to
# nginx (HTTP/1.1, h2c) and iperf3. Args: NAME IN OUT ADMIN.
server_sidecar() {
  cat > "$W/$1.yaml" <<EOF
trust_domain: strait.local
identity: { files: { chain: $W/$1/chain.pem, key: $W/$1/key.pem, bundle: $W/$1/bundle.pem } }
listeners: { inbound: 127.0.0.1:$2, outbound: 127.0.0.1:$3, admin: 127.0.0.1:$4, bind_vips: false }
local_service: bench.default
app:
  - { port: 19082, protocol: http1, target: 127.0.0.1:18080 }
  - { port: 19092, protocol: http2, target: 127.0.0.1:18090 }
  - { port: 19083, protocol: tcp, target: 127.0.0.1:15201 }
EOF
}
server_sidecar server 19443 19001 19000
# Client sidecar: the service VIP is 127.77.0.1 on the three entry ports.
cat > "$W/client.yaml" <<EOF
trust_domain: strait.local
identity: { files: { chain: $W/client/chain.pem, key: $W/client/key.pem, bundle: $W/client/bundle.pem } }
listeners: { inbound: 127.0.0.1:19444, outbound: 127.0.0.1:19002, admin: 127.0.0.1:19003, bind_vips: true }
snapshot_file: $W/snapshot.yaml
EOF
cat > "$W/snapshot.yaml" <<EOF
version: 1
local: { cluster: bench, locality: local/a }
services:
  - name: bench
    namespace: default
    vip: 127.77.0.1
    ports: [{ port: 19082, protocol: http1 }, { port: 19092, protocol: http2 }, { port: 19083, protocol: tcp }]
    endpoints:
      - { address: 127.0.0.1:19443, cluster: bench, locality: local/a, identity: spiffe://strait.local/ns/default/sa/server }
EOF
# The same pair across clusters: the client sidecar in east reaches the
# server sidecar in west through west's east-west gateway (a CONNECT stream
# per upstream connection, inner mTLS end to end).
server_sidecar xserver 19643 19601 19600
cat > "$W/gateway.yaml" <<EOF
cluster: west
trust_domain: strait.local
identity: { files: { chain: $W/gateway/chain.pem, key: $W/gateway/key.pem, bundle: $W/gateway/bundle.pem } }
listeners: { public: 127.0.0.1:19543, admin: 127.0.0.1:19521 }
EOF
cat > "$W/exports.yaml" <<EOF
services:
  - { name: bench, namespace: default, ports: [19082, 19092, 19083], endpoints: [{ address: 127.0.0.1:19643 }] }
EOF
cat > "$W/xclient.yaml" <<EOF
trust_domain: strait.local
identity: { files: { chain: $W/xclient/chain.pem, key: $W/xclient/key.pem, bundle: $W/xclient/bundle.pem } }
listeners: { inbound: 127.0.0.1:19644, outbound: 127.0.0.1:19602, admin: 127.0.0.1:19603, bind_vips: true }
snapshot_file: $W/xsnapshot.yaml
EOF
cat > "$W/xsnapshot.yaml" <<EOF
version: 1
local: { cluster: east, locality: us-east/a }
clusters: [west]
services:
  - name: bench
    namespace: default
    vip: 127.77.0.2
    ports: [{ port: 19082, protocol: http1 }, { port: 19092, protocol: http2 }, { port: 19083, protocol: tcp }]
    endpoints:
      - { address: 127.0.0.1:19643, cluster: west, locality: us-west/a, identity: spiffe://strait.local/ns/default/sa/server, gateways: [127.0.0.1:19543] }
EOF
printf '#!/bin/sh\nexec %s oha "$@"\n' "$B" > "$W/oha"; chmod +x "$W/oha"
$S proxy --config "$W/server.yaml" --check
$S proxy --config "$W/client.yaml" --check
$S proxy --config "$W/xserver.yaml" --check
$S proxy --config "$W/xclient.yaml" --check
$S gateway --config "$W/gateway.yaml" --exports "$W/exports.yaml" --check

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
awk -v t=$((T1 - T0)) -v st=$((ST1 - ST0)) 'BEGIN{printf "{\"steal_pct\": %.1f}\n", (t > 0 ? 100 * st / t : 0)}' > "$OUT/host.json"
python3 bench/report.py "$OUT" "$ROOT/docs/performance.md"
echo "==> done: $OUT/results.md, $OUT/results.json, docs/performance.md"

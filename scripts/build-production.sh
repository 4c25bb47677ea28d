#!/usr/bin/env bash
# Builds the `strait` binary to deploy and prints its path: the `production`
# cargo profile (fat LTO, one codegen unit) with profile-guided optimization
# (PGO) from a training run on a local mesh.
#
#   1. An instrumented `strait`, same profile (target/pgo-gen/).
#   2. Training, about 30 s: the benchmark mesh of bench/mesh.sh (a sidecar
#      pair, and an east sidecar -> west gateway -> west sidecar path), all
#      pinned to the last CPU as in the benchmark, in front of nginx and
#      iperf3, driven by wrk and h2load at 1 and 8 connections and by
#      iperf3. It exercises the HTTP/1.1, HTTP/2, TCP and tunnel paths; the
#      benchmark's own runs (50 connections, fixed rate) are not used.
#   3. The production build with that profile (target/pgo-use/).
#
# About 30 minutes on two cores from cold (two fat-LTO builds), about 15
# when only Strait's crates changed (the profile-use build recompiles every
# crate each time: rustc tracks the profile file, which training rewrites).
# PGO=0 builds the plain production profile instead (no training).
# Needs nginx, wrk, h2load and iperf3 (scripts/bench.sh installs them) and
# rustup's llvm-tools component (added here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { echo "$@" >&2; }

if [ "${PGO:-1}" = 0 ]; then
  say "==> building the production profile (fat LTO; several minutes on two cores)"
  cargo build --profile production -q -p strait-cli >&2
  echo "$ROOT/target/production/strait"
  exit 0
fi

for t in nginx wrk h2load iperf3 curl taskset; do
  command -v "$t" >/dev/null || { say "error: PGO training needs $t (scripts/bench.sh installs it; PGO=0 skips training)"; exit 1; }
done
HOST=$(rustc -vV | sed -n 's/^host: //p')
SYSROOT=$(rustc --print sysroot)
PROFDATA="$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  say "==> adding rustup's llvm-tools (llvm-profdata)"
  rustup component add llvm-tools >&2
fi

T=$(mktemp -d -t strait-pgo.XXXXXX)
pids=()
# SIGTERM to every started process, then wait: a clean exit writes the profile.
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$T"' EXIT

# Stable paths, so RUSTFLAGS stay the same from run to run and the
# instrumented build is incremental.
PGO_DIR=$ROOT/target/pgo
RAW=$PGO_DIR/raw
PROFILE=$PGO_DIR/strait.profdata
rm -rf "$RAW"; mkdir -p "$RAW"
say "==> 1/3 instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$RAW" \
  cargo build --profile production -q -p strait-cli --target "$HOST" --target-dir "$ROOT/target/pgo-gen" >&2
GEN=$ROOT/target/pgo-gen/$HOST/production/strait

say "==> 2/3 training on a local mesh"
S=$GEN W=$T
# shellcheck source=../bench/mesh.sh
source "$ROOT/bench/mesh.sh"
mesh_configs >/dev/null
CPU=$(( $(nproc) - 1 ))
mkdir -p "$T/nginx/logs"
cat > "$T/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $T/nginx/body;
  proxy_temp_path $T/nginx/proxy;
  fastcgi_temp_path $T/nginx/fastcgi;
  uwsgi_temp_path $T/nginx/uwsgi;
  scgi_temp_path $T/nginx/scgi;
  server { listen 127.0.0.1:18080; location / { return 200 "training\n"; } }
  server { listen 127.0.0.1:18090 http2; location / { return 200 "training\n"; } }
}
EOF
run() { taskset -c "$CPU" "$@" >"$T/$(basename "$1").$RANDOM.log" 2>&1 & pids+=($!); }
run nginx -p "$T/nginx" -e "$T/nginx/logs/error.log" -c "$T/nginx/nginx.conf"
run iperf3 -s -B 127.0.0.1 -p 15201
for c in server client xserver xclient; do run "$S" proxy --config "$T/$c.yaml"; done
run "$S" gateway --config "$T/gateway.yaml" --exports "$T/exports.yaml"
# Ready when both paths answer.
ready=0
for _ in $(seq 50); do
  if curl -sf -o /dev/null http://127.77.0.1:19082/ && curl -sf -o /dev/null http://127.77.0.2:19082/; then
    ready=1; break
  fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  say "error: the training mesh did not answer within 10 s; its logs:"
  tail -n 3 "$T"/*.log >&2 || true
  exit 1
fi
for vip in 127.77.0.1 127.77.0.2; do
  for c in 1 8; do
    wrk -t1 -c$c -d3s "http://$vip:19082/" >/dev/null
    h2load -c$c -m4 -D3 "http://$vip:19092/" >/dev/null
  done
  iperf3 -c $vip -p 19083 -t 2 >/dev/null
done
stop_all
"$PROFDATA" merge -o "$PROFILE" "$RAW"/*.profraw

say "==> 3/3 production build with the profile (fat LTO; target/pgo-use)"
RUSTFLAGS="-Cprofile-use=$PROFILE" \
  cargo build --profile production -q -p strait-cli --target "$HOST" --target-dir "$ROOT/target/pgo-use" >&2
echo "$ROOT/target/pgo-use/$HOST/production/strait"

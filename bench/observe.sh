#!/usr/bin/env bash
# The cost of observability on the sidecar pair (issue 23): the same
# client sidecar -> server sidecar (mTLS) -> nginx path, run alternately
#   plain:    no access log, no tracing (the defaults);
#   observed: `access_log: true` on both sidecars (JSON lines to a file)
#             and `tracing: { otlp: <sink>, sampling: 0.01 }`, exporting to
#             `strait-bench otlp-sink`, a live OTLP/gRPC collector that
#             accepts and drops (an unreachable collector would measure the
#             export failure path instead);
# with wrk (HTTP/1.1 keep-alive) through the client sidecar's VIP, the
# sidecars on SERVER_CPUS and wrk on LOADGEN_CPUS. Reports the median
# requests/s of each variant and their ratio (observed / plain) in
# $OUT/observe.json; the observed runs must have written access lines and
# the sink must have received spans, or the run fails.
#
# Called by scripts/bench.sh; standalone: S=strait B=strait-bench W=<dir
# with the certificates of bench/mesh.sh> OUT=<dir> bash bench/observe.sh
# Knobs: OBS_ROUNDS (3) DURATION (8s) WARMUP (2s) CONNS (50) THREADS (2)
# OBS_IP (127.0.0.1: listeners, nginx, sink) OBS_VIP (127.77.0.3)
# LOADGEN_CPUS (0) SERVER_CPUS (1) OBS_SPLIT (set: also the access log
# alone and tracing alone, printed per round) OBS_PAIRED (4: rounds of the
# paired measurement below; 0 skips it) OBS_VIP2 (127.77.0.4).
#
# The paired measurement: on a host whose speed drifts by more than the
# overhead being measured (a shared VM), runs taken one after the other
# disagree. So the plain pair and the observed pair also run at the same
# time, on the same server CPU, each under its own wrk (one thread, CONNS
# connections), and each pair's sidecar CPU time per
# request is read from /proc: both see the same host at the same moment,
# and their ratio (cost_ratio, observed over plain; which pair gets which
# ports alternates by round) holds within a few percent where throughput
# runs drift by 15 %.
set -euo pipefail
: "${S:?strait binary}" "${B:?strait-bench binary}" "${W:?mesh certificates dir}" "${OUT:?output dir}"
ROUNDS=${OBS_ROUNDS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
IP=${OBS_IP:-127.0.0.1}
VIP=${OBS_VIP:-127.77.0.3}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
D=$W/observe
rm -rf "$D"; mkdir -p "$D/logs" "$D/tmp" "$OUT"

die() { echo "observe: $*" >&2; exit 1; }
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  PIDS=()
}
SINK=
trap 'stop_all; [ -n "$SINK" ] && kill "$SINK" 2> /dev/null; true' EXIT

BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat > "$D/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $D/nginx.pid;
error_log $D/logs/nginx_error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $D/tmp/cb; proxy_temp_path $D/tmp/px; fastcgi_temp_path $D/tmp/fc;
  uwsgi_temp_path $D/tmp/uw; scgi_temp_path $D/tmp/sc;
  keepalive_requests 10000000; keepalive_timeout 120s;
  server { listen $IP:18180; location / { default_type text/plain; return 200 "$BODY"; } }
}
EOF
ids() { echo "identity: { files: { chain: $W/$1/chain.pem, key: $W/$1/key.pem, bundle: $W/$1/bundle.pem } }"; }
cat > "$D/snapshot.yaml" <<EOF
version: 1
local: { cluster: bench, locality: local/a }
services:
  - name: bench
    namespace: default
    vip: $VIP
    ports: [{ port: 19082, protocol: http1 }]
    endpoints:
      - { address: "$IP:19743", cluster: bench, locality: local/a, identity: spiffe://strait.local/ns/default/sa/server }
EOF
observed="access_log: true
tracing: { otlp: \"http://$IP:19417\", sampling: 0.01 }"
# Two more variants split the cost (OBS_SPLIT=1): `logged` (the access
# log alone) and `traced` (tracing alone).
logged="access_log: true"
traced="tracing: { otlp: \"http://$IP:19417\", sampling: 0.01 }"
VARIANTS="plain observed"
[ -n "${OBS_SPLIT:-}" ] && VARIANTS="plain observed logged traced"
for variant in $VARIANTS; do
  case $variant in observed) extra=$observed ;; logged) extra=$logged ;; traced) extra=$traced ;; *) extra= ;; esac
  cat > "$D/server-$variant.yaml" <<EOF
trust_domain: strait.local
$(ids server)
listeners: { inbound: "$IP:19743", outbound: "$IP:19701", admin: "$IP:19700", bind_vips: false }
local_service: bench.default
app: [{ port: 19082, protocol: http1, target: "$IP:18180" }]
$extra
EOF
  cat > "$D/client-$variant.yaml" <<EOF
trust_domain: strait.local
$(ids client)
listeners: { inbound: "$IP:19744", outbound: "$IP:19702", admin: "$IP:19703", bind_vips: true }
snapshot_file: $D/snapshot.yaml
$extra
EOF
  "$S" proxy --config "$D/server-$variant.yaml" --check > /dev/null
  "$S" proxy --config "$D/client-$variant.yaml" --check > /dev/null
done
# The second set of ports and VIP for the paired measurement.
VIP2=${OBS_VIP2:-127.77.0.4}
sed -e "s/$VIP/$VIP2/; s/19743/19843/" "$D/snapshot.yaml" > "$D/snapshot-b.yaml"
for variant in plain observed; do
  for side in server client; do
    sed -e 's/:1974/:1984/; s/:1970/:1980/g' -e "s#$D/snapshot.yaml#$D/snapshot-b.yaml#" \
      "$D/$side-$variant.yaml" > "$D/$side-$variant-b.yaml"
  done
done

ready() { # what, command...: retries for 15 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what does not answer; logs in $D/logs: $(tail -5 "$D"/logs/*.log)"
}
taskset -c "$SERVER_CPUS" nginx -p "$D" -e "$D/logs/nginx_error.log" -c "$D/nginx.conf" > "$D/logs/nginx.log" 2>&1 &
NGINX=$!
trap 'stop_all; kill "$NGINX" 2> /dev/null; [ -n "$SINK" ] && kill "$SINK" 2> /dev/null; true' EXIT
ready nginx curl -sf "http://$IP:18180/"
taskset -c "$LOADGEN_CPUS" "$B" otlp-sink --listen "$IP:19417" > "$D/logs/sink.out" 2> "$D/logs/sink.log" &
SINK=$!

URL=http://$VIP:19082/
# One measurement: both sidecars of VARIANT, a warm-up, then wrk; prints
# requests/s. The access logs go to a file, as with a log collector.
measure() { # variant round
  local v=$1 r=$2 f=$OUT/observe-raw/wrk_$1_$2.txt
  mkdir -p "$OUT/observe-raw"
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/server-$v.yaml" 2> "$D/logs/server-$v.log" > /dev/null &
  PIDS+=($!)
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/client-$v.yaml" 2> "$D/logs/client-$v.log" > /dev/null &
  PIDS+=($!)
  ready "the $v pair" curl -sf "$URL"
  taskset -c "$LOADGEN_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$URL" > /dev/null 2>&1 || die "wrk $v (warm-up) failed"
  taskset -c "$LOADGEN_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$URL" > "$f" 2>&1 || die "wrk $v failed: $(tail -3 "$f")"
  stop_all
  if [ "$v" = observed ]; then
    local lines
    lines=$(grep -c '"strait::access"' "$D/logs/client-$v.log" || true)
    [ "${lines:-0}" -gt 0 ] || die "the observed client sidecar wrote no access lines"
    echo "  $v round $r: $lines access lines on the client side" >&2
  fi
  rm -f "$D"/logs/*-"$v".log
  awk '/^Requests\/sec:/ {print $2}' "$f"
}

declare -a PLAIN OBSERVED
for r in $(seq "$ROUNDS"); do
  PLAIN+=("$(measure plain "$r")")
  OBSERVED+=("$(measure observed "$r")")
  echo "  round $r: plain ${PLAIN[-1]} req/s, observed ${OBSERVED[-1]} req/s" >&2
  if [ -n "${OBS_SPLIT:-}" ]; then
    echo "  round $r: access log alone $(measure logged "$r") req/s, tracing alone $(measure traced "$r") req/s" >&2
  fi
done
# Paired: both pairs at once (see the top); prints "plain_us observed_us".
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" "/proc/$2/stat" | paste -sd+ | bc; }
paired() { # round
  local r=$1 a b n1 n2 t1 t2 ps1 pc1 ps2 pc2 f1 f2 u1 u2
  if [ $((r % 2)) = 1 ]; then a=plain; b=observed; else a=observed; b=plain; fi
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/server-$a.yaml" 2> "$D/logs/server-$a.log" > /dev/null & ps1=$!
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/client-$a.yaml" 2> "$D/logs/client-$a.log" > /dev/null & pc1=$!
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/server-$b-b.yaml" 2> "$D/logs/server-$b-b.log" > /dev/null & ps2=$!
  taskset -c "$SERVER_CPUS" "$S" proxy --log-format json --config "$D/client-$b-b.yaml" 2> "$D/logs/client-$b-b.log" > /dev/null & pc2=$!
  PIDS+=("$ps1" "$pc1" "$ps2" "$pc2")
  ready "the paired $a pair" curl -sf "$URL"
  ready "the paired $b pair" curl -sf "http://$VIP2:19082/"
  f1=$OUT/observe-raw/paired_${r}_a.txt; f2=$OUT/observe-raw/paired_${r}_b.txt
  taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$CONNS" -d"$WARMUP" "$URL" > /dev/null 2>&1 &
  taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$CONNS" -d"$WARMUP" "http://$VIP2:19082/" > /dev/null 2>&1 || die "wrk (paired warm-up) failed"
  wait $!
  t1=$(cpu_ticks "$ps1" "$pc1"); t2=$(cpu_ticks "$ps2" "$pc2")
  taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$CONNS" -d"$DURATION" "$URL" > "$f1" 2>&1 &
  local w=$!
  taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$CONNS" -d"$DURATION" "http://$VIP2:19082/" > "$f2" 2>&1 || die "wrk (paired) failed: $(tail -3 "$f2")"
  wait "$w" || die "wrk (paired) failed: $(tail -3 "$f1")"
  u1=$(cpu_ticks "$ps1" "$pc1"); u2=$(cpu_ticks "$ps2" "$pc2")
  stop_all
  rm -f "$D"/logs/server-*.log "$D"/logs/client-*.log
  n1=$(awk '/requests in/ {print $1}' "$f1"); n2=$(awk '/requests in/ {print $1}' "$f2")
  [ "${n1:-0}" -gt 0 ] && [ "${n2:-0}" -gt 0 ] || die "a paired run served no requests"
  # Clock ticks (USER_HZ) per request, in microseconds.
  local hz us1 us2
  hz=$(getconf CLK_TCK)
  us1=$(echo "scale=3; ($u1 - $t1) * 1000000 / $hz / $n1" | bc)
  us2=$(echo "scale=3; ($u2 - $t2) * 1000000 / $hz / $n2" | bc)
  if [ "$a" = plain ]; then echo "$us1 $us2"; else echo "$us2 $us1"; fi
}
PAIRED_ROUNDS=${OBS_PAIRED:-4}
PAIRED=()
for r in $(seq "$PAIRED_ROUNDS"); do
  PAIRED+=("$(paired "$r")")
  echo "  paired round $r: sidecar CPU per request, plain/observed: ${PAIRED[-1]} us" >&2
done

# The sink prints its count every 5 s: let it print the last one.
sleep 6
kill "$SINK" 2> /dev/null || true
wait "$SINK" 2> /dev/null || true
SINK=
spans=$(awk '/spans received/ {n=$2} END {print n+0}' "$D/logs/sink.log")
[ "$spans" -gt 0 ] || die "the OTLP sink received no spans from the observed runs"
python3 - "$OUT/observe.json" "$spans" "${PLAIN[*]}" "${OBSERVED[*]}" "$(IFS=,; echo "${PAIRED[*]}")" <<'EOF'
import json, statistics, sys
out, spans, plain, observed = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
paired = [tuple(float(x) for x in p.split()) for p in sys.argv[5].split(",") if p.strip()]
plain = [float(x) for x in plain]; observed = [float(x) for x in observed]
p, o = statistics.median(plain), statistics.median(observed)
r = {"path": "sidecar pair, wrk HTTP/1.1 keep-alive",
     "observed": "access_log on both sidecars (JSON to a file) + tracing sampling 0.01 to a live OTLP sink",
     "plain_rps": plain, "observed_rps": observed,
     "plain_median_rps": p, "observed_median_rps": o,
     "ratio": round(o / p, 4) if p else None,
     # Each round's observed run over the plain run just before it: on a
     # host whose speed drifts, the median of these is the steadier figure.
     "round_ratios": [round(b / a, 4) for a, b in zip(plain, observed) if a],
     "spans_received": spans}
r["median_round_ratio"] = statistics.median(r["round_ratios"]) if r["round_ratios"] else None
# Both pairs at once: sidecar CPU microseconds per request, and observed
# over plain (1.05 = the observed pair costs 5 % more per request).
r["paired_us_per_request"] = [{"plain": a, "observed": b} for a, b in paired]
r["paired_cost_ratios"] = [round(b / a, 4) for a, b in paired if a]
r["cost_ratio"] = statistics.median(r["paired_cost_ratios"]) if r["paired_cost_ratios"] else None
json.dump(r, open(out, "w"), indent=2)
print(f"observability overhead: observed/plain = {r['ratio']} ({o:.0f} vs {p:.0f} req/s, median of {len(plain)}); median of the rounds' ratios {r['median_round_ratio']}; {spans} spans at the sink")
if paired:
    print(f"  paired (both pairs at once): observed costs {r['cost_ratio']}x the plain pair's sidecar CPU per request (rounds {r['paired_cost_ratios']})")
EOF

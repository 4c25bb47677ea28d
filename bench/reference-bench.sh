#!/usr/bin/env bash
# reference-bench.sh -- (vendored from the workplace's shared/bench, extended with
# CANDIDATE_TCP_HOST, a second candidate CANDIDATE2_* and the concurrency sweep 1b)
# side-by-side reference proxies (nginx backend, HAProxy hops) on 127.0.0.1.
# Needs Debian packages: nginx haproxy wrk nghttp2-client iperf3 openssl; oha (cargo install oha) is optional.
#
# Starts: nginx (fixed 200 backend), haproxy "hop" (1 plain L7 proxy), haproxy
# "client sidecar" + "server sidecar" (plain 2-hop, mTLS 2-hop in HTTP mode, mTLS
# 2-hop in TCP/L4 tunnel mode), optional iperf3 server, optional candidate proxy.
# Measures (all in ONE run so ratios are comparable):
#   1. wrk closed-loop max throughput + latency percentiles (+ CPU us/request and
#      peak RSS of every proxy process, read from /proc)
#   2. oha fixed-rate latency (open-loop, --latency-correction) if oha is found
#   3. h2load HTTP/2 (h2c in, h2-over-mTLS between sidecars) max throughput
#   4. iperf3 single-connection bulk throughput direct vs through the L4 mTLS tunnel
#   5. openssl s_time mTLS handshakes/s against the server sidecar
#   6. openssl speed: AES-128-GCM GB/s/core, ECDSA P-256 sign/verify/s, X25519/s
# Cleans up every process it started (by PID) on exit.
#
# Usage: bash reference-bench.sh            (results in $WORK/results.md)
# Knobs (env): WORK DURATION WARMUP THREADS CONNS REPEATS RATE BODY_BYTES
#   LOADGEN_CPUS SERVER_CPUS SKIP_H2 SKIP_IPERF SKIP_SPEED SKIP_OHA OHA
# Candidate proxy (the new Rust mesh), measured in the same run:
#   CANDIDATE_NAME=mymesh
#   CANDIDATE_START='exec /path/to/proxy --config /path/cfg'   # runs in background
#   CANDIDATE_URL=http://127.0.0.1:19082/   # HTTP/1.1 entry that must reach 127.0.0.1:18080
#   CANDIDATE_H2_URL=http://127.0.0.1:19092/ (optional, h2c entry reaching 127.0.0.1:18090)
#   CANDIDATE_TCP_PORT=19083 (optional, L4 entry reaching iperf3 on 127.0.0.1:15201)
#   CANDIDATE_TCP_HOST=127.0.0.1 (optional, the host of that entry)
# The candidate's CPU/RSS is measured on the PID of CANDIDATE_START and its children.
# A second candidate (e.g. the same mesh on a longer path) takes the same variables
# with the prefix CANDIDATE2_ and is measured in every section beside the first.
# CANDIDATE_EXTRA: a command run (on the load generator CPUs) after section 4, while
#   every server is still up.
# 1b. wrk at each of CONN_LEVELS (default "1 10") connections for direct, the HAProxy
#     mTLS pair and the candidates, LEVEL_DURATION (5s) each.
# Example (sanity check, a plain haproxy hop as 'candidate'):
#   CANDIDATE_NAME=cand_haproxy CANDIDATE_START='exec haproxy -db -f ../shared/bench/example-candidate-haproxy.cfg' \
#   CANDIDATE_URL=http://127.0.0.1:19082/ CANDIDATE_H2_URL=http://127.0.0.1:19092/ CANDIDATE_TCP_PORT=19083 bash reference-bench.sh
# Certificates for the candidate are in $WORK/certs (ca.pem, server.{crt,key}, client.{crt,key}).
set -u
WORK=${WORK:-$(mktemp -d -t strait-bench.XXXXXX)}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
REPEATS=${REPEATS:-1}
RATE=${RATE:-2000}
BODY_BYTES=${BODY_BYTES:-1024}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
OHA=${OHA:-$(command -v oha || echo oha-not-installed)}
P_BACKEND=18080 P_HOP=18081 P_MTLS_IN=18082 P_SRV_TLS=18443 P_L4_IN=18083 P_SRV_L4=18444
P_PLAIN2_IN=18084 P_SRV_PLAIN=18085 P_BACKEND_H2=18090 P_HOP_H2=18091 P_MTLS_H2_IN=18092
P_SRV_TLS_H2=18445 P_IPERF=15201 P_IPERF_L4_IN=18086 P_SRV_IPERF_L4=18446

mkdir -p "$WORK"/{certs,logs,tmp}
RES="$WORK/results.md"; RAW="$WORK/raw"; mkdir -p "$RAW"
PIDS=()
cleanup() {
  local kids=() pid k
  for pid in "${PIDS[@]}"; do kids+=($(pgrep -P "$pid" 2>/dev/null)); done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  for k in "${kids[@]}"; do kill "$k" 2>/dev/null; done
  sleep 0.3
  for pid in "${PIDS[@]}" "${kids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null; done
  return 0
}
trap cleanup EXIT INT TERM
die() { echo "ERROR: $*" >&2; exit 1; }
for b in nginx haproxy wrk openssl taskset python3; do command -v $b >/dev/null || die "missing $b"; done

# ---------- certificates (ECDSA P-256, like linkerd/istio workload certs) ----------
C="$WORK/certs"
if [ ! -f "$C/server.pem" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$C/ca.key"
  openssl req -x509 -new -key "$C/ca.key" -sha256 -days 30 -subj "/CN=bench-mesh-ca" -out "$C/ca.pem"
  for who in server client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$C/$who.key"
    openssl req -new -key "$C/$who.key" -subj "/CN=$who.mesh.local" -out "$C/$who.csr"
    if [ $who = server ]; then
      printf 'subjectAltName=DNS:server.mesh.local,IP:127.0.0.1,URI:spiffe://cluster.local/ns/default/sa/server\nextendedKeyUsage=serverAuth,clientAuth\n' > "$C/$who.ext"
    else
      printf 'subjectAltName=DNS:client.mesh.local,URI:spiffe://cluster.local/ns/default/sa/client\nextendedKeyUsage=clientAuth,serverAuth\n' > "$C/$who.ext"
    fi
    openssl x509 -req -in "$C/$who.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial -days 30 -sha256 -extfile "$C/$who.ext" -out "$C/$who.crt" 2>/dev/null
    cat "$C/$who.crt" "$C/$who.key" > "$C/$who.pem"
  done
fi

# ---------- configs ----------
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx_error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp/cb; proxy_temp_path $WORK/tmp/px; fastcgi_temp_path $WORK/tmp/fc;
  uwsgi_temp_path $WORK/tmp/uw; scgi_temp_path $WORK/tmp/sc;
  keepalive_requests 10000000; keepalive_timeout 120s;
  server { listen 127.0.0.1:$P_BACKEND; location / { default_type text/plain; return 200 "$BODY"; } }
  server { listen 127.0.0.1:$P_BACKEND_H2 http2; location / { default_type text/plain; return 200 "$BODY"; } }
}
EOF
HAG="global
  nbthread 1
  maxconn 5000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s"
cat > "$WORK/hop.cfg" <<EOF
$HAG
frontend hop
  bind 127.0.0.1:$P_HOP
  default_backend app
frontend hop_h2
  bind 127.0.0.1:$P_HOP_H2 proto h2
  default_backend app_h2
backend app
  server app 127.0.0.1:$P_BACKEND
backend app_h2
  server app 127.0.0.1:$P_BACKEND_H2 proto h2
EOF
# client-side sidecar: plaintext from app, originates mTLS (client cert) to server sidecar
SRVOPTS="ssl crt $C/client.pem ca-file $C/ca.pem verify required verifyhost server.mesh.local sni str(server.mesh.local)"
cat > "$WORK/client_sidecar.cfg" <<EOF
$HAG
frontend out_mtls
  bind 127.0.0.1:$P_MTLS_IN
  default_backend to_peer_mtls
frontend out_plain
  bind 127.0.0.1:$P_PLAIN2_IN
  default_backend to_peer_plain
frontend out_mtls_h2
  bind 127.0.0.1:$P_MTLS_H2_IN proto h2
  default_backend to_peer_mtls_h2
frontend out_l4
  mode tcp
  bind 127.0.0.1:$P_L4_IN
  default_backend to_peer_l4
frontend out_l4_iperf
  mode tcp
  bind 127.0.0.1:$P_IPERF_L4_IN
  default_backend to_peer_l4_iperf
backend to_peer_mtls
  server peer 127.0.0.1:$P_SRV_TLS $SRVOPTS alpn http/1.1
backend to_peer_plain
  server peer 127.0.0.1:$P_SRV_PLAIN
backend to_peer_mtls_h2
  server peer 127.0.0.1:$P_SRV_TLS_H2 $SRVOPTS alpn h2
backend to_peer_l4
  mode tcp
  server peer 127.0.0.1:$P_SRV_L4 $SRVOPTS
backend to_peer_l4_iperf
  mode tcp
  server peer 127.0.0.1:$P_SRV_IPERF_L4 $SRVOPTS
EOF
# server-side sidecar: terminates mTLS (client cert required), plaintext to app
BINDTLS="ssl crt $C/server.pem ca-file $C/ca.pem verify required"
cat > "$WORK/server_sidecar.cfg" <<EOF
$HAG
frontend in_mtls
  bind 127.0.0.1:$P_SRV_TLS $BINDTLS alpn http/1.1
  default_backend app
frontend in_plain
  bind 127.0.0.1:$P_SRV_PLAIN
  default_backend app
frontend in_mtls_h2
  bind 127.0.0.1:$P_SRV_TLS_H2 $BINDTLS alpn h2
  default_backend app_h2
frontend in_l4
  mode tcp
  bind 127.0.0.1:$P_SRV_L4 $BINDTLS
  default_backend app_l4
frontend in_l4_iperf
  mode tcp
  bind 127.0.0.1:$P_SRV_IPERF_L4 $BINDTLS
  default_backend iperf_l4
backend app
  server app 127.0.0.1:$P_BACKEND
backend app_h2
  server app 127.0.0.1:$P_BACKEND_H2 proto h2
backend app_l4
  mode tcp
  server app 127.0.0.1:$P_BACKEND
backend iperf_l4
  mode tcp
  server app 127.0.0.1:$P_IPERF
EOF

# ---------- start ----------
for p in $P_BACKEND $P_HOP $P_MTLS_IN $P_SRV_TLS $P_L4_IN $P_SRV_L4 $P_PLAIN2_IN $P_SRV_PLAIN $P_BACKEND_H2 $P_HOP_H2 $P_MTLS_H2_IN $P_SRV_TLS_H2 $P_IPERF $P_IPERF_L4_IN $P_SRV_IPERF_L4; do
  ss -ltn "sport = :$p" | grep -q LISTEN && die "port $p already in use"
done
start() { # name, cmd...
  local name=$1; shift
  taskset -c "$SERVER_CPUS" "$@" > "$WORK/logs/$name.out" 2>&1 &
  local pid=$!; PIDS+=("$pid"); eval "PID_$name=$pid"; echo "started $name pid=$pid"
}
start nginx nginx -p "$WORK" -e "$WORK/logs/nginx_error.log" -c "$WORK/nginx.conf"
start hop haproxy -db -f "$WORK/hop.cfg"
start csc haproxy -db -f "$WORK/client_sidecar.cfg"
start ssc haproxy -db -f "$WORK/server_sidecar.cfg"
if [ "${SKIP_IPERF:-0}" != 1 ] && command -v iperf3 >/dev/null; then start iperf iperf3 -s -B 127.0.0.1 -p $P_IPERF; fi
if [ -n "${CANDIDATE_START:-}" ]; then
  start cand bash -c "$CANDIDATE_START"
fi
if [ -n "${CANDIDATE2_START:-}" ]; then
  start cand2 bash -c "$CANDIDATE2_START"
fi
sleep 1.5
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || die "process $pid exited early; see $WORK/logs"; done
curl -sf -o /dev/null http://127.0.0.1:$P_MTLS_IN/ || die "mTLS path not working; see $WORK/logs"
curl -sf -o /dev/null http://127.0.0.1:$P_L4_IN/ || die "L4 mTLS path not working"
curl -sf -o /dev/null http://127.0.0.1:$P_PLAIN2_IN/ || die "plain 2-hop path not working"

# ---------- helpers ----------
tree_pids() { local p=$1; echo "$p"; for c in $(pgrep -P "$p" 2>/dev/null); do tree_pids "$c"; done; }
cpu_ticks() { # sum utime+stime over pid trees
  local t=0 p
  for root in "$@"; do for p in $(tree_pids "$root"); do
    [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat)))
  done; done; echo $t; }
rss_kb() { local t=0 p; for root in "$@"; do for p in $(tree_pids "$root"); do
    [ -r /proc/$p/status ] && t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; done; echo $t; }
hwm_kb() { local t=0 p; for root in "$@"; do for p in $(tree_pids "$root"); do
    [ -r /proc/$p/status ] && t=$((t + $(awk '/VmHWM/{print $2}' /proc/$p/status))); done; done; echo $t; }
HZ=$(getconf CLK_TCK)
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1e6} else print v }'; }

STAGES=("direct|http://127.0.0.1:$P_BACKEND/|nginx"
        "haproxy_1hop|http://127.0.0.1:$P_HOP/|hop"
        "haproxy_2hop_plain|http://127.0.0.1:$P_PLAIN2_IN/|csc ssc"
        "haproxy_2hop_mtls_http|http://127.0.0.1:$P_MTLS_IN/|csc ssc"
        "haproxy_2hop_mtls_l4tunnel|http://127.0.0.1:$P_L4_IN/|csc ssc")
[ -n "${CANDIDATE_URL:-}" ] && STAGES+=("${CANDIDATE_NAME:-candidate}|$CANDIDATE_URL|cand")
[ -n "${CANDIDATE2_URL:-}" ] && STAGES+=("${CANDIDATE2_NAME:-candidate2}|$CANDIDATE2_URL|cand2")

{
echo "# Baseline proxy benchmark ($(date -u +%FT%TZ))"
echo
echo "Host: $(nproc) CPU ($(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2);print $2}')), $(uname -r); loadgen CPUs=$LOADGEN_CPUS, servers CPUs=$SERVER_CPUS"
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1 | awk '{print "haproxy",$3}'), $(openssl version | awk '{print $1,$2}'), body=${BODY_BYTES}B, wrk -t$THREADS -c$CONNS -d$DURATION"
echo
echo "## 1. wrk closed-loop (HTTP/1.1 keep-alive)"
echo
echo "| stage | rep | req/s | ratio vs direct | p50 | p75 | p90 | p99 | proxy CPU us/req | proxy vCPU per 1k rps | nginx CPU us/req | proxy RSS now/peak MB | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$RES"

declare -A DIRECT_RPS
for rep in $(seq 1 "$REPEATS"); do
for st in "${STAGES[@]}"; do
  IFS='|' read -r name url procs <<< "$st"
  ppids=""; for pr in $procs; do v="PID_$pr"; ppids="$ppids ${!v}"; done
  taskset -c "$LOADGEN_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" > /dev/null 2>&1
  c0=$(cpu_ticks $ppids); n0=$(cpu_ticks $PID_nginx)
  taskset -c "$LOADGEN_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" > "$RAW/wrk_${name}_$rep.txt" 2>&1
  c1=$(cpu_ticks $ppids); n1=$(cpu_ticks $PID_nginx)
  f="$RAW/wrk_${name}_$rep.txt"
  rps=$(awk '/Requests\/sec/{print $2}' "$f")
  reqs=$(awk '/requests in/{print $1}' "$f")
  errs=$(grep -E 'Non-2xx|Socket errors' "$f" | tr '\n' ' ')
  p50=$(awk '/^ +50%/{print $2}' "$f"); p75=$(awk '/^ +75%/{print $2}' "$f")
  p90=$(awk '/^ +90%/{print $2}' "$f"); p99=$(awk '/^ +99%/{print $2}' "$f")
  [ "$name" = direct ] && DIRECT_RPS[$rep]=$rps
  ratio=$(awk -v a="$rps" -v b="${DIRECT_RPS[$rep]:-0}" 'BEGIN{ if (b>0) printf "%.3f", a/b; else print "-" }')
  if [ "$name" = direct ]; then pus="-"; pv="-"; rss="-"; else
    pus=$(awk -v d=$((c1-c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d/hz/n*1e6}')
    pv=$(awk -v d=$((c1-c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.3f", d/hz/n*1000}')
    rss="$(awk -v a="$(rss_kb $ppids)" -v b="$(hwm_kb $ppids)" 'BEGIN{printf "%.1f/%.1f", a/1024, b/1024}')"
  fi
  nus=$(awk -v d=$((n1-n0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d/hz/n*1e6}')
  echo "| $name | $rep | $rps | $ratio | $p50 | $p75 | $p90 | $p99 | $pus | $pv | $nus | $rss | ${errs:-0} |" >> "$RES"
  echo "wrk $name rep$rep: $rps req/s p50=$p50 p99=$p99 ${errs}"
done
done

# ---------- 1b. wrk at lower concurrency ----------
CONN_LEVELS=${CONN_LEVELS:-1 10}
LEVEL_DURATION=${LEVEL_DURATION:-5s}
if [ -n "$CONN_LEVELS" ]; then
  { echo; echo "## 1b. wrk closed-loop at fixed concurrency (HTTP/1.1 keep-alive), ${LEVEL_DURATION} each"; echo
    echo "| stage | conns | req/s | ratio vs direct | p50 | p90 | p99 | proxy CPU us/req |"; echo "|---|---|---|---|---|---|---|---|"; } >> "$RES"
  for lc in $CONN_LEVELS; do
    lt=$(( lc < THREADS ? lc : THREADS )); ldirect=0
    for st in "${STAGES[@]}"; do
      IFS='|' read -r name url procs <<< "$st"
      case "$name" in direct|haproxy_2hop_mtls_http|"${CANDIDATE_NAME:-candidate}"|"${CANDIDATE2_NAME:-candidate2}") ;; *) continue ;; esac
      ppids=""; for pr in $procs; do v="PID_$pr"; ppids="$ppids ${!v}"; done
      taskset -c "$LOADGEN_CPUS" wrk -t"$lt" -c"$lc" -d1s "$url" > /dev/null 2>&1
      c0=$(cpu_ticks $ppids)
      f="$RAW/wrk_${name}_c$lc.txt"
      taskset -c "$LOADGEN_CPUS" wrk -t"$lt" -c"$lc" -d"$LEVEL_DURATION" --latency "$url" > "$f" 2>&1
      c1=$(cpu_ticks $ppids)
      rps=$(awk '/Requests\/sec/{print $2}' "$f"); reqs=$(awk '/requests in/{print $1}' "$f")
      [ "$name" = direct ] && ldirect=$rps
      if [ "$name" = direct ]; then pus="-"; else pus=$(awk -v d=$((c1-c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d/hz/n*1e6}'); fi
      echo "| $name | $lc | $rps | $(awk -v a="$rps" -v b="$ldirect" 'BEGIN{ if (b>0) printf "%.3f", a/b; else print "-" }') | $(awk '/^ +50%/{print $2}' "$f") | $(awk '/^ +90%/{print $2}' "$f") | $(awk '/^ +99%/{print $2}' "$f") | $pus |" >> "$RES"
      echo "wrk $name c=$lc: $rps req/s"
    done
  done
fi

# ---------- 2. oha fixed rate ----------
if [ "${SKIP_OHA:-0}" != 1 ] && [ -x "$OHA" ]; then
  { echo; echo "## 2. oha open-loop fixed rate ${RATE} req/s, ${CONNS} conns, ${DURATION}, latency-corrected"; echo
    echo "| stage | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | proxy CPU us/req | proxy vCPU per 1k rps |"; echo "|---|---|---|---|---|---|---|---|---|"; } >> "$RES"
  for st in "${STAGES[@]}"; do
    IFS='|' read -r name url procs <<< "$st"
    ppids=""; for pr in $procs; do v="PID_$pr"; ppids="$ppids ${!v}"; done
    c0=$(cpu_ticks $ppids)
    taskset -c "$LOADGEN_CPUS" "$OHA" -z "$DURATION" -c "$CONNS" -q "$RATE" --latency-correction --no-tui --output-format json "$url" > "$RAW/oha_$name.json" 2> "$RAW/oha_$name.err"
    c1=$(cpu_ticks $ppids)
    python3 - "$RAW/oha_$name.json" "$name" "$((c1-c0))" "$HZ" "$name" >> "$RES" <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); s=d["summary"]; p=d["latencyPercentiles"]
n=sum(v for k,v in d.get("statusCodeDistribution",{}).items())
rps=s.get("requestsPerSec",0); ticks=int(sys.argv[3]); hz=int(sys.argv[4])
ms=lambda k:"%.3f"%(p[k]*1000) if p.get(k) is not None else "-"
if sys.argv[5]=="direct": cpu="-"; v="-"
else:
  cpu="%.2f"%(ticks/hz/n*1e6) if n else "-"; v="%.3f"%(ticks/hz/n*1000) if n else "-"
print(f"| {sys.argv[2]} | {rps:.0f} | {ms('p50')} | {ms('p90')} | {ms('p99')} | {ms('p99.9')} | {s['slowest']*1000:.3f} | {cpu} | {v} |")
PY
    echo "oha $name done"
  done
fi

# ---------- 3. h2load HTTP/2 ----------
if [ "${SKIP_H2:-0}" != 1 ] && command -v h2load >/dev/null; then
  { echo; echo "## 3. h2load HTTP/2 (h2c from client; h2 over mTLS between sidecars), -c $CONNS -m 10 -t $THREADS -D ${DURATION%s}"; echo
    echo "| stage | req/s | ratio vs direct | mean ms | sd ms | max ms | succeeded/total |"; echo "|---|---|---|---|---|---|---|"; } >> "$RES"
  H2ST=("direct_h2|http://127.0.0.1:$P_BACKEND_H2/" "haproxy_1hop_h2|http://127.0.0.1:$P_HOP_H2/" "haproxy_2hop_mtls_h2|http://127.0.0.1:$P_MTLS_H2_IN/")
  [ -n "${CANDIDATE_H2_URL:-}" ] && H2ST+=("${CANDIDATE_NAME:-candidate}_h2|$CANDIDATE_H2_URL")
  [ -n "${CANDIDATE2_H2_URL:-}" ] && H2ST+=("${CANDIDATE2_NAME:-candidate2}_h2|$CANDIDATE2_H2_URL")
  h2d=0
  for st in "${H2ST[@]}"; do
    IFS='|' read -r name url <<< "$st"
    taskset -c "$LOADGEN_CPUS" h2load -c "$CONNS" -m 10 -t "$THREADS" -D "${WARMUP%s}" "$url" > /dev/null 2>&1
    taskset -c "$LOADGEN_CPUS" h2load -c "$CONNS" -m 10 -t "$THREADS" -D "${DURATION%s}" "$url" > "$RAW/h2load_$name.txt" 2>&1
    f="$RAW/h2load_$name.txt"
    rps=$(awk '/^finished in/{gsub(/,/,"");print $4}' "$f")
    [ "$name" = direct_h2 ] && h2d=$rps
    ok=$(awk '/^requests:/{print $8"/"$2}' "$f")
    read -r mn sd mx <<< "$(awk '/^time for request:/{print $6, $7, $5}' "$f")"
    echo "| $name | $rps | $(awk -v a="$rps" -v b="$h2d" 'BEGIN{if(b>0)printf "%.3f",a/b; else print "-"}') | $(to_us "$mn" | awk '{printf "%.3f",$1/1000}') | $(to_us "$sd" | awk '{printf "%.3f",$1/1000}') | $(to_us "$mx" | awk '{printf "%.3f",$1/1000}') | $ok |" >> "$RES"
    echo "h2load $name: $rps req/s"
  done
fi

# ---------- 4. iperf3 bulk through the L4 mTLS tunnel ----------
if [ "${SKIP_IPERF:-0}" != 1 ] && command -v iperf3 >/dev/null; then
  { echo; echo "## 4. iperf3 single TCP connection, ${DURATION}"; echo
    echo "| path | Gbit/s (receiver) | proxies CPU-seconds | sidecar CPU s per GB |"; echo "|---|---|---|---|"; } >> "$RES"
  IP=("direct|$P_IPERF" "haproxy_2hop_mtls_l4tunnel|$P_IPERF_L4_IN")
  [ -n "${CANDIDATE_TCP_PORT:-}" ] && IP+=("${CANDIDATE_NAME:-candidate}_l4|$CANDIDATE_TCP_PORT")
  [ -n "${CANDIDATE2_TCP_PORT:-}" ] && IP+=("${CANDIDATE2_NAME:-candidate2}_l4|$CANDIDATE2_TCP_PORT")
  for st in "${IP[@]}"; do
    IFS='|' read -r name port <<< "$st"
    host=127.0.0.1
    if [ "$name" = "${CANDIDATE_NAME:-candidate}_l4" ]; then ppids="$PID_cand"; host=${CANDIDATE_TCP_HOST:-127.0.0.1}
    elif [ "$name" = "${CANDIDATE2_NAME:-candidate2}_l4" ]; then ppids="$PID_cand2"; host=${CANDIDATE2_TCP_HOST:-127.0.0.1}
    else ppids="$PID_csc $PID_ssc"; fi
    c0=$(cpu_ticks $ppids)
    taskset -c "$LOADGEN_CPUS" iperf3 -c "$host" -p "$port" -t "${DURATION%s}" -J > "$RAW/iperf_$name.json" 2>&1
    c1=$(cpu_ticks $ppids)
    python3 - "$RAW/iperf_$name.json" "$name" "$((c1-c0))" "$HZ" >> "$RES" <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); e=d["end"]["sum_received"]
gbps=e["bits_per_second"]/1e9; gb=e["bytes"]/1e9; cpu=int(sys.argv[3])/int(sys.argv[4])
print(f"| {sys.argv[2]} | {gbps:.2f} | {cpu if sys.argv[2]!='direct' else '-'} | {('%.3f'%(cpu/gb)) if sys.argv[2]!='direct' else '-'} |")
PY
    echo "iperf3 $name done"
  done
fi

# ---------- 4b. the candidate's own extra measurement, servers still up ----------
if [ -n "${CANDIDATE_EXTRA:-}" ]; then
  echo "extra: $CANDIDATE_EXTRA"
  taskset -c "$LOADGEN_CPUS" bash -c "$CANDIDATE_EXTRA" || echo "extra measurement failed (exit $?)"
fi

# ---------- 5. mTLS handshake rate ----------
STIME=${STIME:-10}
{ echo; echo "## 5. openssl s_time vs server sidecar (TLS1.3, ECDSA P-256 certs, client cert), ${STIME} s, 1 client process"; echo
  echo "| mode | connections | conn/s (client-bound) | server sidecar CPU ms per handshake |"; echo "|---|---|---|---|"; } >> "$RES"
for mode in new reuse; do
  c0=$(cpu_ticks $PID_ssc)
  taskset -c "$LOADGEN_CPUS" openssl s_time -connect 127.0.0.1:$P_SRV_TLS -$mode -time "$STIME" -cert "$C/client.crt" -key "$C/client.key" -CAfile "$C/ca.pem" > "$RAW/s_time_$mode.txt" 2>&1
  c1=$(cpu_ticks $PID_ssc)
  n=$(awk '/connections in .* real seconds/{print $1}' "$RAW/s_time_$mode.txt" | tail -1)
  rs=$(awk '/connections in .* real seconds/{print $4}' "$RAW/s_time_$mode.txt" | tail -1)
  echo "| $mode | ${n:-?} | $(awk -v n="${n:-0}" -v t="${rs:-1}" 'BEGIN{printf "%.0f", n/t}') | $(awk -v d=$((c1-c0)) -v hz="$HZ" -v n="${n:-0}" 'BEGIN{ if (n>0) printf "%.3f", d/hz/n*1000; else print "-"}') |" >> "$RES"
done

# ---------- 6. physical limits (one core) ----------
if [ "${SKIP_SPEED:-0}" != 1 ]; then
  { echo; echo "## 6. openssl speed, 1 core (physical crypto limit)"; echo; echo '```'; } >> "$RES"
  taskset -c "$SERVER_CPUS" openssl speed -seconds 2 -bytes 16384 -evp aes-128-gcm 2>/dev/null | tail -2 >> "$RES"
  taskset -c "$SERVER_CPUS" openssl speed -seconds 2 -bytes 16384 -evp chacha20-poly1305 2>/dev/null | tail -1 >> "$RES"
  taskset -c "$SERVER_CPUS" openssl speed -seconds 2 ecdsap256 2>/dev/null | tail -2 >> "$RES"
  taskset -c "$SERVER_CPUS" openssl speed -seconds 2 ecdhx25519 2>/dev/null | tail -2 >> "$RES"
  echo '```' >> "$RES"
fi
echo; echo "results: $RES"; cat "$RES"

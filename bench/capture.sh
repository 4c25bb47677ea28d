#!/usr/bin/env bash
# The cost of transparent capture against the explicit way, on the same
# Strait sidecar pair, by the same load generators, in one run (issue #21
# item 4). Run by scripts/bench.sh (`ONLY=capture scripts/bench.sh` runs
# this part alone); root only, since it builds network namespaces.
#
# Layout (both namespaces are created here and deleted on exit, also on
# failure; names carry this process's id):
#   sbc<pid>-pod  10.173.0.1: the load generator (an unmodified app, uid
#                 65534) and the client sidecar (uid 0, VIP 127.173.0.1,
#                 capture listener 127.0.0.1:15002)
#   sbc<pid>-srv  10.173.0.2: the server sidecar (mTLS in on :15006) and
#                 nginx, the app, on :8080 (1 KiB fixed 200)
#   joined by the veth pair sbc<pid>p / sbc<pid>s.
# Paths, all over the same veth pair and the same two sidecars:
#   direct    app -> 10.173.0.2:8080, no rules, no mesh (context only)
#   explicit  app -> the VIP 127.173.0.1:8080, where the client sidecar
#             listens (the way apps reach the mesh today); no nftables
#             table in the pod
#   capture   app -> 10.173.0.2:8080, the server's real address, with the
#             rules of `strait proxy capture install --netns <pod>
#             --proxy-uid 0` in the pod: nftables redirects the connection
#             to the sidecar's capture listener, which reads the original
#             destination (SO_ORIGINAL_DST), maps it to the service and
#             takes the VIP's path from there
# The rules are installed before and removed after every capture
# measurement, so explicit and direct run in a pod without them, as today.
# Explicit and capture alternate over CAPTURE_ROUNDS rounds, the order
# reversed every other round (ABBA), so
# noise from other load on the host falls on both alike. Each capture
# measurement must show at least one redirected connection per load
# connection on the rule's counter, or the run fails (it would otherwise
# have measured nginx directly).
#
# Needs (env): S (strait binary), B (strait-bench binary), W (a directory
# holding the certificates mesh_configs wrote: $W/client, $W/server), OUT
# (results: $OUT/capture/), BUILD (which build $S is, for the report).
# Knobs: DURATION WARMUP THREADS CONNS RATE
# CAPTURE_ROUNDS (3) CAPTURE_DIAG (0) CAPTURE_CLOSE (0) LOADGEN_CPUS (0) SERVER_CPUS (1)
# BODY_BYTES (1024).
set -euo pipefail
: "${S:?strait binary}" "${B:?strait-bench binary}" "${W:?work dir}" "${OUT:?output dir}"
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
RATE=${RATE:-2000}
ROUNDS=${CAPTURE_ROUNDS:-3}
# CAPTURE_DIAG=1 adds a third way, explicit_rules: the VIP as in explicit,
# but with the capture rules installed (the VIP excluded from them), which
# tells the cost of having the nftables nat table (and so connection
# tracking) in the pod from the cost of the redirect itself.
# It also adds capture_notrack: capture with one more table that exempts
# the sidecar's own traffic off loopback (its mTLS connections to the
# server sidecar) from connection tracking, which tells what tracking
# only the redirected app connections would cost.
DIAG=; [ "${CAPTURE_DIAG:-0}" = 1 ] && DIAG="explicit_rules capture_notrack"
# CAPTURE_CLOSE=1 adds wrkclose: wrk with `Connection: close`, a new app
# connection per request, where capture's per-connection work shows (the
# redirect, SO_ORIGINAL_DST, the classification).
CLOSE=; [ "${CAPTURE_CLOSE:-0}" = 1 ] && CLOSE=wrkclose
CLOSE_DURATION=${CLOSE_DURATION:-3s}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
BODY_BYTES=${BODY_BYTES:-1024}
APP_UID=65534

PFX=sbc$$
POD=$PFX-pod
SRV=$PFX-srv
POD_IP=10.173.0.1
SRV_IP=10.173.0.2
VIP=127.173.0.1
D=$W/capture
R=$OUT/capture
mkdir -p "$D/logs" "$D/tmp" "$R/raw"

die() { echo "capture: $*" >&2; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# The app: an unprivileged process in the pod (not the sidecar's uid, so
# the rules capture it), on the load generator's CPUs.
as_app() {
  ip netns exec "$POD" setpriv --reuid $APP_UID --regid $APP_UID --clear-groups \
    taskset -c "$LOADGEN_CPUS" "$@"
}

# Every process this starts runs in one of its namespaces, so what runs
# there is exactly what to stop (the sidecars, nginx and its worker, a load
# generator cut short): by id, from `ip netns pids`.
cleanup() {
  local rc=$? ns p left
  trap - EXIT INT TERM
  for ns in "$POD" "$SRV"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  sleep 0.5
  for ns in "$POD" "$SRV"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  left=$( { ip netns list; ip -o link show; } | grep "$PFX" || true)
  if [ -n "$left" ]; then echo "capture: left behind: $left" >&2; rc=1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "capture: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

echo "==> capture vs explicit: namespaces $POD ($POD_IP) and $SRV ($SRV_IP)"
ip netns add "$POD"
ip netns add "$SRV"
ip link add "${PFX}p" netns "$POD" type veth peer name "${PFX}s" netns "$SRV"
for x in "$POD ${PFX}p $POD_IP" "$SRV ${PFX}s $SRV_IP"; do
  read -r ns dev ip <<< "$x"
  ip -n "$ns" addr add "$ip/24" dev "$dev"
  ip -n "$ns" link set "$dev" up
  ip -n "$ns" link set lo up
done

# ---------- configs ----------
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
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
  server { listen 8080; location / { default_type text/plain; return 200 "$BODY"; } }
}
EOF
ids() { echo "identity: { files: { chain: $W/$1/chain.pem, key: $W/$1/key.pem, bundle: $W/$1/bundle.pem } }"; }
cat > "$D/server.yaml" <<EOF
trust_domain: strait.local
$(ids server)
listeners: { inbound: "$SRV_IP:15006", outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000, bind_vips: false }
local_service: bench.default
app: [{ port: 8080, protocol: http1, target: 127.0.0.1:8080 }]
EOF
cat > "$D/client.yaml" <<EOF
trust_domain: strait.local
$(ids client)
listeners: { inbound: 127.0.0.1:15006, outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000, bind_vips: true }
capture: { outbound: 127.0.0.1:15002 }
snapshot_file: $D/snapshot.yaml
EOF
cat > "$D/snapshot.yaml" <<EOF
version: 1
local: { cluster: bench, locality: local/a }
services:
  - name: bench
    namespace: default
    vip: $VIP
    ports: [{ port: 8080, protocol: http1 }]
    endpoints:
      - { address: "$SRV_IP:15006", cluster: bench, locality: local/a, identity: spiffe://strait.local/ns/default/sa/server }
EOF
"$S" proxy --config "$D/server.yaml" --check
"$S" proxy --config "$D/client.yaml" --check

# ---------- start ----------
start() { # name, namespace, cmd...; its pid in STARTED
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" taskset -c "$SERVER_CPUS" "$@" > "$D/logs/$name.log" 2>&1 &
  STARTED=$!
}
start nginx "$SRV" nginx -p "$D" -e "$D/logs/nginx_error.log" -c "$D/nginx.conf"
start server "$SRV" "$S" proxy --config "$D/server.yaml"; PID_server=$STARTED
start client "$POD" "$S" proxy --config "$D/client.yaml"; PID_client=$STARTED

ready() { # what, command...: retries for 15 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what does not answer; logs in $D/logs: $(tail -5 "$D"/logs/*.log)"
}
ready "nginx" in_ns "$SRV" curl -sf http://127.0.0.1:8080/
ready "the server sidecar" in_ns "$SRV" curl -sf http://127.0.0.1:15000/live
ready "the client sidecar" in_ns "$POD" curl -sf http://127.0.0.1:15000/live
ready "the explicit path (VIP)" as_app curl -sf --max-time 2 "http://$VIP:8080/"

capture_on() { "$S" proxy capture install --netns "$POD" --proxy-uid 0 --outbound-port 15002 "$@" > /dev/null; }
capture_off() { "$S" proxy capture remove --netns "$POD" > /dev/null; }
# Connections the outbound redirect rule has counted (its first packets).
redirected() {
  in_ns "$POD" nft list chain inet strait outbound \
    | awk '/redirect to/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'
}
notrack_on() {
  in_ns "$POD" nft -f - <<EOF
table inet sbcdiag {
  chain out { type filter hook output priority raw; policy accept; oifname != "lo" meta skuid 0 notrack; }
  chain pre { type filter hook prerouting priority raw; policy accept; iifname != "lo" notrack; }
}
EOF
}
notrack_off() { in_ns "$POD" nft delete table inet sbcdiag 2> /dev/null || true; }
no_table() { ! in_ns "$POD" nft list table inet strait > /dev/null 2>&1; }

# The capture path works, and is what carries the connection.
capture_on
[ "$(redirected)" = 0 ] || die "the new rule counted traffic before any was sent"
as_app curl -sf --max-time 2 -o /dev/null "http://$SRV_IP:8080/" || die "no answer through capture; logs in $D/logs"
[ "$(redirected)" = 1 ] || die "the request to $SRV_IP:8080 was not redirected (counter $(redirected))"
capture_off
no_table || die "capture remove left the table in $POD"

# ---------- measurements ----------
HZ=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
url() { case $1 in explicit*) echo "http://$VIP:8080/" ;; *) echo "http://$SRV_IP:8080/" ;; esac; }
# TSV of every measurement: tool mode round file sidecar-ticks hz
# redirected conntrack-entries
RUNS=$R/runs.tsv
: > "$RUNS"
measure() { # tool (wrk|oha), mode (direct|explicit|capture|explicit_rules), round
  local tool=$1 mode=$2 round=$3 u c0 c1 r0=0 r1=0 f ct
  u=$(url "$mode")
  case $mode in
    capture) capture_on; r0=$(redirected) ;;
    explicit_rules) capture_on --exclude-cidrs "$VIP/32"; r0=$(redirected) ;;
    capture_notrack) capture_on; notrack_on; r0=$(redirected) ;;
    *) no_table || die "rules present for $mode" ;;
  esac
  f=$R/raw/${tool}_${mode}_$round
  if [ "$tool" != oha ]; then
    local extra=() d=$DURATION
    # Each closed connection holds a conntrack entry for 2 minutes: short
    # runs keep the pod's table far from its limit.
    [ "$tool" = wrkclose ] && extra=(-H "Connection: close") && d=$CLOSE_DURATION
    as_app wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${extra[@]}" "$u" > /dev/null 2>&1 || die "$tool $mode (warm-up) failed"
    no_table || r0=$(redirected)
    c0=$(ticks "$PID_client" "$PID_server")
    as_app wrk -t"$THREADS" -c"$CONNS" -d"$d" --latency "${extra[@]}" "$u" > "$f.txt" 2>&1 || die "$tool $mode failed: $(tail -3 "$f.txt")"
    c1=$(ticks "$PID_client" "$PID_server"); f=$f.txt
  else
    c0=$(ticks "$PID_client" "$PID_server")
    as_app "$B" oha -z "$DURATION" -c "$CONNS" -q "$RATE" --latency-correction --no-tui --output-format json "$u" > "$f.json" 2> "$f.err" \
      || die "strait-bench oha $mode failed: $(head -1 "$f.err")"
    c1=$(ticks "$PID_client" "$PID_server"); f=$f.json
  fi
  # Connections the pod's conntrack holds now (0 without a nat table).
  ct=$(in_ns "$POD" cat /proc/sys/net/netfilter/nf_conntrack_count 2> /dev/null || echo -)
  if [ "$mode" = capture ] || [ "$mode" = capture_notrack ]; then
    r1=$(redirected); capture_off; notrack_off
    [ $((r1 - r0)) -ge "$CONNS" ] || die "$tool $mode round $round: only $((r1 - r0)) connections redirected for $CONNS load connections"
  elif [ "$mode" = explicit_rules ]; then
    r1=$(redirected); capture_off
    [ $((r1 - r0)) = 0 ] || die "$tool $mode round $round: $((r1 - r0)) connections to the excluded VIP were redirected"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$mode" "$round" "$(basename "$f")" $((c1 - c0)) "$HZ" $((r1 - r0)) "$ct" >> "$RUNS"
  echo "$tool $mode round $round: $(summary_of "$tool" "$f"), conntrack entries $ct"
}
summary_of() {
  if [ "$1" != oha ]; then awk '/Requests\/sec/{r=$2} /^ +50%/{p=$2} END{print r " req/s, p50 " p}' "$2"
  else python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f req/s, p50 %.3f ms, p99 %.3f ms" % (d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p50"]*1e3, d["latencyPercentiles"]["p99"]*1e3))' "$2"
  fi
}
cpu_times() { awk '/^cpu /{t=0; for (i=2;i<=9;i++) t+=$i; print t, $9}' /proc/stat; }
read -r T0 ST0 < <(cpu_times)
for tool in wrk oha $CLOSE; do
  measure "$tool" direct 0
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="explicit capture $DIAG"; else order="$DIAG capture explicit"; fi
    for mode in $order; do measure "$tool" "$mode" "$round"; done
  done
done
read -r T1 ST1 < <(cpu_times)
cat > "$R/meta.json" <<EOF
{"build": $(python3 -c 'import json, os; print(json.dumps(os.environ.get("BUILD", "not named")))'),
 "duration": "$DURATION", "warmup": "$WARMUP", "threads": $THREADS, "conns": $CONNS, "rate": $RATE,
 "rounds": $ROUNDS, "close_duration": "$CLOSE_DURATION", "loadgen_cpus": "$LOADGEN_CPUS", "server_cpus": "$SERVER_CPUS", "body_bytes": $BODY_BYTES,
 "steal_pct": $(awk -v t=$((T1 - T0)) -v st=$((ST1 - ST0)) 'BEGIN{printf "%.1f", (t > 0 ? 100 * st / t : 0)}'),
 "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')", "nginx": "$(nginx -v 2>&1 | sed 's/.*\///')",
 "host": "$(nproc) CPU ($(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2);print $2}')), $(uname -r)",
 "date": "$(date -u +%FT%TZ)"}
EOF
echo "==> capture vs explicit: raw results in $R"

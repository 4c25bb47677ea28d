#!/usr/bin/env bash
# A lab of hosts and pods in network namespaces, where no mesh path is
# loopback: three clusters (east, west, central), each its own subnet
# behind a router namespace that forwards between subnets ONLY to and from
# the clusters' gateway hosts. Uses `strait` roles as shipped
# (`strait cluster up` on each cluster's host, `strait proxy` with
# `controller:` in each pod, `strait proxy capture install`), unmodified
# apps (python3's http.server, curl). Root only. See docs/lab.md.
#
#   scripts/lab.sh up       # build and start everything (STRAIT_BIN, LAB_DIR, LAB_PREFIX)
#   scripts/lab.sh status   # namespaces, processes, router counters
#   scripts/lab.sh down     # stop every process, delete every namespace
#   scripts/lab.sh try [NAME]   # one request from east's client pod through capture
#   scripts/lab.sh pod-stop west echo | pod-start west echo
#   scripts/lab.sh partition east west | heal
#   scripts/lab.sh gateway-down west | gateway-up west
#
# Layout (cluster n = 1 east, 2 west, 3 central; subnet 10.24.n.0/24):
#   slab-router      10.24.n.1 on each cluster's switch; forwards only to/from
#                    10.24.n.10; records each new flow it passed (set crossed)
#   slab-<c>-sw      the cluster's switch (a bridge)
#   slab-<c>-host    10.24.n.10: controller :8610 (admin :8611), gateway :15443, DNS :8653
#   slab-<c>-<pod>   10.24.n.2x: app + sidecar (uid 1337), capture rules
# Pods: east/client (a shell for curl), west/echo and central/echo (the
# echo.demo service, exported to every cluster; east's policy fails over
# west first, then central).
set -euo pipefail
cd "$(dirname "$0")/.."

# LAB_PREFIX names every namespace (default slab), so two labs (tests run
# in parallel) never meet: each is its own set of namespaces.
P=${LAB_PREFIX:-slab}
[[ $P =~ ^[a-z][a-z0-9]{0,11}$ ]] || { echo "lab: LAB_PREFIX must be 1-12 lowercase letters or digits, starting with a letter: $P" >&2; exit 2; }
DIR=${LAB_DIR:-/tmp/strait-lab}
STRAIT=${STRAIT_BIN:-$PWD/target/debug/strait}
PROXY_UID=1337
CLUSTERS=(east west central)
declare -A NUM=([east]=1 [west]=2 [central]=3)
declare -A PODS=([east]="client" [west]="echo" [central]="echo")

die() { echo "lab: $*" >&2; exit 1; }
say() { echo "==> $*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
net() { echo "10.24.${NUM[$1]}"; }

need() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces and nftables)"
  for t in ip nft python3 setpriv curl; do
    command -v "$t" >/dev/null || die "needs $t (apt-get install iproute2 nftables python3 util-linux curl)"
  done
}

# The echo app: answers every GET with the request's headers and its cluster.
APP='
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("served-by: " + sys.argv[1] + "\n" + "".join(
            f"{k.lower()}: {v}\n" for k, v in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
'

# A namespace `ns` on cluster c's switch at `ip` (default route: the router).
attach() {
  local c=$1 ns=$2 ip=$3 port=$4
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
  ip link add eth0 netns "$ns" type veth peer name "$port" netns "$P-$c-sw"
  ip -n "$P-$c-sw" link set "$port" master br0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$(net "$c").1"
}

router_rules() {
  local gws=()
  for c in "${CLUSTERS[@]}"; do gws+=("$(net "$c").10"); done
  local set
  set=$(IFS=,; echo "${gws[*]}")
  in_ns "$P-router" nft -f - <<EOF
table inet lab
delete table inet lab
table inet lab {
	set gateways { type ipv4_addr; elements = { $set } }
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related counter accept
		ip daddr @gateways counter accept comment "to a gateway host"
		ip saddr @gateways counter accept comment "from a gateway host"
		counter drop comment "anything else between subnets"
	}
	# Every new flow the forward chain let through, by addresses, protocol
	# and port: what crossed between subnets (scripts/lab.sh status).
	set crossed { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags dynamic; size 4096; }
	chain passed {
		type filter hook forward priority 10; policy accept;
		ct state new meta l4proto { tcp, udp } add @crossed { ip saddr . ip daddr . meta l4proto . th dport }
	}
}
EOF
}

# Whether cluster c's gateway admits peers to a service: its admin
# /exports lists a service and east among its linked clusters.
exported() {
  in_ns "$P-router" curl -s --max-time 1 "http://$(net "$1").10:15021/exports" 2>/dev/null |
    python3 -c '
import json, sys
e = json.load(sys.stdin)
sys.exit(0 if e.get("services") and "east" in (e.get("linked") or []) else 1)' 2>/dev/null
}

up() {
  need
  [ -x "$STRAIT" ] || die "no strait binary at $STRAIT (cargo build -p strait-cli, or set STRAIT_BIN)"
  if ip netns list | grep -q "^$P-"; then die "a lab is up already (scripts/lab.sh down first)"; fi
  mkdir -p "$DIR/bin" "$DIR/pods"
  install -m 0755 "$STRAIT" "$DIR/bin/strait"
  local S=$DIR/bin/strait
  : >"$DIR/lab.pids"

  say "router and switches"
  ip netns add "$P-router"
  in_ns "$P-router" ip link set lo up
  in_ns "$P-router" sh -c "echo 1 >/proc/sys/net/ipv4/ip_forward" # no procps needed
  for c in "${CLUSTERS[@]}"; do
    ip netns add "$P-$c-sw"
    in_ns "$P-$c-sw" ip link set lo up
    ip -n "$P-$c-sw" link add br0 type bridge
    ip -n "$P-$c-sw" link set br0 up
    ip link add "to-$c" netns "$P-router" type veth peer name router netns "$P-$c-sw"
    ip -n "$P-$c-sw" link set router master br0 up
    ip -n "$P-router" addr add "$(net "$c").1/24" dev "to-$c"
    ip -n "$P-router" link set "to-$c" up
  done
  router_rules

  say "cluster hosts: controller, gateway, DNS (strait cluster up)"
  for c in "${CLUSTERS[@]}"; do
    attach "$c" "$P-$c-host" "$(net "$c").10" host
    # Every pod of the subnet runs a sidecar: DNS answers them the VIP.
    in_ns "$P-$c-host" "$S" cluster up "$c" --dir "$DIR" --ip "$(net "$c").10" \
      --region "us-$c" --zone "us-$c-1a" --meshed-clients "$(net "$c").0/24"
  done

  say "pods: app, sidecar (uid $PROXY_UID), capture"
  for c in "${CLUSTERS[@]}"; do
    local n=20
    for pod in ${PODS[$c]}; do
      n=$((n + 1))
      local ns=$P-$c-$pod ip
      ip=$(net "$c").$n
      local home=$DIR/pods/$c-$pod
      mkdir -p "$home"
      attach "$c" "$ns" "$ip" "p-$pod"
      "$S" ca issue --ca-dir "$DIR/ca" --cluster "$c" \
        --spiffe-id "spiffe://strait.local/ns/demo/sa/$pod" --out "$home/certs" >/dev/null
      chown -R "$PROXY_UID:$PROXY_UID" "$home/certs"
      local app=""
      printf '%s' "$APP" >"$DIR/app.py"
      if [ "$pod" != client ]; then
        app="local_service: $pod.demo
app: [{ port: 8080, protocol: http1, target: 127.0.0.1:8080 }]"
        cat >"$home/service.yaml" <<EOF
name: $pod
namespace: demo
ports: [{ port: 8080, protocol: http1 }]
endpoints: [{ address: "$ip:15006" }]
export: all
health_check: { kind: tcp, interval: 1s }
EOF
      fi
      cat >"$home/sidecar.yaml" <<EOF
trust_domain: strait.local
identity: { files: { chain: $home/certs/chain.pem, key: $home/certs/key.pem, bundle: $home/certs/bundle.pem } }
listeners: { inbound: "$ip:15006", outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000 }
capture: { outbound: "[::]:15002" }
controller: { address: "$(net "$c").10:8610", cluster: $c, locality: us-$c/us-$c-1a }
$app
EOF
      # start.sh (re)starts the pod's processes: `scripts/lab.sh pod-start`.
      {
        echo "#!/usr/bin/env bash"
        if [ "$pod" != client ]; then
          echo "ip netns exec $ns python3 $DIR/app.py $c >>$home/app.log 2>&1 &"
          echo "echo \"\$! $ns app\" >>$DIR/lab.pids"
        fi
        echo "ip netns exec $ns setpriv --reuid $PROXY_UID --regid $PROXY_UID --clear-groups \\"
        echo "  $S proxy --config $home/sidecar.yaml >>$home/sidecar.log 2>&1 &"
        echo "echo \"\$! $ns sidecar\" >>$DIR/lab.pids"
      } >"$home/start.sh"
      bash "$home/start.sh"
      "$S" proxy capture install --netns "$ns" --proxy-uid "$PROXY_UID" >/dev/null
    done
  done

  say "register and export echo.demo; link the clusters (from the router)"
  for c in "${CLUSTERS[@]}"; do
    for pod in ${PODS[$c]}; do
      [ "$pod" = client ] && continue
      in_ns "$P-router" "$S" service register -f "$DIR/pods/$c-$pod/service.yaml" \
        --cluster "$c" --dir "$DIR" >/dev/null
    done
  done
  for pair in east:west east:central west:central central:west; do
    in_ns "$P-router" "$S" link --from "${pair%%:*}" --to "${pair##*:}" --dir "$DIR" >/dev/null
  done
  # East's callers go to west first, then central (without a policy, the
  # order among remote clusters is not west-first).
  in_ns "$P-router" "$S" policy set echo -n demo --failover west,central --cluster east \
    --dir "$DIR" >/dev/null
  # A gateway lets peers in to an exported service once its controller's
  # export table (and the list of linked clusters) has reached it; wait for
  # that, at most 6 s per cluster, before anyone sends a request.
  say "waiting for the gateways' export tables"
  local i
  for c in west central; do
    for i in $(seq 60); do
      exported "$c" && break
      sleep 0.1
    done
    exported "$c" || echo "lab: the gateway of $c does not admit east to a service after 6 s (its /exports); going on" >&2
  done
  say "up. Try (docs/lab.md):"
  echo "  scripts/lab.sh try                                   # echo.demo.svc.cluster.local"
  echo "  scripts/lab.sh try echo.demo.svc.clusterset.local    # the global name"
}

status() {
  echo "namespaces:"
  ip netns list | grep "^$P-" | sed 's/^/  /' || echo "  (none)"
  if [ -f "$DIR/lab.pids" ]; then
    echo "pod processes:"
    while read -r pid ns what; do
      if kill -0 "$pid" 2>/dev/null; then s=running; else s=stopped; fi
      echo "  $ns $what (pid $pid): $s"
    done <"$DIR/lab.pids"
  fi
  if ip netns list | grep -q "^$P-router"; then
    echo "router forward chain (counters: packets crossing between subnets):"
    in_ns "$P-router" nft list chain inet lab forward | grep -E "counter" | sed 's/^\s*/  /'
    echo "flows that crossed (source . destination . protocol . port):"
    in_ns "$P-router" nft list set inet lab crossed | tr -d '\n\t' |
      sed -e 's/.*elements = { *//' -e 's/ *}.*//' | tr ',' '\n' | sed 's/^ */  /'
    echo
    echo "clusters (strait status, from the router):"
    local ctl=()
    for c in "${CLUSTERS[@]}"; do ctl+=(--controller "$(net "$c").10:8611"); done
    in_ns "$P-router" "$DIR/bin/strait" status "${ctl[@]}" 2>&1 | sed 's/^/  /' || true
  fi
}

# One request from east's client pod, by name, through capture: prints
# the HTTP status and which cluster served it. The name resolves to the
# VIP of echo.demo that east's sidecar has from its controller (what Strait
# DNS answers a meshed client too).
try_once() {
  local name=${1:-echo.demo.svc.cluster.local} ns=$P-east-client vip
  vip=$(in_ns "$ns" curl -s --max-time 2 http://127.0.0.1:15000/config | python3 -c '
import json, sys
print(next(s["vip"] for s in json.load(sys.stdin)["services"] if s["name"] == "echo"))') ||
    die "east's sidecar knows no echo.demo yet"
  local out
  out=$(in_ns "$ns" curl -s --max-time 5 -w '\n%{http_code}' --resolve "$name:8080:$vip" "http://$name:8080/" || true)
  echo "$(echo "$out" | tail -n1) served-by: $(echo "$out" | sed -n 's/^served-by: //p') ($name -> $vip)"
}

# Stops every process of a pod (its namespace and capture rules stay).
pod_stop() {
  local ns=$P-$1-$2
  ip netns list | grep -q "^$ns" || die "no pod $2 in $1"
  ip netns pids "$ns" | xargs -r kill
  say "stopped pod $2 of $1"
}

pod_start() {
  local home=$DIR/pods/$1-$2
  [ -f "$home/start.sh" ] || die "no pod $2 in $1"
  bash "$home/start.sh"
  say "started pod $2 of $1"
}

# The router drops everything between two clusters' subnets (both ways),
# established connections included.
partition() {
  [ -n "${NUM[$1]:-}" ] && [ -n "${NUM[$2]:-}" ] || die "usage: partition CLUSTER CLUSTER"
  local a b
  a=$(net "$1").0/24 b=$(net "$2").0/24
  in_ns "$P-router" nft insert rule inet lab forward ip saddr "$a" ip daddr "$b" counter drop comment "\"partition $1 $2\""
  in_ns "$P-router" nft insert rule inet lab forward ip saddr "$b" ip daddr "$a" counter drop comment "\"partition $1 $2\""
  say "partitioned $1 from $2"
}

heal() {
  local h
  for h in $(in_ns "$P-router" nft -a list chain inet lab forward | grep 'comment "partition' | sed 's/.*# handle //'); do
    in_ns "$P-router" nft delete rule inet lab forward handle "$h"
  done
  say "healed: no partition left"
}

# Takes the link of a cluster's gateway host down (or up again).
gateway_link() {
  [ -n "${NUM[$1]:-}" ] || die "usage: gateway-down|gateway-up CLUSTER"
  ip -n "$P-$1-sw" link set host "$2"
  say "gateway host link of $1 $2"
}

# The processes in the lab's namespaces (every lab process runs in one).
lab_pids() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null || true
  done
}

down() {
  need
  if [ -f "$DIR/lab.pids" ]; then
    while read -r pid _ _; do kill "$pid" 2>/dev/null || true; done <"$DIR/lab.pids"
    rm -f "$DIR/lab.pids"
  fi
  for c in "${CLUSTERS[@]}"; do
    [ -x "$DIR/bin/strait" ] && "$DIR/bin/strait" cluster down "$c" --dir "$DIR" >/dev/null 2>&1 || true
  done
  lab_pids | xargs -r kill 2>/dev/null || true
  # A gateway drains its tunnels for up to 30 s on SIGTERM: give every
  # process 5 s, then SIGKILL what is left in the namespaces, so none
  # outlives the lab.
  local i
  for i in $(seq 50); do
    [ -z "$(lab_pids)" ] && break
    sleep 0.1
  done
  lab_pids | xargs -r kill -9 2>/dev/null || true
  for i in $(seq 20); do
    [ -z "$(lab_pids)" ] && break
    sleep 0.1
  done
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns del "$ns"
  done
  say "down: no $P-* namespace and no lab process left (state stays in $DIR)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  try) need; try_once "${2:-}" ;;
  pod-stop) need; pod_stop "${2:?cluster}" "${3:?pod}" ;;
  pod-start) need; pod_start "${2:?cluster}" "${3:?pod}" ;;
  partition) need; partition "${2:?cluster}" "${3:?cluster}" ;;
  heal) need; heal ;;
  gateway-down) need; gateway_link "${2:?cluster}" down ;;
  gateway-up) need; gateway_link "${2:?cluster}" up ;;
  *) echo "usage: $0 up|down|status|try [NAME]|pod-stop C POD|pod-start C POD|partition C C|heal|gateway-down C|gateway-up C" >&2; exit 2 ;;
esac

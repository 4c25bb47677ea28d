# Sourced by scripts/bench.sh and scripts/build-production.sh:
# `mesh_configs` writes the certificates and configs of the benchmark mesh
# into $W, with the strait binary $S, and checks them.
#   Same cluster: client sidecar (VIP 127.77.0.1) -> server sidecar.
#   Cross-cluster: client sidecar in east (VIP 127.77.0.2) -> west's
#   east-west gateway -> server sidecar in west.
#   Apps behind the server sidecars: nginx on 127.0.0.1:18080 (HTTP/1.1) and
#   :18090 (h2c), iperf3 on 127.0.0.1:15201.
# Roles: `proxy --config $W/{server,client,xserver,xclient}.yaml` and
# `gateway --config $W/gateway.yaml --exports $W/exports.yaml`.
# (Heredocs below are not indented: their text is the files' text.)
mesh_configs() {
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
# A client sidecar (certs in $W/NAME) routing by the snapshot file SNAP.
# Args: NAME IN OUT ADMIN SNAP.
client_sidecar() {
  cat > "$W/$1.yaml" <<EOF
trust_domain: strait.local
identity: { files: { chain: $W/$1/chain.pem, key: $W/$1/key.pem, bundle: $W/$1/bundle.pem } }
listeners: { inbound: 127.0.0.1:$2, outbound: 127.0.0.1:$3, admin: 127.0.0.1:$4, bind_vips: true }
snapshot_file: $W/$5
EOF
}
# Client sidecar: the service VIP is 127.77.0.1 on the three entry ports.
client_sidecar client 19444 19002 19003 snapshot.yaml
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
client_sidecar xclient 19644 19602 19603 xsnapshot.yaml
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
$S proxy --config "$W/server.yaml" --check
$S proxy --config "$W/client.yaml" --check
$S proxy --config "$W/xserver.yaml" --check
$S proxy --config "$W/xclient.yaml" --check
$S gateway --config "$W/gateway.yaml" --exports "$W/exports.yaml" --check
}

# Writes the Grafana dashboards of this directory (python3 generate.py).
# Edit the panels here, regenerate, and run cli/tests/monitoring.rs: every
# panel query must return series on a running mesh.
import json, os
DS = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"
def panel(i, title, kind, targets, unit=None, desc=None):
    p = {"id": i, "type": kind, "title": title, "datasource": DS,
         "gridPos": {"h": 8, "w": 12 if kind != "stat" else 6, "x": 0, "y": 0},
         "targets": [{"refId": chr(65+j), "expr": e, "legendFormat": l, "datasource": DS} for j,(e,l) in enumerate(targets)],
         "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
    if kind == "table":
        for t in p["targets"]:
            t["format"] = "table"; t["instant"] = True
    if unit: p["fieldConfig"]["defaults"]["unit"] = unit
    if desc: p["description"] = desc
    return p
def layout(panels):
    x = y = 0; rowh = 0
    for p in panels:
        w = p["gridPos"]["w"]; h = p["gridPos"]["h"] if p["type"] != "stat" else 4
        if x + w > 24: x = 0; y += rowh; rowh = 0
        p["gridPos"].update({"x": x, "y": y, "h": h}); x += w; rowh = max(rowh, h)
    return panels
def var(name, query, label=None):
    return {"name": name, "label": label or name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "var"}, "definition": query,
            "includeAll": True, "allValue": ".+", "multi": True, "refresh": 2,
            "current": {"text": "All", "value": "$__all"}}
def dash(uid, title, desc, panels, vars_):
    return {"uid": uid, "title": title, "description": desc, "tags": ["strait"],
            "schemaVersion": 39, "version": 1, "editable": True, "timezone": "",
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
            "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                     "query": "prometheus", "current": {}}] + vars_},
            "annotations": {"list": []}, "links": [],
            "panels": layout([dict(p, id=i+1) for i,p in enumerate(panels)])}
OUT = "outbound"
overview = dash("strait-mesh", "Strait / Mesh overview",
 "Every cluster of the mesh: traffic per link, errors, latency, failovers, control plane, DNS and CA (docs/observability.md).",
 [
  panel(0, "Requests/s (all services)", "stat", [(f'sum(rate(strait_requests_total{{direction="{OUT}"}}[{R}]))', "req/s")], "reqps"),
  panel(0, "Success rate", "stat", [('1 - sum(strait_service:error_ratio:rate5m * on (destination_service) strait_service:requests:rate5m) / sum(strait_service:requests:rate5m)', "success")], "percentunit"),
  panel(0, "Targets up", "stat", [('sum by (job) (up{job=~"strait-.*"})', "{{job}}")]),
  panel(0, "Soonest workload certificate expiry", "stat", [('min(strait_cert_expiry_timestamp_seconds) - time()', "left")], "s"),
  panel(0, "Requests/s per link and service", "timeseries", [('strait_link:requests:rate5m', "{{source_cluster}} → {{destination_cluster}} {{destination_service}}")], "reqps"),
  panel(0, "p99 latency per service", "timeseries", [('strait_service:latency_seconds:p99_5m', "{{destination_service}}")], "s"),
  panel(0, "Error ratio per service", "timeseries", [('strait_service:error_ratio:rate5m', "{{destination_service}}")], "percentunit"),
  panel(0, "Failovers (1 = active)", "table", [('max by (service, from, to) (strait_failover_active)', "")],
        desc="Services whose traffic left their caller's cluster; 0 once it came back."),
  panel(0, "Cross-cluster bytes/s per link", "timeseries", [('strait_link:gateway_bytes:rate5m', "{{source_cluster}} → {{destination_cluster}} {{direction}}")], "Bps"),
  panel(0, "Catalog sync lag per peer", "timeseries", [('strait_peer_sync_lag_seconds', "{{cluster}} ← {{peer}}")], "s"),
  panel(0, "Catalog size", "timeseries", [('strait_catalog_services', "{{cluster}} services"), ('strait_catalog_endpoints', "{{cluster}} endpoints"), ('strait_config_clients', "{{cluster}} config clients")]),
  panel(0, "Sidecar refusals by reason", "timeseries", [(f'sum by (cluster, direction, reason) (rate(strait_refused_total[{R}]))', "{{cluster}} {{direction}} {{reason}}")], "ops"),
  panel(0, "DNS queries/s by response code", "timeseries", [(f'sum by (cluster, rcode) (rate(strait_dns_queries_total[{R}]))', "{{cluster}} {{rcode}}")], "qps"),
  panel(0, "CA: signings/s and issuer expiry", "timeseries", [(f'sum by (cluster) (rate(strait_ca_signings_total[{R}]))', "{{cluster}} signings/s"), ('strait_ca_issuer_expiry_timestamp_seconds - time()', "{{cluster}} issuer expires in (s)")]),
 ], [])
S = 'destination_service=~"$service"'
service = dash("strait-service", "Strait / Service",
 "One global service as its callers' sidecars see it: success rate, requests/s, p50/p99 per source and destination cluster, retries, ejections, failover.",
 [
  panel(0, "Success rate", "stat", [(f'1 - strait_service:error_ratio:rate5m{{{S}}}', "{{destination_service}}")], "percentunit"),
  panel(0, "Requests/s by response code", "timeseries", [(f'sum by (response_code) (rate(strait_requests_total{{direction="{OUT}",{S}}}[{R}]))', "{{response_code}}")], "reqps"),
  panel(0, "Requests/s by source → destination cluster", "timeseries", [(f'sum by (source_cluster, destination_cluster) (rate(strait_requests_total{{direction="{OUT}",{S}}}[{R}]))', "{{source_cluster}} → {{destination_cluster}}")], "reqps"),
  panel(0, "Latency p50 / p99 (callers)", "timeseries", [
      (f'histogram_quantile(0.5, sum by (le) (rate(strait_request_duration_seconds_bucket{{direction="{OUT}",{S}}}[{R}])))', "p50"),
      (f'histogram_quantile(0.99, sum by (le) (rate(strait_request_duration_seconds_bucket{{direction="{OUT}",{S}}}[{R}])))', "p99")], "s"),
  panel(0, "p99 by destination cluster", "timeseries", [(f'histogram_quantile(0.99, sum by (destination_cluster, le) (rate(strait_request_duration_seconds_bucket{{direction="{OUT}",{S}}}[{R}])))', "{{destination_cluster}}")], "s"),
  panel(0, "Inbound requests/s by calling cluster (servers)", "timeseries", [(f'sum by (source_cluster, destination_cluster) (rate(strait_requests_total{{direction="inbound",{S}}}[{R}]))', "{{source_cluster}} → {{destination_cluster}}")], "reqps"),
  panel(0, "Retries by decision", "timeseries", [(f'sum by (destination_cluster, reason) (strait_retries_total{{{S}}})', "{{destination_cluster}} {{reason}}")],
        desc="Cumulative retry decisions (retry, budget_exhausted, ...) by the cluster of the endpoint that failed."),
  panel(0, "Outlier ejections", "timeseries", [(f'sum by (destination_cluster, reason) (strait_outlier_ejections_total{{{S}}})', "{{destination_cluster}} {{reason}}")]),
  panel(0, "Failover (1 = active)", "table", [('max by (service, from, to) (strait_failover_active{service=~"$service"})', "")]),
 ], [var("service", "label_values(strait_requests_total, destination_service)")])
L = 'source_cluster=~"$source_cluster",destination_cluster=~"$destination_cluster"'
link = dash("strait-link", "Strait / Cluster link",
 "Traffic between a calling and a serving cluster: gateway bytes (the egress bill), tunnels, requests and latency over the link, and the catalog sync between their controllers.",
 [
  panel(0, "Bytes/s over the link", "timeseries", [(f'sum by (source_cluster, destination_cluster, direction) (rate(strait_gateway_bytes_total{{{L}}}[{R}]))', "{{source_cluster}} → {{destination_cluster}} {{direction}}")], "Bps"),
  panel(0, "Bytes/s by service", "timeseries", [(f'sum by (destination_service) (rate(strait_gateway_bytes_total{{{L}}}[{R}]))', "{{destination_service}}")], "Bps"),
  panel(0, "Tunnels/s by result", "timeseries", [(f'sum by (result) (rate(strait_gateway_tunnels_total{{{L}}}[{R}]))', "{{result}}")], "ops"),
  panel(0, "Requests/s over the link", "timeseries", [(f'sum by (destination_service, response_code) (rate(strait_requests_total{{direction="{OUT}",{L}}}[{R}]))', "{{destination_service}} {{response_code}}")], "reqps"),
  panel(0, "p99 latency over the link", "timeseries", [(f'histogram_quantile(0.99, sum by (destination_service, le) (rate(strait_request_duration_seconds_bucket{{direction="{OUT}",{L}}}[{R}])))', "{{destination_service}}")], "s"),
  panel(0, "Catalog sync: lag and stream up", "timeseries", [
      ('strait_peer_sync_lag_seconds{cluster=~"$source_cluster",peer=~"$destination_cluster"}', "{{cluster}} ← {{peer}} lag (s)"),
      ('strait_peer_up{cluster=~"$source_cluster",peer=~"$destination_cluster"}', "{{cluster}} ← {{peer}} up")]),
 ], [var("source_cluster", "label_values(strait_gateway_bytes_total, source_cluster)", "calling cluster"),
     var("destination_cluster", "label_values(strait_gateway_bytes_total, destination_cluster)", "serving cluster")])
C = 'cluster=~"$cluster"'
gateways = dash("strait-gateways", "Strait / Gateways",
 "East-west gateways per cluster: connections, tunnels, refusals, bytes and tunnel set-up time. Per-service figures come from the CONNECT authority, never from the encrypted payload.",
 [
  panel(0, "Tunnels open", "timeseries", [(f'strait_gateway_tunnels_active{{{C}}}', "{{cluster}} {{instance}}")]),
  panel(0, "Client connections open", "timeseries", [(f'strait_gateway_connections_active{{{C}}}', "{{cluster}} {{instance}}")]),
  panel(0, "Tunnels/s by calling cluster and result", "timeseries", [(f'sum by (source_cluster, result) (rate(strait_gateway_tunnels_total{{{C}}}[{R}]))', "{{source_cluster}} {{result}}")], "ops"),
  panel(0, "Connections refused by reason", "timeseries", [(f'sum by (instance, reason) (strait_gateway_connections_refused_total{{{C}}})', "{{instance}} {{reason}}")],
        desc="Cumulative: TLS handshake failures, limits, first-request timeouts."),
  panel(0, "Bytes/s by calling cluster", "timeseries", [(f'sum by (source_cluster, direction) (rate(strait_gateway_bytes_total{{{C}}}[{R}]))', "{{source_cluster}} {{direction}}")], "Bps"),
  panel(0, "Tunnel set-up p99", "timeseries", [(f'histogram_quantile(0.99, sum by (instance, le) (rate(strait_gateway_tunnel_setup_seconds_bucket{{{C}}}[{R}])))', "{{instance}}")], "s"),
 ], [var("cluster", "label_values(strait_gateway_tunnels_active, cluster)")])
d = os.path.dirname(os.path.abspath(__file__))
for name, obj in [("mesh-overview", overview), ("service", service), ("cluster-link", link), ("gateways", gateways)]:
    with open(os.path.join(d, name + ".json"), "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False); f.write("\n")

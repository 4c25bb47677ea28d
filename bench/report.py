#!/usr/bin/env python3
"""Turns one benchmark run into results.md, results.json and docs/performance.md.

Input (in OUT): reference.md (bench/reference-bench.sh), tls.json, memory.json
and, when bench/capture.sh ran, capture/ (bench/capture_report.py).
Ratios are computed from numbers of the same run only.
"""
import json
import os
import re
import sys

sys.dont_write_bytecode = True  # no bench/__pycache__ from the import below
from capture_report import section as capture_section
from capture_report import summarize as capture_summarize

out, doc = sys.argv[1], sys.argv[2]
ref = open(os.path.join(out, "reference.md")).read()
tls = json.load(open(os.path.join(out, "tls.json")))
mem = json.load(open(os.path.join(out, "memory.json")))
CAND = "strait_2hop_mtls"
XC = "strait_xcluster_mtls"
tunnel_path = os.path.join(out, "tunnel.json")
tunnel = json.load(open(tunnel_path)) if os.path.exists(tunnel_path) else {}
observe_path = os.path.join(out, "observe.json")
observe = json.load(open(observe_path)) if os.path.exists(observe_path) else {}
host_path = os.path.join(out, "host.json")
hostinfo = json.load(open(host_path)) if os.path.exists(host_path) else {}


def tables(md):
    """Markdown tables by the section heading above them: heading -> rows of dicts."""
    res, head, cols = {}, None, None
    for line in md.splitlines():
        if line.startswith("## "):
            head, cols = line[3:].strip(), None
        elif line.startswith("|") and head:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cols is None:
                cols = cells
            elif not set(line) <= set("|-: "):
                res.setdefault(head, []).append(dict(zip(cols, cells)))
    return res


def num(v):
    m = re.match(r"^[-+]?[0-9.]+", v or "")
    return float(m.group(0)) if m else None


def ms(v):
    """wrk latency ('812.00us', '1.2ms', '1s') in ms."""
    if not v:
        return None
    m = re.match(r"^([0-9.]+)(us|ms|s)$", v)
    if not m:
        return None
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]


t = tables(ref)
data = {"reference_markdown": "reference.md", "tls": tls, "memory": mem, "sections": t}
summary = {}


def find(section_prefix):
    for k, rows in t.items():
        if k.startswith(section_prefix):
            return {r.get("stage", r.get("path", r.get("mode"))): r for r in rows}
    return {}


wrk = find("1. wrk")
if wrk:
    d, h, hp, c = (wrk.get(k, {}) for k in ("direct", "haproxy_2hop_mtls_http", "haproxy_2hop_plain", CAND))
    rps = lambda r: num(r.get("req/s"))
    if rps(c) and rps(h):
        summary["http1_rps"] = {"direct": rps(d), "haproxy_mtls_pair": rps(h), "haproxy_plain_pair": rps(hp), "strait_mtls_pair": rps(c)}
        summary["http1_ratio_vs_haproxy_mtls"] = rps(c) / rps(h)
        summary["http1_ratio_vs_haproxy_plain"] = rps(c) / rps(hp) if rps(hp) else None
        summary["http1_ratio_vs_direct"] = rps(c) / rps(d) if rps(d) else None
        summary["vcpu_per_1k_rps"] = {"haproxy_mtls_pair": num(h.get("proxy vCPU per 1k rps")), "strait_mtls_pair": num(c.get("proxy vCPU per 1k rps"))}
        summary["rss_mb_now_peak_50_conns"] = c.get("proxy RSS now/peak MB")
        peak = num((c.get("proxy RSS now/peak MB") or "").split("/")[-1])
        summary["rss_peak_mib_per_sidecar_50_conns"] = peak / 2 if peak else None  # the script reports KiB/1024
    x = wrk.get(XC, {})
    if rps(x) and rps(c):
        summary["xcluster_http1_rps"] = rps(x)
        summary["xcluster_http1_ratio_vs_pair"] = rps(x) / rps(c)
        summary["xcluster_http1_ratio_vs_direct"] = rps(x) / rps(d) if rps(d) else None
levels = [r for k, rows in t.items() if k.startswith("1b.") for r in rows]
if levels:
    by = {}
    for r in levels:
        by.setdefault(r.get("conns"), {})[r.get("stage")] = r
    summary["concurrency_levels"] = {
        n: {stage: {"rps": num(r.get("req/s")), "p50_ms": ms(r.get("p50")), "p99_ms": ms(r.get("p99"))} for stage, r in rows.items()}
        for n, rows in by.items()}
oha = find("2. oha")
if oha:
    d, c, h = oha.get("direct", {}), oha.get(CAND, {}), oha.get("haproxy_2hop_mtls_http", {})
    added = {}
    for p in ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms"):
        if num(c.get(p)) is not None and num(d.get(p)) is not None:
            added[p.replace(" ms", "")] = {"strait": num(c.get(p)) - num(d.get(p)),
                                          "haproxy": (num(h.get(p)) - num(d.get(p))) if num(h.get(p)) is not None else None}
    summary["fixed_rate_added_latency_ms"] = added
    x = oha.get(XC, {})
    if num(x.get("p50 ms")) is not None and num(d.get("p50 ms")) is not None:
        summary["xcluster_fixed_rate_added_ms"] = {
            p.replace(" ms", ""): num(x.get(p)) - num(d.get(p)) for p in ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms") if num(x.get(p)) is not None}
        summary["gateway_hop_added_p50_ms"] = num(x.get("p50 ms")) - num(c.get("p50 ms")) if num(c.get("p50 ms")) is not None else None
    summary["fixed_rate_vcpu_per_1k_rps"] = {"strait": num(c.get("proxy vCPU per 1k rps")), "haproxy": num(h.get("proxy vCPU per 1k rps"))}
h2 = find("3. h2load")
if h2:
    d, c, h = h2.get("direct_h2", {}), h2.get(CAND + "_h2", {}), h2.get("haproxy_2hop_mtls_h2", {})
    if num(c.get("req/s")) and num(d.get("req/s")):
        summary["http2_ratio_vs_direct"] = num(c.get("req/s")) / num(d.get("req/s"))
        summary["http2_haproxy_ratio_vs_direct"] = num(h.get("req/s")) / num(d.get("req/s")) if num(h.get("req/s")) else None
        x = h2.get(XC + "_h2", {})
        summary["xcluster_http2_ratio_vs_direct"] = num(x.get("req/s")) / num(d.get("req/s")) if num(x.get("req/s")) else None
ip = find("4. iperf3")
if ip:
    summary["tcp_gbit_s"] = {k: num(v.get("Gbit/s (receiver)")) for k, v in ip.items()}
    c = ip.get(CAND + "_l4", {})
    summary["tcp_cpu_s_per_gb"] = {"strait": num(c.get("sidecar CPU s per GB")), "haproxy": num(ip.get("haproxy_2hop_mtls_l4tunnel", {}).get("sidecar CPU s per GB"))}
st = find("5. openssl s_time")
if st:
    summary["haproxy_server_handshake_cpu_ms"] = num(st.get("new", {}).get("server sidecar CPU ms per handshake"))
summary["strait_server_handshake_cpu_ms"] = tls.get("full_handshake_server_cpu_ms")
summary["strait_idle_rss_mib_1000_services"] = mem.get("idle_rss_mib")
if tunnel:
    summary["tunnel"] = tunnel
capture = capture_summarize(out)
if capture:
    data["capture"] = capture
    if "wrk" in capture:
        summary["capture_vs_explicit_http1_rps_ratio"] = capture["wrk"]["rps_ratio"]
    if "oha" in capture:
        summary["capture_added_p50_ms"] = capture["oha"]["p50_added_ms"]
data["summary"] = summary
json.dump(data, open(os.path.join(out, "results.json"), "w"), indent=2)

host = next((l for l in ref.splitlines() if l.startswith("Host:")), "")
tools = next((l for l in ref.splitlines() if l.startswith("nginx ")), "")


def f(x, n=2):
    return "-" if x is None else f"{x:.{n}f}"


lines = ["# Performance", "",
         "Latest run of `scripts/bench.sh` (every number below comes from that one run; ratios compare",
         "numbers measured side by side in it). Machine: " + host.replace("Host: ", ""), "", tools, ""]
if "build" in hostinfo:
    lines += [f"Strait binary: {hostinfo['build']}.", ""]
if "steal_pct" in hostinfo:
    lines += [f"CPU time taken by the hypervisor (steal) while the benchmarks ran: {hostinfo['steal_pct']}% of the VM's CPU time.", ""]
lines += [
         "## Summary", "", "| measure | Strait | HAProxy (same run) | target |", "|---|---|---|---|"]
s = summary
if "http1_rps" in s:
    r = s["http1_rps"]
    lines.append(f"| HTTP/1.1 mTLS pair, wrk 50 conns, req/s | {f(r['strait_mtls_pair'],0)} ({f(s['http1_ratio_vs_direct'],3)}x direct) | {f(r['haproxy_mtls_pair'],0)} ({f(r['haproxy_mtls_pair']/r['direct'],3)}x direct) | >= 1.5x HAProxy mTLS pair: **{f(s['http1_ratio_vs_haproxy_mtls'],2)}x** |")
    lines.append(f"| ... vs HAProxy plaintext pair | {f(s['http1_ratio_vs_haproxy_plain'],2)}x | {f(r['haproxy_plain_pair'],0)} req/s | stretch >= 1.0x |")
    v = s["vcpu_per_1k_rps"]
    lines.append(f"| vCPU per 1,000 req/s (both sidecars), closed loop | {f(v['strait_mtls_pair'],3)} | {f(v['haproxy_mtls_pair'],3)} | <= 0.12 |")
    lines.append(f"| RSS now/peak MB, both sidecars, 50 TLS conns | {s['rss_mb_now_peak_50_conns']} (peak {f(s.get('rss_peak_mib_per_sidecar_50_conns'),1)} MiB per sidecar) | | <= 20 MiB per sidecar |")
for p, v in s.get("fixed_rate_added_latency_ms", {}).items():
    tgt = {"p50": "<= 0.2 ms", "p99": "<= 0.35 ms", "p99.9": "<= 1 ms"}.get(p, "")
    lines.append(f"| added latency over direct at fixed rate, {p} | {f(v['strait'],3)} ms | {f(v['haproxy'],3)} ms | {tgt} |")
if "fixed_rate_vcpu_per_1k_rps" in s:
    v = s["fixed_rate_vcpu_per_1k_rps"]
    lines.append(f"| vCPU per 1,000 req/s at fixed rate | {f(v['strait'],3)} | {f(v['haproxy'],3)} | <= 0.12 |")
if "http2_ratio_vs_direct" in s:
    h2x = s['http2_ratio_vs_direct'] / s['http2_haproxy_ratio_vs_direct'] if s.get('http2_haproxy_ratio_vs_direct') else None
    lines.append(f"| HTTP/2 pair vs direct (h2load) | {f(s['http2_ratio_vs_direct'],3)}x | {f(s['http2_haproxy_ratio_vs_direct'],3)}x | >= 1.1x HAProxy mTLS pair: **{f(h2x,2)}x** |")
if "tcp_gbit_s" in s:
    g = s["tcp_gbit_s"]
    lines.append(f"| one TCP stream through the pair, Gbit/s | {f(g.get(CAND + '_l4'))} (direct {f(g.get('direct'))}) | {f(g.get('haproxy_2hop_mtls_l4tunnel'))} | >= 5 |")
    c = s["tcp_cpu_s_per_gb"]
    lines.append(f"| CPU-s per GB, both sidecars | {f(c['strait'],3)} | {f(c['haproxy'],3)} | <= 1.2 |")
if "xcluster_http1_rps" in s:
    lines.append(f"| cross-cluster path (sidecar, gateway, sidecar), wrk 50 conns, req/s | {f(s['xcluster_http1_rps'],0)} ({f(s['xcluster_http1_ratio_vs_direct'],3)}x direct, {f(s['xcluster_http1_ratio_vs_pair'],2)}x the pair) | | |")
for p, v in s.get("xcluster_fixed_rate_added_ms", {}).items():
    tgt = {"p50": "<= 0.4 ms"}.get(p, "")
    lines.append(f"| cross-cluster added latency over direct at fixed rate, {p} | {f(v,3)} ms | | {tgt} |")
if s.get("gateway_hop_added_p50_ms") is not None:
    lines.append(f"| gateway hop over the same-cluster pair at fixed rate, p50 | {f(s['gateway_hop_added_p50_ms'],3)} ms | | <= 0.15 ms |")
if s.get("xcluster_http2_ratio_vs_direct") is not None:
    lines.append(f"| cross-cluster HTTP/2 vs direct (h2load) | {f(s['xcluster_http2_ratio_vs_direct'],3)}x | | |")
if "tcp_gbit_s" in s and s["tcp_gbit_s"].get(XC + "_l4") is not None:
    lines.append(f"| one TCP stream through the cross-cluster tunnel, Gbit/s | {f(s['tcp_gbit_s'].get(XC + '_l4'))} | | >= 3 |")
if tunnel:
    lines.append(f"| new tunnel (outer mTLS + CONNECT + inner mTLS + h2) to first response, p50 | {f(tunnel.get('new_tunnel_p50_ms'),3)} ms | | < 1.5 ms |")
    lines.append(f"| new CONNECT stream + inner mTLS on a pooled gateway connection, p50 | {f(tunnel.get('new_stream_p50_ms'),3)} ms | | |")
for n, rows in sorted(s.get("concurrency_levels", {}).items(), key=lambda kv: int(kv[0] or 0)):
    d, h, c, x = (rows.get(k, {}) for k in ("direct", "haproxy_2hop_mtls_http", CAND, XC))
    if c.get("rps") and d.get("rps"):
        hx = f"{f(h.get('rps'),0)} req/s, p50 +{f((h.get('p50_ms') or 0) - (d.get('p50_ms') or 0),3)} ms" if h.get("rps") else "-"
        xx = f"; cross-cluster {f(x.get('rps'),0)} req/s, p50 +{f((x.get('p50_ms') or 0) - (d.get('p50_ms') or 0),3)} ms" if x.get("rps") else ""
        lines.append(f"| wrk {n} conn(s): pair req/s, p50 added over direct | {f(c['rps'],0)} req/s ({f(c['rps']/d['rps'],3)}x direct), p50 +{f((c.get('p50_ms') or 0) - (d.get('p50_ms') or 0),3)} ms{xx} | {hx} | |")
if capture and "wrk" in capture:
    lines.append(f"| transparent capture vs the explicit VIP, same pair, wrk req/s | {f(capture['wrk']['rps_ratio'],3)}x (section below) | | >= 0.95x |")
if capture and "oha" in capture:
    lines.append(f"| transparent capture vs the explicit VIP, added p50 at fixed rate | {capture['oha']['p50_added_ms']:+.4f} ms | | <= +0.02 ms |")
if observe:
    lines.append(f"| access log + tracing at 1% sampling vs neither, same pair, throughput (bench/observe.sh) | {f(observe.get('ratio'),3)}x ({f(observe.get('observed_median_rps'),0)} vs {f(observe.get('plain_median_rps'),0)} req/s, medians, {observe.get('spans_received')} spans exported) | | >= 0.95x |")
    if observe.get("cost_ratio"):
        lines.append(f"| ... the same, both pairs at once: sidecar CPU per request, observed over plain (median of {len(observe.get('paired_cost_ratios', []))} rounds) | {f(observe.get('cost_ratio'),3)}x | | |")
lines.append(f"| server-side full mTLS handshake CPU | {f(s.get('strait_server_handshake_cpu_ms'),3)} ms (in memory) | {f(s.get('haproxy_server_handshake_cpu_ms'),3)} ms (s_time) | <= 0.4 ms |")
lines.append(f"| idle sidecar RSS, 1,000-service snapshot ({mem.get('services')} VIP listeners) | {f(mem.get('idle_rss_mib'),1)} MiB | | <= 20 MiB |")
if capture:
    lines += [""] + capture_section(capture)[:-1]
lines += ["", "## TLS micro-benchmarks (rustls, ring, the sidecars' own config, one core)", "",
          f"- full handshakes/s (client+server in one thread): {f(tls['full_handshakes_per_sec'],0)}; server CPU {f(tls['full_handshake_server_cpu_ms'],3)} ms each",
          f"- resumed handshakes/s: {f(tls['resumed_handshakes_per_sec'],0)}; server CPU {f(tls['resumed_handshake_server_cpu_ms'],3)} ms each",
          f"- bulk encrypt+decrypt: {f(tls['bulk_encrypt_decrypt_mb_per_sec'],0)} MB/s ({tls['cipher']})", "",
          "## Full reference output", "", ref.split("\n", 1)[1] if "\n" in ref else ref, "",
          "## Reproduce", "", "```sh", "./scripts/bench.sh    # installs nginx haproxy wrk nghttp2-client iperf3 when run as root", "```", ""]
open(os.path.join(out, "results.md"), "w").write("\n".join(lines))
# Sections other tools maintain (e.g. the federation scale bench) stay.
tail = ""
if os.path.exists(doc):
    old = open(doc).read()
    i = old.find("\n## Federation scale")
    if i >= 0:
        tail = old[i:]
open(doc, "w").write("\n".join(lines).rstrip("\n") + "\n" + tail)
print("\n".join(lines[:40]))

#!/usr/bin/env python3
"""Capture vs explicit (bench/capture.sh): the summary and the section of
docs/performance.md.

As a library (bench/report.py): summarize(OUT) and section(summary).
As a script, `capture_report.py OUT DOC` (ONLY=capture in scripts/bench.sh):
writes OUT/capture.json and replaces only the "Capture vs explicit"
section of DOC, leaving the rest of the page (another run's figures) as is.
Ratios pair measurements of the same round only.
"""
import json
import os
import re
import statistics
import sys

HEAD = "## Capture vs explicit"
TARGET_RPS_RATIO = 0.95
TARGET_P50_ADDED_MS = 0.02
# CAPTURE_DIAG=1's extra ways, each compared with explicit in its round.
DIAG = {"explicit_rules": "explicit with the capture rules installed (VIP excluded)",
        "capture_notrack": "capture, the sidecar's own traffic off loopback exempt from conntrack"}


def _wrk(path):
    text = open(path).read()

    def lat(p):
        m = re.search(r"^\s+%s%%\s+([0-9.]+)(us|ms|s)\s*$" % p, text, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    reqs = re.search(r"^\s*([0-9]+) requests in", text, re.M)
    errs = 0
    for m in re.finditer(r"(Non-2xx or 3xx responses|Socket errors):(.*)", text):
        errs += sum(int(n) for n in re.findall(r"[0-9]+", m.group(2)))
    return {"rps": float(rps.group(1)) if rps else None, "requests": int(reqs.group(1)) if reqs else 0,
            "p50_ms": lat(50), "p99_ms": lat(99), "errors": errs}


def _oha(path):
    d = json.load(open(path))
    p = d["latencyPercentiles"]
    n = sum(d.get("statusCodeDistribution", {}).values())
    ms = lambda k: p[k] * 1e3 if p.get(k) is not None else None
    return {"rps": d["summary"].get("requestsPerSec"), "requests": n, "p50_ms": ms("p50"), "p90_ms": ms("p90"),
            "p99_ms": ms("p99"), "p99.9_ms": ms("p99.9"), "errors": sum(d.get("errorDistribution", {}).values())}


def summarize(out):
    """OUT/capture/{runs.tsv,meta.json,raw/} -> the summary dict (None when the part did not run)."""
    base = os.path.join(out, "capture")
    runs_path = os.path.join(base, "runs.tsv")
    if not os.path.exists(runs_path):
        return None
    meta = json.load(open(os.path.join(base, "meta.json")))
    runs = []
    for line in open(runs_path):
        tool, mode, rnd, f, ticks, hz, redirected, tracked = line.rstrip("\n").split("\t")
        m = (_oha if tool == "oha" else _wrk)(os.path.join(base, "raw", f))
        m.update(tool=tool, mode=mode, round=int(rnd), redirected=int(redirected), conntrack=tracked)
        m["sidecar_cpu_us_per_req"] = int(ticks) / int(hz) / m["requests"] * 1e6 if m["requests"] else None
        runs.append(m)
    s = {"meta": meta, "runs": runs}
    for tool in ("wrk", "oha", "wrkclose"):
        by = {(r["mode"], r["round"]): r for r in runs if r["tool"] == tool}
        rounds = sorted({r for (mode, r) in by if mode == "capture" and ("explicit", r) in by})
        if not rounds:
            continue
        pairs = [(by[("explicit", r)], by[("capture", r)]) for r in rounds]
        t = {"rounds": len(rounds), "direct": by.get(("direct", 0))}
        for mode, i in (("explicit", 0), ("capture", 1)):
            t[mode] = {k: statistics.median(p[i][k] for p in pairs) for k in ("rps", "p50_ms", "p99_ms", "sidecar_cpu_us_per_req")
                       if all(p[i][k] is not None for p in pairs)}
            t[mode]["errors"] = sum(p[i]["errors"] for p in pairs)
        t["rps_ratio"] = sum(c["rps"] for _, c in pairs) / sum(e["rps"] for e, _ in pairs)
        t["rps_ratio_per_round"] = [c["rps"] / e["rps"] for e, c in pairs]
        t["p50_added_ms"] = statistics.median(c["p50_ms"] - e["p50_ms"] for e, c in pairs)
        t["p50_added_ms_per_round"] = [c["p50_ms"] - e["p50_ms"] for e, c in pairs]
        t["p99_added_ms"] = statistics.median(c["p99_ms"] - e["p99_ms"] for e, c in pairs)
        for dm in DIAG:
            diag = [(by[("explicit", r)], by[(dm, r)]) for r in rounds if (dm, r) in by]
            if not diag:
                continue
            t[dm] = {
                "rps": statistics.median(d["rps"] for _, d in diag),
                "p50_ms": statistics.median(d["p50_ms"] for _, d in diag),
                "sidecar_cpu_us_per_req": statistics.median(d["sidecar_cpu_us_per_req"] for _, d in diag),
                "rps_ratio": sum(d["rps"] for _, d in diag) / sum(e["rps"] for e, _ in diag),
                "p50_added_ms": statistics.median(d["p50_ms"] - e["p50_ms"] for e, d in diag),
                "errors": sum(d["errors"] for _, d in diag)}
        s[tool] = t
    if "wrk" in s:
        s["throughput_target_met"] = s["wrk"]["rps_ratio"] >= 1 - 0.05
    if "oha" in s:
        s["p50_target_met"] = s["oha"]["p50_added_ms"] <= TARGET_P50_ADDED_MS
    return s


def _f(x, n=2):
    return "-" if x is None else f"{x:.{n}f}"


def _met(ok):
    return "-" if ok is None else ("**met**" if ok else "**missed**")


def section(s, alone=False):
    """The markdown lines of the section (a heading first); `alone`: from a
    run of this part alone, not the run the rest of the page shows."""
    m = s["meta"]
    lines = [HEAD, "",
             ("From a run of this part alone (`ONLY=capture`), not the run the rest of this page shows: "
              "compare its figures with each other only. " if alone else "") +
             f"`bench/capture.sh` (run by `scripts/bench.sh`; `ONLY=capture scripts/bench.sh` runs it alone), {m['date']}. "
             f"Strait binary: {m.get('build', '?')}. Machine: {m['host']}; load generator on CPU {m['loadgen_cpus']}, "
             f"both sidecars and nginx on CPU {m['server_cpus']}; CPU time taken by the hypervisor (steal) meanwhile: {m['steal_pct']}%.",
             "",
             "The same sidecar pair, reached two ways by the same unprivileged load generator in a pod namespace "
             "(10.173.0.1) whose server sidecar and nginx sit in a second namespace (10.173.0.2) behind a veth pair: "
             "**explicit**, the app dials the service VIP (127.173.0.1:8080) where the client sidecar listens, no nftables "
             "in the pod; **capture**, the app dials the server's real address (10.173.0.2:8080) and the rules of "
             "`strait proxy capture install --netns <pod> --proxy-uid 0` redirect it to the sidecar's capture listener, "
             "which reads the original destination and takes the VIP's path from there. Every capture measurement "
             "checks on the rule's counter that each load connection was redirected. Explicit and capture alternate "
             f"over {s.get('wrk', s.get('oha', {})).get('rounds', '?')} round(s), the order reversed every other round (ABBA), "
             "the rules installed and removed around each capture measurement; medians over the rounds, ratios and "
             "differences paired within a round. Rows marked diagnosis (`CAPTURE_DIAG=1`) and the new-connection row "
             "(`CAPTURE_CLOSE=1`) run only when asked for.",
             "", "| measure | explicit (VIP) | capture | capture vs explicit | target |", "|---|---|---|---|---|"]
    w = s.get("wrk")
    if w:
        e, c = w["explicit"], w["capture"]
        lines.append(f"| wrk {m['conns']} conns, {m['duration']}, HTTP/1.1 keep-alive: req/s | {_f(e.get('rps'), 0)} | {_f(c.get('rps'), 0)} | "
                     f"{_f(w['rps_ratio'], 3)}x (rounds: {', '.join(_f(x, 3) for x in w['rps_ratio_per_round'])}) | >= 0.95x: {_met(s.get('throughput_target_met'))} |")
        lines.append(f"| wrk p50 / p99 ms | {_f(e.get('p50_ms'), 3)} / {_f(e.get('p99_ms'), 3)} | {_f(c.get('p50_ms'), 3)} / {_f(c.get('p99_ms'), 3)} | "
                     f"p50 {w['p50_added_ms']:+.3f} ms, p99 {w['p99_added_ms']:+.3f} ms | |")
        lines.append(f"| both sidecars' CPU per request (wrk), us | {_f(e.get('sidecar_cpu_us_per_req'))} | {_f(c.get('sidecar_cpu_us_per_req'))} | "
                     f"{_f((c.get('sidecar_cpu_us_per_req') or 0) / e['sidecar_cpu_us_per_req'], 3) if e.get('sidecar_cpu_us_per_req') else '-'}x | |")
    k = s.get("wrkclose")
    if k:
        e, c = k["explicit"], k["capture"]
        lines.append(f"| wrk, a new connection per request (`Connection: close`), {m['conns']} conns, {m.get('close_duration', '?')}: req/s | {_f(e.get('rps'), 0)} | {_f(c.get('rps'), 0)} | "
                     f"{_f(k['rps_ratio'], 3)}x (rounds: {', '.join(_f(x, 3) for x in k['rps_ratio_per_round'])}) | |")
        lines.append(f"| ... both sidecars' CPU per request, us | {_f(e.get('sidecar_cpu_us_per_req'))} | {_f(c.get('sidecar_cpu_us_per_req'))} | "
                     f"{_f((c.get('sidecar_cpu_us_per_req') or 0) - (e.get('sidecar_cpu_us_per_req') or 0), 1)} us more | |")
    o = s.get("oha")
    if o:
        e, c = o["explicit"], o["capture"]
        lines.append(f"| strait-bench oha, {m['rate']} req/s fixed rate, {m['conns']} conns, latency-corrected: p50 ms | {_f(e.get('p50_ms'), 3)} | {_f(c.get('p50_ms'), 3)} | "
                     f"{o['p50_added_ms']:+.4f} ms (rounds: {', '.join(f'{x:+.3f}' for x in o['p50_added_ms_per_round'])}) | <= +0.02 ms: {_met(s.get('p50_target_met'))} |")
        lines.append(f"| ... p99 ms | {_f(e.get('p99_ms'), 3)} | {_f(c.get('p99_ms'), 3)} | {o['p99_added_ms']:+.3f} ms | |")
        lines.append(f"| both sidecars' CPU per request (fixed rate), us | {_f(e.get('sidecar_cpu_us_per_req'))} | {_f(c.get('sidecar_cpu_us_per_req'))} | | |")
    for (dm, desc), (tool, what) in ((d, w) for d in DIAG.items() for w in (("wrk", "req/s"), ("oha", "fixed-rate p50 ms"))):
        d = s.get(tool, {}).get(dm)
        if d:
            lines.append(f"| diagnosis ({dm}), {tool}: {desc}, {what} | | {_f(d['rps'] if tool == 'wrk' else d['p50_ms'], 0 if tool == 'wrk' else 3)} | "
                         f"{_f(d['rps_ratio'], 3)}x req/s, p50 {d['p50_added_ms']:+.3f} ms, sidecars {_f(d['sidecar_cpu_us_per_req'])} us/req | |")
    errs = sum(s[t][k]["errors"] for t in ("wrk", "oha", "wrkclose") if t in s for k in ("explicit", "capture", *DIAG) if k in s[t])
    lines += ["", f"Errors (non-2xx, socket errors) over all these measurements: {errs}."]
    dw, do = (w or {}).get("direct"), (o or {}).get("direct")
    if dw or do:
        lines += ["", "For scale, the same load generators straight at nginx over the veth pair (no sidecars, no rules), once: "
                  + "; ".join(x for x in (
                      f"wrk {_f(dw['rps'], 0)} req/s, p50 {_f(dw['p50_ms'], 3)} ms" if dw else "",
                      f"fixed rate p50 {_f(do['p50_ms'], 3)} ms, p99 {_f(do['p99_ms'], 3)} ms" if do else "") if x) + "."]
    lines += ["", "| tool | round | mode | req/s | p50 ms | p99 ms | sidecars' CPU us/req | connections redirected |",
              "|---|---|---|---|---|---|---|---|"]
    for r in s["runs"]:
        lines.append(f"| {r['tool']} | {r['round']} | {r['mode']} | {_f(r['rps'], 0)} | {_f(r['p50_ms'], 3)} | {_f(r['p99_ms'], 3)} | "
                     f"{_f(r['sidecar_cpu_us_per_req']) if r['mode'] != 'direct' else '-'} | {r['redirected'] if r['mode'].startswith('capture') else '-'} |")
    lines += ["", "The host is shared (another engineer's builds and tests run meanwhile), so single figures move by "
              "several percent from run to run; the alternation puts that noise on both paths alike, and the per-round "
              "ratios show how far it reaches.", ""]
    return lines


def splice(doc_text, lines):
    """doc_text with the section replaced by `lines` (or inserted before the
    TLS micro-benchmarks, or appended)."""
    block = "\n".join(lines).rstrip("\n") + "\n"
    i = doc_text.find("\n" + HEAD + "\n")  # the heading line itself, not a longer one
    if i >= 0:
        j = doc_text.find("\n## ", i + 1)
        return doc_text[:i + 1] + block + (doc_text[j:] if j >= 0 else "")
    for anchor in ("\n## TLS micro-benchmarks", "\n## Full reference output", "\n## Federation scale"):
        j = doc_text.find(anchor)
        if j >= 0:
            return doc_text[:j + 1] + block + doc_text[j:]
    return doc_text.rstrip("\n") + "\n\n" + block


if __name__ == "__main__":
    out, doc = sys.argv[1], sys.argv[2]
    s = summarize(out)
    if s is None:
        sys.exit(f"no capture results in {out}/capture")
    json.dump(s, open(os.path.join(out, "capture.json"), "w"), indent=2)
    old = open(doc).read() if os.path.exists(doc) else "# Performance\n"
    open(doc, "w").write(splice(old, section(s, alone=True)))
    print("\n".join(section(s, alone=True)[:16]))

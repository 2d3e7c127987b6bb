#!/usr/bin/env python3
"""The GPU data path's targets, from one GPU run's benchmark JSON objects.

    bench/gpu-targets.py DIR [--json OUT]

DIR holds `epx-bench --device cuda --device-timing --json` objects (what
bench/gpu-run.sh writes to bench/results/<stamp>/).  Each run is keyed by
its configuration (mode, tokens, wire, layout, CUDA graph) and its kernel
set (`config.kernels`, EPX_CUDA_KERNELS); per kernel set the targets:

  HT 128 tokens, bf16, token-major: dispatch and combine device span at
      most 1.2 x the sm-copy row (a copy on the engine's SMs);
  LL 128 tokens, bf16: dispatch at most 115 us, combine at most 170 us
      (eager or CUDA graph, the better);
  HT 4096 tokens, bf16, token-major: at least 85 % of the sm-copy row;
  fp8 dispatch faster than bf16 (HT 4096, LL 128);
  every run verified bit for bit against the host reference.

A target whose runs are missing reads "no run".  Standard library only
(the GPU machine has python3, not the project's venv).  Exit 0 always:
the verdicts are figures to record, not a test.
"""

import json
import os
import sys


def load(d):
    runs = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, name)) as f:
                j = json.load(f)
        except (OSError, ValueError):
            continue
        c = j.get("config", {})
        if c.get("device") != "cuda" or not c.get("device_timing"):
            continue
        res = {r["impl"]: r for r in j.get("results", []) if "skipped" not in r and "failed" not in r}
        runs.append({
            "file": name,
            "mode": c.get("mode"),
            "tokens": (c.get("tokens_per_rank") or [0])[0],
            "wire": c.get("wire"),
            "layout": c.get("layout"),
            "graph": bool(c.get("cuda_graph")),
            "kernels": c.get("kernels", "classic"),
            "gpu": c.get("gpu"),
            "verified": bool(j.get("verified")),
            "res": res,
        })
    return runs


def span(run, phase, impl="epx-cuda"):
    r = run["res"].get(impl, {})
    return r.get(f"{phase}_device_span_us")


def pick(runs, kernels, mode, tokens, wire, layout=None, graph=None):
    out = [r for r in runs if r["kernels"] == kernels and r["mode"] == mode and
           r["tokens"] == tokens and r["wire"] == wire and
           (layout is None or r["layout"] == layout) and (graph is None or r["graph"] == graph)]
    return out


def fmt(x, unit=""):
    return "-" if x is None else f"{x:.1f}{unit}" if unit else f"{x:.3f}"


def cell(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}" if x < 10 else f"{x:.1f}"
    return str(x)


def targets(runs, k):
    rows = []

    def add(name, value, limit, ok, note=""):
        rows.append({"kernels": k, "target": name, "value": value, "limit": limit,
                     "verdict": "no run" if ok is None else "met" if ok else "missed", "note": note})

    for tokens, frac in ((128, False), (4096, True)):
        rs = pick(runs, k, "ht", tokens, "bf16", "token", False)
        for ph in ("dispatch", "combine"):
            vals = [r["res"].get("epx-cuda", {}).get(f"{ph}_device_x_sm_copy") for r in rs]
            vals = [v for v in vals if v is not None]
            v = min(vals) if vals else None
            note = "" if v is None else f"span {fmt(span(rs[0], ph), ' us')}"
            if frac:   # the share of the sm-copy row's rate
                v = None if v is None else 1 / v
                add(f"HT {tokens} bf16 {ph}: share of sm-copy >= 0.85", v, 0.85,
                    None if v is None else v >= 0.85, note)
            else:
                add(f"HT {tokens} bf16 {ph}: x sm-copy <= 1.2", v, 1.2,
                    None if v is None else v <= 1.2, note)
    for ph, lim in (("dispatch", 115.0), ("combine", 170.0)):
        best, note = None, ""
        for r in pick(runs, k, "ll", 128, "bf16"):
            v = span(r, ph)
            if v is not None and (best is None or v < best):
                best, note = v, "graph" if r["graph"] else "eager"
        add(f"LL 128 bf16 {ph} us <= {lim:.0f}", best, lim, None if best is None else best <= lim, note)
    for mode, tokens, layout in (("ht", 4096, "token"), ("ll", 128, None)):
        b = pick(runs, k, mode, tokens, "bf16", layout, False)
        f = pick(runs, k, mode, tokens, "fp8", layout, False)
        vb = span(b[0], "dispatch") if b else None
        vf = span(f[0], "dispatch") if f else None
        ok = None if vb is None or vf is None else vf < vb
        add(f"{mode.upper()} {tokens} fp8 dispatch us < bf16's", vf, vb, ok)
    mine = [r for r in runs if r["kernels"] == k]
    bad = [r["file"] for r in mine if not r["verified"]]
    add("every run verified", len(mine) - len(bad), len(mine), None if not mine else not bad,
        ("not verified: " + ", ".join(bad)) if bad else "")
    return rows


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    d, out = args[0], None
    if "--json" in args:
        out = args[args.index("--json") + 1]
    runs = load(d)
    sets = sorted({r["kernels"] for r in runs}) or ["classic"]
    rows = [row for k in sets for row in targets(runs, k)]
    gpus = sorted({r["gpu"] for r in runs if r["gpu"]})
    print(f"# GPU data-path targets: {len(runs)} device-timing runs in {d}; gpu: {', '.join(gpus) or '-'}")
    print(f"# {'kernels':8} {'target':46} {'value':>9} {'limit':>9}  verdict  note")
    for r in rows:
        v, lim = r["value"], r["limit"]
        print(f"  {r['kernels']:8} {r['target']:46} {cell(v):>9} {cell(lim):>9}  {r['verdict']:7}  {r['note']}")
    # classic against fused, where both ran the same configuration
    if len(sets) > 1:
        print("# fused / classic, device span p50 (below 1: fused faster)")
        for r in runs:
            if r["kernels"] != "fused":
                continue
            for c in runs:
                if c["kernels"] == "classic" and all(c[x] == r[x] for x in ("mode", "tokens", "wire", "layout", "graph")):
                    for ph in ("dispatch", "combine"):
                        a, b = span(c, ph), span(r, ph)
                        if a and b:
                            print(f"  {r['mode']} {r['tokens']:>5} {r['wire']:6} {r['layout'] or '':6} "
                                  f"{'graph' if r['graph'] else 'eager':5} {ph:8} classic {a:8.1f} us  "
                                  f"fused {b:8.1f} us  x {b / a:.3f}")
    if out:
        with open(out, "w") as f:
            json.dump({"runs": len(runs), "gpu": gpus, "targets": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Summarise bench/run.sh results (a TSV, one line per variant run) as a markdown table:
medians per variant, ratios of CPU per request, and the pass/fail of the goal.

usage: report.py RESULTS.tsv GOAL_RATIO
"""

import statistics
import sys

LABELS = {
    "none": ("a", "no filter"),
    "trivial": ("b", "trivial wasm filter"),
    "switchyard": ("c", "Switchyard, realistic policy (20 rules, 5 stacks, affinity on)"),
    "lua": ("d", "Lua header routing"),
    "sy-nokeys": ("c1", "Switchyard, realistic policy, affinity off (no keys)"),
    "sy-nocidrs": ("c2", "Switchyard, realistic policy without CIDR tables"),
    "sy-norules": ("c3", "Switchyard, default route only, affinity on"),
    "sy-default": ("c4", "Switchyard, default route only, no affinity"),
    "switchyard-alt": ("c-alt", "Switchyard, realistic policy, BENCH_ALT_WASM build"),
}


def code(v):
    return LABELS.get(v, (v, v))[0]


def label(v):
    c, text = LABELS.get(v, (v, v))
    return f"({c}) {text}"


def main():
    path, goal = sys.argv[1], float(sys.argv[2])
    rows = {}
    order = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            rec = dict(zip(header, line.rstrip("\n").split("\t")))
            v = rec["variant"]
            if v not in rows:
                rows[v] = []
                order.append(v)
            rows[v].append(rec)

    med = {}
    print("| variant | rounds | RPS (median) | CPU µs/request (median) | min–max µs/request | Envoy core busy | p50 / p99 latency (µs) | non-200 |")
    print("|---|---|---|---|---|---|---|---|")
    for v in order:
        rs = rows[v]
        cpu = [float(r["cpu_us_per_req"]) for r in rs]
        rps = [float(r["rps"]) for r in rs]
        util = [float(r["envoy_util"]) for r in rs]
        p50 = [int(r["p50_us"]) for r in rs]
        p99 = [int(r["p99_us"]) for r in rs]
        bad = sum(int(r["non200"]) for r in rs)
        med[v] = (statistics.median(cpu), statistics.median(rps))
        print(f"| {label(v)} | {len(rs)} | {statistics.median(rps):,.0f} | {med[v][0]:.2f} | "
              f"{min(cpu):.2f}–{max(cpu):.2f} | {statistics.median(util) * 100:.0f}% | "
              f"{statistics.median(p50):.0f} / {statistics.median(p99):.0f} | {bad} |")

    # Ratios per round (side by side in the same round), then their median: this cancels
    # slow drifts of the machine better than a ratio of medians.
    def ratio(a, b):
        if a not in rows or b not in rows:
            return None
        per_round = {}
        for r in rows[a]:
            per_round.setdefault(r["round"], {})["a"] = float(r["cpu_us_per_req"])
        for r in rows[b]:
            per_round.setdefault(r["round"], {})["b"] = float(r["cpu_us_per_req"])
        rs = [x["a"] / x["b"] for x in per_round.values() if "a" in x and "b" in x]
        return statistics.median(rs), min(rs), max(rs), med[a][0] / med[b][0], med[a][1] / med[b][1]

    print()
    print("| ratio | CPU/request: median of per-round ratios (min–max) | ratio of medians | RPS ratio |")
    print("|---|---|---|---|")
    verdict = None
    for a, b in [("switchyard", "trivial"), ("switchyard", "none"), ("switchyard", "lua"), ("trivial", "none"),
                 ("lua", "none"), ("sy-nokeys", "trivial"), ("sy-default", "trivial"), ("sy-norules", "trivial"),
                 ("sy-nocidrs", "trivial"), ("switchyard", "sy-nokeys"), ("switchyard", "sy-nocidrs"),
                 ("sy-norules", "sy-default"), ("switchyard", "sy-norules"),
                 ("switchyard-alt", "trivial"), ("switchyard", "switchyard-alt")]:
        r = ratio(a, b)
        if r is None:
            continue
        m, lo, hi, rom, rps = r
        print(f"| ({code(a)})/({code(b)}) {a}/{b} | {m:.3f} ({lo:.3f}–{hi:.3f}) | {rom:.3f} | {rps:.3f} |")
        if (a, b) == ("switchyard", "trivial"):
            verdict = m
    if verdict is not None:
        ok = "PASS" if verdict <= goal else f"FAIL (misses by {(verdict / goal - 1) * 100:.0f}%)"
        print()
        print(f"Goal: (c) costs at most {goal}× the CPU per request of (b): {verdict:.3f}× → {ok}")


if __name__ == "__main__":
    main()

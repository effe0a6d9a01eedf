"""`bench/report.md` and its plots from the figures `bench.system.run` collected."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.system import GIVE_UP_P99_MS, P99_GOAL_MS, Step, sustained

KIND_TITLE = {
    "floor": "floor: bare Starlette route",
    "dashboard": "optimized-dashboard (80 % cached)",
    "dashboard_hit": "optimized-dashboard, cached",
    "dashboard_miss": "optimized-dashboard, cache miss",
    "dashboard_hit (naive)": "baseline: seed app's dashboard, cached",
    "dashboard_miss (naive)": "baseline: seed app's dashboard, miss",
    "deck": "recommendations: deck of 20 nearby, miss",
    "swipe": "batch-swipe: 10 swipes",
    "presign": "upload-media/presign",
    "webhook": "webhooks: new Paystack/RevenueCat delivery",
    "ingest": "realtime-orchestrator/events ingest",
}


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def plots(data: dict[str, Any], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    ladders = data.get("ladders") or {}
    if ladders:
        kinds = list(ladders)
        cols = 4
        rows = math.ceil(len(kinds) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax, kind in zip(axes.flat, kinds):
            steps = ladders[kind]
            x = [s["rate"] for s in steps]
            for p, style in (("p50_ms", "-o"), ("p95_ms", "-s"), ("p99_ms", "-^")):
                ax.plot(x, [s["summary"][p] for s in steps], style, label=p.split("_")[0], markersize=4)
            ax.axhline(P99_GOAL_MS, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(KIND_TITLE.get(kind, kind), fontsize=9)
            ax.set_xlabel("offered load, req/s")
            ax.set_ylabel("latency, ms")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(kinds):]:
            ax.axis("off")
        fig.suptitle(f"latency percentiles against offered load (open loop, {data['workers']} workers; dashed: p99 goal)")
        fig.tight_layout()
        fig.savefig(folder / "latency_vs_load.png", dpi=110)
        plt.close(fig)
        made["latency"] = "latency_vs_load.png"
    scaling = data.get("scaling") or []
    if scaling:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot([s["workers"] for s in scaling], [s["rps"] for s in scaling], "-o")
        ax.set_xlabel("worker processes")
        ax.set_ylabel("throughput, req/s (the mix)")
        ax.set_title("throughput against worker count (closed loop, 32 connections)", fontsize=9)
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(folder / "throughput_vs_workers.png", dpi=110)
        plt.close(fig)
        made["scaling"] = "throughput_vs_workers.png"
    cold = data.get("cold_start") or {}
    if cold:
        names = list(cold)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        vals = [cold[n]["import_ms"] if not n.startswith("(floor)") else cold[n]["wall_ms"] for n in names]
        colors = ["grey" if n.startswith("(") else "tab:blue" for n in names]
        ax.barh(names, vals, color=colors)
        ax.set_xlabel("ms (functions and baseline: import time; floor: whole `python -c pass`)")
        ax.set_title("cold import per function against the floor and the naive handler", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "cold_start.png", dpi=110)
        plt.close(fig)
        made["cold"] = "cold_start.png"
    return made


def write(data: dict[str, Any], out: Path, *, with_plots: bool = True) -> None:
    folder = out.parent / "plots"
    made = plots(data, folder) if with_plots else {}
    rel = lambda name: f"{folder.name}/{name}"  # noqa: E731
    lines: list[str] = []
    add = lines.append
    add("# System benchmark report\n")
    add(f"- command: `{data['command']}` ({data['profile']} profile), started {data['started_at']}, took {data['seconds']:.0f} s")
    add(f"- machine: {data['machine']}; the load generator runs on the same machine and shares its cores")
    add("- versions: " + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items()))
    add("- dataset: " + ", ".join(f"{k} {v:,}" for k, v in data.get("dataset", {}).items()))
    add(f"- server: every function in one app (`bench.apps.fleet_app`), uvicorn with {data['workers']} worker processes, "
        "real Postgres and Redis shared by all workers, moto's S3 server for R2, the provider stand-in for Realtime/FCM/APNs; "
        "rate limits lifted so the load measures the functions; JSON access log on")
    add("")
    ladders = {k: [Step(**s) for s in v] for k, v in (data.get("ladders") or {}).items()}
    if ladders:
        add("## Highest rate sustained per function\n")
        add(f"Open loop (requests start at a fixed rate whatever the server does; latency from the scheduled start), "
            f"{data['settings']['step']:.0f} s per step, rates {', '.join(str(r) for r in data['settings']['rates'])} req/s; "
            f"a step counts when p99 < {P99_GOAL_MS:.0f} ms with no errors and no non-2xx; a ladder stops after a step "
            f"with p99 over {GIVE_UP_P99_MS:.0f} ms. CPU is the server processes' user+system time per request.\n")
        add("| function | sustained req/s | p50 / p95 / p99 ms there | CPU ms / req | highest step tried |")
        add("|---|---:|---|---:|---:|")
        for kind, steps in ladders.items():
            best = sustained(steps)
            s = best.summary if best else None
            there = f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f}" if s else "none passed"
            add(f"| {KIND_TITLE.get(kind, kind)} | {_f(best.rate if best else 0.0, 0)} | {there} | "
                f"{_f(best.cpu_ms if best else steps[0].cpu_ms, 2)} | {_f(steps[-1].rate, 0)} |")
        add("")
        for kind in ("dashboard_hit", "dashboard_miss"):
            if kind not in ladders or f"{kind} (naive)" not in ladders:
                continue
            ours, naive = ladders[kind], ladders[f"{kind} (naive)"]
            common = [(a, b) for a in ours for b in naive if a.rate == b.rate]
            if not common:
                continue
            a, b = common[0]
            best_ours, best_naive = sustained(ours), sustained(naive)
            add(f"- {KIND_TITLE[kind]} against the seed app's approach (token checked by a call to the auth server, "
                f"tier by a second query, sequential queries, a table cache) at {a.rate:.0f} req/s: p99 "
                f"{a.summary['p99_ms']:.2f} vs {b.summary['p99_ms']:.2f} ms, CPU {a.cpu_ms:.2f} vs {b.cpu_ms:.2f} ms per "
                f"request (the baseline's leaves out its auth server's); sustained {best_ours.rate if best_ours else 0:.0f} vs "
                f"{best_naive.rate if best_naive else 0:.0f} req/s.")
        add("")
        if "latency" in made:
            add(f"![latency against offered load]({rel(made['latency'])})\n")
        add("<details><summary>every step</summary>\n")
        add("| function | offered req/s | done | p50 | p95 | p99 ms | CPU ms/req | errors | statuses | late starts |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for kind, steps in ladders.items():
            for st in steps:
                s = st.summary
                add(f"| {kind} | {st.rate:.0f} | {s['requests']} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | "
                    f"{_f(st.cpu_ms, 2)} | {s['errors']} | {json.dumps(st.statuses)} | {st.late} |")
        add("\n</details>\n")
    errs = data.get("server_5xx")
    if errs is not None and ladders:
        add("5xx answers in the fleet's log over the whole run (overload sheds with 503: a Redis or database deadline "
            "passed; a 500 is a bug):\n")
        if errs:
            add("| answers | status, function, route (or the cause of a 500) |")
            add("|---:|---|")
            for k, n in errs.items():
                add(f"| {n} | {k} |")
        else:
            add("none.")
        add("")
    mix = data.get("mix") or []
    if mix:
        add("## Realistic mix\n")
        model = data["capacity"]["model"]["mix"]
        add("Shares: " + ", ".join(f"{k} {v:.0%}" for k, v in model.items()) + " (dashboards, decks, swipe batches, "
            "uploads via presign, webhook deliveries, event ingest), open loop.\n")
        add("| offered req/s | done | p50 | p95 | p99 ms | CPU ms/req | errors | non-2xx |")
        add("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in mix:
            s = m["summary"]
            add(f"| {m['rate']:.0f} | {s['requests']} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | "
                f"{_f(m['cpu_ms'], 2)} | {s['errors']} | {s['non_2xx']} |")
        last = mix[-1]
        add(f"\nBy kind at {last['rate']:.0f} req/s:\n")
        add("| kind | requests | p50 | p95 | p99 ms | non-2xx |")
        add("|---|---:|---:|---:|---:|---:|")
        for k, s in last["by_kind"].items():
            add(f"| {k} | {s['requests']} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['non_2xx']} |")
        add("")
    scaling = data.get("scaling") or []
    if scaling:
        add("## Throughput against worker count\n")
        add("The mix, closed loop with 32 connections (throughput at saturation). This machine has "
            f"{data['machine'].split(',')[1].strip()}; the load generator takes part of them.\n")
        add("| workers | req/s | p50 | p95 | p99 ms | CPU ms/req | non-2xx |")
        add("|---:|---:|---:|---:|---:|---:|---:|")
        for s in scaling:
            add(f"| {s['workers']} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_ms']:.2f} | {s['non_2xx']} |")
        if "scaling" in made:
            add(f"\n![throughput against workers]({rel(made['scaling'])})\n")
    cap = data.get("capacity") or {}
    if cap.get("functions"):
        add("## Capacity\n")
        mdl = cap["model"]
        add(f"From the CPU per request measured above (median over the ladder's steps), planning each vCPU at "
            f"{mdl['utilisation']:.0%}; Lambda concurrency by Little's law (rate x p50 latency) with 1.5x headroom. "
            f"100K MAU model: {mdl['dau_share']:.0%} daily active, per active user per day "
            + ", ".join(f"{v:g} {k}" for k, v in mdl["per_dau_per_day"].items())
            + f", busiest hour {mdl['peak_factor']:g}x the day's average. Postgres and Redis are outside these figures "
            "(they ran on the same 2 cores here).\n")
        add("| function | sustained here, req/s | CPU ms/req | req/s per vCPU |")
        add("|---|---:|---:|---:|")
        for k, r in cap["functions"].items():
            add(f"| {KIND_TITLE.get(k, k)} | {r['sustained_rps']:,.0f} | {r['cpu_ms']:.2f} | {r['per_vcpu_rps']:,.0f} |")
        add("\n| load | req/s | vCPUs (instances of 1 vCPU) | Lambda concurrent executions |")
        add("|---|---:|---:|---:|")
        for label, key in (("100K monthly active users, busiest hour", "100k_mau"), ("10,000 req/s of the mix", "10k_rps")):
            r = cap[key]
            add(f"| {label} | {r['rps']:,.0f} | {r['vcpus']} | {r['lambda_concurrency']} |")
        add("")
    cold = data.get("cold_start") or {}
    if cold:
        add("## Cold import per function\n")
        add("Median of fresh processes: `import <handler>` timed inside the child; the floor is the whole `python -c pass`; "
            "the naive handler imports boto3, sentry_sdk, psycopg, redis and supabase at the top, in an environment of its "
            "own (its row says when supabase could not be installed).\n")
        add("| module | import ms | process wall ms |")
        add("|---|---:|---:|")
        for name, r in cold.items():
            add(f"| {name} | {r['import_ms']:.1f} | {r['wall_ms']:.1f} |")
        if "cold" in made:
            add(f"\n![cold import]({rel(made['cold'])})\n")
    for key, title in (("faults", "Faults under load"), ("fuzz", "Fuzzing every route")):
        suite = data.get(key)
        if not suite:
            continue
        add(f"## {title}\n")
        verdict = "passed" if suite["exit"] == 0 else f"FAILED (exit {suite['exit']})"
        add(f"`pytest -m {key} tests/{key}`: {verdict}, {suite['seconds']:.0f} s; {suite['summary']}\n")
        if key == "faults" and suite["records"]:
            add("| fault | requests during it | statuses | slowest ms | outcome |")
            add("|---|---:|---|---:|---|")
            for r in suite["records"]:
                add(f"| {r.get('fault')} | {r.get('requests', '-')} | {json.dumps(r.get('statuses', {}))} | "
                    f"{_f(r.get('max_ms'))} | {r.get('outcome', '')} |")
            add("")
        if key == "fuzz" and suite["records"]:
            r = suite["records"][-1]
            add(f"{r.get('operations', '-')} operations, {r.get('cases', '-')} cases in {_f(r.get('seconds'))} s; statuses "
                f"{json.dumps(r.get('statuses', {}))}; failures: {len(r.get('failures', []))}\n")
        if suite["exit"] != 0:
            add("```\n" + suite["output_tail"] + "\n```\n")
    benches = data.get("function_benches") or {}
    if benches:
        add("## Each function's own benchmark\n")
        add("Run by the full profile on the same services (`python -m bench.<name>`); their own goals are in their output.\n")
        for name, b in benches.items():
            status = "ok" if b["exit"] == 0 else f"exit {b['exit']}"
            add(f"<details><summary>bench.{name} ({status}, {b['seconds']:.0f} s)</summary>\n\n```\n{b['output']}\n```\n</details>\n")
    out.write_text("\n".join(lines).rstrip() + "\n")

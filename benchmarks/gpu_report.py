"""``gpu_check.py``'s report: the issue's goals against the measured values, and one markdown table per part."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import k_overhead

COMMITTED_CPU = Path(__file__).resolve().parent / "results" / "throughput.json"

GOALS = {
    "collect_4096": "VMAS balance 4096 envs, K=1 collection >= 500,000 frames/s",
    "collect_16384": "VMAS balance 16384 envs, K=1 collection >= 1,000,000 frames/s",
    "speedup_vs_cpu": "whole iterations >= 20x the CPU 60-env configuration's frames/s (best K=1 size)",
    "k2_over_k1": "K=2 iteration time <= 1.3x K=1's (4096 envs)",
    "speedup_vs_committed_cpu": "the same against the committed 2-core CPU frames/s (results/throughput.json)",
    "facmac_k2_cudagraphs": "FACMAC HalfCheetah 2x3, cudagraphs: K=2 step time <= 1.15x K=1's (paper: 1.28x)",
    "facmac_k5_cudagraphs": "FACMAC HalfCheetah 2x3, cudagraphs: K=5 step time <= 1.60x K=1's (paper: 2.06x)",
    "facmac_k2_update_ms": "K2-FACMAC HalfCheetah update (critic + 2 levels + targets) <= 1 ms (long run)",
    "facmac_2m_hours": "the paper's 2M-step K2-FACMAC run, extrapolated from the long run, in about an hour",
}


def compiled_ratio(data: dict[str, Any], k: int) -> float | None:
    """t(K) / t(K=1) of FACMAC HalfCheetah with cudagraphs in the K-overhead part (None: not measured)."""
    steps = data["parts"].get("k_overhead", {}).get("steps", {}).get("facmac_halfcheetah [cudagraphs]", {})
    if "1" not in steps or str(k) not in steps:
        return None
    return steps[str(k)][0]["step"] / steps["1"][0]["step"]


def committed_cpu_fps() -> float | None:
    """Median frames/s of ours in the committed ``throughput.json`` (the project's 2-core CPU measurement)."""
    try:
        return statistics.median(run["fps"] for run in json.loads(COMMITTED_CPU.read_text())["runs"]["ours"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def goals(data: dict[str, Any]) -> dict[str, Any]:
    """Each goal of the issue with its target, the measured value and whether it is met (None: not measured)."""
    runs = data["parts"].get("vmas", {}).get("runs", {})

    def value(name: str, key: str) -> float | None:
        return runs.get(name, {}).get(key)

    gpu_k1 = {r["envs"]: r["iteration_fps"] for n, r in runs.items() if n.startswith("k1_") and r.get("iteration_fps")}
    cpu = next((r.get("iteration_fps") for n, r in runs.items() if n.startswith("cpu_")), None)
    best = max(gpu_k1, key=gpu_k1.get) if gpu_k1 else None
    k1_4096, k2_4096 = value("k1_n4096", "iteration_s"), value("k2_n4096", "iteration_s")
    measured = {
        "collect_4096": (value("k1_n4096", "collect_fps"), 500_000, ">="),
        "collect_16384": (value("k1_n16384", "collect_fps"), 1_000_000, ">="),
        "speedup_vs_cpu": (gpu_k1[best] / cpu if best and cpu else None, 20.0, ">="),
        "k2_over_k1": (k2_4096 / k1_4096 if k1_4096 and k2_4096 else None, 1.3, "<="),
        "speedup_vs_committed_cpu": (
            gpu_k1[best] / committed if best and (committed := committed_cpu_fps()) else None,
            20.0,
            ">=",
        ),
    }
    long = data["parts"].get("long_run", {})
    measured |= {
        "facmac_k2_cudagraphs": (compiled_ratio(data, 2), 1.15, "<="),
        "facmac_k5_cudagraphs": (compiled_ratio(data, 5), 1.60, "<="),
        "facmac_k2_update_ms": (1000 * long["update_s"] if long.get("update_s") else None, 1.0, "<="),
        "facmac_2m_hours": (long.get("paper_2m_h"), 1.0, "<="),
    }
    out = {}
    for key, (got, target, op) in measured.items():
        met = None if got is None else (got >= target if op == ">=" else got <= target)
        out[key] = {"goal": GOALS[key], "target": target, "measured": got, "met": met}
    if best:
        out["speedup_vs_cpu"]["at_envs"] = out["speedup_vs_committed_cpu"]["at_envs"] = best
    return out


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def report(data: dict[str, Any]) -> str:
    """The markdown report: machine, goals, then one table per part that ran."""
    m = data["machine"]
    gpu = f"{m.get('gpu', 'no GPU')} (driver {m.get('driver')}, {m.get('gpu_memory')})" if m.get("gpu") else "no GPU"
    lines = [
        f"# GPU check ({data['status']}, {data.get('elapsed_s', 0):.0f} s)",
        "",
        f"{gpu}; {m['host']}; Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), "
        f"lightning {m.get('lightning')}, torchrl {m.get('torchrl')}, vmas {m.get('vmas')}, jax {m.get('jax')}; "
        f"device `{m['device']}`; {m['date']}.",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for g in data["goals"].values():
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {fmt(g['target'], ',')} | {fmt(g['measured'], ',.2f')} | {met} |")
    parts = data["parts"]
    if "smoke" in parts:
        lines += [
            "",
            "## Smoke runs",
            "",
            "| family | status | wall s | frames | updates | error |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in parts["smoke"]["runs"].items():
            error, updates = r.get("error", "").replace("|", "/"), r.get("summary", {}).get("train_steps")
            lines.append(
                f"| {name} | {r['status']} | {fmt(r.get('wall_s'), '.1f')} | {fmt(r.get('frames'))} | "
                f"{fmt(updates)} | {error} |"
            )
    if "vmas" in parts:
        p = parts["vmas"]
        lines += [
            "",
            f"## VMAS balance MADDPG ({p['steps_per_env']} steps per env, {p['updates_per_iteration']} updates per "
            f"iteration; medians after the first iteration of each run)",
            "",
            "| run | device | envs | K | collect frames/s | ms/update | iteration frames/s | iteration s | "
            "K2/K1 time | peak MiB | GPU util mean/busy/max % | wall s | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in p["runs"].items():
            k1 = p["runs"].get(f"k1_n{r.get('envs')}", {}).get("iteration_s")
            ratio = r["iteration_s"] / k1 if r.get("k") == 2 and k1 and r.get("iteration_s") else None
            util = r.get("gpu_util", {})
            util_s = "/".join(fmt(util.get(k), ".0f") for k in ("mean_pct", "mean_busy_pct", "max_pct")) if util else ""
            status = r["status"] + (f": {r['error']}" if r.get("error") else "")
            lines.append(
                f"| {name} | {r.get('device', '')} | {r.get('envs')} | {r.get('k')} | {fmt(r.get('collect_fps'))} | "
                f"{fmt(r.get('update_ms'), '.2f')} | {fmt(r.get('iteration_fps'))} | "
                f"{fmt(r.get('iteration_s'), '.3f')} | "
                f"{fmt(ratio, '.2f')} | {fmt(r.get('gpu_memory', {}).get('max_allocated_mb'))} | {util_s} | "
                f"{fmt(r.get('wall_s'), '.1f')} | {status.replace('|', '/')} |"
            )
    if "k_overhead" in parts:
        p = parts["k_overhead"]
        lines += ["", f"## K overhead (one run per K, {p['warmup']} warm-up steps dropped)", ""]
        results = {s: {int(k): v for k, v in per_k.items()} for s, per_k in p["steps"].items()}
        try:
            lines.append(k_overhead.table({s: per_k for s, per_k in results.items() if 1 in per_k}) if results else "")
        except Exception as exc:  # a partial set of runs must not lose the report
            lines.append(f"(table failed: {exc})")
        failed = [f"{n}: {r['status']} {r.get('error', '')}" for n, r in p["runs"].items() if r["status"] != "ok"]
        lines += ["", *(f"- {line}" for line in failed)] if failed else []
    if "long_run" in parts:
        p, run = parts["long_run"], parts["long_run"].get("run", {})
        lines += [
            "",
            f"## Long run: K2-FACMAC HalfCheetah 2x3, {p.get('frames')} steps, compile={p.get('compile')}",
            "",
            "| status | s/step | s/update | steps measured | 2M steps (h) | wall s |",
            "|---|---|---|---|---|---|",
            f"| {run.get('status')} {run.get('error', '')} | {fmt(p.get('step_s'), '.5f')} | "
            f"{fmt(p.get('update_s'), '.5f')} | {fmt(p.get('steps'))} | {fmt(p.get('paper_2m_h'), '.2f')} | "
            f"{fmt(run.get('wall_s'), '.1f')} |",
        ]
    skipped = [name for name, part in parts.items() if part.get("status") == "skipped"]
    if skipped:
        lines += ["", f"Skipped parts (time budget): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"

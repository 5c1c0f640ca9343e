"""Wall-clock cost of K: steady-state time per training step for K = 1..5, interleaved and repeated.

    python benchmarks/k_overhead.py                      # both settings, K = 1..5, 3 repeats
    python benchmarks/k_overhead.py --settings maddpg_vmas --ks 1 2 --repeats 2 --frames 6000
    python benchmarks/k_overhead.py --compile none default --ks 1 2   # eager against torch.compile, interleaved

Each (setting, K) is a real training run through ``kpg_lightning.train.run`` (collector, replay, critic step,
K-level actor step, targets, Lightning), so the numbers are what users get. The K-cost callback logs every
step's phases (``time/collect_s``, ``time/critic_s``, ``time/level_k_s``, ``time/rest_s``); the first
``--warmup`` steps of each run are dropped and the median of the rest is reported. The floor is what K costs if a
level adds nothing but one more actor level: ``t(K=1) + (K - 1) * t(level_1 at K=1)``. "paired overhead" is the
median over repeats of each repeat's own ratio t(K) / t(K=1): the runs of one repeat are minutes apart, so it
cancels most drift in the machine's speed between repeats. ``--compile`` adds the compiled updates (``compile=default``
or ``cudagraphs``), run interleaved with eager ones: a compiled update is timed whole (one ``update`` phase, no
per-level times, so no floor), and "vs eager" is the median over repeats of t(compiled) / t(eager) at the same K.

Writes ``k_overhead.json`` and ``k_overhead.md`` to ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS: dict[str, list[str]] = {
    # the paper's K-FACMAC MaMuJoCo configuration: HalfCheetah 2x3, one update per env step, batch 100, 400-300
    "facmac_halfcheetah": [
        "+experiment=k2_facmac_halfcheetah",
        "collector.init_random_frames=0",
        "buffer.learning_starts=0",
    ],
    # K-MADDPG on VMAS balance (the default run's configuration)
    "maddpg_vmas": ["+experiment=k2_maddpg_vmas_balance"],
}
DEFAULT_FRAMES = {"facmac_halfcheetah": 400, "maddpg_vmas": 9000}
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger.tensorboard=null",
    "eval.every_frames=0",
    "eval.episodes=1",
    "eval.absolute_episodes=0",  # the absolute metric's re-evaluation would count in wall_clock_s
    "trainer.enable_checkpointing=false",
]


def overrides(setting: str, k: int, frames: int, compile: str = "none") -> list[str]:
    """The training overrides of one (setting, K, compile mode) run."""
    return [*SETTINGS[setting], f"kpg.k={k}", f"max_frames={frames}", f"compile={compile}", *QUIET]


def label(setting: str, compile: str) -> str:
    """The table's name of a setting run in a compile mode (eager: the setting itself)."""
    return setting if compile == "none" else f"{setting} [{compile}]"


def step_medians(run_dir: Path, warmup: int) -> dict[str, float]:
    """Median seconds per training step of each phase in a run's ``csv/metrics.csv``, after ``warmup`` steps."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("time/step_s")][warmup:]
    if not rows:
        raise SystemExit(f"{run_dir.name}: no steps after warm-up; raise --frames")
    keys = [key for key in rows[0] if key.startswith("time/") and rows[0][key]]
    return {key[5:-2]: statistics.median(float(r[key]) for r in rows) for key in keys} | {"steps": len(rows)}


def measure(setting: str, k: int, frames: int, warmup: int, workdir: Path, compile: str = "none") -> dict[str, float]:
    """Median seconds per training step of each phase after ``warmup`` steps, for one run."""
    from kpg_lightning.train import train

    run_dir = workdir / f"{setting}_k{k}_{compile}_{time.monotonic_ns()}"
    if compile != "none":  # a fresh compilation per run, as in a training process: the previous runs' optimizers
        import torch  # are gone, and their cache entries would count towards dynamo's recompile limit (then eager)

        torch._dynamo.reset()
    train(overrides(setting, k, frames, compile), run_dir)
    return step_medians(run_dir, warmup)


def table(results: dict[str, dict[int, list[dict[str, float]]]]) -> str:
    """One row per (setting, K); compiled settings (``label``) also get their ratio to the eager runs at that K."""
    lines = [
        "| setting | K | median s/step | overhead vs K=1 | paired overhead | floor | overhead / floor | levels share "
        "| vs eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, per_k in results.items():
        first = per_k[min(per_k)]
        base = statistics.median(m["step"] for m in first)
        eager = results.get(setting.split(" [")[0]) if " [" in setting else None
        for k, runs in sorted(per_k.items()):
            step = statistics.median(m["step"] for m in runs)
            paired = statistics.median(m["step"] / b["step"] for m, b in zip(runs, first, strict=False))
            ratio_s = "–"
            if all("level_1" in m for m in first):
                floor = base + (k - 1) * statistics.median(m["level_1"] for m in first)
                floor_s = f"{floor:.4f} (+{100 * (floor / base - 1):.1f}%) | {step / floor:.2f}x"
            else:
                floor_s = "– | –"
            share = statistics.median(
                sum(v for key, v in m.items() if key.startswith("level_") or key == "update") / m["step"] for m in runs
            )
            if eager and k in eager:
                ratio = statistics.median(m["step"] / e["step"] for m, e in zip(runs, eager[k], strict=False))
                ratio_s = f"{ratio:.2f}x"
            lines.append(
                f"| {setting} | {k} | {step:.4f} | {100 * (step / base - 1):+.1f}% | "
                f"{100 * (paired - 1):+.1f}% | {floor_s} | {100 * share:.0f}% | {ratio_s} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=None, help="frames per run (default: per setting)")
    parser.add_argument("--warmup", type=int, default=5, help="training steps dropped at the start of each run")
    parser.add_argument("--compile", nargs="+", default=["none"], choices=["none", "default", "cudagraphs"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        label(s, c): {k: [] for k in args.ks} for s in args.settings for c in args.compile
    }
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for setting in args.settings:
                for k in args.ks:  # interleaved: K values and compile modes share the machine's state of the moment
                    for mode in args.compile:
                        frames, name = args.frames or DEFAULT_FRAMES[setting], label(setting, mode)
                        results[name][k].append(measure(setting, k, frames, args.warmup, Path(tmp), mode))
                        print(f"repeat {repeat} {name} K={k}: {results[name][k][-1]['step']:.4f} s/step", flush=True)
    markdown = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "k_overhead.json").write_text(json.dumps(results, indent=1))
    (args.out / "k_overhead.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()

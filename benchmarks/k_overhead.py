"""Wall-clock cost of K: steady-state time per training step for K = 1..5, interleaved and repeated.

    python benchmarks/k_overhead.py                      # both settings, K = 1..5, 3 repeats
    python benchmarks/k_overhead.py --settings maddpg_vmas --ks 1 2 --repeats 2 --frames 6000

Each (setting, K) is a real training run through ``kpg_lightning.train.run`` (collector, replay, critic step,
K-level actor step, targets, Lightning), so the numbers are what users get. The K-cost callback logs every
step's phases (``time/collect_s``, ``time/critic_s``, ``time/level_k_s``, ``time/rest_s``); the first
``--warmup`` steps of each run are dropped and the median of the rest is reported. The floor is what K costs if a
level adds nothing but one more actor level: ``t(K=1) + (K - 1) * t(level_1 at K=1)``. "paired overhead" is the
median over repeats of each repeat's own ratio t(K) / t(K=1): the runs of one repeat are minutes apart, so it
cancels most drift in the machine's speed between repeats.

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
    "trainer.enable_checkpointing=false",
]


def overrides(setting: str, k: int, frames: int) -> list[str]:
    """The training overrides of one (setting, K) run."""
    return [*SETTINGS[setting], f"kpg.k={k}", f"max_frames={frames}", *QUIET]


def step_medians(run_dir: Path, warmup: int) -> dict[str, float]:
    """Median seconds per training step of each phase in a run's ``csv/metrics.csv``, after ``warmup`` steps."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("time/step_s")][warmup:]
    if not rows:
        raise SystemExit(f"{run_dir.name}: no steps after warm-up; raise --frames")
    keys = [key for key in rows[0] if key.startswith("time/") and rows[0][key]]
    return {key[5:-2]: statistics.median(float(r[key]) for r in rows) for key in keys} | {"steps": len(rows)}


def measure(setting: str, k: int, frames: int, warmup: int, workdir: Path) -> dict[str, float]:
    """Median seconds per training step of each phase after ``warmup`` steps, for one run."""
    from kpg_lightning.train import train

    run_dir = workdir / f"{setting}_k{k}_{time.monotonic_ns()}"
    train(overrides(setting, k, frames), run_dir)
    return step_medians(run_dir, warmup)


def table(results: dict[str, dict[int, list[dict[str, float]]]]) -> str:
    lines = [
        "| setting | K | median s/step | overhead vs K=1 | paired overhead | floor | overhead / floor | levels share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, per_k in results.items():
        first = per_k[min(per_k)]
        base = statistics.median(m["step"] for m in first)
        level1 = statistics.median(m["level_1"] for m in first)
        for k, runs in sorted(per_k.items()):
            step = statistics.median(m["step"] for m in runs)
            paired = statistics.median(m["step"] / b["step"] for m, b in zip(runs, first, strict=True))
            floor = base + (k - 1) * level1
            share = statistics.median(
                sum(v for key, v in m.items() if key.startswith("level_")) / m["step"] for m in runs
            )
            lines.append(
                f"| {setting} | {k} | {step:.4f} | {100 * (step / base - 1):+.1f}% | "
                f"{100 * (paired - 1):+.1f}% | {floor:.4f} (+{100 * (floor / base - 1):.1f}%) | "
                f"{step / floor:.2f}x | {100 * share:.0f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=None, help="frames per run (default: per setting)")
    parser.add_argument("--warmup", type=int, default=5, help="training steps dropped at the start of each run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results: dict[str, dict[int, list[dict[str, float]]]] = {s: {k: [] for k in args.ks} for s in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for setting in args.settings:
                for k in args.ks:  # interleaved: K values share the machine's state of the moment
                    frames = args.frames or DEFAULT_FRAMES[setting]
                    results[setting][k].append(measure(setting, k, frames, args.warmup, Path(tmp)))
                    print(f"repeat {repeat} {setting} K={k}: {results[setting][k][-1]['step']:.4f} s/step", flush=True)
    markdown = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "k_overhead.json").write_text(json.dumps(results, indent=1))
    (args.out / "k_overhead.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()

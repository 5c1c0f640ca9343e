"""Frames/s (collection + training) of K=1 MADDPG on VMAS balance, ours and optionally BenchMARL's.

    python benchmarks/throughput.py                                  # ours only, 60,000 frames, 3 repeats
    python benchmarks/throughput.py --vs-benchmarl                   # interleaved with BenchMARL's MADDPG
    python benchmarks/throughput.py --vs-benchmarl --frames 12000 --repeats 1   # quick check

Reference configuration (BenchMARL's VMAS setting): 4 agents, 100-step episodes, 60 vectorized envs, 6000 frames
per iteration, 100 optimizer steps of batch 128 per iteration, MLP 256-256 Tanh actor and critic, shared
parameters (the critic: one team value Q(s, a) per sample, BenchMARL's shared centralised critic; ours
``algorithm.critic=team``), Adam lr 5e-5 (actor and critic, eps 1e-8), grad-norm clip 5, Polyak 0.005, γ 0.99,
constant Gaussian exploration noise σ 0.1, no random warm-up, no evaluation or checkpoints during training (ours
keeps its CSV log).

Ours is a real run through ``kpg_lightning.train.train``; its frames/s is frames over the sum of the per-step
``time/step_s`` (collection + updates + weight sync, as logged by the K-cost callback), and also over the whole
``trainer.fit`` (``wall_clock_s``: includes Lightning's setup and the final one-episode evaluation).
BenchMARL runs in its own virtual environment (``--benchmarl-venv``, created on first use outside the repository:
BenchMARL pins torchrl < 0.12, so it must never be installed into the project's env); ``benchmarl_driver.py``
times ``experiment.run()`` and its per-iteration timers. "steady" frames/s is frames per batch over the median
time of an iteration after ``--warmup`` iterations. Runs alternate (ours, BenchMARL) ``--repeats`` times; the
table reports medians. Writes ``throughput.json`` and ``throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path("~/.cache/kpg_lightning/benchmarl-venv").expanduser()
TORCH_PIN = "torch==2.13.0"

REFERENCE = [
    "+experiment=maddpg_vmas_balance",
    "kpg.k=1",
    "env.scenario=balance",
    "+env.scenario_kwargs.n_agents=4",
    "env.max_steps=100",
    "env.num_envs=60",
    "collector.frames_per_batch=6000",
    "collector.init_random_frames=0",
    "buffer.updates_per_batch=100",
    "buffer.batch_size=128",
    "buffer.learning_starts=0",
    "model.actor_hidden=[256,256]",
    "model.critic_hidden=[256,256]",
    "model.activation=tanh",
    "model.share_params=true",
    "algorithm.critic=team",
    "algorithm.actor_lr=5e-5",
    "algorithm.critic_lr=5e-5",
    "algorithm.tau=0.005",
    "algorithm.gamma=0.99",
    "algorithm.noise_sigma=0.1",
    "algorithm.grad_clip=5.0",
]
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.enable_checkpointing=false",
    "logger.tensorboard=null",
    "eval.every_frames=0",
    "eval.episodes=1",
    "eval.absolute_episodes=0",  # the absolute metric's re-evaluation would count in wall_clock_s
    "checkpoint.every_frames=100000000",
]


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def idle_fraction(seconds: float = 5.0) -> float:
    """Share of CPU time idle over the next ``seconds`` (Linux ``/proc/stat``; 1.0 where it is unavailable)."""

    def sample() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except OSError:
        return 1.0
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return (delta[3] + delta[4]) / max(1, sum(delta))  # idle + iowait


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 60.0, min_idle: float = 0.9) -> float:
    """Poll until the 1-minute load average is below ``max_load`` and the CPUs are at least ``min_idle`` idle
    (the load average lags a job that just started), or ``max_wait_s`` passed; returns the load average."""
    deadline = time.monotonic() + max_wait_s
    while (
        (load := load_average()) >= max_load or (idle := idle_fraction()) < min_idle
    ) and time.monotonic() < deadline:
        busy = f"load average {load:.2f}" if load >= max_load else f"CPUs {100 * idle:.0f}% idle"
        print(f"{busy}: waiting {poll_s:.0f} s", flush=True)
        time.sleep(poll_s)
    return load


def measure_ours(frames: int, warmup: int, workdir: Path) -> dict[str, Any]:
    """One training run of ours: frames, wall-clocks and per-step phase times from the run's ``metrics.csv``."""
    from kpg_lightning.train import train

    run_dir = workdir / f"ours_{time.monotonic_ns()}"
    summary = train([*REFERENCE, f"max_frames={frames}", *QUIET], run_dir)
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("time/step_s")]
    phases = {key[5:-2]: [float(r[key]) for r in rows] for key in rows[0] if key.startswith("time/") and rows[0][key]}
    steps_s = sum(phases["step"])
    steady = phases["step"][warmup:] or phases["step"]
    return {
        "frames": summary["frames"],
        "train_s": steps_s,
        "wall_clock_s": summary["wall_clock_s"],
        "fps": summary["frames"] / steps_s,
        "fps_wall": summary["frames"] / summary["wall_clock_s"],
        "fps_steady": summary["frames"] / len(rows) / statistics.median(steady),
        "phases_s": {key: sum(values) for key, values in phases.items()},
        "iterations": len(rows),
    }


def ensure_benchmarl_venv(venv: Path) -> Path:
    """The BenchMARL venv's python, creating the venv on first use: torch first (the local CPU wheel), then
    BenchMARL and VMAS under a ``torch==2.13.0`` constraint, after a dry run that refuses CUDA wheels."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print(f"creating the BenchMARL venv at {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    dry = subprocess.run(
        [*pip, "--dry-run", "-c", str(constraints), "benchmarl", "vmas"], capture_output=True, text=True
    )
    if dry.returncode != 0 or "nvidia" in dry.stdout.lower():
        raise SystemExit(
            f"BenchMARL does not resolve against {TORCH_PIN} without CUDA wheels; pip said:\n"
            f"{dry.stdout[-3000:]}{dry.stderr[-3000:]}"
        )
    subprocess.run([*pip, "-c", str(constraints), "benchmarl", "vmas"], check=True)
    return python


def measure_benchmarl(python: Path, frames: int, warmup: int, workdir: Path) -> dict[str, Any]:
    """One BenchMARL run in its venv: frames over the time inside ``experiment.run()``."""
    out = workdir / f"benchmarl_{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [str(python), str(HERE / "benchmarl_driver.py"), "--frames", str(frames), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"BenchMARL run failed:\n{proc.stderr[-4000:]}")
    r = json.loads(out.read_text())
    steady = r["iteration_s"][warmup:] or r["iteration_s"]
    train_s, per_batch = sum(r["iteration_s"]), r["frames"] / r["iterations"]
    return {
        "frames": r["frames"],
        "train_s": train_s,
        "wall_clock_s": r["run_s"],
        "fps": r["frames"] / train_s,
        "fps_wall": r["frames"] / r["run_s"],
        "fps_steady": per_batch / statistics.median(steady),
        "phases_s": {"collect": sum(r["collection_s"]), "train": sum(r["training_s"])},
        "iterations": r["iterations"],
        "versions": r["versions"],
    }


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| implementation | frames | frames/s (steps) | frames/s (whole run) | frames/s (steady) | collect s | "
        "update s | repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        collect = statistics.median(r["phases_s"]["collect"] for r in runs)
        update = statistics.median(r["train_s"] - r["phases_s"]["collect"] for r in runs)
        lines.append(
            f"| {name} | {runs[0]['frames']} | {med(runs, 'fps'):.0f} | {med(runs, 'fps_wall'):.0f} | "
            f"{med(runs, 'fps_steady'):.0f} | {collect:.1f} | {update:.1f} | {len(runs)} |"
        )
    if "benchmarl" in results:
        ours, theirs = results["ours"], results["benchmarl"]
        ratios = [f"{med(ours, key) / med(theirs, key):.2f}" for key in ("fps", "fps_wall", "fps_steady")]
        lines.append(f"| ours / BenchMARL | | {ratios[0]} | {ratios[1]} | {ratios[2]} | | | |")
        paired = [
            statistics.median(a[key] / b[key] for a, b in zip(ours, theirs, strict=True))
            for key in ("fps", "fps_wall", "fps_steady")
        ]
        lines.append(
            "| ours / BenchMARL, paired (median of each repeat's ratio) | | "
            + " | ".join(f"{r:.2f}" for r in paired)
            + " | | | |"
        )
    phases = [key for key in results["ours"][0]["phases_s"] if key != "step"]
    seconds = {key: statistics.median(r["phases_s"][key] for r in results["ours"]) for key in phases}
    lines += ["", "Ours, seconds per run by phase (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60_000, help="training budget in frames per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="iterations dropped for the steady-state rate")
    parser.add_argument("--vs-benchmarl", action="store_true", help="also run BenchMARL's MADDPG, interleaved")
    parser.add_argument("--benchmarl-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        help="first wait until the 1-minute load average is below this (e.g. 1.2)",
    )
    parser.add_argument("--wait-max", type=float, default=2400.0, help="longest wait for --wait-load, seconds")
    args = parser.parse_args()
    python = ensure_benchmarl_venv(args.benchmarl_venv) if args.vs_benchmarl else None
    results: dict[str, list[dict[str, Any]]] = {"ours": []} | ({"benchmarl": []} if python else {})
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.wait_max)
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in results:  # interleaved: both share the machine's state of the moment
                loads.append(load_average())
                if name == "ours":
                    run = measure_ours(args.frames, args.warmup, Path(tmp))
                else:
                    run = measure_benchmarl(python, args.frames, args.warmup, Path(tmp))
                results[name].append(run)
                print(
                    f"repeat {repeat} {name}: {run['fps']:.0f} frames/s ({run['train_s']:.1f} s, load {loads[-1]:.2f})",
                    flush=True,
                )
    markdown = table(results)
    meta = {
        "frames": args.frames,
        "repeats": args.repeats,
        "load_average_1min": loads,
        "reference_overrides": REFERENCE,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    note = (
        f"\n\n{args.frames} frames per run, {args.repeats} repeats (medians), {meta['machine']}, {meta['date']}; "
        f"1-min load average {loads[0]:.2f} at the start, {min(loads[1:]):.2f}-{max(loads[1:]):.2f} before each "
        "run (the benchmark's own load included).\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    (args.out / "throughput.md").write_text(markdown + note)
    print(markdown + note)


if __name__ == "__main__":
    main()

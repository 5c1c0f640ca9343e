"""K = 1 MADDPG against BenchMARL's MADDPG on VMAS navigation at a matched configuration: runs BenchMARL's side (one
seed after another, in its own venv) and prints, or with ``--ours`` also runs, the matching sweep of ours.

    python benchmarks/benchmarl_parity.py --seeds 0 1 2 3 4 --frames 300000 --out runs/parity
    python -m kpg_lightning.report runs/parity --compare 'BENCHMARL_MADDPG K=1' 'MADDPG K=1' --out runs/parity/report

BenchMARL's runs go to ``OUT/benchmarl/s<seed>/`` (``benchmarl_learn.py``; a seed whose ``summary.json`` exists is
skipped), ours to ``OUT/ours/`` (a Hydra multirun of ``+experiment=maddpg_vmas_navigation`` with the overrides of
``benchmarl_runs.our_overrides``). The venv is the one of ``benchmarks/throughput.py`` (``--benchmarl-venv``,
created on first use). The matched configuration and what still differs: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarl_runs import Matched, add_matched_arguments, our_overrides
from throughput import DEFAULT_VENV, ensure_benchmarl_venv

HERE = Path(__file__).resolve().parent


def ours_command(m: Matched, frames: int, seeds: list[int], out: Path) -> list[str]:
    """Our side: one Hydra multirun over ``seeds`` writing to ``out``."""
    return [
        "python",
        "-m",
        "kpg_lightning.train",
        "-m",
        *our_overrides(m, frames),
        "seed=" + ",".join(map(str, seeds)),
        f"hydra.sweep.dir={out}",
    ]


def run_benchmarl(python: Path, m: Matched, frames: int, seed: int, run_dir: Path) -> dict:
    """One BenchMARL run (its summary; an existing one is kept)."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        command = [str(python), str(HERE / "benchmarl_learn.py"), "--seed", str(seed), "--frames", str(frames)]
        command += ["--run-dir", str(run_dir), "--lr", f"{m.lr:g}", "--n-agents", str(m.n_agents)]
        command += ["--eval-every", str(m.eval_every), "--eval-episodes", str(m.eval_episodes)]
        command += ["--hidden", *map(str, m.hidden), "--activation", m.activation]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"error: BenchMARL seed {seed} failed:\n{proc.stderr[-4000:]}")
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, required=True)
    add_matched_arguments(parser)
    parser.add_argument("--benchmarl-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--ours", action="store_true", help="also run our sweep here, after BenchMARL's runs")
    parser.add_argument("--skip-benchmarl", action="store_true", help="only print (or with --ours run) our side")
    args = parser.parse_args()
    m = Matched(n_agents=args.n_agents, lr=args.lr, eval_every=args.eval_every, eval_episodes=args.eval_episodes)
    if problems := m.problems(args.frames):
        sys.exit("error: " + "; ".join(problems))
    out = args.out.resolve()
    if not args.skip_benchmarl:
        python = ensure_benchmarl_venv(args.benchmarl_venv)
        for seed in args.seeds:
            start = time.perf_counter()
            s = run_benchmarl(python, m, args.frames, seed, out / "benchmarl" / f"s{seed}")
            per_100k = s["wall_clock_s"] / s["frames"] * 100_000
            print(
                f"BenchMARL seed {seed}: final evaluation return {s['eval_return_mean']:.4g} at {s['frames']} frames; "
                f"{s['wall_clock_s']:.0f} s ({per_100k:.0f} s per 100k frames; {time.perf_counter() - start:.0f} s "
                "with process start)",
                flush=True,
            )
    command = ours_command(m, args.frames, args.seeds, out / "ours")
    print("ours:", shlex.join(command), flush=True)
    if args.ours:
        subprocess.run([sys.executable, *command[1:]], check=True)
    report = ["python", "-m", "kpg_lightning.report", str(out), "--compare", "BENCHMARL_MADDPG K=1", "MADDPG K=1"]
    print("report:", shlex.join([*report, "--out", str(out / "report")]))


if __name__ == "__main__":
    main()

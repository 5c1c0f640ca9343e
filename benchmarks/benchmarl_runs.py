"""The matched configuration of the BenchMARL parity study and BenchMARL runs as run folders our report reads.

Standard library only: imported by ``benchmarl_learn.py`` inside BenchMARL's venv (which has no kpg_lightning) and by
``benchmarl_parity.py`` and the tests in the project's venv.

A BenchMARL run is recorded from what its experiment hands its logger (:class:`Recorder`): per evaluation the
total frames and the per-episode returns (computed from the evaluation rollouts exactly as BenchMARL's
``Logger.log_evaluation`` does and as our evaluation does: the undiscounted sum of each agent's rewards up to the
first ``done``, averaged over the agents), checked against the ``eval/reward/episode_reward_mean`` BenchMARL logs
next. :func:`summary` turns the record into the ``summary.json`` of :func:`kpg_lightning.report_runs.load_run`:
algorithm ``benchmarl_maddpg``, so the report names its cell ``BENCHMARL_MADDPG K=1``.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALGORITHM = "benchmarl_maddpg"
TASK = "vmas/navigation"
EVAL_KEY = "eval/reward/episode_reward_mean"
"""BenchMARL's mean evaluation return over its groups (one group here: ``agents``)."""


@dataclass(frozen=True)
class Matched:
    """The settings both sides run (ours: :func:`our_overrides` on ``+experiment=maddpg_vmas_navigation``; BenchMARL:
    ``benchmarl_learn.build``)."""

    n_agents: int = 3
    max_steps: int = 100
    shared_rew: bool = True
    num_envs: int = 60
    frames_per_batch: int = 600
    updates: int = 10
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    noise_sigma: float = 0.1
    memory: int = 1_000_000
    eval_every: int = 30_000
    eval_episodes: int = 20

    def problems(self, frames: int) -> list[str]:
        """One line per setting that cannot run (each names the option, the value and what is allowed)."""
        out = []
        if self.frames_per_batch % self.num_envs:
            out.append(f"--frames-per-batch {self.frames_per_batch}: a multiple of --num-envs ({self.num_envs})")
        if self.eval_every <= 0 or self.eval_every % self.frames_per_batch:
            out.append(f"--eval-every {self.eval_every}: a positive multiple of --frames-per-batch")
        if frames <= 0 or frames % self.eval_every:
            out.append(
                f"--frames {frames}: a positive multiple of --eval-every ({self.eval_every}), so that the last "
                "evaluation is at the budget on both sides"
            )
        return out


def add_matched_arguments(parser: Any) -> None:
    """The options both scripts take (``--frames``, ``--lr``, ``--n-agents``, ``--eval-every``, ``--eval-episodes``),
    with :class:`Matched`'s defaults."""
    d = Matched()
    parser.add_argument("--frames", type=int, default=300_000)
    parser.add_argument("--lr", type=float, default=d.lr, help="actor and critic learning rate (BenchMARL has one)")
    parser.add_argument("--n-agents", type=int, default=d.n_agents)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--eval-episodes", type=int, default=d.eval_episodes)


def our_overrides(m: Matched, frames: int) -> list[str]:
    """Our side's Hydra overrides (after ``+experiment=maddpg_vmas_navigation``) for the matched configuration."""
    hidden = "[" + ",".join(map(str, m.hidden)) + "]"
    return [
        "+experiment=maddpg_vmas_navigation",
        "kpg.k=1",
        f"max_frames={frames}",
        f"+env.scenario_kwargs.n_agents={m.n_agents}",
        f"+env.scenario_kwargs.shared_rew={str(m.shared_rew).lower()}",
        f"+env.scenario_kwargs.max_steps={m.max_steps}",  # VMAS's horizon: a termination, as in BenchMARL
        f"env.max_steps={m.max_steps}",
        f"env.num_envs={m.num_envs}",
        f"collector.frames_per_batch={m.frames_per_batch}",
        "collector.init_random_frames=0",
        f"buffer.updates_per_batch={m.updates}",
        f"buffer.batch_size={m.batch_size}",
        f"buffer.size={m.memory}",
        "buffer.learning_starts=0",
        f"model.actor_hidden={hidden}",
        f"model.critic_hidden={hidden}",
        f"model.activation={m.activation}",
        "model.share_params=true",
        "algorithm.critic=team",
        f"algorithm.actor_lr={m.lr:g}",
        f"algorithm.critic_lr={m.lr:g}",
        f"algorithm.gamma={m.gamma:g}",
        f"algorithm.tau={m.tau:g}",
        f"algorithm.noise_sigma={m.noise_sigma:g}",
        "algorithm.grad_clip=null",
        f"eval.every_frames={m.eval_every}",
        f"eval.episodes={m.eval_episodes}",
        "eval.absolute_episodes=0",  # BenchMARL has no absolute metric
        f"checkpoint.every_frames={frames}",  # one checkpoint, at the end: no collection restarts mid-run
    ]


@dataclass
class Recorder:
    """Collects what a BenchMARL experiment hands its logger: :meth:`evaluation` from ``log_evaluation`` (before
    BenchMARL's own aggregation), :meth:`log` from every ``log`` call."""

    evaluations: list[dict[str, Any]] = field(default_factory=list)
    iteration_s: list[float] = field(default_factory=list)
    evaluation_s: list[float] = field(default_factory=list)
    total_frames: int = 0

    def evaluation(self, frames: int, returns: list[float]) -> None:
        if not returns:
            raise ValueError(f"evaluation at {frames} frames has no episodes")
        self.evaluations.append({"frames": int(frames), "returns": [float(r) for r in returns]})

    def log(self, values: dict[str, Any], step: int) -> None:
        """One ``Logger.log(values, step)`` call: BenchMARL's evaluation mean (checked against the returns of the
        evaluation just recorded), timers and frame counters."""
        if EVAL_KEY in values:
            if not self.evaluations or "benchmarl_return_mean" in self.evaluations[-1]:
                raise ValueError(f"{EVAL_KEY} logged at step {step} without an evaluation recorded before it")
            last = self.evaluations[-1]
            theirs, ours = float(values[EVAL_KEY]), statistics.fmean(last["returns"])
            if not math.isclose(theirs, ours, rel_tol=1e-4, abs_tol=1e-5):
                raise ValueError(
                    f"BenchMARL's {EVAL_KEY} {theirs:.6g} at {last['frames']} frames is not the mean of the recorded "
                    f"episode returns {ours:.6g}: the two do not measure the same return"
                )
            last["benchmarl_return_mean"] = theirs
        if "timers/iteration_time" in values:
            self.iteration_s.append(float(values["timers/iteration_time"]))
        if "timers/evaluation_time" in values:
            self.evaluation_s.append(float(values["timers/evaluation_time"]))
        if "counters/total_frames" in values:
            self.total_frames = int(values["counters/total_frames"])


def summary(
    record: Recorder,
    *,
    seed: int,
    max_frames: int,
    wall_clock_s: float,
    matched: Matched,
    versions: dict[str, str],
    torch_threads: int,
) -> dict[str, Any]:
    """The run's ``summary.json``: our summary's fields the report reads, plus BenchMARL's timers and settings."""
    if not record.evaluations:
        raise ValueError("the run has no evaluation")
    history = [
        {
            "frames": e["frames"],
            "return_mean": statistics.fmean(e["returns"]),
            "return_std": statistics.pstdev(e["returns"]),
            "returns": e["returns"],
            **({"benchmarl_return_mean": e["benchmarl_return_mean"]} if "benchmarl_return_mean" in e else {}),
        }
        for e in record.evaluations
    ]
    iterations = len(record.iteration_s)
    return {
        "algorithm": ALGORITHM,
        "env": TASK,
        "k": 1,
        "seed": seed,
        "frames": record.total_frames,
        "max_frames": max_frames,
        "wall_clock_s": wall_clock_s,
        "train_steps": iterations * matched.updates,
        "iterations": iterations,
        "eval_return_mean": history[-1]["return_mean"],
        "eval_return_history": history,
        "actor_optimizer": "adam",
        "time_per_step_s": statistics.fmean(record.iteration_s) if record.iteration_s else None,
        "evaluation_s": sum(record.evaluation_s),
        "stopped_by": None,
        "device": "cpu",
        "torch_threads": torch_threads,
        "implementation": "benchmarl",
        "matched": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(matched).items()},
        "versions": versions,
    }


def _dump_json() -> Any:
    """:func:`kpg_lightning.files.dump_json` (standard library only), loaded from its file: this module also runs in
    BenchMARL's venv, where the package itself does not import."""
    path = Path(__file__).resolve().parent.parent / "kpg_lightning" / "files.py"
    spec = importlib.util.spec_from_file_location("_kpg_files", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.dump_json


def write_summary(run_dir: Path, data: dict[str, Any]) -> Path:
    """``run_dir/summary.json``, written atomically (never half-written)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    _dump_json()(path, data)
    return path

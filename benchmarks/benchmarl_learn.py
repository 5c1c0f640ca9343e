"""Trains BenchMARL's MADDPG on VMAS ``navigation`` at the parity study's matched configuration and writes the run as a
run folder our report reads; run inside the BenchMARL venv, not the project's.

    <benchmarl-venv>/bin/python benchmarks/benchmarl_learn.py --seed 0 --frames 300000 --run-dir runs/benchmarl_s0

Built through BenchMARL's own API (``Experiment``, ``MaddpgConfig``, ``MlpConfig``, ``VmasTask.NAVIGATION``) with the
settings of ``benchmarl_runs.Matched`` (``benchmarks/README.md`` lists them and what still differs). Evaluation is
BenchMARL's own (deterministic actions, ``--eval-episodes`` episodes in parallel envs, after the first iteration and
every ``--eval-every`` frames, the last at ``--frames``); nothing inside BenchMARL is changed: the per-episode returns
are read from the rollouts BenchMARL hands ``Logger.log_evaluation`` and checked against the mean it logs
(``benchmarl_runs.Recorder``). Writes ``summary.json`` (atomically) and BenchMARL's own marl-eval json (in
``benchmarl/``) to ``--run-dir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from benchmarl.algorithms import MaddpgConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig
from benchmarl_runs import Matched, Recorder, add_matched_arguments, summary, write_summary
from tensordict import TensorDictBase

ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


def build(m: Matched, frames: int, seed: int, save_folder: Path) -> Experiment:
    """The matched configuration through BenchMARL's config objects (their yaml defaults, then ours)."""
    config = ExperimentConfig.get_from_yaml()
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.share_policy_params = True
    config.prefer_continuous_actions = True
    config.gamma, config.lr, config.polyak_tau = m.gamma, m.lr, m.tau
    config.adam_eps = 1e-8  # torch's default, ours; BenchMARL's default is 1e-6
    config.clip_grad_norm, config.clip_grad_val = True, None  # no clipping, ours (algorithm.grad_clip=null)
    config.soft_target_update = True
    config.exploration_eps_init = config.exploration_eps_end = m.noise_sigma  # constant σ, as ours
    config.max_n_iters, config.max_n_frames = None, frames
    config.off_policy_collected_frames_per_batch = m.frames_per_batch
    config.off_policy_n_envs_per_worker = m.num_envs
    config.off_policy_n_optimizer_steps = m.updates
    config.off_policy_train_batch_size = m.batch_size
    config.off_policy_memory_size = m.memory
    config.off_policy_init_random_frames = 0
    config.off_policy_use_prioritized_replay_buffer = False
    config.evaluation, config.render = True, False
    config.evaluation_interval, config.evaluation_episodes = m.eval_every, m.eval_episodes
    config.evaluation_deterministic_actions, config.evaluation_static = True, False
    config.loggers, config.create_json = [], True  # BenchMARL evaluates only with a logger or its json on
    config.checkpoint_interval, config.checkpoint_at_end = 0, False
    config.save_folder = str(save_folder)

    task = VmasTask.NAVIGATION.get_from_yaml()
    task.config.update({"n_agents": m.n_agents, "max_steps": m.max_steps, "shared_rew": m.shared_rew})
    algorithm = MaddpgConfig.get_from_yaml()  # share_param_critic, l2, delay_value, use_tanh_mapping: all True
    model = MlpConfig(num_cells=list(m.hidden), layer_class=torch.nn.Linear, activation_class=ACTIVATIONS[m.activation])
    return Experiment(
        task=task, algorithm_config=algorithm, model_config=model, critic_model_config=model, seed=seed, config=config
    )


def episode_returns(rollouts: list[TensorDictBase]) -> list[float]:
    """Per evaluation episode (one rollout each): each agent's undiscounted reward sum up to the first ``done``
    (the whole rollout if none), averaged over the agents; our ``eval/return_mean`` averages these."""
    returns = []
    for td in rollouts:
        done = td.get(("next", "done")).reshape(td.shape[0])
        end = int(done.nonzero()[0, 0]) + 1 if done.any() else td.shape[0]
        returns.append(float(td.get(("next", "agents", "reward"))[:end].sum(0).mean()))
    return returns


def record(experiment: Experiment) -> Recorder:
    """A :class:`Recorder` fed by ``experiment.logger``'s ``log_evaluation`` and ``log`` (each then runs as before)."""
    rec, logger = Recorder(), experiment.logger
    log, log_evaluation = logger.log, logger.log_evaluation

    def on_log(values: dict[str, Any], step: int) -> None:
        rec.log(values, step)
        log(values, step=step)

    def on_evaluation(rollouts: list[TensorDictBase], total_frames: int, step: int, **kwargs: Any) -> None:
        rec.evaluation(total_frames, episode_returns(rollouts))  # before BenchMARL cuts the rollouts in place
        log_evaluation(rollouts, total_frames=total_frames, step=step, **kwargs)

    logger.log, logger.log_evaluation = on_log, on_evaluation
    return rec


def main() -> None:
    d = Matched()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, required=True)
    add_matched_arguments(parser)
    parser.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default=d.activation)
    args = parser.parse_args()
    m = Matched(
        n_agents=args.n_agents,
        lr=args.lr,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        hidden=tuple(args.hidden),
        activation=args.activation,
    )
    if problems := m.problems(args.frames):
        sys.exit("error: " + "; ".join(problems))
    save_folder = args.run_dir / "benchmarl"
    save_folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    experiment = build(m, args.frames, args.seed, save_folder)
    rec = record(experiment)
    experiment.run()
    wall = time.perf_counter() - start
    if rec.evaluations[-1]["frames"] != args.frames:
        sys.exit(f"error: the last evaluation is at {rec.evaluations[-1]['frames']} frames, not at {args.frames}")
    versions = {name: version(name) for name in ("benchmarl", "torchrl", "tensordict", "torch", "vmas")}
    data = summary(
        rec,
        seed=args.seed,
        max_frames=args.frames,
        wall_clock_s=wall,
        matched=m,
        versions=versions,
        torch_threads=torch.get_num_threads(),
    )
    path = write_summary(args.run_dir, data)
    last = data["eval_return_history"][-1]
    print(f"{path}: {data['frames']} frames in {wall:.1f} s, final evaluation return {last['return_mean']:.4g}")


if __name__ == "__main__":
    main()

"""Times one BenchMARL MADDPG run on VMAS ``balance``; run inside the BenchMARL venv, not the project's.

    <benchmarl-venv>/bin/python benchmarks/benchmarl_driver.py --frames 60000 --out result.json

Builds the experiment through BenchMARL's own API (``Experiment``, ``MaddpgConfig``, ``MlpConfig``,
``VmasTask.BALANCE``) with the reference configuration of ``benchmarks/throughput.py`` and times
``experiment.run()`` (collection + training; construction excluded). Per-iteration timers are read from what
BenchMARL hands its logger (``timers/collection_time``, ``timers/training_time``, ``timers/iteration_time``),
so nothing inside BenchMARL is changed. Writes one JSON object to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from benchmarl.algorithms import MaddpgConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig


def build(frames: int, seed: int, save_folder: str, args: argparse.Namespace) -> Experiment:
    """The reference configuration through BenchMARL's config objects (their yaml defaults, then ours)."""
    config = ExperimentConfig.get_from_yaml()
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.share_policy_params = True
    config.prefer_continuous_actions = True
    config.gamma, config.lr, config.polyak_tau = 0.99, args.lr, args.tau
    config.adam_eps = args.adam_eps
    config.clip_grad_norm, config.clip_grad_val = True, args.grad_clip
    config.soft_target_update = True
    # constant Gaussian exploration noise, as ours (sigma annealed from init to end; equal means constant)
    config.exploration_eps_init = config.exploration_eps_end = args.noise_sigma
    config.max_n_iters, config.max_n_frames = None, frames
    config.off_policy_collected_frames_per_batch = args.frames_per_batch
    config.off_policy_n_envs_per_worker = args.num_envs
    config.off_policy_n_optimizer_steps = args.updates
    config.off_policy_train_batch_size = args.batch_size
    config.off_policy_memory_size = 1_000_000
    config.off_policy_init_random_frames = 0
    config.off_policy_use_prioritized_replay_buffer = False
    config.evaluation, config.render = False, False
    config.loggers, config.create_json = [], False
    config.checkpoint_interval, config.checkpoint_at_end = 0, False
    config.save_folder = save_folder

    task = VmasTask.BALANCE.get_from_yaml()
    task.config.update({"n_agents": args.n_agents, "max_steps": args.max_steps})
    algorithm = MaddpgConfig.get_from_yaml()  # share_param_critic, l2, delay_value, use_tanh_mapping
    model = MlpConfig(num_cells=[256, 256], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    return Experiment(
        task=task, algorithm_config=algorithm, model_config=model, critic_model_config=model, seed=seed, config=config
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=60)
    parser.add_argument("--frames-per-batch", type=int, default=6000)
    parser.add_argument("--updates", type=int, default=100, help="optimizer steps per collected batch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--tau", type=float, default=0.005)
    parser.add_argument("--noise-sigma", type=float, default=0.1)
    parser.add_argument("--adam-eps", type=float, default=1e-8, help="BenchMARL's default is 1e-6; torch's 1e-8")
    parser.add_argument("--grad-clip", type=float, default=5.0, help="grad-norm clip (BenchMARL's default 5)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        experiment = build(args.frames, args.seed, folder, args)
        construct_s = time.perf_counter() - start
        iterations: list[dict[str, float]] = []
        log = experiment.logger.log

        def record(values: dict[str, Any], step: int) -> None:
            if "timers/iteration_time" in values:
                iterations.append(
                    {key.split("/")[1]: float(value) for key, value in values.items() if key.startswith("timers/")}
                )
            log(values, step=step)

        experiment.logger.log = record
        start = time.perf_counter()
        experiment.run()
        run_s = time.perf_counter() - start
    result = {
        "frames": int(experiment.total_frames),
        "iterations": len(iterations),
        "construct_s": construct_s,
        "run_s": run_s,
        "iteration_s": [it["iteration_time"] for it in iterations],
        "collection_s": [it["collection_time"] for it in iterations],
        "training_s": [it["training_time"] for it in iterations],
        "torch_threads": torch.get_num_threads(),
        "versions": {name: version(name) for name in ("benchmarl", "torchrl", "tensordict", "torch", "vmas")},
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

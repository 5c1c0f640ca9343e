"""Entry point: ``python -m kpg_lightning.train [overrides]`` (or ``kpg-train``).

Reads in order: config → env → algorithm → replay and collector → LightningModule → callbacks, loggers →
``Trainer.fit`` → ``summary.json``. With no overrides it trains K2-MADDPG on VMAS ``balance`` on the CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from kpg_lightning import cli
from kpg_lightning.assemble import (
    make_acting_algorithm,
    make_eval_env,
    with_episode_returns,
    write_json,
)
from kpg_lightning.callbacks import (
    EvaluationCallback,
    FrameCheckpoint,
    FramesProgressBar,
    KCostCallback,
    KPGDiagnostics,
    policy_state,
    quiet_known_noise,
    sigusr1_as_sigterm,
)
from kpg_lightning.checkpointing import MODEL, check_resume_config, find_checkpoint
from kpg_lightning.configure import env_device, register_configs, training_device, validate
from kpg_lightning.data import make_replay_buffer, replay_bytes, replay_device
from kpg_lightning.envs.registry import make_env, task_name
from kpg_lightning.envs.vmas import simulator_state
from kpg_lightning.errors import CheckpointError, ConfigError, NonFiniteError, Preempted
from kpg_lightning.experience import Experience
from kpg_lightning.module import KPGModule
from kpg_lightning.provenance import platform_record

__all__ = [
    "POLICY",
    "compose_config",
    "main",
    "precheck",
    "resolve_checkpoint",
    "run",
    "train",
    "write_json",
]

POLICY = "policy.pt"
"""The run directory's policy weights, written at the end of training (:func:`write_policy`)."""

precheck = cli.precheck  # the command line's composition check, where benchmarks and tests import it

register_configs()

EVAL_SEED_OFFSET = 10_000
"""The periodic evaluation env's seed is the run's seed plus this."""


def resolve_checkpoint(resume: str) -> Path:
    """The newest complete checkpoint directory of a run directory, ``checkpoints/`` dir or checkpoint path."""
    if not Path(resume).expanduser().exists():
        raise ConfigError(f"resume={resume!r} is not allowed: no such run directory or checkpoint")
    try:
        ckpt_dir, skipped = find_checkpoint(resume)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from exc
    for message in skipped:
        print(f"warning: {message}", file=sys.stderr)
    return ckpt_dir


def collection_seed(seed: int, rank: int, start_frames: int) -> int:
    """Seed of the collection segment starting at ``start_frames`` on ``rank`` (distinct per rank and segment)."""
    return (seed * 1_000_003 + rank * 10_007 + start_frames) % 2**31


def global_rank() -> int:
    """This process's rank before the trainer exists (torchrun/SLURM set RANK; Lightning's launcher LOCAL_RANK).

    Only seeds the replay buffer's sampling generator; collection seeds use the rank the trainer reports."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + int(
        os.environ.get("LOCAL_RANK", 0)
    )


def write_policy(
    path: Path, config: dict[str, Any], frames: int, last: dict[str, torch.Tensor], best: dict[str, Any] | None
) -> None:
    """``policy.pt`` atomically: the run's config, the last policy weights and the best evaluated ones (or None),
    a plain dict that ``torch.load(path, weights_only=True)`` reads."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": 1, "config": config, "last": {"frames": int(frames), "state_dict": last}, "best": best}, tmp)
    os.replace(tmp, path)


def actor_optimizer(trainer: Trainer) -> str:
    """The actor optimizer the run used (``kpg.actor_optimizer: auto`` resolved): its class name, lower case."""
    return type(trainer.optimizers[0]).__name__.lower()


def episode_length(cfg: DictConfig, env: EnvBase) -> int:
    """Steps a replayed episode is padded to: ``buffer.episode_length``, else the environment's episode limit
    (``episode_limit`` of the StarCraft adapters, ``env.max_steps`` of VMAS/MaMuJoCo)."""
    if cfg.buffer.get("episode_length"):
        return int(cfg.buffer.episode_length)
    limit = getattr(env.base_env, "episode_limit", None) or cfg.env.get("max_steps")
    if not limit:
        raise ConfigError(
            f"buffer.episode_length: {cfg.algorithm.name} replays whole episodes and "
            f"{task_name(cfg.env)} states no episode limit; set buffer.episode_length"
        )
    return int(limit)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` group as Trainer arguments. Critic and actor steps backpropagate separately, so each leaves
    the other's parameters unused: DDP strategies get their ``find_unused_parameters_true`` variant."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    strategy = kwargs.get("strategy")
    if strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        kwargs["strategy"] = f"{strategy}_find_unused_parameters_true"
        print(
            f"note: trainer.strategy={strategy} runs as {kwargs['strategy']} (separate actor/critic backwards)",
            file=sys.stderr,
        )
    return kwargs


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train as configured and return the summary written to ``run_dir/summary.json``."""
    validate(cfg)
    quiet_known_noise()  # Lightning's advertisements and the stack's known harmless warnings
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = resolve_checkpoint(cfg.resume) if cfg.resume else None
    if checkpoint is not None:
        check_resume_config(checkpoint, config, cfg.resume)
    seed_everything(cfg.seed, workers=True, verbose=False)  # stderr stays for errors (one line each)
    sim_device = env_device(cfg)
    env = with_episode_returns(make_env(cfg.env, seed=cfg.seed, device=sim_device))
    eval_env = make_eval_env(cfg.env, cfg.eval.episodes, seed=cfg.seed + EVAL_SEED_OFFSET, device=sim_device)
    algorithm = make_acting_algorithm(OmegaConf.to_object(cfg.algorithm), OmegaConf.to_object(cfg.model), env, eval_env)
    episodic = not algorithm.on_policy and algorithm.replay_unit == "episodes"
    length = episode_length(cfg, env) if episodic else None
    replay, storing_device = None, env.device
    if not algorithm.on_policy:  # sized before anything is allocated: too large is refused here, not an OOM later
        needed = replay_bytes(env, cfg.buffer.size, tuple(algorithm.replay_exclude), length)
        buffer_device = replay_device(str(cfg.buffer.device), training_device(cfg.trainer), needed)
        replay = make_replay_buffer(
            cfg.buffer.size,
            cfg.buffer.batch_size,
            seed=collection_seed(cfg.seed, global_rank(), -1),
            device=buffer_device,
        )
        storing_device = buffer_device

    def make_collector(
        total_frames: int, init_random_frames: int, start_frames: int, rank: int, device: torch.device
    ) -> Collector:
        env.set_seed(collection_seed(cfg.seed, rank, start_frames))
        per_batch = cfg.collector.frames_per_batch
        return Collector(
            env,
            algorithm.policy(),
            frames_per_batch=per_batch,
            total_frames=-(-total_frames // per_batch) * per_batch,
            init_random_frames=init_random_frames,
            env_device=env.device,
            policy_device=device,
            storing_device=storing_device,  # replay's device (on-policy: the env's; batches move to ``device``)
            auto_register_policy_transforms=False,
        )

    experience = Experience(
        make_collector,
        cfg.max_frames,
        replay=replay,
        updates_per_batch=cfg.buffer.updates_per_batch,
        batch_size=cfg.buffer.batch_size,
        learning_starts=cfg.buffer.learning_starts,
        init_random_frames=cfg.collector.init_random_frames,
        segment_frames=cfg.checkpoint.every_frames,
        episode_length=length,
        exclude=tuple(algorithm.replay_exclude),
        simulator=simulator_state(env),
    )
    module = KPGModule(
        algorithm,
        OmegaConf.to_object(cfg.kpg),
        experience,
        on_nonfinite=cfg.on_nonfinite,
        compile=cfg.compile,
        config=config,
    )
    module.resume_dir = checkpoint
    k_cost = KCostCallback()
    evaluation = EvaluationCallback(
        eval_env,
        cfg.eval.episodes,
        cfg.eval.every_frames,
        max_steps=cfg.eval.max_steps or cfg.env.get("max_steps", 1000),
        absolute_episodes=cfg.eval.absolute_episodes,
    )
    diagnostics = KPGDiagnostics(cfg.kpg.log_every_n_steps)
    callbacks = [k_cost, diagnostics, evaluation]
    frame_checkpoint = None
    if cfg.trainer.get("enable_checkpointing") is not False:
        frame_checkpoint = FrameCheckpoint(
            run_dir / "checkpoints", cfg.checkpoint.every_frames, cfg.checkpoint.keep_last
        )
        callbacks.append(frame_checkpoint)
    if cfg.trainer.get("enable_progress_bar") is not False:
        callbacks.append(FramesProgressBar(cfg.progress.every_s))
    callbacks += [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = Trainer(**trainer_kwargs(cfg.trainer), logger=loggers, callbacks=callbacks)

    start = time.perf_counter()
    try:
        with sigusr1_as_sigterm():
            trainer.fit(module, ckpt_path=str(checkpoint / MODEL) if checkpoint else None, weights_only=True)
    except SIGTERMException as exc:  # Lightning's answer to SIGTERM (and ours to SIGUSR1) after the batch
        raise Preempted(_preempted(module.frames, frame_checkpoint, run_dir)) from exc
    # signalled in the last batch: the checkpoint is written and fit ended without an exception
    if frame_checkpoint is not None and frame_checkpoint.preempted_at is not None:
        raise Preempted(_preempted(module.frames, frame_checkpoint, run_dir))
    wall = time.perf_counter() - start
    history = evaluation.history
    summary = {
        "algorithm": cfg.algorithm.name,
        "env": task_name(cfg.env),
        "k": cfg.kpg.k,
        "seed": cfg.seed,
        "frames": module.frames,
        "max_frames": cfg.max_frames,
        "wall_clock_s": wall,
        "train_steps": module.train_steps,
        "iterations": experience.iterations,
        "eval_return_mean": history[-1]["return_mean"] if history else None,
        **({"eval_win_rate": history[-1]["win_rate"]} if history and "win_rate" in history[-1] else {}),
        **evaluation.summary(),  # eval_return_history (per-episode returns included) and the absolute metric
        "actor_optimizer": actor_optimizer(trainer) if algorithm.has_actor else None,
        **k_cost.summary(),
        "kpg": diagnostics.summary(),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "skipped_updates": module.skipped_updates,
        "stopped_by": module.stopped_by,
        "device": str(module.device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform_record(module.device),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        write_policy(run_dir / POLICY, config, module.frames, policy_state(algorithm.policy()), evaluation.best)
    if module.stopped_by:
        raise NonFiniteError(module.stopped_by)
    return summary


def _preempted(frames: int, checkpoint: FrameCheckpoint | None, run_dir: Path) -> str:
    if checkpoint is None:
        return f"stopped by a signal at {frames} frames; no checkpoint (trainer.enable_checkpointing=false)"
    newest = checkpoint.dirpath / f"frames_{checkpoint.last_saved_frames:012d}"
    return f"stopped by a signal at {frames} frames; checkpoint {newest}; continue with resume={run_dir}"


def compose_config(overrides: list[str], run_dir: str | os.PathLike) -> DictConfig:
    """The run configuration for ``overrides`` as the command line composes it, outside ``@hydra.main``
    (``${hydra:runtime.output_dir}`` resolves to ``run_dir``)."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    with initialize_config_module("kpg_lightning.conf", version_base=None):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(overrides: list[str], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Programmatic ``python -m kpg_lightning.train <overrides>`` writing to ``run_dir``; returns the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run(compose_config(overrides, run_dir), run_dir)


def _task(cfg: DictConfig) -> None:
    """One run in Hydra's output directory (the task ``@hydra.main`` runs; :mod:`kpg_lightning.cli` reports its
    errors)."""
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main(argv: list[str] | None = None) -> int:
    """``python -m kpg_lightning.train [overrides]`` and ``kpg-train``: the command line of
    :func:`kpg_lightning.cli.main` (Hydra overrides, ``--key=value`` flags, ``--help``) running :func:`run`."""
    return cli.main(argv, _task)


if __name__ == "__main__":
    sys.exit(main())

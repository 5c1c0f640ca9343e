"""Structured configuration: dataclasses in Hydra's ConfigStore, so overrides are type-checked at start.

Group schemas: ``kpg``, ``collector``, ``buffer``, ``eval``, ``checkpoint``, ``model`` here; each algorithm's and
each environment family's config lives beside its code and is registered by :func:`register_configs`. The
``trainer`` group mirrors every argument of Lightning's ``Trainer`` (generated from its signature), so any of them
can be overridden as ``trainer.<arg>=...``. Sizes derived from the environment are never written back here.

Every default lives in its schema dataclass, written once; the yamls under ``conf/`` select group options, explain
them and hold no values (experiments excepted: they are patches with deliberate deviations).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kpg_lightning.models import ModelConfig

__all__ = ["Config", "ConfigError", "KPGConfig", "register_configs", "validate"]

ACTOR_OPTIMIZERS = ("auto", "rmsprop", "adam", "sgd")
KPG_SCOPES = ("update", "step")


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key."""


@dataclass
class KPGConfig:
    """The K-level recursion (Algorithm 1/2)."""

    k: int = 2
    """Recursion levels K >= 1; K = 1 is the base algorithm."""
    actor_optimizer: str = "auto"
    """auto (RMSProp when k > 1, the algorithm's Adam when k = 1), rmsprop, adam or sgd."""
    adaptive_tol: float | None = None
    """Stop the recursion once ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ / ‖θ⁽ᵏ⁾ − θ‖ < tol (k is the cap); null: always k levels."""
    log_every_n_steps: int = 1
    """Training steps between logs of the per-level diagnostics (kpg/level_delta_k, kpg/contraction_k, ...)."""
    scope: str = "update"
    """What one recursion wraps in on-policy algorithms: update (the actor's whole epochs x minibatches update)
    or step (each gradient step); off-policy algorithms take one step per update either way."""


@dataclass
class CollectorConfig:
    frames_per_batch: int = 600
    """Environment frames (steps x parallel envs) collected per training step."""
    init_random_frames: int = 0
    """Frames of uniformly random actions at the start of a run."""


@dataclass
class BufferConfig:
    size: int = 1_000_000
    """Replay capacity (off-policy algorithms) in the algorithm's replay unit: frames, or episodes for recurrent
    off-policy algorithms (QMIX/VDN/IQL, recurrent FACMAC/MADDPG; Appendix E.2: 5000 episodes)."""
    batch_size: int = 256
    """Items sampled per gradient update: frames, or whole episodes (Appendix E.2: 32)."""
    updates_per_batch: int = 10
    """Gradient updates (critic step + K-level actor step) per collected batch."""
    learning_starts: int = 0
    """Frames collected before the first update (episode replay also waits for ``batch_size`` episodes)."""
    episode_length: int | None = None
    """Steps each replayed episode is zero-padded to (episode replay); null: the environment's episode limit."""


@dataclass
class EvalConfig:
    every_frames: int = 12_000
    """Greedy evaluation period in frames (0 disables periodic evaluation; one still runs at the end)."""
    episodes: int = 10
    """Evaluation episodes, run in parallel environments."""
    max_steps: int | None = None
    """Steps per evaluation rollout; null: the env's ``max_steps`` (episode limit), else 1000."""


@dataclass
class CheckpointConfig:
    every_frames: int = 30_000
    """Frames between checkpoints (one is always written at the end); collection restarts, reseeded, at each,
    so that a resumed run continues exactly as the uninterrupted one."""
    keep_last: int = 2
    """Complete checkpoints kept (older ones are deleted once a newer one is sealed)."""


_TRAINER_SKIP = {"logger", "callbacks"}  # built from the ``logger`` and ``callbacks`` groups

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",  # the default run is a CPU run: trainer.accelerator=gpu for a GPU
    "devices": 1,
    "max_epochs": -1,  # budgets are frames (max_frames): the module stops the trainer when they are reached
    "num_sanity_val_steps": 0,  # no validation loop: evaluation is a callback
    "log_every_n_steps": 1,
    "enable_checkpointing": True,  # frame-based checkpoints (the checkpoint group); false disables them
    "default_root_dir": "${hydra:runtime.output_dir}",  # the run directory
}
"""The project's defaults of the ``Trainer`` arguments that differ from Lightning's; every other argument keeps
Lightning's default."""


def _trainer_config() -> type:
    """A dataclass with every ``lightning.pytorch.Trainer`` argument and its default (Lightning's, or this project's
    from :data:`TRAINER_DEFAULTS`)."""
    from lightning.pytorch import Trainer

    parameters = inspect.signature(Trainer.__init__).parameters
    unknown = set(TRAINER_DEFAULTS) - set(parameters)
    if unknown:
        raise TypeError(f"TRAINER_DEFAULTS: not Trainer arguments: {', '.join(sorted(unknown))}")
    fields = [(name, Any, field(default=TRAINER_DEFAULTS.get(name, p.default)))
              for name, p in parameters.items() if name != "self" and name not in _TRAINER_SKIP]
    return dataclasses.make_dataclass("TrainerConfig", fields)


TrainerConfig = _trainer_config()


@dataclass
class Config:
    """Root of the configuration; ``conf/config.yaml`` selects its group options."""

    seed: int = 0
    """Random seed of the run; the environments' collection and evaluation seeds derive from it."""
    max_frames: int = 300_000
    """Training budget in environment frames."""
    resume: str | None = None
    """Run directory or checkpoint path to continue from."""
    on_nonfinite: str = "stop"
    """stop (checkpoint the last finite state and stop) or skip (drop the update) on a NaN/inf loss or gradient."""
    algorithm: Any = MISSING
    env: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    kpg: KPGConfig = field(default_factory=KPGConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trainer: Any = field(default_factory=TrainerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    from kpg_lightning.algorithms import ALGORITHMS
    from kpg_lightning.envs.registry import ENV_FAMILIES

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, (_, cfg_cls) in ALGORITHMS.items():
        cs.store(group="algorithm", name=f"{name}_config", node=cfg_cls)
    for name, family in ENV_FAMILIES.items():
        cs.store(group="env", name=f"{name}_config", node=family.config_class)


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _check_model(cfg: DictConfig) -> None:
    from kpg_lightning.models import ACTIVATIONS

    _check(cfg.model.activation in ACTIVATIONS, "model.activation", f"one of {', '.join(ACTIVATIONS)}",
           cfg.model.activation)
    for key in ("actor_hidden", "critic_hidden"):
        sizes = list(cfg.model[key])
        _check(all(size > 0 for size in sizes), f"model.{key}", "a list of positive layer sizes", sizes)


def _check_trainer(cfg: DictConfig) -> None:
    import torch
    from lightning.pytorch.strategies import StrategyRegistry

    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "auto"))
    _check(accelerator in ("auto", "cpu", "gpu", "cuda", "mps", "tpu"), "trainer.accelerator",
           "auto, cpu, gpu, cuda, mps or tpu", accelerator)
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda"):
        _check(gpus > 0, "trainer.accelerator", "cpu or auto on a machine without a CUDA GPU", accelerator)
        devices = trainer.get("devices", "auto")
        if isinstance(devices, int) and devices > 0:
            _check(devices <= gpus, "trainer.devices", f"at most the {gpus} GPU(s) of this machine", devices)
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, str):
        valid = ["auto", *StrategyRegistry.available_strategies()]
        _check(strategy in valid, "trainer.strategy", f"one of {', '.join(valid)}", strategy)


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone cannot express; raises :class:`ConfigError` naming the key."""
    from kpg_lightning.algorithms import ALGORITHMS
    from kpg_lightning.envs.registry import env_family

    _check(cfg.algorithm.name in ALGORITHMS, "algorithm.name", f"one of {', '.join(ALGORITHMS)}",
           cfg.algorithm.name)
    _check(cfg.kpg.k >= 1, "kpg.k", "an integer >= 1 (1 is the base algorithm)", cfg.kpg.k)
    _check(cfg.kpg.actor_optimizer in ACTOR_OPTIMIZERS, "kpg.actor_optimizer",
           f"one of {', '.join(ACTOR_OPTIMIZERS)}", cfg.kpg.actor_optimizer)
    _check(cfg.kpg.scope in KPG_SCOPES, "kpg.scope", f"one of {', '.join(KPG_SCOPES)}", cfg.kpg.scope)
    tol = cfg.kpg.adaptive_tol
    _check(tol is None or tol > 0, "kpg.adaptive_tol", "null or a number > 0", tol)
    positive = {"kpg.log_every_n_steps": cfg.kpg.log_every_n_steps, "max_frames": cfg.max_frames,
                "collector.frames_per_batch": cfg.collector.frames_per_batch,
                "buffer.size": cfg.buffer.size, "buffer.batch_size": cfg.buffer.batch_size,
                "buffer.updates_per_batch": cfg.buffer.updates_per_batch, "eval.episodes": cfg.eval.episodes,
                "checkpoint.every_frames": cfg.checkpoint.every_frames,
                "checkpoint.keep_last": cfg.checkpoint.keep_last,
                "algorithm.actor_lr": cfg.algorithm.actor_lr, "algorithm.critic_lr": cfg.algorithm.critic_lr}
    for key, value in positive.items():
        _check(value > 0, key, "a number > 0", value)
    non_negative = {"collector.init_random_frames": cfg.collector.init_random_frames,
                    "buffer.learning_starts": cfg.buffer.learning_starts, "eval.every_frames": cfg.eval.every_frames}
    for key, value in non_negative.items():
        _check(value >= 0, key, "a number >= 0", value)
    _check(cfg.on_nonfinite in ("stop", "skip"), "on_nonfinite", "stop or skip", cfg.on_nonfinite)
    _check(cfg.eval.max_steps is None or cfg.eval.max_steps > 0, "eval.max_steps", "null or an integer > 0",
           cfg.eval.max_steps)
    family = env_family(cfg.env)
    space, supported = family.action_space(cfg.env), ALGORITHMS[cfg.algorithm.name][0].action_spaces
    _check(space in supported, "algorithm.name",
           f"an algorithm for {space} actions ({cfg.algorithm.name} supports {', '.join(supported)}) on {family.name}",
           cfg.algorithm.name)
    for key, allowed, value in OmegaConf.to_object(cfg.algorithm).problems():
        _check(False, f"algorithm.{key}", allowed, value)
    algorithm_cls = ALGORITHMS[cfg.algorithm.name][0]
    if not algorithm_cls.has_actor:
        _check(cfg.kpg.k == 1, "kpg.k", f"1 for {cfg.algorithm.name} (value-based: no policy gradient to recurse)",
               cfg.kpg.k)
    length = cfg.buffer.get("episode_length")
    _check(length is None or length > 0, "buffer.episode_length", "null or an integer > 0", length)
    if cfg.model.recurrent:
        recurrent = ", ".join(name for name, (cls, _) in ALGORITHMS.items()
                              if space in cls.action_spaces and cls.supports_recurrent(space))
        _check(algorithm_cls.supports_recurrent(space), "model.recurrent",
               f"false for {cfg.algorithm.name} with {space} actions (recurrent actors: {recurrent})", True)
        _check(cfg.model.share_params, "model.share_params", "true with model.recurrent=true (a shared GRU)",
               cfg.model.share_params)
    _check_model(cfg)
    _check_trainer(cfg)
    _check(0 < cfg.algorithm.gamma <= 1, "algorithm.gamma", "a number in (0, 1]", cfg.algorithm.gamma)
    clip = cfg.algorithm.grad_clip
    _check(clip is None or clip > 0, "algorithm.grad_clip", "null or a number > 0", clip)

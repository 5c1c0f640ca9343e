"""Registers the schemas in Hydra's ConfigStore and validates a composed config against the registries.

The schemas are leaves (:mod:`kpg_lightning.config`, each algorithm's config beside its code, each environment
family's in :mod:`kpg_lightning.envs.registry`); this module sits above the algorithm and environment registries
and below the entry points, which call :func:`register_configs` once and :func:`validate` on every run's config.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from kpg_lightning import trainer_args
from kpg_lightning.algorithms import ALGORITHMS
from kpg_lightning.config import ACTOR_OPTIMIZERS, COMPILE_MODES, KPG_SCOPES, Config
from kpg_lightning.envs.registry import ENV_FAMILIES, env_family
from kpg_lightning.errors import ConfigError
from kpg_lightning.models import ACTIVATIONS

__all__ = [
    "SIMULATORS",
    "check_simulator",
    "check_trainer_key",
    "env_device",
    "register_configs",
    "training_device",
    "validate",
]


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, (_, cfg_cls) in ALGORITHMS.items():
        cs.store(group="algorithm", name=f"{name}_config", node=cfg_cls)
    for name, family in ENV_FAMILIES.items():
        cs.store(group="env", name=f"{name}_config", node=family.config_class)


# 16-mixed/16-true: fp16 loss scaling unscales inside optimizer.step(), after the K-level steps' clip and finite
# check, and the scaler's state is not part of a level's snapshot. 64-true: Lightning converts the module, not the
# collected data (float32 replay and env), which it does not reach.
PRECISIONS = ("32", "32-true", "bf16-mixed")


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _check_model(cfg: DictConfig) -> None:
    _check(
        cfg.model.activation in ACTIVATIONS,
        "model.activation",
        f"one of {', '.join(ACTIVATIONS)}",
        cfg.model.activation,
    )
    for key in ("actor_hidden", "critic_hidden"):
        sizes = list(cfg.model[key])
        _check(all(size > 0 for size in sizes), f"model.{key}", "a list of positive layer sizes", sizes)


def _check_trainer(cfg: DictConfig) -> None:
    """Every ``trainer.*`` value against ``lightning.pytorch.Trainer``'s annotations, then the accelerator, devices,
    precision and strategy against what Lightning (on this machine) and the K-level steps accept."""
    from lightning.pytorch.strategies import StrategyRegistry

    values = OmegaConf.to_container(cfg.trainer, resolve=False)
    hints = trainer_args.hints()
    for key, value in values.items():
        if key in trainer_args.VALUE_CHECKED or key not in hints or OmegaConf.is_interpolation(cfg.trainer, key):
            continue
        _check(trainer_args.matches(value, hints[key]), f"trainer.{key}", trainer_args.describe(hints[key]), value)
    for key, (ok, allowed) in {**trainer_args.MANUAL_OPTIMIZATION, **trainer_args.RANGES}.items():
        _check(ok(values.get(key)), f"trainer.{key}", allowed, values.get(key))
    accelerator = values.get("accelerator", "auto")
    problem = trainer_args.accelerator_problem(accelerator)
    _check(problem is None, "trainer.accelerator", problem, accelerator)
    devices = values.get("devices", "auto")
    problem = trainer_args.devices_problem(devices, trainer_args.resolve_accelerator(accelerator))
    _check(problem is None, "trainer.devices", problem, devices)
    precision = values.get("precision")
    if precision is not None:
        _check(
            str(precision) in PRECISIONS,
            "trainer.precision",
            "32-true or bf16-mixed (fp16 loss scaling does not fit the K-level steps; 64-true not the float32 data)",
            precision,
        )
    strategy = values.get("strategy", "auto")
    valid = ["auto", *StrategyRegistry.available_strategies()]
    _check(isinstance(strategy, str) and strategy in valid, "trainer.strategy", f"one of {', '.join(valid)}", strategy)


def check_trainer_key(key: str) -> None:
    """Refuses a ``trainer.<name>`` override that is no ``Trainer`` argument (naming the closest ones) before Hydra
    composes it."""
    name = key.removeprefix("trainer.").split(".", 1)[0]
    problem = trainer_args.key_problem(name)
    if problem:
        raise ConfigError(f"trainer.{name} is not allowed: {problem}")


SIMULATORS: dict[str, tuple[tuple[str, ...], str]] = {
    "vmas": (("vmas",), "pip install 'kpg-lightning[vmas]'"),
    "mamujoco": (("gymnasium_robotics", "mujoco"), "pip install 'kpg-lightning[mujoco]'"),
    "smax": (("jaxmarl", "jax"), "pip install 'kpg-lightning[smax]'"),
    "smac": (("smac",), "pip install git+https://github.com/oxwhirl/smac.git, plus the StarCraft II game (README)"),
}
"""Each environment family's simulator: the modules it imports and how to install them."""


def check_simulator(cfg: DictConfig) -> None:
    """Refuses an environment family whose simulator is not installed here (found, not imported: JAX must not start
    before the adapter configures it). Not part of :func:`validate`: a config stays valid on a machine without it."""
    family = env_family(cfg.env).name
    modules, install = SIMULATORS.get(family, ((), ""))
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        _check(found, "env", f"its simulator is not installed ({module} not found); {install}", family)


def _check_compile(cfg: DictConfig) -> None:
    """``compile``: one of :data:`COMPILE_MODES`; what a compiled update cannot hold is refused, never dropped."""
    mode = cfg.get("compile", "none")
    _check(mode in COMPILE_MODES, "compile", f"one of {', '.join(COMPILE_MODES)}", mode)
    if mode == "none":
        return
    _check(
        cfg.kpg.adaptive_tol is None,
        "kpg.adaptive_tol",
        f"null with compile={mode} (its data-dependent early stop cannot be compiled; compile=none allows it)",
        cfg.kpg.adaptive_tol,
    )
    if mode == "cudagraphs":
        device = training_device(cfg.trainer)
        _check(device.type == "cuda", "compile", "none or default without a CUDA training device", mode)
        devices, strategy = cfg.trainer.get("devices", "auto"), str(cfg.trainer.get("strategy", "auto"))
        single = devices in (1, "1", [device.index]) or (devices == "auto" and torch.cuda.device_count() == 1)
        _check(
            single and "ddp" not in strategy and int(cfg.trainer.get("num_nodes", 1)) == 1,
            "compile",
            "none or default with more than one device (a captured update does not all-reduce)",
            mode,
        )


DEVICE_VALUES = "auto, cpu, cuda or cuda:N"


def training_device(trainer: DictConfig) -> torch.device:
    """The device this process trains on, as the ``trainer`` group will place it: ``cuda:<index>`` for
    ``trainer.accelerator`` gpu/cuda (or auto with a CUDA GPU) — the index of this process's local rank among
    ``trainer.devices`` — else the CPU (an MPS or TPU run keeps simulators and replay on the CPU)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    gpus = torch.cuda.device_count()
    if gpus == 0 or accelerator not in ("gpu", "cuda", "auto"):
        return torch.device("cpu")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and re.fullmatch(r"\d+(,\d+)*,?", devices.strip()) and "," in devices:
        devices = [int(d) for d in devices.split(",") if d]
    if not isinstance(devices, int | str):
        indices = list(devices)
        return torch.device("cuda", int(indices[rank % len(indices)]))
    return torch.device("cuda", rank % gpus)


def _device(key: str, value: str, gpu_ok: bool = True, why: str = "") -> None:
    """Checks an ``env.device``/``buffer.device`` value: auto, cpu, cuda or cuda:N, cuda only with a CUDA GPU."""
    value = str(value)
    _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None, key, DEVICE_VALUES, value)
    if value.startswith("cuda"):
        _check(gpu_ok, key, f"auto or cpu {why}", value)
        gpus = torch.cuda.device_count()
        _check(gpus > 0, key, "auto or cpu on a machine without a CUDA GPU", value)
        index = torch.device(value).index
        _check(index is None or index < gpus, key, f"cuda:0 to cuda:{gpus - 1} (this machine's GPUs)", value)


def env_device(cfg: DictConfig) -> torch.device:
    """Where the simulator runs: ``env.device`` (cuda: the training GPU where training is on one), with auto the
    training device for a family that can run there
    (VMAS), else the CPU (MaMuJoCo, SMAX and SMAC step on the CPU and hand tensors to the training device)."""
    value, device = str(cfg.env.get("device", "auto")), training_device(cfg.trainer)
    if value == "cuda" and device.type == "cuda":  # this process's GPU (its local rank's under DDP)
        return device
    if value != "auto":
        return torch.device(value)
    return device if env_family(cfg.env).gpu and device.type == "cuda" else torch.device("cpu")


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone cannot express; raises :class:`ConfigError` naming the key."""
    _check(cfg.algorithm.name in ALGORITHMS, "algorithm.name", f"one of {', '.join(ALGORITHMS)}", cfg.algorithm.name)
    _check(cfg.kpg.k >= 1, "kpg.k", "an integer >= 1 (1 is the base algorithm)", cfg.kpg.k)
    _check(
        cfg.kpg.actor_optimizer in ACTOR_OPTIMIZERS,
        "kpg.actor_optimizer",
        f"one of {', '.join(ACTOR_OPTIMIZERS)}",
        cfg.kpg.actor_optimizer,
    )
    _check(cfg.kpg.scope in KPG_SCOPES, "kpg.scope", f"one of {', '.join(KPG_SCOPES)}", cfg.kpg.scope)
    tol = cfg.kpg.adaptive_tol
    _check(tol is None or tol > 0, "kpg.adaptive_tol", "null or a number > 0", tol)
    positive = {
        "kpg.log_every_n_steps": cfg.kpg.log_every_n_steps,
        "max_frames": cfg.max_frames,
        "collector.frames_per_batch": cfg.collector.frames_per_batch,
        "buffer.size": cfg.buffer.size,
        "buffer.batch_size": cfg.buffer.batch_size,
        "buffer.updates_per_batch": cfg.buffer.updates_per_batch,
        "eval.episodes": cfg.eval.episodes,
        "checkpoint.every_frames": cfg.checkpoint.every_frames,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "progress.every_s": cfg.progress.every_s,
        "algorithm.actor_lr": cfg.algorithm.actor_lr,
        "algorithm.critic_lr": cfg.algorithm.critic_lr,
    }
    for key, value in positive.items():
        _check(value > 0, key, "a number > 0", value)
    non_negative = {
        "collector.init_random_frames": cfg.collector.init_random_frames,
        "buffer.learning_starts": cfg.buffer.learning_starts,
        "eval.every_frames": cfg.eval.every_frames,
    }
    for key, value in non_negative.items():
        _check(value >= 0, key, "a number >= 0", value)
    _check(cfg.on_nonfinite in ("stop", "skip"), "on_nonfinite", "stop or skip", cfg.on_nonfinite)
    _check(
        cfg.eval.max_steps is None or cfg.eval.max_steps > 0,
        "eval.max_steps",
        "null or an integer > 0",
        cfg.eval.max_steps,
    )
    absolute = cfg.eval.get("absolute_episodes")
    _check(
        absolute is None or absolute >= 0,
        "eval.absolute_episodes",
        "null (10 x eval.episodes), 0 (off) or an integer > 0",
        absolute,
    )
    family = env_family(cfg.env)
    space, supported = family.action_space(cfg.env), ALGORITHMS[cfg.algorithm.name][0].action_spaces
    _check(
        space in supported,
        "algorithm.name",
        f"an algorithm for {space} actions ({cfg.algorithm.name} supports {', '.join(supported)}) on {family.name}",
        cfg.algorithm.name,
    )
    for key, allowed, value in OmegaConf.to_object(cfg.algorithm).problems():
        _check(False, f"algorithm.{key}", allowed, value)
    algorithm_cls = ALGORITHMS[cfg.algorithm.name][0]
    if not algorithm_cls.has_actor:
        _check(
            cfg.kpg.k == 1,
            "kpg.k",
            f"1 for {cfg.algorithm.name} (value-based: no policy gradient to recurse)",
            cfg.kpg.k,
        )
    for key, (value, why) in algorithm_cls.kpg_required.items():
        _check(cfg.kpg[key] == value, f"kpg.{key}", f"{value} for {cfg.algorithm.name} ({why})", cfg.kpg[key])
    length = cfg.buffer.get("episode_length")
    _check(length is None or length > 0, "buffer.episode_length", "null or an integer > 0", length)
    if cfg.model.recurrent:
        recurrent = ", ".join(
            name
            for name, (cls, _) in ALGORITHMS.items()
            if space in cls.action_spaces and cls.supports_recurrent(space)
        )
        _check(
            algorithm_cls.supports_recurrent(space),
            "model.recurrent",
            f"false for {cfg.algorithm.name} with {space} actions (recurrent actors: {recurrent})",
            True,
        )
        _check(
            cfg.model.share_params,
            "model.share_params",
            "true with model.recurrent=true (a shared GRU)",
            cfg.model.share_params,
        )
    _check_model(cfg)
    _check_trainer(cfg)
    _check_compile(cfg)
    _device(
        "env.device", cfg.env.get("device", "auto"), family.gpu, f"for {family.name} (its simulator runs on the CPU)"
    )
    _device("buffer.device", cfg.buffer.get("device", "auto"))
    _check(0 < cfg.algorithm.gamma <= 1, "algorithm.gamma", "a number in (0, 1]", cfg.algorithm.gamma)
    clip = cfg.algorithm.grad_clip
    _check(clip is None or clip > 0, "algorithm.grad_clip", "null or a number > 0", clip)

"""Environment families: their config schema (a ``_target_`` factory plus its arguments) and how to name a task.

Configs are made by calling their ``_target_`` with the config's arguments (``make_env``); adapters import their
simulator lazily, so a family whose package is missing fails only when it is used, with an install hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import EnvBase

from kpg_lightning.errors import ConfigError

__all__ = [
    "ENV_FAMILIES",
    "EnvFamily",
    "MamujocoConfig",
    "SmacConfig",
    "SmaxConfig",
    "VmasConfig",
    "env_family",
    "make_env",
    "task_name",
]


@dataclass
class VmasConfig:
    """VMAS scenario (``pip install kpg-lightning[vmas]``)."""

    _target_: str = "kpg_lightning.envs.vmas.make_vmas_env"
    device: str = "auto"
    """Device the simulator runs on: auto (the training device; VMAS is pure torch), cpu, cuda or cuda:N."""
    scenario: str = "balance"
    """Scenario name: balance, navigation, transport, ... (any VMAS scenario with one agent group)."""
    num_envs: int = 60
    """Vectorized environments."""
    max_steps: int = 100
    """Episode length (a truncation)."""
    continuous_actions: bool = True
    """Continuous actions; false: the scenario's discrete actions."""
    scenario_kwargs: dict[str, Any] = field(default_factory=dict)
    """Scenario keyword arguments, e.g. {n_agents: 4}."""


@dataclass
class MamujocoConfig:
    """Multi-Agent MuJoCo (``pip install kpg-lightning[mujoco]``)."""

    _target_: str = "kpg_lightning.envs.mamujoco.make_mamujoco_env"
    device: str = "auto"
    """Device the simulator runs on: auto or cpu (its tensors are handed to the training device)."""
    scenario: str = "Walker2d"
    """MuJoCo robot: Walker2d, HalfCheetah, Ant, Hopper, Humanoid, ..."""
    agent_conf: str | None = "2x3"
    """Partition of the joints among agents: 2x3, 2x4, 9|8, ..."""
    agent_obsk: int | None = 1
    """Graph distance of the joints each agent observes."""
    max_steps: int = 1000
    """Episode length (a truncation); falls are terminations."""
    num_envs: int = 1
    """Environments stepped side by side (SerialEnv, or ParallelEnv with ``parallel``)."""
    parallel: bool = False
    """Step the ``num_envs`` environments in worker processes (ParallelEnv) instead of one after another."""


@dataclass
class SmaxConfig:
    """JaxMARL's SMAX StarCraft (``pip install kpg-lightning[smax]``), against the heuristic enemy."""

    _target_: str = "kpg_lightning.envs.smax.make_smax_env"
    device: str = "auto"
    """Device the simulator runs on: auto or cpu (its tensors are handed to the training device)."""
    map_name: str = "3m"
    """SMAX map: 3m, 8m, 2s3z, 3s5z, 5m_vs_6m, 27m_vs_30m, 3s5z_vs_3s6z, 6h_vs_8z, ... (SMAX has no MMM)"""
    num_envs: int = 64
    """Environments vectorized in one JAX call."""


@dataclass
class SmacConfig:
    """SMAC on StarCraft II (oxwhirl's ``smac`` and the game, installed by the user; see the README)."""

    _target_: str = "kpg_lightning.envs.smac.make_smac_env"
    device: str = "auto"
    """Device the simulator runs on: auto or cpu (its tensors are handed to the training device)."""
    map_name: str = "MMM"
    """SMAC map: 3m, MMM, corridor, 3s5z_vs_3s6z, ..."""


@dataclass(frozen=True)
class EnvFamily:
    name: str
    config_class: type
    task_keys: tuple[str, ...]
    extra: str
    """pip extra that installs the family's simulator."""
    discrete: bool | None = None
    """Whether actions are discrete; None: the config's ``continuous_actions`` decides."""
    batched_eval: bool = True
    """Whether evaluation builds one environment per episode (``num_envs``); otherwise one, and episodes run in
    rounds."""
    gpu: bool = False
    """Whether the simulator can run on a CUDA device (``env.device=cuda``); otherwise it runs on the CPU and its
    tensors are moved to the training device."""

    def action_space(self, cfg: DictConfig) -> str:
        discrete = self.discrete if self.discrete is not None else not cfg.get("continuous_actions", True)
        return "discrete" if discrete else "continuous"


ENV_FAMILIES: dict[str, EnvFamily] = {
    "vmas": EnvFamily("vmas", VmasConfig, ("scenario",), "vmas", gpu=True),  # pure torch
    "mamujoco": EnvFamily("mamujoco", MamujocoConfig, ("scenario", "agent_conf"), "mujoco", discrete=False),
    "smax": EnvFamily("smax", SmaxConfig, ("map_name",), "smax", discrete=True),
    # one StarCraft II game (its own process and GBs of memory) for evaluation: episodes run one after another
    "smac": EnvFamily("smac", SmacConfig, ("map_name",), "smac", discrete=True, batched_eval=False),
}


def env_family(cfg: DictConfig) -> EnvFamily:
    for family in ENV_FAMILIES.values():
        if family.config_class._target_ == cfg._target_:
            return family
    raise ValueError(
        f"env._target_: {cfg._target_!r} is not a known environment family; "
        f"valid: {', '.join(f.config_class._target_ for f in ENV_FAMILIES.values())}"
    )


def task_name(cfg: DictConfig) -> str:
    """``family/task`` (e.g. ``vmas/balance``) for logs and summaries."""
    family = env_family(cfg)
    return f"{family.name}/" + "-".join(str(cfg[key]) for key in family.task_keys if cfg.get(key) is not None)


def make_env(cfg: DictConfig, *, seed: int, device: Any = "cpu", **overrides: Any) -> EnvBase:
    """Instantiate the configured environment on ``device`` (``env.device`` resolved, see
    :func:`kpg_lightning.configure.env_device`), e.g. ``make_env(cfg.env, seed=1, num_envs=10)`` for evaluation."""
    family = env_family(cfg)
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("device", None)  # env.device is resolved by the caller (``auto``: the training device) and passed in
    factory = get_method(kwargs.pop("_target_"))
    try:
        return factory(**{**kwargs, **overrides}, seed=seed, device=device)
    except ValueError as exc:  # adapters name the offending env.* key in their message
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except ImportError as exc:  # a missing or broken simulator package: one line, like any unusable setting
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"env={family.name} is not allowed here: its simulator does not import ({reason}); "
            f"pip install 'kpg-lightning[{family.extra}]'"
        ) from exc

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

from kpg_lightning.config import ConfigError

__all__ = ["ENV_FAMILIES", "EnvFamily", "VmasConfig", "env_family", "make_env", "task_name"]


@dataclass
class VmasConfig:
    """VMAS scenario (``pip install kpg-lightning[vmas]``)."""

    _target_: str = "kpg_lightning.envs.vmas.make_vmas_env"
    scenario: str = "balance"
    """Scenario name: balance, navigation, transport, ... (any VMAS scenario with one agent group)."""
    num_envs: int = 60
    """Vectorized environments."""
    max_steps: int = 100
    """Episode length (a truncation)."""
    continuous_actions: bool = True
    scenario_kwargs: dict[str, Any] = field(default_factory=dict)
    """Scenario keyword arguments, e.g. {n_agents: 4}."""


@dataclass(frozen=True)
class EnvFamily:
    name: str
    config_class: type
    task_key: str
    extra: str
    """pip extra that installs the family's simulator."""


ENV_FAMILIES: dict[str, EnvFamily] = {
    "vmas": EnvFamily("vmas", VmasConfig, "scenario", "vmas"),
}


def env_family(cfg: DictConfig) -> EnvFamily:
    for family in ENV_FAMILIES.values():
        if family.config_class._target_ == cfg._target_:
            return family
    raise ValueError(f"env._target_: {cfg._target_!r} is not a known environment family; "
                     f"valid: {', '.join(f.config_class._target_ for f in ENV_FAMILIES.values())}")


def task_name(cfg: DictConfig) -> str:
    """``family/task`` (e.g. ``vmas/balance``) for logs and summaries."""
    family = env_family(cfg)
    return f"{family.name}/{cfg[family.task_key]}"


def make_env(cfg: DictConfig, *, seed: int, device: str = "cpu", **overrides: Any) -> EnvBase:
    """Instantiate the configured environment, e.g. ``make_env(cfg.env, seed=1, num_envs=10)`` for evaluation."""
    family = env_family(cfg)
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    factory = get_method(kwargs.pop("_target_"))
    try:
        return factory(**{**kwargs, **overrides}, seed=seed, device=device)
    except ValueError as exc:  # adapters name the offending env.* key in their message
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except ImportError as exc:
        raise ImportError(f"env: the {family.name} simulator is not installed ({exc}); "
                          f"pip install 'kpg-lightning[{family.extra}]'") from exc

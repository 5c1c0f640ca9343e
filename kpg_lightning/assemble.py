"""What training and evaluation build alike: environments with episode returns (the evaluation one with one env per
episode), the algorithm for an environment with its acting transforms on every env it acts in, atomic JSON files.

The entry points (``train``, ``evaluate``) are independent siblings; this module is what they share, so that a
trained policy is evaluated in exactly the environment and with exactly the networks it was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torchrl.envs import EnvBase, RewardSum, TransformedEnv

from kpg_lightning.algorithms import Algorithm, AlgorithmConfig, make_algorithm
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import EPISODE_REWARD, REWARD, EnvInfo
from kpg_lightning.envs.registry import env_family, make_env
from kpg_lightning.files import dump_json

__all__ = ["eval_env_kwargs", "make_acting_algorithm", "make_eval_env", "with_episode_returns", "write_json"]


def with_episode_returns(env: EnvBase) -> EnvBase:
    """Adds ``("agents", "episode_reward")``, the running return of the current episode."""
    returns = RewardSum(in_keys=[REWARD], out_keys=[EPISODE_REWARD])
    if isinstance(env, TransformedEnv):
        env.append_transform(returns)
        return env
    return TransformedEnv(env, returns)


def eval_env_kwargs(env_cfg: DictConfig, episodes: int) -> dict[str, int]:
    """``num_envs`` for the evaluation env; none for a family that always builds one (SMAC: rounds of one game)."""
    return {"num_envs": episodes} if env_family(env_cfg).batched_eval else {}


def make_eval_env(env_cfg: DictConfig, episodes: int, *, seed: int, device: Any, **overrides: Any) -> EnvBase:
    """The evaluation environment: ``episodes`` envs side by side (where the family batches them), episode returns
    added; ``overrides`` go to the family's factory (e.g. ``render_mode``)."""
    return with_episode_returns(
        make_env(env_cfg, seed=seed, device=device, **{**eval_env_kwargs(env_cfg, episodes), **overrides})
    )


def make_acting_algorithm(algorithm: AlgorithmConfig, model: ModelConfig, *envs: EnvBase) -> Algorithm:
    """The algorithm for the first env's specs, its acting transforms (:meth:`Algorithm.env_transforms`, fresh ones
    for each) appended to every env in ``envs``."""
    built = make_algorithm(algorithm, EnvInfo.from_env(envs[0]), model)
    for env in envs:
        for transform in built.env_transforms():
            env.append_transform(transform)
    return built


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (:func:`kpg_lightning.files.dump_json`), indented by 2 as every summary.json so far."""
    dump_json(path, data, indent=2)

"""SMAC (oxwhirl's StarCraft Multi-Agent Challenge, on the real StarCraft II game) as a TorchRL environment.

One game per env (``batch_size=[]``; use TorchRL's ``ParallelEnv`` for several). The layout is the one every
adapter of this project follows, with ``N`` agents:

- ``("agents", "observation")`` float32 ``[N, obs_shape]``; ``("agents", "action_mask")`` bool
  ``[N, n_actions]`` (``get_avail_actions``); ``"state"`` float32 ``[state_shape]``; ``"battle_won"`` bool
  ``[1]``.
- ``("agents", "action")`` integer ``[N]``: 0 no-op (dead agents only), 1 stop, 2-5 move N/S/E/W, 6.. attack
  (or heal, for MMM's medivacs). SMAC *asserts* that every action is available: mask your policy.
- ``("agents", "reward")`` float32 ``[N, 1]``: the team reward, replicated.
- ``done``/``terminated``/``truncated`` bool ``[1]`` at the root and ``[N, 1]`` under ``"agents"``. A battle
  end (win, loss or draw) is ``terminated``; a time-out at ``episode_limit`` is ``truncated``. SMAC flags
  time-outs with ``info["episode_limit"]`` only when ``continuing_episode=True``, so a game that ends
  without a win while some ally is alive (the no-op is available to dead agents only) is a time-out too.

Requirements that pip cannot fetch from PyPI: ``pip install git+https://github.com/oxwhirl/smac.git`` and the
StarCraft II game with the SMAC maps (``SC2PATH``). ``smac`` on PyPI is SMAC3, an unrelated hyper-parameter
optimiser. :class:`SmacUnavailableError` says so when either piece is missing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from kpg_lightning.envs.info import ACTION, ACTION_MASK, BATTLE_WON, DONE_FLAGS, GROUP, OBS, REWARD, STATE
from kpg_lightning.envs.starcraft import StarCraftSpecs

__all__ = ["SmacEnv", "SmacUnavailableError", "make_smac_env"]

INSTALL_HINT = (
    "SMAC needs oxwhirl's package (pip install git+https://github.com/oxwhirl/smac.git) and the StarCraft "
    "II game with the SMAC maps (https://github.com/oxwhirl/smac#installing-starcraft-ii), with SC2PATH set "
    "to the game directory (default ~/StarCraftII). Note: `pip install smac` installs SMAC3, a different "
    "project (a hyper-parameter optimiser)."
)


class SmacUnavailableError(RuntimeError):
    """Real SMAC cannot run here: oxwhirl's ``smac`` package or the StarCraft II game is missing."""


def _unavailable(reason: str) -> SmacUnavailableError:
    return SmacUnavailableError(f"SMAC is unavailable: {reason}. {INSTALL_HINT}")


def _starcraft2_env_class() -> type:
    """``smac.env.StarCraft2Env``, after checking that the package is oxwhirl's and the game is installed."""
    spec = importlib.util.find_spec("smac")
    if spec is None:
        raise _unavailable("the `smac` package is not installed")
    package_dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not any((d / "env" / "starcraft2").is_dir() for d in package_dirs):
        smac3 = any((d / "facade").is_dir() or (d / "runhistory").is_dir() for d in package_dirs)
        what = "SMAC3 (the hyper-parameter optimiser from PyPI)" if smac3 else "not oxwhirl's SMAC"
        raise _unavailable(f"the installed `smac` package is {what}; it has no smac.env.StarCraft2Env")
    sc2path = os.environ.get("SC2PATH")
    game_dir = Path(sc2path).expanduser() if sc2path else Path.home() / "StarCraftII"
    if not game_dir.is_dir():
        where = f"SC2PATH={sc2path!r} is not a directory" if sc2path else "SC2PATH is unset, no ~/StarCraftII"
        raise _unavailable(f"the StarCraft II game was not found ({where})")
    try:
        from smac.env import StarCraft2Env
    except ImportError as exc:
        raise _unavailable(f"importing smac.env failed ({exc})") from exc
    return StarCraft2Env


def _check_map_name(map_name: str) -> None:
    """One-line ``ValueError`` for a map oxwhirl's registry does not know (skipped if the registry moved)."""
    try:
        from smac.env.starcraft2.maps.smac_maps import get_smac_map_registry
    except ImportError:
        return
    names = sorted(get_smac_map_registry())
    if map_name not in names:
        raise ValueError(f"Unknown SMAC map_name {map_name!r}; valid maps: {', '.join(names)}")


class SmacEnv(StarCraftSpecs, EnvBase):
    """One SMAC battle (``smac.env.StarCraft2Env`` or anything with its API) as a TorchRL env.

    Args:
        map_name: SMAC map, e.g. ``"3m"``, ``"2s3z"``, ``"MMM"``, ``"5m_vs_6m"``.
        seed: game seed, fixed when StarCraft II is created (``set_seed`` cannot change it later).
        device: torch device of the returned tensors.
        env_factory: ``factory(map_name=..., seed=..., **smac_kwargs)`` building the game; defaults to
            ``smac.env.StarCraft2Env`` after checking it can run (else :class:`SmacUnavailableError`).
        **smac_kwargs: forwarded to the factory (``difficulty``, ``reward_only_positive``, ...).
    """

    batch_locked = True

    def __init__(
        self,
        map_name: str,
        *,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        env_factory: Callable[..., Any] | None = None,
        **smac_kwargs: Any,
    ) -> None:
        if env_factory is None:
            env_factory = _starcraft2_env_class()
            _check_map_name(map_name)
        super().__init__(device=device, batch_size=torch.Size([]))
        self.map_name = map_name
        self._seed = seed
        self._env = env_factory(map_name=map_name, seed=seed, **smac_kwargs)
        self.is_closed = False  # EnvBase starts "closed"; ours holds a game to close
        info = self._env.get_env_info()
        self.n_agents: int = int(info["n_agents"])
        self.n_actions: int = int(info["n_actions"])
        self.obs_dim: int = int(info["obs_shape"])
        self.state_dim: int = int(info["state_shape"])
        self.episode_limit: int = int(info["episode_limit"])
        self._make_specs()

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None and seed != self._seed:
            warnings.warn(
                f"SmacEnv: StarCraft II's seed is fixed when the game is created (seed={self._seed}); "
                f"set_seed({seed}) has no effect. Pass seed= to make_smac_env instead.",
                stacklevel=2,
            )

    def _avail_mask(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._env.get_avail_actions()) > 0, device=self.device)

    def _observe(self, mask: torch.Tensor, terminated: bool, truncated: bool, won: bool) -> TensorDictBase:
        n, d = self.n_agents, self.device
        out = TensorDict({GROUP: TensorDict(batch_size=(n,))}, batch_size=(), device=d)
        for key, value in zip(DONE_FLAGS, (terminated or truncated, terminated, truncated), strict=True):
            out.set(key, torch.tensor([value], device=d))
            out.set((GROUP, key), torch.full((n, 1), value, device=d))
        out.set(OBS, torch.as_tensor(np.asarray(self._env.get_obs(), dtype=np.float32), device=d))
        out.set(ACTION_MASK, mask)
        out.set(STATE, torch.as_tensor(np.asarray(self._env.get_state(), dtype=np.float32), device=d))
        out.set(BATTLE_WON, torch.tensor([won], device=d))
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        self._env.reset()
        return self._observe(self._avail_mask(), False, False, False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION).reshape(-1).tolist()
        reward, game_over, info = self._env.step(actions)
        info = info or {}
        won = bool(info.get("battle_won", False))
        mask = self._avail_mask()
        all_dead = bool(mask[:, 0].all())  # SMAC offers the no-op to dead agents only
        terminated = game_over and (won or all_dead) and not info.get("episode_limit", False)
        out = self._observe(mask, terminated, game_over and not terminated, won)
        out.set(REWARD, torch.full((self.n_agents, 1), float(reward), device=self.device))
        return out

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the StarCraft II process."""
        if not self.is_closed:
            self._env.close()
        super().close(raise_if_closed=raise_if_closed)


def make_smac_env(
    map_name: str,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    env_factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> EnvBase:
    """Build a :class:`SmacEnv`; raises :class:`SmacUnavailableError` when SMAC or StarCraft II is missing."""
    return SmacEnv(map_name, seed=seed, device=device, env_factory=env_factory, **kwargs)

"""SMAX (JaxMARL's StarCraft-like benchmark) as a batched TorchRL environment.

``num_envs`` SMAX games against JaxMARL's heuristic enemy are stepped by ONE jitted, vmapped JAX call per
``step``/``reset``; finished games are reset inside that call. Outputs go from JAX to torch via dlpack
(zero-copy where possible, numpy otherwise).

Layout (the contract every adapter of this project follows), ``B = num_envs``, ``N`` allies:

- ``("agents", "observation")`` float32 ``[B, N, obs_dim]``; ``("agents", "action_mask")`` bool
  ``[B, N, n_actions]``; ``"state"`` float32 ``[B, state_dim]`` (JaxMARL's env-level ``world_state``:
  features of every unit plus teams and unit types, the same for all); ``"battle_won"`` bool ``[B, 1]``.
- ``("agents", "action")`` integer ``[B, N]`` in ``[0, n_actions)``: 0-3 move (N, E, S, W), 4 stop,
  ``5 + j`` attack enemy ``j``.
- ``("agents", "reward")`` float32 ``[B, N, 1]``: the team reward (enemy health lost, +1 for a win) per agent.
- ``done``/``terminated``/``truncated`` bool ``[B, 1]`` at the root and ``[B, N, 1]`` under ``"agents"``
  (team-level, replicated: a dead ally is not "done" while its team plays on). A battle end is ``terminated``;
  reaching ``max_steps`` (JaxMARL default 100 for every map) without one is ``truncated``: an episode lasts at
  most ``max_steps`` steps (JaxMARL's own ``done`` comes one step later).

Unavailable actions are legal inputs: SMAX executes them as "stop" (an attack on a dead or out-of-range enemy
does nothing, a dead unit does not move). :meth:`SmaxEnv.rand_action` (what ``env.rollout`` uses without a
policy) samples uniformly from the *available* actions; :func:`masked_random_action` does so for any mask.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from kpg_lightning.envs.info import (
    ACTION,
    ACTION_MASK,
    BATTLE_WON,
    DONE,
    GROUP,
    OBS,
    REWARD,
    STATE,
    TERMINATED,
    TRUNCATED,
    masked_random_action,
)
from kpg_lightning.envs.starcraft import StarCraftSpecs

__all__ = ["SmaxEnv", "make_smax_env", "masked_random_action", "smax_map_names"]

_FLAGS = (TERMINATED, TRUNCATED, DONE, BATTLE_WON)


def _import_jax() -> Any:
    """Import jax lazily, first telling XLA not to grab all GPU memory (torch may share the device)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


EXTRA_MAPS: dict[str, tuple[tuple[str, int], ...]] = {
    # SMAC's MMM is 7 marines, 2 marauders and 1 medivac a side; SMAX has no medivac (no healer), so the closest
    # SMAX battle is the same army without it. It stands in for MMM in the runnable discrete K-FACMAC check.
    "MMM_no_medivac": (("marine", 7), ("marauder", 2)),
}
"""Maps this project adds to JaxMARL's registry: name → ``(unit type, count)`` per side (both sides alike)."""


def _smax_registry() -> dict[str, Any]:
    """JaxMARL's map name → scenario registry, with :data:`EXTRA_MAPS` registered."""
    _import_jax()
    import jax.numpy as jnp
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO, Scenario, register_scenario

    types = ["marine", "marauder", "stalker", "zealot", "zergling", "hydralisk"]  # SMAX's unit type order
    for name, army in EXTRA_MAPS.items():
        if name not in MAP_NAME_TO_SCENARIO:
            side = [types.index(unit) for unit, count in army for _ in range(count)]
            register_scenario(
                name,
                Scenario(
                    unit_types=jnp.array(side * 2, dtype=jnp.uint8),
                    num_allies=len(side),
                    num_enemies=len(side),
                    smacv2_position_generation=False,
                    smacv2_unit_type_generation=False,
                ),
            )
    return MAP_NAME_TO_SCENARIO


def smax_map_names() -> list[str]:
    """Names of the maps JaxMARL's SMAX knows (including any added with ``register_scenario``)."""
    return sorted(_smax_registry())


def _to_torch(x: Any, device: torch.device) -> torch.Tensor:
    """JAX array → torch tensor, zero-copy via dlpack where possible."""
    try:
        tensor = torch.from_dlpack(x)
    except Exception:  # any dlpack failure falls back to a host copy
        tensor = torch.as_tensor(np.asarray(x))
    return tensor.to(device)


def _to_jax(tensor: torch.Tensor, jax_device: Any) -> Any:
    """Torch tensor → JAX array on ``jax_device``, via dlpack where possible."""
    jax = _import_jax()
    try:
        array = jax.numpy.from_dlpack(tensor.contiguous())
    except Exception:  # any dlpack failure falls back to a host copy
        array = jax.numpy.asarray(tensor.detach().cpu().numpy())
    return jax.device_put(array, jax_device)


def _build_jax_functions(env: Any, num_envs: int) -> dict[str, Any]:
    """Jitted batched ``reset_all``, ``reset_where`` and ``step`` (with auto-reset) over ``env``."""
    jax = _import_jax()
    jnp = jax.numpy
    agents, n_allies = env.agents, env.num_allies

    def observe(obs: dict, state: Any) -> dict[str, Any]:
        avail = env.get_avail_actions(state)
        return {
            "observation": jnp.stack([obs[a] for a in agents]).astype(jnp.float32),
            "action_mask": jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
            "state": obs["world_state"].astype(jnp.float32),
        }

    def reset_one(key: Any) -> tuple[Any, dict]:
        obs, state = env.reset(key)
        # strong dtypes: a weakly typed leaf would make ``step`` recompile on its own output
        state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
        return state, observe(obs, state)

    def step_one(key: Any, state: Any, action: Any) -> tuple[Any, dict, dict]:
        step_key, reset_key = jax.random.split(key)
        action_dict = {a: action[i] for i, a in enumerate(agents)}
        obs, state, rewards, _, _ = env.step_env(step_key, state, action_dict)
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[:n_allies].any(), ~alive[n_allies:].any()
        terminated = allies_dead | enemies_dead
        # JaxMARL checks the limit before counting the step (episodes last max_steps + 1): cut at max_steps
        done = terminated | (state.state.step >= env.max_steps)
        flags = jnp.stack([terminated, done & ~terminated, done, enemies_dead & ~allies_dead])
        out = observe(obs, state)
        out["reward"] = jnp.stack([rewards[a] for a in agents]).astype(jnp.float32)
        out["flags"] = flags
        fresh_state, fresh_obs = reset_one(reset_key)
        pick = lambda new, old: jnp.where(done, new, old)  # noqa: E731
        state = jax.tree.map(pick, fresh_state, state)
        current = jax.tree.map(pick, fresh_obs, {k: out[k] for k in fresh_obs})
        return state, out, current

    def split(key: Any) -> tuple[Any, Any]:
        key, sub = jax.random.split(key)
        return key, jax.random.split(sub, num_envs)

    def reset_all(key: Any) -> tuple[Any, Any, dict]:
        key, keys = split(key)
        return (key, *jax.vmap(reset_one)(keys))

    def reset_where(key: Any, state: Any, current: dict, mask: Any) -> tuple[Any, Any, dict]:
        key, fresh_state, fresh_obs = reset_all(key)

        def pick(new: Any, old: Any) -> Any:
            return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        return key, jax.tree.map(pick, fresh_state, state), jax.tree.map(pick, fresh_obs, current)

    def step(key: Any, state: Any, actions: Any) -> tuple[Any, Any, dict, dict]:
        key, keys = split(key)
        return (key, *jax.vmap(step_one)(keys, state, actions))

    return {"reset_all": jax.jit(reset_all), "reset_where": jax.jit(reset_where), "step": jax.jit(step)}


_COMPILED: dict[tuple, tuple[Any, dict[str, Any]]] = {}


def _smax_and_functions(map_name: str, num_envs: int, smax_kwargs: dict[str, Any]) -> tuple[Any, dict]:
    """The JaxMARL env and its jitted functions, shared by same-configuration SmaxEnvs (no recompile)."""
    from jaxmarl.environments.smax import HeuristicEnemySMAX

    key = (map_name, num_envs, tuple(sorted(smax_kwargs.items())))
    try:
        hash(key)
    except TypeError:  # e.g. array-valued kwargs: build, but do not share
        key = None
    if key is None or key not in _COMPILED:
        env = HeuristicEnemySMAX(scenario=_smax_registry()[map_name], **smax_kwargs)
        built = (env, _build_jax_functions(env, num_envs))
        if key is None:
            return built
        _COMPILED[key] = built
    return _COMPILED[key]


class SmaxEnv(StarCraftSpecs, EnvBase):
    """``num_envs`` SMAX battles against JaxMARL's ``HeuristicEnemySMAX``, batched in one JAX call.

    Args:
        map_name: a map of JaxMARL's registry (``smax_map_names()``): ``"3m"``, ``"2s3z"``, ``"8m"``, ...
        num_envs: number of parallel battles (the env's batch size).
        seed: seed of the JAX PRNG key; ``None`` draws one from torch's global generator.
        device: torch device of the returned tensors. JAX runs on the matching GPU when it has one, else CPU.
        **smax_kwargs: forwarded to ``HeuristicEnemySMAX`` (``max_steps``, ``enemy_shoots``, ``attack_mode``,
            ``won_battle_bonus``, ``see_enemy_actions``, ``walls_cause_death``, ...).
    """

    batch_locked = True

    def __init__(
        self,
        map_name: str,
        *,
        num_envs: int = 1,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        **smax_kwargs: Any,
    ) -> None:
        registry = _smax_registry()
        if map_name not in registry:
            raise ValueError(f"Unknown SMAX map_name {map_name!r}; valid maps: {', '.join(sorted(registry))}")
        jax = _import_jax()
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.map_name = map_name
        self._env, self._fns = _smax_and_functions(map_name, num_envs, smax_kwargs)
        self.n_agents: int = self._env.num_agents
        self.n_actions: int = self._env.num_ally_actions
        self.obs_dim: int = self._env.obs_size
        self.state_dim: int = self._env.state_size
        self.episode_limit: int = self._env.max_steps
        self._jax_device = self._pick_jax_device(jax)
        self._key: Any = None
        self._state: Any = None  # batched JAX state, always at a live (possibly just reset) step
        self._current: dict[str, Any] | None = None  # JAX observations of ``_state``
        self._fresh = torch.zeros(num_envs, dtype=torch.bool)  # envs whose ``_state`` was never stepped
        self._make_specs()
        self._set_seed(seed)

    def _pick_jax_device(self, jax: Any) -> Any:
        """The GPU torch uses when JAX has GPUs, else JAX's CPU."""
        if self.device is not None and self.device.type == "cuda":
            try:
                gpus = jax.devices("gpu")
            except RuntimeError:  # CPU-only jaxlib
                gpus = []
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            if index < len(gpus):
                return gpus[index]
        return jax.devices("cpu")[0]

    def _set_seed(self, seed: int | None) -> None:
        jax = _import_jax()
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self._key = jax.device_put(jax.random.PRNGKey(seed), self._jax_device)

    def _pack(self, out: dict[str, Any], flags: torch.Tensor | None) -> TensorDictBase:
        """Torch tensordict of the JAX outputs; ``flags`` ``[B, 4]`` as ``_FLAGS`` (``None``: all False)."""
        (b,), n = self.batch_size, self.n_agents
        if flags is None:
            flags = torch.zeros(b, len(_FLAGS), dtype=torch.bool, device=self.device)
        packed = TensorDict({GROUP: TensorDict(batch_size=(b, n))}, batch_size=self.batch_size, device=self.device)
        packed.set(OBS, _to_torch(out["observation"], self.device))
        packed.set(ACTION_MASK, _to_torch(out["action_mask"], self.device))
        packed.set(STATE, _to_torch(out["state"], self.device))
        packed.set(BATTLE_WON, flags[:, 3:4].clone())
        for i, key in enumerate(_FLAGS[:3]):
            packed.set(key, flags[:, i : i + 1].clone())
            packed.set((GROUP, key), flags[:, None, i : i + 1].expand(b, n, 1).clone())
        if "reward" in out:
            packed.set(REWARD, _to_torch(out["reward"], self.device).unsqueeze(-1))
        return packed

    def _reset_mask(self, tensordict: TensorDictBase | None) -> torch.Tensor | None:
        """The envs to reset, ``None`` meaning all of them (no ``"_reset"`` entry)."""
        if tensordict is None:
            return None
        mask = tensordict.get("_reset", None)
        if mask is None:
            mask = tensordict.get((GROUP, "_reset"), None)
        if mask is None:
            return None
        return mask.reshape(self.batch_size[0], -1).any(-1).cpu()

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        mask = self._reset_mask(tensordict)
        if mask is None or self._state is None:
            self._key, self._state, self._current = self._fns["reset_all"](self._key)
            self._fresh.fill_(True)
        else:
            stale = mask & ~self._fresh
            if stale.any():  # envs asked to restart mid-episode; finished ones were auto-reset already
                jax_mask = _to_jax(stale, self._jax_device)
                self._key, self._state, self._current = self._fns["reset_where"](
                    self._key, self._state, self._current, jax_mask
                )
                self._fresh |= stale
        out = self._pack(self._current, None)
        return out.clone()  # never hand torch a view of the JAX arrays we keep

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = _to_jax(tensordict.get(ACTION).to(torch.int32), self._jax_device)
        self._key, self._state, out, self._current = self._fns["step"](self._key, self._state, actions)
        flags = _to_torch(out["flags"], self.device)
        self._fresh = flags[:, 2].cpu().clone()
        return self._pack(out, flags)


def make_smax_env(
    map_name: str,
    *,
    num_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> EnvBase:
    """Build a :class:`SmaxEnv`; raises ``ValueError`` naming ``map_name`` and the valid maps if unknown."""
    return SmaxEnv(map_name, num_envs=num_envs, seed=seed, device=device, **kwargs)

"""Multi-Agent MuJoCo (``gymnasium_robotics.mamujoco_v1``) as a TorchRL environment.

``MamujocoEnv`` wraps the PettingZoo parallel env directly (TorchRL's ``PettingZooWrapper`` crashes on the
first step because reset and step infos differ, and it does not expose the global ``state()``). Layout:

- one agent group ``"agents"`` with ``observation`` ``[N, obs_dim]`` (float32, zero-padded to the largest
  agent observation) and ``action_dim_mask`` ``[N, act_dim]`` (True = real action dimension);
- ``("agents", "action")``: ``Bounded`` ``[N, act_dim]``; padded dims have bounds [-1, 1] and are sliced off
  before the simulator sees them;
- ``("agents", "reward")`` ``[N, 1]``: the team reward replicated per agent;
- ``done``/``terminated``/``truncated`` ``[1]`` at the root and ``[N, 1]`` under ``"agents"``; the time limit
  (``max_steps``) gives ``truncated=True, terminated=False``, falls give ``terminated=True``;
- ``"state"`` ``[state_dim]``: the env's global ``state()``.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv

from kpg_lightning.envs.info import (
    ACTION,
    ACTION_DIM_MASK,
    DONE,
    DONE_FLAGS,
    GROUP,
    OBS,
    REWARD,
    STATE,
    TERMINATED,
    TRUNCATED,
)

__all__ = ["MamujocoEnv", "MamujocoInfo", "make_mamujoco_env", "mamujoco_info", "mamujoco_scenarios"]

_SEGMENT_SCENARIOS = ("ManySegmentAnt", "ManySegmentSwimmer")  # agent_conf is any "<n_agents>x<segments>"


@functools.cache
def _valid_agent_confs() -> dict[str, tuple[str | None, ...]]:
    """Scenario -> accepted ``agent_conf`` values, read from gymnasium_robotics' own partition table.

    ``get_parts_and_edges`` is a chain of ``if label in [...]`` blocks, each testing
    ``partitioning == "<conf>"``; ``None`` (single agent) is accepted by every plain Gymnasium scenario.
    """
    from gymnasium_robotics.envs.multiagent_mujoco import mujoco_multi, obsk

    source = inspect.getsource(obsk.get_parts_and_edges)
    confs: dict[str, tuple[str | None, ...]] = dict.fromkeys(mujoco_multi._MUJOCO_GYM_ENVIROMENTS, (None,))
    for block in re.split(r"\n\s*(?:el)?if label in ", source)[1:]:
        labels = re.findall(r'"(\w+)"', block.split("\n", 1)[0])
        found = tuple(re.findall(r'partitioning == "([^"]+)"', block))
        for label in labels:
            confs[label] = found if label in _SEGMENT_SCENARIOS else (*found, None)
    return confs


def mamujoco_scenarios() -> dict[str, tuple[str | None, ...]]:
    """Scenario -> valid ``agent_conf`` values (``ManySegment*`` take any ``"<n_agents>x<segments>"``)."""
    return dict(_valid_agent_confs())


def _validate(scenario: str, agent_conf: str | None) -> None:
    """Raise a one-line ``ValueError`` for an unknown scenario or an agent_conf the scenario lacks."""
    confs = _valid_agent_confs()
    if scenario not in confs:
        valid = ", ".join(sorted(confs))
        raise ValueError(f"env.scenario: unknown MaMuJoCo scenario {scenario!r}; valid: {valid}")
    if scenario in _SEGMENT_SCENARIOS:
        if agent_conf is None or not re.fullmatch(r"[1-9]\d*x[1-9]\d*", agent_conf):
            raise ValueError(
                f"env.agent_conf: invalid {agent_conf!r} for MaMuJoCo {scenario}; valid: "
                "'<n_agents>x<segments_per_agent>', e.g. '2x3'"
            )
    elif agent_conf not in confs[scenario]:
        raise ValueError(
            f"env.agent_conf: invalid {agent_conf!r} for MaMuJoCo {scenario}; valid: "
            f"{', '.join(repr(c) for c in confs[scenario])}"
        )


def _make_pettingzoo_env(scenario: str, agent_conf: str | None, agent_obsk: int | None, **kwargs: Any):
    """Validate the arguments and build the PettingZoo parallel env."""
    _validate(scenario, agent_conf)
    from gymnasium_robotics import mamujoco_v1

    return mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, **kwargs)


@dataclass(frozen=True)
class MamujocoInfo:
    """Sizes of a MaMuJoCo task: per-agent observation/action sizes and the global state size."""

    n_agents: int
    obs_sizes: tuple[int, ...]
    act_sizes: tuple[int, ...]
    state_dim: int

    @property
    def obs_dim(self) -> int:
        """Padded per-agent observation size."""
        return max(self.obs_sizes)

    @property
    def act_dim(self) -> int:
        """Padded per-agent action size."""
        return max(self.act_sizes)


def _info_of(env: Any) -> MamujocoInfo:
    agents = env.possible_agents
    return MamujocoInfo(
        n_agents=len(agents),
        obs_sizes=tuple(env.observation_space(a).shape[0] for a in agents),
        act_sizes=tuple(env.action_space(a).shape[0] for a in agents),
        state_dim=env.single_agent_env.observation_space.shape[0],
    )


def mamujoco_info(scenario: str, agent_conf: str | None, agent_obsk: int | None = 1) -> MamujocoInfo:
    """Sizes of a MaMuJoCo task (builds the env once; a few milliseconds for the standard scenarios)."""
    env = _make_pettingzoo_env(scenario, agent_conf, agent_obsk)
    try:
        return _info_of(env)
    finally:
        env.close()


class MamujocoEnv(EnvBase):
    """One MaMuJoCo task as a TorchRL env with ``batch_size=[]`` (see the module docstring for the keys).

    Args:
        scenario: MuJoCo task, e.g. ``"Walker2d"``, ``"HalfCheetah"``, ``"Humanoid"``, ``"Ant"``.
        agent_conf: partition of the joints into agents, e.g. ``"2x3"``, ``"9|8"``; ``None`` = one agent.
        agent_obsk: how many joints away an agent observes (``None`` = full observability).
        max_steps: episode length limit; reaching it is a truncation, not a termination.
        device: device of the returned tensors.
        **kwargs: forwarded to the underlying Gymnasium MuJoCo env (e.g. ``terminate_when_unhealthy``).
    """

    def __init__(
        self,
        scenario: str,
        agent_conf: str | None,
        *,
        agent_obsk: int | None = 1,
        max_steps: int = 1000,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"env.max_steps must be >= 1, got {max_steps}")
        if scenario != "CoupledHalfCheetah":  # built via gymnasium.make: keep its TimeLimit out of the way
            kwargs.setdefault("max_episode_steps", max_steps)
        self._env = _make_pettingzoo_env(scenario, agent_conf, agent_obsk, **kwargs)
        super().__init__(device=device, batch_size=torch.Size([]))
        self.scenario, self.agent_conf, self.max_steps = scenario, agent_conf, max_steps
        self.info = _info_of(self._env)
        self._agents = list(self._env.possible_agents)
        self._step_count = 0
        self._make_specs()

    def _make_specs(self) -> None:
        info, n = self.info, self.info.n_agents
        global_low = self._env.single_agent_env.action_space.low
        global_high = self._env.single_agent_env.action_space.high
        low, high = -np.ones((n, info.act_dim), np.float32), np.ones((n, info.act_dim), np.float32)
        mask = np.zeros((n, info.act_dim), bool)
        for i, partition in enumerate(self._env.agent_action_partitions):
            ids = [node.act_ids for node in partition]
            low[i, : len(ids)], high[i, : len(ids)] = global_low[ids], global_high[ids]
            mask[i, : len(ids)] = True
        self._mask = torch.as_tensor(mask, device=self.device)
        dev = self.device
        observation = Composite({GROUP: Composite(shape=(n,), device=dev)}, device=dev)
        observation[OBS] = Unbounded((n, info.obs_dim), dtype=torch.float32, device=dev)
        observation[ACTION_DIM_MASK] = Binary(shape=(n, info.act_dim), dtype=torch.bool, device=dev)
        observation[STATE] = Unbounded((info.state_dim,), dtype=torch.float32, device=dev)
        self.observation_spec = observation
        action = Composite({GROUP: Composite(shape=(n,), device=dev)}, device=dev)
        action[ACTION] = Bounded(
            low=torch.as_tensor(low, device=dev),
            high=torch.as_tensor(high, device=dev),
            shape=(n, info.act_dim),
            dtype=torch.float32,
            device=dev,
        )
        self.action_spec = action
        reward = Composite({GROUP: Composite(shape=(n,))}, device=dev)
        reward[REWARD] = Unbounded((n, 1), dtype=torch.float32, device=dev)
        self.reward_spec = reward
        flag = functools.partial(Categorical, n=2, dtype=torch.bool, device=dev)
        self.done_spec = Composite(
            {
                **{key: flag(shape=(1,)) for key in DONE_FLAGS},
                GROUP: Composite({key: flag(shape=(n, 1)) for key in DONE_FLAGS}, shape=(n,), device=dev),
            },
            device=dev,
        )

    def _output(self, observations: dict[str, np.ndarray], reward: float, terminated: bool, truncated: bool):
        """Pack one PettingZoo result into the contract's tensordict (padding observations, float32)."""
        info, n = self.info, self.info.n_agents
        obs = np.zeros((n, info.obs_dim), np.float32)
        for i, agent in enumerate(self._agents):
            obs[i, : info.obs_sizes[i]] = observations[agent]
        flags = {DONE: terminated or truncated, TERMINATED: terminated, TRUNCATED: truncated}
        dev = self.device
        out = TensorDict({GROUP: TensorDict(batch_size=(n,))}, batch_size=self.batch_size, device=dev)
        for key, value in flags.items():
            out.set(key, torch.tensor([value], device=dev))
            out.set((GROUP, key), torch.full((n, 1), value, dtype=torch.bool, device=dev))
        out.set(OBS, torch.from_numpy(obs).to(dev))
        out.set(ACTION_DIM_MASK, self._mask.clone())
        out.set(REWARD, torch.full((n, 1), reward, dtype=torch.float32, device=dev))
        out.set(STATE, torch.from_numpy(np.asarray(self._env.state(), dtype=np.float32)).to(dev))
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        observations, _ = self._env.reset()
        self._step_count = 0
        out = self._output(observations, 0.0, False, False)
        del out[REWARD]
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(ACTION).detach().to("cpu", torch.float64).numpy()
        actions = {agent: action[i, : self.info.act_sizes[i]] for i, agent in enumerate(self._agents)}
        observations, rewards, terminations, truncations, _ = self._env.step(actions)
        self._step_count += 1
        first = self._agents[0]
        terminated = bool(terminations[first])
        truncated = not terminated and (bool(truncations[first]) or self._step_count >= self.max_steps)
        return self._output(observations, float(rewards[first]), terminated, truncated)

    def _set_seed(self, seed: int | None) -> None:
        """Seed the simulator's RNG (initial-state noise); the next ``reset`` continues from it."""
        self._env.reset(seed=seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the MuJoCo env, then the TorchRL env."""
        self._env.close()
        super().close(raise_if_closed=raise_if_closed)


def make_mamujoco_env(
    scenario: str,
    agent_conf: str | None,
    *,
    agent_obsk: int | None = 1,
    max_steps: int = 1000,
    num_envs: int = 1,
    parallel: bool = False,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> EnvBase:
    """A ``MamujocoEnv``, or ``num_envs`` copies in a ``SerialEnv``/``ParallelEnv`` (batch ``[num_envs]``).

    Arguments are validated here (``ValueError`` naming the bad argument and its valid choices) before any
    worker starts. With ``seed`` the env(s) are seeded via ``set_seed`` (copies get distinct derived seeds).
    """
    _validate(scenario, agent_conf)
    if num_envs < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {num_envs}")
    make = functools.partial(
        MamujocoEnv, scenario, agent_conf, agent_obsk=agent_obsk, max_steps=max_steps, device=device, **kwargs
    )
    if num_envs == 1:
        env: EnvBase = make()
    else:
        env = (ParallelEnv if parallel else SerialEnv)(num_envs, make, device=device)
    if seed is not None:
        env.set_seed(seed)
    return env

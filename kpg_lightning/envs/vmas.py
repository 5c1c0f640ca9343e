"""VMAS (pure-torch vectorized multi-agent simulator) as a TorchRL environment.

Episodes end at ``max_steps`` as *truncations* (TorchRL's ``StepCounter``), so critics bootstrap through them;
VMAS's own ``done`` (e.g. the package falling in ``balance``) is a termination. VMAS has no global state: critics
condition on the joint observation (:func:`kpg_lightning.envs.info.global_state`), which replay does not store twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrl.envs import EnvBase, StepCounter, TransformedEnv

from kpg_lightning.envs.info import GROUP

__all__ = ["make_vmas_env", "vmas_scenarios"]


def vmas_scenarios() -> list[str]:
    """Names of the VMAS scenarios that can be made by name."""
    import vmas

    return sorted(vmas.scenarios + vmas.mpe_scenarios + vmas.debug_scenarios)


def make_vmas_env(
    scenario: str,
    *,
    num_envs: int = 32,
    max_steps: int = 100,
    continuous_actions: bool = True,
    scenario_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> EnvBase:
    """Make ``num_envs`` vectorized copies of a VMAS scenario, agents grouped under ``"agents"``.

    Args:
        scenario: VMAS scenario name (``balance``, ``navigation``, ``transport``, ...).
        num_envs: environments simulated in one batch.
        max_steps: episode length; reaching it is a truncation.
        continuous_actions: continuous (default) or discrete actions.
        scenario_kwargs: keyword arguments of the scenario (e.g. ``{"n_agents": 4}``).
        seed: seed of the simulator.
        device: torch device the simulator runs on.
    """
    from torchrl.envs.libs.vmas import VmasEnv

    valid = vmas_scenarios()
    if scenario not in valid:
        raise ValueError(f"env.scenario: unknown VMAS scenario {scenario!r}; valid: {', '.join(valid)}")
    if num_envs < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {num_envs}")
    if max_steps < 1:
        raise ValueError(f"env.max_steps must be >= 1, got {max_steps}")
    env = VmasEnv(
        scenario,
        num_envs=num_envs,
        continuous_actions=continuous_actions,
        categorical_actions=True,
        seed=seed,
        device=device,
        **(scenario_kwargs or {}),
    )
    if list(env.group_map) != [GROUP]:
        raise ValueError(
            f"env.scenario: {scenario!r} has agent groups {list(env.group_map)}; "
            f"only scenarios with one group {GROUP!r} are supported"
        )
    return TransformedEnv(env, StepCounter(max_steps))

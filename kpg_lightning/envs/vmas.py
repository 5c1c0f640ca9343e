"""VMAS (pure-torch vectorized multi-agent simulator) as a TorchRL environment.

Episodes end at ``max_steps`` as *truncations* (TorchRL's ``StepCounter``), so critics bootstrap through them;
VMAS's own ``done`` (e.g. the package falling in ``balance``) is a termination. VMAS has no global state: critics
condition on the joint observation (:func:`kpg_lightning.envs.info.global_state`), which replay does not store twice.

VMAS keeps all of a simulation's state in torch tensors (entities' states, the scenario's episode tensors, the step
counters), so :class:`VmasState` can save and restore it: a checkpoint taken mid-episode continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDict
from torchrl.envs import EnvBase, StepCounter, TransformedEnv

from kpg_lightning.envs.info import GROUP
from kpg_lightning.errors import CheckpointError

__all__ = ["VmasState", "make_vmas_env", "simulator_state", "vmas_scenarios"]


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


SCRATCH = ("forces_dict", "torques_dict")
"""VMAS attributes rebuilt at every physics substep (the world's force accumulators): not simulation state."""


def _is_vmas(obj: Any) -> bool:
    """A VMAS object (scenarios are loaded from files: their own module is not ``vmas.*``, their base class is), or
    a torch distribution a scenario keeps (``sampling``'s Gaussians)."""
    if isinstance(obj, torch.distributions.Distribution):
        return True
    return hasattr(obj, "__dict__") and any(c.__module__.startswith("vmas.") for c in type(obj).__mro__[:-1])


def _slots(obj: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Any, Any, torch.Tensor | None]]:
    """``(path, container, key, tensor or None)`` of every tensor (or unset attribute) reachable from a VMAS object
    through attributes, lists and dicts (dict entries by position: VMAS keys some dicts by entity), in a fixed order;
    aliases included."""
    if isinstance(obj, list | dict):
        items = list(enumerate(obj)) if isinstance(obj, list) else [(k, obj[k]) for k in obj]
        for i, (key, value) in enumerate(items):
            yield from _visit(value, f"{path}.{i}", obj, key, seen)
    elif _is_vmas(obj):
        for key, value in list(vars(obj).items()):
            if key not in SCRATCH:
                yield from _visit(value, f"{path}.{key}" if path else key, obj, key, seen)


def _visit(value: Any, path: str, container: Any, key: Any, seen: set[int]) -> Iterator[tuple[str, Any, Any, Any]]:
    if value is None or isinstance(value, torch.Tensor):  # None: a tensor not set yet (e.g. actions before a step)
        yield path, container, key, value
    elif id(value) not in seen:
        seen.add(id(value))
        yield from _slots(value, path, seen)


def _set(container: Any, key: Any, value: torch.Tensor | None) -> None:
    if isinstance(container, list | dict):
        container[key] = value
    elif value is None and isinstance(container, torch.distributions.Distribution):
        container.__dict__.pop(key, None)  # a lazily computed property, not computed yet
    else:
        setattr(container, key, value)


class VmasState:
    """Saves and restores every tensor of a VMAS simulation (the ``SimulatorState`` of
    :class:`kpg_lightning.experience.Experience`): the scenario's, the world's and its entities', each under its first
    attribute path. A restored tensor replaces the attribute (and its aliases, which keep sharing it) on the
    simulator's current device; one set only during episodes (e.g. a scenario's per-agent distances) is created, and
    one unset when saved is unset again. Python numbers are not saved: VMAS scenarios keep episode state in tensors."""

    def __init__(self, env: EnvBase):
        self.env = env

    @property
    def simulator(self) -> Any:
        return self.env.base_env._env

    def _slots(self) -> dict[str, list[tuple[Any, Any, torch.Tensor | None]]]:
        """First path of each distinct tensor (and each unset attribute) → every ``(container, key, value)``
        holding it."""
        first: dict[int, str] = {}
        out: dict[str, list[tuple[Any, Any, torch.Tensor | None]]] = {}
        for path, container, key, value in _slots(self.simulator, "", {id(self.simulator)}):
            name = path if value is None else first.setdefault(id(value), path)
            out.setdefault(name, []).append((container, key, value))
        return out

    def capture(self) -> TensorDict:
        slots = self._slots().items()
        state = {path: s[0][2].detach().clone() for path, s in slots if s[0][2] is not None}
        return TensorDict({**state, **_capture_random_state(self.simulator)}, [])

    def _holder(self, path: str) -> tuple[Any, Any]:
        """The container and key of ``path`` (its parent must exist; the attribute itself need not)."""
        *parents, last = path.split(".")
        obj = self.simulator
        for part in parents:
            obj = (
                list(obj.values())[int(part)]
                if isinstance(obj, dict)
                else obj[int(part)]
                if isinstance(obj, list)
                else getattr(obj, part, None)
            )
            if obj is None:
                raise CheckpointError(f"the checkpoint's VMAS state does not fit this scenario: {path}")
        if isinstance(obj, dict):
            return obj, list(obj)[int(last)]
        return obj, int(last) if isinstance(obj, list) else last

    def restore(self, state: TensorDict) -> None:
        """Every saved tensor back in place; attributes that were unset when saved are unset again."""
        device = self.simulator.device
        _restore_random_state(self.simulator, state)
        state = state.exclude(*(k for k in state.keys() if k.startswith(RANDOM_STATE)))
        slots = self._slots()
        for path, holders in slots.items():
            if path not in state.keys():
                for container, key, _ in holders:
                    _set(container, key, None)
        for path in state.keys():
            value = state.get(path).to(device).clone()
            for container, key, _ in slots.get(path) or [(*self._holder(path), None)]:
                _set(container, key, value)


RANDOM_STATE = "vmas_random_state"
"""VMAS draws its resets and noise from a random state of its own (``Environment.vmas_random_state``: torch's CPU,
NumPy's and Python's, swapped in around every call and shared by all VMAS environments of a process); saved as
tensors under this prefix."""


def _capture_random_state(simulator: Any) -> dict[str, torch.Tensor]:
    torch_state, (_, keys, pos, has_gauss, gauss), (version, internal, py_gauss) = type(simulator).vmas_random_state
    return {
        f"{RANDOM_STATE}.torch": torch_state.clone(),
        f"{RANDOM_STATE}.numpy_keys": torch.from_numpy(keys.astype("int64")),
        f"{RANDOM_STATE}.numpy": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        f"{RANDOM_STATE}.python": torch.tensor([version, *internal], dtype=torch.int64),
        f"{RANDOM_STATE}.python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss]),
    }


def _restore_random_state(simulator: Any, state: TensorDict) -> None:
    random_state = type(simulator).vmas_random_state  # mutated in place: VMAS's decorators hold this list
    pos, has_gauss, gauss = state.get(f"{RANDOM_STATE}.numpy").tolist()
    keys = state.get(f"{RANDOM_STATE}.numpy_keys").numpy().astype("uint32")
    version, *internal = state.get(f"{RANDOM_STATE}.python").tolist()
    py_gauss = state.get(f"{RANDOM_STATE}.python_gauss").item()
    random_state[0] = state.get(f"{RANDOM_STATE}.torch").clone()
    random_state[1] = ("MT19937", keys, int(pos), int(has_gauss), gauss)
    random_state[2] = (version, tuple(internal), None if py_gauss != py_gauss else py_gauss)


def simulator_state(env: EnvBase) -> VmasState | None:
    """The state saver of ``env``'s simulator where it can be saved (VMAS), else None."""
    from torchrl.envs.libs.vmas import VmasEnv

    return VmasState(env) if isinstance(env.base_env, VmasEnv) else None

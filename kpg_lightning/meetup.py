"""The Meet-up game (Appendix B of the paper), solved with analytic gradients through the K-level engine.

Two point agents start at ι₁ = (0, 0) and ι₂ = (3, 2). Agent i has one parameter, the angle θ_i of its
first unit step a_i = (cos θ_i, sin θ_i); afterwards both play the optimal policy (straight at each other),
whose value is 0, so the return is the first reward (eq. 33–35):

    J_i(θ_i, θ_−i) = a_i · u_i − 1,    u_i = unit(ι_−i + a_−i − ι_i),

the cosine between agent i's step and the direction from its start to where the other agent will be.
u_i does not depend on θ_i, hence the closed-form gradient of eq. 36 is exact:

    ∇_θi J_i = (−sin θ_i, cos θ_i) · u_i = sin(ψ_i − θ_i),    ψ_i = angle of u_i.

The Nash equilibrium (and cooperative optimum, J₁ = J₂ = 0) is each agent heading straight at the other:
θ* = (φ, φ + π) with φ = atan2(2, 3), modulo 2π.

Constants of Theorem 4.2, derived analytically (the tests check them on a grid): with d = ι_−i − ι_i,
D = ‖d‖ = √13 and c = cos∠(a_−i, d), dψ_i/dθ_−i = (1 + Dc) / (D² + 1 + 2Dc), increasing in c, so its
largest magnitude is at c = −1, and
    L = max |dψ_i/dθ_−i| · max |cos(ψ_i − θ_i)| = 1 / (D − 1) = (√13 + 1) / 12 ≈ 0.3838 for both agents,
    ∇max = max |sin(ψ_i − θ_i)| = 1.
Levels contract when η < 1 / (L (n − 1)) = √13 − 1 ≈ 2.606.

Every K-level update runs through :func:`kpg_lightning.kpg.k_level_step`: level k minimises the
surrogate −Σ_i θ_i · g_i with g_i = ∇_θi J_i(θ_i, θ_−i⁽ᵏ⁻¹⁾) in closed form (detached), so autograd hands
the optimizer exactly the analytic gradient; with plain SGD (lr = η) each level is
θ⁽ᵏ⁾ = θ + η ∇J(θ, θ⁽ᵏ⁻¹⁾), Algorithm 1 of the paper.

CLI: ``python -m kpg_lightning.meetup k=8 eta=0.5 theta=[0.0,1.5708] out=DIR`` writes ``meetup.json``
and three figures (see :mod:`kpg_lightning.meetup_plots`).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from kpg_lightning.config import is_int, is_number
from kpg_lightning.errors import ConfigError
from kpg_lightning.files import dump_json, replace_atomically
from kpg_lightning.kpg import KLevelStats, gradient_step, k_level_step

__all__ = [
    "GRAD_MAX",
    "NASH",
    "N_AGENTS",
    "OPTIMIZERS",
    "START",
    "LevelUpdate",
    "Trajectory",
    "actions",
    "distance_to_nash",
    "k_level_update",
    "lipschitz_constant",
    "make_optimizer",
    "one_update",
    "policy_gradient",
    "report",
    "returns",
    "theorem_bound",
    "trajectory",
    "validate",
]

log = logging.getLogger(__name__)

START: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (3.0, 2.0))
"""Fixed initial positions ι₁, ι₂."""
N_AGENTS = 2
NASH: tuple[float, float] = (math.atan2(2.0, 3.0), math.atan2(2.0, 3.0) + math.pi)
"""θ* = (φ, φ + π): both head straight at each other (defined modulo 2π)."""
GRAD_MAX = 1.0
"""∇max = max |∇_θi J_i| = max |sin(ψ_i − θ_i)|."""
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "momentum": partial(torch.optim.SGD, momentum=0.9),
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
}
"""Gradient *ascent* with learning rate η; ``sgd`` is the paper's Algorithm 1, ``momentum`` its Fig. 2b."""


def actions(theta: Tensor) -> Tensor:
    """Unit steps a_i = (cos θ_i, sin θ_i): ``(..., 2) -> (..., 2 agents, 2 coords)``."""
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


def _aim(others: Tensor) -> Tensor:
    """u_i = unit(ι_−i + a_−i − ι_i) with a_−i taken from ``others``: ``(..., 2) -> (..., 2, 2)``."""
    start = torch.tensor(START, dtype=others.dtype, device=others.device)
    target = start.flip(0) + actions(others).flip(-2) - start
    return target / torch.linalg.vector_norm(target, dim=-1, keepdim=True)


def returns(theta: Tensor, others: Tensor | None = None) -> Tensor:
    """J_i(θ_i, θ'_−i) per agent (eq. 34–35), θ'_−i from ``others`` (default θ); shape ``(..., 2)``."""
    aim = _aim(theta if others is None else others)
    return (actions(theta) * aim).sum(-1) - 1.0


def policy_gradient(theta: Tensor, others: Tensor | None = None) -> Tensor:
    """Closed-form ∇_θi J_i(θ_i, θ'_−i) = (−sin θ_i, cos θ_i) · u_i (eq. 36); shape ``(..., 2)``."""
    aim = _aim(theta if others is None else others)
    tangent = torch.stack([-torch.sin(theta), torch.cos(theta)], dim=-1)
    return (tangent * aim).sum(-1)


def distance_to_nash(theta: Sequence[float] | Tensor) -> float:
    """‖θ − θ*‖ with each angle difference wrapped to [−π, π)."""
    diff = torch.as_tensor(theta, dtype=torch.float64) - torch.tensor(NASH, dtype=torch.float64)
    return float(torch.linalg.vector_norm(torch.remainder(diff + math.pi, 2 * math.pi) - math.pi))


def lipschitz_constant() -> float:
    """L = max_i sup |∂∇_θi J_i / ∂θ_−i| = 1 / (‖ι₂ − ι₁‖ − 1), analytic (see the module docstring)."""
    return 1.0 / (math.dist(*START) - 1.0)


def theorem_bound(
    k: int, eta: float, *, lipschitz: float | None = None, n: int = N_AGENTS, grad_max: float = GRAD_MAX
) -> list[float]:
    """Theorem 4.2 (eq. 5): ‖θ⁽ʲ⁾ − θ⁽ʲ⁻¹⁾‖ ≤ η (ηL)^(j−1) n (n−1)^(j−1) ∇max for levels j = 1..k."""
    lip = lipschitz_constant() if lipschitz is None else lipschitz
    return [eta * (eta * lip) ** (j - 1) * n * (n - 1) ** (j - 1) * grad_max for j in range(1, k + 1)]


def make_optimizer(name: str, params: Iterable[Tensor], eta: float) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS` with learning rate η."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, lr=eta)


def k_level_update(
    theta: torch.nn.Parameter, optimizer: torch.optim.Optimizer, k: int, adaptive_tol: float | None = None
) -> tuple[list[tuple[float, float]], KLevelStats]:
    """One K-level update of ``theta`` in place via the engine; returns the iterates θ⁽⁰⁾..θ⁽ᴷ⁾ and stats.

    Level k's objective is the surrogate −Σ_i θ_i · g_i, g_i = ∇_θi J_i(θ_i, θ_−i⁽ᵏ⁻¹⁾) in closed form, so the
    optimizer receives exactly the analytic (negated) gradient and ascends J.
    """
    levels: list[tuple[float, float]] = []

    def level_outputs(level: int) -> Tensor:
        levels.append(_pair(theta))
        return theta.detach().clone()

    def level_update(others: Tensor) -> Tensor:  # returns −Σ_i J_i(θ_i, θ_−i⁽ᵏ⁻¹⁾) before the step
        objective = -returns(theta.detach(), others).sum()
        grad = policy_gradient(theta.detach(), others)
        gradient_step(optimizer, -(theta * grad).sum())
        return objective

    stats = k_level_step(optimizer, k, level_update, level_outputs, params=[theta], adaptive_tol=adaptive_tol)
    levels.append(_pair(theta))
    return levels, stats


@dataclass
class LevelUpdate:
    """The levels of one K-level update from a given θ."""

    levels: list[tuple[float, float]]  # θ⁽⁰⁾ .. θ⁽ᴷ⁾
    level_deltas: list[float]  # ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖, k = 1..K
    stats: KLevelStats

    @property
    def distance_to_nash(self) -> list[float]:
        """Distance of every level iterate to the Nash equilibrium."""
        return [distance_to_nash(level) for level in self.levels]


@dataclass
class Trajectory:
    """θ after each K-level update and its distance to the Nash equilibrium."""

    k: int
    theta: list[tuple[float, float]] = field(default_factory=list)
    distance_to_nash: list[float] = field(default_factory=list)
    levels_run: list[int] = field(default_factory=list)


def _parameter(theta: Sequence[float]) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([float(t) for t in theta], dtype=torch.float64))


def _pair(theta: Tensor) -> tuple[float, float]:
    first, second = theta.detach().tolist()
    return first, second


def one_update(
    theta: Sequence[float], k: int, eta: float, optimizer: str = "sgd", adaptive_tol: float | None = None
) -> LevelUpdate:
    """Levels θ⁽⁰⁾..θ⁽ᴷ⁾ of one K-level update from ``theta`` with a fresh optimizer (float64)."""
    param = _parameter(theta)
    levels, stats = k_level_update(param, make_optimizer(optimizer, [param], eta), k, adaptive_tol)
    return LevelUpdate(levels=levels, level_deltas=list(stats.level_delta), stats=stats)


def trajectory(
    theta: Sequence[float], k: int, eta: float, steps: int, optimizer: str = "sgd", adaptive_tol: float | None = None
) -> Trajectory:
    """``steps`` K-level updates from ``theta`` with one optimizer whose state persists across updates."""
    param = _parameter(theta)
    opt = make_optimizer(optimizer, [param], eta)
    result = Trajectory(k=k)
    for _ in range(steps):
        _, stats = k_level_update(param, opt, k, adaptive_tol)
        result.theta.append(_pair(param))
        result.distance_to_nash.append(distance_to_nash(param.detach()))
        result.levels_run.append(stats.levels_run)
    return result


def report(
    k: int,
    eta: float,
    theta: Sequence[float],
    steps: int,
    ks: Sequence[int],
    optimizer: str = "sgd",
    adaptive_tol: float | None = None,
) -> dict[str, Any]:
    """Everything ``meetup.json`` holds: one update's levels, the Theorem 4.2 bound and a trajectory per K."""
    update = one_update(theta, k, eta, optimizer, adaptive_tol)
    lip = lipschitz_constant()
    trajectories = {kk: trajectory(theta, kk, eta, steps, optimizer, adaptive_tol) for kk in ks}
    return {
        "k": k,
        "eta": eta,
        "theta": [float(t) for t in theta],
        "optimizer": optimizer,
        "steps": steps,
        "adaptive_tol": adaptive_tol,
        "levels_run": update.stats.levels_run,
        "levels": [list(level) for level in update.levels],
        "level_deltas": update.level_deltas,
        "level_distance_to_nash": update.distance_to_nash,
        "bound": theorem_bound(update.stats.levels_run, eta, lipschitz=lip),
        "lipschitz": lip,
        "grad_max": GRAD_MAX,
        "eta_max": 1.0 / (lip * (N_AGENTS - 1)),
        "nash": list(NASH),
        "distance_to_nash_start": distance_to_nash(theta),
        "trajectory": {
            str(kk): {
                "theta": [list(t) for t in tr.theta],
                "distance_to_nash": tr.distance_to_nash,
                "levels_run": tr.levels_run,
            }
            for kk, tr in trajectories.items()
        },
    }


def validate(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Check the CLI config and return it as plain values; raise :class:`ConfigError` (one line naming the key and
    what is allowed) on a bad value."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig | ListConfig) else dict(cfg)
    if not is_int(c.get("k")) or c["k"] < 1:
        raise ConfigError(f"k must be an integer >= 1, got {c.get('k')!r}")
    if not is_number(c.get("eta")) or c["eta"] <= 0:
        raise ConfigError(f"eta must be a finite number > 0, got {c.get('eta')!r}")
    theta = c.get("theta")
    if not isinstance(theta, list) or len(theta) != N_AGENTS or not all(is_number(t) for t in theta):
        raise ConfigError(f"theta must be a list of 2 finite numbers (angles in radians), got {theta!r}")
    if not is_int(c.get("steps")) or c["steps"] < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {c.get('steps')!r}")
    ks = c.get("ks")
    if not isinstance(ks, list) or not ks or not all(is_int(kk) and kk >= 1 for kk in ks):
        raise ConfigError(f"ks must be a non-empty list of integers >= 1, got {ks!r}")
    if c.get("optimizer") not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.get('optimizer')!r}")
    tol = c.get("adaptive_tol")
    if tol is not None and (not is_number(tol) or tol <= 0):
        raise ConfigError(f"adaptive_tol must be null or a number > 0, got {tol!r}")
    if c.get("out") is not None and not isinstance(c["out"], str):
        raise ConfigError(f"out must be null (the Hydra run dir) or a directory path, got {c['out']!r}")
    return c


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """Write ``meetup.json`` and the three figures into ``out``; returns the paths written."""
    from kpg_lightning import meetup_plots  # matplotlib only when figures are wanted

    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "meetup_levels.png": meetup_plots.plot_levels(result["levels"], START),
        "meetup_paths.png": meetup_plots.plot_paths(result["theta"], result["trajectory"], NASH, returns),
        "meetup_distance.png": meetup_plots.plot_distance(
            result["level_distance_to_nash"], result["level_deltas"], result["bound"]
        ),
    }
    written = []
    for name, fig in figures.items():
        replace_atomically(out / name, partial(meetup_plots.save, fig))
        written.append(out / name)

    dump_json(out / "meetup.json", result)
    return [out / "meetup.json", *written]


@hydra.main(version_base=None, config_path="pkg://kpg_lightning.conf", config_name="meetup")
def main(cfg: DictConfig) -> None:
    """CLI: one K-level update, trajectories per K, ``meetup.json`` and three PNGs in ``out``."""
    try:
        c = validate(cfg)
    except ConfigError as err:
        print(f"meetup: {err}", file=sys.stderr)
        sys.exit(2)
    if c["out"] is None:
        from hydra.core.hydra_config import HydraConfig

        c["out"] = HydraConfig.get().runtime.output_dir
    result = report(c["k"], float(c["eta"]), c["theta"], c["steps"], c["ks"], c["optimizer"], c["adaptive_tol"])
    paths = write_outputs(result, Path(c["out"]))
    log.info("level deltas: %s", ", ".join(f"{d:.3g}" for d in result["level_deltas"]))
    log.info("eta=%g, eta_max=1/(L(n-1))=%.4f, L=%.4f", c["eta"], result["eta_max"], result["lipschitz"])
    for kk, tr in result["trajectory"].items():
        log.info("K=%s: distance to Nash after %d updates %.3g", kk, c["steps"], tr["distance_to_nash"][-1])
    log.info("wrote %s", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

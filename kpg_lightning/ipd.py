"""The iterated prisoner's dilemma with one-step memory, exact (POLA's and LOLA's correctness check), on the project's
update machinery: naive learners, K-level naive learners (:func:`kpg_lightning.kpg.k_level_step`, as Meet-up) and
Outer-POLA (:mod:`kpg_lightning.lookahead`).

States, from an agent's own point of view (own move first): ``start, CC, CD, DC, DD``. Agent i's policy is five
logits θ_i, P(cooperate | s) = σ(θ_i[s]); agent 2 sees the joint state (a₁, a₂) as (a₂, a₁), so CD and DC swap.
Payoffs per round (agent 1, agent 2): CC (−1, −1), CD (−3, 0), DC (0, −3), DD (−2, −2). The discounted value is
exact (the Markov chain over the four joint states; LOLA's closed form):

    V_i = p₀ᵀ (I − γP)⁻¹ r_i,

p₀ the joint distribution of the first moves, P[s, s'] the transition matrix. Every agent maximises its own V_i.

Seeds run as a batch (leading dimension): each seed's initial θ comes from its own generator and the losses are
summed over seeds, so the seeds are independent (every optimizer here is elementwise) and a batch of seeds gives
the same numbers as one seed at a time.

CLI: ``python -m kpg_lightning.ipd algorithm=pola|naive|kpg k=2 seed=0 out=DIR`` writes ``DIR/ipd.json`` (each
agent's final P(cooperate | s)) and ``DIR/ipd.png`` (their course).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from kpg_lightning.config import is_int, is_number
from kpg_lightning.errors import ConfigError
from kpg_lightning.files import dump_json, replace_atomically
from kpg_lightning.kpg import gradient_step, k_level_step
from kpg_lightning.lookahead import proximal_lookahead, proximal_update, simultaneous_updates

__all__ = [
    "ALGORITHMS",
    "DEFAULTS",
    "STATES",
    "cooperation",
    "kl_divergence",
    "main",
    "parse",
    "summary",
    "train",
    "validate",
    "values",
    "write_outputs",
]

log = logging.getLogger(__name__)

STATES = ("start", "CC", "CD", "DC", "DD")
"""An agent's five states, own move first."""
PAYOFF = ((-1.0, -1.0), (-3.0, 0.0), (0.0, -3.0), (-2.0, -2.0))
"""Rewards (agent 1, agent 2) in the joint states CC, CD, DC, DD (agent 1's move first)."""
_SWAPPED = [0, 1, 3, 2, 4]  # agent 2's logits in agent 1's order of the joint states
ALGORITHMS = ("naive", "kpg", "pola")
CONFIG = Path(__file__).resolve().parent / "conf" / "ipd.yaml"
DEFAULTS: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(CONFIG))  # type: ignore[assignment]
"""The settings and their defaults: ``conf/ipd.yaml``, their one home (documented there)."""


def _joint(a: Tensor, b: Tensor) -> Tensor:
    """Joint distribution over CC, CD, DC, DD from the two agents' P(cooperate): ``(...) -> (..., 4)``."""
    return torch.stack([a * b, a * (1 - b), (1 - a) * b, (1 - a) * (1 - b)], dim=-1)


def values(theta1: Tensor, theta2: Tensor, gamma: float) -> Tensor:
    """Exact discounted values (V₁, V₂) of the policies ``theta1``, ``theta2`` (``(..., 5)`` logits each, from their
    own points of view): ``(..., 2)``."""
    p1, p2 = torch.sigmoid(theta1), torch.sigmoid(theta2)[..., _SWAPPED]
    p0 = _joint(p1[..., 0], p2[..., 0])
    transition = _joint(p1[..., 1:], p2[..., 1:])  # (..., 4 from, 4 to)
    eye = torch.eye(4, dtype=theta1.dtype, device=theta1.device)
    visits = torch.linalg.solve((eye - gamma * transition).transpose(-1, -2), p0.unsqueeze(-1)).squeeze(-1)
    return visits @ torch.tensor(PAYOFF, dtype=theta1.dtype, device=theta1.device)


def kl_divergence(params: Sequence[Tensor], anchor: Sequence[Tensor]) -> Tensor:
    """KL(π_anchor ‖ π_params) of the Bernoulli policies, averaged over the five states, summed over seeds."""
    (theta,), (theta0,) = params, anchor
    p0 = torch.sigmoid(theta0)
    log_p, log_q = torch.nn.functional.logsigmoid(theta), torch.nn.functional.logsigmoid(-theta)
    log_p0, log_q0 = torch.nn.functional.logsigmoid(theta0), torch.nn.functional.logsigmoid(-theta0)
    return (p0 * (log_p0 - log_p) + (1 - p0) * (log_q0 - log_q)).mean(-1).sum()


def cooperation(theta: Tensor) -> Tensor:
    """P(cooperate | s) for each of :data:`STATES`, own point of view."""
    return torch.sigmoid(theta)


def _init(seeds: Sequence[int], std: float) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        rows.append(torch.randn(2, 5, generator=gen, dtype=torch.float64) * std)
    theta = torch.stack(rows)
    return torch.nn.Parameter(theta[:, 0].clone()), torch.nn.Parameter(theta[:, 1].clone())


def _k_level(theta1: torch.nn.Parameter, theta2: torch.nn.Parameter, opt: torch.optim.Optimizer, k: int, gamma: float):
    """One K-level update of both naive learners through the engine (K = 1: the naive learners' update)."""

    def level_outputs(level: int) -> tuple[Tensor, Tensor]:
        return theta1.detach().clone(), theta2.detach().clone()

    def level_update(others: tuple[Tensor, Tensor]) -> Tensor:  # each agent's gradient against the others' level
        other1, other2 = others
        loss = -(values(theta1, other2, gamma)[..., 0] + values(other1, theta2, gamma)[..., 1]).sum()
        return gradient_step(opt, loss, params=[theta1, theta2], name="ipd loss")

    k_level_step(opt, k, level_update, level_outputs, params=[theta1, theta2])


def _pola(theta1: torch.nn.Parameter, theta2: torch.nn.Parameter, opts: Sequence[torch.optim.Optimizer], c: dict):
    """One Outer-POLA update of both agents, simultaneous (from the same θ)."""
    gamma = c["gamma"]
    look = {"lr": c["lr_in"], "steps": c["inner_steps"], "beta": c["beta_in"], "divergence": kl_divergence}

    def objective1() -> Tensor:  # agent 1's loss after agent 2's proximal look-ahead step(s), which depend on θ₁
        (other,) = proximal_lookahead([theta2], lambda p: -values(theta1, p[0], gamma)[..., 1].sum(), **look)
        return -values(theta1, other, gamma)[..., 0].sum()

    def objective2() -> Tensor:
        (other,) = proximal_lookahead([theta1], lambda p: -values(p[0], theta2, gamma)[..., 0].sum(), **look)
        return -values(other, theta2, gamma)[..., 1].sum()

    prox = {"steps": c["outer_steps"], "beta": c["beta_out"], "divergence": kl_divergence}
    simultaneous_updates(
        [
            (opts[0], [theta1], lambda: proximal_update(opts[0], [theta1], objective1, **prox)),
            (opts[1], [theta2], lambda: proximal_update(opts[1], [theta2], objective2, **prox)),
        ]
    )


def train(c: dict[str, Any], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run ``c["updates"]`` updates of ``c["algorithm"]`` for each of ``seeds`` (default ``[c["seed"]]``).

    Returns ``history``: P(cooperate | s) after each update (index 0: the initial policies), shape
    ``(updates + 1, seeds, 2 agents, 5 states)``, and ``values``: the final (V₁, V₂) per seed."""
    c = {**DEFAULTS, **c}
    seeds = [c["seed"]] if seeds is None else list(seeds)
    theta1, theta2 = _init(seeds, c["init_std"])
    if c["algorithm"] == "pola":
        opts = [torch.optim.SGD([theta1], lr=c["lr_out"]), torch.optim.SGD([theta2], lr=c["lr_out"])]
    else:
        opt = torch.optim.SGD([theta1, theta2], lr=c["lr"])
    k = c["k"] if c["algorithm"] == "kpg" else 1

    def probs() -> Tensor:
        return torch.stack([cooperation(theta1.detach()), cooperation(theta2.detach())], dim=1)

    history = [probs()]
    for _ in range(c["updates"]):
        if c["algorithm"] == "pola":
            _pola(theta1, theta2, opts, c)
        else:
            _k_level(theta1, theta2, opt, k, c["gamma"])
        history.append(probs())
    with torch.no_grad():
        final = values(theta1, theta2, c["gamma"])
    return {"seeds": seeds, "history": torch.stack(history), "values": final}


def summary(result: dict[str, Any], c: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """What ``ipd.json`` holds for seed ``result["seeds"][index]``: each agent's final P(cooperate | s) (own move
    first), the final values, the settings and the course (P(cooperate | s) after every update)."""
    history = result["history"][:, index]  # (updates + 1, 2, 5)
    agents = {
        f"agent_{i + 1}": dict(zip(STATES, history[-1, i].tolist(), strict=True)) for i in range(history.shape[1])
    }
    return {
        **{key: c[key] for key in DEFAULTS if key != "out"},
        "seed": result["seeds"][index],
        "states": list(STATES),
        "final": agents,
        "values": result["values"][index].tolist(),
        "history": {f"agent_{i + 1}": history[:, i].tolist() for i in range(history.shape[1])},
    }


def validate(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Check the CLI config and return it as plain values; :class:`ConfigError` (one line: the key, the bad value
    and what is allowed) on a bad or unknown key."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig | ListConfig) else dict(cfg)
    unknown = sorted(set(c) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of the IPD: one of {', '.join(DEFAULTS)}")
    c = {**DEFAULTS, **c}
    if c["algorithm"] not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {c['algorithm']!r}")
    if not is_int(c["k"]) or c["k"] < 1:
        raise ConfigError(f"k must be an integer >= 1, got {c['k']!r}")
    if c["k"] != 1 and c["algorithm"] != "kpg":
        raise ConfigError(f"k must be 1 with algorithm={c['algorithm']} (levels are for algorithm=kpg), got {c['k']!r}")
    for key in ("seed", "updates", "inner_steps", "outer_steps"):
        low = 0 if key == "seed" else 1
        if not is_int(c[key]) or c[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {c[key]!r}")
    if not is_number(c["gamma"]) or not 0 < c["gamma"] < 1:
        raise ConfigError(f"gamma must be a number in (0, 1), got {c['gamma']!r}")
    for key in ("init_std", "lr", "lr_in", "lr_out"):
        if not is_number(c[key]) or c[key] <= 0:
            raise ConfigError(f"{key} must be a finite number > 0, got {c[key]!r}")
    for key in ("beta_in", "beta_out"):
        if not is_number(c[key]) or c[key] < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {c[key]!r}")
    if c["out"] is not None and not isinstance(c["out"], str):
        raise ConfigError(f"out must be null (outputs/ipd/...) or a directory path, got {c['out']!r}")
    return c


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (agent, course) in zip(axes, report["history"].items(), strict=True):
        series = torch.tensor(course)
        for j, state in enumerate(STATES):
            ax.plot(series[:, j].numpy(), label=f"P(C | {state})")
        ax.set(title=f"{agent} ({report['algorithm']}, k={report['k']}, seed {report['seed']})", xlabel="update")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("P(cooperate), own move first")
    axes[1].legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``ipd.json`` and ``ipd.png`` into ``out`` (each atomically); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    replace_atomically(out / "ipd.png", lambda tmp: _plot(report, tmp))

    dump_json(out / "ipd.json", report)
    return [out / "ipd.json", out / "ipd.png"]


def parse(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments over ``conf/ipd.yaml``, validated. Not through Hydra: its ``algorithm`` would be the
    training config's group of that name, not this game's setting."""
    bad = next((a for a in argv if "=" not in a or a.startswith("=")), None)
    if bad is not None:
        raise ConfigError(f"{bad} is not allowed: arguments are key=value, keys {', '.join(DEFAULTS)}")
    try:
        overrides = OmegaConf.from_dotlist(list(argv))
    except Exception as exc:  # omegaconf's grammar errors
        raise ConfigError(f"{' '.join(argv)} is not allowed: {str(exc).splitlines()[0]}") from exc
    return validate(OmegaConf.merge(OmegaConf.create(DEFAULTS), overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train one seed, write ``ipd.json`` and ``ipd.png`` into ``out`` (default
    ``outputs/ipd/<algorithm>-k<k>-seed<seed>``); a bad argument ends as one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        c = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(c["out"] or f"outputs/ipd/{c['algorithm']}-k{c['k']}-seed{c['seed']}")
    report = summary(train(c), c)
    paths = write_outputs(report, out)
    for agent, probs in report["final"].items():
        log.info("%s P(cooperate): %s", agent, ", ".join(f"{s} {p:.2f}" for s, p in probs.items()))
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

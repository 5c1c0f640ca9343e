"""The look-ahead of POLA (Zhao, Lu, Grosse, Foerster, NeurIPS 2022, "Proximal Learning With Opponent-Learning
Awareness"), in its Outer-POLA form, beside the K-level engine it shares its save/restore with.

Outer-POLA, for every agent i, from the same θ (the others' parameters as they are before anyone's update):

    θ_j' = θ_j − η_in ∇_θj [L_j(θ_i, θ_j) + β_in KL(π_θj⁰ ‖ π_θj)]   (``inner_steps`` times, for every j ≠ i)
    θ_i ← θ_i − η_out ∇_θi [L_i(θ_i, θ_−i'(θ_i)) + β_out KL(π_θi⁰ ‖ π_θi)]   (``outer_steps`` optimizer steps)

where θ_j⁰, θ_i⁰ are the parameters at the start of the update (the proximal anchors) and every outer step
rebuilds the look-ahead from θ_j⁰ with the current θ_i. The others' look-ahead steps are taken with
``create_graph``, so agent i's gradient flows through them: ∂θ_j'/∂θ_i is the opponent-shaping term (a
higher-order gradient; β_in = 0 and one inner and one outer step with β_out = 0 is LOLA's exact update).

How this differs from KPG's recursion (:func:`kpg_lightning.kpg.k_level_step`): KPG evaluates each agent's
*first-order* gradient at the others' recursively updated parameters, θ_i⁽ᵏ⁾ = θ_i + η ∇_θi J_i(θ_i, θ_−i⁽ᵏ⁻¹⁾),
with the others' level-(k−1) outputs detached — no gradient flows through their update; it only finds a direction
consistent with where they are going. POLA differentiates *through* the others' (proximal) learning step, so an
agent optimises how its own parameters change the others' next policies (it shapes them). What they share is
here, not written twice: every agent's update starts from the same saved θ, and the parameters are restored
between agents (:class:`~kpg_lightning.optim.OptimizerSnapshot`, the engine's save/restore), so only the final,
simultaneous update persists; each outer step is an ordinary :func:`~kpg_lightning.optim.gradient_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from kpg_lightning.optim import OptimizerSnapshot, gradient_step, raw_optimizer

__all__ = ["Divergence", "Objective", "proximal_lookahead", "proximal_update", "simultaneous_updates"]

Objective = Callable[[Sequence[Tensor]], Tensor]
"""Parameters → a loss (to minimise); may close over other, live parameters the gradient should flow into."""
Divergence = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
"""``(params, anchor) -> KL(π_anchor ‖ π_params)`` (or any proximity measure that is 0 at ``params == anchor``)."""


def proximal_lookahead(
    params: Sequence[Tensor],
    objective: Objective,
    *,
    lr: float,
    steps: int,
    beta: float = 0.0,
    divergence: Divergence | None = None,
    create_graph: bool = True,
) -> list[Tensor]:
    """The parameters after ``steps`` differentiable gradient steps on ``objective + beta · divergence``.

    Starts from ``params`` detached (the anchor of the proximal term: the other agent's current policy); each step
    is θ ← θ − lr ∇_θ[objective(θ) + beta · divergence(θ, θ⁰)] taken with ``create_graph``, so the result is a
    function of whatever live parameters ``objective`` closes over (the shaping agent's) and backpropagates to them.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if beta != 0.0 and divergence is None:
        raise ValueError("a proximal look-ahead with beta != 0 needs a divergence")
    anchor = [p.detach() for p in params]
    current = [p.detach().clone().requires_grad_(True) for p in params]
    for _ in range(steps):
        loss = objective(current)
        if beta != 0.0 and divergence is not None:
            loss = loss + beta * divergence(current, anchor)
        grads = torch.autograd.grad(loss, current, create_graph=create_graph)
        current = [p - lr * g for p, g in zip(current, grads, strict=True)]
    return current


def proximal_update(
    optimizer: Any,
    params: Sequence[Tensor],
    objective: Callable[[], Tensor],
    *,
    steps: int,
    beta: float = 0.0,
    divergence: Divergence | None = None,
    name: str = "pola loss",
    step: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``steps`` optimizer steps of ``params`` on ``objective() + beta · divergence(params, params⁰)`` (Outer-POLA's
    proximal outer loop); ``objective`` is re-evaluated every step (it rebuilds the look-ahead). ``step``: the
    optimizer step to take on each loss (e.g. the K-level engine's, with its clipping and finite checks); default
    :func:`~kpg_lightning.optim.gradient_step` of ``optimizer``. Returns the first step's objective (before any
    step)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    anchor = [p.detach().clone() for p in params]
    first: Tensor | None = None
    for _ in range(steps):
        value = objective()
        loss = value + beta * divergence(params, anchor) if beta != 0.0 and divergence is not None else value
        if step is None:
            gradient_step(optimizer, loss, params=params, name=name)
        else:
            step(loss)
        first = value.detach() if first is None else first
    assert first is not None
    return first


def simultaneous_updates(
    updates: Sequence[tuple[Any, Sequence[Tensor], Callable[[], Tensor]]],
) -> list[Tensor]:
    """Every agent's update from the same parameters: ``updates`` holds ``(optimizer, own params, update)`` per
    agent; each ``update()`` changes its own parameters in place (e.g. :func:`proximal_update`) and sees the
    others' as they were before anyone's update. As in the K-level engine, the parameters are saved once and
    restored after each agent (its optimizer keeps its state); the results are written back together at the end.
    Returns each update's value."""
    snapshots = [OptimizerSnapshot(raw_optimizer(opt), params, with_state=False) for opt, params, _ in updates]
    results: list[list[Tensor]] = []
    values: list[Tensor] = []
    try:
        for (_, params, update), snapshot in zip(updates, snapshots, strict=True):
            values.append(update())
            with torch.no_grad():
                results.append([p.detach().clone() for p in params])
            snapshot.restore()
    except BaseException:
        for snapshot in snapshots:
            snapshot.restore()
        raise
    with torch.no_grad():
        for (_, params, _), new in zip(updates, results, strict=True):
            torch._foreach_copy_(list(params), new)
    return values

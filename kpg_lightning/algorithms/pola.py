"""POLA (Zhao, Lu, Grosse, Foerster, NeurIPS 2022) as an on-policy algorithm: Outer-POLA with GAE ("as seen in Zhao
et al.", as the paper runs it on SMAX) on MAPPO's machinery — collector batches, GAE, centralized critic V_i(s, i),
the shared actor with agent ids, PPO's epochs x minibatches — with the look-ahead of :mod:`kpg_lightning.lookahead`.

Each agent i's objective is its PPO-clip surrogate against the *others' look-ahead*: the ratio of the joint action
under (π_i at the live θ, π_j at θ'_j) to the behaviour policy,

    r_i = π_θ(a_i|o_i) / π_b(a_i|o_i) · Π_{j≠i} π_θ'_j(a_j|o_j) / π_θ⁰(a_j|o_j),
    L_i = −E[min(r_i A_i, clip(r_i, 1 ± ε) A_i)] + β_out KL(π_θ⁰ ‖ π_θ),

where θ⁰ are the actor's parameters at the start of the update (the policy that collected the rollout: the proximal
anchor of both KL terms) and θ'_j are the others' proximal look-ahead from θ⁰ — ``inner_steps`` differentiable
gradient steps (:func:`~kpg_lightning.lookahead.proximal_lookahead`, ``create_graph``) of size ``lookahead_lr`` on
their own objective, the importance-weighted GAE surrogate without the clip (the KL is its trust region):

    L_j(θ'_j; θ) = −E[exp(Δ_j(θ'_j) + Δ_i(θ) + Σ_{l≠i,j} sg Δ_l(θ'_l)) A_j] + β_in KL(π_θ⁰ ‖ π_θ'_j),
    Δ_l(φ) = log π_φ(a_l|o_l) − log π_θ⁰(a_l|o_l).

Agent i's live Δ_i(θ) enters every other agent's inner objective (it changes how likely the joint actions they
learn from are), so θ'_j depends on θ and agent i's gradient flows through the others' learning step: the
opponent-shaping term. The outer loop is PPO's: epochs x minibatches, ``outer_steps`` optimizer steps on each
minibatch (:func:`~kpg_lightning.lookahead.proximal_update` with the engine's step: clipping, finite checks), each
rebuilding the look-ahead from θ⁰ with the current θ. With no look-ahead (``inner_steps=0`` or ``lookahead_lr=0``)
and ``outer_kl=0`` every θ'_j is θ⁰, the others' factor is exactly 1 and the update is MAPPO's (the tests check it
bit for bit).

**The shared actor.** With parameter sharing every agent's "parameters" are the same θ; what makes agent i's policy
its own is its agent id. POLA's per-agent parameters are therefore per-agent *outputs* of one network evaluated at
different parameter values, as the K-level engine's per-agent level outputs are: in agent i's case, agent i's
log-probs come from the live θ (one forward, shared by all cases) and every other agent's from the look-ahead
parameters θ'_(i) — one copy of the actor started from θ⁰ (detached: the anchor), stepped on the others' mean
objective (1/(N−1)) Σ_{j≠i} L_j with each agent's own log-prob live and the rest held (``sg``), so that the copy's
step is the mean of the others' own gradients, as a shared learner's (MAPPO's shared actor averages its agents').
The others' log-probs at θ'_(i) come from a ``functional_call`` of the same network (:meth:`Mappo.distribution`
with ``at``). The N cases differ (case i excludes agent i from the look-ahead
and lets only agent i shape it), so there are N look-aheads per outer step; the shared θ then takes one step on
the mean of the N agents' losses, as MAPPO's shared actor does — one update of the shared θ, so the per-agent
save/restore of :func:`~kpg_lightning.lookahead.simultaneous_updates` (independent parameters) is not needed.

**How this differs from KPG's recursion** (:mod:`kpg_lightning.kpg`): K-MAPPO also puts the others' updated
log-probs into agent i's ratio, but they are the others' level-(k−1) *detached* outputs after a full
first-order update, recomputed level by level from the same θ; no gradient flows through the others' learning.
POLA uses one proximal look-ahead of the others (KL-penalized, from θ⁰) and differentiates *through* it: agent i
optimizes how its own policy changes the others' next policies. Hence POLA runs with ``kpg.k=1`` (it is its own
look-ahead; the engine then calls :meth:`Pola.actor_update` once, with the behaviour log-probs as level 0) and
``kpg.scope=update`` (its anchor θ⁰ is the update's start).

Discrete actions only (SMAX): both KL terms are exact over the (masked) categorical distributions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from kpg_lightning.algorithms.mappo import LOGP, Mappo, MappoConfig
from kpg_lightning.envs.info import ACTION, ACTION_MASK, GROUP
from kpg_lightning.lookahead import proximal_lookahead, proximal_update

__all__ = ["Pola", "PolaConfig"]

ANCHOR_LOGITS, ANCHOR_LOGP = (GROUP, "anchor_logits"), (GROUP, "anchor_log_prob")  # π_θ⁰, written per update


class Pola(Mappo):
    """Outer-POLA with GAE on MAPPO's machinery (shared actor with agent ids, centralized critic)."""

    action_spaces = ("discrete",)
    kpg_required: ClassVar[dict[str, Any]] = {
        "k": (1, "POLA is its own look-ahead of the others' learning"),
        "scope": ("update", "POLA's proximal anchor is the policy at the update's start"),
    }
    cfg: PolaConfig

    def _anchor(self, td: TensorDictBase) -> Distribution:
        """π_θ⁰ on ``td`` from the logits stored at the update's start."""
        mask = {"mask": td.get(ACTION_MASK)} if self.info.has_action_mask else {}
        return self.dist_class(logits=td.get(ANCHOR_LOGITS), **mask)

    def actor_update(
        self, td: TensorDictBase, others: Tensor, step: Callable[[Tensor], Tensor], live: Any = None
    ) -> Tensor:
        """The whole actor update (epochs x minibatches x ``outer_steps``); returns the mean first-step loss of the
        minibatches. ``others`` (the behaviour log-probs, level 0) is not needed: the rollout holds them."""
        anchor = [p.detach().clone() for p in self.actor_parameters()]
        with torch.no_grad():  # π_θ⁰ over the rollout, once
            dist = self.distribution(td)
            td.set(ANCHOR_LOGITS, dist.logits)
            td.set(ANCHOR_LOGP, dist.log_prob(td.get(ACTION)))
        plan = self._plan if self._plan is not None else [slice(None)]
        params = self.actor_parameters()
        losses = []
        for idx in plan:
            batch = td[idx]
            losses.append(
                proximal_update(
                    None,
                    params,
                    lambda batch=batch: self.pola_loss(batch, anchor),
                    steps=self.cfg.outer_steps,
                    step=step,
                )
            )
        return torch.stack(losses).mean()

    def pola_loss(self, td: TensorDictBase, anchor: Sequence[Tensor]) -> Tensor:
        """Every agent's Outer-POLA loss on ``td`` at the live θ (their mean), the others' look-ahead from
        ``anchor`` (θ⁰) rebuilt in each agent's case."""
        cfg = self.cfg
        dist = self.distribution(td)
        log_prob = dist.log_prob(td.get(ACTION))  # [..., N], live
        if cfg.inner_steps > 0 and self.info.n_agents > 1:  # lookahead_lr=0 runs it: θ' = θ⁰ exactly
            live_delta = log_prob - td.get(ANCHOR_LOGP)
            adv = self.advantages(td)
            cases = [self._shaping(td, anchor, live_delta, adv, i) for i in range(self.info.n_agents)]
            shaping = torch.stack(cases, dim=-1)
        else:  # no look-ahead: the others stay at θ⁰, their factor is 1
            shaping = torch.zeros_like(log_prob)
        loss = self.ppo_loss(td, dist, torch.exp(log_prob - td.get(LOGP) + shaping))
        if cfg.outer_kl:
            loss = loss + cfg.outer_kl * kl_divergence(self._anchor(td), dist).mean()
        return loss

    def _shaping(self, td: TensorDictBase, anchor: Sequence[Tensor], live_delta: Tensor, adv: Tensor, i: int) -> Tensor:
        """Σ_{j≠i} Δ_j(θ'_(i)): the log of the others' factor in agent i's ratio, a function of the live θ through
        the others' look-ahead θ'_(i) (case i: agent i live, the others learning)."""
        cfg, n = self.cfg, self.info.n_agents
        others = torch.tensor([j for j in range(n) if j != i], device=live_delta.device)
        action, anchor_logp, anchor_dist = td.get(ACTION), td.get(ANCHOR_LOGP), self._anchor(td)

        def objective(params: Sequence[Tensor]) -> Tensor:  # the others' proximal inner objective, mean_{j≠i} L_j
            dist = self.distribution(td, at=params)
            delta = (dist.log_prob(action) - anchor_logp).index_select(-1, others)
            held = delta.detach()
            exponent = delta + live_delta[..., i : i + 1] + (held.sum(-1, keepdim=True) - held)
            loss = -(torch.exp(exponent) * adv.index_select(-1, others)).mean()
            if cfg.inner_kl:
                loss = loss + cfg.inner_kl * kl_divergence(anchor_dist, dist).index_select(-1, others).mean()
            return loss

        ahead = proximal_lookahead(anchor, objective, lr=cfg.lookahead_lr, steps=cfg.inner_steps)
        delta = self.distribution(td, at=ahead).log_prob(action) - anchor_logp
        return delta.index_select(-1, others).sum(-1)


@dataclass
class PolaConfig(MappoConfig):
    """Outer-POLA hyper-parameters: MAPPO's on-policy settings of Appendix E.1 (lr 4e-3 annealed, 2 epochs x 2
    minibatches, clip 0.2, GAE λ 0.95, centralized critic) plus the look-ahead's. The paper gives no POLA values
    for SMAX; ``inner_steps`` and ``lookahead_lr`` are Zhao et al.'s coin-game command (2 steps of 0.02), the KL
    coefficients are this project's choice (the PPO clip stays the outer trust region; the KL terms make both
    steps proximal in policy space)."""

    name: str = "pola"
    inner_steps: int = 2
    """Differentiable look-ahead steps of the others (0: no look-ahead — MAPPO's update with ``outer_kl=0``)."""
    lookahead_lr: float = 0.02
    """Step size of the others' look-ahead (plain gradient steps, differentiated through)."""
    inner_kl: float = 1.0
    """β_in: the look-ahead's KL(π_θ⁰ ‖ π_θ'_j) penalty to the others' current policy."""
    outer_kl: float = 1.0
    """β_out: the outer step's KL(π_θ⁰ ‖ π_θ) penalty to the agent's own current policy."""
    outer_steps: int = 1
    """Optimizer steps on each minibatch, each rebuilding the look-ahead (the outer loop: epochs x minibatches x
    outer_steps steps per update)."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        yield from super().problems()
        if self.inner_steps < 0:
            yield "inner_steps", "an integer >= 0 (0: no look-ahead)", self.inner_steps
        if self.outer_steps < 1:
            yield "outer_steps", "an integer >= 1", self.outer_steps
        for key in ("lookahead_lr", "inner_kl", "outer_kl"):
            if getattr(self, key) < 0:
                yield key, "a number >= 0", getattr(self, key)

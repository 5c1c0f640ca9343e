"""COMIX (FACMAC paper's continuous QMIX): per-agent critics Q_i(o_i, a_i), a mixer, greedy actions by CEM.

No actor: each agent acts by maximising its own Q_i(o_i, ·) with the cross-entropy method (decentralised, so the
argmax of a monotonic Q_tot is the agents' argmaxes). TD step, with r the team reward (mean over agents) and
bootstrapping through truncations:

    a'_i = CEM-argmax_a Q̄_i(o'_i, a),    y = r + γ (1 − terminated) Q̄_tot(s', Q̄_i(o'_i, a'_i)),
    L = (Q_tot(s, Q_i(o_i, a_i)) − y)²

CEM (:func:`cem_maximize`), per agent and sample: a Gaussian over the pre-squash action z, initially mean 0 and
std 1, ``a = centre + half_width · tanh(z)`` inside the action box; each iteration draws ``cem_samples`` z, scores
them all in one critic call batched over (samples, batch, agents), and refits mean/std to the top ``cem_elites``;
after ``cem_iterations`` the best sample seen is the action (the reference keeps the last iteration's best; the best
of all iterations is never worse). Padded action dimensions (uneven MaMuJoCo partitions) are not searched: their z
stays 0, so they sit at the box centre, and the critic sees them zeroed. CEM draws from torch's global RNG, which
checkpoints save, so runs and resumed runs are reproducible. Exploration: TorchRL's ``AdditiveGaussianModule``
(σ 0.1) around the CEM action; greedy (evaluation) = the CEM action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn

from kpg_lightning.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    gaussian_exploration,
    parameter_pairs,
    sync_targets,
)
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import ACTION, ACTION_DIM_MASK, OBS, REWARD, TERMINATED, EnvInfo, global_state
from kpg_lightning.mixers import make_mixer, mix
from kpg_lightning.models import AgentMLP

__all__ = ["CemAgent", "Comix", "ComixConfig", "cem_maximize"]


@torch.no_grad()
def cem_maximize(
    q_fn: Callable[[Tensor], Tensor],
    low: Tensor,
    high: Tensor,
    mask: Tensor | None,
    shape: torch.Size,
    samples: int = 64,
    elites: int = 6,
    iterations: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Maximise ``q_fn`` per ``[..., N]`` entry over actions in ``[low, high]`` by the cross-entropy method.

    Args:
        q_fn: actions ``[S, *shape]`` → values ``[S, *shape[:-1], 1]``; entry ``[..., n]`` depends on its own
            action only (one call per iteration).
        low, high: per-agent action bounds ``[N, A]`` (broadcast over the batch).
        mask: 1 for real action dimensions, 0 for padded ones (never searched: kept at the box centre); None: all.
        shape: ``[*B, N, A]`` of the actions sought.
        generator: random source of the samples (None: torch's global RNG).

    Returns:
        The best actions ``[*B, N, A]`` and their values ``[*B, N, 1]``.
    """
    loc, scale = (high + low) / 2, (high - low) / 2
    mean = torch.zeros(shape, dtype=low.dtype, device=low.device)
    std = torch.ones_like(mean)
    best_action, best_q = mean, None
    for _ in range(iterations):
        noise = torch.randn((samples, *shape), generator=generator, dtype=mean.dtype, device=mean.device)
        z = mean + std * noise
        if mask is not None:
            z = z * mask
        action = loc + scale * torch.tanh(z)
        values, top = q_fn(action).topk(elites, dim=0)  # [E, *B, N, 1], sorted: top[0] is the best
        elite = z.gather(0, top.expand(elites, *shape))
        mean, std = elite.mean(0), elite.std(0)
        candidate = action.gather(0, top[:1].expand(1, *shape)).squeeze(0)
        if best_q is None:
            best_action, best_q = candidate, values[0]
        else:
            better = values[0] > best_q
            best_action, best_q = torch.where(better, candidate, best_action), torch.maximum(values[0], best_q)
    return best_action, best_q


class CemAgent(nn.Module):
    """Per-agent critic ``Q_i(o_i, a_i)`` (shared, agent-id one-hot) whose greedy action is found by CEM.

    ``forward(obs, dim_mask)`` is the greedy action (the acting policy's module); :meth:`maximize` also returns
    its value (the TD target's ``max_a Q̄_i``).
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        low: Tensor,
        high: Tensor,
        hidden: list[int],
        activation: str,
        samples: int,
        elites: int,
        iterations: int,
    ):
        super().__init__()
        self.net = AgentMLP(n_agents, obs_dim + low.shape[-1], 1, hidden, activation, share_params=True)
        self.register_buffer("low", low.clone(), persistent=False)
        self.register_buffer("high", high.clone(), persistent=False)
        self.samples, self.elites, self.iterations = samples, elites, iterations

    def q(self, obs: Tensor, action: Tensor, mask: Tensor | None) -> Tensor:
        """``Q_i(o_i, a_i)`` ``[..., N, 1]``; padded action dimensions are zeroed first."""
        return self.net(torch.cat([obs, action if mask is None else action * mask], dim=-1))

    def maximize(self, obs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """CEM's ``(argmax_a Q_i(o_i, a), max)`` per agent: ``[..., N, A]``, ``[..., N, 1]``."""
        shape = torch.Size((*obs.shape[:-1], self.low.shape[-1]))
        samples = obs.expand(self.samples, *obs.shape)
        return cem_maximize(
            lambda action: self.q(samples, action, mask),
            self.low,
            self.high,
            mask,
            shape,
            self.samples,
            self.elites,
            self.iterations,
        )

    def forward(self, obs: Tensor, dim_mask: Tensor | None = None) -> Tensor:
        return self.maximize(obs, None if dim_mask is None else dim_mask.to(obs.dtype))[0]


class Comix(Algorithm):
    """COMIX: value-based, continuous actions by CEM on per-agent critics mixed into Q_tot (qmix or vdn)."""

    action_spaces = ("continuous",)
    has_actor = False

    def __init__(self, cfg: ComixConfig, info: EnvInfo, model: ModelConfig):
        super().__init__(cfg, info, model)
        if info.discrete:
            raise ValueError("algorithm: comix needs continuous actions (env has discrete actions)")
        low, high = info.action_low, info.action_high
        self.agent = CemAgent(
            info.n_agents,
            info.obs_dim,
            low,
            high,
            model.critic_hidden,
            model.activation,
            cfg.cem_samples,
            cfg.cem_elites,
            cfg.cem_iterations,
        )
        self.mixer = make_mixer(
            cfg.mixer, info.n_agents, info.critic_state_dim, cfg.mixer_embed_dim, cfg.mixer_hypernet_hidden
        )
        self.target_agent = deepcopy(self.agent).requires_grad_(False)
        self.target_mixer = deepcopy(self.mixer).requires_grad_(False)
        self.noise = gaussian_exploration(low, high, cfg.noise_sigma)

    def dim_mask(self, td: TensorDictBase) -> Tensor | None:
        """``[B, N, A]`` float mask of the real action dimensions (None: the env has no ``action_dim_mask``)."""
        return td.get(ACTION_DIM_MASK).to(td.get(OBS).dtype) if self.info.has_action_dim_mask else None

    # -- hooks -----------------------------------------------------------------------------------------------
    def policy(self) -> TensorDictSequential:
        in_keys = [OBS, ACTION_DIM_MASK] if self.info.has_action_dim_mask else [OBS]
        return TensorDictSequential(TensorDictModule(self.agent, in_keys=in_keys, out_keys=[ACTION]), self.noise)

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.agent.parameters(), *self.mixer.parameters()]

    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        return td  # the team target reads the root ``terminated``: no per-agent flags needed

    def td_target(self, td: TensorDictBase) -> Tensor:
        """``y = r + γ (1 − terminated) Q̄_tot(s', max_a Q̄_i(o'_i, a))`` ``[B, 1]``, the max by CEM."""
        nxt = td.get("next")
        with torch.no_grad():
            _, next_q = self.target_agent.maximize(nxt.get(OBS), self.dim_mask(td))
            reward = nxt.get(REWARD).mean(-2)  # [B, 1] team reward
            not_terminated = nxt.get(TERMINATED).logical_not()
            return reward + self.cfg.gamma * not_terminated * mix(self.target_mixer, next_q, global_state(nxt))

    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        target = self.td_target(td)
        q = self.agent.q(td.get(OBS), td.get(ACTION), self.dim_mask(td))
        q_tot = mix(self.mixer, q, global_state(td))
        return F.mse_loss(q_tot, target), {"q_tot_mean": q_tot.mean().detach(), "target_mean": target.mean()}

    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        return parameter_pairs((self.target_agent, self.agent), (self.target_mixer, self.mixer))

    def update_targets(self) -> None:
        sync_targets(self.target_pairs(), "polyak", self.cfg.tau)


@dataclass
class ComixConfig(AlgorithmConfig):
    """COMIX hyper-parameters (Appendix E.2 MaMuJoCo settings; CEM as in FACMAC's COMIX). There is no actor:
    ``critic_lr`` is the one optimizer's (critic + mixer), ``actor_lr`` is unused."""

    name: str = "comix"
    grad_clip: float | None = 0.5
    """Gradient-norm clip of the critic+mixer step."""
    tau: float = 0.001
    """Polyak averaging rate of the target critic and mixer."""
    noise_sigma: float = 0.1
    """Standard deviation of the Gaussian exploration noise added to the CEM action."""
    mixer: str = "qmix"
    """qmix (monotonic, two-layer hypernetworks) or vdn: monotonic, so the agents' argmaxes are Q_tot's."""
    mixer_embed_dim: int = 64
    """Width of the mixing layer."""
    mixer_hypernet_hidden: int = 64
    """Hidden width of the mixer's weight hypernetworks."""
    cem_samples: int = 64
    """Actions CEM samples per agent and iteration."""
    cem_elites: int = 6
    """Best samples CEM refits its Gaussian to."""
    cem_iterations: int = 2
    """CEM sampling rounds (the best sample of all rounds is the action)."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        if self.mixer not in ("qmix", "vdn"):
            yield "mixer", "qmix or vdn (monotonic: each agent's argmax is the team's)", self.mixer
        if not 0 < self.tau <= 1:
            yield "tau", "a number in (0, 1]", self.tau
        if self.noise_sigma < 0:
            yield "noise_sigma", "a number >= 0", self.noise_sigma
        for key in ("mixer_embed_dim", "mixer_hypernet_hidden", "cem_samples", "cem_iterations"):
            if getattr(self, key) < 1:
                yield key, "an integer >= 1", getattr(self, key)
        if not 2 <= self.cem_elites <= self.cem_samples:
            yield "cem_elites", f"an integer in [2, cem_samples = {self.cem_samples}]", self.cem_elites

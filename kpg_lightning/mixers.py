"""Value mixers Q_tot(s, Q_1..Q_N) for factored critics (FACMAC), on TorchRL's ``Mixer`` API.

``mixer(q, state)`` maps per-agent values ``q [*B, *C, N, 1]`` and the global state ``[*B, S]`` to ``[*B, *C, 1]``.
Extra "case" dimensions ``*C`` between the batch and the agents share the state's hypernetwork outputs, so the N
"agent i live" cases of K-FACMAC are mixed in one call with the hypernetworks evaluated once per sample.

- ``qmix``: QMIX's monotonic mixer with two-layer hypernetworks (FACMAC's ``modules/mixers/qmix.py`` with
  ``hypernet_layers=2``): ``|W_1(s)|``, ``b_1(s)``, ELU, ``|w_2(s)|``, ``V(s)``. TorchRL's ``QMixer`` has
  single-layer hypernetworks, hence this class.
- ``qmix_nonmonotonic``: the same without the absolute values (FACMAC's ``QMixerNonmonotonic``).
- ``vdn``: TorchRL's ``VDNMixer``, the plain sum (no state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrl.modules.models.multiagent import Mixer, VDNMixer

__all__ = ["MIXERS", "HyperQMixer", "make_mixer", "mix"]

MIXERS = ("qmix", "qmix_nonmonotonic", "vdn")


def _hypernet(state_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


class HyperQMixer(Mixer):
    """QMIX mixer with two-layer hypernetworks; monotonic in every ``Q_j`` unless ``monotonic=False``.

    Args:
        n_agents: number of agents N.
        state_dim: size of the global state.
        embed_dim: width of the mixing layer (FACMAC: 64).
        hypernet_hidden: hidden width of the weight hypernetworks (FACMAC: 64).
        monotonic: take ``|.|`` of the hypernetwork weights, so ∂Q_tot/∂Q_j ≥ 0 (QMIX); False drops it.
        init_scale: if given, every linear layer of the mixer starts orthogonal with this gain and zero bias
            (JaxMARL's QMIX on SMAX: 0.001, so Q_tot starts near 0); None keeps PyTorch's default init.
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        embed_dim: int = 64,
        hypernet_hidden: int = 64,
        monotonic: bool = True,
        device: torch.device | str | None = None,
        init_scale: float | None = None,
    ):
        super().__init__(n_agents=n_agents, needs_state=True, state_shape=torch.Size([state_dim]), device=device)
        self.embed_dim, self.monotonic = embed_dim, monotonic
        self.hyper_w_1 = _hypernet(state_dim, hypernet_hidden, embed_dim * n_agents)
        self.hyper_w_final = _hypernet(state_dim, hypernet_hidden, embed_dim)
        self.hyper_b_1 = nn.Linear(state_dim, embed_dim)
        self.V = _hypernet(state_dim, embed_dim, 1)  # V(s) instead of a bias for the last layer
        if init_scale is not None:
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight, gain=init_scale)
                    nn.init.zeros_(layer.bias)

    def _weight(self, w: Tensor) -> Tensor:
        return w.abs() if self.monotonic else w

    def mix(self, chosen_action_value: Tensor, state: Tensor) -> Tensor:
        """``[*B, *C, N, 1]``, ``[*B, S]`` → ``[*B, *C, 1]``."""
        lead = state.dim() - 1
        extra = chosen_action_value.dim() - 2 - lead

        def per_case(t: Tensor) -> Tensor:  # insert the case dims after the batch dims
            return t.reshape(*t.shape[:lead], *(1,) * extra, *t.shape[lead:])

        w1 = per_case(self._weight(self.hyper_w_1(state)).unflatten(-1, (self.n_agents, self.embed_dim)))
        b1 = per_case(self.hyper_b_1(state))
        w_final = per_case(self._weight(self.hyper_w_final(state)))
        v = per_case(self.V(state))
        hidden = F.elu((chosen_action_value.transpose(-1, -2) @ w1).squeeze(-2) + b1)  # [*B, *C, E]
        return (hidden.unsqueeze(-2) @ w_final.unsqueeze(-1)).squeeze(-1) + v


def make_mixer(
    name: str,
    n_agents: int,
    state_dim: int,
    embed_dim: int = 64,
    hypernet_hidden: int = 64,
    init_scale: float | None = None,
) -> Mixer:
    """``qmix``, ``qmix_nonmonotonic`` or ``vdn`` (``init_scale``: see :class:`HyperQMixer`)."""
    if name == "vdn":
        return VDNMixer(n_agents=n_agents, device=None)
    if name in ("qmix", "qmix_nonmonotonic"):
        return HyperQMixer(
            n_agents, state_dim, embed_dim, hypernet_hidden, monotonic=name == "qmix", init_scale=init_scale
        )
    raise ValueError(f"algorithm.mixer: unknown {name!r}; valid: {', '.join(MIXERS)}")


def mix(mixer: Mixer, q: Tensor, state: Tensor) -> Tensor:
    """Q_tot of per-agent values ``q [*B, *C, N, 1]``, passing the state only to mixers that use it."""
    return mixer(q, state) if mixer.needs_state else mixer(q)

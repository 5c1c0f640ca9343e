"""The one base class every algorithm subclasses: networks, losses and a short list of hooks.

The LightningModule drives an algorithm through these hooks only (marked ``# hook``):

    process_batch → critic_update → for each of actor_batches: [live_forward] → K-level step (level_outputs,
    actor_update) → update_targets

Off-policy algorithms implement ``critic_loss`` and ``actor_loss`` (one gradient step each; the default
``critic_update``/``actor_update`` take it); on-policy ones override ``critic_update``/``actor_update`` to run
epochs x minibatches, and ``actor_batches`` to choose what one K-level recursion wraps.

K is not an algorithm property: the K-level engine wraps ``actor_loss`` and ``level_outputs`` for any K; with
K = 1 the update is the ordinary algorithm's.

Mechanisms every algorithm shares live here once: :func:`sync_targets` (the one target-network update, its hard-copy
counter a buffer registered by :meth:`Algorithm.register_target_counter`) and :func:`epsilon_at` (the one ε schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.data import Bounded
from torchrl.envs import Transform
from torchrl.modules import AdditiveGaussianModule

from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import ACTION, DONE, GROUP, REWARD, TERMINATED, EnvInfo

__all__ = [
    "TARGET_UPDATES",
    "Algorithm",
    "AlgorithmConfig",
    "epsilon_at",
    "expand_done",
    "gaussian_exploration",
    "parameter_pairs",
    "sync_targets",
]

TARGET_UPDATES = ("polyak", "hard")


@dataclass
class AlgorithmConfig:
    """Fields every algorithm has."""

    name: str = "???"
    """Registry name of the algorithm."""
    actor_lr: float = 1e-3
    """Actor learning rate (each K level's step)."""
    critic_lr: float = 1e-3
    """Critic (and mixer) learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    grad_clip: float | None = None
    """Gradient-norm clip for actor and critic steps; null disables."""

    def problems(self) -> Iterator[tuple[str, str, Any]]:
        """``(field, what is allowed, value)`` for each algorithm-specific field the algorithm cannot use
        (the common fields are checked by ``kpg_lightning.configure.validate``)."""
        return iter(())


def expand_done(td: TensorDictBase) -> TensorDictBase:
    """Copy root ``done``/``terminated`` of ``("next", ...)`` to every agent, as the per-agent losses expect."""
    shape = td.get(("next", *REWARD)).shape
    for key in (DONE, TERMINATED):
        if ("next", GROUP, key) not in td.keys(True, True):
            td.set(("next", GROUP, key), td.get(("next", key)).unsqueeze(-2).expand(shape))
    return td


def parameter_pairs(*pairs: tuple[nn.Module, nn.Module]) -> list[tuple[Tensor, Tensor]]:
    """``(target, online)`` parameter pairs of ``(target, online)`` module pairs (a target is a deep copy)."""
    return [pair for target, online in pairs for pair in zip(target.parameters(), online.parameters(), strict=True)]


@torch.no_grad()
def sync_targets(
    pairs: Sequence[tuple[Tensor, Tensor]],
    mode: str,
    tau: float = 0.0,
    interval: int = 1,
    updates: Tensor | None = None,
) -> None:
    """The target-network update after one training update, over ``(target, online)`` parameter pairs:
    ``polyak`` — ``θ̄ ← θ̄ + τ (θ − θ̄)`` every update; ``hard`` — ``θ̄ ← θ`` every ``interval`` updates, counted in
    ``updates`` (the algorithm's ``target_updates`` buffer, so checkpoints keep the count and a resumed run copies
    at the same updates)."""
    targets, online = [target for target, _ in pairs], [source for _, source in pairs]
    if mode == "polyak":
        torch._foreach_lerp_(targets, online, tau)
        return
    updates += 1
    copy = updates % interval == 0  # decided on the device: the counter is never read on the host
    torch._foreach_copy_(targets, [torch.where(copy, source, target) for target, source in pairs])


def gaussian_exploration(low: Tensor, high: Tensor, sigma: float) -> AdditiveGaussianModule:
    """Exploration of the deterministic continuous policies (MADDPG, FACMAC, COMIX): Gaussian noise of constant
    ``sigma`` added to the actions, clipped to ``[low, high]`` (TorchRL's ``AdditiveGaussianModule``)."""
    spec = Bounded(low=low, high=high, shape=low.shape)
    return AdditiveGaussianModule(
        spec, sigma_init=sigma, sigma_end=sigma, annealing_num_steps=1, action_key=ACTION, safe=True
    )


def epsilon_at(frames: int, start: float, end: float, anneal_frames: int) -> float:
    """ε of ε-greedy acting after ``frames`` collected frames: linear from ``start`` to ``end`` over the first
    ``anneal_frames`` frames, then ``end``. A function of the frame count alone, so a resumed run continues it; the
    acting module keeps the current value in a buffer, which checkpoints and policy-weight syncs carry."""
    if frames >= anneal_frames:
        return end
    return start + (end - start) * (frames / anneal_frames)


class Algorithm(nn.Module):
    """Networks and losses of one MARL algorithm."""

    on_policy: ClassVar[bool] = False
    action_spaces: ClassVar[tuple[str, ...]] = ("continuous", "discrete")
    """Action spaces the algorithm supports (checked against the env before anything starts)."""
    recurrent_actors: ClassVar[bool | tuple[str, ...]] = False
    """Whether ``model.recurrent=true`` (GRU actors) is supported: True, False, or the action spaces where it is."""
    replay_unit: ClassVar[str] = "frames"
    """What off-policy replay stores and samples: ``frames`` (single transitions, batches ``[B]``) or
    ``episodes`` (whole episodes zero-padded to the episode limit, batches ``[B, T]`` with a boolean
    ``filled [B, T, 1]`` marking real steps; :class:`kpg_lightning.data.EpisodeAssembler`), as recurrent
    off-policy agents train on fully unrolled episodes (Appendix E.2)."""
    replay_exclude: ClassVar[tuple[str | tuple[str, ...], ...]] = ()
    """Keys of collected frames that replay does not store (e.g. recurrent hidden states the losses recompute:
    a GRU-512's states would be most of an episode replay's memory)."""
    has_actor: ClassVar[bool] = True
    """False for value-based algorithms (QMIX, VDN, IQL, COMIX): no actor optimizer and no K-level step; every
    learned parameter is in ``critic_parameters`` and ``kpg.k`` must be 1."""
    kpg_required: ClassVar[dict[str, Any]] = {}
    """``kpg.<key>`` values the algorithm needs, with why (e.g. POLA, its own look-ahead: ``k`` 1), checked by
    ``kpg_lightning.configure.validate``: ``{key: (value, reason)}``."""
    shares_live_forward: ClassVar[bool] = False
    """True where one level is one gradient step on a loss of the actor's own outputs on the batch, which are the same
    at every level (each restarts from θ): :meth:`live_forward` then runs once per K-level step, recorded with
    :func:`kpg_lightning.kpg.shared_graph`, and every level's loss backpropagates through it. False (on-policy
    updates move θ within a level) runs each level's loss from scratch."""
    config_class: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig

    def __init__(self, cfg: AlgorithmConfig, info: EnvInfo, model: ModelConfig):
        super().__init__()
        self.cfg, self.info, self.model_cfg = cfg, info, model

    def register_target_counter(self, hard: bool) -> None:
        """The ``target_updates`` buffer in which :func:`sync_targets` counts updates toward hard copies; persistent
        (in checkpoints) where targets are ``hard`` copies, as only those count."""
        self.register_buffer("target_updates", torch.zeros((), dtype=torch.long), persistent=hard)

    # hook
    def env_transforms(self) -> list[Transform]:
        """Fresh transforms the acting policy needs on every env it acts in (e.g. a recurrent state primer)."""
        return []

    # hook
    def policy(self) -> TensorDictModuleBase:
        """The acting policy: explores under ``ExplorationType.RANDOM``, greedy under ``DETERMINISTIC``."""
        raise NotImplementedError

    # hook
    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the actor: the ones the K-level recursion acts on (none without an actor)."""
        if not self.has_actor:
            return []
        raise NotImplementedError

    # hook
    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters updated by the critic step (critics, mixers)."""
        raise NotImplementedError

    # hook
    def process_batch(self, td: TensorDictBase) -> TensorDictBase:
        """Prepare a sampled batch for the losses (per-agent done flags by default)."""
        return expand_done(td)

    # hook
    def critic_loss(self, td: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the critic step and metrics to log."""
        raise NotImplementedError

    # hook
    def critic_update(self, td: TensorDictBase, step: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """The critic step(s) of one update; ``step(loss)`` takes one optimizer step and returns the loss.
        Metrics stay tensors on the device (the logged step reads them: ``StepRecord.materialize``)."""
        loss, metrics = self.critic_loss(td)
        return {"critic_loss": step(loss), **{key: value.detach() for key, value in metrics.items()}}

    # hook
    def live_forward(self, td: TensorDictBase) -> Any:
        """Where :attr:`shares_live_forward`: the actor's outputs on ``td`` with gradient (and what the losses
        compute from them alone), shared by every level's :meth:`actor_loss` of one K-level step."""
        raise NotImplementedError

    # hook
    def level_outputs(self, td: TensorDictBase, level: int, live: Any = None) -> Any:
        """What the level-``level`` actor hands the next level (computed without gradients; ``live``: the shared
        live forward, whose values are level 0's own outputs)."""
        raise NotImplementedError

    # hook
    def actor_loss(self, td: TensorDictBase, others: Any, *, live: Any = None) -> Tensor:
        """Actor loss with every agent's own output live and the others' from ``others`` (level k-1); ``live``:
        the shared :meth:`live_forward` (None: computed here)."""
        raise NotImplementedError

    # hook
    def actor_update(
        self, td: TensorDictBase, others: Any, step: Callable[[Tensor], Tensor], live: Any = None
    ) -> Tensor:
        """One K level's actor step(s) against the others' level-(k-1) outputs; returns the objective."""
        return step(self.actor_loss(td, others, live=live))

    # hook
    def actor_batches(self, td: TensorDictBase, scope: str = "update") -> Iterable[TensorDictBase]:
        """The batches one K-level recursion each wraps (``scope`` is ``kpg.scope``: ``update`` — the whole
        actor update, ``step`` — each gradient step; the same for one-step off-policy updates)."""
        return (td,)

    # hook
    def target_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """``(target, online)`` parameter pairs that :meth:`update_targets` moves (none without targets)."""
        return []

    # hook
    def update_targets(self) -> None:
        """Target-network update after each training step (no-op without targets): :func:`sync_targets` over
        :meth:`target_pairs` with the algorithm's rule."""

    # hook
    def exploration_step(self, frames: int) -> None:
        """Advance exploration schedules to ``frames`` collected frames."""

    # hook
    def lr_scale(self, progress: float) -> float:
        """Multiplier of every learning rate at ``progress`` = frames / max_frames (e.g. linear annealing)."""
        return 1.0

    @classmethod
    def supports_recurrent(cls, action_space: str) -> bool:
        """Whether GRU actors (``model.recurrent=true``) are supported on ``action_space`` actions."""
        return cls.recurrent_actors is True or (
            isinstance(cls.recurrent_actors, tuple) and action_space in cls.recurrent_actors
        )

    def one_hot_eye(self, device: torch.device | None = None) -> Tensor:
        """Boolean ``[N(case), N(agent), 1]``: case i has agent i live."""
        return torch.eye(self.info.n_agents, dtype=torch.bool, device=device).unsqueeze(-1)

"""The K-level engine: the one place the recursion of K-Level Policy Gradients lives.

Update rule (Algorithm 1 and 2 of the paper), for every agent i and k = 1..K, always from the same θ:

    θ_i⁽ᵏ⁾ = θ_i + η ∇_θi J_i(θ_i, θ_−i⁽ᵏ⁻¹⁾),        θ⁽⁰⁾ = θ,   keep θ⁽ᴷ⁾.

Each level is a real optimizer step taken from the saved parameters *and* the saved optimizer state; after every
level but the last, parameters and optimizer state are restored, so only level K's step persists and the
optimizer state afterwards is exactly that of one step with the level-K gradient. K = 1 is the base algorithm.

Algorithms supply two functions:

- ``level_outputs(level)``: the behaviour of the current (level-``level``) parameters that the next level
  responds to, e.g. the deterministic actions of every agent on the batch (K-MADDPG, K-FACMAC) or the
  log-probabilities of the stored actions (K-MAPPO). Called without gradients, for levels 0..K-1.
- ``level_update(others)``: performs the level's optimizer step(s) given the others' level-(k-1) outputs and
  returns the objective (loss) value. One gradient step for the off-policy algorithms, a whole PPO update
  (epochs x minibatches) for K-MAPPO; :func:`gradient_step` is the usual building block.

Every level restarts from the same θ, so a one-step level's *live* forward (the agent's own outputs with gradient,
and whatever is computed from them alone) is the same at every level. :func:`shared_graph` records it once per
K-level step in a graph that the in-place level steps and restores cannot invalidate, and each level backpropagates
its own loss through it (``retain_graph``): a level then costs the others' level-(k−1) outputs, its own loss head
and one backward, not a second actor forward.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from kpg_lightning.optim import (
    FiniteGuard,
    OptimizerSnapshot,
    frozen,
    gradient_step,
    make_actor_optimizer,
    params_of,
    raw_optimizer,
)

# FiniteGuard, OptimizerSnapshot, frozen, gradient_step, make_actor_optimizer live in kpg_lightning.optim (re-exported)
__all__ = [
    "FiniteGuard",
    "KLevelStats",
    "LevelAlgorithm",
    "OptimizerSnapshot",
    "StepRecord",
    "actor_k_level_step",
    "clock",
    "frozen",
    "gradient_step",
    "k_level_step",
    "make_actor_optimizer",
    "shared_graph",
    "to_floats",
]


Number = Tensor | float


def clock() -> float:
    """``time.perf_counter()``, or 0.0 inside ``torch.compile``: there the call breaks the graph, and the resumed
    frame is specialized on the float it leaves on the stack, so each update recompiled until dynamo's recompile
    limit and then ran eagerly. A compiled update is timed whole, outside (:meth:`KPGModule.update`)."""
    return 0.0 if torch.compiler.is_compiling() else time.perf_counter()


def to_floats(values: Sequence[Number]) -> list[float]:
    """Python floats of ``values`` (0-dim tensors or floats), each device's tensors read in one transfer."""
    out: list[float] = [v if not isinstance(v, Tensor) else math.nan for v in values]
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        if isinstance(v, Tensor):
            by_device[v.device].append(i)
    for indices in by_device.values():
        read = torch.stack([values[i].detach().reshape(()).to(torch.float64) for i in indices]).tolist()
        for i, value in zip(indices, read, strict=True):
            out[i] = value
    return out


@dataclass
class KLevelStats:
    """Per-level diagnostics of one K-level update (lists indexed by level - 1).

    The engine records the objective and the distances as tensors on the training device (``pending_*``), so an
    update never waits for the device; :attr:`objective`, :attr:`level_delta` and :attr:`step_norm` read them on
    the host on first access, in one transfer (:meth:`StepRecord.materialize` reads a whole step's at once).
    """

    k: int
    levels_run: int = 0
    pending_objective: list[Number] = field(default_factory=list)
    pending_delta: list[Number] = field(default_factory=list)  # ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖
    pending_step: list[Number] = field(default_factory=list)  # ‖θ⁽ᵏ⁾ − θ⁽⁰⁾‖
    level_time_s: list[float] = field(default_factory=list)

    def _pending(self) -> list[list[Number]]:
        return [self.pending_objective, self.pending_delta, self.pending_step]

    def is_read(self) -> bool:
        return not any(isinstance(v, Tensor) for values in self._pending() for v in values)

    def read(self, values: list[float] | None = None) -> None:
        """Replace the pending tensors with Python floats (``values``: already read, in :meth:`_pending` order)."""
        lists = self._pending()
        flat = [v for values_ in lists for v in values_]
        values = to_floats(flat) if values is None else values
        start = 0
        for values_ in lists:
            values_[:] = values[start : start + len(values_)]
            start += len(values_)

    def _read(self) -> KLevelStats:
        if not self.is_read():
            self.read()
        return self

    @property
    def objective(self) -> list[float]:
        return self._read().pending_objective

    @property
    def level_delta(self) -> list[float]:
        return self._read().pending_delta

    @property
    def step_norm(self) -> list[float]:
        return self._read().pending_step

    @property
    def contraction(self) -> list[float]:
        """Ratios ‖θ⁽ᵏ⁺¹⁾ − θ⁽ᵏ⁾‖ / ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ between consecutive levels."""
        d = self.level_delta
        return [d[i + 1] / d[i] if d[i] > 0 else float("nan") for i in range(len(d) - 1)]


@dataclass
class StepRecord:
    """What one training step did, for callbacks to read: wall-clock per phase (``collect``, ``critic``,
    ``level_<k>``), each K-level update's :class:`KLevelStats`, and the step's mean losses.

    During the step the updates' numbers stay tensors on the device (``losses`` maps a name to the updates'
    values); :meth:`materialize`, at the logged step, reads them all in one transfer and averages the losses."""

    timing: dict[str, float] = field(default_factory=dict)
    levels: list[KLevelStats] = field(default_factory=list)
    losses: dict[str, Any] = field(default_factory=dict)

    def add_time(self, phase: str, seconds: float) -> None:
        self.timing[phase] = self.timing.get(phase, 0.0) + seconds

    def add_levels(self, stats: KLevelStats) -> None:
        self.levels.append(stats)
        for level, seconds in enumerate(stats.level_time_s, start=1):
            self.add_time(f"level_{level}", seconds)

    def materialize(self) -> None:
        """Read the step's tensors on the host (one transfer per device) and average each loss over the updates
        (an update's value with several entries, e.g. one per minibatch, counts as their mean)."""
        level_values = [[v for values in s._pending() for v in values] for s in self.levels]
        entries = [(key, i, v) for key, vs in self.losses.items() for i, v in enumerate(vs)]
        flat, shapes = [v for values in level_values for v in values], []
        for _, _, v in entries:
            parts = list(v.detach().reshape(-1).unbind()) if isinstance(v, Tensor) else [v]
            shapes.append(len(parts))
            flat.extend(parts)
        read = to_floats(flat)
        start = 0
        for s, values in zip(self.levels, level_values, strict=True):
            s.read(read[start : start + len(values)])
            start += len(values)
        per_update: dict[str, list[float]] = defaultdict(list)
        for (key, _, _), n in zip(entries, shapes, strict=True):
            parts = read[start : start + n]
            per_update[key].append(parts[0] if n == 1 else sum(parts) / n)
            start += n
        self.losses = {key: sum(values) / len(values) for key, values in per_update.items()}


@torch.no_grad()
def _distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor | float:
    """‖a − b‖ over all tensors, on their device (no host read)."""
    diffs = torch._foreach_sub(list(a), list(b))
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs))) if diffs else 0.0


def _storage(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functorch wrappers)
        return None


@contextmanager
def shared_graph(params: Sequence[Tensor]) -> Iterator[None]:
    """Record a forward pass whose autograd graph stays valid while ``params`` change in place.

    Autograd saves some inputs of each operation for its backward (a linear layer saves its weight) and refuses to
    backpropagate once one has been modified in place. Inside this context every saved tensor that shares storage
    with one of ``params`` is saved as a copy, so the K-level engine's in-place optimizer steps and restores leave
    the graph intact: each level backpropagates through it (``retain_graph=True``) at the parameters' values when
    it was recorded, θ, and the gradients still accumulate into ``params``' ``.grad``.
    """
    storages = {_storage(p) for p in params} - {None}

    def pack(t: Tensor) -> Tensor:
        # detached, never ``t`` itself: a saved output that keeps its own grad_fn would be a reference cycle through
        # the C++ graph, which Python's garbage collector cannot free
        return t.clone() if _storage(t) in storages else t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def k_level_step(
    optimizer: torch.optim.Optimizer,
    k: int,
    level_update: Callable[[Any], Tensor | float],
    level_outputs: Callable[[int], Any],
    *,
    params: Sequence[Tensor] | None = None,
    adaptive_tol: float | None = None,
    synchronize: Callable[[], None] | None = None,
    on_level: Callable[[int, Sequence[Tensor]], None] | None = None,
) -> KLevelStats:
    """Run one K-level update of the parameters driven by ``optimizer``.

    Args:
        optimizer: the actor optimizer (a torch optimizer or Lightning's wrapper of one). Each level calls its
            ``step`` through ``level_update``; state is saved and restored here.
        k: number of levels K ≥ 1; K = 1 is exactly one ordinary update.
        level_update: ``others -> objective``; takes the level's optimizer step(s) against the others'
            level-(k-1) outputs.
        level_outputs: ``level -> outputs`` of the current parameters, computed without gradients.
        params: the parameters the recursion acts on (default: all of the optimizer's).
        adaptive_tol: stop early once ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ / ‖θ⁽ᵏ⁾ − θ⁽⁰⁾‖ < tol (``k`` is the cap); the level
            reached is kept. The only option that reads the device on the host during the update (once per
            level from level 2): the stop depends on the data. Without it the engine never waits for the device.
        synchronize: called before each timestamp (e.g. ``torch.cuda.synchronize``) for exact level timings.
        on_level: called as ``on_level(level, params)`` right after each level's update, before any restore
            (inspection only: e.g. checking that data-parallel ranks agree at every level).

    Returns:
        :class:`KLevelStats` with the objective, ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖, ‖θ⁽ᵏ⁾ − θ⁽⁰⁾‖ and wall-clock per level.

    Raises:
        whatever a level raises (e.g. :class:`~kpg_lightning.errors.NonFiniteError` in a minibatch of a K-MAPPO
        level), after restoring the parameters and the optimizer state to what they were before the update: a
        caller that skips the update finds nothing of it applied.
    """
    if k < 1:
        raise ValueError(f"kpg.k must be >= 1, got {k}")
    raw = raw_optimizer(optimizer)
    params = list(params) if params is not None else params_of(raw)
    snapshot = OptimizerSnapshot(raw, params)  # with its state also at K = 1: a level that raises is undone
    stats = KLevelStats(k=k)
    previous = snapshot.values
    sync = synchronize or (lambda: None)

    try:
        with torch.no_grad():
            others = level_outputs(0)
        for level in range(1, k + 1):
            sync()
            start = clock()
            objective = level_update(others)
            if on_level is not None:
                on_level(level, params)
            current = [p.detach() for p in params]
            delta = _distance(current, previous)
            step = delta if level == 1 else _distance(current, snapshot.values)
            stats.pending_objective.append(objective.detach() if isinstance(objective, Tensor) else float(objective))
            stats.pending_delta.append(delta)
            stats.pending_step.append(step)
            stats.levels_run = level
            # the one host read of the engine, and only where an adaptive stop is asked for: it decides on the data
            converged = (
                adaptive_tol is not None and level > 1 and float(delta) <= adaptive_tol * max(float(step), 1e-12)
            )
            if level < k and not converged:
                with torch.no_grad():
                    others = level_outputs(level)
                previous = [p.detach().clone() for p in params]
                snapshot.restore()
            sync()
            stats.level_time_s.append(clock() - start)
            if converged:
                break
    except BaseException:
        # a level that raises (a NonFiniteError in its third minibatch, an interrupt) leaves none of its steps,
        # nor an earlier level's, applied: parameters and optimizer state are as before the update
        snapshot.restore()
        raise
    return stats


class LevelAlgorithm(Protocol):
    """What :func:`actor_k_level_step` needs of an algorithm (``kpg_lightning.algorithms.base.Algorithm``)."""

    shares_live_forward: ClassVar[bool]

    def live_forward(self, td: Any) -> Any: ...

    def level_outputs(self, td: Any, level: int, live: Any = None) -> Any: ...

    def actor_update(self, td: Any, others: Any, step: Callable[[Tensor], Tensor], live: Any = None) -> Tensor: ...


def actor_k_level_step(
    algorithm: LevelAlgorithm,
    td: Any,
    optimizer: Any,
    k: int,
    *,
    params: Sequence[Tensor],
    backward: Callable[..., None] | None = None,
    clip_grad_norm: float | None = None,
    adaptive_tol: float | None = None,
    synchronize: Callable[[], None] | None = None,
    on_level: Callable[[int, Sequence[Tensor]], None] | None = None,
    finite: FiniteGuard | None = None,
) -> KLevelStats:
    """One K-level actor update of ``algorithm`` on the batch ``td`` (:func:`k_level_step` with the algorithm's
    ``actor_update`` and ``level_outputs``, each optimizer step a :func:`gradient_step`).

    Where the algorithm :attr:`~LevelAlgorithm.shares_live_forward`, its live forward runs once, recorded with
    :func:`shared_graph` when K > 1, and every level backpropagates through that graph (``retain_graph``); the
    forward's time counts towards level 1. ``backward`` (default ``Tensor.backward``) takes keyword arguments as
    ``Tensor.backward`` does (Lightning's ``manual_backward``).
    """
    backward = backward or Tensor.backward
    sync = synchronize or (lambda: None)
    start = clock()
    live = None
    if algorithm.shares_live_forward:
        with shared_graph(params) if k > 1 else nullcontext():
            live = algorithm.live_forward(td)
        if k > 1:
            backward = partial(backward, retain_graph=True)
        sync()
    shared_s = clock() - start
    step = partial(
        gradient_step,
        optimizer,
        backward=backward,
        clip_grad_norm=clip_grad_norm,
        params=params,
        name="actor loss",
        finite=finite,
    )
    stats = k_level_step(
        optimizer,
        k,
        level_update=lambda others: algorithm.actor_update(td, others, step, live),
        level_outputs=lambda level: algorithm.level_outputs(td, level, live),
        params=params,
        adaptive_tol=adaptive_tol,
        synchronize=synchronize,
        on_level=on_level,
    )
    stats.level_time_s[0] += shared_s
    return stats

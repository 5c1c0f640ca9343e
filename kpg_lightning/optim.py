"""Optimizer steps, the building block of every update: :func:`gradient_step` with its finite checks (raised at
once, or recorded on the device in a :class:`FiniteGuard` and read once per training step), the actor optimizer of
the K-level recursion (:func:`make_actor_optimizer`), and :func:`frozen` parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from kpg_lightning.errors import NonFiniteError

__all__ = [
    "FiniteGuard",
    "OptimizerSnapshot",
    "frozen",
    "gradient_step",
    "make_actor_optimizer",
    "optimizer_options",
    "params_of",
    "raw_optimizer",
    "training_snapshot",
]


def raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Unwrap a Lightning ``LightningOptimizer`` to the torch optimizer that owns the state."""
    return getattr(optimizer, "optimizer", optimizer)


def params_of(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class FiniteGuard:
    """Finite checks of a training step's updates, kept on the device and read once (:meth:`failure`).

    :func:`gradient_step` given a guard records, per loss name, whether the loss and its gradient norm were finite
    (one fused flag each, accumulated on the device) and steps regardless; whoever owns the guard reads it once
    at the logged step and rolls the step's updates back if anything was not finite."""

    def __init__(self) -> None:
        self.flags: dict[str, Tensor] = {}

    def __call__(self, name: str, finite: Tensor) -> None:
        previous = self.flags.get(name)
        self.flags[name] = finite if previous is None else previous & finite

    def failure(self) -> str | None:
        """One host read: None if every recorded loss and gradient was finite, else what was not (the first)."""
        if not self.flags:
            return None
        names = list(self.flags)
        flags = torch.stack([self.flags[name].reshape(()) for name in names])
        if flags.all():
            return None
        return next(f"{name} is not finite" for name, ok in zip(names, flags.tolist(), strict=True) if not ok)


def gradient_step(
    optimizer: Any,
    loss: Tensor,
    *,
    backward: Callable[[Tensor], None] | None = None,
    clip_grad_norm: float | None = None,
    params: Sequence[Tensor] | None = None,
    name: str = "loss",
    finite: FiniteGuard | None = None,
) -> Tensor:
    """One ordinary optimizer step on ``loss``: zero grads, backward, optional norm clipping, step.

    Without ``finite``: raises :class:`NonFiniteError` naming ``name`` (before stepping) if the loss or the
    gradient is not finite (two host reads). With a :class:`FiniteGuard`: no host read; the checks are recorded
    in the guard, the step is taken, and the guard's owner rolls it back if it was not finite.
    """
    if finite is None and not torch.isfinite(loss.detach()).all():
        raise NonFiniteError(f"{name} is not finite ({float(loss.detach().sum())})")
    optimizer.zero_grad(set_to_none=True)
    (backward or Tensor.backward)(loss)
    params = params if params is not None else params_of(raw_optimizer(optimizer))
    grads = [p.grad for p in params if p.grad is not None]
    if clip_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else loss.new_zeros(())
    if finite is not None:
        finite(name, torch.isfinite(loss.detach()).all())
        finite(f"gradient of {name}", torch.isfinite(norm))
    elif not torch.isfinite(norm):
        raise NonFiniteError(f"gradient of {name} is not finite")
    optimizer.step()
    return loss.detach()


def make_actor_optimizer(
    name: str, k: int, params: list[torch.nn.Parameter], lr: float, compiled: bool = False
) -> torch.optim.Optimizer:
    """``auto``: RMSProp for K > 1 (Adam's momentum carries old gradients across levels), Adam for K = 1.

    Multi-tensor (``foreach``) implementations: one kernel launch per operation over all parameters, and the same
    numbers as the per-parameter loop (options of a compiled update: :func:`optimizer_options`)."""
    if name == "auto":
        name = "rmsprop" if k > 1 else "adam"
    optimizers = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return optimizers[name](params, **optimizer_options(lr, params, compiled))


def optimizer_options(lr: float, params: Sequence[Tensor], compiled: bool) -> dict[str, Any]:
    """Keyword arguments of an optimizer over ``params``. Eager: ``foreach``, a float ``lr``. In a compiled update
    (``compile=default|cudagraphs``, as TorchRL's reference scripts do): ``lr`` a tensor, which a schedule updates in
    place, so changing it neither recompiles nor leaves a captured graph with the old value; on CUDA ``capturable``
    (step counters on the device, which CUDA graphs need); on the CPU the per-parameter loop (Adam takes a tensor
    ``lr`` with ``foreach`` only when capturable, which the CPU is not)."""
    if not compiled:
        return {"lr": lr, "foreach": True}
    device = next(iter(params)).device if params else torch.device("cpu")
    cuda = device.type == "cuda"
    return {"lr": torch.tensor(lr, device=device if cuda else "cpu"), "foreach": cuda, "capturable": cuda}


@contextmanager
def frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters out of the autograd graph for a while (``requires_grad`` restored afterwards)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class OptimizerSnapshot:
    """Parameters and optimizer state saved in place, restorable without deep copies of modules."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], with_state: bool = True):
        self.optimizer = optimizer
        self.params = list(params)
        with torch.no_grad():
            self.values = [p.detach().clone() for p in self.params]
        self.state: dict[Tensor, dict[str, Any] | None] | None = None
        if with_state:
            self.state = {}
            for p in self.params:
                st = optimizer.state.get(p)
                self.state[p] = (
                    None
                    if not st
                    else {key: (v.detach().clone() if isinstance(v, Tensor) else v) for key, v in st.items()}
                )

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.params, self.values)
        if self.state is None:
            return
        for p, saved in self.state.items():
            if saved is None:
                self.optimizer.state.pop(p, None)
                continue
            live = self.optimizer.state[p]
            for key, v in saved.items():
                if isinstance(v, Tensor) and isinstance(live.get(key), Tensor) and live[key].shape == v.shape:
                    live[key].copy_(v)
                else:
                    live[key] = v.clone() if isinstance(v, Tensor) else v
            for key in [key for key in live if key not in saved]:
                del live[key]


def training_snapshot(optimizers: Sequence[Any], module: torch.nn.Module) -> Callable[[], None]:
    """Save a training step's state in place: every optimizer's parameters and state, and ``module``'s other
    parameters and buffers (targets, ε, counters); returns its restore. A device copy, no host read: the step's
    finite check can wait for its end, and a non-finite step is rolled back from here."""
    raws = [raw_optimizer(opt) for opt in optimizers]
    snapshots = [OptimizerSnapshot(raw, params_of(raw)) for raw in raws]
    owned = {id(p) for snapshot in snapshots for p in snapshot.params}
    rest = [t for t in (*module.parameters(), *module.buffers()) if id(t) not in owned]
    with torch.no_grad():
        values = [t.detach().clone() for t in rest]

    @torch.no_grad()
    def restore() -> None:
        for snapshot in snapshots:
            snapshot.restore()
        if rest:
            torch._foreach_copy_(rest, values)

    return restore

"""A compiled update (``compile=default|cudagraphs``), with the tools TorchRL's reference scripts use.

``default`` wraps the module's update — critic step, K-level actor step (:func:`kpg_lightning.kpg.k_level_step`, the
one recursion, unchanged), targets — in ``torch.compile``; ``cudagraphs`` also captures the compiled update, its
``backward()`` and optimizer steps included, in one CUDA graph with tensordict's ``CudaGraphModule`` and replays it.
K, the batch shapes and the level loop are static at capture; optimizer states, level snapshots and targets are
updated in place in the captured memory.

What the wrapped update must be, so that a replay does what the capture did: a function of a tensordict (the
prepared batch: every random draw of the update made before it, in ``Algorithm.process_batch``) returning a
tensordict of detached tensors (metrics, the levels' diagnostics, the finite checks), with no host read and no
Python state that the caller relies on after the call. :meth:`kpg_lightning.module.KPGModule.update` is that
function; what cannot be captured (``kpg.adaptive_tol``'s early stop) is refused by the configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from tensordict import TensorDictBase

__all__ = ["CAPTURE_WARMUP", "Update", "compile_update"]

CAPTURE_WARMUP = 3
"""Updates run before the CUDA graph is captured (compiled, on a side stream): optimizer states exist and every
recompilation has happened, as capture requires."""

Update = Callable[[TensorDictBase], TensorDictBase]


def compile_update(update: Update, mode: str) -> Update:
    """``update`` as ``mode`` runs it: itself (``none``), ``torch.compile(update)`` (``default``), or that captured
    by ``tensordict.nn.CudaGraphModule`` (``cudagraphs``; CUDA only, the configuration refuses it elsewhere)."""
    if mode == "none":
        return update
    # TorchRL's scripts compile in mode "default" under cudagraphs: "reduce-overhead" would capture a second time
    compiled = _keeping_buffers(torch.compile(update, mode="default"))
    if mode == "default":
        return compiled
    if mode != "cudagraphs":
        raise ValueError(f"compile={mode!r}: none, default or cudagraphs")
    from tensordict.nn import CudaGraphModule

    return CudaGraphModule(compiled, warmup=CAPTURE_WARMUP, in_keys=[], out_keys=[])


def _keeping_buffers(compiled: Update) -> Update:
    """``compiled`` with AOTAutograd's donated buffers off: levels that share one forward (FACMAC's critic through
    ``shared_graph``) call ``backward(retain_graph=True)``, which a backward compiled with donated buffers refuses."""

    @functools.wraps(compiled)
    def update(batch: TensorDictBase) -> TensorDictBase:
        with torch._functorch.config.patch(donated_buffer=False):
            return compiled(batch)

    return update

"""The LightningModule: the update, and nothing else.

One training step is one collected batch, then the updates it yields, each as Algorithm 2 of the paper reads:

    for each update batch:  critic step  →  K-level actor step (kpg.actor_k_level_step)  →  target update

Where batches come from (collection segments, replay, episode assembly, persistence) is the :class:`Experience`
component it is given; what the recursion does is :mod:`kpg_lightning.kpg`. Budgets and log steps are environment
frames, not ``global_step`` (which manual optimization advances once per ``optimizer.step()``).
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from tensordict import TensorDict, TensorDictBase
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from kpg_lightning.algorithms.base import Algorithm
from kpg_lightning.checkpointing import restore_rng
from kpg_lightning.compiled import Update, compile_update
from kpg_lightning.config import KPGConfig
from kpg_lightning.experience import Experience
from kpg_lightning.kpg import (
    FiniteGuard,
    KLevelStats,
    StepRecord,
    actor_k_level_step,
    clock,
    frozen,
    gradient_step,
    make_actor_optimizer,
)
from kpg_lightning.metrics import log_at_frames
from kpg_lightning.optim import optimizer_options, raw_optimizer, training_snapshot

__all__ = ["KPGModule", "frozen", "make_actor_optimizer"]


class KPGModule(LightningModule):
    """Trains an :class:`Algorithm` with the K-level actor update.

    Args:
        algorithm: networks, losses and level hooks.
        kpg: the recursion's settings (K, actor optimizer, adaptive tolerance, scope).
        experience: where update batches come from; None for a module driven through :meth:`update` directly.
        on_nonfinite: ``stop`` (checkpoint the last finite state and stop) or ``skip`` (drop the step's updates)
            when a loss or gradient is NaN/inf. The check is read once per training step, at its end; a step with a
            non-finite update is rolled back whole (parameters, targets, buffers, optimizer states), so parameters
            are finite between steps and checkpoints never see a non-finite one.
        config: the resolved run configuration, kept in checkpoints.
        time_levels: synchronize the device around each timed phase, so that :attr:`record`'s timings are exact
            on a GPU (the K-cost callback reads them).
        compile: ``none``, ``default`` or ``cudagraphs``: how :meth:`update_step` runs (:mod:`kpg_lightning.compiled`).

    After each training step, :attr:`record` says what it did. ``on_level(level, params)``, if set, is called
    right after every K level's update, before any restore (inspection only).
    """

    def __init__(
        self,
        algorithm: Algorithm,
        kpg: KPGConfig,
        experience: Experience | None = None,
        *,
        on_nonfinite: str = "stop",
        config: dict[str, Any] | None = None,
        time_levels: bool = True,
        compile: str = "none",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.algorithm, self.kpg, self.experience = algorithm, kpg, experience
        self.on_nonfinite, self.time_levels, self.compile = on_nonfinite, time_levels, compile
        self._update: Update | None = None  # update_step as ``compile`` runs it, built on first use
        self._level_times: list[list[float]] = []
        self.save_hyperparameters({"config": config or {}})
        self.train_steps = 0
        self.skipped_updates = 0
        self.stopped_by: str | None = None
        self.resume_dir: Path | None = None
        self.record = StepRecord()
        self.finite = FiniteGuard()
        self.on_level: Callable[[int, Sequence[torch.Tensor]], None] | None = None

    @property
    def frames(self) -> int:
        return self.experience.frames if self.experience is not None else 0

    # -- data -------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.experience.loader(self.global_rank, self.trainer.world_size, self.device)

    def on_train_start(self) -> None:
        if self.experience.finished:  # resumed from a finished run: nothing left to collect
            self.trainer.should_stop = True

    def transfer_batch_to_device(self, batch: TensorDictBase, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # collected frames go to the replay buffer's device, samples to the module's

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        alg, compiled = self.algorithm, self.compile != "none"
        critic = alg.critic_parameters()
        optimizers = [torch.optim.Adam(critic, **optimizer_options(alg.cfg.critic_lr, critic, compiled))]
        if alg.has_actor:
            actor, lr = alg.actor_parameters(), alg.cfg.actor_lr
            optimizers.insert(0, make_actor_optimizer(self.kpg.actor_optimizer, self.kpg.k, actor, lr, compiled))
        if self.experience is None:
            return optimizers
        # every learning rate follows the algorithm's schedule over the budget (progress before the step's batch)
        schedules = [LambdaLR(opt, lambda _: alg.lr_scale(self.experience.progress)) for opt in optimizers]
        return optimizers, schedules

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        schedules = self.lr_schedulers()
        with warnings.catch_warnings():  # a function of frames, set before the batch's updates: order is intended
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
            for schedule in schedules if isinstance(schedules, list) else [schedules]:
                schedule.step()
        experience, self.record = self.experience, StepRecord()
        experience.observe(batch)
        self.algorithm.exploration_step(experience.frames)
        self.record.add_time("collect", experience.last_collect_s)
        losses: dict[str, list[torch.Tensor]] = defaultdict(list)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list | tuple) else [optimizers]
        self.finite, rollback = FiniteGuard(), training_snapshot(optimizers, self.algorithm)
        updates = 0
        for td in experience.updates(batch):
            for key, value in self.update(td).items():
                losses[key].append(value)
            updates += 1
        self.record.losses = dict(losses)
        failure = self.finite.failure()  # the finite checks of the step's updates: one host read
        if failure is not None:
            rollback()  # parameters, targets, buffers and optimizer states as before the step
            self.train_steps -= updates
            self.record.losses, self.record.levels = {}, []
            if self.on_nonfinite == "skip":
                self.skipped_updates += updates
                rank_zero_warn(f"skipped the {updates} update(s) of the step at {experience.frames} frames: {failure}")
            else:
                self.stopped_by = (
                    f"{failure} at {experience.frames} frames; stopped with finite parameters (checkpointed)"
                )
                self.trainer.should_stop = True
        experience.sync_policy()
        if experience.finished:
            self.trainer.should_stop = True
        self.record.materialize()  # the step's numbers, read on the host once
        self._log_step()

    def update(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        """One update: the batch prepared (with every random draw of the update), then :meth:`update_step` as
        ``compile`` runs it (:func:`kpg_lightning.compiled.compile_update`), then its numbers into :attr:`record`,
        its finite checks into :attr:`finite`.

        Nothing here reads the device on the host (unless ``kpg.adaptive_tol`` is set, or ``time_levels`` on a
        GPU): metrics come back as device tensors, and the finite checks accumulate in :attr:`finite`, read once
        at the end of the training step. Eager updates time the critic and every level; a compiled one is timed
        whole, as the ``update`` phase (its levels run inside one compiled graph)."""
        td = self.algorithm.process_batch(td)
        if self._update is None:
            self._update = compile_update(self.update_step, self.compile)
        self._level_times = []
        start = time.perf_counter()
        out = self._update(td)
        if self.compile != "none":
            self._sync()
            self.record.add_time("update", time.perf_counter() - start)
        for name, flag in out["finite"].items():
            self.finite(name, flag)
        levels = out["levels"]
        for i in range(len(levels.keys())):
            level = levels[str(i)]
            self.record.add_levels(
                KLevelStats(
                    k=self.kpg.k,
                    levels_run=level["objective"].shape[0],
                    pending_objective=list(level["objective"].unbind()),
                    pending_delta=list(level["delta"].unbind()),
                    pending_step=list(level["step"].unbind()),
                    level_time_s=self._level_times[i] if self._level_times else [],
                )
            )
        self.train_steps += 1
        return dict(out["metrics"].items())

    def update_step(self, td: TensorDictBase) -> TensorDict:
        """The update itself, on a prepared batch: critic step(s), the K-level actor step on each actor batch,
        targets. Returns its numbers as a tensordict of detached device tensors (``metrics``; ``levels``: each
        K-level step's objective, ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ and ‖θ⁽ᵏ⁾ − θ‖ per level; ``finite``: the finite checks), so that
        a compiled or captured replay hands back everything (:mod:`kpg_lightning.compiled`)."""
        alg, eager = self.algorithm, self.compile == "none"
        optimizers, backward = self.optimizers(), self.manual_backward
        if self.compile == "cudagraphs":  # a replay runs no Lightning hook or counter: the torch objects themselves
            optimizers, backward = [raw_optimizer(opt) for opt in optimizers], torch.Tensor.backward
        actor_opt, critic_opt = optimizers if alg.has_actor else (None, optimizers)
        critic_params = alg.critic_parameters()
        finite = FiniteGuard()
        start = clock()
        step = partial(gradient_step, backward=backward, clip_grad_norm=alg.cfg.grad_clip, finite=finite)
        metrics = alg.critic_update(td, partial(step, critic_opt, params=critic_params, name="critic loss"))
        if eager:
            self._sync()
            self.record.add_time("critic", clock() - start)
        levels = {}
        if actor_opt is not None:
            with frozen(critic_params):  # the actor levels need no critic/mixer gradients
                for chunk in alg.actor_batches(td, scope=self.kpg.scope):
                    stats = self.k_levels(chunk, actor_opt, alg.actor_parameters(), finite, backward)
                    levels[str(len(levels))] = {
                        key: torch.stack([torch.as_tensor(v) for v in values])
                        for key, values in zip(("objective", "delta", "step"), stats._pending(), strict=True)
                    }
                    if eager:
                        self._level_times.append(stats.level_time_s)
            metrics["actor_loss"] = stats.pending_objective[-1]
        alg.update_targets()
        return TensorDict({"metrics": metrics, "levels": levels, "finite": finite.flags}, batch_size=[]).detach()

    def k_levels(
        self,
        td: TensorDictBase,
        actor_opt: Any,
        actor_params: list[torch.nn.Parameter],
        finite: FiniteGuard | None = None,
        backward: Callable[..., None] | None = None,
    ) -> KLevelStats:
        """One K-level actor update on ``td`` (:func:`kpg_lightning.kpg.actor_k_level_step`); eager updates time
        every level (synchronizing the device around each where ``time_levels``)."""
        timed = self.time_levels and self.compile == "none"
        return actor_k_level_step(
            self.algorithm,
            td,
            actor_opt,
            self.kpg.k,
            params=actor_params,
            backward=backward or self.manual_backward,
            clip_grad_norm=self.algorithm.cfg.grad_clip,
            adaptive_tol=self.kpg.adaptive_tol,
            synchronize=self._sync if timed else None,
            on_level=self.on_level,
            finite=finite if finite is not None else self.finite,
        )

    def _sync(self) -> None:
        if self.time_levels and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- logging ----------------------------------------------------------------------------------------------
    def _log_step(self) -> None:
        metrics = {f"train/{key}": value for key, value in self.record.losses.items()}
        last_return = self.experience.last_return
        if last_return is not None:
            metrics["train/return"] = last_return
        metrics["train/frames"] = self.frames
        log_at_frames(self, metrics, self.frames)
        self.log("frames", float(self.frames), prog_bar=True, logger=False, batch_size=1)
        if last_return is not None:
            self.log("return", last_return, prog_bar=True, logger=False, batch_size=1)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kpg_counters"] = {
            **self.experience.state_dict(),
            "train_steps": self.train_steps,
            "skipped_updates": self.skipped_updates,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("kpg_counters", {})
        self.experience.load_state_dict(counters)
        self.train_steps = counters.get("train_steps", 0)
        self.skipped_updates = counters.get("skipped_updates", 0)
        if "kpg_rng" in checkpoint:  # checkpoints from before each rank saved its own (replay_rank<r>/rng.json)
            restore_rng(checkpoint["kpg_rng"], *self.experience.generators())
        if self.resume_dir is not None:
            self.experience.load_replay(self.resume_dir / f"replay_rank{self.global_rank}")

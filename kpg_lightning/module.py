"""The LightningModule: one training step = one collected batch, then updates that read like the algorithm.

    collect (data loader) → replay → [critic step → K-level actor step → targets] x updates → policy-weight sync

Budgets and log steps are environment frames, not ``global_step`` (which manual optimization advances once per
``optimizer.step()``, K + 1 times per update here).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from tensordict import TensorDictBase
from torch.utils.data import DataLoader
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer

from kpg_lightning.algorithms.base import Algorithm
from kpg_lightning.checkpointing import capture_rng, load_replay, restore_rng, save_replay
from kpg_lightning.config import BufferConfig, KPGConfig
from kpg_lightning.data import CollectorStream, EpisodeAssembler, stream_loader
from kpg_lightning.envs.info import GROUP
from kpg_lightning.kpg import KLevelStats, NonFiniteError, gradient_step, k_level_step, shared_graph

__all__ = ["KPGModule", "make_actor_optimizer"]


def make_actor_optimizer(name: str, k: int, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``auto``: RMSProp for K > 1 (Adam's momentum carries old gradients across levels), Adam for K = 1.

    Multi-tensor (``foreach``) implementations: one kernel launch per operation over all parameters, and the same
    numbers as the per-parameter loop."""
    if name == "auto":
        name = "rmsprop" if k > 1 else "adam"
    optimizers = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return optimizers[name](params, lr=lr, foreach=True)


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


def _without_info(td: TensorDictBase) -> TensorDictBase:
    """Drops simulator diagnostics (``info`` entries): no loss reads them, and replay need not store them."""
    keys = [key for key in td.keys(True) if (key[-1] if isinstance(key, tuple) else key) == "info"]
    return td.exclude(*keys) if keys else td


class KPGModule(LightningModule):
    """Trains an :class:`Algorithm` with the K-level actor update.

    Args:
        algorithm: networks and losses.
        kpg: the recursion's settings (K, actor optimizer, adaptive tolerance).
        buffer: replay settings and updates per collected batch.
        replay: the replay buffer the collected frames go to.
        make_collector: ``(total_frames, init_random_frames, start_frames) -> Collector`` for one segment of
            collection starting at ``start_frames`` (the environment reseeded from that count and reset).
        max_frames: the training budget in frames.
        segment_frames: collection restarts (reseeded) at multiples of this, where checkpoints are taken, so a
            resumed run continues exactly as the uninterrupted one.
        on_nonfinite: ``stop`` (save a checkpoint of the last finite state and stop) or ``skip`` (drop the
            update) when a loss or gradient is NaN/inf.
        config: the resolved run configuration, kept in checkpoints.
        episode_length: steps each replayed episode is padded to, for algorithms whose ``replay_unit`` is
            ``episodes`` (collected rollouts are cut into whole episodes by an :class:`EpisodeAssembler`).
    """

    def __init__(self, algorithm: Algorithm, kpg: KPGConfig, buffer: BufferConfig, replay: ReplayBuffer | None,
                 make_collector: Callable[[int, int, int], Collector], max_frames: int, init_random_frames: int = 0,
                 segment_frames: int | None = None, on_nonfinite: str = "stop", config: dict[str, Any] | None = None,
                 episode_length: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.algorithm, self.kpg, self.buffer_cfg, self.replay = algorithm, kpg, buffer, replay
        self.make_collector, self.max_frames, self.init_random_frames = make_collector, max_frames, init_random_frames
        self.segment_frames = segment_frames or max_frames
        self.on_nonfinite = on_nonfinite
        self.skipped_updates = 0
        self.stopped_by: str | None = None
        self.resume_dir: Path | None = None
        self._segment_start = 0
        self.save_hyperparameters({"config": config or {}})
        self.frames = 0
        self.train_steps = 0
        self.iterations = 0
        self.last_return: float | None = None
        self.step_stats: list[KLevelStats] = []
        self.timing: dict[str, float] = defaultdict(float)
        self.profile_levels = False
        self.level_hook: Callable[[int, Any], None] | None = None
        self.stream: CollectorStream | None = None
        self.episodes: EpisodeAssembler | None = None
        if algorithm.replay_unit == "episodes" and not algorithm.on_policy:
            if episode_length is None:
                raise ValueError("buffer.episode_length: episode replay needs the episode limit; set it")
            self.episodes = EpisodeAssembler(episode_length)

    # -- data -------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.stream = CollectorStream(self._next_collector, self._segment_done)
        return stream_loader(self.stream)

    def _next_collector(self) -> Collector | None:
        remaining = self.max_frames - self.frames
        if remaining <= 0:
            return None
        self._segment_start = self.frames
        if self.episodes is not None:  # the new segment resets the environments: unfinished episodes never end
            self.episodes.reset()
        segment = min(remaining, self.segment_frames - self.frames % self.segment_frames)
        random_frames = min(segment, max(0, self.init_random_frames - self.frames))
        world = self.world_size  # every rank collects its share of the run's frames
        return self.make_collector(-(-segment // world), -(-random_frames // world), self.frames)

    def _segment_done(self) -> bool:
        return self.frames // self.segment_frames > self._segment_start // self.segment_frames

    def on_train_start(self) -> None:
        if self.frames >= self.max_frames:  # resumed from a finished run: nothing left to collect
            self.trainer.should_stop = True

    def transfer_batch_to_device(self, batch: TensorDictBase, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # collected frames go to the replay buffer's device, samples to the module's

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.algorithm.cfg
        critic = torch.optim.Adam(self.algorithm.critic_parameters(), lr=cfg.critic_lr, foreach=True)
        optimizers = [critic]
        if self.algorithm.has_actor:
            optimizers.insert(0, make_actor_optimizer(self.kpg.actor_optimizer, self.kpg.k,
                                                      self.algorithm.actor_parameters(), cfg.actor_lr))
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        return optimizers

    def _optimizers(self) -> tuple[Any, Any]:
        """``(actor optimizer or None, critic optimizer)``."""
        opts = self.optimizers()
        if not isinstance(opts, (list, tuple)):
            opts = [opts]
        return (opts[0], opts[1]) if len(opts) == 2 else (None, opts[0])

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        self.timing = defaultdict(float)
        self.step_stats = []
        self.timing["collect"] = self.stream.last_collect_s if self.stream is not None else 0.0
        self._observe(batch)
        losses: dict[str, list[float]] = defaultdict(list)
        if self.algorithm.on_policy:
            updates = [batch.to(self.device)]
        else:
            stored = _without_info(batch)
            if self.algorithm.replay_exclude:
                stored = stored.exclude(*self.algorithm.replay_exclude)
            if self.episodes is None:
                self.replay.extend(stored.reshape(-1))
                ready = self.frames >= self.buffer_cfg.learning_starts
            else:
                episodes = self.episodes.add(stored)
                if episodes is not None:
                    self.replay.extend(episodes)
                ready = (self.frames >= self.buffer_cfg.learning_starts
                         and len(self.replay) >= self.buffer_cfg.batch_size)
            updates = (self.replay.sample().to(self.device) for _ in range(self.buffer_cfg.updates_per_batch * ready))
        for td in updates:
            try:
                result = self.update(td)
            except NonFiniteError as exc:
                if self.on_nonfinite == "skip":
                    self.skipped_updates += 1
                    rank_zero_warn(f"skipped an update at {self.frames} frames: {exc}")
                    continue
                self.stopped_by = f"{exc} at {self.frames} frames; stopped with finite parameters (checkpointed)"
                self.trainer.should_stop = True
                break
            for key, value in result.items():
                losses[key].append(value)
        if self.stream is not None:
            self.stream.update_policy_weights()
        if self.frames >= self.max_frames:
            self.trainer.should_stop = True
        self._log_step({f"train/{k}": sum(v) / len(v) for k, v in losses.items()})

    def update(self, td: TensorDictBase) -> dict[str, float]:
        """One update: critic step(s), then the K-level actor step, then targets."""
        actor_opt, critic_opt = self._optimizers()
        alg, clip = self.algorithm, self.algorithm.cfg.grad_clip
        actor_params, critic_params = alg.actor_parameters(), alg.critic_parameters()
        td = alg.process_batch(td)
        start = time.perf_counter()
        metrics = alg.critic_update(td, partial(gradient_step, critic_opt, backward=self.manual_backward,
                                                clip_grad_norm=clip, params=critic_params, name="critic loss"))
        self._sync()
        self.timing["critic"] += time.perf_counter() - start
        if actor_opt is None:  # value-based: the critic step is the whole update
            alg.update_targets()
            self.train_steps += 1
            return metrics
        with frozen(critic_params):  # the actor levels need no critic/mixer gradients
            for chunk in alg.actor_batches(td, scope=self.kpg.scope):
                stats = self.k_levels(chunk, actor_opt, actor_params)
                for level, seconds in enumerate(stats.level_time_s, start=1):
                    self.timing[f"level_{level}"] += seconds
                self.step_stats.append(stats)
        alg.update_targets()
        self.train_steps += 1
        return {**metrics, "actor_loss": stats.objective[-1]}

    def k_levels(self, td: TensorDictBase, actor_opt: Any, actor_params: list[torch.nn.Parameter]) -> KLevelStats:
        """One K-level actor update on ``td``. Where the algorithm shares its live forward, that forward runs once
        (timed with level 1) and every level backpropagates through its graph, kept until the last level."""
        alg, k = self.algorithm, self.kpg.k
        start = time.perf_counter()
        live, backward = None, self.manual_backward
        if alg.shares_live_forward:
            with shared_graph(actor_params) if k > 1 else nullcontext():
                live = alg.live_forward(td)
            if k > 1:
                backward = partial(self.manual_backward, retain_graph=True)
            self._sync()
        shared_s = time.perf_counter() - start
        step = partial(gradient_step, actor_opt, backward=backward, clip_grad_norm=alg.cfg.grad_clip,
                       params=actor_params, name="actor loss")
        stats = k_level_step(
            actor_opt, k,
            level_update=lambda others: alg.actor_update(td, others, step, live),
            level_outputs=lambda level: alg.level_outputs(td, level, live),
            params=actor_params, adaptive_tol=self.kpg.adaptive_tol,
            synchronize=self._sync if self.profile_levels else None, on_level=self.level_hook,
        )
        stats.level_time_s[0] += shared_s
        return stats

    # -- bookkeeping ------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _observe(self, batch: TensorDictBase) -> None:
        scale = self.algorithm.lr_scale(min(1.0, self.frames / self.max_frames))  # progress before this batch
        self.frames += batch.numel() * self.world_size  # the run's frames, all ranks together
        self.iterations += 1
        self.algorithm.exploration_step(self.frames)
        for opt in self._optimizers():
            for group in opt.optimizer.param_groups if opt is not None else ():
                group["lr"] = group["initial_lr"] * scale
        done = batch.get(("next", "done")).squeeze(-1)
        if done.any() and ("next", GROUP, "episode_reward") in batch.keys(True, True):
            returns = batch.get(("next", GROUP, "episode_reward"))[done]
            self.last_return = float(returns.mean())

    def _sync(self) -> None:
        if self.profile_levels and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _log_step(self, metrics: dict[str, float]) -> None:
        metrics = dict(metrics)
        if self.last_return is not None:
            metrics["train/return"] = self.last_return
        metrics["train/frames"] = self.frames
        self.log_frames(metrics)
        self.log("frames", float(self.frames), prog_bar=True, logger=False, batch_size=1)
        if self.last_return is not None:
            self.log("return", self.last_return, prog_bar=True, logger=False, batch_size=1)

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over data-parallel ranks (a metric missing on a rank is left out of its mean).

        Collective: every rank calls it at the same point."""
        if self.world_size == 1:
            return metrics
        import torch.distributed as dist

        gathered: list[list[str] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, sorted(metrics))
        keys = sorted(set().union(*gathered))
        values = torch.tensor([[float(metrics.get(k, float("nan"))) for k in keys]], dtype=torch.float64)
        values = self.trainer.strategy.all_gather(values.to(self.device)).reshape(self.world_size, len(keys))
        return dict(zip(keys, values.nanmean(dim=0).tolist(), strict=True))

    def log_frames(self, metrics: dict[str, float]) -> None:
        """Write metrics (averaged over ranks) to every logger with the frame count as the step. Collective."""
        metrics = self.reduce_metrics(metrics)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.frames)

    def check_finite_parameters(self) -> None:
        """Refuse to checkpoint NaN/inf parameters."""
        for name, tensor in self.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteError(f"parameter {name} is not finite; not writing a checkpoint")

    def _generators(self) -> list[torch.Generator]:
        rng = getattr(self.replay, "_rng", None)
        return [rng] if isinstance(rng, torch.Generator) else []

    def save_replay(self, path: Path) -> None:
        if self.replay is not None:
            save_replay(self.replay, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kpg_counters"] = {"frames": self.frames, "train_steps": self.train_steps,
                                      "iterations": self.iterations, "skipped_updates": self.skipped_updates}
        checkpoint["kpg_rng"] = capture_rng(*self._generators())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("kpg_counters", {})
        self.frames = counters.get("frames", 0)
        self.train_steps = counters.get("train_steps", 0)
        self.iterations = counters.get("iterations", 0)
        self.skipped_updates = counters.get("skipped_updates", 0)
        if "kpg_rng" in checkpoint:
            restore_rng(checkpoint["kpg_rng"], *self._generators())
        replay_dir = self.resume_dir / f"replay_rank{self.global_rank}" if self.resume_dir else None
        if self.replay is not None and replay_dir is not None and replay_dir.is_dir():
            load_replay(self.replay, replay_dir)

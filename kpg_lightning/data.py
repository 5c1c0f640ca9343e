"""Collection as a Lightning data source: a TorchRL collector behind an ``IterableDataset``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tensordict import TensorDictBase, pad
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler
from torchrl.envs import EnvBase

from kpg_lightning.envs.info import DONE
from kpg_lightning.errors import ConfigError

__all__ = [
    "CollectorStream",
    "EpisodeAssembler",
    "available_bytes",
    "make_replay_buffer",
    "replay_bytes",
    "replay_device",
    "stream_loader",
    "without_info",
]


class CollectorStream(IterableDataset):
    """Yields the collector's batches, in segments that end where checkpoints are taken.

    ``make_collector(start_frames)`` builds the collector for the segment starting at ``start_frames`` (with the
    environment reseeded from that count and reset), and ``segment_done()`` says, after each batch, whether a
    checkpoint boundary was crossed. A run resumed from a checkpoint therefore continues from exactly the state
    the uninterrupted run had at that point. ``last_collect_s`` is the wall-clock of the latest batch.
    """

    def __init__(self, make_collector: Callable[[], Collector | None], segment_done: Callable[[], bool] = bool):
        super().__init__()
        self.make_collector = make_collector
        self.segment_done = segment_done
        self.collector: Collector | None = None
        self.last_collect_s = 0.0

    def __iter__(self) -> Iterator[TensorDictBase]:
        while (collector := self.make_collector()) is not None:
            self.collector = collector
            try:
                iterator = iter(collector)
                while True:
                    start = time.perf_counter()
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        return
                    self.last_collect_s = time.perf_counter() - start
                    yield batch
                    if self.segment_done():
                        break
            finally:
                collector.shutdown()
                self.collector = None

    def update_policy_weights(self) -> None:
        if self.collector is not None:
            self.collector.update_policy_weights_()


def stream_loader(stream: CollectorStream) -> DataLoader:
    """A DataLoader that hands each collected TensorDict through unchanged, in the main process."""
    return DataLoader(stream, batch_size=None, collate_fn=lambda batch: batch, num_workers=0)


def without_info(td: TensorDictBase) -> TensorDictBase:
    """Drops simulator diagnostics (``info`` entries): no loss reads them, and replay need not store them."""
    keys = [key for key in td.keys(True) if (key[-1] if isinstance(key, tuple) else key) == "info"]
    return td.exclude(*keys) if keys else td


def replay_bytes(env: EnvBase, size: int, exclude: tuple[Any, ...] = (), episode_length: int | None = None) -> int:
    """Bytes a full replay of ``size`` items takes, estimated before anything is collected.

    One frame is the env's full specs as a zeroed TensorDict (observations, action, reward, done flags, and their
    ``next`` entries, env transforms included; no random numbers are drawn), less what replay does not store
    (``info`` entries and ``exclude``), plus the collector's trajectory id (int64); an episode is ``episode_length``
    such frames plus its ``filled`` flag. Policy outputs that are not in the specs and not excluded are not counted.
    """
    frame = without_info(env.fake_tensordict())
    frame = frame[(0,) * frame.batch_dims] if frame.batch_dims else frame
    if exclude:
        frame = frame.exclude(*exclude)
    per_step = sum(t.numel() * t.element_size() for t in frame.values(True, True)) + 8  # ("collector", "traj_ids")
    per_item = (per_step + 1) * episode_length if episode_length else per_step  # + "filled" (bool)
    return int(per_item) * int(size)


def available_bytes(device: torch.device | str) -> int:
    """Memory free for a new allocation on ``device``: CUDA's free memory, or the machine's ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


GPU_REPLAY_SHARE = 0.5
"""``buffer.device=auto`` stores replay on the training GPU only when its estimate is at most this share of the
GPU's free memory, leaving the rest to the networks, their optimizers and the K-level recursion's activations."""


def replay_device(requested: str, training: torch.device, needed: int) -> torch.device:
    """Where replay of ``needed`` bytes is stored: ``buffer.device`` (auto: the training device when it fits in
    :data:`GPU_REPLAY_SHARE` of its free memory, else the CPU; cuda: the training GPU where training is on one).
    Refuses, before anything is allocated, a replay that does not fit in the chosen device's free memory."""
    if requested == "auto":
        fits = training.type == "cuda" and needed <= GPU_REPLAY_SHARE * available_bytes(training)
        device = training if fits else torch.device("cpu")
    elif requested == "cuda" and training.type == "cuda":  # this process's GPU (its local rank's under DDP)
        device = training
    else:
        device = torch.device(requested)
    free = available_bytes(device)
    if needed > free:
        raise ConfigError(
            f"buffer.size is not allowed: its replay needs {needed / 1e9:.3g} GB and buffer.device={requested} "
            f"({device}) has {free / 1e9:.3g} GB available; lower buffer.size"
            + (" or set buffer.device=cpu" if device.type == "cuda" else "")
        )
    return device


def make_replay_buffer(
    size: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"
) -> TensorDictReplayBuffer:
    """Uniform replay (TorchRL ``LazyTensorStorage``) over ``size`` items — single frames, or whole padded
    episodes for episodic algorithms — sampling from its own seeded generator (saved in checkpoints), so sampling
    does not depend on what else draws random numbers."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(size, device=device),
        sampler=RandomSampler(),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )


class EpisodeAssembler:
    """Cuts collected rollouts ``[envs, T]`` into whole episodes for episode replay (Appendix E.2: batches of fully
    unrolled episodes, zero-padded to a common length).

    An episode that spans several collected batches is kept per environment until its ``("next", "done")`` step
    arrives; :meth:`add` returns the episodes completed by a batch, stacked ``[n, length]``, each zero-padded to
    ``length`` steps with ``filled [length, 1]`` True on its real steps. :meth:`reset` drops unfinished episodes:
    call it whenever the environments are reset (a new collection segment), since those episodes never end.
    """

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"buffer.episode_length: an integer >= 1, got {length}")
        self.length = length
        self.pending: dict[int, list[TensorDictBase]] = {}

    def reset(self) -> None:
        self.pending.clear()

    def add(self, batch: TensorDictBase) -> TensorDictBase | None:
        if batch.ndim == 1:  # an env without batch dimensions: one row of T steps
            batch = batch.unsqueeze(0)
        if batch.ndim != 2:
            raise ValueError(f"episode replay expects rollouts [envs, T], got batch shape {tuple(batch.shape)}")
        done = batch.get(("next", DONE)).reshape(batch.shape[0], batch.shape[1])
        episodes = []
        for env in range(batch.shape[0]):
            start = 0
            for end in (done[env].nonzero().squeeze(-1) + 1).tolist():
                pieces = [*self.pending.pop(env, []), batch[env, start:end]]
                episodes.append(self._padded(torch.cat(pieces) if len(pieces) > 1 else pieces[0]))
                start = end
            if start < batch.shape[1]:
                self.pending.setdefault(env, []).append(batch[env, start:])
                if sum(piece.shape[0] for piece in self.pending[env]) > self.length:
                    raise ValueError(
                        f"buffer.episode_length: an episode ran past {self.length} steps; set it to "
                        "the environment's episode limit or more"
                    )
        return torch.stack(episodes) if episodes else None

    def _padded(self, episode: TensorDictBase) -> TensorDictBase:
        steps = episode.shape[0]
        if steps > self.length:
            raise ValueError(
                f"buffer.episode_length: an episode of {steps} steps does not fit in {self.length}; "
                "set it to the environment's episode limit or more"
            )
        episode = episode.clone(False) if episode.is_locked else episode
        episode.set("filled", torch.ones(steps, 1, dtype=torch.bool, device=episode.device))
        return pad(episode, [0, self.length - steps]) if steps < self.length else episode

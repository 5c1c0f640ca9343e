"""Collection as a Lightning data source: a TorchRL collector behind an ``IterableDataset``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler

__all__ = ["CollectorStream", "make_replay_buffer", "stream_loader"]


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


def make_replay_buffer(size: int, batch_size: int, seed: int = 0, device: str = "cpu") -> TensorDictReplayBuffer:
    """Uniform replay over single frames (TorchRL ``LazyTensorStorage``), sampling from its own seeded generator
    (saved in checkpoints), so sampling does not depend on what else draws random numbers."""
    return TensorDictReplayBuffer(storage=LazyTensorStorage(size, device=device), sampler=RandomSampler(),
                                  batch_size=batch_size, generator=torch.Generator().manual_seed(seed))

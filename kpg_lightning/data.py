"""Collection as a Lightning data source: a TorchRL collector behind an ``IterableDataset``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler

__all__ = ["CollectorStream", "make_replay_buffer", "stream_loader"]


class CollectorStream(IterableDataset):
    """Yields the collector's batches; the collector is built when iteration starts.

    Built late so that a resumed run collects only the frames it still lacks (``make_collector(remaining)`` is
    called with the module's restored frame counter). ``last_collect_s`` is the wall-clock of the latest batch.
    """

    def __init__(self, make_collector: Callable[[], Collector | None]):
        super().__init__()
        self.make_collector = make_collector
        self.collector: Collector | None = None
        self.last_collect_s = 0.0

    def __iter__(self) -> Iterator[TensorDictBase]:
        self.collector = self.make_collector()
        if self.collector is None:
            return
        try:
            iterator = iter(self.collector)
            while True:
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                self.last_collect_s = time.perf_counter() - start
                yield batch
        finally:
            self.collector.shutdown()

    def update_policy_weights(self) -> None:
        if self.collector is not None:
            self.collector.update_policy_weights_()


def stream_loader(stream: CollectorStream) -> DataLoader:
    """A DataLoader that hands each collected TensorDict through unchanged, in the main process."""
    return DataLoader(stream, batch_size=None, collate_fn=lambda batch: batch, num_workers=0)


def make_replay_buffer(size: int, batch_size: int, device: str = "cpu") -> TensorDictReplayBuffer:
    """Uniform replay over single frames (TorchRL ``LazyTensorStorage``)."""
    return TensorDictReplayBuffer(storage=LazyTensorStorage(size, device=device), sampler=RandomSampler(),
                                  batch_size=batch_size)

"""Experience: where the module's update batches come from.

One component owns everything between the simulator and an update: collection in segments that end where
checkpoints are taken (a resumed run continues exactly), the frame and iteration counters, the latest training
return, replay insertion (frames, or whole episodes cut by an :class:`EpisodeAssembler`), when learning starts,
sampling onto the training device, policy-weight sync, and the replay's persistence in checkpoints.

    loader() ─ collected batch ─▶ observe(batch) ─▶ updates(batch) ─▶ [sampled batches on the device] ─▶ module
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer

from kpg_lightning.checkpointing import load_replay, save_replay
from kpg_lightning.data import CollectorStream, EpisodeAssembler, stream_loader, without_info
from kpg_lightning.envs.info import DONE, EPISODE_REWARD

__all__ = ["CollectorFactory", "Experience"]


class CollectorFactory(Protocol):
    def __call__(
        self, total_frames: int, init_random_frames: int, start_frames: int, rank: int, device: torch.device
    ) -> Collector:
        """A collector for one segment of ``total_frames`` frames starting at ``start_frames`` (the environment
        reseeded from that count and ``rank``, and reset), acting on ``device``."""
        ...


class Experience:
    """Collected frames in, update batches out.

    Args:
        make_collector: builds the collector of each segment (see :class:`CollectorFactory`).
        max_frames: the training budget in frames (all data-parallel ranks together).
        replay: the replay buffer (off-policy algorithms); None: each collected batch is the one update's batch.
        updates_per_batch: sampled updates per collected batch (off-policy).
        batch_size: items per sampled batch; episode replay waits until it holds that many episodes.
        learning_starts: frames collected before the first update (off-policy).
        init_random_frames: frames of uniformly random actions at the start of a run.
        segment_frames: collection restarts (reseeded) at multiples of this, where checkpoints are taken.
        episode_length: steps each replayed episode is padded to, where replay holds whole episodes.
        exclude: keys of collected frames that replay does not store.
    """

    def __init__(
        self,
        make_collector: CollectorFactory,
        max_frames: int,
        *,
        replay: ReplayBuffer | None = None,
        updates_per_batch: int = 1,
        batch_size: int = 1,
        learning_starts: int = 0,
        init_random_frames: int = 0,
        segment_frames: int | None = None,
        episode_length: int | None = None,
        exclude: tuple[Any, ...] = (),
    ):
        self.make_collector, self.max_frames, self.replay = make_collector, max_frames, replay
        self.updates_per_batch, self.batch_size, self.learning_starts = updates_per_batch, batch_size, learning_starts
        self.init_random_frames, self.exclude = init_random_frames, exclude
        self.segment_frames = segment_frames or max_frames
        self.episodes = EpisodeAssembler(episode_length) if replay is not None and episode_length else None
        self.frames = 0
        self.iterations = 0
        self.last_return: float | None = None
        self.last_collect_s = 0.0
        self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        self.stream: CollectorStream | None = None
        self._segment_start = 0

    # -- collection -------------------------------------------------------------------------------------------
    def loader(self, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> DataLoader:
        """The stream of collected batches for this rank, acting and training on ``device``."""
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
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
        return self.make_collector(
            -(-segment // world), -(-random_frames // world), self.frames, self.rank, self.device
        )

    def _segment_done(self) -> bool:
        return self.frames // self.segment_frames > self._segment_start // self.segment_frames

    @property
    def progress(self) -> float:
        """Fraction of the budget collected, in [0, 1]."""
        return min(1.0, self.frames / self.max_frames)

    @property
    def finished(self) -> bool:
        return self.frames >= self.max_frames

    def observe(self, batch: TensorDictBase) -> None:
        """Count a collected batch (the run's frames, all ranks together) and read its finished episodes' return."""
        self.last_collect_s = self.stream.last_collect_s if self.stream is not None else 0.0
        self.frames += batch.numel() * self.world_size
        self.iterations += 1
        done = batch.get(("next", DONE)).squeeze(-1)
        if done.any() and ("next", *EPISODE_REWARD) in batch.keys(True, True):
            self.last_return = float(batch.get(("next", *EPISODE_REWARD))[done].mean())

    def updates(self, batch: TensorDictBase) -> Iterator[TensorDictBase]:
        """The update batches a collected batch yields, on the training device: the batch itself (on-policy), or,
        once learning has started, ``updates_per_batch`` samples from replay after inserting it."""
        if self.replay is None:
            yield batch.to(self.device)
            return
        stored = without_info(batch)
        if self.exclude:
            stored = stored.exclude(*self.exclude)
        if self.episodes is None:
            self.replay.extend(stored.reshape(-1))
            ready = self.frames >= self.learning_starts
        else:
            episodes = self.episodes.add(stored)
            if episodes is not None:
                self.replay.extend(episodes)
            ready = self.frames >= self.learning_starts and len(self.replay) >= self.batch_size
        for _ in range(self.updates_per_batch * ready):
            yield self.replay.sample().to(self.device)

    def sync_policy(self) -> None:
        """Hand the updated policy weights to the collector."""
        if self.stream is not None:
            self.stream.update_policy_weights()

    # -- state ------------------------------------------------------------------------------------------------
    def generators(self) -> list[torch.Generator]:
        """Random generators of its own (replay sampling), saved and restored with checkpoints."""
        rng = getattr(self.replay, "_rng", None)
        return [rng] if isinstance(rng, torch.Generator) else []

    def state_dict(self) -> dict[str, int]:
        return {"frames": self.frames, "iterations": self.iterations}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.frames = state.get("frames", 0)
        self.iterations = state.get("iterations", 0)

    def save_replay(self, path: Path) -> None:
        if self.replay is not None:
            save_replay(self.replay, path)

    def load_replay(self, path: Path) -> None:
        if self.replay is not None and path.is_dir():
            load_replay(self.replay, path)

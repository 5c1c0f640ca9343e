"""Experience: where the module's update batches come from.

One component owns everything between the simulator and an update: collection in segments that end where
checkpoints are taken (a resumed run continues exactly), the frame and iteration counters, the latest training
return, replay insertion (frames, or whole episodes cut by an :class:`EpisodeAssembler`), when learning starts,
sampling onto the training device, policy-weight sync, and the replay's persistence in checkpoints.

A checkpoint taken inside a segment (a signal's) also keeps the collection where the simulator's state can be
saved (:class:`SimulatorState`, VMAS): the batch Lightning already fetched ahead, the collector's carried
tensordict and trajectory counter, the simulator's tensors and the random state. The resumed run hands that batch
back first and continues the same episodes, exactly as the uninterrupted run. Without a :class:`SimulatorState`
collection restarts (reseeded, reset) at the checkpoint's frame count.

    loader() ─ collected batch ─▶ observe(batch) ─▶ updates(batch) ─▶ [sampled batches on the device] ─▶ module
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer

from kpg_lightning.checkpointing import load_replay, load_rng, restore_rng, save_replay, save_rng
from kpg_lightning.data import CollectorStream, EpisodeAssembler, stream_loader, without_info
from kpg_lightning.envs.info import DONE, EPISODE_REWARD

__all__ = ["CollectorFactory", "Experience", "SimulatorState"]

COLLECTION = "collection"
"""Subdirectory of a rank's experience state (``replay_rank<r>/``) holding the collection of a mid-segment
checkpoint."""
RNG = "rng.json"
"""File of a rank's experience state: its Python, NumPy, torch and replay-sampling random states at the checkpoint."""


class CollectorFactory(Protocol):
    def __call__(
        self, total_frames: int, init_random_frames: int, start_frames: int, rank: int, device: torch.device
    ) -> Collector:
        """A collector for one segment of ``total_frames`` frames starting at ``start_frames`` (the environment
        reseeded from that count and ``rank``, and reset), acting on ``device``."""
        ...


class SimulatorState(Protocol):
    """The complete state of a simulator as tensors: what a checkpoint needs to continue its episodes exactly."""

    def capture(self) -> TensorDictBase: ...

    def restore(self, state: TensorDictBase) -> None: ...


class _Segment:
    """One collection segment as :class:`CollectorStream` iterates it (``iter``, ``shutdown``,
    ``update_policy_weights_``). A restored one first hands back the batch the checkpointed run had already
    collected, then calls ``build``: it restores the random state the checkpointed run had at that point and
    returns the collector of the segment's rest (None where that batch was the segment's last).
    ``total``/``random`` are the collector's frames (all/uniformly random) on this rank."""

    def __init__(self, experience: Experience, collector: Collector | None, total: int, random: int, **restored: Any):
        self.experience, self.collector, self.total, self.random = experience, collector, total, random
        self.pending: TensorDictBase | None = restored.get("pending")
        self.build = restored.get("build")
        self.collected = 0
        self.last: TensorDictBase | None = None

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self.pending is not None:
            batch, self.pending = self.pending, None
            yield self._count(batch, own=False)
        if self.collector is None and self.build is not None:
            self.collector = self.build()
        if self.collector is not None:
            for batch in self.collector:
                yield self._count(batch)

    def _count(self, batch: TensorDictBase, own: bool = True) -> TensorDictBase:
        self.last = batch
        self.collected += batch.numel() * own
        self.experience._yielded += batch.numel() * self.experience.world_size
        return batch

    def shutdown(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()

    def update_policy_weights_(self) -> None:
        if self.collector is not None:
            self.collector.update_policy_weights_()


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
        simulator: the simulator's state, where it can be saved: mid-segment checkpoints then continue exactly.
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
        simulator: SimulatorState | None = None,
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
        self.simulator = simulator
        self._segment_start = 0
        self._segment: _Segment | None = None
        self._yielded = 0  # frames handed to the trainer (all ranks); more than ``frames`` by a batch fetched ahead
        self._restored: dict[str, Any] | None = None

    # -- collection -------------------------------------------------------------------------------------------
    def loader(self, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> DataLoader:
        """The stream of collected batches for this rank, acting and training on ``device``."""
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.stream = CollectorStream(self._next_collector, self._segment_done)
        self._yielded = self.frames
        return stream_loader(self.stream)

    def _next_collector(self) -> _Segment | None:
        restored, self._restored = self._restored, None
        if restored is not None and restored["frames"] == self.frames:
            self._segment = self._restored_segment(restored)
            return self._segment
        remaining = self.max_frames - self.frames
        if remaining <= 0:
            return None
        self._segment_start = self.frames
        if self.episodes is not None:  # the new segment resets the environments: unfinished episodes never end
            self.episodes.reset()
        segment = min(remaining, self.segment_frames - self.frames % self.segment_frames)
        random_frames = min(segment, max(0, self.init_random_frames - self.frames))
        world = self.world_size  # every rank collects its share of the run's frames
        collector = self.make_collector(
            -(-segment // world), -(-random_frames // world), self.frames, self.rank, self.device
        )
        self._segment = _Segment(self, collector, collector.total_frames, collector.init_random_frames or 0)
        return self._segment

    def _restored_segment(self, state: dict[str, Any]) -> _Segment:
        """The segment a mid-segment checkpoint was taken in, continued where it stopped."""
        self._segment_start = state["segment_start"]
        if self.episodes is not None:
            self.episodes.pending = state["episodes"]

        def build() -> Collector | None:
            # the random state matters even without a collector: the loader's next iterator draws from torch's
            # (a DataLoader takes a base seed), and a run resumed mid-epoch makes one more iterator than it had
            if state["remaining"] == 0:
                restore_rng(state["rng"])
                return None
            collector = self.make_collector(
                state["remaining"], state["random_remaining"], state["segment_start"], self.rank, self.device
            )
            self.simulator.restore(state["simulator"])
            carrier = state["carrier"].to(collector.env_device or "cpu")
            if collector._carrier_has_no_device:
                carrier.clear_device_()
            collector._carrier = carrier
            collector._traj_pool.load_state_dict({"traj_id": torch.tensor(state["traj_id"], dtype=torch.int)})
            restore_rng(state["rng"])
            return collector

        return _Segment(self, None, state["remaining"], state["random_remaining"], pending=state["batch"], build=build)

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

    def state_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "iterations": self.iterations, "last_return": self.last_return}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frames = state.get("frames", 0)
        self.iterations = state.get("iterations", 0)
        self.last_return = state.get("last_return")
        self._yielded = self.frames

    def save_replay(self, path: Path) -> None:
        """This rank's experience state: the replay, this rank's random states (the Lightning checkpoint holds only
        rank 0's; ranks sample and explore with their own), and the collection of a mid-segment checkpoint."""
        if self.replay is not None:
            save_replay(self.replay, path)
        path.mkdir(parents=True, exist_ok=True)
        save_rng(path / RNG, *self.generators())
        segment = self._segment
        if self.simulator is None or segment is None or segment.last is None:
            return
        if self._yielded - self.frames != segment.last.numel() * self.world_size:
            return  # no batch fetched ahead: the segment ended here, and so does the uninterrupted run's
        remaining = segment.total - segment.collected
        if remaining > 0 and segment.collector is None:
            return
        out = path / COLLECTION
        out.mkdir(parents=True)
        segment.last.memmap(out / "batch")
        state = {"frames": self.frames, "segment_start": self._segment_start, "remaining": remaining}
        state["random_remaining"] = max(0, segment.random - segment.collected)
        if remaining > 0:
            segment.collector._carrier.memmap(out / "carrier")
            self.simulator.capture().memmap(out / "simulator")
            state["traj_id"] = int(segment.collector._traj_pool.state_dict()["traj_id"])
        pending = self.episodes.pending if self.episodes is not None else {}
        for env, pieces in pending.items():
            torch.cat(pieces).memmap(out / "episodes" / str(env))
        save_rng(out / "rng.json")
        (out / "state.json").write_text(json.dumps(state))

    def load_replay(self, path: Path) -> None:
        if self.replay is not None and path.is_dir():
            load_replay(self.replay, path)
        if (path / RNG).is_file():  # older checkpoints hold rank 0's in the Lightning checkpoint (restored already)
            restore_rng(load_rng(path / RNG), *self.generators())
        collection = path / COLLECTION
        if self.simulator is None or not (collection / "state.json").is_file():
            return

        def load(name: str) -> TensorDictBase | None:
            return TensorDict.load_memmap(collection / name).clone() if (collection / name).is_dir() else None

        state = json.loads((collection / "state.json").read_text())
        state.update(batch=load("batch"), carrier=load("carrier"), simulator=load("simulator"))
        state["rng"] = load_rng(collection / "rng.json")
        episodes = collection / "episodes"
        state["episodes"] = (
            {int(p.name): [TensorDict.load_memmap(p).clone()] for p in sorted(episodes.iterdir()) if p.is_dir()}
            if episodes.is_dir()
            else {}
        )
        self._restored = state

"""Episode assembly for episode replay: episodes across collected batches, padding, resets, overlong episodes."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from kpg_lightning.data import EpisodeAssembler


def rollout(start: int, done_at: dict[int, list[int]], envs: int = 2, steps: int = 5) -> TensorDict:
    """``[envs, steps]`` frames numbered from ``start`` with ``("next", "done")`` at the given steps per env."""
    done = torch.zeros(envs, steps, 1, dtype=torch.bool)
    for env, ts in done_at.items():
        done[env, ts] = True
    obs = torch.arange(start, start + envs * steps, dtype=torch.float32).reshape(envs, steps, 1)
    return TensorDict({"obs": obs, ("next", "done"): done}, [envs, steps])


def test_episodes_are_cut_joined_across_batches_and_padded():
    assembler = EpisodeAssembler(6)
    first = assembler.add(rollout(0, {0: [1, 4], 1: [3]}))  # env 0: 0-1, 2-4; env 1: 5-8, 9 pending
    assert first["obs"].squeeze(-1).tolist() == [[0, 1, 0, 0, 0, 0], [2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 0, 0]]
    assert first["filled"].squeeze(-1).sum(-1).tolist() == [2, 3, 4]
    second = assembler.add(rollout(10, {1: [0]}))  # env 1's episode ends at its first step: 9 then 15
    assert second["obs"].squeeze(-1).tolist() == [[9, 15, 0, 0, 0, 0]]
    assert second["filled"].squeeze(-1).tolist() == [[True, True, False, False, False, False]]
    assert second["next", "done"].squeeze(-1).tolist()[0][:2] == [False, True]


def test_reset_drops_unfinished_episodes():
    assembler = EpisodeAssembler(8)
    assert assembler.add(rollout(0, {})) is None
    assembler.reset()  # a new collection segment resets the envs: the pending halves never end
    out = assembler.add(rollout(100, {0: [2]}))
    assert out["obs"].squeeze(-1).tolist() == [[100, 101, 102, 0, 0, 0, 0, 0]]


def test_an_episode_longer_than_the_padding_is_refused():
    assembler = EpisodeAssembler(4)
    with pytest.raises(ValueError, match=r"buffer\.episode_length"):
        assembler.add(rollout(0, {}))  # 5 steps pending, no end, in 4-step episodes
    with pytest.raises(ValueError, match=r"buffer\.episode_length"):
        EpisodeAssembler(0)

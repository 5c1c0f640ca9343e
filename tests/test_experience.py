"""The experience component on a real VMAS environment and TorchRL collector: collection segments that restart at
checkpoint boundaries, the counters, learning-starts, frame and episode replay, on-policy batches, its state; and
the learning-rate schedule it drives through the module, across a checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_vmas
from torchrl.collectors import Collector

from kpg_lightning.data import make_replay_buffer
from kpg_lightning.envs.registry import make_env
from kpg_lightning.experience import Experience

pytestmark = needs_vmas

ENVS, STEPS = 4, 10  # a collected batch: 4 environments x 10 steps = 40 frames


@pytest.fixture(scope="module")
def env():
    from omegaconf import OmegaConf

    from kpg_lightning.envs.registry import VmasConfig
    from kpg_lightning.train import with_episode_returns

    return with_episode_returns(make_env(OmegaConf.structured(VmasConfig(num_envs=ENVS, max_steps=5)), seed=0))


def experience_on(env, max_frames: int, calls: list | None = None, **kwargs) -> Experience:
    def make_collector(total_frames, init_random_frames, start_frames, rank, device):
        if calls is not None:
            calls.append((total_frames, init_random_frames, start_frames, rank, device))
        env.set_seed(start_frames)
        return Collector(
            env,
            None,
            frames_per_batch=ENVS * STEPS,
            total_frames=total_frames,
            init_random_frames=init_random_frames,
            storing_device="cpu",
            policy_device=device,
        )

    return Experience(make_collector, max_frames, **kwargs)


def drain(experience: Experience, **loader_kwargs) -> list:
    """What the module does with each collected batch: observe it, then take its updates."""
    yielded = []
    for batch in experience.loader(**loader_kwargs):
        experience.observe(batch)
        yielded.append([td.batch_size for td in experience.updates(batch)])
    return yielded


def test_segments_restart_at_checkpoint_boundaries_with_rank_and_device(env):
    calls: list = []
    experience = experience_on(env, 200, calls, segment_frames=80, init_random_frames=120)
    yielded = drain(experience, rank=0, world_size=1, device="cpu")
    assert calls == [
        (80, 80, 0, 0, torch.device("cpu")),
        (80, 40, 80, 0, torch.device("cpu")),
        (40, 0, 160, 0, torch.device("cpu")),
    ]
    assert len(yielded) == 5 and experience.frames == 200 and experience.iterations == 5 and experience.finished
    assert yielded == [[(ENVS, STEPS)]] * 5  # on-policy: each collected batch is the one update's batch
    assert experience.last_return is not None  # episodes of 5 steps ended inside every batch


def test_every_rank_collects_its_share_and_counts_the_runs_frames(env):
    calls: list = []
    experience = experience_on(env, 160, calls, segment_frames=160)
    yielded = drain(experience, rank=1, world_size=2)
    assert calls[0][:4] == (80, 0, 0, 1)  # half the segment on rank 1
    assert len(yielded) == 2 and experience.frames == 160  # 2 batches x 40 frames x 2 ranks


def test_replay_updates_start_at_learning_starts(env):
    replay = make_replay_buffer(1000, 8, seed=0)
    experience = experience_on(env, 160, replay=replay, updates_per_batch=3, batch_size=8, learning_starts=80)
    yielded = drain(experience)
    assert yielded == [[], [torch.Size([8])] * 3, [torch.Size([8])] * 3, [torch.Size([8])] * 3]
    assert len(replay) == 160


def test_episode_replay_stores_whole_padded_episodes(env):
    replay = make_replay_buffer(100, 16, seed=0)
    experience = experience_on(env, 80, replay=replay, updates_per_batch=1, batch_size=16, episode_length=6)
    yielded = drain(experience)
    assert len(replay) == 16  # 4 environments x 2 episodes of 5 steps in each 10-step batch, 2 batches
    assert yielded == [[], [torch.Size([16, 6])]]  # the first 8 episodes are fewer than a batch of 16
    sample = replay.sample()
    assert sample["filled"].sum(dim=(1, 2)).tolist() == [5] * 16


def test_state_round_trip(env):
    experience = experience_on(env, 80)
    drain(experience)
    restored = experience_on(env, 80)
    restored.load_state_dict(experience.state_dict())
    assert (restored.frames, restored.iterations, restored.finished) == (80, 2, True)


def test_learning_rate_anneals_by_frames_and_resumes(tmp_path):
    """MAPPO anneals every learning rate linearly to 0 over the budget (the schedule steps before each batch's
    updates); a run resumed from its checkpoint continues the schedule, not restarts it."""
    from conftest import run_train

    run = [
        "env.num_envs=4",
        "env.max_steps=10",
        "collector.frames_per_batch=40",
        "max_frames=160",
        "algorithm=mappo",
        "kpg.k=2",
        "model.actor_hidden=[16]",
        "model.critic_hidden=[16]",
        "eval.every_frames=0",
        "eval.episodes=1",
        "eval.absolute_episodes=1",
        "checkpoint.every_frames=80",
        "checkpoint.keep_last=5",
        "trainer.enable_progress_bar=false",
        "logger.tensorboard=null",
    ]
    result = run_train(tmp_path / "full", *run)
    assert result.returncode == 0, result.stderr[-3000:]

    def actor_lr(run_dir, frames: int) -> float:
        ckpt = torch.load(run_dir / "checkpoints" / f"frames_{frames:012d}" / "model.ckpt", weights_only=False)
        return ckpt["optimizer_states"][0]["param_groups"][0]["lr"]

    initial = 4e-3  # MappoConfig's actor_lr; the last batch of 160 ran at progress 120 / 160
    assert actor_lr(tmp_path / "full", 80) == pytest.approx(initial * (1 - 40 / 160))
    assert actor_lr(tmp_path / "full", 160) == pytest.approx(initial * (1 - 120 / 160))
    checkpoint = tmp_path / "full" / "checkpoints" / "frames_000000000080"
    result = run_train(tmp_path / "resumed", *run, f"resume={checkpoint}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert actor_lr(tmp_path / "resumed", 160) == actor_lr(tmp_path / "full", 160)

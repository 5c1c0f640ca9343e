"""Where the simulator runs and where replay is stored: ``env.device`` and ``buffer.device`` are checked in one line
naming the key, ``auto`` resolves to the CPU on a machine without a GPU, and a replay that cannot fit is refused
before anything is allocated, from an estimate that matches the bytes TorchRL's storage really takes."""

from __future__ import annotations

import resource
import time

import pytest
import torch
from conftest import compose, needs_vmas
from omegaconf import OmegaConf
from torchrl.collectors import Collector

from kpg_lightning.algorithms import make_algorithm
from kpg_lightning.configure import env_device, training_device, validate
from kpg_lightning.data import EpisodeAssembler, available_bytes, replay_bytes, replay_device, without_info
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.envs.registry import make_env
from kpg_lightning.errors import ConfigError
from kpg_lightning.train import run, with_episode_returns

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    return str(info.value)


@no_gpu
@pytest.mark.parametrize("key", ["env.device", "buffer.device"])
@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_in_one_line(key, value):
    message = refusal([f"{key}={value}"])
    assert "\n" not in message and message.startswith(f"{key}='{value}' is not allowed"), message
    assert "without a CUDA GPU" in message


@no_gpu
def test_auto_resolves_to_the_cpu_here():
    for overrides in ([], ["trainer.accelerator=auto"], ["env=smax", "algorithm=qmix", "kpg.k=1"]):
        cfg = compose(overrides)
        validate(cfg)
        assert training_device(cfg.trainer) == torch.device("cpu")
        assert env_device(cfg) == torch.device("cpu")
    assert replay_device("auto", torch.device("cpu"), 1000) == torch.device("cpu")


def test_replay_larger_than_memory_is_refused_in_one_line():
    needed = 10 * available_bytes("cpu")
    with pytest.raises(ConfigError) as info:
        replay_device("cpu", torch.device("cpu"), needed)
    message = str(info.value)
    assert "\n" not in message and "buffer.size" in message and "buffer.device=cpu" in message, message
    assert f"{needed / 1e9:.3g} GB" in message and "GB available" in message


@needs_vmas
def test_run_refuses_an_oversized_replay_before_allocating(tmp_path):
    cfg = compose(["buffer.size=1000000000000", "env.num_envs=4"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, peak so far
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        run(cfg, tmp_path)
    assert time.perf_counter() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024  # nothing near the TBs it asks
    message = str(info.value)
    assert "\n" not in message and message.startswith("buffer.size is not allowed: its replay needs "), message
    assert "buffer.device=auto (cpu)" in message and not (tmp_path / "summary.json").exists()


def _collected(overrides: list[str]):
    """The training env, algorithm and one collected batch, built as ``train.run`` builds them."""
    cfg = compose(overrides)
    env = with_episode_returns(make_env(cfg.env, seed=0))
    algorithm = make_algorithm(
        OmegaConf.to_object(cfg.algorithm), EnvInfo.from_env(env), OmegaConf.to_object(cfg.model)
    )
    for transform in algorithm.env_transforms():
        env.append_transform(transform)
    per_batch = cfg.env.num_envs * cfg.env.max_steps
    collector = Collector(
        env,
        algorithm.policy(),
        frames_per_batch=per_batch,
        total_frames=per_batch,
        storing_device="cpu",
        auto_register_policy_transforms=False,
    )
    batch = next(iter(collector))
    collector.shutdown()
    return cfg, env, algorithm, batch


@needs_vmas
@pytest.mark.parametrize(
    "overrides",
    [
        ["env.num_envs=4", "env.max_steps=5"],  # MADDPG: frames
        ["algorithm=qmix", "kpg.k=1", "env.continuous_actions=false", "env.num_envs=4", "env.max_steps=5"],  # episodes
    ],
    ids=["frames", "episodes"],
)
def test_estimate_matches_the_storage_filled_with_real_frames(overrides):
    from torchrl.data import LazyTensorStorage

    cfg, env, algorithm, batch = _collected(overrides)
    exclude = tuple(algorithm.replay_exclude)
    episodic = algorithm.replay_unit == "episodes"
    stored = without_info(batch).exclude(*exclude)
    items = EpisodeAssembler(cfg.env.max_steps).add(stored) if episodic else stored.reshape(-1)
    size = 1000
    storage = LazyTensorStorage(size)
    storage.set(torch.arange(len(items)), items)
    real = sum(t.numel() * t.element_size() for t in storage._storage.values(True, True))
    state = torch.get_rng_state()
    estimate = replay_bytes(env, size, exclude, cfg.env.max_steps if episodic else None)
    assert torch.equal(torch.get_rng_state(), state)  # the zeroed frame draws no random numbers
    print(f"estimate {estimate} B, real {real} B: {estimate / real - 1:+.2%}")
    assert abs(estimate - real) <= 0.03 * real, (estimate, real)


def test_auto_follows_the_training_gpu_of_this_rank(monkeypatch):
    """On a (pretended) 4-GPU machine: the training device is this local rank's among ``trainer.devices``; VMAS
    follows it, the CPU simulators stay on the CPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = ["trainer.accelerator=gpu"]
    assert training_device(compose([*gpu, "trainer.devices=[2,3]"]).trainer) == torch.device("cuda", 3)
    assert training_device(compose([*gpu, "trainer.devices=2"]).trainer) == torch.device("cuda", 1)
    assert training_device(compose(["trainer.accelerator=cpu"]).trainer) == torch.device("cpu")
    assert env_device(compose(gpu)) == torch.device("cuda", 1)
    assert env_device(compose([*gpu, "env.device=cuda"])) == torch.device("cuda", 1)
    assert env_device(compose([*gpu, "env.device=cpu"])) == torch.device("cpu")
    assert env_device(compose([*gpu, "env=smax", "algorithm=qmix", "kpg.k=1"])) == torch.device("cpu")
    assert replay_device("cpu", torch.device("cuda", 1), 1000) == torch.device("cpu")

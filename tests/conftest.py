"""Shared fixtures: composed configs, a tiny VMAS environment, a seeded MADDPG."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as kpg_lightning does on import; must precede torch

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_VMAS = importlib.util.find_spec("vmas") is not None
needs_vmas = pytest.mark.skipif(not HAS_VMAS, reason="vmas not installed (pip install 'kpg-lightning[vmas]')")

TINY = [
    "model.actor_hidden=[32,32]",
    "model.critic_hidden=[32,32]",
    "env.num_envs=8",
    "env.max_steps=20",
    "collector.frames_per_batch=160",
    "buffer.batch_size=32",
    "buffer.updates_per_batch=2",
    "eval.episodes=2",
    "eval.absolute_episodes=2",  # one rollout (null: 10; tests/test_absolute.py runs that)
    "eval.every_frames=320",
    "checkpoint.every_frames=320",
    "trainer.enable_progress_bar=false",
    "logger.tensorboard=null",
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def compose(overrides: list[str] | None = None):
    """The run configuration as ``python -m kpg_lightning.train <overrides>`` would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from kpg_lightning.configure import register_configs

    register_configs()

    with initialize_config_module("kpg_lightning.conf", version_base=None):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=False)


def run_train(
    run_dir: Path, *overrides: str, timeout: int = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m kpg_lightning.train`` in a subprocess writing to ``run_dir`` (``env``: extra variables)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    cmd = [sys.executable, "-m", "kpg_lightning.train", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=run_dir.parent)


X86_CPU_KERNELS = ("DEFAULT", "AVX2", "AVX512")
"""torch's x86 CPU kernel widths, narrowest first (``torch.backends.cpu.get_cpu_capability()``)."""


def cpu_kernels(capability: str) -> dict[str, str]:
    """The environment that runs torch's CPU kernels at ``capability`` (what a run's ``platform.cpu_capability``
    recorded, e.g. ``"AVX512"``), for a test that re-runs it bit for bit: the last bits of float reductions depend on
    the width. Skips where this CPU cannot run that width."""
    here = torch.backends.cpu.get_cpu_capability()
    if capability not in X86_CPU_KERNELS or here not in X86_CPU_KERNELS:
        pytest.skip(f"the run's numbers are those of {capability} kernels; this CPU has {here}")
    if X86_CPU_KERNELS.index(here) < X86_CPU_KERNELS.index(capability):
        pytest.skip(f"the run's numbers are those of {capability} kernels, wider than this CPU's {here}")
    return {"ATEN_CPU_CAPABILITY": capability.lower()}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch's OpenMP threads and JAX's fight for 2 cores (10-100x slower steps): one torch thread for a module
    that runs SMAX (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smax(one_torch_thread):
    """Four SMAX 3m battles, seeded."""
    from kpg_lightning.envs.smax import make_smax_env

    return make_smax_env("3m", num_envs=4, seed=0)

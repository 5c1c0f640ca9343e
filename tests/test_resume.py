"""Never lose a run: SIGKILL mid-training and resume gives the uninterrupted run's exact parameters and replay;
corrupt or partial checkpoints are detected and the previous good one is used."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, needs_vmas, run_train
from tensordict import TensorDict

from kpg_lightning.checkpointing import find_checkpoint, verify

pytestmark = needs_vmas

RUN = [*TINY, "max_frames=1120", "checkpoint.every_frames=320", "checkpoint.keep_last=5"]


def _final_state(run_dir: Path) -> tuple[dict, dict]:
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == "frames_000000001120"
    state = torch.load(ckpt_dir / "model.ckpt", weights_only=True, map_location="cpu")
    storage = TensorDict.load_memmap(ckpt_dir / "replay_rank0" / "storage")
    writer = json.loads((ckpt_dir / "replay_rank0" / "writer" / "metadata.json").read_text())
    return state["state_dict"], {"storage": storage[: writer["write_count"]].clone(), "writer": writer}


def _kill_after_checkpoint(run_dir: Path, frames: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "kpg_lightning.train", *RUN, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=run_dir.parent)
    target = run_dir / "checkpoints" / f"frames_{frames:012d}" / "meta.json"
    deadline = time.monotonic() + 180
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run ended or timed out before its checkpoint"
    assert not (run_dir / "checkpoints" / "frames_000000001120").exists(), "killed too late to test anything"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    result = run_train(run_dir, *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return _final_state(run_dir)


def test_sigkill_then_resume_is_exact(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    _kill_after_checkpoint(killed, 320)
    resumed = run_train(tmp_path / "resumed", *RUN, f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    params, replay = _final_state(tmp_path / "resumed")
    expected_params, expected_replay = uninterrupted
    assert params.keys() == expected_params.keys()
    for name, value in expected_params.items():
        assert torch.equal(params[name], value), name
    assert replay["writer"] == expected_replay["writer"] and replay["writer"]["write_count"] == 1120
    assert (replay["storage"] == expected_replay["storage"]).all(), "replay contents differ"


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    _kill_after_checkpoint(killed, 640)
    newest = killed / "checkpoints" / "frames_000000000640"
    data = bytearray((newest / "model.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "model.ckpt").write_bytes(bytes(data))
    assert "checksum" in verify(newest)
    (killed / "checkpoints" / ".tmp_frames_000000000960").mkdir()  # a save that was interrupted
    resumed = run_train(tmp_path / "resumed", *RUN, f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "frames_000000000640 is unusable: model.ckpt does not match its checksum" in resumed.stderr
    params, _ = _final_state(tmp_path / "resumed")  # resumed from 320 frames: still the same end state
    for name, value in uninterrupted[0].items():
        assert torch.equal(params[name], value), name

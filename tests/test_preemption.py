"""Preemption: SIGTERM (a scheduler's) or SIGUSR1 (SLURM's ``--signal``) makes a run finish its update, checkpoint
the frame count reached and exit with EXIT_PREEMPTED (75); resumed, it ends with the uninterrupted run's exact
parameters and replay, the VMAS collection continuing where it stopped (the batch fetched ahead, the simulator's
state and random states were saved with the checkpoint)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, needs_vmas
from lightning.pytorch import Callback, LightningModule, Trainer
from tensordict import TensorDict

from kpg_lightning.checkpointing import find_checkpoint
from kpg_lightning.errors import EXIT_PREEMPTED, Preempted
from kpg_lightning.train import train

pytestmark = [needs_vmas, pytest.mark.usefixtures("one_torch_thread")]  # the subprocess's single thread, in-process

EVERY = 640  # the first periodic checkpoint: signals land before it, inside the first collection segment
RUN = [*TINY, "max_frames=960", f"checkpoint.every_frames={EVERY}", "checkpoint.keep_last=5"]


class SignalAt(Callback):
    """Sends ``signum`` to this process after the training batch that reaches ``frames`` (before the checkpoint
    callback, which Lightning orders last, looks at the batch)."""

    def __init__(self, frames: int, signum: str):
        self.frames, self.signum = frames, getattr(signal, signum)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if pl_module.frames == self.frames:
            os.kill(os.getpid(), self.signum)


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], TensorDict]:
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == "frames_000000000960"
    params = torch.load(ckpt_dir / "model.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    writer = json.loads((ckpt_dir / "replay_rank0" / "writer" / "metadata.json").read_text())
    storage = TensorDict.load_memmap(ckpt_dir / "replay_rank0" / "storage")[: writer["write_count"]].clone()
    return params, storage


def _assert_same(run_dir: Path, expected: tuple[dict[str, torch.Tensor], TensorDict]) -> None:
    params, storage = _final(run_dir)
    assert params.keys() == expected[0].keys()
    for name, value in expected[0].items():
        assert torch.equal(params[name], value), f"{name} differs from the uninterrupted run's"
    assert storage.shape == expected[1].shape and (storage == expected[1]).all(), "replay differs"


def _signal_checkpoint(run_dir: Path, frames: int) -> Path:
    """The run's newest checkpoint is the signal's, at ``frames``, with the collection it stopped in."""
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == f"frames_{frames:012d}" and 0 < frames < EVERY, ckpt_dir
    assert json.loads((ckpt_dir / "meta.json").read_text())["frames"] == frames
    collection = json.loads((ckpt_dir / "replay_rank0" / "collection" / "state.json").read_text())
    assert collection["frames"] == frames and collection["remaining"] > 0, collection
    assert not (run_dir / "summary.json").exists(), "a preempted run must not look finished"
    assert not list(run_dir.rglob("hpc_ckpt_*")), "Lightning's SLURM checkpoint was written"
    return ckpt_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    summary = train(RUN, run_dir)
    return _final(run_dir), summary["wall_clock_s"] / summary["iterations"]


def test_sigterm_checkpoints_the_frames_reached_exits_75_and_resumes_exactly(tmp_path, uninterrupted):
    expected, step_s = uninterrupted
    run_dir = tmp_path / "signalled"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "kpg_lightning.train", *RUN, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines, sent, saved = [], None, None
    for line in proc.stdout:  # the replay is created by the first training step: the run is training
        lines.append(line.rstrip())
        if sent is None and "Initialized LazyTensorStorage" in line:
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
        if line.startswith("preempted:"):
            saved = time.monotonic() - sent
    rc = proc.wait(timeout=120)
    exited = time.monotonic() - sent
    assert sent is not None and rc == EXIT_PREEMPTED, "\n".join(lines[-20:])
    message = lines[-1]
    assert message.startswith("preempted: stopped by a signal at "), message
    assert "Traceback" not in "\n".join(lines)
    frames = int(re.search(r"at (\d+) frames", message)[1])
    assert f"resume={run_dir}" in message
    _signal_checkpoint(run_dir, frames)
    # the step in progress and a checkpoint, then the interpreter's exit (its garbage collection: seconds)
    print(f"SIGTERM at a {step_s:.2f} s/step run: saved {saved:.2f} s, exited {exited:.2f} s later ({frames} frames)")
    assert saved < 5 + 3 * step_s and exited < 30

    train([*RUN, f"resume={run_dir}"], tmp_path / "resumed")
    _assert_same(tmp_path / "resumed", expected)


SLURM = {  # a one-task SLURM job as Lightning detects it: its SLURMEnvironment (auto_requeue) is in use
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "kpg",
    "SLURM_JOB_ID": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def test_sigusr1_is_handled_as_sigterm_and_resumes_exactly(tmp_path, uninterrupted, monkeypatch):
    for key, value in SLURM.items():  # Lightning's SLURM requeue handler would write hpc_ckpt_1.ckpt on SIGUSR1
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "signalled"
    sender = ["+callbacks.signal._target_=test_preemption.SignalAt", "+callbacks.signal.frames=320"]
    with pytest.raises(Preempted, match=r"stopped by a signal at 320 frames; checkpoint .*frames_000000000320"):
        train([*RUN, *sender, "+callbacks.signal.signum=SIGUSR1"], run_dir)
    _signal_checkpoint(run_dir, 320)
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None), "the SIGUSR1 handler was left installed"

    train([*RUN, f"resume={run_dir}"], tmp_path / "resumed")  # callbacks may change on resume
    _assert_same(tmp_path / "resumed", uninterrupted[0])


def test_a_signal_once_the_segment_is_collected_resumes_exactly(tmp_path, uninterrupted):
    """At 480 frames the batch fetched ahead is the segment's last (640): the checkpoint holds it and nothing is left
    to collect. The resumed run still restores the random state after that batch: resumed mid-epoch, its loader
    makes one iterator more than the uninterrupted run did, and a DataLoader's iterator draws a seed from torch's
    generator (the exploration noise's)."""
    run_dir = tmp_path / "signalled"
    sender = ["+callbacks.signal._target_=test_preemption.SignalAt", "+callbacks.signal.frames=480"]
    with pytest.raises(Preempted, match=r"stopped by a signal at 480 frames"):
        train([*RUN, *sender, "+callbacks.signal.signum=SIGTERM"], run_dir)
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == "frames_000000000480"
    collection = json.loads((ckpt_dir / "replay_rank0" / "collection" / "state.json").read_text())
    assert collection["remaining"] == 0, collection

    train([*RUN, f"resume={run_dir}"], tmp_path / "resumed")
    _assert_same(tmp_path / "resumed", uninterrupted[0])

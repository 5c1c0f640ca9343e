"""Quiet, useful output: a bar on a terminal; redirected to a file, a progress line every ``progress.every_s``
seconds and a last one, without Lightning's advertisements or the stack's known harmless warnings."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import needs_vmas

from kpg_lightning.callbacks import EvaluationCallback, FramesProgressBar
from kpg_lightning.callbacks.progress import progress_line

SMALL = [  # the default run, smaller and shorter: 20 training steps of 160 frames
    "model.actor_hidden=[32,32]",
    "model.critic_hidden=[32,32]",
    "env.num_envs=8",
    "env.max_steps=20",
    "collector.frames_per_batch=160",
    "buffer.batch_size=32",
    "buffer.updates_per_batch=2",
    "eval.episodes=2",
    "eval.absolute_episodes=2",
    "eval.every_frames=1600",
    "checkpoint.every_frames=1600",
    "max_frames=3200",
]
SILENCED = ("Tip:", "LeafSpec", "Warning")


def test_progress_line_says_frames_rate_returns_and_eta():
    line = progress_line(6000, 14000, 10.0, 600.0, -11.5, {"frames": 0.0, "return_mean": -9.19})
    assert line == (
        "frames 6,000/14,000 (43%) | 600 frames/s | return -11.5 | eval return -9.19 (at 0 frames) "
        "| elapsed 0:00:10 | ETA 0:00:13"
    )
    won = progress_line(500, 1000, 3725.0, 0.0, None, {"frames": 400.0, "return_mean": 12.0, "win_rate": 0.4})
    assert won == (
        "frames 500/1,000 (50%) | 0 frames/s | eval return 12, win rate 40% (at 400 frames) | elapsed 1:02:05 | ETA ?"
    )
    done = progress_line(14400, 14000, 28.0, 514.3, -10.6, {"frames": 14400.0, "return_mean": -7.8}, done=True)
    assert done == "done: 14,400 frames in 0:00:28 (514 frames/s) | return -10.6 | eval return -7.8 (at 14,400 frames)"


def test_lines_come_at_the_first_step_then_every_every_s_and_at_the_end():
    """The callback's own cadence, on a fake clock: 1 s per training step, a line every 10 s."""
    now = [100.0]
    out = io.StringIO()
    bar = FramesProgressBar(10.0, stream=out, clock=lambda: now[0])
    evaluation = EvaluationCallback(None, episodes=1, every_frames=0, max_steps=1)
    evaluation.history.append({"frames": 0.0, "return_mean": -3.0})
    trainer = SimpleNamespace(is_global_zero=True, callbacks=[evaluation, bar], current_epoch=0)
    module = SimpleNamespace(frames=0, experience=SimpleNamespace(max_frames=3000))
    bar.get_metrics = lambda *_: {"return": -2.0}
    bar.setup(trainer, module, "fit")
    assert bar.lines  # a StringIO is no terminal
    bar.on_train_start(trainer, module)
    bar.on_train_epoch_start(trainer, module)
    for step in range(1, 26):
        now[0] += 1.0
        module.frames = 100 * step
        bar.on_train_batch_end(trainer, module, None, None, step - 1)
    bar.on_train_end(trainer, module)
    lines = out.getvalue().splitlines()
    # steps 1, 11, 21 (10 s apart), then the end
    assert [line.split(" | ")[0] for line in lines] == [
        "frames 100/3,000 (3%)",
        "frames 1,100/3,000 (37%)",
        "frames 2,100/3,000 (70%)",
        "done: 2,500 frames in 0:00:25 (100 frames/s)",
    ]
    assert "100 frames/s" in lines[1] and "ETA 0:00:19" in lines[1] and "eval return -3 (at 0 frames)" in lines[1]


def test_a_terminal_keeps_the_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = FramesProgressBar(stream=Terminal())
    bar.setup(SimpleNamespace(is_global_zero=True), None, "fit")
    assert bar.lines is False and bar.is_enabled


def test_every_s_must_be_positive():
    from conftest import compose

    from kpg_lightning.configure import validate
    from kpg_lightning.errors import ConfigError

    with pytest.raises(ValueError, match="every_s"):
        FramesProgressBar(0.0)
    with pytest.raises(ConfigError, match=r"progress.every_s=0.0 is not allowed: a number > 0"):
        validate(compose(["progress.every_s=0"]))


def redirected_run(run_dir: Path, *overrides: str, timeout: int = 300) -> list[str]:
    """``python -m kpg_lightning.train`` with stdout and stderr redirected to one file, as under SLURM or nohup
    (Python's default warning filters: nothing silenced from outside); the file's lines ("\\r" ends a line too)."""
    log = run_dir.parent / "train.out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    with log.open("w") as f:
        result = subprocess.run(
            [sys.executable, "-m", "kpg_lightning.train", *overrides, f"hydra.run.dir={run_dir}"],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run_dir.parent,
            timeout=timeout,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    return text.splitlines()


def assert_quiet(lines: list[str], max_lines: int) -> None:
    assert len(lines) < max_lines, "\n".join(lines)
    noisy = [line for line in lines if any(word in line for word in SILENCED)]
    assert not noisy, noisy
    progress = [line for line in lines if line.startswith(("frames ", "done: "))]
    assert progress and progress[-1].startswith("done: ") and "eval return" in progress[-1], lines
    assert "GPU available: False" in "\n".join(lines)  # Lightning's other INFO lines stay


@needs_vmas
def test_a_redirected_run_writes_a_few_lines(tmp_path):
    lines = redirected_run(tmp_path / "run", *SMALL)
    assert_quiet(lines, 40)
    progress = [line for line in lines if line.startswith(("frames ", "done: "))]
    assert len(progress) <= 3  # the first step, at most one 30 s later on a slow machine, the end


@pytest.mark.slow
@needs_vmas
def test_the_default_run_redirected_for_14k_frames_writes_under_100_lines(tmp_path):
    """The issue's case: 14k frames of the default run into a log file wrote a bar refresh per training step."""
    lines = redirected_run(tmp_path / "run", "max_frames=14000", "eval.episodes=2")
    assert_quiet(lines, 100)

"""A NaN/inf loss stops the run cleanly (naming the loss, finite parameters checkpointed) or is skipped."""

import json

import torch
from conftest import TINY, needs_vmas, run_train

from kpg_lightning.checkpointing import find_checkpoint

pytestmark = needs_vmas

BLOW_UP = [*TINY, "max_frames=960", "algorithm.critic_lr=1e30"]  # critic weights ~1e31 after one step: Q overflows


def test_nonfinite_loss_stops_with_a_finite_checkpoint(tmp_path):
    result = run_train(tmp_path / "run", *BLOW_UP)
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "loss is not finite" in errors[0] and "frames" in errors[0], errors
    ckpt_dir, _ = find_checkpoint(tmp_path / "run")
    state = torch.load(ckpt_dir / "model.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] and summary["frames"] < 960


def test_nonfinite_updates_can_be_skipped(tmp_path):
    result = run_train(tmp_path / "run", *BLOW_UP, "on_nonfinite=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 960 and summary["skipped_updates"] > 0 and summary["stopped_by"] is None

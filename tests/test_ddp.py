"""Data parallel on 2 CPU processes (gloo): every K level's gradients are all-reduced, so both ranks hold the same
actor parameters after each level (intermediate ones included), while each rank collects different data; a signal to
one rank stops every rank at the same checkpoint, and the run resumed from it ends as the uninterrupted one."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, needs_vmas, run_train
from tensordict import TensorDict

from kpg_lightning.checkpointing import find_checkpoint
from kpg_lightning.errors import EXIT_PREEMPTED

pytestmark = needs_vmas

# checkpoints at 640 frames only (collection restarts at each one), so that a signal at 320 lands mid-segment
DDP = [*TINY, "max_frames=960", "kpg.k=2", "checkpoint.every_frames=640", "trainer.strategy=ddp", "trainer.devices=2"]


def _tests_on_path(mp: pytest.MonkeyPatch) -> None:
    """The training subprocess imports ddp_probe from the tests' folder."""
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One 960-frame K = 2 run on two ranks, probed at every level; shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        _tests_on_path(mp)
        probe = root / "probe"
        result = run_train(
            root / "run",
            *DDP,
            "+callbacks.probe._target_=ddp_probe.LevelProbe",
            f"+callbacks.probe.out={probe}",
            timeout=400,
        )
    return root, result


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[TensorDict]]:
    """The parameters and both ranks' replay rows of the run's newest checkpoint (960 frames)."""
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == "frames_000000000960"
    params = torch.load(ckpt_dir / "model.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    replays = []
    for rank in (0, 1):
        replay = ckpt_dir / f"replay_rank{rank}"
        written = json.loads((replay / "writer" / "metadata.json").read_text())["write_count"]
        replays.append(TensorDict.load_memmap(replay / "storage")[:written].clone())
    return params, replays


def test_ranks_agree_after_every_level_while_data_differ(uninterrupted):
    tmp_path, result = uninterrupted
    probe = tmp_path / "probe"
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    levels = [r["levels"] for r in ranks]
    # 960 frames over 2 ranks of 160-frame batches: 3 batches each, 2 updates per batch, 2 levels per update
    assert len(levels[0]) == len(levels[1]) == 3 * 2 * 2
    assert [lvl for _, lvl, _ in levels[0]] == [1, 2] * 6
    assert levels[0] == levels[1], "ranks diverged at some level"
    assert len({digest for _, _, digest in levels[0]}) == len(levels[0]), "levels should move the parameters"
    assert all(a != b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True)), "ranks saw same data"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 960 and ranks[0]["frames"] == ranks[1]["frames"] == 960
    # each evaluation holds both ranks' episodes (2 each); the absolute metric's 2 are split over the ranks
    assert [len(h["returns"]) for h in summary["eval_return_history"]] == [4, 4, 4, 4]
    assert summary["absolute_episodes"] == len(summary["absolute_returns"]) == 2
    assert summary["absolute_frames"] in [h["frames"] for h in summary["eval_return_history"]]
    assert (tmp_path / "run" / "policy.pt").is_file()
    ckpt = tmp_path / "run" / "checkpoints" / "frames_000000000960"
    assert (ckpt / "replay_rank0").is_dir() and (ckpt / "replay_rank1").is_dir()


@pytest.mark.parametrize("rank", [0, 1])
def test_a_signal_to_one_rank_checkpoints_every_rank_and_resumes_exactly(tmp_path, uninterrupted, monkeypatch, rank):
    """SIGTERM to one rank's process mid-run (rank 0 launched the others; rank 1 is one of them): every rank writes
    its part of one checkpoint at the frames reached and the run exits 75, without hanging (Lightning's own handler
    broadcasts from inside the signal handler, which deadlocks the ranks); resumed, it ends with the uninterrupted
    run's exact parameters and both ranks' replay."""
    _tests_on_path(monkeypatch)
    root, full = uninterrupted
    assert full.returncode == 0, full.stderr[-3000:]
    signals = [
        "+callbacks.signal._target_=ddp_probe.SignalRank",
        "+callbacks.signal.frames=320",
        f"+callbacks.signal.rank={rank}",
    ]
    run_dir = tmp_path / "signalled"
    result = run_train(run_dir, *DDP, *signals, timeout=240)
    assert result.returncode == EXIT_PREEMPTED, result.stderr[-3000:]
    assert (result.stderr + result.stdout).count("preempted: stopped by a signal at 320 frames") == 1  # rank 0's
    ckpt_dir, _ = find_checkpoint(run_dir)
    assert ckpt_dir.name == "frames_000000000320"
    assert (ckpt_dir / "replay_rank0").is_dir() and (ckpt_dir / "replay_rank1").is_dir()
    assert not (run_dir / "summary.json").exists(), "a preempted run must not look finished"

    resumed = run_train(tmp_path / "resumed", *DDP, *signals, f"resume={run_dir}", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (params, replays), (expected, expected_replays) = _final(tmp_path / "resumed"), _final(root / "run")
    assert params.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(params[name], value), f"{name} differs from the uninterrupted run's"
    for got, want in zip(replays, expected_replays, strict=True):
        assert got.shape == want.shape and (got == want).all(), "replay differs"

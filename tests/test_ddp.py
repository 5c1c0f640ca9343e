"""Data parallel on 2 CPU processes (gloo): every K level's gradients are all-reduced, so both ranks hold the same
actor parameters after each level (intermediate ones included), while each rank collects different data."""

import json
import os

from conftest import TINY, needs_vmas, run_train

pytestmark = needs_vmas


def test_ranks_agree_after_every_level_while_data_differ(tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    )
    result = run_train(
        tmp_path / "run",
        *TINY,
        "max_frames=960",
        "kpg.k=2",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "+callbacks.probe._target_=ddp_probe.LevelProbe",
        f"+callbacks.probe.out={probe}",
        timeout=400,
    )
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

"""The whole stack end to end: Hydra composition, a tiny real run, resume, and one-line errors."""

import json
import math
from pathlib import Path

import pytest
from conftest import TINY, compose, needs_vmas, run_train

CONF = Path(__file__).resolve().parents[1] / "conf"
SUMMARY_KEYS = {
    "algorithm",
    "env",
    "k",
    "frames",
    "wall_clock_s",
    "train_steps",
    "eval_return_mean",
    "eval_return_history",
    "time_per_step_s",
    "phases_s",
    "level_share",
    "kpg",
}


def test_default_run_is_k2_maddpg_on_vmas_balance():
    cfg = compose()
    assert (cfg.algorithm.name, cfg.env.scenario, cfg.kpg.k, cfg.trainer.accelerator) == ("maddpg", "balance", 2, "cpu")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(name):
    cfg = compose([f"+experiment={name}"])
    assert cfg.kpg.k == (2 if name.startswith("k2_") else 1)
    assert cfg.algorithm.name in name


def test_any_trainer_argument_is_overridable():
    cfg = compose(["trainer.max_time=00:00:10:00", "trainer.gradient_clip_val=1.0", "trainer.precision=64"])
    assert cfg.trainer.max_time == "00:00:10:00" and cfg.trainer.precision == 64


def test_overrides_are_type_checked():
    with pytest.raises(Exception, match=r"kpg\.k"):
        compose(["kpg.k=abc"])
    with pytest.raises(Exception, match=r"Could not override 'kpg\.kk'"):
        compose(["kpg.kk=1"])


@needs_vmas
def test_tiny_run_writes_summary_and_resumes(tmp_path):
    first = run_train(tmp_path / "first", *TINY, "max_frames=640")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == ("maddpg", "vmas/balance", 2, 640)
    assert summary["train_steps"] == 4 * 2  # 4 collected batches x 2 updates
    assert set(summary["phases_s"]) == {"collect", "critic", "level_1", "level_2", "rest"}
    assert len(summary["kpg"]["level_delta_mean"]) == 2 and summary["kpg"]["levels_run_mean"] == 2
    assert [h["frames"] for h in summary["eval_return_history"]] == [0, 320, 640]
    assert (tmp_path / "first" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "first" / "csv" / "metrics.csv").is_file()

    second = run_train(tmp_path / "second", *TINY, "max_frames=960", f"resume={tmp_path / 'first'}")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert resumed["frames"] == 960 and resumed["train_steps"] == 6 * 2
    assert [h["frames"] for h in resumed["eval_return_history"]] == [0, 320, 640, 960]


@needs_vmas
def test_bf16_mixed_precision_runs_end_to_end(tmp_path):
    result = run_train(tmp_path / "run", *TINY, "max_frames=320", "trainer.precision=bf16-mixed")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 320 and summary["stopped_by"] is None and summary["skipped_updates"] == 0
    assert all(math.isfinite(x) for x in (*summary["kpg"]["level_delta_mean"], *summary["kpg"]["objective_mean"]))


@pytest.mark.slow  # six process starts; tests/test_config.py checks these in-process and in real processes by default
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("kpg.k=0", "error: kpg.k=0 is not allowed: an integer >= 1"),
        ("kpg.kk=2", "error: Could not override 'kpg.kk'"),
        ("algorithm=nope", "error: In 'config': Could not find 'algorithm/nope'; Available options in 'algorithm': "),
        ("max_frames=0", "error: max_frames=0 is not allowed: a number > 0"),
        ("env.scenario=nope", "error: env.scenario: unknown VMAS scenario 'nope'; valid: "),
        ("resume=/no/such/run", "error: resume='/no/such/run' is not allowed: no such run directory or checkpoint"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, override, message):
    result = run_train(tmp_path / "run", override, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr

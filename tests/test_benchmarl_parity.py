"""The BenchMARL parity study's tooling: a BenchMARL run recorded from its logger calls becomes a run folder the report
puts in its own cell next to ours; our side's overrides compose into the matched configuration; (slow, where the
BenchMARL venv exists) the BenchMARL driver trains and writes such a folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarl_runs import EVAL_KEY, Matched, Recorder, our_overrides, summary, write_summary  # noqa: E402
from throughput import DEFAULT_VENV  # noqa: E402

from kpg_lightning.configure import validate  # noqa: E402
from kpg_lightning.report import find_runs, summarise, write_report  # noqa: E402

OURS = ROOT / "docs" / "results" / "vmas_maddpg_k1_k2" / "runs"
"""Committed K = 1 MADDPG runs on VMAS navigation (5 seeds, read only)."""


def benchmarl_log(rec: Recorder, seed: int) -> list[list[float]]:
    """Feed ``rec`` the calls a BenchMARL experiment makes of its logger over two iterations of 600 frames, each
    evaluated (20 episodes): evaluation timer, rollouts, BenchMARL's evaluation means, iteration timers."""
    evaluations = []
    for it in range(2):
        returns = [0.1 * seed + 0.5 * it + 0.01 * e for e in range(20)]
        rec.log({"timers/evaluation_time": 0.2}, step=it)
        rec.evaluation(600 * (it + 1), returns)
        mean = statistics.fmean(returns)
        rec.log(
            {"eval/agents/reward/episode_reward_mean": mean, EVAL_KEY: mean, "eval/reward/episode_len_mean": 100}, it
        )
        rec.log({"timers/iteration_time": 0.5, "counters/total_frames": 600 * (it + 1), "counters/iter": it}, it)
        evaluations.append(returns)
    return evaluations


def test_benchmarl_log_becomes_a_run_in_its_own_report_cell(tmp_path):
    """Five BenchMARL-style logs -> summary.json files (atomic, no temporary left) the report reads as the cell
    ``BENCHMARL_MADDPG K=1`` on ``vmas/navigation``, next to our ``MADDPG K=1`` runs of the same task, with the last
    evaluation's mean as the final value and the --compare pair's probability of improvement."""
    m = Matched(eval_every=600)
    finals = {}
    for seed in range(5):
        rec = Recorder()
        evaluations = benchmarl_log(rec, seed)
        data = summary(rec, seed=seed, max_frames=1200, wall_clock_s=1.0, matched=m, versions={}, torch_threads=1)
        run_dir = tmp_path / "benchmarl" / f"s{seed}"
        write_summary(run_dir, data)
        assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]
        finals[seed] = statistics.fmean(evaluations[-1])
        assert data["frames"] == 1200 and data["iterations"] == 2 and data["train_steps"] == 20
    for seed in range(5):
        shutil.copytree(OURS / f"navigation_k1_s{seed}", tmp_path / "ours" / f"s{seed}")
    runs, incomplete = find_runs(tmp_path)
    pair = ("BENCHMARL_MADDPG K=1", "MADDPG K=1")
    results = summarise(runs, incomplete, resamples=50, compare=[pair])
    groups = {g["name"]: g for g in results["groups"]}
    assert set(groups) == set(pair) and incomplete == []
    theirs = groups[pair[0]]
    assert theirs["task"] == groups[pair[1]]["task"] == "vmas/navigation"
    assert theirs["n"] == groups[pair[1]]["n"] == 5 and theirs["actor_optimizer"] == "adam"
    assert theirs["values"] == pytest.approx([finals[s] for s in range(5)])
    assert theirs["curve"]["frames"] == [600, 1200]
    improvement = {(r["name"], r["baseline"]) for r in results["aggregate"]["improvement"]}
    assert pair in improvement


def test_a_benchmarl_mean_that_is_not_the_episode_mean_is_an_error():
    """The return check: BenchMARL's logged evaluation mean must be the mean of the per-episode returns recorded from
    its rollouts (the same quantity as our eval/return_mean), else the run stops with a one-line error."""
    rec = Recorder()
    rec.evaluation(600, [1.0, 3.0])
    with pytest.raises(ValueError, match="not the mean of the recorded episode returns"):
        rec.log({EVAL_KEY: 6.0}, step=0)  # e.g. a sum over the agents instead of their mean
    rec.log({EVAL_KEY: 2.0}, step=0)
    assert rec.evaluations[-1]["benchmarl_return_mean"] == 2.0
    with pytest.raises(ValueError, match="without an evaluation"):
        Recorder().log({EVAL_KEY: 2.0}, step=0)


def test_our_overrides_compose_into_the_matched_configuration():
    """Our side's overrides are valid and set what BenchMARL's side sets: 3 agents, VMAS's horizon, one learning
    rate, the team critic, no grad clipping, evaluation every 30k frames with 20 episodes; bad budgets are named."""
    m = Matched(lr=5e-4)
    cfg = compose(our_overrides(m, 300_000))
    validate(cfg)
    assert cfg.env.scenario == "navigation" and cfg.kpg.k == 1 and cfg.max_frames == 300_000
    assert dict(cfg.env.scenario_kwargs) == {"n_agents": 3, "shared_rew": True, "max_steps": 100}
    assert (cfg.env.max_steps, cfg.env.num_envs, cfg.collector.frames_per_batch) == (100, 60, 600)
    assert (cfg.buffer.updates_per_batch, cfg.buffer.batch_size, cfg.buffer.size) == (10, 256, 1_000_000)
    assert cfg.algorithm.actor_lr == cfg.algorithm.critic_lr == 5e-4 and cfg.algorithm.critic == "team"
    assert cfg.algorithm.grad_clip is None and cfg.algorithm.noise_sigma == 0.1 and cfg.algorithm.tau == 0.005
    assert list(cfg.model.actor_hidden) == list(cfg.model.critic_hidden) == [256, 256]
    assert (cfg.eval.every_frames, cfg.eval.episodes) == (30_000, 20)
    assert m.problems(300_000) == []
    assert m.problems(310_000) == [
        "--frames 310000: a positive multiple of --eval-every (30000), so that the last evaluation is at the budget "
        "on both sides"
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEFAULT_VENV / "bin" / "python").exists(),
    reason=f"no BenchMARL venv at {DEFAULT_VENV} (python benchmarks/benchmarl_parity.py creates it)",
)
def test_benchmarl_driver_writes_a_run_the_report_reads(tmp_path):
    """BenchMARL's MADDPG trains 1200 frames on navigation and evaluates twice; the summary's per-episode returns
    agree with BenchMARL's own logged means and the run loads into its report cell."""
    run_dir = tmp_path / "s0"
    cmd = [str(DEFAULT_VENV / "bin" / "python"), str(ROOT / "benchmarks" / "benchmarl_learn.py"), "--frames", "1200"]
    cmd += ["--eval-every", "600", "--eval-episodes", "4", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((run_dir / "summary.json").read_text())
    assert data["frames"] == 1200 and [h["frames"] for h in data["eval_return_history"]] == [600, 1200]
    for h in data["eval_return_history"]:
        assert len(h["returns"]) == 4
        assert h["benchmarl_return_mean"] == pytest.approx(h["return_mean"], rel=1e-4, abs=1e-5)
    runs, _ = find_runs(tmp_path)
    assert [g["name"] for g in summarise(runs, aggregates=False)["groups"]] == ["BENCHMARL_MADDPG K=1"]


PARITY = ROOT / "docs" / "results" / "maddpg_benchmarl_parity"
PAIR = ("MADDPG K=1", "BENCHMARL_MADDPG K=1")


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("rliable") is None,
    reason="matplotlib/rliable not installed ([plots], [eval])",
)
def test_committed_parity_study_matches_its_runs(tmp_path):
    """docs/results/maddpg_benchmarl_parity: the committed tables are the report of the committed runs (with the
    study's --compare pair); both sides have seeds 0-4, each finished at 300k frames on 3-agent navigation."""
    results = write_report(PARITY / "runs", tmp_path, compare=[PAIR], marl_eval=tmp_path / "marl_eval.json")
    for name in ("final.md", "aggregate.md", "improvement.md", "marl_eval.json"):
        assert (tmp_path / name).read_text() == (PARITY / name).read_text(), name
    assert {g["name"]: g["seeds"] for g in results["groups"]} == {name: [0, 1, 2, 3, 4] for name in PAIR}
    assert results["incomplete"] == [] and results["duplicates"] == []
    for path in (PARITY / "runs").iterdir():
        summary = json.loads((path / "summary.json").read_text())
        assert summary["env"] == "vmas/navigation" and summary["frames"] == 300_000, path.name
        assert summary["eval_return_history"][-1]["frames"] == 300_000, path.name
    assert PAIR in {(r["name"], r["baseline"]) for r in results["aggregate"]["improvement"]}

"""Reports of hand-made run directories: grouping into variants and tasks, duplicates, win rates, a K = 1 mean in
the noise, actor-optimizer labels (old summaries resolved from their config), per-episode returns with the absolute
metric and their marl-eval export, the CLI's one-line error."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from report_checks import REPS, check_with_marl_eval

from kpg_lightning.report import find_runs, summarise, write_report

pytest.importorskip("rliable", reason="rliable not installed ([eval] extra)")


# -- hand-made runs ------------------------------------------------------------------------------------------------
def _fake_run(
    path: Path,
    env: str,
    k: int,
    seed: int,
    returns: list[float],
    overrides: list[str] = (),
    win_rates: list[float] | None = None,
    mtime: float | None = None,
    extra: dict | None = None,
    config: str | None = None,
) -> None:
    """A run directory as train.py writes it, evaluated at 0, 100, 200, ... frames; ``extra`` updates the summary
    (``eval_return_history`` entries by index), ``config`` is ``.hydra/config.yaml``."""
    (path / ".hydra").mkdir(parents=True)
    history = [{"frames": 100.0 * i, "return_mean": r, "return_std": 0.0} for i, r in enumerate(returns)]
    extra = dict(extra or {})
    for h, entry in zip(history, extra.pop("history", []), strict=False):
        h.update(entry)
    summary = {
        "algorithm": "maddpg",
        "env": env,
        "k": k,
        "seed": seed,
        "eval_return_mean": returns[-1],
        "eval_return_history": history,
    }
    if win_rates is not None:
        summary["eval_win_rate"] = win_rates[-1]
        (path / "csv").mkdir()
        rows = [f"{w},{100 * i}" for i, w in enumerate(win_rates)] + [",50"]  # a row of other metrics
        (path / "csv" / "metrics.csv").write_text("eval/win_rate,step\n" + "\n".join(rows) + "\n")
    (path / "summary.json").write_text(json.dumps(summary | extra))
    if config is not None:
        (path / ".hydra" / "config.yaml").write_text(config)
    (path / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [f"seed={seed}", f"kpg.k={k}", *overrides])
    )
    if mtime is not None:
        os.utime(path / "summary.json", (mtime, mtime))


def test_groups_variants_tasks_and_duplicates(tmp_path):
    exp = {1: "+experiment=maddpg_vmas_balance", 2: "+experiment=k2_maddpg_vmas_balance"}
    finals = {
        (1, 0): [1.0, 2.0, 3.0, 4.0, 100.0],
        (2, 0): [2.0, 3.0, 4.0, 5.0, 6.0],
        (1, 1): [2.0] * 5,
        (2, 1): [3.0] * 5,
    }
    for (k, lr_index), values in finals.items():
        for seed, value in enumerate(values):
            lr = ("3e-4", "1e-3")[lr_index]
            _fake_run(
                tmp_path / f"lr{lr}_k{k}_s{seed}",
                "vmas/balance",
                k,
                seed,
                [0.0, value],
                [exp[k], f"algorithm.actor_lr={lr}", "hydra/launcher=local"],
            )
    for seed in range(2):  # a second task: SMAX reports wins, so its metric is the win rate
        _fake_run(tmp_path / f"smax_k1_s{seed}", "smax/3m", 1, seed, [0.0, 5.0], win_rates=[0.0, 0.5])
        _fake_run(tmp_path / f"smax_k2_s{seed}", "smax/3m", 2, seed, [0.0, 5.0], win_rates=[0.2, 0.75])
    _fake_run(tmp_path / "smax_k2_s1_rerun", "smax/3m", 2, 1, [0.0, 5.0], win_rates=[0.2, 1.0], mtime=4e9)
    runs, incomplete = find_runs(tmp_path)
    assert len(runs) == 25 and incomplete == []
    results = summarise(runs, resamples=REPS)
    groups = {(g["task"], g["label"], g["k"]): g for g in results["groups"]}
    assert groups[("vmas/balance", "maddpg (algorithm.actor_lr=3e-4)", 2)]["name"] == (
        "MADDPG K=2 (rmsprop, algorithm.actor_lr=3e-4)"  # no config: kpg.actor_optimizer=auto
    )
    g = groups[("vmas/balance", "maddpg (algorithm.actor_lr=3e-4)", 1)]
    assert g["n"] == 5 and g["mean"] == pytest.approx(22.0) and g["iqm"] == pytest.approx(3.0)
    assert results["metric_by_task"] == {"smax/3m": "win_rate", "vmas/balance": "return"}
    smax2 = groups[("smax/3m", "maddpg", 2)]
    assert smax2["values"] == [0.75, 1.0] and smax2["curve"]["frames"] == [0.0, 100.0]
    assert smax2["curve"]["mean"] == pytest.approx([0.2, 0.875])
    assert results["duplicates"][0]["replaced_by"].endswith("smax_k2_s1_rerun")
    percent = {(r["task"], r["label"]): r["percent"] for r in results["relative"]["rows"]}
    assert percent[("vmas/balance", "maddpg (algorithm.actor_lr=3e-4)")] == pytest.approx(100 * (4 - 22) / 22)
    assert percent[("vmas/balance", "maddpg (algorithm.actor_lr=1e-3)")] == pytest.approx(50.0)
    assert percent[("smax/3m", "maddpg")] == pytest.approx(75.0)
    lr = {x: f"algorithm.actor_lr={x}" for x in ("3e-4", "1e-3")}
    assert results["relative"]["average"] == pytest.approx(
        {
            f"MADDPG K=2 (rmsprop, {lr['3e-4']}) vs MADDPG K=1 (adam, {lr['3e-4']})": 100 * (4 - 22) / 22,
            f"MADDPG K=2 (rmsprop, {lr['1e-3']}) vs MADDPG K=1 (adam, {lr['1e-3']})": 50.0,
            "MADDPG K=2 (rmsprop) vs MADDPG K=1 (adam)": 75.0,
        }
    )


def test_relative_skips_a_k1_mean_within_noise_of_zero(tmp_path):
    """A return that crosses 0 (VMAS balance) gives no percentage, only the absolute difference ± its s.e."""
    for k, values in {1: [-3.0, 1.0, 2.0], 2: [-1.0, -2.0, -3.0]}.items():
        for seed, value in enumerate(values):
            _fake_run(tmp_path / f"k{k}_s{seed}", "vmas/balance", k, seed, [0.0, value])
    results = summarise(find_runs(tmp_path)[0], resamples=REPS)
    (row,) = results["relative"]["rows"]
    se1, se2 = np.std([-3.0, 1.0, 2.0], ddof=1) / math.sqrt(3), np.std([-1.0, -2.0, -3.0], ddof=1) / math.sqrt(3)
    assert row["percent"] is None and row["note"] == "K = 1 mean within one s.e. of 0"
    assert row["diff"] == pytest.approx(-2.0 - 0.0) and row["diff_se"] == pytest.approx(math.hypot(se1, se2))
    assert results["relative"]["average"] == {}
    write_report(tmp_path, tmp_path / "report", resamples=REPS)
    relative = (tmp_path / "report" / "relative.md").read_text()
    assert "| vmas/balance | n/a |" in relative and "(K = 1 mean within one s.e. of 0)" in relative


def test_labels_show_the_actor_optimizer_whenever_cells_differ(tmp_path):
    """Same optimizer everywhere: names without it; one cell differing: every name says its optimizer, for old
    summaries resolved from .hydra/config.yaml with optim.make_actor_optimizer's rule."""
    torch = pytest.importorskip("torch")
    from kpg_lightning.optim import make_actor_optimizer
    from kpg_lightning.report_runs import resolve_actor_optimizer

    classes = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    param = [torch.nn.Parameter(torch.zeros(1))]
    for name in ("auto", "adam", "rmsprop", "sgd"):
        for k in (1, 2, 3):
            assert isinstance(make_actor_optimizer(name, k, param, 0.1), classes[resolve_actor_optimizer(name, k)])
    for k in (1, 2):
        for seed in range(2):
            _fake_run(
                tmp_path / "same" / f"k{k}_s{seed}",
                "vmas/balance",
                k,
                seed,
                [0.0, k + seed],
                extra={"actor_optimizer": "rmsprop"},
            )
    results = summarise(find_runs(tmp_path / "same")[0], resamples=REPS)
    assert [g["name"] for g in results["groups"]] == ["MADDPG K=1", "MADDPG K=2"]
    for seed in range(2):  # an older run: no actor_optimizer in its summary, kpg.actor_optimizer=auto in its config
        _fake_run(
            tmp_path / "old" / f"k2_s{seed}",
            "vmas/balance",
            2,
            seed,
            [0.0, 1.0],
            config="kpg:\n  actor_optimizer: auto\n",
        )
        _fake_run(tmp_path / "old" / f"k1_s{seed}", "vmas/balance", 1, seed, [0.0, 1.0], config="kpg:\n  k: 1\n")
    results = summarise(find_runs(tmp_path / "same", tmp_path / "old")[0], resamples=REPS)
    names = {g["name"]: g["n"] for g in results["groups"]}
    assert names == {"MADDPG K=1 (adam)": 2, "MADDPG K=1 (rmsprop)": 2, "MADDPG K=2 (rmsprop)": 2}
    assert len(results["duplicates"]) == 2  # K=2 auto is K=2 rmsprop: the same cell and seeds
    pairs = {(r["name"], r["baseline"]) for r in results["relative"]["rows"]}
    assert pairs == {("MADDPG K=2 (rmsprop)", "MADDPG K=1 (adam)"), ("MADDPG K=2 (rmsprop)", "MADDPG K=1 (rmsprop)")}
    assert {r["name"] for r in results["aggregate"]["final"]} == set(names)


def test_per_episode_returns_and_absolute_metric(tmp_path):
    """Summaries with per-episode returns/wins and the absolute metric: final.md's absolute column, rliable's
    absolute aggregate, and a marl-eval export (aligned: one run has fewer evaluations) that marl-eval loads."""
    for k in (1, 2):
        for seed in range(3):
            rets = [[0.0 + seed, 2.0], [k + seed, 4.0 + k], [2 * k + seed, 6.0]]
            extra = {
                "history": [
                    {"returns": r, "wins": [0.0, float(i > 0)], "win_rate": 0.5 * (i > 0)} for i, r in enumerate(rets)
                ],
                "absolute_metric": "win_rate",
                "absolute_frames": 100.0,
                "absolute_episodes": 4,
                "absolute_return_mean": 10.0 * k + seed,
                "absolute_returns": [10.0 * k + seed - 1, 10.0 * k + seed + 1, 10.0 * k + seed, 10.0 * k + seed],
                "absolute_win_rate": 0.25 * k,
                "absolute_wins": [1.0] * k + [0.0] * (4 - k),
                "actor_optimizer": "adam",
            }
            short = (k, seed) == (2, 2)
            returns = [float(np.mean(r)) for r in rets][: 2 if short else 3]
            wins = [0.0, 0.5, 0.5][: 2 if short else 3]
            _fake_run(tmp_path / f"k{k}_s{seed}", "smax/3m", k, seed, returns, win_rates=wins, extra=extra)
    results = write_report(tmp_path, tmp_path / "report", resamples=REPS, marl_eval=tmp_path / "me.json")
    groups = {g["k"]: g for g in results["groups"]}
    assert groups[2]["name"] == "MADDPG K=2" and groups[1]["metric"] == "win_rate"
    assert groups[2]["absolute"]["values"] == [0.5, 0.5, 0.5] and groups[2]["absolute"]["selected_by"] == ["win_rate"]
    assert "| MADDPG K=2 | 2 | adam | 3 | 0.5000 ± 0.0000 |" in (tmp_path / "report" / "final.md").read_text()
    assert "| 0.5000 ± 0.0000 | none |" in (tmp_path / "report" / "final.md").read_text()
    absolute = {r["name"]: r for r in results["aggregate"]["absolute"]}
    assert absolute["MADDPG K=1"]["iqm"] == pytest.approx(0.25) and absolute["MADDPG K=2"]["iqm"] == pytest.approx(0.5)
    assert results["aggregate"]["normalisation"]["smax/3m"]["reference"] == "win rate, not rescaled"
    assert results["marl_eval_notes"] == ["smax: runs cut to their first 2 evaluations (the shortest run's)"]
    raw = json.loads((tmp_path / "me.json").read_text())
    run = raw["smax"]["3m"]["maddpg k=2"]["seed_1"]
    assert list(run) == ["step_0", "step_1", "absolute_metrics"]
    assert run["step_1"] == {"step_count": 100, "return": [3.0, 6.0], "win_rate": [0.5]}
    assert run["absolute_metrics"] == {"return": [20.0, 22.0, 21.0, 21.0], "win_rate": [0.5]}
    _, final, curves = check_with_marl_eval(tmp_path / "me.json", ["return", "win_rate"])
    assert final["mean_win_rate"]["maddpg k=2"].tolist() == [[0.5]] * 3
    assert curves["mean_win_rate"]["maddpg k=1"].shape == (3, 1, 2)


def test_cli_without_runs_is_one_line(tmp_path):
    from kpg_lightning.report import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 1


def test_cli_without_rliable_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    from kpg_lightning.report import main

    _fake_run(tmp_path / "k1_s0", "vmas/balance", 1, 0, [0.0, 1.0])
    monkeypatch.setitem(sys.modules, "rliable", None)  # import rliable fails as if not installed
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the report's statistics need rliable") and "kpg-lightning[eval]" in err
    assert len(err.splitlines()) == 1

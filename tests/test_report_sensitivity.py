"""``report --axis`` on hand-made run directories: lines by (task, variant without the axis key, K, optimizer) and
points by the key's value, means and standard errors, the late-half mean of a csv/metrics.csv column (NaN skipped,
runs and lines without it listed), the PNG, the CLI's one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from report_checks import REPS
from test_report_runs import _fake_run

from kpg_lightning.report import main, write_report
from kpg_lightning.report_tables import fmt

pytest.importorskip("matplotlib", reason="matplotlib not installed ([plots] extra)")

KEY = "algorithm.actor_lr"
NAN = float("nan")


def _lr_run(
    path: Path,
    task: str,
    k: int,
    seed: int,
    lr: str,
    final: float,
    contraction: list[float] | None,
    absolute: float | None = None,
    **kw,
) -> None:
    """A MADDPG run at ``algorithm.actor_lr=lr`` with Adam, its csv/metrics.csv as Lightning's CSVLogger writes it
    (kpg diagnostics and evaluations in rows of their own, at frames 100, 200, ...); ``contraction`` None: the
    run logs no ``kpg/contraction_2`` (K = 1); ``absolute``: its absolute metric (a return), if any."""
    extra = {"actor_optimizer": "adam"}
    if absolute is not None:
        extra |= {"absolute_return_mean": absolute, "absolute_frames": 100, "absolute_episodes": 10}
    _fake_run(
        path,
        task,
        k,
        seed,
        [0.0, final],
        ["+experiment=maddpg_vmas_balance", f"{KEY}={lr}", "kpg.actor_optimizer=adam"],
        extra=extra,
        config=f"algorithm:\n  name: maddpg\n  actor_lr: {float(lr)!r}\nkpg:\n  k: {k}\n  actor_optimizer: adam\n",
        **kw,
    )
    (path / "csv").mkdir()
    columns = ["eval/return_mean", "kpg/level_delta_1", *(["kpg/contraction_2"] if contraction else []), "step"]
    rows = []
    for i, c in enumerate(contraction or [0.0] * 4, start=1):
        rows.append(["", "0.5", *([] if contraction is None else [repr(c)]), str(100 * i)])
        rows.append([str(final), "", *([] if contraction is None else [""]), str(100 * i)])
    (path / "csv" / "metrics.csv").write_text("\n".join(",".join(r) for r in [columns, *rows]) + "\n")


def _se(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) / math.sqrt(len(values))


def test_lines_points_and_late_half_metric(tmp_path):
    lrs = ("1e-4", "1e-3", "1e-2")
    finals, late = {}, {}
    for k in (1, 2):
        for i, lr in enumerate(lrs):
            for seed in range(3):
                finals[(k, lr, seed)] = final = 10.0 * k + i + 0.5 * seed**2
                contraction = None
                if k == 2:  # 5 logged values: the late half is the last 3, NaN skipped
                    contraction = [0.9, 0.8, 0.1 * (i + 1), NAN if seed == 1 else 0.5, 0.2 * (seed + 1)]
                    late[(lr, seed)] = float(np.nanmean(contraction[2:]))
                _lr_run(tmp_path / f"k{k}_lr{lr}_s{seed}", "vmas/balance", k, seed, lr, final, contraction)
    unlogged = tmp_path / "k2_lr1e-3_s3"  # a K = 2 run without the column: listed, not averaged
    _lr_run(unlogged, "vmas/balance", 2, 3, "1e-3", 12.0, None)
    _lr_run(tmp_path / "k1_lr1e-2_s0_rerun", "vmas/balance", 1, 0, "1e-2", 30.0, None, mtime=4e9)  # replaces seed 0
    finals[(1, "1e-2", 0)] = 30.0
    for lr in ("1e-3", "2e-3"):  # another task, values within 4x: a linear axis
        _lr_run(tmp_path / f"nav_lr{lr}", "vmas/navigation", 2, 0, lr, float(lr) * 1e3, [0.3, 0.4])

    results = write_report(tmp_path, tmp_path / "report", resamples=REPS, axis=KEY, axis_metrics=["kpg/contraction_2"])
    sens = json.loads((tmp_path / "report" / "results.json").read_text())["sensitivity"]
    assert sens == json.loads(json.dumps(results["sensitivity"]))
    balance, navigation = sens["tasks"]["vmas/balance"], sens["tasks"]["vmas/navigation"]
    assert (balance["log_x"], navigation["log_x"]) == (True, False)
    assert [line["name"] for line in balance["lines"]] == ["MADDPG K=1", "MADDPG K=2"]  # the lr does not split lines
    k1, k2 = balance["lines"]
    assert (k1["has_metric"], k2["has_metric"]) == ({"kpg/contraction_2": False}, {"kpg/contraction_2": True})
    for line in (k1, k2):
        assert [p["value"] for p in line["points"]] == [1e-4, 1e-3, 1e-2]
        for p, lr in zip(line["points"], lrs, strict=True):
            values = [finals[(line["k"], lr, s)] for s in range(3)] + ([12.0] if (line["k"], lr) == (2, "1e-3") else [])
            assert p["final"]["values"] == values and p["final"]["n"] == len(values)
            assert p["final"]["mean"] == pytest.approx(np.mean(values)) and p["final"]["se"] == pytest.approx(
                _se(values)
            )
    assert sens["duplicates"] == [
        {"path": str(tmp_path / "k1_lr1e-2_s0"), "replaced_by": str(tmp_path / "k1_lr1e-2_s0_rerun")}
    ]
    for p, lr in zip(k2["points"], lrs, strict=True):
        c = p["metrics"]["kpg/contraction_2"]
        assert c["values"] == pytest.approx([late[(lr, s)] for s in range(3)])
        assert c["mean"] == pytest.approx(np.mean(c["values"])) and c["se"] == pytest.approx(_se(c["values"]))
        assert c["missing"] == ([{"path": str(unlogged), "reason": "not logged"}] if lr == "1e-3" else [])
    assert late[("1e-2", 1)] == pytest.approx((0.3 + 0.4) / 2)  # the NaN left out
    assert navigation["lines"][0]["points"][1]["metrics"]["kpg/contraction_2"]["values"] == [0.4]

    table = (tmp_path / "report" / "sensitivity.md").read_text()
    p = k2["points"][1]
    assert f"| {KEY} | MADDPG K=1 | MADDPG K=2 |" in table and f"| {KEY} | MADDPG K=2 |" in table
    assert f"| 0.001 | {fmt(k1['points'][1]['final']['mean'])} ± " in table
    c = p["metrics"]["kpg/contraction_2"]
    assert f"| 0.001 | {fmt(c['mean'])} ± {fmt(c['se'], c['mean'])} (3) |" in table
    assert (
        "Without `kpg/contraction_2` (not in the means above):\n\n"
        "- MADDPG K=1: none of its 9 runs logs it (not logged: 9)"
        in table
        and f"- `{unlogged}`: not logged" in table
    )
    assert "last half" in table
    from matplotlib.image import imread

    for task in ("vmas-balance", "vmas-navigation"):
        png = tmp_path / "report" / f"sensitivity_{task}.png"
        assert str(png) in results["files"]
        image = imread(png)  # decodes: two panels side by side
        assert image.ndim == 3 and image.shape[1] > image.shape[0] > 300


def test_axis_errors_are_one_line(tmp_path, capsys):
    _lr_run(tmp_path / "ok", "vmas/balance", 2, 0, "1e-3", 1.0, [0.5])
    bad = tmp_path / "bad"
    _lr_run(bad, "vmas/balance", 2, 1, "1e-3", 1.0, [0.5])
    (bad / ".hydra" / "config.yaml").write_text("algorithm:\n  name: maddpg\n")
    out = tmp_path / "out"
    for config, says in (
        ("algorithm:\n  name: maddpg\n", f"error: --axis {KEY}: run {bad} has no such key in .hydra/config.yaml"),
        ("algorithm:\n  actor_lr: fast\n", f"error: --axis {KEY}: run {bad}: 'fast' is not a number"),
        ("algorithm:\n  actor_lr: true\n", f"error: --axis {KEY}: run {bad}: True is not a number"),
    ):
        (bad / ".hydra" / "config.yaml").write_text(config)
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path), "--out", str(out), f"--resamples={REPS}", "--axis", KEY])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and err.startswith(says) and len(err.strip().splitlines()) == 1, err
        assert not out.exists()  # nothing written
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--axis-metric", "kpg/contraction_2"])
    assert exc.value.code == 2 and "error: --axis-metric needs --axis KEY" in capsys.readouterr().err


THRESHOLD = ["--axis-threshold", "vmas/balance=0"]


def test_axis_threshold_counts_runs_above_with_exact_ci_and_fisher_against_k1(tmp_path):
    """--axis-threshold TASK=VALUE: per point the runs whose final metric exceeds VALUE (not equal to it), the
    Clopper–Pearson CI and, at K > 1, Fisher's exact p against K = 1 at the same value, equal to scipy's by hand;
    a task without a threshold gets no counts; the table in sensitivity.md."""
    stats = pytest.importorskip("scipy.stats")
    finals = {  # (k, lr) -> final per seed: at 1e-2 K = 1 trains 4 of 5, K = 2 1 of 5 (0.0 is not above 0)
        (1, "1e-3"): [3.0, 2.5, 4.0, 3.5, 3.2],
        (2, "1e-3"): [3.1, 2.0, 4.2, 3.0, 3.3],
        (1, "1e-2"): [2.0, -16.0, 3.0, 2.5, 1.0],
        (2, "1e-2"): [0.0, -16.0, -15.0, 2.8, -17.0],
    }
    for (k, lr), values in finals.items():
        for seed, final in enumerate(values):
            _lr_run(
                tmp_path / "runs" / f"b_{k}_{lr}_{seed}", "vmas/balance", k, seed, lr, final, [0.1] if k > 1 else None
            )
    _lr_run(tmp_path / "runs" / "n", "vmas/navigation", 1, 0, "1e-3", 5.0, None)
    out = tmp_path / "out"
    main([str(tmp_path / "runs"), "--out", str(out), f"--resamples={REPS}", "--axis", KEY, *THRESHOLD])
    sens = json.loads((out / "results.json").read_text())["sensitivity"]
    entry = sens["tasks"]["vmas/balance"]
    assert entry["threshold"] == 0.0 and "threshold" not in sens["tasks"]["vmas/navigation"]
    assert all("above" not in p for line in sens["tasks"]["vmas/navigation"]["lines"] for p in line["points"])
    lines = {line["k"]: {p["value"]: p["above"] for p in line["points"]} for line in entry["lines"]}
    for (k, lr), values in finals.items():
        above = lines[k][float(lr)]
        count = sum(v > 0 for v in values)
        ci = stats.binomtest(count, 5).proportion_ci(0.95, method="exact")
        assert (above["count"], above["n"]) == (count, 5)
        assert above["ci"] == pytest.approx([ci.low, ci.high])
        if k == 1:
            assert "fisher_p_vs_k1" not in above
        else:
            base = sum(v > 0 for v in finals[1, lr])
            p = stats.fisher_exact([[count, 5 - count], [base, 5 - base]]).pvalue
            assert above["fisher_p_vs_k1"] == pytest.approx(p)
    assert (lines[1][0.01]["count"], lines[2][0.01]["count"]) == (4, 1)
    assert lines[2][0.01]["fisher_p_vs_k1"] == pytest.approx(0.2063, abs=1e-4)
    text = (out / "sensitivity.md").read_text()
    assert "## vmas/balance: runs whose final greedy evaluation return exceeds 0" in text
    assert "| 0.01 | 4 of 5 [0.28, 0.99] | 1 of 5 [0.01, 0.72], p = 0.21 |" in text
    assert "## vmas/navigation: runs whose" not in text


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("vmas/balance", "--axis-threshold 'vmas/balance': expected TASK=VALUE, e.g. vmas/navigation=0"),
        ("smax/3m=0.5", "--axis-threshold 'smax/3m=0.5': no run of task 'smax/3m'; the tasks are vmas/balance"),
        ("vmas/balance=high", "--axis-threshold 'vmas/balance=high': 'high' is not a finite number"),
        ("vmas/balance=nan", "--axis-threshold 'vmas/balance=nan': 'nan' is not a finite number"),
    ],
)
def test_axis_threshold_errors_are_one_line(tmp_path, capsys, item, says):
    _lr_run(tmp_path / "runs" / "a", "vmas/balance", 1, 0, "1e-3", 1.0, None)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [str(tmp_path / "runs"), "--out", str(out), f"--resamples={REPS}", "--axis", KEY, "--axis-threshold", item]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err == f"error: {says}\n" and not out.exists(), err


def test_axis_threshold_twice_or_without_axis(tmp_path, capsys):
    _lr_run(tmp_path / "runs" / "a", "vmas/balance", 1, 0, "1e-3", 1.0, None)
    args = [str(tmp_path / "runs"), "--out", str(tmp_path / "out"), f"--resamples={REPS}"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--axis", KEY, "--axis-threshold", "vmas/balance=0", "--axis-threshold", "vmas/balance=1"])
    assert exc.value.code == 1 and "vmas/balance given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--axis-threshold", "vmas/balance=0"])
    assert exc.value.code == 2 and "error: --axis-threshold needs --axis KEY" in capsys.readouterr().err


def _p(x: list[float], y: list[float]) -> float:
    """P(a run of x > a run of y), ties half, by counting pairs."""
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y) / (len(x) * len(y))


def test_pooled_probability_of_improvement_over_every_value(tmp_path):
    """Each K > 1 line against the K = 1 line over every value both have: per task the mean over values of the
    pairwise P(K > 1 run > K = 1 run), over all (task, value) settings the mean over settings; a value only one line
    has is left out; the absolute metric only where every run compared has one; the CI brackets the point and is
    seeded (the same twice); a setting with one run of a line is flagged in the table."""
    finals = {  # (task, k, lr) -> final per seed
        ("vmas/balance", 1, "1e-3"): [3.0, 2.5, 4.0],
        ("vmas/balance", 2, "1e-3"): [3.1, 2.0, 4.2],
        ("vmas/balance", 1, "1e-2"): [2.0, -16.0, 3.0],
        ("vmas/balance", 2, "1e-2"): [-15.0, -16.0, 2.8],
        ("vmas/balance", 2, "3e-2"): [9.0, 9.0, 9.0],  # no K = 1 at 3e-2: not compared
        ("vmas/navigation", 1, "1e-3"): [1.0, 1.5],
        ("vmas/navigation", 2, "1e-3"): [2.0, 1.5],
        ("vmas/navigation", 1, "1e-2"): [0.5],
        ("vmas/navigation", 2, "1e-2"): [0.25],
    }
    for (task, k, lr), values in finals.items():
        for seed, final in enumerate(values):
            name = f"{task.split('/')[1]}_{k}_{lr}_{seed}"
            absolute = None if (task, k, lr, seed) == ("vmas/navigation", 1, "1e-2", 0) else final + 1.0
            _lr_run(tmp_path / "runs" / name, task, k, seed, lr, final, [0.1] if k > 1 else None, absolute)
    for out in ("out", "again"):
        main([str(tmp_path / "runs"), "--out", str(tmp_path / out), f"--resamples={REPS}", "--axis", KEY])
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["sensitivity"]["pooled"]
    assert (row["name"], row["baseline"], row["tasks"]) == (
        "MADDPG K=2",
        "MADDPG K=1",
        ["vmas/balance", "vmas/navigation"],
    )
    per = {
        (t, lr): _p(finals[t, 2, lr], finals[t, 1, lr])
        for t in ("vmas/balance", "vmas/navigation")
        for lr in ("1e-3", "1e-2")
    }
    balance = (per["vmas/balance", "1e-3"] + per["vmas/balance", "1e-2"]) / 2
    navigation = (per["vmas/navigation", "1e-3"] + per["vmas/navigation", "1e-2"]) / 2
    final = row["final"]
    assert final["vmas/balance"]["p"] == pytest.approx(balance)
    assert final["vmas/navigation"]["p"] == pytest.approx(navigation)
    assert final["all tasks"]["p"] == pytest.approx(sum(per.values()) / 4)
    assert (final["all tasks"]["settings"], final["all tasks"]["runs"]) == (4, [9, 9])
    assert (final["vmas/balance"]["single_run_settings"], final["vmas/navigation"]["single_run_settings"]) == (0, 1)
    for est in final.values():
        assert est["ci"][0] <= est["p"] <= est["ci"][1] and 0.0 <= est["ci"][0] < est["ci"][1] <= 1.0
    # navigation's 1e-2 K = 1 run has no absolute metric: navigation and all tasks have none; balance has one
    absolute = row["absolute"]
    assert absolute["vmas/navigation"] is None and absolute["all tasks"] is None
    assert absolute["vmas/balance"]["p"] == pytest.approx(balance)  # finals + 1: the same ordering
    again = json.loads((tmp_path / "again" / "results.json").read_text())["sensitivity"]["pooled"]
    assert again == [row]
    text = (tmp_path / "out" / "sensitivity.md").read_text()
    assert f"## K > 1 against K = 1 over every {KEY}" in text
    ci = final["vmas/navigation"]["ci"]
    assert f"| {navigation:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] (2; 3 / 3)† |" in text
    assert "†: at some of its settings a line has a single run" in text


def test_no_pooled_comparison_without_k1(tmp_path):
    """Lines without a K = 1 line of their variant and optimizer are not pooled, and the section is left out."""
    for seed in range(2):
        _lr_run(tmp_path / "runs" / f"r{seed}", "vmas/balance", 2, seed, "1e-3", float(seed), [0.1])
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), f"--resamples={REPS}", "--axis", KEY])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["sensitivity"]["pooled"] == []
    assert "over every" not in (tmp_path / "out" / "sensitivity.md").read_text()

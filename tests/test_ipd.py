"""The iterated prisoner's dilemma (kpg_lightning.ipd): exact values, naive learners defect, POLA reciprocates, the
K-level naive learners run, and the CLI writes ipd.json / ipd.png or one line of error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kpg_lightning.errors import ConfigError
from kpg_lightning.ipd import DEFAULTS, STATES, main, parse, train, values

ROOT = Path(__file__).resolve().parents[1]
GAMMA = 0.96
C, D = 30.0, -30.0  # logits of (almost) sure cooperation / defection
ALL_C = torch.tensor([C] * 5, dtype=torch.float64)
ALL_D = torch.tensor([D] * 5, dtype=torch.float64)
TFT = torch.tensor([C, C, D, C, D], dtype=torch.float64)  # start, CC, CD, DC, DD: copy the other's last move
CC, CD, DD = STATES.index("CC"), STATES.index("CD"), STATES.index("DD")


@pytest.mark.parametrize(
    ("theta1", "theta2", "expected"),
    [
        (ALL_C, ALL_C, (-1 / (1 - GAMMA), -1 / (1 - GAMMA))),
        (ALL_D, ALL_D, (-2 / (1 - GAMMA), -2 / (1 - GAMMA))),
        (TFT, ALL_D, (-3 - 2 * GAMMA / (1 - GAMMA), 0 - 2 * GAMMA / (1 - GAMMA))),
        (ALL_D, TFT, (0 - 2 * GAMMA / (1 - GAMMA), -3 - 2 * GAMMA / (1 - GAMMA))),  # agent 2 sees CD as its DC
        (TFT, TFT, (-1 / (1 - GAMMA), -1 / (1 - GAMMA))),
        (ALL_C, ALL_D, (-3 / (1 - GAMMA), 0.0)),
    ],
)
def test_values_closed_form(theta1, theta2, expected):
    assert values(theta1, theta2, GAMMA).tolist() == pytest.approx(expected, abs=1e-9)


def test_naive_learners_defect():
    result = train({"algorithm": "naive"}, seeds=[0, 1, 2])
    final = result["history"][-1]  # (seeds, agents, states)
    assert (final[..., CC] < 0.2).all(), final[..., CC]


def test_pola_reciprocates():
    """Across five seeds both agents cooperate after CC and defect after DD; after being exploited (own C, other D)
    they defect in four of the five: the CD state stops being visited once both reciprocate, so its probability
    stays where the early updates left it (seed 2's agent 1: 0.98 with the defaults)."""
    result = train({"algorithm": "pola"}, seeds=[0, 1, 2, 3, 4])
    final = result["history"][-1]
    assert (final[..., CC] > 0.8).all(), final[..., CC]
    assert (final[..., DD] < 0.5).all(), final[..., DD]
    punishes = (final[..., CD] < 0.5).all(dim=-1)
    assert int(punishes.sum()) >= 4, final[..., CD]
    assert (result["values"] > -26).all()  # ≈ mutual cooperation, −1/(1 − γ) = −25


def test_k_level_naive_runs_and_differs_from_k1():
    k1 = train({"algorithm": "kpg", "k": 1, "updates": 60}, seeds=[0, 1, 2])["history"][-1]
    naive = train({"algorithm": "naive", "updates": 60}, seeds=[0, 1, 2])["history"][-1]
    k2 = train({"algorithm": "kpg", "k": 2, "updates": 60}, seeds=[0, 1, 2])["history"][-1]
    assert torch.equal(k1, naive)  # K = 1 is the naive learner, bit for bit
    assert (k2 - k1).abs().max() > 0.1
    assert (k2[..., DD] < 0.05).all()  # both still defect after mutual defection


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm=lola", "algorithm must be one of naive, kpg, pola"),
        ("k=2", "k must be 1 with algorithm=pola"),
        ("gamma=1.0", "gamma must be a number in (0, 1)"),
        ("beta_out=-1", "beta_out must be a finite number >= 0"),
        ("updates=0", "updates must be an integer >= 1"),
        ("lrr=1", "lrr is not a setting of the IPD"),
        ("lr", "lr is not allowed: arguments are key=value"),
    ],
)
def test_bad_input_is_one_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        parse([override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_main_writes_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["algorithm=kpg", "k=2", "seed=1", "updates=5", f"out={tmp_path}"]) == 0
    report = json.loads((tmp_path / "ipd.json").read_text())
    assert report["algorithm"] == "kpg" and report["k"] == 2 and report["seed"] == 1
    assert set(report["final"]) == {"agent_1", "agent_2"}
    assert all(list(agent) == list(STATES) for agent in report["final"].values())
    assert len(report["history"]["agent_1"]) == 6
    expected = train({**DEFAULTS, "algorithm": "kpg", "k": 2, "seed": 1, "updates": 5})["history"][-1, 0]
    assert [report["final"][f"agent_{i + 1}"]["CC"] for i in range(2)] == expected[:, CC].tolist()
    assert (tmp_path / "ipd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ipd")]
    assert main(["algorithm=naive", "k=3", f"out={tmp_path / 'bad'}"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "bad").exists()


def test_module_cli_bad_input(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "kpg_lightning.ipd", "algorithm=pola", "seed=-1", f"out={tmp_path}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: seed must be an integer >= 0, got -1"
    assert not (tmp_path / "ipd.json").exists()

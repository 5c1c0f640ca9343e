"""The Meet-up game runs the paper's recursion through the K-level engine (App. B, Theorem 4.2, Fig. 2–3)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kpg_lightning.errors import ConfigError
from kpg_lightning.meetup import (
    GRAD_MAX,
    NASH,
    distance_to_nash,
    lipschitz_constant,
    one_update,
    policy_gradient,
    returns,
    theorem_bound,
    trajectory,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_THETA = [0.0, math.pi / 2]


# -- an independent closed form (plain math, no torch, no engine) -------------------------------------------
def _ref_grad(i: int, theta_i: float, theta_other: float) -> float:
    """∇_θi J_i = (−sin θ_i, cos θ_i) · unit(ι_−i + a_−i − ι_i) with ι₁ = (0, 0), ι₂ = (3, 2)."""
    sign = 1.0 if i == 0 else -1.0  # ι_−i − ι_i = ±(3, 2)
    x, y = sign * 3.0 + math.cos(theta_other), sign * 2.0 + math.sin(theta_other)
    return (-math.sin(theta_i) * x + math.cos(theta_i) * y) / math.hypot(x, y)


def _ref_levels(theta: list[float], k: int, eta: float) -> list[tuple[float, float]]:
    """θ⁽ᵏ⁾ = θ + η ∇J(θ, θ⁽ᵏ⁻¹⁾), always from the same θ (Algorithm 1)."""
    levels = [(theta[0], theta[1])]
    for _ in range(k):
        prev = levels[-1]
        levels.append(
            (theta[0] + eta * _ref_grad(0, theta[0], prev[1]), theta[1] + eta * _ref_grad(1, theta[1], prev[0]))
        )
    return levels


def _flat(pairs) -> list[float]:
    return [x for pair in pairs for x in pair]


def _random_thetas(n: int, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.uniform(-math.pi, math.pi), rng.uniform(-math.pi, math.pi)] for _ in range(n)]


# -- the game -----------------------------------------------------------------------------------------------
def test_closed_form_gradient_is_autograd_of_j():
    theta = torch.tensor(_random_thetas(64), dtype=torch.float64)
    others = torch.tensor(_random_thetas(64, seed=1), dtype=torch.float64)
    live = theta.clone().requires_grad_(True)
    autograd = torch.autograd.grad(returns(live, others).sum(), live)[0]
    torch.testing.assert_close(policy_gradient(theta, others), autograd, rtol=0, atol=1e-12)
    pairs = zip(theta.tolist(), others.tolist(), strict=True)
    ref = [[_ref_grad(0, t[0], o[1]), _ref_grad(1, t[1], o[0])] for t, o in pairs]
    torch.testing.assert_close(
        policy_gradient(theta, others), torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert torch.all(returns(theta, others) <= 1e-12)


def test_nash_heads_straight_at_the_other():
    phi = math.atan2(2.0, 3.0)
    assert NASH == pytest.approx((phi, phi + math.pi))
    nash = torch.tensor(NASH, dtype=torch.float64)
    torch.testing.assert_close(returns(nash), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(policy_gradient(nash), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert distance_to_nash([NASH[0] + 2 * math.pi, NASH[1] - 4 * math.pi]) == pytest.approx(0.0, abs=1e-12)
    assert distance_to_nash(PAPER_THETA) == pytest.approx(math.hypot(phi, phi + math.pi / 2))


def test_lipschitz_constant_and_grad_max_on_a_grid():
    """L = 1/(√13 − 1): a dense grid's max |∂g_i/∂θ_−i| reaches it and never exceeds it; same for ∇max = 1."""
    lip = lipschitz_constant()
    assert lip == pytest.approx(1.0 / (math.sqrt(13.0) - 1.0))
    grid = torch.linspace(-math.pi, math.pi, 721, dtype=torch.float64)
    t_self, t_other = torch.meshgrid(grid, grid, indexing="ij")
    theta = torch.stack([t_self, t_self], -1).reshape(-1, 2)
    others = torch.stack([t_other, t_other], -1).reshape(-1, 2).requires_grad_(True)
    g = policy_gradient(theta, others)
    # g_i depends on others[-i] only, so d(Σ g)/d others[:, j] = ∂g_{-j}/∂θ_j
    cross = torch.autograd.grad(g.sum(), others)[0].abs()
    g = g.detach()
    assert float(cross.max()) <= lip * (1 + 1e-12)
    assert float(cross.max()) >= lip * (1 - 1e-4)
    assert float(g.abs().max()) <= GRAD_MAX + 1e-12
    assert float(g.abs().max()) >= GRAD_MAX - 1e-4


# -- the recursion through the engine -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("eta", [0.1, 0.5, 2.0])
def test_levels_match_independent_recursion(k, eta):
    for theta in [PAPER_THETA, *_random_thetas(3, seed=k)]:
        update = one_update(theta, k, eta)
        ref = _ref_levels(theta, k, eta)
        assert len(update.levels) == k + 1 and update.stats.levels_run == k
        for got, want in zip(update.levels, ref, strict=True):
            assert got == pytest.approx(want, abs=1e-9, rel=0)
        deltas = [math.dist(ref[j + 1], ref[j]) for j in range(k)]
        assert update.level_deltas == pytest.approx(deltas, abs=1e-9, rel=0)


@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0, 2.0, 2.5])
def test_levels_contract_geometrically_within_theorem_bound(eta):
    lip, n = lipschitz_constant(), 2
    assert eta < 1.0 / (lip * (n - 1))
    rate = eta * lip * (n - 1)
    for theta in [PAPER_THETA, *_random_thetas(10, seed=7)]:
        update = one_update(theta, 12, eta)
        deltas, bound = update.level_deltas, theorem_bound(12, eta)
        for j, (delta, b) in enumerate(zip(deltas, bound, strict=True)):
            assert delta <= b * (1 + 1e-12)
            if j:
                assert delta <= rate * deltas[j - 1] + 1e-14
                assert delta <= deltas[0] * rate**j + 1e-14


def test_more_levels_never_farther_from_nash():
    """Paper's setting: for every update t, distance to Nash is non-increasing in K (Fig. 2b, Theorem 4.4)."""
    ks, steps = [1, 2, 3, 5, 8], 30
    paths = {k: trajectory(PAPER_THETA, k, 0.5, steps) for k in ks}
    for t in range(steps):
        dist = [paths[k].distance_to_nash[t] for k in ks]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(dist)), (t, dist)
    for k in ks:
        assert paths[k].distance_to_nash[-1] < 1e-4 * distance_to_nash(PAPER_THETA)
    # one update: each level is closer to Nash than the last (Fig. 3)
    level_dist = one_update(PAPER_THETA, 8, 0.5).distance_to_nash
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(level_dist))


def test_adaptive_k_stops_early_and_respects_the_cap():
    update = one_update(PAPER_THETA, 50, 0.5, adaptive_tol=1e-3)
    assert 2 <= update.stats.levels_run < 50
    assert len(update.levels) == update.stats.levels_run + 1 == len(update.level_deltas) + 1
    ref = _ref_levels(PAPER_THETA, update.stats.levels_run, 0.5)
    assert _flat(update.levels) == pytest.approx(_flat(ref), abs=1e-9, rel=0)
    capped = one_update(PAPER_THETA, 4, 0.5, adaptive_tol=1e-300)
    assert capped.stats.levels_run == 4
    tr = trajectory(PAPER_THETA, 6, 0.5, 10, adaptive_tol=1e-2)
    assert all(1 <= run <= 6 for run in tr.levels_run) and min(tr.levels_run) < 6


def test_report_with_adaptive_k(tmp_path):
    pytest.importorskip("matplotlib")
    from kpg_lightning.meetup import report, write_outputs

    result = report(20, 0.5, PAPER_THETA, 3, [1, 20], optimizer="momentum", adaptive_tol=1e-3)
    assert result["levels_run"] < 20
    assert len(result["levels"]) == len(result["level_deltas"]) + 1 == len(result["bound"]) + 1
    assert max(result["trajectory"]["20"]["levels_run"]) < 20
    written = write_outputs(result, tmp_path / "new_dir")
    assert all(path.stat().st_size > 0 for path in written) and len(written) == 4


def test_momentum_state_persists_across_updates():
    """K = 1 with momentum through the engine equals a hand-written SGD-momentum ascent on eq. 36."""
    steps, eta = 5, 0.1
    tr = trajectory(PAPER_THETA, 1, eta, steps, optimizer="momentum")
    theta = torch.nn.Parameter(torch.tensor(PAPER_THETA, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=eta, momentum=0.9)
    for t in range(steps):
        theta.grad = -policy_gradient(theta.detach())
        opt.step()
        assert tr.theta[t] == pytest.approx(theta.detach().tolist(), abs=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam"])
def test_every_optimizer_runs(optimizer):
    tr = trajectory(PAPER_THETA, 3, 0.05, 5, optimizer=optimizer)
    assert len(tr.theta) == 5 and all(math.isfinite(x) for pair in tr.theta for x in pair)


# -- configuration and CLI ----------------------------------------------------------------------------------
_GOOD = {
    "k": 8,
    "eta": 0.5,
    "theta": [0.0, 1.5708],
    "steps": 30,
    "ks": [1, 2],
    "optimizer": "sgd",
    "adaptive_tol": None,
    "out": None,
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("k", 0),
        ("k", 1.5),
        ("eta", 0),
        ("eta", -1.0),
        ("theta", [1.0]),
        ("theta", "x"),
        ("theta", [0.0, "a"]),
        ("optimizer", "lbfgs"),
        ("steps", 0),
        ("ks", []),
        ("adaptive_tol", -1.0),
    ],
)
def test_validate_rejects_bad_values(key, value):
    assert validate(_GOOD) == _GOOD
    with pytest.raises(ConfigError, match=rf"^{key} must be") as err:
        validate({**_GOOD, key: value})
    assert "\n" not in str(err.value)


def _with_root(path_var: str | None) -> str:
    return os.pathsep.join(filter(None, [str(ROOT), path_var]))


def _cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": _with_root(os.environ.get("PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "kpg_lightning.meetup", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_json_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    proc = _cli("k=5", "steps=4", "ks=[1,3]", f"out={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "meetup.json").read_text())
    for key in ("k", "eta", "theta", "levels", "level_deltas", "bound", "lipschitz", "nash", "trajectory"):
        assert key in result
    assert result["k"] == 5 and len(result["levels"]) == 6
    assert len(result["level_deltas"]) == len(result["bound"]) == 5
    ref = _ref_levels([0.0, 1.5708], 5, 0.5)
    assert _flat(result["levels"]) == pytest.approx(_flat(ref), abs=1e-9, rel=0)
    assert set(result["trajectory"]) == {"1", "3"}
    assert all(len(tr["theta"]) == len(tr["distance_to_nash"]) == 4 for tr in result["trajectory"].values())
    for name in ("meetup_levels.png", "meetup_paths.png", "meetup_distance.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".meetup")]  # no temp files left behind


def test_cli_bad_override_is_one_line(tmp_path):
    proc = _cli("k=0", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "k must be an integer >= 1" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "meetup.json").exists()


# -- notebook -----------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nbclient", "nbformat", "ipykernel")),
    reason="nbclient/nbformat/ipykernel not installed",
)
def test_notebook_executes(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # the kernel is a subprocess: make it this interpreter, with the package importable
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    monkeypatch.setenv("PYTHONPATH", _with_root(os.environ.get("PYTHONPATH")))
    nb = nbformat.read(ROOT / "notebooks" / "meetup.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code)  # saved without outputs
    run_in_root = {"metadata": {"path": str(ROOT)}}
    NotebookClient(nb, kernel_name="python3", timeout=120, resources=run_in_root).execute()
    images = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3

"""The K-level engine does the paper's recursion: exact K=1, hand-computed levels, no trace of intermediate levels."""

import copy
import math

import pytest
import torch

from kpg_lightning.kpg import gradient_step, k_level_step


def _grad_game(theta1: torch.Tensor, theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ∇_θi J_i of J1 = -(θ1 - sin θ2)², J2 = -(θ2 - θ1²/2)²."""
    return -2 * (theta1 - torch.sin(theta2)), -2 * (theta2 - 0.5 * theta1**2)


def _objective(theta: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """-Σ_i J_i(θ_i live, θ_-i from the previous level)."""
    j1 = -((theta[0] - torch.sin(others[1])) ** 2)
    j2 = -((theta[1] - 0.5 * others[0] ** 2) ** 2)
    return -(j1 + j2)


def _run_game(k: int, eta: float, theta0: list[float], optimizer_cls=torch.optim.SGD, **opt_kwargs):
    theta = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = optimizer_cls([theta], lr=eta, **opt_kwargs)
    seen: list[torch.Tensor] = []

    def outputs(level: int) -> torch.Tensor:
        seen.append(theta.detach().clone())
        return theta.detach().clone()

    stats = k_level_step(opt, k, lambda others: gradient_step(opt, _objective(theta, others)), outputs)
    return theta, opt, stats, seen


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_levels_match_hand_recursion(k):
    eta, theta0 = 0.1, [0.3, -0.7]
    theta, _, stats, seen = _run_game(k, eta, theta0)
    t = torch.tensor(theta0, dtype=torch.float64)
    level = t.clone()
    levels = [level]
    for _ in range(k):
        g1, _ = _grad_game(t[0], level[1])
        _, g2 = _grad_game(level[0], t[1])
        level = torch.stack([t[0] + eta * g1, t[1] + eta * g2])
        levels.append(level)
    # the outputs handed to level k are θ⁽ᵏ⁻¹⁾; the kept parameters are θ⁽ᴷ⁾
    for got, want in zip(seen, levels[:-1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(theta.detach(), levels[-1], rtol=0, atol=1e-12)
    deltas = [float((levels[i + 1] - levels[i]).norm()) for i in range(k)]
    assert stats.level_delta == pytest.approx(deltas, abs=1e-12)
    assert stats.levels_run == k


def test_k1_is_bit_identical_to_a_plain_step():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    x = torch.randn(32, 5)
    twin = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for _ in range(3):  # non-trivial optimizer state
        stats = k_level_step(opt, 1, lambda _o: gradient_step(opt, net(x).pow(2).mean()), lambda _lvl: None)
        opt_twin.zero_grad()
        twin(x).pow(2).mean().backward()
        opt_twin.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt_twin.state[q][key])
    assert stats.levels_run == 1 and len(stats.level_delta) == 1


@pytest.mark.parametrize("opt_cls", [torch.optim.RMSprop, torch.optim.Adam])
@pytest.mark.parametrize("warm_steps", [0, 2])
def test_intermediate_levels_leave_no_trace(opt_cls, warm_steps):
    """After K levels, params and optimizer state equal one step from the saved state with the level-K grad."""
    torch.manual_seed(1)
    theta = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    opt = opt_cls([theta], lr=0.05)
    for _ in range(warm_steps):
        gradient_step(opt, _objective(theta, theta.detach() * 0.5))
    saved_theta = copy.deepcopy(theta)
    saved_opt = opt_cls([saved_theta], lr=0.05)
    saved_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    grads: list[torch.Tensor] = []

    def update(others):
        loss = _objective(theta, others)
        opt.zero_grad()
        loss.backward()
        grads.append(theta.grad.clone())
        opt.step()
        return loss.detach()

    k_level_step(opt, 4, update, lambda _lvl: theta.detach().clone())
    assert len(grads) == 4 and not torch.equal(grads[0], grads[-1])
    saved_theta.grad = grads[-1]
    saved_opt.step()
    assert torch.equal(theta.detach(), saved_theta.detach())
    for key, value in saved_opt.state[saved_theta].items():
        assert torch.equal(opt.state[theta][key], value), key


def test_adaptive_k_stops_early_and_respects_cap():
    _, _, stats, _ = _run_game(20, 0.05, [0.3, -0.7])
    assert stats.levels_run == 20
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.05)
    stats = k_level_step(
        opt,
        20,
        lambda o: gradient_step(opt, _objective(theta, o)),
        lambda _lvl: theta.detach().clone(),
        adaptive_tol=1e-3,
    )
    assert 1 < stats.levels_run < 20
    assert stats.level_delta[-1] <= 1e-3 * stats.step_norm[-1]
    ratios = stats.contraction
    assert all(r < 1 for r in ratios if not math.isnan(r))


def test_rejects_k_below_one():
    theta = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"kpg\.k"):
        k_level_step(torch.optim.SGD([theta], lr=0.1), 0, lambda o: 0.0, lambda lvl: None)

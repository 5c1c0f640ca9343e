"""POLA's look-ahead (kpg_lightning.lookahead) on a two-player quadratic game against its closed form (float64).

L₁(x, y) = ½ xᵀAx + xᵀBy + cᵀx,  L₂(x, y) = ½ yᵀDy + yᵀEx + fᵀy  (each player minimises its own loss), and the
proximal term of a Gaussian policy with fixed variance, KL(N(y⁰,1) ‖ N(y,1)) = ½‖y − y⁰‖². Player 2's two inner
steps from y⁰ with learning rate η and KL weight β are linear in x:

    y¹ = y⁰ − η(Dy⁰ + Ex + f),   y² = y¹ − η(Dy¹ + Ex + f + β(y¹ − y⁰)),
    ∂y²/∂x = −(I − ηD − ηβI) ηE − ηE,

so player 1's look-ahead gradient is ∇ₓ L₁(x, y²(x)) = Ax + By² + c + (∂y²/∂x)ᵀ Bᵀx.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpg_lightning.lookahead import proximal_lookahead, proximal_update, simultaneous_updates

ETA, BETA, STEPS = 0.1, 0.7, 2
rng = np.random.default_rng(0)
A, B, D, E = (rng.normal(size=(2, 2)) for _ in range(4))
A, D = A @ A.T + np.eye(2), D @ D.T + np.eye(2)
C, F = rng.normal(size=2), rng.normal(size=2)
X0, Y0 = rng.normal(size=2), rng.normal(size=2)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def loss1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ _t(A) @ x + x @ _t(B) @ y + _t(C) @ x


def loss2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * y @ _t(D) @ y + y @ _t(E) @ x + _t(F) @ y


def kl(params, anchor) -> torch.Tensor:
    return 0.5 * ((params[0] - anchor[0]) ** 2).sum()


def _closed_form_grad1(x: np.ndarray, y0: np.ndarray) -> np.ndarray:
    y1 = y0 - ETA * (D @ y0 + E @ x + F)
    y2 = y1 - ETA * (D @ y1 + E @ x + F + BETA * (y1 - y0))
    jac = -(np.eye(2) - ETA * D - ETA * BETA * np.eye(2)) @ (ETA * E) - ETA * E
    return A @ x + B @ y2 + C + jac.T @ B.T @ x


def _lookahead_grad1(x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
    x = _t(x0).requires_grad_(True)
    (y2,) = proximal_lookahead([_t(y0)], lambda p: loss2(x, p[0]), lr=ETA, steps=STEPS, beta=BETA, divergence=kl)
    (grad,) = torch.autograd.grad(loss1(x, y2), [x])
    return grad.numpy()


def test_lookahead_gradient_matches_closed_form():
    np.testing.assert_allclose(_lookahead_grad1(X0, Y0), _closed_form_grad1(X0, Y0), rtol=0, atol=1e-6)
    # the shaping term is really there: without differentiating through player 2's steps the gradient differs
    naive = A @ X0 + B @ (Y0 - ETA * (D @ Y0 + E @ X0 + F)) + C
    assert np.abs(_closed_form_grad1(X0, Y0) - naive).max() > 1e-2


def test_lookahead_needs_a_divergence_for_beta():
    with pytest.raises(ValueError, match="divergence"):
        proximal_lookahead([_t(Y0)], lambda p: loss2(_t(X0), p[0]), lr=ETA, steps=1, beta=1.0)


def test_outer_proximal_steps_and_simultaneity_match_closed_form():
    """Two outer SGD steps (lr α, outer KL weight β_out) for each player, both from the same (x⁰, y⁰)."""
    alpha, beta_out = 0.05, 2.0
    x = torch.nn.Parameter(_t(X0))
    y = torch.nn.Parameter(_t(Y0))
    opt_x, opt_y = torch.optim.SGD([x], lr=alpha), torch.optim.SGD([y], lr=alpha)

    def objective1() -> torch.Tensor:
        (y2,) = proximal_lookahead([y], lambda p: loss2(x, p[0]), lr=ETA, steps=STEPS, beta=BETA, divergence=kl)
        return loss1(x, y2)

    def objective2() -> torch.Tensor:  # player 2's look-ahead of player 1 (same game, roles swapped)
        (x2,) = proximal_lookahead([x], lambda p: loss1(p[0], y), lr=ETA, steps=STEPS, beta=BETA, divergence=kl)
        return loss2(x2, y)

    simultaneous_updates(
        [
            (opt_x, [x], lambda: proximal_update(opt_x, [x], objective1, steps=2, beta=beta_out, divergence=kl)),
            (opt_y, [y], lambda: proximal_update(opt_y, [y], objective2, steps=2, beta=beta_out, divergence=kl)),
        ]
    )
    # closed form of player 1's two outer steps, against y⁰ (not player 2's updated y)
    x1 = X0 - alpha * _closed_form_grad1(X0, Y0)
    x2 = x1 - alpha * (_closed_form_grad1(x1, Y0) + beta_out * (x1 - X0))
    np.testing.assert_allclose(x.detach().numpy(), x2, rtol=0, atol=1e-6)
    # player 2, by autograd through the same primitives but evaluated at the original x⁰ (simultaneous update)
    y_ref = torch.nn.Parameter(_t(Y0))
    x_fixed = _t(X0)
    for _ in range(2):
        y_live = y_ref
        (x2t,) = proximal_lookahead(
            [x_fixed], lambda p, y_live=y_live: loss1(p[0], y_live), lr=ETA, steps=STEPS, beta=BETA, divergence=kl
        )
        total = loss2(x2t, y_ref) + beta_out * kl([y_ref], [_t(Y0)])
        (g,) = torch.autograd.grad(total, [y_ref])
        y_ref = torch.nn.Parameter(y_ref.detach() - alpha * g)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), rtol=0, atol=1e-12)

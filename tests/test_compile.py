"""``compile=default``: the compiled update gives the eager update's parameters (1e-5 relative) after N updates, for
every algorithm family at K = 1 (the base algorithm) and K = 3; what cannot be compiled is refused in one line.

K-FACMAC (K = 3) is compared in float64 (:data:`FLOAT64`, 1e-10 relative). In float64 its compiled and eager updates
agree to 6e-17 after 3 updates, level by level, with one thread or two. In float32 they agree to 2e-7 with one
thread, but with two (inductor's kernels then split their reductions) level 2 of the first update already differs
(‖θ⁽²⁾ − θ⁽¹⁾‖ 0.029 compiled, 1.1e-4 eager; 208 of the actor's 304 first-layer weights off by up to 0.03 after 3
updates). The actor's gradients at this tiny budget are of the size of RMSprop's ε (steps lr·g/(0.1|g| + 1e-8)
between 0.3 and 9.9 lr, so |g| ~ 1e-9..1e-7), where a step moves by lr/ε = 1e5 times any change of g: float32
rounding (and compiled Adam's bias correction ``1 − β₂ᵗ``, computed from a float32 step counter, ~7e-6 relative off
eager's Python-float one in the critic's first step) is enough to flip the sign of a level-2 step. Float64 (default
dtype too, so the step counters follow) takes that noise to ~1e-16 and compares the update itself.

``torch.compile`` is slow on a small CPU (40-130 s an update on 2 cores): the compiled comparisons are marked slow
(``python -m pytest -m slow tests/test_compile.py``); the default run checks the refusals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import compose, needs_vmas
from test_host_sync import _build
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.config import KPGConfig
from kpg_lightning.configure import validate
from kpg_lightning.errors import ConfigError
from kpg_lightning.module import KPGModule

UPDATES = 3
RTOL = 1e-5
RTOL64 = 1e-10
FLOAT64 = {("facmac", 3), ("discrete_facmac", 3)}
"""Cases compared in float64 (default dtype too: optimizer step counters follow it), see the module docstring."""


def _module(alg, k: int, compile: str, **kpg) -> KPGModule:
    module = KPGModule(alg, KPGConfig(k=k, **kpg), compile=compile)
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers if alg.has_actor else optimizers[0]
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    return module


def _train(alg, td, k: int, compile: str, **kpg) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """Parameters and buffers (targets included) after :data:`UPDATES` updates, and each update's metrics; the
    update's random draws (minibatch plans, Gumbel noise) seeded alike for every mode."""
    module = _module(alg, k, compile, **kpg)
    metrics = []
    for i in range(UPDATES):
        torch.manual_seed(i)
        out = module.update(td.clone())
        metrics.append({key: value.detach().double().mean().item() for key, value in out.items()})
    assert module.train_steps == UPDATES
    assert len(module.record.levels) >= UPDATES if alg.has_actor else True
    return [t.detach().clone() for t in (*alg.parameters(), *alg.buffers())], metrics


def _batch(name: str):
    """The algorithm and its batch. MAPPO's rollout draws its actions as the collector does (``RANDOM``): a rollout
    of the deterministic mean ``tanh(loc)`` makes ∂log π(a)/∂loc = (atanh(a) − loc)/σ² exactly zero at the first
    step, and its float32 value pure rounding noise, which Adam (and RMSprop) turn into ±lr steps in eager and
    compiled updates alike: no update to compare."""
    if name != "mappo":
        return _build(name)
    with set_exploration_type(ExplorationType.RANDOM):
        return _build(name)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _cast(alg, td, dtype: torch.dtype):
    return alg.to(dtype), td.apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


def _assert_close(name: str, k: int, dtype: torch.dtype = torch.float32, **kpg) -> None:
    with _default_dtype(dtype):
        torch.manual_seed(0)
        alg, td = _cast(*_batch(name), dtype)
        initial = [p.detach().clone() for p in alg.parameters()]
        torch.manual_seed(0)
        eager_alg, _ = _cast(*_batch(name), dtype)
        with torch._inductor.config.patch(fallback_random=True):  # any random op in the graph draws as eager does
            compiled, compiled_metrics = _train(alg, td, k, "default", **kpg)
        eager, eager_metrics = _train(eager_alg, td, k, "none", **kpg)
    rtol = RTOL64 if dtype == torch.float64 else RTOL
    assert len(compiled) == len(eager)
    for c, e in zip(compiled, eager, strict=True):
        assert c.dtype == e.dtype and (dtype == torch.float32 or not e.is_floating_point() or e.dtype == dtype)
        scale = float(e.double().abs().max()) if e.numel() else 0.0
        torch.testing.assert_close(c, e, rtol=rtol, atol=rtol * max(1.0, scale))
    for c, e in zip(compiled_metrics, eager_metrics, strict=True):
        assert c.keys() == e.keys()
        for key in c:
            assert c[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), key
    # the updates moved the parameters: equal because both did the same, not because neither did anything
    assert sum(not torch.equal(a, b) for a, b in zip(initial, compiled, strict=False)) > 0


# ~40-130 s of compiling on a 2-core CPU: slow like the rest of the matrix (the default run checks the refusals; the
# update function compiled here is the one eager mode runs)
FAST = [pytest.param("maddpg", 3, {}, marks=[needs_vmas, pytest.mark.slow], id="maddpg-k3")]
SLOW = [
    pytest.param(
        name,
        k,
        kpg,
        marks=[pytest.mark.slow, *([needs_vmas] if vmas else [])],
        id=f"{id_}-k{k}",
    )
    for name, kpg, vmas, id_ in [
        ("maddpg", {}, True, "maddpg"),
        ("facmac", {}, True, "facmac"),
        ("discrete_facmac", {}, False, "discrete-facmac-gru"),
        ("mappo", {"scope": "update"}, True, "mappo-update"),
        ("mappo", {"scope": "step"}, True, "mappo-step"),
        ("qmix", {}, False, "qmix"),
    ]
    for k in ((1,) if name == "qmix" else (1, 3))
    if not (name == "maddpg" and k == 3)
]


@pytest.mark.parametrize(("name", "k", "kpg"), FAST + SLOW)
def test_compiled_update_equals_eager(name, k, kpg):
    _assert_close(name, k, torch.float64 if (name, k) in FLOAT64 else torch.float32, **kpg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compile=cudagraphs"], "compile='cudagraphs' is not allowed: none or default without a CUDA"),
        (["compile=default", "kpg.adaptive_tol=0.1"], "kpg.adaptive_tol=0.1 is not allowed: null with compile=default"),
        (["compile=jit"], "compile='jit' is not allowed: one of none, default, cudagraphs"),
    ],
)
def test_refused_combinations_are_one_line(overrides, message):
    if "cudagraphs" in overrides[0] and torch.cuda.is_available():
        pytest.skip("a CUDA machine allows compile=cudagraphs")
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_compile_is_documented_in_its_schema():
    cfg = compose([])
    assert cfg.compile == "none"
    validate(compose(["compile=default"]))

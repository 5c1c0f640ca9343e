"""A K-level update that raises part-way leaves parameters and optimizer state exactly as before it.

The failure is injected through a real mechanism: a forward hook on the K-MAPPO actor's body that turns its output
NaN on a chosen call, so the loss of that minibatch is not finite and :func:`gradient_step` (raising at once, no
FiniteGuard) raises :class:`NonFiniteError` after the level's earlier minibatch steps were applied. A caller that
skips the update (``on_nonfinite=skip``) must find none of it applied.
"""

from __future__ import annotations

import pytest
import torch
from conftest import needs_vmas

from kpg_lightning.algorithms.mappo import Mappo, MappoConfig
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.errors import NonFiniteError
from kpg_lightning.kpg import actor_k_level_step
from kpg_lightning.optim import make_actor_optimizer, params_of

pytestmark = [needs_vmas, pytest.mark.usefixtures("one_torch_thread")]

K, EPOCHS, MINIBATCHES = 3, 2, 2
STEPS_PER_LEVEL = EPOCHS * MINIBATCHES  # actor forwards in a level (scope=update); level_outputs adds one after it


@pytest.fixture(scope="module")
def rollout():
    """A tiny K-MAPPO on VMAS balance and one processed rollout (GAE done), seeded."""
    from kpg_lightning.envs.vmas import make_vmas_env

    torch.manual_seed(0)
    env = make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)
    model = ModelConfig(actor_hidden=[16, 16], critic_hidden=[16, 16])
    alg = Mappo(MappoConfig(epochs=EPOCHS, minibatches=MINIBATCHES), EnvInfo.from_env(env), model)
    with torch.no_grad():
        td = env.rollout(10, alg.policy(), break_when_any_done=False)
    return alg, alg.process_batch(td)


def training_state(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = params_of(optimizer)
    state = [v.clone() for p in params for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
    return [p.detach().clone() for p in params], state


def nan_on_call(module: torch.nn.Module, call: int) -> tuple[dict[str, int], torch.utils.hooks.RemovableHandle]:
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == call else output

    return calls, module.register_forward_hook(hook)


@pytest.mark.parametrize("warm", [0, 1], ids=["fresh-optimizer", "optimizer-with-state"])
def test_a_level_that_raises_leaves_parameters_and_optimizer_state_as_before(rollout, warm):
    alg, td = rollout
    chunk = alg.actor_batches(td, scope="update")[0]  # kpg.scope=update: one recursion over epochs x minibatches
    params = alg.actor_parameters()
    optimizer = make_actor_optimizer("auto", K, params, alg.cfg.actor_lr)  # RMSProp: its square_avg is state
    for _ in range(warm):
        actor_k_level_step(alg, chunk, optimizer, K, params=params)
    before_params, before_state = training_state(optimizer)
    assert len(before_state) == (0 if warm == 0 else 2 * len(params))  # RMSProp: step and square_avg

    # level 1: STEPS_PER_LEVEL forwards, then level_outputs(1); level 2's second minibatch is the call after that + 2
    call = STEPS_PER_LEVEL + 1 + 2
    calls, handle = nan_on_call(alg.actor_net.body, call)
    applied: list[bool] = []
    try:
        with pytest.raises(NonFiniteError, match="actor loss is not finite"):
            actor_k_level_step(
                alg,
                chunk,
                optimizer,
                K,
                params=params,
                # a level's first minibatch step has moved θ away from the snapshot when the failure comes
                on_level=lambda level, ps: applied.append(level),
            )
    finally:
        handle.remove()
    assert calls["n"] == call and applied == [1]  # the failure came in level 2, after its first minibatch step

    after_params, after_state = training_state(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before_params, after_params, strict=True))
    assert len(after_state) == len(before_state)
    assert all(torch.equal(a, b) for a, b in zip(before_state, after_state, strict=True))
    # the restored state is live: the same update, now without the fault, still learns
    actor_k_level_step(alg, chunk, optimizer, K, params=params)
    assert any(not torch.equal(a, p) for a, p in zip(before_params, params, strict=True))

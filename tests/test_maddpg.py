"""K-MADDPG's actor objective: agent i's gradient reaches only agent i's action, the N cases are one pass."""

import pytest
import torch
from conftest import needs_vmas

from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig
from kpg_lightning.models import ModelConfig

pytestmark = needs_vmas


def _setup(share_params: bool):
    from kpg_lightning.envs.info import EnvInfo
    from kpg_lightning.envs.vmas import make_vmas_env

    env = make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16], share_params=share_params)
    alg = Maddpg(MaddpgConfig(), EnvInfo.from_env(env), model)
    with torch.no_grad():
        td = alg.process_batch(env.rollout(5, alg.policy(), break_when_any_done=False).reshape(-1))
    return alg, td


def test_level_zero_outputs_are_the_current_actor_not_the_buffer():
    alg, td = _setup(True)
    out = alg.level_outputs(td, 0)
    assert torch.equal(out, alg.actor.module(td["agents", "observation"]))
    assert not torch.allclose(out, td["agents", "action"])  # buffer actions carry exploration noise


def test_agent_gradient_does_not_flow_into_other_agents():
    """Per-agent actors: agent i's level-k loss moves only agent i's parameters."""
    alg, td = _setup(False)
    with torch.no_grad():  # some level-(k-1) policy's actions, as the engine computes them
        others = alg.level_outputs(td, 0) + 0.3 * torch.randn_like(td["agents", "action"])
    per_agent = alg.actor_loss(td, others, reduce=False).mean(0)  # [N]
    params = alg.actor_parameters()
    for i in range(alg.info.n_agents):
        grads = torch.autograd.grad(per_agent[i], params, retain_graph=True, allow_unused=True)
        stacked = [g for g in grads if g is not None and g.shape[0] == alg.info.n_agents]
        assert stacked, "per-agent parameters are stacked along the agent dimension"
        for g in stacked:
            others_idx = [j for j in range(alg.info.n_agents) if j != i]
            assert g[others_idx].abs().max() == 0
            assert g[i].abs().max() > 0


def test_batched_cases_equal_a_loop_over_agents():
    """One batched pass equals N separate 'agent i live, others fixed' critic evaluations."""
    alg, td = _setup(True)
    with torch.no_grad():
        others = alg.level_outputs(td, 0) + 0.2 * torch.randn_like(td["agents", "action"])
    loss = alg.actor_loss(td, others)
    grads = torch.autograd.grad(loss, alg.actor_parameters())

    obs = td["agents", "observation"]
    state = obs.flatten(-2)
    n = alg.info.n_agents
    total = 0.0
    for i in range(n):
        live = alg.actor.module(obs)
        joint = others.clone()
        joint[:, i] = live[:, i]
        q_all = alg.critic_input.critic(state, joint)  # [B, N, 1]: every agent's Q on this joint action
        total = total - q_all[:, i].mean() / n
    expected = torch.autograd.grad(total, alg.actor_parameters())
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    # the others' level-(k-1) actions do enter the objective (as constants)
    assert not torch.allclose(loss, alg.actor_loss(td, others + 0.5))


@pytest.mark.parametrize("k", [1, 3])
def test_module_update_keeps_only_level_k(k):
    """Through the module: K levels leave the critic and targets as after one update, actor at level K."""
    from kpg_lightning.kpg import gradient_step, k_level_step

    alg, td = _setup(True)
    opt = torch.optim.RMSprop(alg.actor_parameters(), lr=1e-2)
    levels = []

    def outputs(level):
        levels.append(level)
        return alg.level_outputs(td, level).detach()

    stats = k_level_step(opt, k, lambda o: gradient_step(opt, alg.actor_loss(td, o)), outputs)
    assert levels == list(range(k)) and stats.levels_run == k
    assert all(d > 0 for d in stats.level_delta)


def test_actor_levels_leave_the_critic_out_of_the_graph():
    """The module freezes critic parameters around the K-level step: no critic gradient is computed there."""
    from kpg_lightning.kpg import gradient_step, k_level_step
    from kpg_lightning.module import frozen

    alg, td = _setup(True)
    opt = torch.optim.RMSprop(alg.actor_parameters(), lr=1e-2)
    critic = alg.critic_parameters()
    with frozen(critic):
        k_level_step(opt, 2, lambda o: gradient_step(opt, alg.actor_loss(td, o)),
                     lambda level: alg.level_outputs(td, level))
    assert all(p.grad is None for p in critic) and all(p.requires_grad for p in critic)
    assert all(p.grad is not None for p in alg.actor_parameters())

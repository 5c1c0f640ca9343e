"""K-MADDPG's actor objective: agent i's gradient reaches only agent i's action, the N cases are one pass."""

import pytest
import torch
from conftest import needs_vmas

from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig
from kpg_lightning.config import ModelConfig

pytestmark = needs_vmas


def _setup(share_params: bool, critic: str = "per_agent"):
    from kpg_lightning.envs.info import EnvInfo
    from kpg_lightning.envs.vmas import make_vmas_env

    env = make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16], share_params=share_params)
    alg = Maddpg(MaddpgConfig(critic=critic), EnvInfo.from_env(env), model)
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
        q_all = alg.critic.module(state, joint)  # [B, N, 1]: every agent's Q on this joint action
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
        k_level_step(
            opt, 2, lambda o: gradient_step(opt, alg.actor_loss(td, o)), lambda level: alg.level_outputs(td, level)
        )
    assert all(p.grad is None for p in critic) and all(p.requires_grad for p in critic)
    assert all(p.grad is not None for p in alg.actor_parameters())


def test_team_critic_scores_one_row_per_sample_shared_by_every_agent():
    """critic=team: no agent-id input, one critic row per sample, the same value for every agent."""
    alg, td = _setup(True, critic="team")
    critic = alg.critic.module
    n, a = alg.info.n_agents, alg.info.action_dim
    assert critic.net[0].in_features == alg.info.critic_state_dim + n * a
    rows = []
    critic.net.register_forward_hook(lambda _m, inputs, _out: rows.append(inputs[0].shape[:-1]))
    q = alg.critic(td.clone())["agents", "state_action_value"]
    assert rows == [td.batch_size] and q.shape == (*td.batch_size, n, 1)
    assert torch.equal(q, q[:, :1].expand_as(q))
    loss, _ = alg.critic_loss(td)
    assert loss.isfinite() and rows[-1] == td.batch_size  # the TD loss uses the one team row too


def test_team_critic_level_one_is_maddpg_joint_objective_and_levels_sum_the_cases():
    """Level 1 (level 0 hands no actions): −Q(s, μ(o)) with every agent live, one critic row per sample; its
    gradient is the sum of the N cases' gradients at the current actions. Level k ≥ 2: case values averaged,
    gradients summed, each case scoring agent i live and the others fixed."""
    alg, td = _setup(True, critic="team")
    params, obs = alg.actor_parameters(), td["agents", "observation"]
    state, critic, n = obs.flatten(-2), alg.critic.module, alg.info.n_agents
    assert alg.level_outputs(td, 0) is None
    joint = alg.actor_loss(td, None)
    torch.testing.assert_close(joint, -critic.team(state, alg.actor.module(obs)).mean())
    with torch.no_grad():
        current = alg.actor.module(obs)
    cases = alg.actor_loss(td, current)
    torch.testing.assert_close(cases, joint)
    for g, e in zip(torch.autograd.grad(joint, params), torch.autograd.grad(cases, params), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)

    others = current + 0.3 * torch.randn_like(current)
    loss = alg.actor_loss(td, others)
    values, total = [], 0.0
    for i in range(n):
        joint_i = others.clone()
        joint_i[:, i] = alg.actor.module(obs)[:, i]
        q_i = critic.team(state, joint_i).mean()
        values.append(-q_i)
        total = total - q_i
    torch.testing.assert_close(loss, torch.stack(values).mean())
    for g, e in zip(torch.autograd.grad(loss, params), torch.autograd.grad(total, params), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss, alg.actor_loss(td, others + 0.5))


def test_team_critic_k_maddpg_runs_end_to_end(tmp_path):
    import json

    from conftest import TINY, run_train

    result = run_train(
        tmp_path / "run",
        *TINY,
        "max_frames=640",
        "algorithm.critic=team",
        "kpg.k=2",
        "trainer.enable_checkpointing=false",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 640 and summary["kpg"]["levels_run_mean"] == 2


def test_hard_target_count_survives_a_state_dict_round_trip():
    """target_update=hard: the updates counted toward the next copy are in the module's state_dict, so a run resumed
    from a checkpoint copies its targets at the same updates as the uninterrupted one (TorchRL's ``HardUpdate`` kept
    its counter outside the module: a resumed run started counting again)."""
    from kpg_lightning.envs.info import EnvInfo

    info = EnvInfo(
        n_agents=2,
        obs_dim=3,
        action_dim=2,
        discrete=False,
        state_dim=None,
        action_low=-torch.ones(2, 2),
        action_high=torch.ones(2, 2),
        has_action_mask=False,
        has_action_dim_mask=False,
    )
    cfg, model = MaddpgConfig(target_update="hard", target_update_interval=3), ModelConfig([8], [8])

    def update(alg) -> bool:
        """One training update's parameter change and target update; whether the targets were copied."""
        with torch.no_grad():
            for p in alg.actor_parameters() + alg.critic_parameters():
                p.add_(1.0)
        alg.update_targets()
        return all(torch.equal(target, online) for target, online in alg.target_pairs())

    alg = Maddpg(cfg, info, model)
    assert [update(alg) for _ in range(2)] == [False, False]
    resumed = Maddpg(cfg, info, model)
    resumed.load_state_dict(alg.state_dict())
    assert int(resumed.target_updates) == 2
    assert update(resumed) and update(alg)  # the third update copies, resumed or not

"""MAPPO / IPPO / K-MAPPO: the K-level ratio, K = 1 equals plain MAPPO bit for bit, masks, GRU resets, scopes."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest
import torch
from conftest import HAS_VMAS, run_train
from tensordict import TensorDict
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.algorithms.mappo import ADV, LOGP, TARGET, VALUE, IppoConfig, Mappo, MappoConfig
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.envs.info import ACTION, OBS, EnvInfo
from kpg_lightning.envs.info import ACTION_MASK as MASK
from kpg_lightning.models import AgentGRU
from kpg_lightning.module import KPGModule, make_actor_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
needs_smax = pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl not installed (pip install 'kpg-lightning[smax]')")
needs_vmas = pytest.mark.skipif(not HAS_VMAS, reason="vmas not installed (pip install 'kpg-lightning[vmas]')")
SMAX_TINY = [
    "model.actor_hidden=[16,16]",
    "model.critic_hidden=[16,16]",
    "model.gru_hidden=16",
    "env.num_envs=8",
    "collector.frames_per_batch=256",
    "max_frames=512",
    "eval.episodes=2",
    "eval.absolute_episodes=2",
    "eval.every_frames=0",
    "checkpoint.every_frames=512",
    "trainer.enable_progress_bar=false",
    "logger.tensorboard=null",
]


@pytest.fixture(scope="module")
def vmas():
    from kpg_lightning.envs.vmas import make_vmas_env

    return make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)


def build(base, algorithm: str = "mappo", recurrent: bool = False, **cfg) -> tuple[Mappo, EnvBase]:
    """A tiny MAPPO/IPPO on ``base`` and the env with the transforms its policy needs."""
    config = (IppoConfig if algorithm == "ippo" else MappoConfig)(**cfg)
    model = ModelConfig(actor_hidden=[16, 16], critic_hidden=[16, 16], recurrent=recurrent, gru_hidden=8)
    alg = Mappo(config, EnvInfo.from_env(base), model)
    transforms = alg.env_transforms()
    return alg, (TransformedEnv(base, Compose(*transforms)) if transforms else base)


def rollout(alg: Mappo, env: EnvBase, steps: int = 40) -> TensorDict:
    with torch.no_grad():
        return env.rollout(steps, alg.policy(), break_when_any_done=False)


def engine_update(alg: Mappo, td: TensorDict, k: int, scope: str = "update") -> tuple[KPGModule, list]:
    """One update through the real ``KPGModule.update`` (process batch → critic → K-level engine)."""
    module = KPGModule(alg, KPGConfig(k=k, actor_optimizer="adam", scope=scope))
    optimizers = (
        make_actor_optimizer("adam", k, alg.actor_parameters(), alg.cfg.actor_lr),
        torch.optim.Adam(alg.critic_parameters(), lr=alg.cfg.critic_lr),
    )
    module.optimizers = lambda: optimizers
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    module.update(td)
    return module, list(optimizers)


def plain_mappo_update(alg: Mappo, td: TensorDict) -> list[torch.optim.Optimizer]:
    """Textbook MAPPO, written out: GAE, critic epochs x minibatches, then PPO-clip actor epochs x minibatches."""
    cfg, eps = alg.cfg, alg.cfg.clip_epsilon
    actor_opt = torch.optim.Adam(alg.actor_parameters(), lr=cfg.actor_lr)
    critic_opt = torch.optim.Adam(alg.critic_parameters(), lr=cfg.critic_lr)
    with torch.random.fork_rng():  # the minibatch plans it draws are the ones drawn below, in the same order
        td = alg.process_batch(td)

    def step(opt, loss, params):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()

    for _ in range(cfg.epochs):
        for idx in torch.randperm(td.shape[0]).tensor_split(cfg.minibatches):
            mb = td[idx]
            value, old, target = alg.critic.module(mb[alg.critic.in_keys[0]]), mb[VALUE], mb[TARGET]
            clipped = old + (value - old).clamp(-eps, eps)
            loss = 0.25 * torch.maximum((value - target).pow(2), (clipped - target).pow(2)).mean()
            step(critic_opt, loss, alg.critic_parameters())
    for _ in range(cfg.epochs):
        for idx in torch.randperm(td.shape[0]).tensor_split(cfg.minibatches):
            mb = td[idx]
            ratio = torch.exp(alg.log_prob(mb) - mb[LOGP])
            adv = mb[ADV].squeeze(-1)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()
            step(actor_opt, loss, alg.actor_parameters())
    return [actor_opt, critic_opt]


def assert_same_training_state(a: Mappo, a_opts, b: Mappo, b_opts) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for oa, ob in zip(a_opts, b_opts, strict=True):
        params_a = [p for g in oa.param_groups for p in g["params"]]
        params_b = [p for g in ob.param_groups for p in g["params"]]
        for pa, pb in zip(params_a, params_b, strict=True):
            sa, sb = oa.state[pa], ob.state[pb]
            assert sa.keys() == sb.keys() and sa
            assert all(torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])) for key in sa)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("smax", False, "update"), marks=needs_smax, id="smax-mlp"),
        pytest.param(("smax", True, "update"), marks=needs_smax, id="smax-gru"),
        pytest.param(("smax", True, "step"), marks=needs_smax, id="smax-gru-scope-step"),
        pytest.param(("vmas", False, "update"), marks=needs_vmas, id="vmas-continuous"),
    ],
)
def test_k1_is_plain_mappo_bit_for_bit(case, request):
    env_name, recurrent, scope = case
    alg, env = build(request.getfixturevalue(env_name), recurrent=recurrent)
    twin, initial = copy.deepcopy(alg), [p.clone() for p in alg.parameters()]
    td = rollout(alg, env)
    torch.manual_seed(1)
    _, opts = engine_update(alg, td.clone(), k=1, scope=scope)
    torch.manual_seed(1)
    twin_opts = plain_mappo_update(twin, td.clone())
    assert_same_training_state(alg, opts, twin, twin_opts)
    assert all(not torch.equal(a, b) for a, b in zip(initial, alg.parameters(), strict=True))  # it did learn


def test_k_level_ratio_by_hand():
    """r_i = own ratio x the others' level-(k-1) ratios; PPO clip on the product; only Δ_i carries gradient."""
    info = EnvInfo(
        n_agents=3,
        obs_dim=4,
        action_dim=5,
        discrete=True,
        state_dim=6,
        action_low=None,
        action_high=None,
        has_action_mask=True,
        has_action_dim_mask=False,
    )
    alg = Mappo(MappoConfig(normalize_advantage=False), info, ModelConfig(actor_hidden=[8], critic_hidden=[8]))
    behaviour = torch.tensor([0.5, 0.25, 0.2]).log()
    live = torch.tensor([0.6, 0.25, 0.1625]).log().requires_grad_()  # own ratios 1.2, 1.0, 0.8125
    others = torch.tensor([0.4, 0.5, 0.25]).log()  # the others' level-(k-1) ratios 0.8, 2.0, 1.25
    ratio = alg.ratio(live, behaviour, others)
    torch.testing.assert_close(ratio, torch.tensor([1.2 * 2.0 * 1.25, 1.0 * 0.8 * 1.25, 0.8125 * 0.8 * 2.0]))
    assert torch.autograd.grad(ratio[1], live)[0].nonzero().flatten().tolist() == [1]
    assert torch.allclose(alg.ratio(live, behaviour, behaviour), (live - behaviour).exp())  # level 1: MAPPO

    # the clipped surrogate with A = (1, -1, -1), ε = 0.2, r = (3.0, 1.0, 1.3):
    # min(3.0, 1.2)·1 = 1.2 (clipped: no gradient), -1.0, min(-1.3, -1.2) = -1.3  →  loss = -(1.2 - 1.0 - 1.3)/3
    class Fixed:
        def log_prob(self, action):
            return live.view(1, 1, 3)

    alg.distribution = lambda td: Fixed()
    td = TensorDict(
        {
            "agents": TensorDict(
                {
                    "action": torch.zeros(1, 1, 3, dtype=torch.long),
                    "action_log_prob": behaviour.view(1, 1, 3),
                    "advantage": torch.tensor([1.0, -1.0, -1.0]).view(1, 1, 3, 1),
                },
                batch_size=[1, 1, 3],
            )
        },
        batch_size=[1, 1],
    )
    loss = alg.actor_loss(td, others.view(1, 1, 3))
    assert math.isclose(float(loss.detach()), 1.1 / 3, rel_tol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, live)[0], torch.tensor([0.0, 1.0 / 3, 1.3 / 3]))


def test_masked_actions_are_never_sampled():
    info = EnvInfo(
        n_agents=3,
        obs_dim=4,
        action_dim=8,
        discrete=True,
        state_dim=6,
        action_low=None,
        action_high=None,
        has_action_mask=True,
        has_action_dim_mask=False,
    )
    alg = Mappo(MappoConfig(), info, ModelConfig(actor_hidden=[16], critic_hidden=[16]))
    batch = 4000
    mask = torch.rand(batch, 3, 8) < 0.3
    mask[torch.arange(batch), :, torch.randint(8, (batch,))] = True  # at least one available action per agent
    td = TensorDict(
        {
            "agents": TensorDict(
                {"observation": 3 * torch.randn(batch, 3, 4), "action_mask": mask}, batch_size=[batch, 3]
            )
        },
        batch_size=[batch],
    )
    for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
        with set_exploration_type(mode), torch.no_grad():
            out = alg.policy()(td.clone())
        assert mask.gather(-1, out[ACTION].unsqueeze(-1)).all(), mode
        assert torch.isfinite(out[LOGP]).all()
    dist = alg.distribution(out.unsqueeze(1))  # [envs, T=1]
    assert torch.isinf(dist.logits[~mask.unsqueeze(1)]).all() and torch.isfinite(dist.entropy()).all()
    unavailable = (~mask).float().argmax(-1, keepdim=True).unsqueeze(1)
    has_unavailable = (~mask).any(-1).unsqueeze(1)
    assert (dist.log_prob(unavailable.squeeze(-1))[has_unavailable] == -math.inf).all()


@needs_smax
def test_gru_hidden_state_resets_at_episode_boundaries(smax):
    alg, env = build(smax, recurrent=True)
    td = rollout(alg, env, steps=60)
    done = td["next", "done"].squeeze(-1)[:, :-1].nonzero().tolist()
    assert done, "random play ends 3m battles within 60 steps"
    for b, t in done:
        assert td["is_init"][b, t + 1] and not td["rnn_hidden"][b, t + 1].any()  # fed zeros at the new episode
        assert td["rnn_hidden"][b, t].abs().sum() > 0  # ...and a live memory before it
    # training recomputes the whole sequences from the first step's state: the collection log-probs (level 0)
    torch.testing.assert_close(alg.log_prob(td), alg.level_outputs(td, 0), atol=1e-5, rtol=1e-5)


def test_gru_sequence_restarts_where_is_init():
    torch.manual_seed(0)
    gru = AgentGRU(n_agents=2, in_features=3, out_features=4, hidden=[8, 8], gru_hidden=5)
    x, h0 = torch.randn(2, 6, 2, 3), torch.randn(2, 2, 5)
    is_init = torch.zeros(2, 6, 1, dtype=torch.bool)
    is_init[0, 3] = True
    out = gru.sequence(x, h0, is_init)
    fresh = gru.sequence(x[:1, 3:], torch.zeros(1, 2, 5), torch.zeros(1, 3, 1, dtype=torch.bool))
    torch.testing.assert_close(out[:1, 3:], fresh)
    steps, h = [], h0  # the one-step path (collection) equals the sequence path (training)
    for t in range(6):
        y, h = gru(x[:, t], h, is_init[:, t])
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), out)


@needs_smax
def test_gae_is_the_textbook_recursion(smax):
    alg, env = build(smax)
    td = alg.process_batch(rollout(alg, env, steps=60))
    gamma, lmbda = alg.cfg.gamma, alg.cfg.gae_lambda
    with torch.no_grad():
        value, next_value = alg.critic.module(td["state"]), alg.critic.module(td["next", "state"])
    reward = td["next", "agents", "reward"]
    terminated = td["next", "terminated"].unsqueeze(-2).float()
    done = td["next", "done"].unsqueeze(-2).float()
    adv, running = torch.zeros_like(value), torch.zeros_like(value[:, 0])
    for t in reversed(range(td.shape[1])):
        delta = reward[:, t] + gamma * (1 - terminated[:, t]) * next_value[:, t] - value[:, t]
        running = delta + gamma * lmbda * (1 - done[:, t]) * running
        adv[:, t] = running
    torch.testing.assert_close(td[ADV], adv, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(td[TARGET], adv + value, atol=1e-5, rtol=1e-4)


@needs_smax
def test_scopes_update_and_step_both_run_and_differ(smax):
    alg, env = build(smax, recurrent=True)
    td = rollout(alg, env)
    results = {}
    for scope in ("update", "step"):
        twin = copy.deepcopy(alg)
        torch.manual_seed(1)
        module, _ = engine_update(twin, td.clone(), k=2, scope=scope)
        results[scope] = (twin, module.record.levels)
    assert len(results["update"][1]) == 1  # one recursion around epochs x minibatches
    assert len(results["step"][1]) == alg.cfg.epochs * alg.cfg.minibatches  # one per gradient step
    for _, stats in results.values():
        assert all(s.levels_run == 2 and all(map(math.isfinite, s.objective)) for s in stats)
    update, step = (torch.cat([p.flatten() for p in r[0].actor_parameters()]) for r in results.values())
    assert not torch.allclose(update, step)


@needs_smax
def test_ippo_critic_sees_only_local_observations(smax):
    for name, centralized in (("ippo", False), ("mappo", True)):
        alg, env = build(smax, algorithm=name)
        td = rollout(alg, env, steps=5)
        assert alg.critic.in_keys == (["state"] if centralized else [OBS])
        base = alg.critic(td.clone())[VALUE]
        moved_state = td.clone()
        moved_state["state"] += 1.0
        moved_obs = td.clone()
        moved_obs[OBS][..., 1, :] += 1.0  # agent 1's observation only
        state_value, obs_value = alg.critic(moved_state)[VALUE], alg.critic(moved_obs)[VALUE]
        if centralized:
            assert not torch.allclose(state_value, base) and torch.equal(obs_value, base)
        else:
            assert torch.equal(state_value, base)
            assert torch.equal(obs_value[..., [0, 2], :], base[..., [0, 2], :])
            assert not torch.allclose(obs_value[..., 1, :], base[..., 1, :])


@needs_vmas
def test_continuous_k_mappo_on_vmas(vmas):
    alg, env = build(vmas)
    td = rollout(alg, env, steps=10)
    low, high = alg.info.action_low, alg.info.action_high
    assert ((td[ACTION] >= low) & (td[ACTION] <= high)).all() and MASK not in td.keys(True)
    torch.testing.assert_close(alg.log_prob(td), alg.level_outputs(td, 0), atol=1e-4, rtol=1e-4)
    before = [p.clone() for p in alg.actor_parameters()]
    module, _ = engine_update(alg, td, k=2)
    assert module.record.levels[0].levels_run == 2 and all(map(math.isfinite, module.record.levels[0].objective))
    assert any(not torch.equal(a, b) for a, b in zip(before, alg.actor_parameters(), strict=True))


@needs_smax
@pytest.mark.parametrize("experiment", ["k2_mappo_smax_3m", "ippo_smax_3m"])
def test_tiny_smax_run_writes_win_rate(tmp_path, experiment):
    result = run_train(tmp_path / "run", f"+experiment={experiment}", *SMAX_TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    algorithm, k = ("mappo", 2) if experiment.startswith("k2_") else ("ippo", 1)
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == (algorithm, "smax/3m", k, 512)
    assert 0.0 <= summary["eval_win_rate"] <= 1.0 and summary["train_steps"] == 2


@pytest.mark.slow
@needs_smax
def test_mappo_and_k2_mappo_learn_smax_3m(tmp_path):
    """Learning check (~5 min on 2 cores): at 300k frames both win most 3m battles; random play wins none."""
    from concurrent.futures import ThreadPoolExecutor

    from torchrl.envs import RewardSum

    from kpg_lightning.callbacks.evaluation import episode_outcomes
    from kpg_lightning.envs.smax import make_smax_env

    random_env = TransformedEnv(
        make_smax_env("3m", num_envs=128, seed=1),
        RewardSum(in_keys=[("agents", "reward")], out_keys=[("agents", "episode_reward")]),
    )
    random_play = episode_outcomes(random_env.rollout(100, break_when_any_done=False))
    assert random_play["won"].mean() <= 0.05
    names = ["mappo_smax_3m", "k2_mappo_smax_3m"]
    overrides = [
        "max_frames=300000",
        "eval.every_frames=0",
        "trainer.enable_progress_bar=false",
        "logger.tensorboard=null",
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: run_train(tmp_path / n, f"+experiment={n}", *overrides, timeout=1800), names))
    for name, result in zip(names, results, strict=True):
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["eval_win_rate"] >= 0.3, (name, summary["eval_win_rate"])
        assert summary["eval_return_mean"] > random_play["return"].mean() + 0.5, name

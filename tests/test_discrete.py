"""Discrete K-FACMAC / K-MADDPG (SMAC/SMAX, Appendix E.2) on the real SMAX env: K=1 is discrete FACMAC bit for bit,
level 2 is the hand-assembled cases loss, masks hold everywhere, GRU resets, padding, hard targets, ε (experiments
and tiny runs: test_discrete_runs.py)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.algorithms import make_algorithm
from kpg_lightning.algorithms.base import epsilon_at
from kpg_lightning.algorithms.discrete import (
    HIDDEN,
    LOGITS,
    NOISE,
    gumbel_one_hot,
    masked_logits,
)
from kpg_lightning.algorithms.facmac import DiscreteFacmac, FacmacConfig
from kpg_lightning.algorithms.maddpg import DiscreteMaddpg, MaddpgConfig
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.data import EpisodeAssembler
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.kpg import gradient_step, k_level_step
from kpg_lightning.module import KPGModule

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed (pip install 'kpg-lightning[smax]')"
    ),
]

OBS, ACTION, MASK = ("agents", "observation"), ("agents", "action"), ("agents", "action_mask")


def build(base, algorithm: str = "facmac", recurrent: bool = True, **cfg):
    """A tiny discrete FACMAC/MADDPG on ``base`` and the env with the transforms its policy needs."""
    config = FacmacConfig if algorithm == "facmac" else MaddpgConfig
    extra = {"mixer_embed_dim": 8, "mixer_hypernet_hidden": 8} if algorithm == "facmac" else {}
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16, 16], recurrent=recurrent, gru_hidden=16)
    alg = make_algorithm(config(**{**extra, **cfg}), EnvInfo.from_env(base), model)
    transforms = alg.env_transforms()
    return alg, (TransformedEnv(base, Compose(*transforms)) if transforms else base)


def rollout(alg, env, steps: int = 100):
    with torch.no_grad():
        return env.rollout(steps, alg.policy(), break_when_any_done=False)


@pytest.fixture(scope="module")
def episodes(smax):
    """Whole episodes of a recurrent policy's rollout, zero-padded to SMAX's 100 steps (the replay's unit)."""
    torch.manual_seed(0)
    alg, env = build(smax)
    td = rollout(alg, env)
    return td, EpisodeAssembler(100).add(td)


def module_for(alg, k: int, actor_optimizer: str = "auto") -> tuple[KPGModule, list[torch.optim.Optimizer]]:
    module = KPGModule(alg, KPGConfig(k=k, actor_optimizer=actor_optimizer))
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    return module, optimizers


# -- a plain discrete FACMAC, written out ------------------------------------------------------------------------
def raw_logits(body, obs):
    """Unmasked logits of a GRU actor over whole episodes from a zero state."""
    h0 = obs.new_zeros(obs.shape[0], obs.shape[2], body.gru_hidden)
    return body.sequence(obs, h0, torch.zeros(*obs.shape[:2], 1, dtype=torch.bool))


def mask_logits(logits, mask):
    """Unavailable actions to −inf; rows without available actions stay unmasked."""
    return logits.masked_fill(~(mask | ~mask.any(-1, keepdim=True)), float("-inf"))


def unroll(body, obs, mask):
    """Masked logits of a GRU actor over whole episodes from a zero state."""
    return mask_logits(raw_logits(body, obs), mask)


def logit_penalty(raw, td):
    """FACMAC's discrete actor penalty: mean(logits²) of the unmasked logits over the real steps' entries."""
    w = td["filled"].reshape(*raw.shape[:2], 1, 1).to(raw.dtype).expand_as(raw)
    return (raw.pow(2) * w).sum() / w.sum()


def straight_through(logits, noise):
    soft = (logits + noise).softmax(-1)
    return F.one_hot(soft.argmax(-1), soft.shape[-1]).float() + (soft - soft.detach())


def team_q(critic, mixer, obs, actions, state):
    return mixer(critic(torch.cat([obs, actions], dim=-1)), state)


def filled_mean(x, td):
    w = td["filled"].float()
    return (x * w).sum() / w.sum()


def plain_discrete_facmac_update(net, td, noise, actor_opt, critic_opt, updates: list[int]) -> None:
    """Discrete FACMAC's update on an episode batch: critic + mixer TD step, Gumbel-softmax actor step through the
    mixer, hard target copies every ``target_update_interval`` updates."""
    cfg, n_actions = net.cfg, net.info.action_dim
    obs, mask, state = td[OBS], td[MASK], td["state"]
    next_obs, next_mask, next_state = td["next", *OBS], td["next", *MASK], td["next", "state"]
    with torch.no_grad():
        seq, seq_mask = torch.cat([obs[:, :1], next_obs], 1), torch.cat([mask[:, :1], next_mask], 1)
        next_actions = F.one_hot(unroll(net.target_actor.body, seq, seq_mask)[:, 1:].argmax(-1), n_actions).float()
        next_q = team_q(net.target_critic, net.target_mixer, next_obs, next_actions, next_state)
        y = td["next", "agents", "reward"].mean(-2) + cfg.gamma * ~td["next", "terminated"] * next_q
    q_tot = team_q(net.critic, net.mixer, obs, F.one_hot(td[ACTION], n_actions).float(), state)
    critic_params = [*net.critic.parameters(), *net.mixer.parameters()]
    critic_opt.zero_grad()
    filled_mean((q_tot - y).pow(2), td).backward()
    torch.nn.utils.clip_grad_norm_(critic_params, cfg.grad_clip)
    critic_opt.step()
    raw = raw_logits(net.actor.body, obs)
    actions = straight_through(mask_logits(raw, mask), noise)
    loss = -filled_mean(team_q(net.critic, net.mixer, obs, actions, state), td) + cfg.action_penalty * logit_penalty(
        raw, td
    )
    actor_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(net.actor.parameters()), cfg.grad_clip)
    actor_opt.step()
    updates[0] += 1
    if updates[0] % cfg.target_update_interval == 0:
        for target, online in [
            (net.target_actor, net.actor),
            (net.target_critic, net.critic),
            (net.target_mixer, net.mixer),
        ]:
            target.load_state_dict(online.state_dict())


def gumbel(like: torch.Tensor) -> torch.Tensor:
    return -torch.empty_like(like).exponential_().log()


def test_k1_discrete_k_facmac_is_plain_discrete_facmac_bit_for_bit(smax, episodes):
    """GRU actor on episode replay, K = 1 (Adam) through the module: parameters, targets, optimizer state equal."""
    _, batch = episodes
    assert (~batch["filled"]).any() and batch["next", "terminated"].any()  # padding and battle ends both present
    alg, _ = build(smax, target_update="hard", target_update_interval=2)
    reference = copy.deepcopy(alg)
    module, (actor_opt, critic_opt) = module_for(alg, k=1)
    assert isinstance(actor_opt, torch.optim.Adam)
    ref_actor_opt = torch.optim.Adam(reference.actor.parameters(), lr=alg.cfg.actor_lr)
    ref_critic_opt = torch.optim.Adam(
        [*reference.critic.parameters(), *reference.mixer.parameters()], lr=alg.cfg.critic_lr
    )
    updates = [0]
    for seed in range(3):  # targets are copied at the second update
        torch.manual_seed(seed)
        module.update(batch.clone())
        torch.manual_seed(seed)
        noise = gumbel(batch[OBS].new_empty(*batch[OBS].shape[:-1], alg.info.action_dim))
        plain_discrete_facmac_update(reference, batch, noise, ref_actor_opt, ref_critic_opt, updates)
    ours, theirs = alg.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and int(ours.pop("target_updates")) == updates[0] == 3
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    for opt, ref in [(actor_opt, ref_actor_opt), (critic_opt, ref_critic_opt)]:
        for state, ref_state in zip(opt.state.values(), ref.state.values(), strict=True):
            assert all(torch.equal(state[k], ref_state[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_level_two_is_the_hand_assembled_cases_loss(smax, episodes):
    """K = 2: level 2's step follows Σ_i ∇ Q_tot(agent i live, the others' one-hots under the level-1 actor)."""
    _, batch = episodes
    alg, _ = build(smax, actor_lr=0.02)
    torch.manual_seed(0)
    td = alg.process_batch(batch.clone())
    noise, obs, mask, state, n = td[NOISE], td[OBS], td[MASK], td["state"], alg.info.n_agents
    start = copy.deepcopy(alg)

    def rmsprop_step(net, loss):
        opt = torch.optim.RMSprop(net.actor.parameters(), lr=net.cfg.actor_lr)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.actor.parameters()), net.cfg.grad_clip)
        opt.step()

    level1 = copy.deepcopy(start)  # level 1: FACMAC's joint objective from θ
    raw = raw_logits(level1.actor.body, obs)
    live = straight_through(mask_logits(raw, mask), noise)
    rmsprop_step(
        level1,
        -filled_mean(team_q(level1.critic, level1.mixer, obs, live, state), td)
        + alg.cfg.action_penalty * logit_penalty(raw, td),
    )
    with torch.no_grad():
        others = F.one_hot((unroll(level1.actor.body, obs, mask) + noise).argmax(-1), alg.info.action_dim).float()
        level0 = F.one_hot((unroll(start.actor.body, obs, mask) + noise).argmax(-1), alg.info.action_dim).float()
    assert (others != level0)[td["filled"].squeeze(-1)].any()  # level 1 changed some agents' actions
    level2 = copy.deepcopy(start)  # level 2: from θ again, agent i live, the others at their level-1 one-hots
    raw = raw_logits(level2.actor.body, obs)
    live = straight_through(mask_logits(raw, mask), noise)
    total = 0.0
    for i in range(n):
        joint = others.clone()
        joint[..., i, :] = live[..., i, :]
        total = total - filled_mean(team_q(level2.critic, level2.mixer, obs, joint, state), td)
    penalty = alg.cfg.action_penalty * logit_penalty(raw, td)
    rmsprop_step(level2, total + penalty)

    assert torch.equal(alg.level_outputs(td, 1).actions, level0)  # what a level hands on: exact hard one-hots
    opt = torch.optim.RMSprop(alg.actor_parameters(), lr=alg.cfg.actor_lr)
    stats = k_level_step(
        opt,
        2,
        lambda o: gradient_step(
            opt, alg.actor_loss(td, o), clip_grad_norm=alg.cfg.grad_clip, params=alg.actor_parameters()
        ),
        lambda level: alg.level_outputs(td, level),
        params=alg.actor_parameters(),
    )
    torch.testing.assert_close(stats.objective[1], float(total.detach()) / n + float(penalty), rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(alg.actor_parameters(), level2.actor.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_masked_actions_are_never_chosen():
    """Acting (ε = 1, ε = 0, greedy) and training's Gumbel one-hots pick available actions only, over many draws."""
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
    alg = make_algorithm(FacmacConfig(), info, ModelConfig(actor_hidden=[16], critic_hidden=[16]))
    batch = 2000
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
    for epsilon, mode in [
        (1.0, ExplorationType.RANDOM),
        (0.0, ExplorationType.RANDOM),
        (0.5, ExplorationType.DETERMINISTIC),
    ]:
        alg.acting.epsilon.fill_(epsilon)
        with set_exploration_type(mode), torch.no_grad():
            out = alg.policy()(td.clone())
        assert mask.gather(-1, out[ACTION].unsqueeze(-1)).all(), (epsilon, mode)
        greedy = out[LOGITS].argmax(-1)
        assert torch.isinf(out[LOGITS][~mask]).all()
        if mode is ExplorationType.DETERMINISTIC:
            assert torch.equal(out[ACTION], greedy)
        elif epsilon == 1:  # uniform over the available actions: the greedy one 1/(number available) of the time
            uniform = (1 / mask.sum(-1)).mean()
            assert abs((out[ACTION] == greedy).float().mean() - uniform) < 0.03
        else:  # Gumbel samples of softmax(masked logits), not the argmax
            assert (out[ACTION] != greedy).any()
    for _ in range(20):
        processed = alg.process_batch(td.clone())
        one_hot = alg.live_actions(processed)
        assert torch.equal(one_hot.sum(-1), torch.ones(batch, 3)) and not one_hot[~mask].any()
    logits = torch.randn(batch, 3, 8, requires_grad=True)
    actions = gumbel_one_hot(masked_logits(logits, mask), gumbel(logits))
    (grad,) = torch.autograd.grad((actions * torch.randn_like(actions)).sum(), logits)
    assert not grad[~mask].any() and grad[mask].abs().sum() > 0  # no gradient reaches unavailable actions


def test_gru_hidden_resets_at_episode_starts_and_training_reproduces_collection(smax):
    """Collection zeroes the GRU state where ``is_init``; unrolling the replayed episodes gives the same logits."""
    torch.manual_seed(1)
    alg, env = build(smax, algorithm="maddpg")
    td = rollout(alg, env, steps=60)
    done = td["next", "done"].squeeze(-1)[:, :-1].nonzero().tolist()
    assert done, "3m battles end within 60 steps"
    for b, t in done:
        assert td["is_init"][b, t + 1] and not td[HIDDEN][b, t + 1].any()  # fed zeros at the new episode
        assert td[HIDDEN][b, t].abs().sum() > 0  # ...and a live memory before it
    replayed = EpisodeAssembler(100).add(td)
    filled = replayed["filled"].squeeze(-1)
    with torch.no_grad():
        logits = alg.actor.sequence(replayed[OBS], replayed[MASK])
    torch.testing.assert_close(logits[filled], replayed[LOGITS][filled], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["facmac", "maddpg"])
def test_losses_ignore_padded_steps(smax, episodes, algorithm):
    """Whatever the zero padding holds, the TD loss, the actor losses and their gradients are the same."""
    _, batch = episodes
    alg, _ = build(smax, algorithm=algorithm)
    torch.manual_seed(0)
    td = alg.process_batch(batch.clone())
    junk = td.clone()
    pad = ~td["filled"].squeeze(-1)
    for key in junk.keys(True, True):
        if key == "filled":
            continue
        value = junk[key]
        if value.is_floating_point():
            value[pad] = torch.randn_like(value[pad])
        elif value.dtype == torch.bool:
            value[pad] = torch.rand(value[pad].shape) < 0.5
        else:
            value[pad] = torch.randint(0, alg.info.action_dim, value[pad].shape)
    with torch.no_grad():
        others = alg.level_outputs(td, 1)
    for loss in (lambda x: alg.critic_loss(x)[0], lambda x: alg.actor_loss(x, others)):
        params = [p for p in alg.parameters() if p.requires_grad]
        clean, dirty = loss(td), loss(junk)
        assert torch.equal(clean, dirty)
        grads = torch.autograd.grad(clean, params, allow_unused=True)
        for g, h in zip(grads, torch.autograd.grad(dirty, params, allow_unused=True), strict=True):
            assert (g is None and h is None) or torch.equal(g, h)
    assert not torch.equal(alg.critic_loss(td)[0], alg.critic_loss(td[:, :1])[0])  # the real steps do count


@pytest.mark.parametrize("algorithm", ["facmac", "maddpg"])
def test_hard_targets_copy_every_interval(smax, algorithm):
    alg, _ = build(smax, algorithm=algorithm, recurrent=False, target_update="hard", target_update_interval=3)
    assert isinstance(alg, DiscreteFacmac if algorithm == "facmac" else DiscreteMaddpg)
    targets = [target for target, _ in alg.target_pairs()]
    online = [source for _, source in alg.target_pairs()]
    assert all(torch.equal(t, p) for t, p in zip(targets, online, strict=True))
    for update in range(1, 8):
        before = [t.clone() for t in targets]
        with torch.no_grad():
            for p in online:
                p.add_(torch.randn_like(p))
        alg.update_targets()
        copied = update % 3 == 0
        assert all(torch.equal(t, p if copied else b) for t, p, b in zip(targets, online, before, strict=True))
    assert int(alg.state_dict()["target_updates"]) == 7  # the count is checkpointed


def test_epsilon_anneals_by_frames(smax):
    alg, _ = build(smax, recurrent=False)
    assert float(alg.acting.epsilon) == 0.5
    for frames, epsilon in [(0, 0.5), (25_000, 0.275), (50_000, 0.05), (10**6, 0.05)]:
        alg.exploration_step(frames)
        assert float(alg.acting.epsilon) == pytest.approx(epsilon)
    assert epsilon_at(10, 1.0, 0.0, 0) == 0.0


def test_maddpg_level_zero_is_the_current_actor_and_cases_are_one_pass(smax):
    """Discrete K-MADDPG's level 0 is the current actor's one-hots; the batched cases equal a loop over agents."""
    alg, env = build(smax, algorithm="maddpg", recurrent=False)
    with torch.no_grad():
        td = alg.process_batch(rollout(alg, env, steps=10).reshape(-1))
    with torch.no_grad():  # as the K-level engine calls it
        level0 = alg.level_outputs(td, 0)
    expected = F.one_hot((alg.actor.sequence(td[OBS], td[MASK]) + td[NOISE]).argmax(-1), alg.info.action_dim)
    assert torch.equal(level0, expected.float())
    others = level0.roll(1, dims=-1)  # some other one-hot actions
    grads = torch.autograd.grad(alg.actor_loss(td, others), alg.actor_parameters())
    total, n = 0.0, alg.info.n_agents
    for i in range(n):
        joint = others.clone()
        joint[:, i] = alg.live_actions(td)[:, i]
        total = total - alg.critic(td["state"], joint)[:, i].mean() / n
    for g, e in zip(grads, torch.autograd.grad(total, alg.actor_parameters()), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)

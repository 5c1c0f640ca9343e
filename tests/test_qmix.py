"""QMIX / VDN / IQL: double-Q targets over available actions, terminations, padding, mixers, hard targets,
masked ε-greedy acting and its schedule, the recurrent unroll against collection, tiny SMAX runs."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import compose
from tensordict import TensorDict
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.algorithms.qmix import QVALUE, IqlConfig, Qmix, QmixConfig, VdnConfig
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.configure import validate
from kpg_lightning.data import EpisodeAssembler
from kpg_lightning.envs.info import ACTION, OBS, EnvInfo
from kpg_lightning.envs.info import ACTION_MASK as MASK
from kpg_lightning.errors import ConfigError
from kpg_lightning.module import KPGModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
needs_smax = pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl not installed (pip install 'kpg-lightning[smax]')")

B, T, N, A, F, S = 2, 3, 2, 3, 4, 5
GAMMA, SCALE = 0.9, 10.0
INFO = EnvInfo(
    n_agents=N,
    obs_dim=F,
    action_dim=A,
    discrete=True,
    state_dim=S,
    action_low=None,
    action_high=None,
    has_action_mask=True,
    has_action_dim_mask=False,
)
TINY_MODEL = ModelConfig(actor_hidden=[8], recurrent=True, gru_hidden=6)


def episode_batch() -> TensorDict:
    """Two hand-made episodes ``[B=2, T=3]`` of N=2 agents with A=3 actions.

    Episode 0: three steps, a battle end (``terminated``) at t=2; agent 0 cannot take action 0 at t=1.
    Episode 1: two steps, a time-out (``truncated``: it bootstraps) at t=1; t=2 is padding (zeros).
    """
    g = torch.Generator().manual_seed(0)
    obs, state = torch.randn(B, T + 1, N, F, generator=g), torch.randn(B, T + 1, S, generator=g)  # o_0 .. o_T
    mask = torch.ones(B, T + 1, N, A, dtype=torch.bool)
    mask[0, 1, 0, 0] = False
    now = {"obs": obs[:, :T].clone(), "state": state[:, :T].clone(), "mask": mask[:, :T].clone()}
    nxt = {"obs": obs[:, 1:].clone(), "state": state[:, 1:].clone(), "mask": mask[:, 1:].clone()}
    for part in (now, nxt):  # padding; episode 1's true next observation at t=1 stays
        for value in part.values():
            value[1, 2] = 0
    reward = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]], [[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]])
    terminated = torch.tensor([[False, False, True], [False, False, False]]).unsqueeze(-1)
    done = torch.tensor([[False, False, True], [False, True, False]]).unsqueeze(-1)

    def agents(part: dict, **extra: torch.Tensor) -> TensorDict:
        return TensorDict({"observation": part["obs"], "action_mask": part["mask"], **extra}, batch_size=[B, T, N])

    action = torch.tensor([[[0, 1], [2, 2], [1, 0]], [[1, 1], [0, 2], [0, 0]]])
    return TensorDict(
        {
            "agents": agents(now, action=action),
            "state": now["state"],
            "is_init": torch.tensor([[True, False, False]] * B).unsqueeze(-1),
            "filled": torch.tensor([[True, True, True], [True, True, False]]).unsqueeze(-1),
            "next": TensorDict(
                {
                    "agents": agents(nxt, reward=reward.unsqueeze(-1)),
                    "state": nxt["state"],
                    "terminated": terminated,
                    "done": done,
                },
                batch_size=[B, T],
            ),
        },
        batch_size=[B, T],
    )


def build(cfg_class=QmixConfig, model: ModelConfig = TINY_MODEL, **cfg) -> Qmix:
    torch.manual_seed(0)
    cfg = {"gamma": GAMMA, "reward_scale": SCALE, "mixer_embed_dim": 4, "mixer_hypernet_hidden": 4, **cfg}
    return Qmix(cfg_class(**cfg), INFO, model)


def lookup_tables(alg: Qmix, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for the online and target networks: fixed Q tables ``[B, T+1, N, A]`` over the T+1 unroll.

    At the next step of (episode 0, t=0) agent 0's online values are [5, 1, 3] with action 0 unavailable, and the
    target's [10, 9, -1]: double-Q takes action 2 (value -1), the target max over available actions 9, and
    either rule without the mask 10."""
    g = torch.Generator().manual_seed(1)
    online, target = torch.randn(B, T + 1, N, A, generator=g), torch.randn(B, T + 1, N, A, generator=g)
    online[0, 1, 0], target[0, 1, 0] = torch.tensor([5.0, 1.0, 3.0]), torch.tensor([10.0, 9.0, -1.0])
    online.requires_grad_(True)
    monkeypatch.setattr(alg.q_net, "sequence", lambda obs, is_init: online)
    monkeypatch.setattr(alg.target_q_net, "sequence", lambda obs, is_init: target)
    return online, target


def next_values(online: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, double_q: bool) -> torch.Tensor:
    """Per-agent next values ``[B, T, N, 1]``, written out entry by entry."""
    out = torch.zeros(B, T, N, 1)
    for b in range(B):
        for t in range(T):
            for i in range(N):
                avail = [a for a in range(A) if mask[b, t, i, a]] or list(range(A))
                if double_q:
                    best = max(avail, key=lambda a: online[b, t + 1, i, a].item())
                    out[b, t, i, 0] = target[b, t + 1, i, best]
                else:
                    out[b, t, i, 0] = max(target[b, t + 1, i, a].item() for a in avail)
    return out


@pytest.mark.parametrize("double_q", [True, False])
def test_vdn_targets_over_available_next_actions(monkeypatch, double_q):
    alg = build(VdnConfig, double_q=double_q)
    td = episode_batch()
    online, target = lookup_tables(alg, monkeypatch)
    q_tot, y, filled = alg.td_terms(td)
    taken = online[:, :-1].gather(-1, td[ACTION].unsqueeze(-1))
    torch.testing.assert_close(q_tot, taken.sum(-2))  # VDN: Q_tot = Σ_i Q_i(o_i, a_i)
    nv = next_values(online.detach(), target, td["next", *MASK], double_q)
    reward, not_terminated = td["next", "agents", "reward"].mean(-2), ~td["next", "terminated"]
    torch.testing.assert_close(y, SCALE * reward + GAMMA * not_terminated * nv.sum(-2))
    agent0 = nv[0, 0, 0, 0].item()
    assert agent0 == (-1.0 if double_q else 9.0)  # never the unavailable action 0 (10 under the target)
    assert y[0, 2].item() == SCALE * 2.0  # terminated: no bootstrap
    assert y[1, 1].item() != SCALE * 0.5  # truncated (time-out): bootstraps
    assert filled.squeeze(-1).tolist() == [[True, True, True], [True, True, False]]


def test_iql_per_agent_targets_and_loss_over_filled_steps(monkeypatch):
    alg = build(IqlConfig)
    td = episode_batch()
    online, target = lookup_tables(alg, monkeypatch)
    q, y, filled = alg.td_terms(td)
    assert q.shape == y.shape == filled.shape == (B, T, N, 1)
    nv = next_values(online.detach(), target, td["next", *MASK], double_q=True)
    reward, not_terminated = td["next", "agents", "reward"], ~td["next", "terminated"].unsqueeze(-2)
    torch.testing.assert_close(y, SCALE * reward + GAMMA * not_terminated * nv)  # agent i's own reward
    assert y[0, 0, 0].item() != y[0, 0, 1].item()
    torch.testing.assert_close(q, online[:, :-1].gather(-1, td[ACTION].unsqueeze(-1)))
    loss, _ = alg.critic_loss(td)
    real = filled.squeeze(-1)
    torch.testing.assert_close(loss, (q - y).squeeze(-1)[real].pow(2).mean())


def test_qmix_mixes_with_the_online_mixer_on_s_and_the_target_mixer_on_next_s(monkeypatch):
    alg = build(QmixConfig, mixer_init_scale=None)
    with torch.no_grad():
        for p in alg.target_mixer.parameters():  # a target mixer that differs from the online one
            p.add_(0.5 * torch.randn_like(p))
    td = episode_batch()
    online, target = lookup_tables(alg, monkeypatch)
    q_tot, y, _ = alg.td_terms(td)
    taken = online[:, :-1].gather(-1, td[ACTION].unsqueeze(-1))
    torch.testing.assert_close(q_tot, alg.mixer(taken, td["state"]))
    nv = next_values(online.detach(), target, td["next", *MASK], double_q=True)
    next_tot = alg.target_mixer(nv, td["next", "state"])
    expected = SCALE * td["next", "agents", "reward"].mean(-2) + GAMMA * ~td["next", "terminated"] * next_tot
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("cfg_class", [QmixConfig, VdnConfig, IqlConfig])
def test_padded_steps_change_nothing(cfg_class):
    """The real GRU unrolled over the episodes: padding's content moves neither the loss nor its gradient."""
    alg = build(cfg_class, mixer_init_scale=None)

    def loss_and_grads(td: TensorDict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss, _ = alg.critic_loss(td)
        return loss.detach(), torch.autograd.grad(loss, alg.critic_parameters())

    td = episode_batch()
    loss, grads = loss_and_grads(td)
    noisy = td.clone()
    g = torch.Generator().manual_seed(2)
    for key in [OBS, ("next", *OBS), "state", ("next", "state"), ("next", "agents", "reward")]:
        noisy[key][1, 2] = torch.randn(noisy[key][1, 2].shape, generator=g)
    noisy[ACTION][1, 2], noisy[MASK][1, 2], noisy["next", *MASK][1, 2] = 2, True, True
    noisy["next", "terminated"][1, 2] = True
    loss_noisy, grads_noisy = loss_and_grads(noisy)
    assert torch.equal(loss, loss_noisy)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_noisy, strict=True))
    noisy["next", *OBS][1, 0] += 1.0  # a real step's content does count (o_1 enters the unroll as o'_0)
    assert not torch.equal(loss, loss_and_grads(noisy)[0])


def test_hard_target_copy_after_exactly_the_interval():
    """Through the module's value-based update (critic step, then ``update_targets``), interval 3."""
    alg = build(VdnConfig, target_update_interval=3, critic_lr=1e-2)
    module = KPGModule(alg, KPGConfig(k=1))
    optimizer = torch.optim.Adam(alg.critic_parameters(), lr=alg.cfg.critic_lr)
    module.optimizers = lambda: optimizer
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    initial = [p.clone() for p in alg.target_q_net.parameters()]
    td = episode_batch()
    for update in range(1, 7):
        module.update(td)
        online, target = list(alg.q_net.parameters()), list(alg.target_q_net.parameters())
        copied = all(torch.equal(p, q) for p, q in zip(online, target, strict=True))
        assert copied == (update % 3 == 0), update
        if update < 3:
            assert all(torch.equal(p, q) for p, q in zip(initial, target, strict=True))
    assert int(alg.target_updates) == 6 and module.train_steps == 6


def test_acting_never_picks_unavailable_actions():
    alg = build(QmixConfig, model=ModelConfig(actor_hidden=[16]))
    batch = 4000
    mask = torch.rand(batch, N, A) < 0.4
    mask[torch.arange(batch), :, torch.randint(A, (batch,))] = True
    td = TensorDict(
        {
            "agents": TensorDict(
                {"observation": 3 * torch.randn(batch, N, F), "action_mask": mask}, batch_size=[batch, N]
            )
        },
        batch_size=[batch],
    )
    alg.exploration_step(0)  # ε = 1: every action random
    for mode in (ExplorationType.DETERMINISTIC, ExplorationType.RANDOM):
        with set_exploration_type(mode), torch.no_grad():
            out = alg.policy()(td.clone())
        action = out[ACTION]
        assert mask.gather(-1, action.unsqueeze(-1)).all(), mode
        greedy = out[QVALUE].argmax(-1)  # the masked values: unavailable actions at the dtype's minimum
        agree = (action == greedy).float().mean().item()
        if mode is ExplorationType.DETERMINISTIC:
            assert agree == 1.0
        else:  # uniform among the available: agrees with greedy 1/|avail| of the time
            expected = (1.0 / mask.sum(-1).float()).mean().item()
            assert abs(agree - expected) < 0.03
    full = torch.ones(batch, N, A, dtype=torch.bool)
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        counts = torch.bincount(alg.policy()(td.set(MASK, full))[ACTION].flatten(), minlength=A)
    assert (counts.float() / counts.sum() - 1 / A).abs().max() < 0.02


def test_epsilon_schedule_follows_absolute_frames():
    alg = build(QmixConfig, epsilon_start=1.0, epsilon_end=0.05, epsilon_anneal_frames=1000)
    expected = {0: 1.0, 500: 0.525, 1000: 0.05, 5000: 0.05}
    for frames, eps in expected.items():
        alg.exploration_step(frames)
        assert alg.explore.eps.item() == pytest.approx(eps)
    resumed = build(QmixConfig, epsilon_start=1.0, epsilon_end=0.05, epsilon_anneal_frames=1000)
    resumed.exploration_step(250)  # a resumed run: ε from the frame count alone
    assert resumed.explore.eps.item() == pytest.approx(0.7625)
    assert build(QmixConfig, epsilon_anneal_frames=0).epsilon(0) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algorithm=qmix", "kpg.k=2"], "kpg.k"),
        (["algorithm=iql", "algorithm.mixer=sum"], "algorithm.mixer"),
        (["algorithm=vdn", "algorithm.epsilon_end=0.5", "algorithm.epsilon_start=0.1"], "algorithm.epsilon_end"),
        (["algorithm=qmix", "algorithm.target_update_interval=0"], "algorithm.target_update_interval"),
        (["algorithm=qmix", "env=vmas"], "algorithm.name"),  # continuous actions
    ],
)
def test_invalid_settings_name_the_key(overrides, key):
    cfg = compose(["env=smax", "kpg.k=1", *overrides])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@needs_smax
def test_training_unroll_reproduces_collection_q_values():
    """Episodes cut from a real SMAX rollout: the GRU unrolled from zeros over each episode gives the Q values the
    acting policy computed step by step with its carried hidden state."""
    from kpg_lightning.envs.smax import make_smax_env

    base = make_smax_env("3m", num_envs=4, seed=0)
    alg = Qmix(QmixConfig(), EnvInfo.from_env(base), TINY_MODEL)
    env = TransformedEnv(base, Compose(*alg.env_transforms()))
    with torch.no_grad():
        episodes = EpisodeAssembler(100).add(env.rollout(60, alg.policy(), break_when_any_done=False))
        obs = torch.cat([episodes[OBS][:, :1], episodes["next", *OBS]], dim=1)
        is_init = torch.cat([episodes["is_init"], torch.zeros_like(episodes["is_init"][:, :1])], dim=1)
        q = alg.q_net.sequence(obs, is_init)[:, :-1]
    assert episodes.shape[0] >= 4 and (episodes["filled"].sum((1, 2)) > 1).all()
    real = episodes["filled"].unsqueeze(-1) & episodes[MASK]  # collection stored the masked values
    torch.testing.assert_close(q[real], episodes[QVALUE][real])
    assert mask_respected(episodes)


def mask_respected(td: TensorDict) -> bool:
    return bool(td[MASK].gather(-1, td[ACTION].unsqueeze(-1))[td["filled"].squeeze(-1)].all())


SMAX_TINY = [
    "model.actor_hidden=[16]",
    "model.gru_hidden=16",
    "env.num_envs=8",
    "collector.frames_per_batch=256",
    "max_frames=768",
    "buffer.size=64",
    "buffer.batch_size=4",
    "buffer.updates_per_batch=2",
    "buffer.learning_starts=0",
    "algorithm.epsilon_anneal_frames=512",
    "algorithm.mixer_hypernet_hidden=8",
    "algorithm.mixer_embed_dim=8",
    "eval.episodes=4",
    "eval.absolute_episodes=4",
    "eval.every_frames=0",
    "checkpoint.every_frames=768",
    "trainer.enable_progress_bar=false",
    "logger.tensorboard=null",
    "logger.csv=null",
]


@needs_smax
@pytest.mark.parametrize("name", ["qmix", "vdn", "iql"])
def test_tiny_smax_run_writes_win_rate(tmp_path, name):
    from kpg_lightning.train import train

    summary = train([f"+experiment={name}_smax_3m", *SMAX_TINY], tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == (name, "smax/3m", 1, 768)
    assert 0.0 <= summary["eval_win_rate"] <= 1.0 and summary["train_steps"] > 0
    assert summary["actor_optimizer"] is None and summary["absolute_metric"] == "win_rate"  # value-based: no actor
    # the checkpointed replay holds whole padded episodes without the GRU states the loss recomputes
    (storage,) = (tmp_path / "run" / "checkpoints").glob("frames_*/replay_rank0/storage")
    stored = {path.relative_to(storage).as_posix() for path in storage.rglob("*.memmap")}
    assert "filled.memmap" in stored and "agents/observation.memmap" in stored
    assert not any("rnn_hidden" in key or "action_value" in key for key in stored), stored


@pytest.mark.parametrize("name", ["qmix_smax_3m", "vdn_smax_3m", "iql_smax_3m", "qmix_smac_mmm"])
def test_experiments_compose_and_validate(name):
    cfg = compose([f"+experiment={name}"])
    validate(cfg)
    assert cfg.algorithm.name == name.split("_")[0] and cfg.kpg.k == 1 and cfg.model.recurrent

"""COMIX: CEM maximises per agent inside the bounds, padded dims, the TD target, Polyak targets, a real run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import compose, run_train
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.algorithms.comix import Comix, ComixConfig, cem_maximize
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.configure import validate
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.errors import ConfigError
from kpg_lightning.module import KPGModule

_has_mamujoco = importlib.util.find_spec("gymnasium_robotics") is not None
needs_mamujoco = pytest.mark.skipif(not _has_mamujoco, reason="gymnasium-robotics (MaMuJoCo) not installed")

OBS, ACTION, DIM_MASK = ("agents", "observation"), ("agents", "action"), ("agents", "action_dim_mask")
LOW, HIGH = torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0], [0.4, 0.4, 0.4]])


@pytest.fixture(autouse=True)
def _mujoco_log_elsewhere(tmp_path, monkeypatch):
    """MuJoCo logs compiler warnings (HalfCheetah) to ./MUJOCO_LOG.TXT: keep that file out of the repo."""
    monkeypatch.chdir(tmp_path)


def _quadratic(best: torch.Tensor):
    """Q_i(a_i) = −‖a_i − a*_i‖² per entry: concave, maximised over a box at a* clipped into it."""
    return lambda action: -(action - best).pow(2).sum(-1, keepdim=True)


def _cem(best: torch.Tensor, low: torch.Tensor, high: torch.Tensor, iterations: int = 2):
    generator = torch.Generator().manual_seed(0)
    return cem_maximize(
        _quadratic(best), low, high, None, best.shape, samples=64, elites=6, iterations=iterations, generator=generator
    )


def test_cem_finds_the_maximiser_of_a_concave_q():
    """Per agent and sample: the default CEM (64 samples, 6 elites, 2 rounds) lands near a*; more rounds closer."""
    u = torch.rand(256, 2, 3, generator=torch.Generator().manual_seed(1))
    best = LOW + (HIGH - LOW) * (0.1 + 0.8 * u)  # inside each agent's box
    errors = []
    for iterations in (2, 6):
        action, value = _cem(best, LOW, HIGH, iterations)
        assert ((action >= LOW) & (action <= HIGH)).all()
        torch.testing.assert_close(value, _quadratic(best)(action))  # the value is the action's
        errors.append(((action - best).abs() / (HIGH - LOW)).mean())
    assert errors[0] < 0.06 and errors[1] < 0.01, errors  # measured 0.035 / 0.0013 (absolute)


def test_cem_clips_into_per_agent_bounds():
    """a* outside the box: CEM approaches a* clipped into each agent's own bounds and never leaves them."""
    low, high = LOW[:, :1], HIGH[:, :1]
    u = torch.rand(256, 2, 1, generator=torch.Generator().manual_seed(2))
    best = low + (high - low) * (3 * u - 1)  # a third below, a third inside, a third above the box
    action, _ = _cem(best, low, high)
    assert ((action >= low) & (action <= high)).all()
    error = (action - best.clamp(low, high)).abs() / (high - low)
    assert error.max() < 0.1 and error.mean() < 0.01, (error.max(), error.mean())  # measured 0.082 / 0.0065


def _small_comix(info: EnvInfo, **cfg) -> Comix:
    model = ModelConfig(critic_hidden=[32, 32])
    return Comix(ComixConfig(mixer_embed_dim=16, mixer_hypernet_hidden=16, **cfg), info, model)


@needs_mamujoco
def test_padded_action_dims_stay_at_fill_and_do_not_reach_q():
    """Humanoid 9|8: agent 1's 9th dim is padding; CEM keeps it at the box centre and Q ignores it."""
    from kpg_lightning.envs.mamujoco import make_mamujoco_env

    env = make_mamujoco_env("Humanoid", "9|8", max_steps=20, seed=0)
    alg = _small_comix(EnvInfo.from_env(env))
    td = env.rollout(8, break_when_any_done=False)
    mask = alg.dim_mask(td)
    padded = mask == 0
    assert padded[:, 1, 8].all() and padded.sum() == len(td)
    obs = td[OBS]
    action, value = alg.agent.maximize(obs, mask)
    centre = (alg.agent.low + alg.agent.high) / 2
    assert torch.equal(action[padded], centre.expand_as(action)[padded])
    assert (action[~padded] != centre.expand_as(action)[~padded]).all()  # the real dims are searched
    torch.testing.assert_close(value, alg.agent.q(obs, action, mask))
    moved = torch.where(padded, action + 5.0, action)
    assert torch.equal(alg.agent.q(obs, moved, mask), alg.agent.q(obs, action, mask))
    with set_exploration_type(ExplorationType.DETERMINISTIC):  # the acting policy: greedy = the CEM action
        torch.manual_seed(3)
        greedy = alg.policy()(td[0].clone())[ACTION]
    torch.manual_seed(3)
    torch.testing.assert_close(greedy, alg.agent.maximize(obs[0], mask[0])[0])
    assert greedy[1, 8] == centre[1, 8]
    with set_exploration_type(ExplorationType.RANDOM):  # exploring: Gaussian noise around it, inside the box
        torch.manual_seed(3)
        noisy = alg.policy()(td[0].clone())[ACTION]
    assert not torch.equal(noisy, greedy) and (noisy - greedy).abs().max() < 1.0
    assert ((noisy >= alg.agent.low) & (noisy <= alg.agent.high)).all()
    env.close()


class _StandInQ(torch.nn.Module):
    """Q_i(o_i, a_i) = Σ o_i − ‖a_i − 0.3‖² (the input is [o, a · mask]): max Σ o_i − 0.09 · (padded dims)."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.obs_dim = obs_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obs, action = x[..., : self.obs_dim], x[..., self.obs_dim :]
        return obs.sum(-1, keepdim=True) - (action - 0.3).pow(2).sum(-1, keepdim=True)


@pytest.mark.parametrize("mixer", ["vdn", "qmix"])
def test_td_target_and_loss_by_hand(mixer):
    """y = mean reward + γ(1 − terminated) Q̄_tot(s', max_a Q̄_i); terminated drops it; VDN sums; loss is MSE."""
    n, obs_dim, action_dim, state_dim, batch = 2, 4, 3, 5, 6
    info = EnvInfo(
        n_agents=n,
        obs_dim=obs_dim,
        action_dim=action_dim,
        discrete=False,
        state_dim=state_dim,
        action_low=-torch.ones(n, action_dim),
        action_high=torch.ones(n, action_dim),
        has_action_mask=False,
        has_action_dim_mask=True,
    )
    alg = _small_comix(info, mixer=mixer, cem_samples=256, cem_iterations=4)
    alg.target_agent.net = _StandInQ(obs_dim)
    dim_mask = torch.ones(batch, n, action_dim, dtype=torch.bool)
    dim_mask[:, 1, 2] = False  # agent 1's last dim is padding
    terminated = torch.tensor([False, True, False, True, False, False]).unsqueeze(-1)
    td = TensorDict(
        {
            OBS: torch.randn(batch, n, obs_dim),
            ACTION: torch.rand(batch, n, action_dim) * 2 - 1,
            DIM_MASK: dim_mask,
            "state": torch.randn(batch, state_dim),
            "next": {
                OBS: torch.randn(batch, n, obs_dim),
                "state": torch.randn(batch, state_dim),
                ("agents", "reward"): torch.randn(batch, n, 1),
                "terminated": terminated,
            },
        },
        batch_size=[batch],
    )
    nxt = td["next"]
    next_q = nxt[OBS].sum(-1, keepdim=True) - 0.09 * (~dim_mask).sum(-1, keepdim=True)  # [B, N, 1]
    with torch.no_grad():
        bootstrap = next_q.sum(-2) if mixer == "vdn" else alg.target_mixer(next_q, nxt["state"])
    reward = nxt["agents", "reward"].mean(-2)
    expected = reward + 0.99 * (~terminated) * bootstrap
    torch.manual_seed(5)
    target = alg.td_target(td)
    torch.testing.assert_close(target, expected, atol=2e-3, rtol=0)
    assert torch.equal(target[terminated.squeeze(-1)], reward[terminated.squeeze(-1)])
    torch.manual_seed(5)  # the same CEM draws, so the same target
    loss, metrics = alg.critic_loss(td)
    q = alg.agent.net(torch.cat([td[OBS], td[ACTION] * dim_mask], dim=-1))
    q_tot = q.sum(-2) if mixer == "vdn" else alg.mixer(q, td["state"])
    torch.testing.assert_close(loss, F.mse_loss(q_tot, target))
    torch.testing.assert_close(metrics["target_mean"], target.mean())
    grads = torch.autograd.grad(loss, alg.critic_parameters(), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[: len(list(alg.agent.parameters()))])


def _random_info() -> EnvInfo:
    return EnvInfo(
        n_agents=3,
        obs_dim=4,
        action_dim=2,
        discrete=False,
        state_dim=6,
        action_low=-torch.ones(3, 2),
        action_high=torch.ones(3, 2),
        has_action_mask=False,
        has_action_dim_mask=False,
    )


def test_polyak_targets_and_the_module_update():
    """One Adam over critic + mixer; an update moves them, then the targets by τ toward them (lerp)."""
    alg = _small_comix(_random_info(), tau=0.05)
    module = KPGModule(alg, KPGConfig(k=1))
    (opt,) = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in alg.critic_parameters()}
    assert not {id(p) for p in alg.critic_parameters()} & {
        id(p) for m in (alg.target_agent, alg.target_mixer) for p in m.parameters()
    }
    module.optimizers = lambda: opt
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    batch = 16
    td = TensorDict(
        {
            OBS: torch.randn(batch, 3, 4),
            ACTION: torch.rand(batch, 3, 2) * 2 - 1,
            "state": torch.randn(batch, 6),
            "next": {
                OBS: torch.randn(batch, 3, 4),
                "state": torch.randn(batch, 6),
                ("agents", "reward"): torch.randn(batch, 3, 1),
                "terminated": torch.zeros(batch, 1, dtype=bool),
            },
        },
        batch_size=[batch],
    )
    online_before = [p.detach().clone() for p in alg.critic_parameters()]
    targets_before = [p.clone() for m in (alg.target_agent, alg.target_mixer) for p in m.parameters()]
    metrics = module.update(td)
    assert module.train_steps == 1 and {"critic_loss", "q_tot_mean", "target_mean"} <= metrics.keys()
    online = [p.detach() for p in alg.critic_parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(online, online_before, strict=True))
    targets = [p for m in (alg.target_agent, alg.target_mixer) for p in m.parameters()]
    for target, before, source in zip(targets, targets_before, online, strict=True):
        torch.testing.assert_close(target, before + 0.05 * (source - before))


def test_acting_is_reproducible_under_the_global_seed():
    """CEM draws from torch's global RNG: the same seed gives the same actions, another seed others."""
    alg = _small_comix(_random_info())
    td = TensorDict({OBS: torch.randn(5, 3, 4)}, batch_size=[5])
    actions = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        with set_exploration_type(ExplorationType.RANDOM):
            actions.append(alg.policy()(td.clone())[ACTION])
    assert torch.equal(actions[0], actions[1]) and not torch.equal(actions[0], actions[2])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.mixer=qmix_nonmonotonic", "algorithm.mixer"),
        ("algorithm.cem_elites=1", "algorithm.cem_elites"),
        ("algorithm.cem_elites=65", "algorithm.cem_elites"),
        ("algorithm.cem_iterations=0", "algorithm.cem_iterations"),
        ("kpg.k=2", "kpg.k"),
    ],
)
def test_invalid_options_are_refused(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(["+experiment=comix_halfcheetah", override]))


def test_experiments_mirror_facmac():
    for task, scenario in (("halfcheetah", "HalfCheetah"), ("walker", "Walker2d")):
        comix, facmac = compose([f"+experiment=comix_{task}"]), compose([f"+experiment=facmac_{task}"])
        validate(comix)
        assert (comix.algorithm.name, comix.kpg.k, comix.env.scenario, comix.env.agent_conf) == (
            "comix",
            1,
            scenario,
            "2x3",
        )
        for group in ("env", "collector", "buffer", "eval"):
            assert comix[group] == facmac[group], group
        assert comix.max_frames == facmac.max_frames == 2_000_000
        assert comix.model.critic_hidden == [400, 300]
        algo = comix.algorithm
        assert (
            algo.critic_lr,
            algo.gamma,
            algo.tau,
            algo.noise_sigma,
            algo.cem_samples,
            algo.cem_elites,
            algo.cem_iterations,
            algo.mixer,
        ) == (1e-3, 0.99, 0.001, 0.1, 64, 6, 2, "qmix")


TINY_MUJOCO = [
    "model.critic_hidden=[32,32]",
    "env.max_steps=100",
    "max_frames=2000",
    "collector.init_random_frames=500",
    "buffer.learning_starts=500",
    "buffer.size=5000",
    "buffer.batch_size=32",
    "algorithm.cem_samples=16",
    "algorithm.cem_elites=4",
    "eval.every_frames=1000",
    "eval.episodes=2",
    "eval.absolute_episodes=2",
    "checkpoint.every_frames=100000",
    "trainer.enable_progress_bar=false",
    "logger.tensorboard=null",
]


@needs_mamujoco
def test_tiny_halfcheetah_run_writes_summary(tmp_path):
    result = run_train(tmp_path / "run", "+experiment=comix_halfcheetah", *TINY_MUJOCO, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == (
        "comix",
        "mamujoco/HalfCheetah-2x3",
        1,
        2000,
    )
    assert summary["train_steps"] == 151 * 10  # batches of 10 frames at 500, 510, ..., 2000, 10 updates each
    assert [h["frames"] for h in summary["eval_return_history"]] == [0, 1000, 2000]
    assert all(abs(h["return_mean"]) < 1e4 for h in summary["eval_return_history"])
    assert summary["actor_optimizer"] is None and len(summary["absolute_returns"]) == 2  # the agent is the policy

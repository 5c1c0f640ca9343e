"""POLA on MAPPO's machinery: no look-ahead is MAPPO bit for bit, the look-ahead shapes (its gradient flows through the
others' learning), the config refuses what it cannot run, and a tiny SMAX 3m run writes its win rate."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from conftest import compose, run_train
from omegaconf import OmegaConf
from tensordict import TensorDict
from test_mappo import SMAX_TINY, assert_same_training_state, engine_update, rollout
from torchrl.envs import Compose, EnvBase, TransformedEnv

from kpg_lightning.algorithms import make_algorithm
from kpg_lightning.algorithms.mappo import Mappo, MappoConfig
from kpg_lightning.algorithms.pola import ANCHOR_LOGITS, ANCHOR_LOGP, Pola, PolaConfig
from kpg_lightning.config import ModelConfig
from kpg_lightning.configure import validate
from kpg_lightning.envs.info import ACTION, EnvInfo
from kpg_lightning.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
needs_smax = pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl not installed (pip install 'kpg-lightning[smax]')")


def build(base, cls=Pola, recurrent: bool = False, **cfg) -> tuple[Mappo, EnvBase]:
    config = (PolaConfig if cls is Pola else MappoConfig)(**cfg)
    model = ModelConfig(actor_hidden=[16, 16], critic_hidden=[16, 16], recurrent=recurrent, gru_hidden=8)
    alg = cls(config, EnvInfo.from_env(base), model)
    transforms = alg.env_transforms()
    return alg, (TransformedEnv(base, Compose(*transforms)) if transforms else base)


@pytest.fixture(scope="module")
def batch(smax) -> tuple[Pola, TensorDict]:
    """A tiny recurrent POLA and one SMAX 3m rollout of it (20 steps x 4 battles)."""
    torch.manual_seed(0)
    alg, env = build(smax, recurrent=True)
    return alg, rollout(alg, env, steps=20)


@needs_smax
@pytest.mark.parametrize("off", [{"inner_steps": 0}, {"lookahead_lr": 0.0}], ids=["inner_steps=0", "lookahead_lr=0"])
def test_without_look_ahead_pola_is_mappo_bit_for_bit(batch, off):
    """No look-ahead and no outer KL: every θ'_j is θ⁰, the others' factor is exactly 1 — MAPPO's update (critic,
    actor epochs x minibatches, optimizer states), through the real engine."""
    base, td = batch
    pola = copy.deepcopy(base)
    pola.cfg = PolaConfig(outer_kl=0.0, **off)
    mappo = Mappo(MappoConfig(), pola.info, pola.model_cfg)
    mappo.load_state_dict(pola.state_dict())
    torch.manual_seed(1)
    _, opts = engine_update(pola, td.clone(), k=1)
    torch.manual_seed(1)
    _, mappo_opts = engine_update(mappo, td.clone(), k=1)
    assert_same_training_state(pola, opts, mappo, mappo_opts)
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), pola.parameters(), strict=True))


@needs_smax
def test_look_ahead_shapes_through_the_others_learning(batch):
    """With a look-ahead the loss depends on the live θ through the others' inner steps: its gradient differs from
    the same loss with the look-ahead detached (no shaping), and the update differs from MAPPO's."""
    base, td = batch
    alg = copy.deepcopy(base)
    alg.cfg = PolaConfig(inner_steps=1, lookahead_lr=1.0, inner_kl=0.5, outer_kl=0.0)
    td = alg.process_batch(td.clone())
    anchor = [p.detach().clone() for p in alg.actor_parameters()]
    with torch.no_grad():
        dist = alg.distribution(td)
        td.set(ANCHOR_LOGITS, dist.logits)
        td.set(ANCHOR_LOGP, dist.log_prob(td.get(ACTION)))
    params = alg.actor_parameters()
    shaped = torch.autograd.grad(alg.pola_loss(td, anchor), params)
    # the same loss with the others' look-ahead held fixed at its value: no gradient through their learning
    shaping = {}
    original = alg._shaping

    def held(*args, **kwargs):
        value = original(*args, **kwargs).detach()
        shaping[len(shaping)] = value
        return value

    alg._shaping = held
    unshaped = torch.autograd.grad(alg.pola_loss(td, anchor), params)
    assert all(v.abs().max() > 0 for v in shaping.values())  # the look-ahead moved the others' log-probs
    difference = sum(float((a - b).norm()) for a, b in zip(shaped, unshaped, strict=True))
    assert difference > 1e-4 * sum(float(g.norm()) for g in shaped)


@needs_smax
def test_pola_update_runs_through_the_engine(batch):
    base, td = batch
    alg = copy.deepcopy(base)
    module, _ = engine_update(alg, td.clone(), k=1)
    stats = module.record.levels[0]
    assert stats.levels_run == 1 and torch.isfinite(torch.tensor(stats.objective)).all()
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), alg.parameters(), strict=True))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("kpg.k=2", "kpg.k=2"),
        ("kpg.scope=step", "kpg.scope='step'"),
        ("algorithm.inner_steps=-1", "algorithm.inner_steps=-1"),
        ("algorithm.outer_steps=0", "algorithm.outer_steps=0"),
        ("algorithm.lookahead_lr=-0.1", "algorithm.lookahead_lr=-0.1"),
        ("algorithm.outer_kl=-0.5", "algorithm.outer_kl=-0.5"),
    ],
)
def test_bad_config_is_one_line(override, key):
    cfg = compose(["+experiment=pola_smax_3m", override])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{key} is not allowed")


def test_pola_refuses_continuous_actions():
    with pytest.raises(ConfigError, match=r"^algorithm.name='pola' is not allowed: an algorithm for continuous"):
        validate(compose(["algorithm=pola", "kpg.k=1"]))


@needs_smax
def test_experiment_validates_and_builds_pola(smax):
    """The fast cover of the tiny run's path: the experiment's config validates and the registry builds POLA."""
    cfg = compose(["+experiment=pola_smax_3m"])
    validate(cfg)
    alg = make_algorithm(OmegaConf.to_object(cfg.algorithm), EnvInfo.from_env(smax), OmegaConf.to_object(cfg.model))
    assert type(alg) is Pola and alg.cfg == PolaConfig() and alg.model_cfg.recurrent


@pytest.mark.slow  # ~70 s on a busy 2-core machine; the engine update and the config/registry tests cover the path
@needs_smax
def test_tiny_smax_run_writes_win_rate(tmp_path):
    tiny = ["algorithm.inner_steps=1", *SMAX_TINY]
    result = run_train(tmp_path / "run", "+experiment=pola_smax_3m", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["algorithm"], summary["env"], summary["k"], summary["frames"]) == ("pola", "smax/3m", 1, 512)
    assert 0.0 <= summary["eval_win_rate"] <= 1.0 and summary["train_steps"] == 2

"""No host synchronisation in the update: one ``KPGModule.update`` reads no tensor on the host (no ``item``,
``float``, ``int``, ``bool`` or ``tolist``), for every algorithm family and K = 1, 2; the logged step reads the
step's numbers once, as Python floats."""

from __future__ import annotations

import math
import sys
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from conftest import needs_vmas
from test_qmix import INFO, episode_batch

from kpg_lightning.algorithms import make_algorithm
from kpg_lightning.algorithms.facmac import FacmacConfig
from kpg_lightning.algorithms.maddpg import MaddpgConfig
from kpg_lightning.algorithms.mappo import MappoConfig
from kpg_lightning.algorithms.qmix import QmixConfig
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.kpg import StepRecord
from kpg_lightning.module import KPGModule

TANH_NORMAL = "torchrl.modules.distributions.continuous:"
READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist")


@contextmanager
def counting_host_reads():
    """Counts every host read of a tensor's value, by method and by caller. Reads from inside ``torch.optim`` are
    not counted: eager optimizers keep their step counters on the host by design (``capturable=False``)."""
    counts: Counter[str] = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if not module.startswith("torch.optim"):
                counts[f"{name} from {module}:{caller.f_lineno}"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in saved.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def _module(alg, k: int, **kpg) -> KPGModule:
    module = KPGModule(alg, KPGConfig(k=k, **kpg))
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers if alg.has_actor else optimizers[0]
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    return module


def _vmas_batch(alg, env, steps: int = 10):
    from torchrl.envs import Compose, TransformedEnv

    transforms = alg.env_transforms()
    env = TransformedEnv(env, Compose(*transforms)) if transforms else env
    with torch.no_grad():
        return env.rollout(steps, alg.policy(), break_when_any_done=False)


def _continuous(name: str):
    from kpg_lightning.envs.vmas import make_vmas_env

    env = make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16])
    config = {"maddpg": MaddpgConfig(), "facmac": FacmacConfig(mixer_embed_dim=8, mixer_hypernet_hidden=8)}
    config["mappo"] = MappoConfig(epochs=2, minibatches=2)
    alg = make_algorithm(config[name], EnvInfo.from_env(env), model)
    td = _vmas_batch(alg, env)
    return alg, (td if name == "mappo" else td.reshape(-1))


def _episodes(name: str):
    model = ModelConfig(actor_hidden=[8], critic_hidden=[8], recurrent=True, gru_hidden=6)
    extra = {"mixer_embed_dim": 4, "mixer_hypernet_hidden": 4}
    config = {"qmix": QmixConfig(**extra), "discrete_facmac": FacmacConfig(**extra)}[name]
    return make_algorithm(config, INFO, model), episode_batch()


CASES = [
    pytest.param("maddpg", {}, marks=needs_vmas, id="maddpg"),
    pytest.param("facmac", {}, marks=needs_vmas, id="facmac"),
    pytest.param("mappo", {"scope": "update"}, marks=needs_vmas, id="mappo-update"),
    pytest.param("mappo", {"scope": "step"}, marks=needs_vmas, id="mappo-step"),
    pytest.param("discrete_facmac", {}, id="discrete-facmac-gru"),
    pytest.param("qmix", {}, id="qmix"),
]


def _build(name: str):
    return _episodes(name) if name in ("qmix", "discrete_facmac") else _continuous(name)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize(("name", "kpg"), CASES)
def test_an_update_reads_nothing_on_the_host(name, kpg, k):
    alg, td = _build(name)
    module = _module(alg, k, **kpg)
    module.update(td.clone())  # warm: optimizer state exists, lazy initialisations done
    module.record = StepRecord()
    with counting_host_reads() as counts:
        module.update(td.clone())
        module.update(td.clone())
    # TorchRL's TanhNormal checks its bounds on the host each time it is built (continuous MAPPO's distribution):
    # the one read left, outside this project
    left = {key: n for key, n in counts.items() if not key.split(" from ")[1].startswith(TANH_NORMAL)}
    assert not left, (sum(counts.values()), dict(counts))
    assert module.train_steps == 3


@needs_vmas
def test_the_logged_step_reads_the_numbers_once_as_floats():
    alg, td = _build("maddpg")
    module = _module(alg, 2)
    module.record = StepRecord()
    metrics = [module.update(td.clone()) for _ in range(2)]
    stats = module.record.levels
    pending = [stats[0].pending_objective[0], stats[1].pending_delta[1], metrics[1]["critic_loss"]]
    assert all(isinstance(value, torch.Tensor) for value in pending)  # still on the device after the updates
    module.record.losses = {key: [m[key] for m in metrics] for key in metrics[0]}
    with counting_host_reads() as counts:
        module.record.materialize()
    assert sum(counts.values()) == 1, dict(counts)  # one transfer for the whole step
    losses, stats = module.record.losses, module.record.levels
    assert all(type(value) is float and math.isfinite(value) for value in losses.values())
    assert losses["critic_loss"] == pytest.approx(sum(float(m["critic_loss"]) for m in metrics) / 2, rel=0, abs=0)
    for s in stats:
        assert all(type(v) is float for v in (*s.objective, *s.level_delta, *s.step_norm))
    assert stats[0].objective[0] == float(pending[0]) and stats[1].level_delta[1] == float(pending[1])
    assert losses["actor_loss"] == (stats[0].objective[-1] + stats[1].objective[-1]) / 2

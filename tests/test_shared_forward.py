"""The shared live forward: one actor (and live-critic) forward per K-level step gives every level exactly the update
it gets when each level runs its loss from scratch, while the actor runs K times instead of 2K."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from conftest import needs_vmas

from kpg_lightning.algorithms import make_algorithm
from kpg_lightning.algorithms.facmac import Facmac, FacmacConfig
from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig
from kpg_lightning.config import KPGConfig, ModelConfig
from kpg_lightning.envs.info import EnvInfo
from kpg_lightning.kpg import gradient_step, k_level_step, shared_graph
from kpg_lightning.module import KPGModule, frozen

needs_mamujoco = pytest.mark.skipif(
    importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics (MaMuJoCo) not installed"
)
needs_smax = pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed")


def _module(alg, k: int) -> tuple[KPGModule, torch.optim.Optimizer]:
    module = KPGModule(alg, KPGConfig(k=k))
    actor_opt, critic_opt = module.configure_optimizers()
    module.optimizers = lambda: (actor_opt, critic_opt)
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    return module, actor_opt


def _from_scratch(alg, opt, k: int, td):
    """The K levels with every level's loss computed from scratch (its own actor and critic forwards)."""
    params, clip = alg.actor_parameters(), alg.cfg.grad_clip

    def level_update(others):
        return gradient_step(opt, alg.actor_loss(td, others), clip_grad_norm=clip, params=params)

    with frozen(alg.critic_parameters()):
        return k_level_step(opt, k, level_update, lambda level: alg.level_outputs(td, level), params=params)


def _count_actor_forwards(alg) -> list[int]:
    calls = [0]
    body = alg.actor.body if hasattr(alg.actor, "body") else alg.actor.module[0]
    body = getattr(body, "embed", body)  # a GRU actor's unroll embeds every step in one call
    body.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _assert_same_levels(alg, td, k: int, updates: int = 2) -> None:
    """Through the module's K-level step and from scratch: bitwise the same actor, optimizer state and objectives,
    over ``updates`` consecutive updates (the second starts from a warm RMSProp state)."""
    reference = copy.deepcopy(alg)
    module, opt = _module(alg, k)
    ref_opt = torch.optim.RMSprop(reference.actor_parameters(), lr=alg.cfg.actor_lr, foreach=True)
    assert isinstance(opt, torch.optim.RMSprop)
    forwards = _count_actor_forwards(alg)
    for _ in range(updates):
        with frozen(alg.critic_parameters()):
            ours = module.k_levels(td, opt, alg.actor_parameters())
        theirs = _from_scratch(reference, ref_opt, k, td)
        assert ours.objective == theirs.objective and ours.level_delta == theirs.level_delta
    assert forwards[0] == updates * k  # the live forward once, then the level outputs of levels 1..K-1
    for a, b in zip(alg.actor_parameters(), reference.actor_parameters(), strict=True):
        assert torch.equal(a, b)
    for state, ref_state in zip(opt.state.values(), ref_opt.state.values(), strict=True):
        assert torch.equal(state["square_avg"], ref_state["square_avg"]) and state["step"] == ref_state["step"]
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in alg.actor_parameters())


@needs_mamujoco
@pytest.mark.parametrize("share_params", [True, False])
def test_facmac_levels_are_unchanged_by_the_shared_forward(share_params, tmp_path, monkeypatch):
    from kpg_lightning.envs.mamujoco import make_mamujoco_env

    monkeypatch.chdir(tmp_path)  # MuJoCo's compiler log
    torch.manual_seed(0)
    env = make_mamujoco_env("Walker2d", "2x3", max_steps=20, seed=0)
    model = ModelConfig(actor_hidden=[32, 32], critic_hidden=[32, 32], share_params=share_params)
    alg = Facmac(
        FacmacConfig(mixer_embed_dim=16, mixer_hypernet_hidden=16, actor_lr=1e-2), EnvInfo.from_env(env), model
    )
    td = env.rollout(64, break_when_any_done=False)
    env.close()
    _assert_same_levels(alg, td, k=3)


@needs_vmas
@pytest.mark.parametrize(("share_params", "critic"), [(True, "per_agent"), (False, "per_agent"), (True, "team")])
def test_maddpg_levels_are_unchanged_by_the_shared_forward(share_params, critic):
    from kpg_lightning.envs.vmas import make_vmas_env

    torch.manual_seed(0)
    env = make_vmas_env("balance", num_envs=4, max_steps=10, seed=0)
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16], share_params=share_params)
    alg = Maddpg(MaddpgConfig(actor_lr=1e-2, critic=critic), EnvInfo.from_env(env), model)
    with torch.no_grad():
        td = alg.process_batch(env.rollout(8, alg.policy(), break_when_any_done=False).reshape(-1))
    _assert_same_levels(alg, td, k=3)


@needs_smax
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    ("algorithm", "recurrent", "critic"),
    [("facmac", True, None), ("maddpg", False, "per_agent"), ("maddpg", True, "team")],
)
def test_discrete_levels_are_unchanged_by_the_shared_forward(smax, algorithm, recurrent, critic):
    """Discrete actors: the GRU is unrolled once per K-level step, with the update's one Gumbel noise draw."""
    from torchrl.envs import Compose, TransformedEnv

    from kpg_lightning.data import EpisodeAssembler

    torch.manual_seed(0)
    config = FacmacConfig if algorithm == "facmac" else MaddpgConfig
    extra = {"mixer_embed_dim": 8, "mixer_hypernet_hidden": 8} if algorithm == "facmac" else {"critic": critic}
    model = ModelConfig(actor_hidden=[16], critic_hidden=[16, 16], recurrent=recurrent, gru_hidden=16)
    alg = make_algorithm(config(actor_lr=1e-2, **extra), EnvInfo.from_env(smax), model)
    transforms = alg.env_transforms()
    env = TransformedEnv(smax, Compose(*transforms)) if transforms else smax
    with torch.no_grad():
        td = env.rollout(100, alg.policy(), break_when_any_done=False)
    td = EpisodeAssembler(100).add(td) if recurrent else td.reshape(-1)
    td = alg.process_batch(td)  # draws the update's Gumbel noise
    _assert_same_levels(alg, td, k=2 if recurrent else 3)


def test_shared_graph_survives_in_place_parameter_changes():
    """Outside the context a changed weight breaks the recorded graph; inside, the graph keeps the recorded values."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 3)
    with shared_graph(list(net.parameters())):
        y = net(x).sum()
    expected = torch.autograd.grad(y, list(net.parameters()), retain_graph=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    again = torch.autograd.grad(y, list(net.parameters()), retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
    plain = net(x).sum()
    with torch.no_grad():
        net[2].weight.mul_(2.0)  # saved by the last layer for the gradient of its input
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        plain.backward()


def test_shared_graph_frees_its_tensors():
    """Nothing recorded inside the context outlives the graph: a saved output (tanh saves its own) must not keep
    its grad_fn alive through the saved copy, a reference cycle through C++ that garbage collection cannot free
    (it held a whole replay buffer per run)."""
    import gc
    import weakref

    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    hidden = []
    net[1].register_forward_hook(lambda _m, _inputs, out: hidden.append(weakref.ref(out)))
    with shared_graph(list(net.parameters())):
        loss = net(torch.randn(5, 3)).sum()
    loss.backward(retain_graph=True)
    del loss
    gc.collect()
    assert hidden[0]() is None

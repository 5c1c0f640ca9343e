"""Bad configuration fails before any environment starts, with one line naming the key and what is allowed."""

import importlib.util

import pytest
import torch
from conftest import compose

from kpg_lightning.configure import validate
from kpg_lightning.envs.registry import make_env
from kpg_lightning.errors import ConfigError
from kpg_lightning.train import precheck

HAS_MUJOCO = importlib.util.find_spec("gymnasium_robotics") is not None


def first_error(overrides: list[str]) -> str | None:
    """What ``python -m kpg_lightning.train <overrides>`` reports before starting, or None."""
    message = precheck(overrides)
    if message:
        return message
    cfg = compose(overrides)
    try:
        validate(cfg)
        make_env(cfg.env, seed=0)  # names are checked before any simulator is created
    except ConfigError as exc:
        return str(exc)
    return None


CASES = [
    (["kpg.k=0"], "kpg.k", "integer >= 1"),
    (["kpg.k=abc"], "kpg.k", "could not be converted to Integer"),
    (["kpg.kk=1"], "kpg.kk", "not in 'KPGConfig'"),
    (["foo=1"], "foo", "not in 'Config'"),
    (["algorithm=nope"], "algorithm/nope", "Available options in 'algorithm': "),
    (["env=nope"], "env/nope", "Available options in 'env': "),
    (["env.scenario=nope"], "env.scenario", "valid: "),
    (["max_frames=-1"], "max_frames", "a number > 0"),
    (["kpg.adaptive_tol=0"], "kpg.adaptive_tol", "null or a number > 0"),
    (["kpg.actor_optimizer=lbfgs"], "kpg.actor_optimizer", "one of auto, rmsprop, adam, sgd"),
    (["algorithm.actor_lr=0"], "algorithm.actor_lr", "a number > 0"),
    (["algorithm.gamma=1.5"], "algorithm.gamma", "a number in (0, 1]"),
    (["buffer.batch_size=0"], "buffer.batch_size", "a number > 0"),
    (["collector.frames_per_batch=0"], "collector.frames_per_batch", "a number > 0"),
    (["model.activation=swish"], "model.activation", "one of relu, tanh"),
    (["model.actor_hidden=[64,-1]"], "model.actor_hidden", "positive layer sizes"),
    (["trainer.strategy=nope"], "trainer.strategy", "one of auto, ddp"),
    (["trainer.precision=16-mixed"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.precision=16"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.precision=64-true"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.nosuchflag=1"], "trainer.nosuchflag", "not in 'TrainerConfig'"),
    (["on_nonfinite=ignore"], "on_nonfinite", "stop or skip"),
    (["env=smax", "algorithm=comix"], "algorithm.name", "an algorithm for discrete actions"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last", "a number > 0"),
    (["eval.episodes=0"], "eval.episodes", "a number > 0"),
    (["eval.max_steps=0"], "eval.max_steps", "null or an integer > 0"),
    (["buffer.episode_length=0"], "buffer.episode_length", "null or an integer > 0"),
    (["env.device=gpu"], "env.device", "auto, cpu, cuda or cuda:N"),
    (["buffer.device=cuda0"], "buffer.device", "auto, cpu, cuda or cuda:N"),
    (["env=smax", "algorithm=mappo", "env.device=cuda"], "env.device", "auto or cpu for smax"),
    (["env=mamujoco", "algorithm=facmac", "env.device=cuda:0"], "env.device", "auto or cpu for mamujoco"),
    (["resume=/no/such/run"], "resume", "no such run directory or checkpoint"),
    (["algorithm.tau=0"], "algorithm.tau", "a number in (0, 1]"),
    (["algorithm.critic=central"], "algorithm.critic", "one of per_agent, team"),
    (
        ["model.recurrent=true"],
        "model.recurrent",
        "false for maddpg with continuous actions (recurrent actors: mappo, ippo)",
    ),
    (["algorithm=facmac", "env=mamujoco", "algorithm.mixer=qmax"], "algorithm.mixer", "one of qmix, "),
    (
        ["algorithm=facmac", "env=mamujoco", "algorithm.mixer_hypernet_hidden=0"],
        "algorithm.mixer_hypernet_hidden",
        ">= 1",
    ),
    (
        ["algorithm=facmac", "env=smax", "algorithm.epsilon_frames=1000"],
        "algorithm.epsilon_frames",
        "renamed to algorithm.epsilon_anneal_frames",
    ),
    (
        ["algorithm=comix", "env=mamujoco", "algorithm.hypernet_hidden=32"],
        "algorithm.hypernet_hidden",
        "renamed to algorithm.mixer_hypernet_hidden",
    ),
    (["algorithm=mappo", "env=smax", "algorithm.clip_epsilon=-1"], "algorithm.clip_epsilon", "a number > 0"),
    (["algorithm=mappo", "env=smax", "algorithm.gae_lambda=2"], "algorithm.gae_lambda", "in [0, 1]"),
    (["algorithm=ippo", "env=smax", "algorithm.minibatches=0"], "algorithm.minibatches", "an integer >= 1"),
    (
        ["algorithm=mappo", "env=smax", "model.recurrent=true", "model.share_params=false"],
        "model.share_params",
        "true with model.recurrent=true",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_malformed_config_gives_one_line_naming_the_key(overrides, key, allowed):
    if overrides[0].startswith("resume="):
        from kpg_lightning.train import resolve_checkpoint

        with pytest.raises(ConfigError) as info:
            resolve_checkpoint(overrides[0].split("=", 1)[1])
        message = str(info.value)
    else:
        message = first_error(overrides)
    assert message is not None, f"{overrides} was accepted"
    assert "\n" not in message and key in message and allowed in message, message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_requested_without_one():
    assert "trainer.accelerator='gpu' is not allowed" in first_error(["trainer.accelerator=gpu"])


@pytest.mark.skipif(not HAS_MUJOCO, reason="gymnasium-robotics not installed")
def test_bad_mamujoco_partition():
    message = first_error(["env=mamujoco", "env.agent_conf=3x7"])
    assert message.startswith("env.agent_conf") and "valid" in message


def test_valid_defaults_pass():
    assert first_error([]) is None


# --- resume safety ---
# A checkpoint remembers its resolved configuration; resuming it with one that changes what is trained (model,
# algorithm, environment, K, seed: the seed picks the collection seeds of the segments still to come and names the run
# in summaries, so a changed one would mix two runs under one name) is refused in one line naming every differing key
# with its old -> new value. Budgets, cadences, devices, logging and progress (RESUME_MAY_CHANGE) may change.

RESUMABLE = ["max_frames=160", "checkpoint.every_frames=160", "eval.every_frames=0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real (one training step) VMAS run with its checkpoint."""
    from conftest import HAS_VMAS, TINY

    if not HAS_VMAS:
        pytest.skip("vmas not installed")
    from kpg_lightning.train import train

    run_dir = tmp_path_factory.mktemp("resume_safety") / "run"
    train([*TINY, *RESUMABLE], run_dir)
    return run_dir


MISMATCHES = [
    (["kpg.k=3"], "kpg.k 2 -> 3"),
    (["env.scenario=navigation"], 'env.scenario "balance" -> "navigation"'),
    (["model.actor_hidden=[64,64]"], "model.actor_hidden [32,32] -> [64,64]"),
    (["algorithm=facmac"], 'algorithm.name "maddpg" -> "facmac"'),
    (["seed=1"], "seed 0 -> 1"),
]


@pytest.mark.parametrize(("change", "named"), MISMATCHES, ids=[c[0][0] for c in MISMATCHES])
def test_resume_with_another_configuration_is_refused(trained_run, tmp_path, change, named):
    from conftest import TINY

    from kpg_lightning.train import train

    with pytest.raises(ConfigError) as info:  # refused before any environment is made
        train([*TINY, *RESUMABLE, f"resume={trained_run}", *change], tmp_path / "resumed")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"resume={str(trained_run)!r} is not allowed"), message
    assert named in message and "may change on resume: max_frames" in message, message
    assert not (tmp_path / "resumed" / "checkpoints").exists()


@pytest.mark.slow  # a CLI start (~10-30 s of imports); the in-process cases above cover the check itself
def test_resume_refusal_on_the_command_line(trained_run, tmp_path):
    from conftest import TINY, run_train

    result = run_train(tmp_path / "resumed", *TINY, *RESUMABLE, f"resume={trained_run}", "kpg.k=1", "seed=3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith("error: resume=") and "seed 0 -> 3; kpg.k 2 -> 1; start a new run" in lines[-1]


def test_resume_with_a_larger_budget_continues(trained_run, tmp_path):
    from conftest import TINY

    from kpg_lightning.train import train

    allowed = ["max_frames=320", "checkpoint.keep_last=3", "trainer.log_every_n_steps=5", "logger.csv=null"]
    summary = train([*TINY, *RESUMABLE, f"resume={trained_run}", *allowed], tmp_path / "resumed")
    assert summary["frames"] == 320 and summary["resumed_from"].endswith("frames_000000000160")

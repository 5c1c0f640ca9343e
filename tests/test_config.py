"""Bad input fails before anything starts, with one line naming the key, the value and what is allowed (exit code 2).

Most cases run the command line in-process (:func:`kpg_lightning.cli.main`, its checks only: an accepted case
returns 0 at once instead of training); a few run ``python -m kpg_lightning.train`` to show the real process
behaves the same, simulators made unimportable with shadow packages on ``PYTHONPATH``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, needs_vmas

from kpg_lightning import cli
from kpg_lightning.errors import ConfigError
from kpg_lightning.train import main as train_main

HAS_MUJOCO = importlib.util.find_spec("gymnasium_robotics") is not None
HAS_SMAC = importlib.util.find_spec("smac") is not None
NO_GPU = not torch.cuda.is_available()


def one_line(code: int, err: str, key: str, allowed: str) -> str:
    """Asserts the one-line contract; the line."""
    lines = err.splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: ") and key in lines[0] and allowed in lines[0], lines[0]
    return lines[0]


def check_line(argv: list[str], capfd) -> tuple[int, str]:
    """The command line's checks in-process: exit code and stderr."""
    capfd.readouterr()
    code = cli.main(argv)
    return code, capfd.readouterr().err


SAFE = ["max_frames=160", "collector.frames_per_batch=160", "eval.episodes=1", "logger.tensorboard=null"]
"""Overrides every env family takes: a tiny budget, should a bad input be accepted."""


def run_line(argv: list[str], tmp_path: Path, capfd) -> tuple[int, str]:
    """The whole command line in-process (Hydra's run included, tiny budget in case a bad input were accepted)."""
    hydra = [f"hydra.run.dir={tmp_path / 'run'}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    capfd.readouterr()
    code = train_main([*SAFE, *argv, *hydra])
    return code, capfd.readouterr().err


CASES = [
    # Hydra overrides: composition and values
    (["kpg.k=0"], "kpg.k", "integer >= 1"),
    (["kpg.k=abc"], "kpg.k", "could not be converted to Integer"),
    (["kpg.kk=1"], "kpg.kk", "closest: kpg.k"),
    (["foo=1"], "foo", "not in 'Config'"),
    (["algorithm=nope"], "algorithm/nope", "Available options in 'algorithm': "),
    (["env=nope"], "env/nope", "Available options in 'env': "),
    (["max_frames=0"], "max_frames=0", "a number > 0"),
    (["max_frames=-5"], "max_frames=-5", "a number > 0"),
    (["kpg.adaptive_tol=0"], "kpg.adaptive_tol", "null or a number > 0"),
    (["kpg.actor_optimizer=lbfgs"], "kpg.actor_optimizer", "one of auto, rmsprop, adam, sgd"),
    (["algorithm.actor_lr=0"], "algorithm.actor_lr", "a number > 0"),
    (["algorithm.gamma=1.5"], "algorithm.gamma", "a number in (0, 1]"),
    (["buffer.batch_size=0"], "buffer.batch_size", "a number > 0"),
    (["collector.frames_per_batch=0"], "collector.frames_per_batch", "a number > 0"),
    (["model.activation=swish"], "model.activation", "one of relu, tanh"),
    (["model.actor_hidden=[64,-1]"], "model.actor_hidden", "positive layer sizes"),
    (["on_nonfinite=ignore"], "on_nonfinite", "stop or skip"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last", "a number > 0"),
    (["eval.episodes=0"], "eval.episodes", "a number > 0"),
    (["eval.max_steps=0"], "eval.max_steps", "null or an integer > 0"),
    (["eval.absolute_episodes=-1"], "eval.absolute_episodes=-1", "null (10 x eval.episodes), 0 (off) or an integer"),
    (["eval.absolute_episodes=ten"], "eval.absolute_episodes", "could not be converted to Integer"),
    (["buffer.episode_length=0"], "buffer.episode_length", "null or an integer > 0"),
    (["env.device=gpu"], "env.device", "auto, cpu, cuda or cuda:N"),
    (["buffer.device=cuda0"], "buffer.device", "auto, cpu, cuda or cuda:N"),
    (["algorithm.tau=0"], "algorithm.tau", "a number in (0, 1]"),
    (["algorithm.critic=central"], "algorithm.critic", "one of per_agent, team"),
    (["model.recurrent=true"], "model.recurrent", "false for maddpg with continuous actions (recurrent actors: mappo"),
    # every trainer.* key against Lightning's Trainer signature, types and values
    (["trainer.nosuchflag=1"], "trainer.nosuchflag", "not a lightning.pytorch.Trainer argument"),
    (["trainer.devcies=2"], "trainer.devcies", "closest: devices"),
    (["trainer.logger=false"], "trainer.logger", "set by the logger group"),
    (["trainer.devices=0"], "trainer.devices=0", "auto or a number of processes >= 1"),
    (["trainer.devices=-1"], "trainer.devices=-1", "auto or a number of processes >= 1"),
    (["trainer.devices=abc"], "trainer.devices='abc'", "auto or a number of processes >= 1"),
    (["trainer.max_epochs=many"], "trainer.max_epochs='many'", "an integer or null"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs=-2", "an integer >= -1"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5", "an integer"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0", "an integer >= 1"),
    (["trainer.max_time=1h"], "trainer.max_time='1h'", "DD:HH:MM:SS"),
    (["trainer.enable_model_summary=maybe"], "trainer.enable_model_summary='maybe'", "true or false or null"),
    (["trainer.deterministic=sometimes"], "trainer.deterministic", "one of warn"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu'", "tpu is not available here"),
    (["trainer.accelerator=abacus"], "trainer.accelerator='abacus'", "auto, gpu or one of cpu, cuda, mps, tpu"),
    (["trainer.precision=13"], "trainer.precision=13", "32-true or bf16-mixed"),
    (["trainer.precision=16-mixed"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.precision=16"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.precision=64-true"], "trainer.precision", "32-true or bf16-mixed"),
    (["trainer.strategy=nope"], "trainer.strategy", "one of auto, ddp"),
    (["trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val", "clip with algorithm.grad_clip"),
    (["trainer.accumulate_grad_batches=4"], "trainer.accumulate_grad_batches", "1: the module steps its own"),
    # Lightning-style flags, alone and mixed with Hydra overrides
    (["--kpg.k=0"], "kpg.k=0", "integer >= 1"),
    (["--kpg.k", "0"], "kpg.k=0", "integer >= 1"),
    (["--max_frames", "-5"], "max_frames=-5", "a number > 0"),
    (["--trainer.devices=0", "seed=1"], "trainer.devices=0", "auto or a number of processes >= 1"),
    (["+experiment=k2_facmac_walker", "--trainer.devcies=2"], "trainer.devcies", "closest: devices"),
    (["--+experiment=nope"], "experiment/nope", "Available options in 'experiment': "),
    (["--kpg.k"], "--kpg.k", "--kpg.k=VALUE or --kpg.k VALUE"),
    (["--kpg.k", "--seed=1"], "--kpg.k", "without a value"),
    (["-x", "kpg.k=1"], "-x", "not an option"),
    (["--trainer.max_epochs", "many"], "trainer.max_epochs='many'", "an integer or null"),
    (["--cfg", "nope"], "--cfg 'nope'", "one of job, hydra, all"),
    (["kpg.k=3", "-c"], "-c", "without a value"),
    # impossible combinations
    (["env=smax", "algorithm=comix"], "algorithm.name", "an algorithm for discrete actions"),
    (["env=vmas", "algorithm=qmix", "kpg.k=1"], "algorithm.name", "an algorithm for continuous actions"),
    (["env=smax", "algorithm=qmix", "kpg.k=2"], "kpg.k=2", "1 for qmix (value-based"),
    (["env=smax", "algorithm=vdn", "--kpg.k", "3"], "kpg.k=3", "1 for vdn (value-based"),
    (["env=smax", "algorithm=iql", "kpg.k=2"], "kpg.k=2", "1 for iql (value-based"),
    (["env=smax", "algorithm=mappo", "env.device=cuda"], "env.device", "auto or cpu for smax"),
    (["env=mamujoco", "algorithm=facmac", "env.device=cuda:0"], "env.device", "auto or cpu for mamujoco"),
    (["algorithm=facmac", "env=mamujoco", "algorithm.mixer=qmax"], "algorithm.mixer", "one of qmix, "),
    (["algorithm=facmac", "env=mamujoco", "algorithm.mixer_hypernet_hidden=0"], "mixer_hypernet_hidden", ">= 1"),
    (["algorithm=facmac", "env=smax", "algorithm.epsilon_frames=1000"], "algorithm.epsilon_frames", "renamed to "),
    (["algorithm=comix", "env=mamujoco", "algorithm.hypernet_hidden=32"], "algorithm.hypernet_hidden", "renamed to "),
    (["algorithm=mappo", "env=smax", "algorithm.clip_epsilon=-1"], "algorithm.clip_epsilon", "a number > 0"),
    (["algorithm=mappo", "env=smax", "algorithm.gae_lambda=2"], "algorithm.gae_lambda", "in [0, 1]"),
    (["algorithm=ippo", "env=smax", "algorithm.minibatches=0"], "algorithm.minibatches", "an integer >= 1"),
    (
        ["algorithm=mappo", "env=smax", "model.recurrent=true", "model.share_params=false"],
        "model.share_params",
        "true with model.recurrent=true",
    ),
]
if NO_GPU:
    CASES += [
        (["trainer.accelerator=gpu"], "trainer.accelerator='gpu'", "cpu or auto on a machine without a CUDA GPU"),
        (["--env.device", "cuda"], "env.device", "auto or cpu on a machine without a CUDA GPU"),
    ]
if not HAS_SMAC:
    CASES += [(["env=smac"], "env='smac'", "pip install git+https://github.com/oxwhirl/smac.git")]


@pytest.mark.parametrize(("argv", "key", "allowed"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_malformed_input_gives_one_line_naming_the_key(argv, key, allowed, capfd):
    one_line(*check_line(argv, capfd), key, allowed)


@pytest.mark.parametrize(
    ("argv", "module"),
    [(["env=vmas"], "vmas"), (["env=mamujoco", "algorithm=facmac"], "gymnasium_robotics"), (["env=smax"], "jaxmarl")],
)
def test_missing_simulator_is_one_line_with_the_install_command(argv, module, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, module, None)  # Python's own way to make an import fail
    one_line(*check_line(argv, capfd), "env=", f"{module} not found); pip install 'kpg-lightning[")


RUN_CASES = [  # found when the run starts, before any environment is created; {tmp}: the test's directory
    (["env.scenario=nope"], "env.scenario", "valid: "),
    (["resume={tmp}/nope"], "resume=", "no such run directory or checkpoint"),
    (["resume={tmp}/empty"], "resume=", "no checkpoint directory (frames_*/) found"),
    (["resume={tmp}/partial"], "resume=", "no usable checkpoint"),
]
if HAS_MUJOCO:
    RUN_CASES += [(["env=mamujoco", "algorithm=facmac", "env.agent_conf=3x7"], "env.agent_conf", "valid")]


@pytest.mark.parametrize(("argv", "key", "allowed"), RUN_CASES, ids=[" ".join(c[0]) for c in RUN_CASES])
def test_malformed_input_found_at_start_gives_one_line(argv, key, allowed, tmp_path, capfd):
    if "env=mamujoco" in argv:
        import gymnasium_robotics  # noqa: F401  (prints a notice about old Adroit envs when first imported)

    (tmp_path / "empty").mkdir()
    partial = tmp_path / "partial" / "checkpoints" / "frames_000000000320"  # a checkpoint cut off mid-write
    partial.mkdir(parents=True)
    (partial / "last.ckpt").write_bytes(b"half")
    one_line(*run_line([a.format(tmp=tmp_path) for a in argv], tmp_path, capfd), key, allowed)


def test_smac_without_the_game_is_one_line(tmp_path, monkeypatch, capfd):
    """oxwhirl's package layout (a shadow package) without StarCraft II: the adapter's message, on one line."""
    for name in ("__init__.py", "env/__init__.py", "env/starcraft2/__init__.py"):
        (tmp_path / "shadow" / "smac" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "shadow" / "smac" / name).write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
    monkeypatch.setenv("SC2PATH", str(tmp_path / "no_game"))
    argv = ["env=smac", "algorithm=qmix", "kpg.k=1"]
    one_line(*run_line(argv, tmp_path, capfd), "env=smac", "StarCraft II game was not found")


def test_valid_inputs_pass(capfd):
    for argv in ([], ["--kpg.k", "3", "trainer.devices=1"], ["+experiment=k2_maddpg_vmas_balance", "--seed=2"]):
        assert check_line(argv, capfd) == (0, ""), argv


def test_lightning_flags_are_hydra_overrides():
    flags, overrides = cli.to_overrides(
        ["--trainer.devices=2", "--kpg.k", "3", "seed=1", "--max_frames", "-5", "--+experiment=x", "-m", "--cfg", "job"]
    )
    assert overrides == ["trainer.devices=2", "kpg.k=3", "seed=1", "max_frames=-5", "+experiment=x"]
    assert flags == ["-m", "--cfg", "job"]
    assert cli.to_overrides(["--info", "--~logger.csv", "-c", "job"]) == (["--info", "-c", "job"], ["~logger.csv"])


def test_help_lists_groups_and_keys_without_schema_nodes(capsys):
    assert cli.main(["--help", "algorithm=facmac"]) == 0
    out = capsys.readouterr().out
    assert "algorithm: comix, facmac, ippo" in out and "experiment: " in out and "--key=value" in out
    assert "mixer=" in out and "kpg: k=2" in out and "trainer: accelerator=cpu" in out  # facmac's keys
    assert "_config" not in out


def test_hydra_flags_still_work(tmp_path, capfd):
    assert train_main(["--cfg", "job", "--kpg.k", "3"]) == 0
    assert "k: 3" in capfd.readouterr().out


@needs_vmas
def test_lightning_flags_take_effect_in_a_run(tmp_path, capfd):
    """The issue's ``--trainer.devices=1 --kpg.k 2``, with K = 3 (the default is 2, so 3 shows the flag took effect)."""
    argv = ["--trainer.devices=1", "--kpg.k", "3", "--max_frames", "160", "--trainer.enable_checkpointing", "false"]
    hydra = [f"hydra.run.dir={tmp_path}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    code = train_main([*TINY, *argv, "eval.every_frames=0", *hydra])
    assert code == 0, capfd.readouterr().err[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["k"] == 3 and summary["kpg"]["levels_run_mean"] == 3 and summary["frames"] == 160
    assert not (tmp_path / "checkpoints").exists()  # trainer.enable_checkpointing=false reached the run


SHADOW = {  # package → files: a simulator whose import fails, a SMAC package without the game
    "vmas": {"__init__.py": "raise ImportError('vmas is broken here')"},
    "smac": {"__init__.py": "", "env/__init__.py": "", "env/starcraft2/__init__.py": ""},
}

PROCESS_CASES = [  # the command line; a simulator that does not import, found when the env is made
    (["+experiment=k2_facmac_walker", "--trainer.devcies=2"], "trainer.devcies", "closest: devices"),
    (["env=vmas", "max_frames=160"], "env=vmas", "its simulator does not import (vmas is broken here)"),
]
MORE_PROCESS_CASES = [
    (["--max_frames", "-5"], "max_frames=-5", "a number > 0"),
    (["trainer.max_epochs=many"], "trainer.max_epochs='many'", "an integer or null"),
    (["env=smac", "algorithm=qmix", "kpg.k=1", "max_frames=160"], "env=smac", "StarCraft II game was not found"),
]


@pytest.mark.parametrize(
    "cases",
    [pytest.param(PROCESS_CASES, id="default"), pytest.param(MORE_PROCESS_CASES, id="more", marks=pytest.mark.slow)],
)
def test_the_real_process_exits_2_with_one_line(cases, tmp_path):
    """``python -m kpg_lightning.train`` itself, the cases side by side (each process mostly imports)."""
    for package, files in SHADOW.items():
        for name, text in files.items():
            (tmp_path / "shadow" / package / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "shadow" / package / name).write_text(text)
    path = os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "SC2PATH": str(tmp_path / "no_game"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kpg_lightning.train", *argv, f"hydra.run.dir={tmp_path / str(i)}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for i, (argv, _, _) in enumerate(cases)
    ]
    for proc, (_, key, allowed) in zip(procs, cases, strict=True):
        _, err = proc.communicate(timeout=300)
        one_line(proc.returncode, err, key, allowed)


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

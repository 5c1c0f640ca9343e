"""``python -m kpg_lightning.evaluate``: real tiny runs (VMAS, MaMuJoCo, SMAX) evaluated from their run directories,
checkpoints and policy files; statistics, determinism, stochastic acting, a headless GIF, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, needs_vmas

HAS_MUJOCO = importlib.util.find_spec("gymnasium_robotics") is not None
HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
QUIET = ["logger.csv=null"]


def _train(run_dir: Path, *overrides: str, base: tuple[str, ...] = tuple(TINY)) -> Path:
    from kpg_lightning.train import train

    keys = {o.split("=", 1)[0] for o in overrides}
    train([*(o for o in [*base, *QUIET] if o.split("=", 1)[0] not in keys), *overrides], run_dir)
    return run_dir


def _evaluate(*argv: str) -> tuple[int, dict | None]:
    """``main(argv)`` in this process; the JSON it wrote (``out=`` must be among ``argv``)."""
    from kpg_lightning.evaluate import main

    code = main(list(argv))
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), None)
    return code, json.loads(Path(out).read_text()) if code == 0 and out else None


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The default run (K2-MADDPG on VMAS balance), tiny: 320 frames, one checkpoint."""
    return _train(tmp_path_factory.mktemp("default") / "run", "max_frames=320")


@needs_vmas
def test_default_run_json_consistent_and_deterministic(default_run, tmp_path):
    code, first = _evaluate(str(default_run), "episodes=6", f"out={tmp_path / 'a.json'}")
    assert code == 0
    returns = first["returns"]
    assert (first["algorithm"], first["k"], first["env"], first["weights"]) == ("maddpg", 2, "vmas/balance", "last")
    assert (first["frames"], first["episodes"], first["seed"], first["stochastic"]) == (320, 6, 20_000, False)
    assert len(returns) == 6 and len(set(returns)) > 1  # distinct initial states
    assert math.isclose(first["return_mean"], sum(returns) / 6, rel_tol=1e-9)
    assert (first["return_min"], first["return_max"]) == (min(returns), max(returns))
    middle = sorted(returns)[1:5]
    assert math.isclose(first["return_iqm"], sum(middle) / 4, rel_tol=1e-9)
    assert first["wall_clock_s"] > 0 and first["versions"]["torchrl"] and "win_rate" not in first
    # the same seed gives the same returns; another seed others
    _, again = _evaluate(str(default_run), "episodes=6", f"out={tmp_path / 'b.json'}")
    assert again["returns"] == returns
    _, other = _evaluate(str(default_run), "--episodes=6", "--seed", "7", f"out={tmp_path / 'c.json'}")
    assert other["seed"] == 7 and other["returns"] != returns
    # every way of naming the same weights loads them: checkpoint dir, model.ckpt, last.ckpt
    ckpt = default_run / "checkpoints" / "frames_000000000320"
    for name in (ckpt, ckpt / "model.ckpt", default_run / "checkpoints" / "last.ckpt"):
        _, same = _evaluate(str(name), "episodes=6", f"out={tmp_path / 'd.json'}")
        assert same["returns"] == returns and same["frames"] == 320


@needs_vmas
def test_default_output_path_and_summary(default_run, capsys):
    from kpg_lightning.evaluate import main

    assert main([str(default_run), "episodes=2"]) == 0
    data = json.loads((default_run / "evaluation.json").read_text())
    assert data["episodes"] == 2 and data["run_dir"] == str(default_run.resolve())
    out = capsys.readouterr().out
    assert "maddpg K=2 on vmas/balance: last weights (320 frames), 2 greedy episodes, seed 20000" in out
    assert f"wrote {default_run / 'evaluation.json'}" in out


@needs_vmas
def test_stochastic_differs_from_greedy_and_is_seeded(default_run, tmp_path):
    _, greedy = _evaluate(str(default_run), "episodes=4", f"out={tmp_path / 'g.json'}")
    _, noisy = _evaluate(str(default_run), "episodes=4", "stochastic=true", f"out={tmp_path / 's.json'}")
    _, noisy_again = _evaluate(str(default_run), "episodes=4", "stochastic=true", f"out={tmp_path / 't.json'}")
    assert noisy["stochastic"] and noisy["returns"] != greedy["returns"]
    assert noisy_again["returns"] == noisy["returns"]


def _policy_file(run_dir: Path, path: Path) -> dict:
    """A ``policy.pt`` as training writes it (issue 18's format 1), from the run's checkpoint; its best weights are
    the last ones with the actor's output layer zeroed (so they act differently)."""
    from omegaconf import OmegaConf

    from kpg_lightning.assemble import make_acting_algorithm, make_eval_env
    from kpg_lightning.weights import load_source, structured_configs

    source = load_source(str(run_dir / "checkpoints" / "last.ckpt"), "last")  # the algorithm's whole state
    algorithm_cfg, model_cfg = structured_configs(source.config)
    env = make_eval_env(OmegaConf.create(source.config["env"]), 1, seed=0, device="cpu")
    algorithm = make_acting_algorithm(algorithm_cfg, model_cfg, env)
    algorithm.load_state_dict(source.state_dict)
    last = {k: v.clone() for k, v in algorithm.policy().state_dict().items()}
    best = {k: torch.zeros_like(v) if v.is_floating_point() else v.clone() for k, v in last.items()}
    stored = {
        "format": 1,
        "config": source.config,
        "last": {"frames": source.frames, "state_dict": last},
        "best": {"frames": 160, "metric": "return", "value": -1.0, "state_dict": best},
    }
    torch.save(stored, path)
    return stored


@needs_vmas
def test_policy_file_last_and_best(default_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _policy_file(default_run, run / "policy.pt")
    _, from_ckpt = _evaluate(str(default_run), "episodes=4", f"out={tmp_path / 'c.json'}")
    _, last = _evaluate(str(run), "episodes=4")  # the run dir's policy.pt; JSON beside it
    last = json.loads((run / "evaluation.json").read_text())
    assert last["returns"] == from_ckpt["returns"] and last["weights_file"] == str((run / "policy.pt").resolve())
    code, _ = _evaluate(str(run / "policy.pt"), "weights=best", "episodes=4")
    best = json.loads((run / "evaluation_best.json").read_text())
    assert code == 0 and best["weights"] == "best" and best["frames"] == 160 and best["best_metric"] == "return"
    assert best["returns"] != last["returns"]
    stored = torch.load(run / "policy.pt", weights_only=True)
    stored["best"] = None
    torch.save(stored, run / "policy.pt")
    assert _evaluate(str(run), "weights=best")[0] == 2


@needs_vmas
def test_training_policy_file_best_equals_its_checkpoint(default_run, tmp_path):
    """The run's own ``policy.pt`` (written by training) and its final checkpoint's evaluation-callback state name
    the same best weights: the frames of summary.json's absolute metric, identical returns either way."""
    summary = json.loads((default_run / "summary.json").read_text())
    stored = torch.load(default_run / "policy.pt", weights_only=True)
    assert stored["best"]["frames"] == summary["absolute_frames"]
    ckpt = default_run / "checkpoints" / "last.ckpt"
    _, from_file = _evaluate(str(default_run), "weights=best", "episodes=4", f"out={tmp_path / 'p.json'}")
    _, from_ckpt = _evaluate(str(ckpt), "weights=best", "episodes=4", f"out={tmp_path / 'c.json'}")
    assert from_file["weights"] == from_ckpt["weights"] == "best"
    assert from_file["frames"] == from_ckpt["frames"] == summary["absolute_frames"]
    assert from_file["returns"] == from_ckpt["returns"]


@needs_vmas
def test_vmas_gif_rendered_headless(default_run, tmp_path):
    from PIL import Image

    gif = tmp_path / "episode.gif"
    code, data = _evaluate(
        str(default_run), "episodes=2", "render=true", f"render_path={gif}", f"out={tmp_path / 'r.json'}"
    )
    assert code == 0 and data["video"] == str(gif)
    with Image.open(gif) as image:
        assert image.n_frames == 21  # the reset and env.max_steps=20 steps
        image.seek(10)
        assert image.convert("RGB").getextrema() != ((255, 255), (255, 255), (255, 255))  # not blank


def _corrupt_copy(run_dir: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "frames_000000000320"
    shutil.copytree(run_dir / "checkpoints" / "frames_000000000320", ckpt)
    data = bytearray((ckpt / "model.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt / "model.ckpt").write_bytes(bytes(data))
    return ckpt


def _without_best(run_dir: Path, tmp_path: Path) -> Path:
    """The run's ``policy.pt`` as a run that kept no best weights writes it (``"best": None``)."""
    stored = torch.load(run_dir / "policy.pt", weights_only=True)
    path = tmp_path / "no_best" / "policy.pt"
    path.parent.mkdir()
    torch.save({**stored, "best": None}, path)
    return path


@needs_vmas
def test_bad_input_one_line_exit_2(default_run, tmp_path, capsys):
    from kpg_lightning.evaluate import main

    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "missing")], "no such run directory"),
        ([str(tmp_path / "empty")], "no policy.pt and no checkpoint"),
        ([str(_corrupt_copy(default_run, tmp_path))], "does not match its checksum (corrupt)"),
        ([str(default_run), "epsiodes=3"], "epsiodes is not allowed: not an option; options: episodes"),
        ([str(default_run), "episodes=0"], "episodes=0 is not allowed: an integer >= 1"),
        ([str(default_run), "weights=foo"], "weights='foo' is not allowed: last or best"),
        ([str(_without_best(default_run, tmp_path)), "weights=best"], "weights=best is not allowed"),
        ([str(default_run), "render=maybe"], "render=maybe is not allowed: true or false"),
        ([], "one run directory, checkpoint or policy.pt is needed"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(default_run), "device=cuda"], "device='cuda' is not allowed"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert not (default_run / "evaluation_best.json").exists()


@needs_vmas
def test_command_line_error_is_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "kpg_lightning.evaluate", str(tmp_path / "missing"), "episodes=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: path={str(tmp_path / 'missing')!r} is not allowed: no such run directory, checkpoint or policy file"
    ]


FAMILIES = [
    pytest.param(["algorithm=mappo", "collector.frames_per_batch=160"], id="mappo"),
    pytest.param(["algorithm=qmix", "kpg.k=1", "env.continuous_actions=false"], id="qmix-discrete"),
    pytest.param(["algorithm=facmac"], id="facmac", marks=pytest.mark.slow),
    pytest.param(["algorithm=comix", "kpg.k=1"], id="comix"),
    pytest.param(["algorithm=maddpg", "env.continuous_actions=false"], id="maddpg-discrete", marks=pytest.mark.slow),
    pytest.param(["algorithm=ippo"], id="ippo", marks=pytest.mark.slow),
]


@needs_vmas
@pytest.mark.parametrize("overrides", FAMILIES)
def test_every_algorithm_family_loads(tmp_path, overrides):
    run = _train(tmp_path / "run", "max_frames=160", "eval.every_frames=0", *overrides)
    code, data = _evaluate(str(run), "episodes=3", f"out={tmp_path / 'e.json'}")
    assert code == 0 and data["algorithm"] == overrides[0].split("=")[1] and len(data["returns"]) == 3
    _, again = _evaluate(str(run / "checkpoints" / "last.ckpt"), "episodes=3", f"out={tmp_path / 'f.json'}")
    assert again["returns"] == data["returns"]


TINY_MUJOCO = [
    "+experiment=k2_facmac_walker",
    "env.max_steps=30",
    "env.num_envs=1",
    "max_frames=60",
    "collector.frames_per_batch=30",
    "collector.init_random_frames=30",
    "buffer.learning_starts=30",
    "buffer.size=1000",
    "eval.every_frames=0",
]


@pytest.mark.skipif(not HAS_MUJOCO, reason="gymnasium-robotics (MaMuJoCo) not installed")
def test_mamujoco_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo's log file
    run = _train(tmp_path / "run", *TINY_MUJOCO)
    code, data = _evaluate(str(run), "episodes=2", f"out={tmp_path / 'm.json'}")
    assert code == 0 and data["env"] == "mamujoco/Walker2d-2x3" and data["frames"] == 60
    assert len(data["returns"]) == 2 and data["max_steps"] == 30


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MUJOCO, reason="gymnasium-robotics (MaMuJoCo) not installed")
def test_mamujoco_render_egl(tmp_path):
    """In a fresh process: MUJOCO_GL must be set before MuJoCo is imported (the evaluation sets egl)."""
    run = _train(tmp_path / "run", *TINY_MUJOCO)
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    cmd = [sys.executable, "-m", "kpg_lightning.evaluate", str(run), "episodes=1", "render=true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    with Image.open(run / "evaluation.gif") as image:
        assert image.n_frames > 1


TINY_SMAX = [
    "+experiment=maddpg_smax_3m",
    "env.num_envs=4",
    "collector.frames_per_batch=200",
    "max_frames=200",
    "model.actor_hidden=[16]",
    "model.critic_hidden=[16,16]",
    "buffer.batch_size=8",
    "buffer.learning_starts=0",
    "eval.every_frames=0",
    "eval.episodes=4",  # the evaluation envs share the 4 training envs' compiled JAX functions
]


@pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl not installed")
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("render", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_smax_checkpoint_win_rate(tmp_path, render):
    run = _train(tmp_path / "run", *TINY_SMAX, base=("trainer.enable_progress_bar=false", "logger.tensorboard=null"))
    extra = ["render=true", f"render_path={tmp_path / 'smax.gif'}"] if render else []
    code, data = _evaluate(str(run), "episodes=4", f"out={tmp_path / 's.json'}", *extra)
    assert code == 0 and data["env"] == "smax/3m" and len(data["returns"]) == 4
    assert len(data["wins"]) == 4 and data["win_rate"] == sum(data["wins"]) / 4
    if render:
        from PIL import Image

        with Image.open(tmp_path / "smax.gif") as image:
            assert image.n_frames > 1

"""Entry point: ``python -m kpg_lightning.evaluate <run dir | checkpoint | policy.pt> [key=value ...]`` (or
``kpg-evaluate``): evaluate a trained policy, print the statistics and write them as JSON; ``render=true`` also
writes a GIF/MP4 of one episode.

Only weights are loaded (``torch.load(weights_only=True)``; nothing is unpickled): ``run_dir/policy.pt`` where the run
has one, else the newest complete checkpoint (checksums verified). Environment and networks are built as training
builds them (:mod:`kpg_lightning.assemble`) from the configuration stored with the weights (``.hydra/config.yaml`` for
a checkpoint without one), and the episodes run as training's evaluation runs them
(:func:`kpg_lightning.callbacks.evaluation.run_episodes`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import seed_everything
from omegaconf import OmegaConf
from torchrl.envs.utils import ExplorationType

from kpg_lightning import __version__, cli
from kpg_lightning.assemble import make_acting_algorithm, make_eval_env, write_json
from kpg_lightning.callbacks import quiet_known_noise
from kpg_lightning.callbacks.evaluation import run_episodes
from kpg_lightning.envs.registry import ENV_FAMILIES, env_family, task_name
from kpg_lightning.envs.render import (
    RENDER_UNSUPPORTED,
    EpisodeFrames,
    prepare_render,
    render_overrides,
    save_video,
    video_problem,
)
from kpg_lightning.errors import ConfigError
from kpg_lightning.report_stats import iqm
from kpg_lightning.weights import load_source, structured_configs

__all__ = ["EVALUATE_SEED_OFFSET", "Options", "evaluate", "main", "parse_args"]

EVALUATE_SEED_OFFSET = 20_000
"""Default seed: the run's seed plus this (training's periodic evaluation uses + 10 000, collection the seed)."""
SIMULATORS = {"vmas": ("vmas",), "mamujoco": ("mujoco", "gymnasium-robotics"), "smax": ("jax", "jaxmarl")}
USAGE = "usage: python -m kpg_lightning.evaluate <run dir | checkpoint | policy.pt> [key=value | --key=value ...]"


@dataclass
class Options:
    episodes: int | None = None
    """Episodes to run (default: the run's eval.episodes)."""
    seed: int | None = None
    """Seed of the evaluation env and of the policy's sampling (default: the run's seed + 20000)."""
    device: str = "auto"
    """Where the policy runs: auto (cuda where there is a GPU), cpu, cuda or cuda:N."""
    weights: str = "last"
    """last (the newest weights) or best (the best evaluated policy training kept)."""
    stochastic: bool = False
    """The exploring policy (ExplorationType.RANDOM) instead of the greedy one."""
    render: bool = False
    """Also write a video of one episode (VMAS, MaMuJoCo with MUJOCO_GL=egl/osmesa, SMAX)."""
    render_path: str | None = None
    """Where the video goes (.gif, or .mp4 with imageio-ffmpeg); default: beside the JSON."""
    out: str | None = None
    """The JSON path; default: <run dir>/evaluation[_best][_stochastic].json."""
    max_steps: int | None = None
    """Steps per episode at most (default: the run's eval.max_steps, else env.max_steps, else 1000)."""


HELP = {
    "episodes": "episodes to run (default: the run's eval.episodes)",
    "seed": f"seed of the evaluation env and the policy's sampling (default: the run's seed + {EVALUATE_SEED_OFFSET})",
    "device": "auto (cuda where there is a GPU), cpu, cuda or cuda:N: where the policy runs",
    "weights": "last (the newest weights) or best (the best evaluated policy training kept)",
    "stochastic": "true: the exploring policy (ExplorationType.RANDOM) instead of the greedy one",
    "render": "true: also write a video of one episode (VMAS; MaMuJoCo with MUJOCO_GL=egl or osmesa; SMAX)",
    "render_path": "the video's path, .gif (or .mp4 with imageio-ffmpeg); default: beside the JSON",
    "out": "the JSON's path; default: <run dir>/evaluation[_best][_stochastic].json",
    "max_steps": "steps per episode at most (default: the run's eval.max_steps, else env.max_steps, else 1000)",
}


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={value} is not allowed: true or false")
    return lowered in ("true", "1", "yes")


def _int(key: str, value: str, low: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (low is not None and number < low):
        raise ConfigError(f"{key}={value} is not allowed: an integer" + (f" >= {low}" if low is not None else ""))
    return number


def _parse_value(key: str, value: str) -> Any:
    if key in ("episodes", "max_steps"):
        return _int(key, value, 1)
    if key == "seed":
        return _int(key, value, 0)
    if key in ("stochastic", "render"):
        return _bool(key, value)
    if key == "weights" and value not in ("last", "best"):
        raise ConfigError(f"weights={value!r} is not allowed: last or best")
    if key == "device" and not _valid_device(value):
        raise ConfigError(f"device={value!r} is not allowed: auto, cpu, cuda or cuda:N (a CUDA GPU is needed for cuda)")
    return value


def _valid_device(value: str) -> bool:
    if value in ("auto", "cpu"):
        return True
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        index = int(value[5:]) if ":" in value else 0
        return torch.cuda.is_available() and index < torch.cuda.device_count()
    return False


def parse_args(argv: Sequence[str]) -> tuple[str, Options]:
    """``<path> key=value ... | --key=value | --key value`` → the path and the options (:class:`ConfigError` with one
    line for a missing path, an unknown key or a bad value)."""
    names = [f.name for f in fields(Options)]
    paths, values, tokens, i = [], {}, list(argv), 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            if not eq:
                if i + 1 >= len(tokens):
                    raise ConfigError(f"--{key} is not allowed without a value: --{key}=VALUE or --{key} VALUE")
                value, i = tokens[i + 1], i + 1
        elif "=" in token:
            key, _, value = token.partition("=")
        else:
            paths.append(token)
            i += 1
            continue
        if key not in names:
            raise ConfigError(f"{key} is not allowed: not an option; options: {', '.join(names)}")
        values[key] = _parse_value(key, value)
        i += 1
    if len(paths) != 1:
        got = f" (got {len(paths)}: {' '.join(paths)})" if paths else ""
        raise ConfigError(f"one run directory, checkpoint or policy.pt is needed{got}; {USAGE}")
    return paths[0], Options(**values)


# -- evaluation ---------------------------------------------------------------------------------------------------
def _device(value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def _versions(family: str) -> dict[str, str | None]:
    packages = ("torch", "torchrl", "tensordict", "lightning", *SIMULATORS.get(family, ()))
    out: dict[str, str | None] = {"kpg_lightning": __version__, "python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def evaluate(path: str, options: Options) -> dict[str, Any]:
    """Evaluate the weights ``path`` names as ``options`` say; returns what is written to the JSON."""
    start = time.perf_counter()
    quiet_known_noise()
    source = load_source(path, options.weights)
    config = source.config
    env_cfg = OmegaConf.create(config["env"])
    family = env_family(env_cfg).name
    eval_cfg = config.get("eval") or {}
    episodes = options.episodes or int(eval_cfg.get("episodes", 10))
    seed = options.seed if options.seed is not None else int(config.get("seed", 0)) + EVALUATE_SEED_OFFSET
    max_steps = options.max_steps or eval_cfg.get("max_steps") or env_cfg.get("max_steps") or 1000
    stem = f"evaluation{'_best' if options.weights == 'best' else ''}{'_stochastic' if options.stochastic else ''}"
    out = Path(options.out) if options.out else source.run_dir / f"{stem}.json"
    video = Path(options.render_path) if options.render_path else out.with_suffix(".gif")
    if options.render:
        if family in RENDER_UNSUPPORTED:
            raise ConfigError(f"render=true is not allowed for {family}: {RENDER_UNSUPPORTED[family]}")
        problem = video_problem(video)
        if problem:
            raise ConfigError(f"render_path={str(video)!r} is not allowed: {problem}")
        prepare_render(family)
    device = _device(options.device)
    sim_device = device if ENV_FAMILIES[family].gpu else torch.device("cpu")
    algorithm_cfg, model_cfg = structured_configs(config)

    seed_everything(seed, verbose=False)
    env = make_eval_env(env_cfg, episodes, seed=seed, device=sim_device)
    envs = [env]
    if options.render:
        envs.append(make_eval_env(env_cfg, 1, seed=seed, device=sim_device, **render_overrides(family)))
    algorithm = make_acting_algorithm(algorithm_cfg, model_cfg, *envs)
    target = algorithm if source.scope == "algorithm" else algorithm.policy()
    try:
        target.load_state_dict(source.state_dict)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(f"{source.file} is not allowed: its weights do not fit its configuration ({reason})") from exc
    algorithm.to(device).eval()
    policy = algorithm.policy()
    exploration = ExplorationType.RANDOM if options.stochastic else ExplorationType.DETERMINISTIC
    results = run_episodes(env, policy, episodes, max_steps, exploration)
    returns = [float(r) for r in results["return"]]
    tensor = torch.tensor(returns, dtype=torch.float64)
    summary: dict[str, Any] = {
        "path": str(Path(path).expanduser().resolve()),
        "weights_file": str(source.file.resolve()),
        "run_dir": str(source.run_dir.resolve()),
        "algorithm": algorithm_cfg.name,
        "k": (config.get("kpg") or {}).get("k"),
        "env": task_name(env_cfg),
        "weights": options.weights,
        "frames": int(source.frames),
        **({"best_metric": source.best["metric"], "best_value": source.best["value"]} if source.best else {}),
        "episodes": episodes,
        "seed": seed,
        "stochastic": options.stochastic,
        "max_steps": int(max_steps),
        "device": str(device),
        "return_mean": float(tensor.mean()),
        "return_std": float(tensor.std(unbiased=False)),
        "return_min": float(tensor.min()),
        "return_max": float(tensor.max()),
        "return_iqm": iqm(returns),
        "returns": returns,
        **(
            {"win_rate": float(results["won"].mean()), "wins": [float(w) for w in results["won"]]}
            if "won" in results
            else {}
        ),
        "video": None,
        "versions": _versions(family),
    }
    summary["wall_clock_s"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, summary)
    _print(summary, out)
    if options.render:
        frames = _render(envs[1], policy, max_steps, exploration, family)
        video.parent.mkdir(parents=True, exist_ok=True)
        save_video(frames, video)
        summary["video"] = str(video)
        summary["wall_clock_s"] = time.perf_counter() - start
        write_json(out, summary)
        print(f"video: {video} ({len(frames)} frames)")
    return summary


def _render(env: Any, policy: Any, max_steps: int, exploration: ExplorationType, family: str) -> list[Any]:
    recorder = EpisodeFrames(family)
    env.append_transform(recorder)
    try:
        run_episodes(env, policy, 1, max_steps, exploration)
    except Exception as exc:
        if family != "mamujoco":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"render=true is not allowed here: MuJoCo has no working offscreen GL backend "
            f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {reason}); install EGL (MUJOCO_GL=egl) or OSMesa "
            "(MUJOCO_GL=osmesa); the statistics were written"
        ) from exc
    frames = recorder.finish(env)
    if len(frames) < 1:
        raise ConfigError(f"render=true: {family} gave no frames")
    return frames


def _print(summary: dict[str, Any], out: Path) -> None:
    kind = "stochastic" if summary["stochastic"] else "greedy"
    print(
        f"{summary['algorithm']} K={summary['k']} on {summary['env']}: {summary['weights']} weights "
        f"({summary['frames']} frames), {summary['episodes']} {kind} episodes, seed {summary['seed']}"
    )
    line = (
        f"return {summary['return_mean']:.4g} ± {summary['return_std']:.3g} (min {summary['return_min']:.4g}, "
        f"max {summary['return_max']:.4g}, IQM {summary['return_iqm']:.4g})"
    )
    if "win_rate" in summary:
        line += f"; win rate {summary['win_rate']:.3f}"
    print(line)
    print(f"wrote {out} ({summary['wall_clock_s']:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kpg_lightning.evaluate`` and ``kpg-evaluate``: exit 0, or 2 with one ``error: ...`` line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        print("\n".join(f"  {key}=  {text}" for key, text in HELP.items()))
        return 0
    parsed: list[tuple[str, Options]] = []
    code = cli.exit_code(lambda: parsed.append(parse_args(argv)))
    return code or cli.exit_code(lambda: evaluate(*parsed[0]))


if __name__ == "__main__":
    sys.exit(main())

"""The weights of a trained policy and the configuration they were trained with, read without unpickling anything
(``torch.load(weights_only=True)``): ``policy.pt`` (``{"format": 1, "config", "last", "best"}``, written at the end of
training) or a checkpoint's ``model.ckpt`` (the algorithm's state; best weights in the evaluation callback's state).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from kpg_lightning.algorithms import ALGORITHMS
from kpg_lightning.checkpointing import META, MODEL, find_checkpoint
from kpg_lightning.config import ModelConfig
from kpg_lightning.errors import CheckpointError, ConfigError

__all__ = ["POLICY", "Source", "load_source", "structured_configs"]

POLICY = "policy.pt"
"""The policy file of a finished run, in its run directory."""


# -- weights ------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Loaded weights and what they came from."""

    file: Path
    run_dir: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    scope: str
    """``algorithm`` (a checkpoint's whole algorithm) or ``policy`` (``algorithm.policy()``'s state)."""
    frames: int
    best: dict[str, Any] | None = None
    """``metric`` and ``value`` of best weights."""


def _load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not allowed: not a readable {what} ({reason[:200]})") from exc


def _no_best(path: Path) -> ConfigError:
    return ConfigError(
        f"weights=best is not allowed for {path}: it keeps no best weights (written before best weights were kept, "
        "or no evaluation ran); use weights=last"
    )


def _from_policy_file(path: Path, weights: str) -> Source:
    stored = _load(path, "policy file")
    if not isinstance(stored, dict) or stored.get("format") != 1 or "last" not in stored:
        raise ConfigError(f"{path} is not allowed: not a policy file (format 1) of kpg_lightning")
    entry = stored.get(weights)
    if entry is None:
        raise _no_best(path)
    best = {"metric": entry.get("metric"), "value": entry.get("value")} if weights == "best" else None
    return Source(path, path.parent, stored.get("config") or {}, entry["state_dict"], "policy", entry["frames"], best)


def _evaluation_state(callbacks: dict[str, Any]) -> dict[str, Any]:
    for key, state in callbacks.items():
        if str(key).startswith("EvaluationCallback") and isinstance(state, dict):
            return state
    return {}


def _from_checkpoint(path: Path, weights: str) -> Source:
    try:
        ckpt_dir, skipped = find_checkpoint(path)
    except CheckpointError as exc:
        message = (
            str(exc)
            .replace("resume=", "path=", 1)
            .replace(": no checkpoint directory", ": no policy.pt and no checkpoint directory")
        )
        raise ConfigError(message) from exc
    for message in skipped:
        print(f"warning: {message}", file=sys.stderr)
    stored = _load(ckpt_dir / MODEL, "checkpoint")
    run_dir = ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else ckpt_dir.parent
    config = (stored.get("hyper_parameters") or {}).get("config") or _hydra_config(run_dir)
    if weights == "best":
        best = _evaluation_state(stored.get("callbacks") or {}).get("best")
        if not best:
            raise _no_best(ckpt_dir)
        info = {"metric": best.get("metric"), "value": best.get("value")}
        return Source(ckpt_dir, run_dir, config, best["state_dict"], "policy", best["frames"], info)
    prefix = "algorithm."
    state = {k.removeprefix(prefix): v for k, v in stored["state_dict"].items() if k.startswith(prefix)}
    frames = int(OmegaConf.to_container(OmegaConf.load(ckpt_dir / META))["frames"])
    return Source(ckpt_dir, run_dir, config, state, "algorithm", frames)


def _hydra_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not allowed: its checkpoint stores no configuration and there is no {path}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def load_source(path: str, weights: str) -> Source:
    """The weights ``path`` names: a policy.pt, a run directory (its policy.pt, else its newest complete checkpoint),
    a ``checkpoints/`` or ``frames_N/`` directory, or a ``model.ckpt``/``last.ckpt`` file."""
    given = Path(path).expanduser()
    if not given.exists():
        raise ConfigError(f"path={path!r} is not allowed: no such run directory, checkpoint or policy file")
    if given.is_file() and given.suffix not in (".pt", ".ckpt"):
        raise ConfigError(f"path={path!r} is not allowed: a run directory, checkpoint (.ckpt) or policy.pt")
    if given.is_file() and given.suffix == ".pt":
        return _from_policy_file(given, weights)
    if given.is_dir() and (given / POLICY).is_file():
        return _from_policy_file(given / POLICY, weights)
    return _from_checkpoint(given, weights)


def structured_configs(config: dict[str, Any]) -> tuple[Any, ModelConfig]:
    """The algorithm's and the model's configs as the dataclasses training built them from (absent fields: today's
    defaults)."""
    name = (config.get("algorithm") or {}).get("name")
    if name not in ALGORITHMS:
        raise ConfigError(
            f"algorithm.name={name!r} of the stored configuration is not allowed: one of {list(ALGORITHMS)}"
        )
    try:
        algorithm = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ALGORITHMS[name][1]), config["algorithm"]))
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), config.get("model") or {}))
    except Exception as exc:
        raise ConfigError(f"the stored configuration does not fit this version: {str(exc).splitlines()[0]}") from exc
    return algorithm, model

"""Checkpoints that are never half-written and never unpickled, replay buffers included.

A checkpoint is a directory ``checkpoints/frames_<N>/`` holding ``model.ckpt`` (Lightning: networks, targets,
optimizers, callbacks, loops, counters, RNG states), ``replay_rank<r>/`` (the written replay rows as
memory-mapped tensors, TorchRL's writer/sampler state as JSON) and ``meta.json`` with the SHA-256 of every file.
It is written under a temporary name and renamed when complete; ``checkpoints/last.ckpt`` is a hard link to the
newest ``model.ckpt``. On resume the newest directory whose checksums verify is used; a corrupt or partial one is
reported and skipped, and a configuration that differs from the checkpoint's in anything but
:data:`RESUME_MAY_CHANGE` is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer

from kpg_lightning.errors import CheckpointError, ConfigError, NonFiniteError

__all__ = [
    "RESUME_MAY_CHANGE",
    "assert_finite",
    "capture_rng",
    "check_resume_config",
    "config_changes",
    "find_checkpoint",
    "load_replay",
    "load_rng",
    "restore_rng",
    "save_replay",
    "save_rng",
    "seal",
    "verify",
]

META = "meta.json"
MODEL = "model.ckpt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(tmp_dir: Path, final_dir: Path, frames: int) -> None:
    """Checksum every file of ``tmp_dir``, write ``meta.json``, then rename it to ``final_dir`` (atomic)."""
    files = {}
    for path in sorted(p for p in tmp_dir.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[str(path.relative_to(tmp_dir))] = _sha256(path)
    meta = tmp_dir / META
    meta.write_text(json.dumps({"frames": frames, "files": files}, indent=1))
    with open(meta, "rb") as f:
        os.fsync(f.fileno())
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def verify(ckpt_dir: Path) -> str | None:
    """None if ``ckpt_dir`` is a complete checkpoint, else why not."""
    meta = ckpt_dir / META
    if not meta.is_file():
        return "incomplete (no meta.json)"
    try:
        files = json.loads(meta.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable meta.json ({exc})"
    if MODEL not in files:
        return "no model.ckpt"
    for name, digest in files.items():
        path = ckpt_dir / name
        if not path.is_file():
            return f"missing {name}"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum (corrupt)"
    return None


def find_checkpoint(resume: str | os.PathLike) -> tuple[Path, list[str]]:
    """The newest verified checkpoint directory for ``resume`` (a run dir, its ``checkpoints/``, a checkpoint
    directory, or a ``.ckpt`` file inside one), and the warnings about newer ones that were skipped."""
    path = Path(resume).expanduser()
    if path.is_file():
        path = path.resolve().parent
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    candidates = (
        [path]
        if (path / META).exists() or path.name.startswith("frames_")
        else sorted((p for p in path.glob("frames_*") if p.is_dir()), reverse=True)
    )
    if not candidates:
        raise CheckpointError(f"resume={str(resume)!r}: no checkpoint directory (frames_*/) found")
    skipped = []
    for candidate in candidates:
        problem = verify(candidate)
        if problem is None:
            return candidate, skipped
        skipped.append(f"checkpoint {candidate} is unusable: {problem}; trying an older one")
    raise CheckpointError(f"resume={str(resume)!r}: no usable checkpoint: " + "; ".join(skipped))


def assert_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse to checkpoint NaN/inf parameters: raises :class:`NonFiniteError` naming the first one."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError(f"parameter {name} is not finite; not writing a checkpoint")


def save_replay(buffer: ReplayBuffer, path: Path) -> None:
    """The written rows of the storage (TensorDict's memory-mapped format), the writer's and sampler's state
    (JSON; TorchRL's own ``dumps``), no pickle. Only the rows in use are written: a 1M-frame buffer early in a run
    costs its filled part, not its capacity."""
    path.mkdir(parents=True, exist_ok=True)
    rows = len(buffer._storage)
    if rows:
        buffer._storage._storage[:rows].memmap(path / "storage")
    buffer._writer.dumps(path / "writer")
    buffer._sampler.dumps(path / "sampler")


def load_replay(buffer: ReplayBuffer, path: Path) -> None:
    """Inverse of :func:`save_replay`: the rows go back to the same indices of a storage of the same capacity."""
    if (path / "storage").is_dir():
        rows = TensorDict.load_memmap(path / "storage")
        buffer._storage.set(torch.arange(rows.shape[0]), rows)
    buffer._writer.loads(path / "writer")
    buffer._sampler.loads(path / "sampler")


def capture_rng(*generators: torch.Generator) -> dict[str, Any]:
    """Python, NumPy, torch (and the given generators') RNG states as tensors and plain types."""
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": [g.get_state() for g in generators],
    }


def restore_rng(state: dict[str, Any], *generators: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    for generator, g_state in zip(generators, state["generators"], strict=True):
        generator.set_state(g_state)


def save_rng(path: Path, *generators: torch.Generator) -> None:
    """:func:`capture_rng` as JSON: the random state a restored collector (or a rank) continues from."""
    state = capture_rng(*generators)
    state["numpy"]["keys"] = state["numpy"]["keys"].tolist()
    state["torch"] = state["torch"].tolist()
    state["cuda"] = [s.tolist() for s in state["cuda"]]
    state["generators"] = [s.tolist() for s in state["generators"]]
    path.write_text(json.dumps(state))


def load_rng(path: Path) -> dict[str, Any]:
    """Inverse of :func:`save_rng`, in the form :func:`restore_rng` takes."""
    state = json.loads(path.read_text())
    state["numpy"]["keys"] = torch.tensor(state["numpy"]["keys"], dtype=torch.int64)
    state["torch"] = torch.tensor(state["torch"], dtype=torch.uint8)
    state["cuda"] = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
    state["generators"] = [torch.tensor(s, dtype=torch.uint8) for s in state.get("generators", [])]
    return state


# -- resume safety ------------------------------------------------------------------------------------------------
RESUME_MAY_CHANGE = (
    "resume",
    "max_frames",
    "on_nonfinite",
    "eval.every_frames",
    "eval.absolute_episodes",
    "checkpoint.every_frames",
    "checkpoint.keep_last",
    "env.device",
    "buffer.device",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.max_time",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.default_root_dir",
    "trainer.enable_checkpointing",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.profiler",
    "kpg.log_every_n_steps",
    "progress",
    "logger",
    "callbacks",
    "compile",
)
"""Keys (and groups: ``logger`` covers ``logger.*``) that may differ between a checkpoint's configuration and the
run resuming it: budgets, cadences (and the absolute metric's episodes at the end), where and how it runs (devices,
``compile``), logging, progress and extra (observing) callbacks. Anything else
(model, algorithm, environment, K, seed, replay, collection, precision, ...) changes what is trained, and resuming
with it is refused."""


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUME_MAY_CHANGE)


def _short(value: Any) -> str:
    text = "<unset>" if value is _UNSET else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 40 else f"{text[:37]}..."


_UNSET = object()


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every key outside :data:`RESUME_MAY_CHANGE` whose resolved value differs."""
    before, after = _flat(old), _flat(new)
    keys = [*before, *(k for k in after if k not in before)]
    return [
        f"{key} {_short(before.get(key, _UNSET))} -> {_short(after.get(key, _UNSET))}"
        for key in keys
        if not _may_change(key) and before.get(key, _UNSET) != after.get(key, _UNSET)
    ]


def check_resume_config(ckpt_dir: Path, config: dict[str, Any], resume: str, shown: int = 6) -> None:
    """Refuse (:class:`ConfigError`, one line) to resume ``ckpt_dir`` with a resolved ``config`` that differs from
    the one it was trained with outside :data:`RESUME_MAY_CHANGE`. A checkpoint without a stored configuration is
    not checked."""
    stored = torch.load(ckpt_dir / MODEL, map_location="cpu", weights_only=True, mmap=True)
    old = stored.get("hyper_parameters", {}).get("config") or {}
    changes = config_changes(old, config) if old else []
    if changes:
        more = f" (+{len(changes) - shown} more)" if len(changes) > shown else ""
        raise ConfigError(
            f"resume={resume!r} is not allowed: the checkpoint was trained with another configuration: "
            f"{'; '.join(changes[:shown])}{more}; start a new run to change these (may change on resume: "
            f"{', '.join(k for k in RESUME_MAY_CHANGE if k != 'resume')})"
        )

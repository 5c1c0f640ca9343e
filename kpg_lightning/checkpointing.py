"""Checkpoints that are never half-written and never unpickled, replay buffers included.

A checkpoint is a directory ``checkpoints/frames_<N>/`` holding ``model.ckpt`` (Lightning: networks, targets,
optimizers, callbacks, loops, counters, RNG states), ``replay_rank<r>/`` (the written replay rows as
memory-mapped tensors, TorchRL's writer/sampler state as JSON) and ``meta.json`` with the SHA-256 of every file.
It is written under a temporary name and renamed when complete; ``checkpoints/last.ckpt`` is a hard link to the
newest ``model.ckpt``. On resume the newest directory whose checksums verify is used; a corrupt or partial one is
reported and skipped.
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

from kpg_lightning.errors import CheckpointError, NonFiniteError

__all__ = [
    "assert_finite",
    "capture_rng",
    "find_checkpoint",
    "load_replay",
    "restore_rng",
    "save_replay",
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
    for generator, g_state in zip(generators, state["generators"], strict=True):
        generator.set_state(g_state)

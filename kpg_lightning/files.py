"""Files that are never half-written: write to a temporary file in the same directory, then ``os.replace``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["dump_json", "replace_atomically", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace`` it into place, with the
    permissions ``open`` would give a new file (``mkstemp``'s own are owner-only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, flushed to disk before it replaces the old file (:func:`replace_atomically`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    replace_atomically(path, write)


def dump_json(path: Path, data: Any, indent: int = 1) -> None:
    """``data`` as JSON at ``path`` (:func:`write_text`)."""
    write_text(path, json.dumps(data, indent=indent))

"""Files that are never half-written: write to a temporary file in the same directory, then ``os.replace``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["dump_json", "replace_atomically"]


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def dump_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, flushed to disk before it replaces the old file (:func:`replace_atomically`)."""

    def dump(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())

    replace_atomically(path, dump)

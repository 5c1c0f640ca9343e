"""Files are replaced whole (never half-written) and readable as any new file would be."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kpg_lightning.files import dump_json, replace_atomically


def test_dump_json_writes_the_data_with_the_permissions_of_a_new_file(tmp_path):
    mask = os.umask(0o022)
    try:
        dump_json(tmp_path / "out.json", {"a": [1, 2]})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(mask)
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": [1, 2]}
    mode = stat.S_IMODE((tmp_path / "out.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "plain.txt"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    dump_json(path, {"old": True})

    def broken(tmp: Path) -> None:
        tmp.write_text('{"half":')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_atomically(path, broken)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

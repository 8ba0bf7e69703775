"""Outputs are never half-written, and a user's own folder is never replaced."""

from __future__ import annotations

import os
import stat

import pytest

from edgeloop.errors import UsageError
from edgeloop.fsutil import staged_dir, write_bytes_atomic


def test_write_bytes_atomic_replaces_whole_and_uses_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(path, b"one")
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temp file left


def test_staged_dir_swaps_in_only_on_success(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, marker="done") as tmp:
        (tmp / "done").write_text("1")
    assert (out / "done").read_text() == "1"
    with pytest.raises(RuntimeError):
        with staged_dir(out, marker="done") as tmp:
            (tmp / "done").write_text("2")
            raise RuntimeError("failed half way")
    assert (out / "done").read_text() == "1"  # the earlier output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    with staged_dir(out, marker="done") as tmp:
        (tmp / "done").write_text("3")
    assert (out / "done").read_text() == "3"


def test_staged_dir_refuses_a_foreign_folder_and_a_file(tmp_path):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="refusing to replace"):
        with staged_dir(mine, marker="report.json"):
            pass
    assert (mine / "thesis.txt").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        with staged_dir(afile):
            pass

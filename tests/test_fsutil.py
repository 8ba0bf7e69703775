"""Outputs are never half-written, and nothing edgeloop did not write is ever replaced or deleted."""

from __future__ import annotations

import os
import stat

import pytest

from edgeloop.errors import UsageError
from edgeloop.fsutil import MARKER, read_marker, staged_dir, write_bytes_atomic


def test_write_bytes_atomic_replaces_whole_and_uses_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(path, b"one")
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temp file left


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_staged_dir_swaps_in_only_on_success(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, kind="test") as tmp:
        (tmp / "done").write_text("1")
    assert (out / "done").read_text() == "1"
    marker = read_marker(out)
    assert marker["kind"] == "test" and marker["files"] == ["done"] and len(marker["id"]) == 32
    with pytest.raises(RuntimeError):
        with staged_dir(out, kind="test") as tmp:
            (tmp / "done").write_text("2")
            raise RuntimeError("failed half way")
    assert (out / "done").read_text() == "1"  # the earlier output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    with staged_dir(out, kind="test") as tmp:
        (tmp / "done").write_text("3")
    assert (out / "done").read_text() == "3"
    assert read_marker(out)["id"] != marker["id"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_dir(empty, kind="test") as tmp:  # an empty folder is fine
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in empty.iterdir()) == [MARKER, "a"]


def test_staged_dir_refuses_a_foreign_folder_and_a_file(tmp_path):
    """A web folder with a manifest.json (the name of a bundle file) is not an output: refused, untouched."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>mine</h1>")
    (site / "manifest.json").write_text('{"name": "my web app"}')
    (site / "report.json").write_text("{}")
    before = _tree(site)
    for kind in ("bundle", "c-export", "shrink", "dataset"):
        with pytest.raises(UsageError, match=f"{site}.*no {MARKER}.*refusing to replace"):
            with staged_dir(site, kind=kind) as tmp:
                (tmp / "manifest.json").write_text("{}")
    assert _tree(site) == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        with staged_dir(afile, kind="test"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "site"]


def test_a_marker_of_another_kind_or_a_broken_marker_is_refused(tmp_path):
    out = tmp_path / "c"
    with staged_dir(out, kind="c-export") as tmp:
        (tmp / "model.c").write_text("int x;")
    before = _tree(out)
    with pytest.raises(UsageError, match="holds an edgeloop C export, not a bundle"):
        with staged_dir(out, kind="bundle"):
            pass
    assert _tree(out) == before
    (out / MARKER).write_text("{broken")
    with pytest.raises(UsageError, match="cannot be read"):
        with staged_dir(out, kind="c-export"):
            pass
    assert (out / "model.c").read_text() == "int x;"


def test_rewriting_an_output_replaces_only_what_edgeloop_wrote(tmp_path):
    out = tmp_path / "b"
    with staged_dir(out, kind="bundle") as tmp:
        (tmp / "model.onnx").write_text("v1")
        (tmp / "old-only.txt").write_text("dropped in v2")
        (tmp / "source").mkdir()
        (tmp / "source" / "m.joblib").write_text("src1")
    # the user's (and the runtime's) things: a capture store, a note, a file inside edgeloop's folder
    (out / "captures").mkdir()
    (out / "captures" / "captures.db").write_text("samples")
    (out / "notes.txt").write_text("mine")
    (out / "source" / "README-mine.txt").write_text("also mine")
    kept: list = []
    with staged_dir(out, kind="bundle", kept=kept) as tmp:
        (tmp / "model.onnx").write_text("v2")
        (tmp / "source").mkdir()
        (tmp / "source" / "m.joblib").write_text("src2")
    assert _tree(out) == {MARKER: (out / MARKER).read_bytes(), "model.onnx": b"v2", "source/m.joblib": b"src2",
                          "captures/captures.db": b"samples", "notes.txt": b"mine",
                          "source/README-mine.txt": b"also mine"}
    assert sorted(kept) == ["captures", "notes.txt", "source/README-mine.txt"]
    assert read_marker(out)["files"] == ["model.onnx", "source/m.joblib"]  # the user's files are not edgeloop's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    # a failure after the user's files were found leaves every one of them in place
    before = _tree(out)
    with pytest.raises(RuntimeError):
        with staged_dir(out, kind="bundle") as tmp:
            (tmp / "model.onnx").write_text("v3")
            raise RuntimeError("boom")
    assert _tree(out) == before


def test_a_user_file_where_the_new_output_writes_is_refused(tmp_path):
    out = tmp_path / "b"
    with staged_dir(out, kind="bundle") as tmp:
        (tmp / "model.onnx").write_text("v1")
    (out / "extra.txt").write_text("the user's")
    before = _tree(out)
    with pytest.raises(UsageError, match="extra.txt is not edgeloop's"):
        with staged_dir(out, kind="bundle") as tmp:
            (tmp / "model.onnx").write_text("v2")
            (tmp / "extra.txt").write_text("edgeloop's new file")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

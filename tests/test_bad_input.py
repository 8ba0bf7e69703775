"""Bad input: one clear line naming the file (and node), exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import edgeloop
from edgeloop.errors import ModelLoadError
from edgeloop.graph import save


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True,
                          timeout=300)


def _assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory):
    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("good") / "digits.onnx"
    save(edgeloop.load(LogisticRegression(max_iter=200).fit(x / 16, y)), path)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    _assert_clean_failure(_cli("profile", str(path)), str(path), "no such file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _assert_clean_failure(_cli("profile", str(path)), str(path), "empty")


def test_truncated_onnx(tmp_path, good_onnx):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good_onnx.read_bytes()[:1000])
    _assert_clean_failure(_cli("profile", str(path)), str(path))


def test_corrupt_onnx(tmp_path, good_onnx):
    path = tmp_path / "corrupt.onnx"
    data = bytearray(good_onnx.read_bytes())
    rng = np.random.default_rng(0)
    data[10:200] = rng.integers(0, 256, 190, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    _assert_clean_failure(_cli("profile", str(path)), str(path))


@pytest.mark.parametrize("suffix", [".tflite", ".joblib", ".pt2"])
def test_garbage_in_each_format(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a model at all" * 10)
    _assert_clean_failure(_cli("profile", str(path), "--no-latency"), str(path))


def test_unknown_format(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    _assert_clean_failure(_cli("profile", str(path)), str(path), "unknown model format")


def test_directory_instead_of_file(tmp_path):
    _assert_clean_failure(_cli("targets", str(tmp_path)), str(tmp_path), "directory")


def test_operator_the_profiler_cannot_count(tmp_path):
    node = helper.make_node("Det", ["x"], ["y"], name="the_determinant")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _assert_clean_failure(_cli("profile", str(path)), str(path), "the_determinant", "Det")


def test_unknown_target_names_the_known_ones(good_onnx):
    proc = _cli("profile", str(good_onnx), "--target", "no-such-board")
    _assert_clean_failure(proc, "no-such-board")


def test_invalid_onnx_graph_is_refused(tmp_path):
    # Structurally valid protobuf, but a node reads a tensor nobody produces.
    node = helper.make_node("Relu", ["missing"], ["y"], name="r")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "dangling.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelLoadError, match="invalid ONNX model"):
        edgeloop.load(path)
    _assert_clean_failure(_cli("profile", str(path)), str(path), "invalid ONNX model")


@pytest.mark.parametrize("make_output", [
    lambda tmp: tmp / "a_folder",                 # a folder where a file is expected
    lambda tmp: tmp / "a_file.txt" / "x.onnx",    # below a file
], ids=["folder", "below-a-file"])
def test_unwritable_output_is_one_line(tmp_path, good_onnx, make_output):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file.txt").write_text("x")
    out = make_output(tmp_path)
    _assert_clean_failure(_cli("convert", str(good_onnx), "-o", str(out)), str(out))


def test_nan_limit_is_refused(good_onnx):
    _assert_clean_failure(_cli("targets", str(good_onnx), "--max-latency-ms", "nan"), "--max-latency-ms")

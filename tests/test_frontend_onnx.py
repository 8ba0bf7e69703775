"""ONNX importer and the load() dispatcher."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier

import edgeloop
from edgeloop.errors import ModelLoadError
from edgeloop.graph import get_metadata, run, save


@pytest.fixture(scope="module")
def wine_forest():
    x, y = load_wine(return_X_y=True)
    return RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y), x.astype(np.float32)


def test_saved_graph_reloads_with_same_outputs_and_metadata(tmp_path, wine_forest):
    est, x = wine_forest
    model = edgeloop.load(est)
    path = tmp_path / "sub" / "wine.onnx"
    save(model, path)
    assert not list(path.parent.glob(".edgeloop-*"))  # the atomic write leaves no temp file
    again = edgeloop.load(path)
    np.testing.assert_array_equal(run(again, x)[0], est.predict(x))
    meta = get_metadata(again)
    assert meta["labels"] == [0, 1, 2]
    assert meta["file"] == str(path)
    # provenance survives the round trip: the graph still says where it came from
    assert meta["source_format"] == "sklearn" and meta["source"] == "<estimator>"
    assert meta["estimator"] == "RandomForestClassifier"


def test_modelproto_is_accepted(wine_forest):
    est, x = wine_forest
    model = edgeloop.load(edgeloop.load(est))
    np.testing.assert_array_equal(run(model, x)[0], est.predict(x))


def test_file_without_suffix_is_sniffed(tmp_path, mlperf_dir):
    path = tmp_path / "model_without_suffix"
    path.write_bytes((mlperf_dir / "ad01_fp32.tflite").read_bytes())
    model = edgeloop.load(path)
    assert get_metadata(model)["source_format"] == "tflite"


def test_unknown_object_is_refused():
    with pytest.raises(ModelLoadError, match="cannot import an object of type builtins.dict"):
        edgeloop.load({"not": "a model"})


def test_graph_without_nodes_is_refused(tmp_path):
    graph = onnx.helper.make_graph([], "empty", [], [])
    path = tmp_path / "empty_graph.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(ModelLoadError, match="no graph nodes"):
        edgeloop.load(path)

"""profile_model end to end on models from scikit-learn, PyTorch and a QDQ int8 graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.profile import LAYER_OVERHEAD_BYTES, profile_model

KEYS = {"params", "macs", "weight_bytes", "weight_bytes_by_dtype", "flash_bytes", "peak_ram_bytes",
        "precision", "latency_ms", "inputs", "outputs", "layers", "memory"}
LAYER_KEYS = {"name", "op", "params", "macs", "output_bytes", "output_shape", "weight_bytes"}


def _check_shape_of_result(r):
    assert KEYS <= set(r)
    json.dumps(r)  # JSON-serialisable
    for layer in r["layers"]:
        assert LAYER_KEYS <= set(layer)
    assert r["peak_ram_bytes"] == r["memory"]["peak_bytes"] > 0
    assert r["macs"] == sum(layer["macs"] for layer in r["layers"])
    assert r["weight_bytes"] == sum(r["weight_bytes_by_dtype"].values())
    assert r["flash_bytes"] >= r["weight_bytes"]


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def test_sklearn_mlp(iris):
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    x, y = iris
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit(x, y)
    r = profile_model(to_onnx(mlp, x[:1]), min_runs=5, min_seconds=0.01)
    _check_shape_of_result(r)
    n_params = sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_)
    assert r["params"] == n_params == 4 * 16 + 16 + 16 * 3 + 3
    # two matrix products dominate: 4*16 + 16*3, plus bias adds, relu, softmax, argmax
    assert 4 * 16 + 16 * 3 <= r["macs"] <= 4 * 16 + 16 * 3 + 100
    assert r["precision"] == "float32"
    assert r["latency_ms"]["runs"] >= 5 and 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
    assert r["inputs"] == [{"name": "X", "dtype": "float32", "shape": [None, 4]}]
    assert any("batch 1" in a for a in r["assumptions"])


def test_sklearn_logistic_regression(iris):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    x, y = iris
    lr = LogisticRegression(max_iter=500).fit(x, y)
    r = profile_model(to_onnx(lr, x[:1]), latency=False)
    _check_shape_of_result(r)
    assert r["latency_ms"] is None
    assert r["params"] == lr.coef_.size + lr.intercept_.size  # attributes of LinearClassifier
    assert r["outputs"][1]["dtype"].startswith("sequence(map(")  # ZipMap output


@pytest.fixture(scope="module")
def torch_mlp():
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.randn(1, 10),), dynamo=True, verbose=False)
    return net, program.model_proto


def test_torch_mlp(torch_mlp):
    net, model = torch_mlp
    r = profile_model(model, min_runs=5, min_seconds=0.01)
    _check_shape_of_result(r)
    assert r["params"] == sum(p.numel() for p in net.parameters()) == 10 * 32 + 32 + 32 * 3 + 3
    # Gemm 10x32, Relu on 32, Gemm 32x3
    assert r["macs"] == 10 * 32 + 32 + 32 * 3
    assert r["weight_bytes_by_dtype"] == {"float32": 4 * (10 * 32 + 32 + 32 * 3 + 3)}
    assert r["precision"] == "float32"
    # x (40 B) and the first hidden tensor (128 B) at the first Gemm; the Relu then runs
    # in place, and the last Gemm holds 128 + 12
    assert r["peak_ram_bytes"] == 10 * 4 + 32 * 4


def test_float16_and_mixed_precision():
    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    r = profile_model(m, latency=False)
    assert r["precision"] == "float16"
    assert r["weight_bytes_by_dtype"] == {"float16": 32}
    assert r["flash_bytes"] == 32 + 2 * LAYER_OVERHEAD_BYTES
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Cast", ["m"], ["c"], to=1),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert profile_model(m, latency=False)["precision"] == "mixed"

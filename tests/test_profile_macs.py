"""MAC counts against hand-computed numbers (formula written out in each test)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.errors import UnsupportedOperatorError
from edgeloop.profile import count_macs, profile_model

RNG = np.random.default_rng(0)


def _model(nodes, x_shape, y_name="y", inits=(), opset=17, x_type=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _w(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _macs(model):
    return profile_model(model, latency=False)["macs"]


def _conv(x_shape, w_shape, **attrs):
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    return _model([node], x_shape, inits=[_w("w", w_shape)])


def test_conv_plain_with_padding():
    # N=2, C_in=3, 16x16, 8 filters 3x3, pad 1 -> 2x8x16x16
    m = _conv([2, 3, 16, 16], [8, 3, 3, 3], pads=[1, 1, 1, 1])
    assert _macs(m) == 2 * 8 * 16 * 16 * 3 * 3 * 3


def test_conv_no_padding():
    # 16x16, 3x3, no pad -> 14x14
    m = _conv([1, 3, 16, 16], [8, 3, 3, 3])
    assert _macs(m) == 1 * 8 * 14 * 14 * 3 * 3 * 3


def test_conv_grouped():
    # 8 input channels in 2 groups of 4; 16 outputs; 10x10 -> 8x8
    m = _conv([1, 8, 10, 10], [16, 4, 3, 3], group=2)
    assert _macs(m) == 1 * 16 * 8 * 8 * (8 // 2) * 3 * 3


def test_conv_depthwise():
    # group == channels: each output channel sees one input channel
    m = _conv([1, 8, 10, 10], [8, 1, 3, 3], group=8, pads=[1, 1, 1, 1])
    assert _macs(m) == 1 * 8 * 10 * 10 * 1 * 3 * 3


def test_conv_stride_2():
    # 16x16, 3x3, pad 1, stride 2 -> 8x8
    m = _conv([1, 3, 16, 16], [4, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    assert _macs(m) == 1 * 4 * 8 * 8 * 3 * 3 * 3


def test_conv_dilation_and_rectangular_kernel():
    # 3x3 kernel with dilation 2 spans 5: 10 - 5 + 1 = 6 rows; 10x4 kernel on 49x10 stride 2 pad
    m = _conv([1, 2, 10, 10], [4, 2, 3, 3], dilations=[2, 2])
    assert _macs(m) == 1 * 4 * 6 * 6 * 2 * 3 * 3
    # the KWS first layer: 49x10 input, 10x4 kernel, stride 2, SAME padding -> 25x5x64
    m = _conv([1, 1, 49, 10], [64, 1, 10, 4], strides=[2, 2], pads=[4, 1, 5, 2])
    assert _macs(m) == 1 * 64 * 25 * 5 * 1 * 10 * 4


def test_conv_1d():
    m = _conv([1, 4, 32], [6, 4, 5])
    assert _macs(m) == 1 * 6 * 28 * 4 * 5


def test_conv_transpose():
    # every input element scatters into C_out/group * kH * kW outputs
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    m = _model([node], [1, 4, 5, 5], inits=[_w("w", [4, 2, 3, 3])])
    assert _macs(m) == 1 * 4 * 5 * 5 * 2 * 3 * 3


def test_gemm_and_transposed_gemm():
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
    m = _model([node], [3, 10], inits=[_w("w", [10, 5]), _w("b", [5])])
    assert _macs(m) == 3 * 5 * 10
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    m = _model([node], [3, 10], inits=[_w("w", [5, 10]), _w("b", [5])])
    assert _macs(m) == 3 * 5 * 10
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)
    m = _model([node], [10, 3], inits=[_w("w", [10, 5])])
    assert _macs(m) == 3 * 5 * 10


def test_matmul_plain_and_batched():
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    assert _macs(_model([node], [1, 64], inits=[_w("w", [64, 12])])) == 1 * 12 * 64
    # batch of 2x3 matrices times one 4x5 matrix
    assert _macs(_model([node], [2, 3, 4], inits=[_w("w", [4, 5])])) == 2 * 3 * 5 * 4
    # batched on both sides
    assert _macs(_model([node], [2, 3, 4], inits=[_w("w", [2, 4, 6])])) == 2 * 3 * 6 * 4


def test_pooling():
    # MaxPool 2x2 stride 2 on 8x8 -> 4x4, one compare per window element
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    assert _macs(_model([node], [1, 4, 8, 8])) == 1 * 4 * 4 * 4 * 2 * 2
    # AveragePool 3x3 stride 1 pad 1 on 8x8 -> 8x8
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    assert _macs(_model([node], [1, 4, 8, 8])) == 1 * 4 * 8 * 8 * 3 * 3
    # GlobalAveragePool: one add per input element
    node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    assert _macs(_model([node], [1, 4, 8, 8])) == 1 * 4 * 8 * 8


def test_elementwise_and_data_movement():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["s"]),
             helper.make_node("Mul", ["s", "r"], ["m"]),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"])]
    # Relu, Sigmoid, Mul, Softmax: one per output element (3*5 each); Transpose, Flatten: 0
    assert _macs(_model(nodes, [1, 3, 5])) == 4 * (1 * 3 * 5)


def test_batchnorm_and_reduce_mean():
    c = 4
    inits = [_w("s", [c]), _w("b", [c]), _w("mu", [c]),
             numpy_helper.from_array(np.ones(c, np.float32), "var")]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"], ["n"]),
             helper.make_node("ReduceMean", ["n"], ["y"], axes=[2, 3])]
    # BN: one per output element; ReduceMean: one per input element
    assert _macs(_model(nodes, [1, c, 6, 6], inits=inits, opset=13)) == 1 * c * 6 * 6 + 1 * c * 6 * 6


def test_count_macs_directly_and_unsupported():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=2)
    shapes = {"x": (1, 8, 10, 10), "w": (16, 4, 3, 3), "y": (1, 16, 8, 8)}
    assert count_macs(node, shapes) == 16 * 8 * 8 * 4 * 3 * 3
    with pytest.raises(UnsupportedOperatorError) as e:
        count_macs(helper.make_node("Frobnicate", ["x"], ["y"], name="f"), shapes)
    assert e.value.op == "Frobnicate" and e.value.node == "f"
    assert "cannot count operator 'Frobnicate'" in str(e.value)


def test_unsupported_operator_in_a_model():
    node = helper.make_node("Einsum", ["x", "w"], ["y"], name="ein", equation="ij,jk->ik")
    m = _model([node], [2, 3], inits=[_w("w", [3, 4])])
    with pytest.raises(UnsupportedOperatorError) as e:
        profile_model(m, latency=False)
    assert e.value.op == "Einsum" and e.value.node == "ein"


# --- scikit-learn (ONNX-ML operators) --------------------------------------------------

@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def _skl(model, x):
    from skl2onnx import to_onnx
    return to_onnx(model, x[:1])


def _layer_macs(profile, op):
    return sum(l["macs"] for l in profile["layers"] if l["op"] == op)


def test_tree_ensembles_count_max_depth_per_tree(iris):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier
    x, y = iris
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    p = profile_model(_skl(tree, x), latency=False)
    assert _layer_macs(p, "TreeEnsembleClassifier") == tree.get_depth()
    forest = RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(x, y)
    p = profile_model(_skl(forest, x), latency=False)
    assert _layer_macs(p, "TreeEnsembleClassifier") == sum(t.get_depth() for t in forest.estimators_)
    reg = RandomForestRegressor(n_estimators=3, max_depth=5, random_state=0).fit(x, y.astype(float))
    p = profile_model(_skl(reg, x), latency=False)
    assert _layer_macs(p, "TreeEnsembleRegressor") == sum(t.get_depth() for t in reg.estimators_)


def test_linear_classifier_and_scaler(iris):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = iris
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    p = profile_model(_skl(pipe, x), latency=False)
    assert _layer_macs(p, "LinearClassifier") == 3 * 4  # 3 classes x 4 features, batch 1
    assert _layer_macs(p, "Scaler") == 4
    assert _layer_macs(p, "ZipMap") == 0


def test_tree_ensemble_v5_depth():
    # tree 0: node 0 -> (true: node 1, false: leaf); node 1 -> two leaves: depth 2
    # tree 1: node 2 -> two leaves: depth 1. Five rows: 5 * (2 + 1) comparisons
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", name="t",
        tree_roots=[0, 2], nodes_featureids=[0, 1, 2], nodes_modes=numpy_helper.from_array(
            np.zeros(3, np.uint8)),
        nodes_splits=numpy_helper.from_array(np.zeros(3, np.float32)),
        nodes_truenodeids=[1, 0, 2], nodes_trueleafs=[0, 1, 1],
        nodes_falsenodeids=[0, 1, 3], nodes_falseleafs=[1, 1, 1],
        leaf_targetids=[0, 0, 0, 0, 0], leaf_weights=numpy_helper.from_array(np.ones(5, np.float32)))
    assert count_macs(node, {"x": (5, 3), "y": (5, 1)}) == 5 * (2 + 1)


def test_label_postprocessing_does_not_make_a_model_mixed(iris):
    from sklearn.svm import SVC
    import warnings
    x, y = iris
    svc = SVC().fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skl2onnx reads SVC.probA_
        p = profile_model(_skl(svc, x), latency=False)
    assert p["precision"] == "float32"
    # kernel evaluations against every support vector dominate
    n_sv = int(svc.n_support_.sum())
    assert _layer_macs(p, "SVMClassifier") >= n_sv * 4

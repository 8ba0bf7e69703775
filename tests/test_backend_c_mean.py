"""The int8 mean (ReduceMean, GlobalAveragePool on QDQ graphs) multiplies before it divides,
as TFLite's integer Mean: with an output scale much finer than the input's it stays within
one quantization step of onnxruntime (dividing in input units first lost up to 25 steps here).
AveragePool keeps TFLite Micro's AVERAGE_POOL_2D arithmetic (divide, then requantize)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.backends.c import CModel, compile_shared, generate, reference
from edgeloop.backends.c.lower import Lowerer

X_Q, Y_Q = (0.1, 3), (0.002, -5)   # output scale 50 times finer than the input's
SHAPE = (1, 6, 7, 7)


def _qdq(node, extra_inits=()):
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in
             (("xs", np.float32(X_Q[0])), ("xz", np.int8(X_Q[1])), ("ys", np.float32(Y_Q[0])),
              ("yz", np.int8(Y_Q[1])), *extra_inits)]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]), node,
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, SHAPE)],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    del m.graph.output[:]
    m = onnx.shape_inference.infer_shapes(m)
    m.graph.output.extend([vi for vi in m.graph.value_info if vi.name == "y"])
    onnx.checker.check_model(m, full_check=True)
    return m


MODELS = {
    "ReduceMean": lambda: _qdq(helper.make_node("ReduceMean", ["xf", "axes"], ["yf"], keepdims=1),
                               [("axes", np.int64([2, 3]))]),
    "ReduceMean-nokeep": lambda: _qdq(helper.make_node("ReduceMean", ["xf", "axes"], ["yf"], keepdims=0),
                                      [("axes", np.int64([-1, -2]))]),
    "GlobalAveragePool": lambda: _qdq(helper.make_node("GlobalAveragePool", ["xf"], ["yf"])),
}


def _inputs():
    rng = np.random.default_rng(3)
    # small values around the zero point: the means span about +-0.1, i.e. +-50 output steps
    return [(X_Q[1] + rng.integers(-4, 5, SHAPE)).astype(np.int8) for _ in range(4)]


@pytest.mark.parametrize("op", list(MODELS))
def test_int8_mean_with_a_finer_output_scale_is_within_one_step_of_onnxruntime(op, tmp_path):
    model = MODELS[op]()
    calls = Lowerer(model).run().calls
    assert [c.kernel for c in calls] == ["pool_s8"]
    info = generate(model, tmp_path)
    cm = CModel(compile_shared(tmp_path, opt="-O1"), info)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst, spread = 0, set()
    for x in _inputs():
        got = cm.run_all(x)[0]
        want = sess.run(None, {"x": x})[0]
        assert got.shape == want.shape
        worst = max(worst, int(np.abs(got.astype(int) - want.astype(int)).max()))
        spread.update(want.ravel().tolist())
        # the numpy twin of the kernel gives the same bits
        y = np.zeros(want.size, np.int8)
        args = dict(zip(_param_names(), [a[1] for a in calls[0].args[2:]]))
        reference.pool_s8(x.ravel(), y, **args)
        np.testing.assert_array_equal(y, got.ravel())
    assert len(spread) > 10 and -128 not in spread and 127 not in spread   # not saturated
    assert worst <= 1, f"{op}: {worst} steps from onnxruntime"


def _param_names():
    import inspect
    return list(inspect.signature(reference.pool_s8).parameters)[2:]


def test_average_pool_keeps_tflite_micro_arithmetic():
    """AVERAGE_POOL_2D (imported TFLite models become AveragePool) still divides in input
    units with rounding, as TFLite Micro does: mode 0, not the mean's mode 2."""
    model = _qdq(helper.make_node("AveragePool", ["xf"], ["yf"], kernel_shape=[7, 7]))
    (call,) = Lowerer(model).run().calls
    args = dict(zip(["x", "y", *_param_names()], call.args))
    assert args["mode"][1] == 0
    (mean,) = Lowerer(MODELS["GlobalAveragePool"]()).run().calls
    assert dict(zip(["x", "y", *_param_names()], mean.args))["mode"][1] == 2

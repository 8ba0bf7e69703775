"""The arena planner and the graph-to-buffers rules, against hand-computed lifetimes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeloop.errors import EdgeloopError
from edgeloop.profile.memory import GreedyPlanner, live_peak, plan, plan_model

RNG = np.random.default_rng(0)


def _model(nodes, x_shape, outputs=("y",), inits=(), opset=17, domains=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=ops, ir_version=9)


def _lifetimes(p):
    return {b.name: (b.size, b.first_use, b.last_use) for b in p.buffers}


# --- the planner itself ---------------------------------------------------------------

def test_planner_hand_example():
    # A(100, steps 0-1), B(50, 1-2), C(100, 2-3). Largest first: A at 0; C does not meet
    # A in time, so it reuses offset 0; B meets both, so it goes above them at 100.
    offsets, peak = plan([(100, 0, 1), (50, 1, 2), (100, 2, 3)])
    assert offsets == [0, 100, 0]
    assert peak == 150


def test_planner_class_api_and_alignment():
    planner = GreedyPlanner(alignment=16)
    a = planner.add_buffer(10, 0, 1)
    b = planner.add_buffer(10, 0, 1)
    c = planner.add_buffer(0, 0, 1)
    offsets, peak = planner.plan()
    assert (a, b, c) == (0, 1, 2)
    assert offsets[:2] == [0, 16]  # the second buffer starts at the next 16-byte boundary
    assert peak == 16 + 10
    with pytest.raises(EdgeloopError):
        planner.add_buffer(4, 3, 2)
    with pytest.raises(EdgeloopError):
        GreedyPlanner(alignment=0)


def test_planner_accepts_dicts_and_is_deterministic():
    bufs = [{"size": 64, "first_use": 0, "last_use": 2}, {"size": 64, "first_use": 1, "last_use": 3},
            {"size": 64, "first_use": 3, "last_use": 4}]
    assert plan(bufs) == plan(bufs) == ([0, 64, 0], 128)


buffer_sets = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 12), st.integers(0, 6)).map(
        lambda t: (t[0], t[1], t[1] + t[2])),
    min_size=0, max_size=24)


@settings(max_examples=300, deadline=None)
@given(buffer_sets, st.sampled_from([1, 4, 16]))
def test_planner_never_overlaps_live_buffers(buffers, alignment):
    offsets, peak = plan(buffers, alignment)
    assert len(offsets) == len(buffers)
    for i, (s1, f1, l1) in enumerate(buffers):
        assert offsets[i] % alignment == 0
        assert offsets[i] + s1 <= peak
        for j in range(i + 1, len(buffers)):
            s2, f2, l2 = buffers[j]
            if f1 <= l2 and f2 <= l1 and s1 and s2:  # lifetimes intersect
                assert offsets[i] + s1 <= offsets[j] or offsets[j] + s2 <= offsets[i]
    assert peak >= live_peak(buffers)
    assert peak == max((o + s for o, (s, _, _) in zip(offsets, buffers)), default=0)
    assert plan(buffers, alignment) == (offsets, peak)


# --- buffers from graphs ----------------------------------------------------------------

def test_chain_lifetimes_and_peak():
    # x -> Relu -> a -> Relu -> b -> Relu -> y, every tensor 100 float32 = 400 bytes
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["y"])]
    p = plan_model(_model(nodes, [1, 100]), inplace=False)
    assert _lifetimes(p) == {"x": (400, 0, 0), "a": (400, 0, 1), "b": (400, 1, 2), "y": (400, 2, 2)}
    assert p.peak_bytes == 400 + 400  # never more than one input and one output alive
    assert p.steps == ["Relu_0", "Relu_1", "Relu_2"]


def test_residual_branch_keeps_skip_alive():
    # a = relu(x); b = relu(a); c = relu(b); y = a + c -- a lives across the branch
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    p = plan_model(_model(nodes, [1, 100]), inplace=False)
    assert _lifetimes(p) == {"x": (400, 0, 0), "a": (400, 0, 3), "b": (400, 1, 2),
                             "c": (400, 2, 3), "y": (400, 3, 3)}
    # step 2 holds a, b, c and step 3 holds a, c, y: three 400-byte buffers
    assert p.peak_bytes == 3 * 400


def test_residual_with_different_sizes():
    # x [1,8,16,16] -> conv (pad 1) a [1,8,16,16] -> maxpool b [1,8,8,8] -> upsample-free:
    # y = GlobalAveragePool(a) + GlobalAveragePool(b): a stays alive while b is computed
    inits = [numpy_helper.from_array(RNG.standard_normal((8, 8, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["gb"]),
             helper.make_node("GlobalAveragePool", ["a"], ["ga"]),
             helper.make_node("Add", ["ga", "gb"], ["y"])]
    p = plan_model(_model(nodes, [1, 8, 16, 16], inits=inits), inplace=False)
    big, small, tiny = 8 * 16 * 16 * 4, 8 * 8 * 8 * 4, 8 * 4
    assert _lifetimes(p) == {"x": (big, 0, 0), "a": (big, 0, 3), "b": (small, 1, 2),
                             "gb": (tiny, 2, 4), "ga": (tiny, 3, 4), "y": (tiny, 4, 4)}
    # step 0: x + a; step 1: a + b; step 2: a + b + gb -> the larger of 2*big and big+small+tiny
    assert p.peak_bytes == max(2 * big, big + small + tiny) == 2 * big


def test_reshape_aliases_its_input():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1, 6, 4], np.int64), "shape")]
    p = plan_model(_model(nodes, [1, 24], inits=inits), inplace=False)
    # no buffer for r; a lives until the Relu that reads r (step 1)
    assert _lifetimes(p) == {"x": (96, 0, 0), "a": (96, 0, 1), "y": (96, 1, 1)}
    assert p.tensors["r"] == "a" and p.offset_of("r") == p.offset_of("a")
    assert p.peak_bytes == 2 * 96


# --- in-place execution ------------------------------------------------------------------

def test_chain_runs_in_place():
    # the Relu chain of test_chain_lifetimes_and_peak: each Relu overwrites the tensor it
    # reads (which dies there), so x, a, b and y are one 400-byte buffer
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["y"])]
    p = plan_model(_model(nodes, [1, 100]))
    assert _lifetimes(p) == {"x": (400, 0, 2)}
    assert p.tensors == {"a": "x", "b": "x", "y": "x"}
    assert p.offset_of("y") == p.offset_of("x") == 0
    assert p.peak_bytes == 400


def test_in_place_needs_the_input_to_die():
    # a = relu(x); b = relu(a); c = relu(b); y = a + c: a is read again by the Add, so b
    # gets a buffer of its own; c overwrites b, and the Add overwrites a (both operands die)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    p = plan_model(_model(nodes, [1, 100]))
    assert p.tensors == {"a": "x", "c": "b", "y": "x"}
    assert _lifetimes(p) == {"x": (400, 0, 3), "b": (400, 1, 3)}
    assert p.peak_bytes == 2 * 400


def test_graph_output_is_never_overwritten():
    # a is a graph output as well as the Relu's input: the Relu must not overwrite it
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    p = plan_model(_model(nodes, [1, 10], outputs=("a", "y")))
    assert p.tensors == {"a": "x"}
    assert _lifetimes(p) == {"x": (40, 0, 1), "y": (40, 1, 1)}


def test_in_place_conv_scratch_is_planned():
    # x [1,6,4,4] -> 1x1 conv 6->3 (in place, scratch: the 6 values of one pixel) and
    # x [1,6,4,4] -> 1x1 conv 6->12: refused (12 output channels overrun the input)
    def conv(cout):
        w = numpy_helper.from_array(RNG.standard_normal((cout, 6, 1, 1)).astype(np.float32), "w")
        return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="pw")], [1, 6, 4, 4],
                      inits=[w])
    p = plan_model(conv(3))
    assert _lifetimes(p) == {"x": (6 * 16 * 4, 0, 0), "pw#scratch0": (6 * 4, 0, 0)}
    assert p.tensors == {"y": "x"}
    assert p.peak_bytes == 6 * 16 * 4 + 6 * 4
    assert plan_model(conv(3), inplace=False).peak_bytes == 6 * 16 * 4 + 3 * 16 * 4
    q = plan_model(conv(12))
    assert _lifetimes(q) == {"x": (6 * 16 * 4, 0, 0), "y": (12 * 16 * 4, 0, 0)}


def test_symbolic_batch_is_taken_as_one():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    p = plan_model(_model(nodes, ["N", 10]), inplace=False)
    assert _lifetimes(p) == {"x": (40, 0, 0), "y": (40, 0, 0)}
    assert any("batch 1" in a for a in p.assumptions)
    with pytest.raises(EdgeloopError, match="'x'.*symbolic dimension 'T'"):
        plan_model(_model(nodes, [1, "T"]))


def test_shapes_from_onnxruntime_when_inference_cannot_tell():
    # com.microsoft.Gelu has no ONNX shape inference: onnxruntime supplies g's shape
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
             helper.make_node("Relu", ["g"], ["y"])]
    p = plan_model(_model(nodes, [1, 10], domains=["com.microsoft"]))
    assert _lifetimes(p)["g"] == (40, 0, 1)


# --- int8 QDQ ----------------------------------------------------------------------------

def _float_convnet(tmp_path):
    def conv(name, x, y, cin, cout):
        return ([helper.make_node("Conv", [x, name + "_w", name + "_b"], [y], pads=[1] * 4, name=name)],
                [numpy_helper.from_array(RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32),
                                         name + "_w"),
                 numpy_helper.from_array(RNG.standard_normal(cout).astype(np.float32), name + "_b")])
    n1, i1 = conv("c1", "x", "c1o", 1, 8)
    n2, i2 = conv("c2", "r1", "c2o", 8, 8)
    nodes = n1 + [helper.make_node("Relu", ["c1o"], ["r1"])] + n2 + [
        helper.make_node("Relu", ["c2o"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc")]
    inits = i1 + i2 + [numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "fc_w"),
                       numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "fc_b")]
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture(scope="module")
def qdq_pair(tmp_path_factory):
    """A small float convnet and its onnxruntime quantize_static QDQ int8 version."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    tmp = tmp_path_factory.mktemp("qdq")
    model = _float_convnet(tmp)
    onnx.save(model, tmp / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.data = iter([{"x": rng.standard_normal((1, 1, 16, 16)).astype(np.float32)}
                              for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(tmp / "f.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    return model, onnx.load(str(tmp / "q.onnx"))


def test_qdq_model_plans_int8_activations(qdq_pair):
    float_model, q_model = qdq_pair
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q_model.graph.node}
    fp = plan_model(float_model)
    qp = plan_model(q_model)
    act = 8 * 16 * 16  # elements of one conv output
    # float: the two 8x16x16 float32 tensors around each Relu step
    assert fp.peak_bytes == 2 * act * 4
    # int8: conv1's output and conv2's output, one byte per element, and nothing else:
    # the Conv->Relu->Quantize float tensors in between never exist on the device
    assert qp.peak_bytes == 2 * act * 1
    sizes = sorted(b.size for b in qp.buffers)
    # float input x (1024 B), quantized x (256), two conv outputs (2048), pooled (8), fc (4), y (16)
    assert sizes == sorted([16 * 16 * 4, 16 * 16, act, act, 8, 4, 4 * 4])
    dtypes = {b.name: b.dtype for b in qp.buffers}
    assert dtypes["x"] == "float32" and dtypes["y"] == "float32"
    assert sum(d == "int8" for d in dtypes.values()) == 5


def _qdq_by_hand(act_relu="Relu"):
    """x_q int8 -> [DQ -> Conv(DQ w, DQ b) -> Relu -> Q] -> y_q, built by hand."""
    f = numpy_helper.from_array
    inits = [f(np.array(0.05, np.float32), "s_x"), f(np.array(3, np.int8), "z_x"),
             f(RNG.integers(-127, 127, (4, 2, 3, 3)).astype(np.int8), "w_q"),
             f(np.full(4, 0.01, np.float32), "s_w"), f(np.zeros(4, np.int8), "z_w"),
             f(RNG.integers(-100, 100, 4).astype(np.int32), "b_q"),
             f(np.full(4, 0.0005, np.float32), "s_b"), f(np.zeros(4, np.int32), "z_b"),
             f(np.array(0.1, np.float32), "s_y"), f(np.array(-128, np.int8), "z_y")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s_x", "z_x"], ["x_f"]),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "z_w"], ["w_f"], axis=0),
             helper.make_node("DequantizeLinear", ["b_q", "s_b", "z_b"], ["b_f"], axis=0),
             helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["c"], pads=[1] * 4, name="conv"),
             helper.make_node(act_relu, ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s_y", "z_y"], ["y"])]
    graph = helper.make_graph(nodes, "qconv",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_hand_built_qdq_kernel_is_one_step():
    p = plan_model(_qdq_by_hand())
    # one kernel step: reads x (72 int8), writes y (144 int8); no float tensor at all
    assert p.steps == ["conv"]
    assert _lifetimes(p) == {"x": (2 * 6 * 6, 0, 0), "y": (4 * 6 * 6, 0, 0)}
    assert p.peak_bytes == 2 * 6 * 6 + 4 * 6 * 6


def test_float_tensor_used_outside_the_kernel_is_real():
    # the Conv output also goes to a float graph output: it must exist, so no kernel
    m = _qdq_by_hand()
    m.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 6, 6]))
    p = plan_model(m)
    lt = _lifetimes(p)
    assert lt["c"][0] == 4 * 6 * 6 * 4 and lt["x_f"][0] == 2 * 6 * 6 * 4
    assert "r" in lt and "w_f" not in lt  # dequantized weights stay in flash


def test_qdq_profile_reports_int8(qdq_pair):
    from edgeloop.profile import profile_model
    float_model, q_model = qdq_pair
    fr = profile_model(float_model, latency=False)
    qr = profile_model(q_model, latency=False)
    assert qr["precision"] == "int8" and fr["precision"] == "float32"
    # same weights, same count; stored as int8 weights + int32 biases + float scales
    assert qr["params"] == fr["params"] == (8 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 4 + 4)
    assert qr["weight_bytes_by_dtype"]["int8"] >= 8 * 9 + 8 * 8 * 9 + 8 * 4
    assert qr["weight_bytes"] < fr["weight_bytes"]
    # the convolutions and the Gemm cost the same MACs in both
    conv_macs = 8 * 16 * 16 * 1 * 9 + 8 * 16 * 16 * 8 * 9
    for r in (fr, qr):
        assert sum(l["macs"] for l in r["layers"] if l["op"] in ("Conv", "Gemm")) == conv_macs + 8 * 4
    kernels = [l for l in qr["layers"] if l.get("kind") == "kernel"]
    assert {l["op"] for l in kernels} == {"Conv", "GlobalAveragePool", "Gemm"}
    assert all(l["output_bytes"] == np.prod(l["output_shape"]) for l in kernels)  # int8 outputs


# --- a convolution and the residual Add after it, written over the skip tensor ------------

def _qdq_residual_block(C=8, H=8, W=8, skip_is_output=False, projection=False):
    """x int8 -> conv3x3+Relu -> conv3x3 -> Q(c) -> DQ -> Add(., DQ(x)) -> Relu -> Q -> y.

    ``projection``: the skip is a 1x1 convolution of x, computed after the second conv
    (the order of a Keras ResNet's downsampling block)."""
    f = numpy_helper.from_array
    inits = [f(np.array(0.05, np.float32), "s_x"), f(np.array(3, np.int8), "z_x"),
             f(np.array(0.04, np.float32), "s_a"), f(np.array(-128, np.int8), "z_a"),
             f(np.array(0.06, np.float32), "s_c"), f(np.array(2, np.int8), "z_c"),
             f(np.array(0.08, np.float32), "s_y"), f(np.array(-128, np.int8), "z_y")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s_x", "z_x"], ["x_f"])]
    for k, (src, out, s, z, relu) in enumerate((("x", "a", "s_a", "z_a", True),
                                                ("a", "c", "s_c", "z_c", False))):
        inits += [f(RNG.integers(-127, 127, (C, C, 3, 3)).astype(np.int8), f"w{k}"),
                  f(np.full(C, 0.004, np.float32), f"s_w{k}"), f(np.zeros(C, np.int8), f"z_w{k}")]
        xin = "x_f" if src == "x" else f"{src}_f"
        if src != "x":
            nodes.append(helper.make_node("DequantizeLinear", [src, "s_a", "z_a"], [f"{src}_f"]))
        nodes += [helper.make_node("DequantizeLinear", [f"w{k}", f"s_w{k}", f"z_w{k}"], [f"w{k}_f"], axis=0),
                  helper.make_node("Conv", [xin, f"w{k}_f"], [f"{out}_c"], pads=[1] * 4, name=f"conv{k}")]
        last = f"{out}_c"
        if relu:
            nodes.append(helper.make_node("Relu", [last], [f"{out}_r"]))
            last = f"{out}_r"
        nodes.append(helper.make_node("QuantizeLinear", [last, s, z], [out]))
    skip = "x_f"
    if projection:
        inits += [f(RNG.integers(-127, 127, (C, C, 1, 1)).astype(np.int8), "wp"),
                  f(np.full(C, 0.01, np.float32), "s_wp"), f(np.zeros(C, np.int8), "z_wp")]
        nodes += [helper.make_node("DequantizeLinear", ["wp", "s_wp", "z_wp"], ["wp_f"], axis=0),
                  helper.make_node("Conv", ["x_f", "wp_f"], ["p_c"], name="proj"),
                  helper.make_node("QuantizeLinear", ["p_c", "s_a", "z_a"], ["p"]),
                  helper.make_node("DequantizeLinear", ["p", "s_a", "z_a"], ["p_f"])]
        skip = "p_f"
    nodes += [helper.make_node("DequantizeLinear", ["c", "s_c", "z_c"], ["c_f"]),
              helper.make_node("Add", ["c_f", skip], ["sum"], name="add"),
              helper.make_node("Relu", ["sum"], ["sum_r"]),
              helper.make_node("QuantizeLinear", ["sum_r", "s_y", "z_y"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.INT8, [1, C, H, W])]
    if skip_is_output:
        nodes.append(helper.make_node("Identity", ["x"], ["x_copy"]))
        outs.append(helper.make_tensor_value_info("x_copy", TensorProto.INT8, [1, C, H, W]))
    graph = helper.make_graph(nodes, "resblock",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [1, C, H, W])],
                              outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_residual_add_is_fused_into_the_conv_and_written_over_the_skip(tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeloop.backends.c import CModel, compile_shared, generate, reference, registry
    from edgeloop.backends.c.lower import lower
    from edgeloop.profile import profile_model
    from edgeloop.profile.analysis import analyze

    C, H, W = 8, 8, 8
    act = C * H * W
    m = _qdq_residual_block(C, H, W)
    steps = [s for s in analyze(m).steps if s.kind != "alias"]
    assert [(s.name, s.inplace_scheme) for s in steps] == [("conv0", ""), ("conv1", "residual")]
    assert steps[1].inplace_input == "x" and steps[1].writes == ["y"]
    p = plan_model(m)
    # two activation buffers (x, which becomes y, and conv0's output) and one output plane
    # of scratch; without the fusion x, conv0's and conv1's outputs are alive at conv1
    assert p.peak_bytes == 2 * act + H * W
    assert "c" not in _lifetimes(p)
    r = profile_model(m, latency=False)
    assert r["peak_ram_bytes"] == p.peak_bytes
    assert r["macs"] == 2 * act * C * 9 + act      # the fused Add's element-wise MACs count
    info = generate(m, tmp_path)
    assert info["arena_size"] == p.peak_bytes and "conv_s8_res" in info["kernels"]
    cm = CModel(compile_shared(tmp_path), info)
    low = lower(m)
    xs = [np.random.default_rng(seed).integers(-128, 128, (1, C, H, W)).astype(np.int8)
          for seed in range(3)]
    fused = [cm.run(x) for x in xs]
    for x, got in zip(xs, fused):
        np.testing.assert_array_equal(got, reference.run(low, x)[0])   # bit for bit
    # the same numbers as the two kernels apart (TFLite's CONV_2D then ADD)
    conv = registry.OPS["Conv"]
    monkeypatch.setitem(registry.OPS, "Conv", replace(conv, int8=replace(conv.int8, residual_add=False)))
    apart = lower(m)
    assert "conv_s8_res" not in {c.kernel for c in apart.calls} and apart.arena_size == 3 * act
    for x, got in zip(xs, fused):
        np.testing.assert_array_equal(got, reference.run(apart, x)[0])


def test_residual_skip_still_needed_is_not_overwritten():
    from edgeloop.profile.analysis import analyze

    C, H, W = 8, 8, 8
    m = _qdq_residual_block(C, H, W, skip_is_output=True)
    steps = [s for s in analyze(m).steps if s.kind != "alias"]
    assert not any(s.residual for s in steps)
    assert plan_model(m).peak_bytes >= 3 * C * H * W


def test_residual_fused_where_the_add_ran_when_the_skip_comes_later(tmp_path):
    # a projection shortcut computed after the block's second conv: the fused step runs
    # at the Add, over the projection's output
    from edgeloop.backends.c import CModel, compile_shared, generate, reference
    from edgeloop.backends.c.lower import lower
    from edgeloop.profile.analysis import analyze

    C, H, W = 8, 8, 8
    act = C * H * W
    m = _qdq_residual_block(C, H, W, projection=True)
    steps = [s for s in analyze(m).steps if s.kind != "alias"]
    assert [(s.name, s.inplace_scheme) for s in steps] == [
        ("conv0", ""), ("proj", "conv_pixels"), ("conv1", "residual")]
    assert steps[2].inplace_input == "p"
    p = plan_model(m)
    # the projection overwrites x (1x1, in place), conv1 + Add overwrite p: two activation
    # buffers and conv1's one-plane scratch, never conv1's output on its own
    assert p.peak_bytes == 2 * act + H * W
    info = generate(m, tmp_path)
    assert info["arena_size"] == p.peak_bytes
    cm = CModel(compile_shared(tmp_path), info)
    low = lower(m)
    x = np.random.default_rng(5).integers(-128, 128, (1, C, H, W)).astype(np.int8)
    np.testing.assert_array_equal(cm.run(x), reference.run(low, x)[0])

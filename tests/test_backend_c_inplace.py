"""In-place execution: planned by the shared planner, run by the C, identical numbers.

A step writes its output over an input that dies there when the kernel can do so
exactly (``edgeloop.profile.analysis.decide_inplace``). The plans below are computed by
hand from the shapes; the C with in-place kernels must equal the numpy reference bit
for bit on int8 and onnxruntime within 1e-5 on float, and its arena must be the
profiler's peak. Shapes where in-place is unsafe (C_out > C_in, a strided 1x1
convolution, a depthwise output plane larger than its input plane) must be refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop import graph
from edgeloop.backends.c import CModel, compile_shared, generate, reference
from edgeloop.backends.c.lower import lower
from edgeloop.profile import profile_model
from edgeloop.profile.analysis import analyze
from edgeloop.profile.memory import plan_model

RNG = np.random.default_rng(7)
F = numpy_helper.from_array


def _model(nodes, inits, x_shape, y_shape, dtype=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, x_shape)],
                          [helper.make_tensor_value_info("y", dtype, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _build(model, tmp_path, prefix):
    info = generate(model, tmp_path, prefix)
    return CModel(compile_shared(tmp_path, prefix, opt="-O1"), info), info


def _schemes(model):
    return [s.inplace_scheme for s in analyze(model).steps if s.kind != "alias"]


# ----- float ------------------------------------------------------------------------------

def _float_conv(name, x, y, cin, cout, k, stride=1, pad=0, group=1):
    w = (RNG.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32) * 0.1
    node = helper.make_node("Conv", [x, name + "_w", name + "_b"], [y], name=name, group=group,
                            strides=[stride, stride], pads=[pad] * 4, kernel_shape=[k, k])
    return [node], [F(w, name + "_w"), F(b, name + "_b")]


def _chain_float():
    """x [1,8,6,6] -> 1x1 conv 8->4 -> Relu -> depthwise 3x3 (pad 1) -> y [1,4,6,6]."""
    n1, i1 = _float_conv("pw", "x", "a", 8, 4, 1)
    n2, i2 = _float_conv("dw", "r", "y", 4, 4, 3, pad=1, group=4)
    return _model(n1 + [helper.make_node("Relu", ["a"], ["r"], name="relu")] + n2, i1 + i2,
                  [1, 8, 6, 6], [1, 4, 6, 6])


def test_float_chain_plan_by_hand():
    m = _chain_float()
    p = plan_model(m)
    x, a = 8 * 36 * 4, 4 * 36 * 4
    assert _schemes(m) == ["conv_pixels", "elementwise", "conv_groups"]
    # a, r and y are written over x: one buffer, alive through all three steps
    assert p.tensors["a"] == p.tensors["r"] == p.tensors["y"] == "x"
    byname = {b.name: (b.size, b.first_use, b.last_use) for b in p.buffers}
    assert byname["x"] == (x, 0, 2)
    # scratch: the 8 input values of one pixel (step 0), one 6x6 output plane (step 2)
    scratch = sorted(v for k, v in byname.items() if "#scratch" in k)
    assert scratch == [(8 * 4, 0, 0), (36 * 4, 2, 2)]
    assert p.peak_bytes == x + 36 * 4
    # without in-place execution: x and a alive at step 0
    assert plan_model(m, inplace=False).peak_bytes == x + a
    assert profile_model(m, latency=False)["peak_ram_bytes"] == p.peak_bytes


@pytest.mark.parametrize("case", [
    # (name, cin, cout, k, stride, pad, group, expected scheme)
    ("pw_shrink", 8, 4, 1, 1, 0, 1, "conv_pixels"),
    ("pw_same", 6, 6, 1, 1, 0, 1, "conv_pixels"),
    ("pw_grow", 4, 8, 1, 1, 0, 1, ""),            # C_out > C_in: outputs would overrun
    ("pw_stride2", 8, 4, 1, 2, 0, 1, ""),         # output pixel p is not input pixel p
    ("dw_s1", 6, 6, 3, 1, 1, 6, "conv_groups"),
    ("dw_s2", 6, 6, 3, 2, 1, 6, "conv_groups"),    # smaller planes: still safe
    ("dw_bigger", 4, 4, 3, 1, 3, 4, ""),           # output plane larger than input plane
    ("grouped", 8, 4, 3, 1, 1, 2, "conv_groups"),
    ("dense3x3", 4, 4, 3, 1, 1, 1, ""),            # a full convolution needs both maps
])
def test_float_conv_inplace_matches_onnxruntime(case, tmp_path):
    _name, cin, cout, k, stride, pad, group, scheme = case
    nodes, inits = _float_conv("c", "x", "y", cin, cout, k, stride, pad, group)
    out = (6 + 2 * pad - k) // stride + 1
    m = _model(nodes, inits, [1, cin, 6, 6], [1, cout, out, out])
    assert _schemes(m) == [scheme]
    cm, info = _build(m, tmp_path, "m")
    assert info["arena_size"] == profile_model(m, latency=False)["peak_ram_bytes"]
    if scheme:
        assert {"conv_pixels": "conv_f32_pw_ip", "conv_groups": "conv_f32_grp_ip"}[scheme] in info["kernels"]
        assert info["arena_size"] < plan_model(m, inplace=False).peak_bytes
    xs = RNG.standard_normal((5, 1, cin, 6, 6)).astype(np.float32)
    sess = graph.session(m)
    for x in xs:
        np.testing.assert_allclose(cm.run(x), sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_float_chain_matches_onnxruntime(tmp_path):
    m = _chain_float()
    cm, info = _build(m, tmp_path, "chain")
    assert info["arena_size"] == plan_model(m).peak_bytes
    sess = graph.session(m)
    for x in RNG.standard_normal((5, 1, 8, 6, 6)).astype(np.float32):
        np.testing.assert_allclose(cm.run(x), sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_residual_input_is_not_overwritten(tmp_path):
    # y = relu(x) + x: x is still needed by the Add, so the Relu may not run in place;
    # the Add then overwrites one of its two dying operands
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])]
    m = _model(nodes, [], [1, 50], [1, 50])
    assert _schemes(m) == ["", "elementwise"]
    assert plan_model(m).peak_bytes == 2 * 200
    cm, _ = _build(m, tmp_path, "res")
    x = RNG.standard_normal((1, 50)).astype(np.float32)
    np.testing.assert_allclose(cm.run(x), np.maximum(x, 0) + x, rtol=1e-6)


# ----- int8 (QDQ built by hand) ---------------------------------------------------------------

def _qconv(name, x, y, cin, cout, k, stride=1, pad=0, group=1, relu=False, x_s=0.05, x_zp=3):
    n_in = cin // group * k * k
    y_s = 0.05 * 0.01 * 60 * np.sqrt(n_in)
    inits = [F(np.array(x_s, np.float32), name + "_sx"), F(np.array(x_zp, np.int8), name + "_zx"),
             F(RNG.integers(-127, 128, (cout, cin // group, k, k)).astype(np.int8), name + "_wq"),
             F((0.01 * RNG.uniform(0.5, 1.5, cout)).astype(np.float32), name + "_sw"),
             F(np.zeros(cout, np.int8), name + "_zw"),
             F(RNG.integers(-3000, 3000, cout).astype(np.int32), name + "_bq"),
             F(np.array(y_s, np.float32), name + "_sy"), F(np.array(-5, np.int8), name + "_zy")]
    bs = (x_s * onnx.numpy_helper.to_array(inits[3])).astype(np.float32)
    inits += [F(bs, name + "_sb"), F(np.zeros(cout, np.int32), name + "_zb")]
    conv_out = name + "_c"
    nodes = [helper.make_node("DequantizeLinear", [x, name + "_sx", name + "_zx"], [name + "_xf"]),
             helper.make_node("DequantizeLinear", [name + "_wq", name + "_sw", name + "_zw"],
                              [name + "_wf"], axis=0),
             helper.make_node("DequantizeLinear", [name + "_bq", name + "_sb", name + "_zb"],
                              [name + "_bf"], axis=0),
             helper.make_node("Conv", [name + "_xf", name + "_wf", name + "_bf"], [conv_out],
                              name=name, group=group, strides=[stride, stride], pads=[pad] * 4,
                              kernel_shape=[k, k])]
    if relu:
        nodes.append(helper.make_node("Relu", [conv_out], [name + "_r"]))
        conv_out = name + "_r"
    nodes.append(helper.make_node("QuantizeLinear", [conv_out, name + "_sy", name + "_zy"], [y]))
    return nodes, inits, (float(y_s), -5)


def _check_int8(m, tmp_path, prefix, x_shape, n=6):
    cm, info = _build(m, tmp_path, prefix)
    assert info["arena_size"] == profile_model(m, latency=False)["peak_ram_bytes"]
    low = lower(m)
    moving = 0
    for _ in range(n):
        x = RNG.integers(-128, 128, x_shape).astype(np.int8)
        got = cm.run(x)
        np.testing.assert_array_equal(got, reference.run(low, x)[0])
        moving += int(np.count_nonzero((got > -128) & (got < 127)))
    assert moving > 0   # not everything saturated: the comparison means something
    return info


def test_int8_chain_plan_by_hand_and_bit_exact(tmp_path):
    # x int8 [1,16,5,5] -> pointwise 16->16 (+ Relu) -> depthwise 3x3 pad 1 -> y int8
    n1, i1, q1 = _qconv("pw", "x", "a", 16, 16, 1, relu=True)
    n2, i2, _ = _qconv("dw", "a", "y", 16, 16, 3, pad=1, group=16, x_s=q1[0], x_zp=q1[1])
    m = _model(n1 + n2, i1 + i2, [1, 16, 5, 5], [1, 16, 5, 5], TensorProto.INT8)
    assert _schemes(m) == ["conv_pixels", "conv_groups"]
    p = plan_model(m)
    act = 16 * 25
    assert p.tensors["a"] == p.tensors["y"] == "x"
    scratch = sorted((b.size, b.first_use, b.dtype) for b in p.buffers if "#scratch" in b.name)
    # 16 saved input values (int16, zero point removed) at step 0; one 5x5 int8 plane at step 1
    assert scratch == [(25, 1, "int8"), (16 * 2, 0, "int16")]
    assert p.peak_bytes == act + 16 * 2
    assert plan_model(m, inplace=False).peak_bytes == 2 * act
    info = _check_int8(m, tmp_path, "q", [1, 16, 5, 5])
    # both run in place in backends/c/fast.py's kernels (the pointwise reads two pixels, then
    # writes them; the depthwise computes each plane into the planned scratch)
    assert {"fast_conv_s8_1x1s1x1", "fast_dw3x3_s8"} <= set(info["kernels"])


@pytest.mark.parametrize("case", [
    ("pw_shrink", 12, 8, 1, 1, 0, 1, "conv_pixels"),
    ("pw_grow", 4, 8, 1, 1, 0, 1, ""),
    ("pw_stride2", 8, 4, 1, 2, 0, 1, ""),
    ("dw_s2", 8, 8, 3, 2, 1, 8, "conv_groups"),
    ("dw_bigger", 4, 4, 3, 1, 3, 4, ""),
    ("grouped", 8, 4, 3, 1, 1, 2, "conv_groups"),
])
def test_int8_conv_inplace_bit_exact(case, tmp_path):
    _name, cin, cout, k, stride, pad, group, scheme = case
    nodes, inits, _ = _qconv("c", "x", "y", cin, cout, k, stride, pad, group)
    out = (6 + 2 * pad - k) // stride + 1
    m = _model(nodes, inits, [1, cin, 6, 6], [1, cout, out, out], TensorProto.INT8)
    assert _schemes(m) == [scheme]
    info = _check_int8(m, tmp_path, "q", [1, cin, 6, 6])
    used = {k for k in info["kernels"] if k.endswith("_ip")}
    # 3x3 depthwise and pointwise convs run in place in backends/c/fast.py's kernels
    fast_ip = {"conv_pixels": "fast_conv_s8_1x1s1x1", "conv_groups": "fast_dw3x3_s8"}.get(scheme)
    if fast_ip and fast_ip in info["kernels"]:
        # the generic in-place kernel is only the fallback of cores without the DSP extension
        assert fast_ip in {r["kernel"] for r in info["layers"]}
    else:
        assert used == ({"conv_pixels": {"conv_s8_pw_ip"}, "conv_groups": {"conv_s8_grp_ip"}}[scheme]
                        if scheme else set())


def test_int8_add_and_relu_run_in_place(tmp_path):
    # a = pointwise(x) (x still needed), s = a + x (both die: s overwrites a), y = relu(s);
    # the conv reads x itself, so it cannot run fused with the Add over x
    n1, i1, _ = _qconv("pw", "x", "a", 8, 8, 1)
    f = F
    inits = i1 + [f(np.array(0.08, np.float32), "s_s"), f(np.array(2, np.int8), "s_z"),
                  f(np.array(0.04, np.float32), "r_s"), f(np.array(-128, np.int8), "r_z")]
    nodes = n1 + [
        helper.make_node("DequantizeLinear", ["a", "pw_sy", "pw_zy"], ["af"]),
        helper.make_node("DequantizeLinear", ["x", "pw_sx", "pw_zx"], ["xf2"]),
        helper.make_node("Add", ["af", "xf2"], ["sf"], name="add"),
        helper.make_node("QuantizeLinear", ["sf", "s_s", "s_z"], ["s"]),
        helper.make_node("DequantizeLinear", ["s", "s_s", "s_z"], ["sf2"]),
        helper.make_node("Relu", ["sf2"], ["rf"], name="relu"),
        helper.make_node("QuantizeLinear", ["rf", "r_s", "r_z"], ["y"])]
    m = _model(nodes, inits, [1, 8, 4, 4], [1, 8, 4, 4], TensorProto.INT8)
    assert _schemes(m) == ["", "elementwise", "elementwise"]
    p = plan_model(m)
    assert p.tensors["s"] == p.tensors["y"] == "a"
    assert p.peak_bytes == 2 * 8 * 16
    _check_int8(m, tmp_path, "qa", [1, 8, 4, 4])


# ----- batch norm folded into the convolution before it ------------------------------------

def _conv_bn(extra_output=False, group=1):
    c, m = 4, 6 if group == 1 else 4
    nodes, inits = _float_conv("conv", "x", "c", c, m, 3, pad=1, group=group)
    inits += [F(RNG.uniform(0.5, 2.0, m).astype(np.float32), "gamma"),
              F(RNG.standard_normal(m).astype(np.float32), "beta"),
              F(RNG.standard_normal(m).astype(np.float32), "mean"),
              F(RNG.uniform(0.2, 3.0, m).astype(np.float32), "var")]
    nodes += [helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"],
                               name="bn", epsilon=1e-3)]
    m_ = _model(nodes, inits, [1, c, 7, 7], [1, m, 7, 7])
    if extra_output:
        m_.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, m, 7, 7]))
    return m_


@pytest.mark.parametrize("group", [1, 4])
def test_conv_batchnorm_is_one_folded_step(group, tmp_path):
    m = _conv_bn(group=group)
    a = analyze(m)
    steps = [s for s in a.steps if s.kind != "alias"]
    assert [(s.op, s.writes) for s in steps] == [("Conv", ["y"])]
    p = plan_model(m)
    # the conv's own output never exists: only x and y (in place for the depthwise one)
    assert "c" not in p.tensors and "c" not in {b.name for b in p.buffers}
    io = 4 * 7 * 7 * 4, (6 if group == 1 else 4) * 7 * 7 * 4
    assert p.peak_bytes == (sum(io) if group == 1 else io[0] + 7 * 7 * 4)
    cm, info = _build(m, tmp_path, "cbn")
    assert "batchnorm_f32" not in info["kernels"]
    assert info["arena_size"] == profile_model(m, latency=False)["peak_ram_bytes"] == p.peak_bytes
    sess = graph.session(m)
    for x in RNG.standard_normal((5, 1, 4, 7, 7)).astype(np.float32):
        np.testing.assert_allclose(cm.run(x), sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_batchnorm_not_folded_when_conv_output_is_used(tmp_path):
    m = _conv_bn(extra_output=True)
    assert [s.op for s in analyze(m).steps if s.kind != "alias"] == ["Conv", "BatchNormalization"]
    cm, info = _build(m, tmp_path, "cbn2")
    assert "batchnorm_f32" in info["kernels"]
    sess = graph.session(m)
    x = RNG.standard_normal((1, 4, 7, 7)).astype(np.float32)
    got = cm.run_all(x)
    want = sess.run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

"""The C backend, end to end from Python: generate C, build it with gcc, call it through ctypes.

References: onnxruntime for float models (within 1e-5 relative), the TFLite Micro
interpreter (``tflite-micro``) for the MLPerf Tiny int8 models (bit for bit), and the
numpy reference of the integer kernels (``edgeloop.backends.c.reference``, bit for bit).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeloop import graph
from edgeloop.backends.c import CModel, compile_shared, generate, reference
from edgeloop.backends.c.lower import lower
from edgeloop.profile import profile_model

sys.path.insert(0, str(Path(__file__).parent))
from test_frontend_tflite import (AD_OUT_SCALE, AD_OUT_ZP, ad_quantize, ad_windows,  # noqa: E402
                                  kws_input, tflm)

import torch  # noqa: E402


# ----- the digits CNN (float32 and onnxruntime's QDQ int8) -------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return train_test_split(X, y, test_size=0.25, random_state=0)


class DigitsCNN(torch.nn.Module):
    """Conv+BN, depthwise conv+BN, pointwise conv with a residual add, pools, softmax."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.dw(x)))
        y = self.pw(y) + x
        y = torch.clamp(self.c2(self.pool(y) if False else y), 0.0, 6.0)
        y = self.pool(y)
        y = self.gap(y).flatten(1)
        return torch.softmax(self.fc(y), 1)


@pytest.fixture(scope="module")
def digits_cnn(digits):
    import edgeloop

    Xtr, Xte, ytr, yte = digits
    torch.manual_seed(0)
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    for epoch in range(4):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            p = net(xt[i:i + 64])
            loss = torch.nn.functional.nll_loss(torch.log(p + 1e-9), yt[i:i + 64])
            loss.backward()
            opt.step()
    net.eval()
    return edgeloop.load(net, torch.zeros(1, 1, 8, 8))


def build(model, tmp: Path, prefix: str, opt: str = "-O1"):
    info = generate(model, tmp, prefix)
    lib = compile_shared(tmp, prefix, opt=opt)
    return CModel(lib, info), info


@pytest.fixture(scope="module")
def float_cnn(digits_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("float_cnn")
    cm, info = build(digits_cnn, out, "digits")
    return cm, info, out


def test_float_cnn_matches_onnxruntime(digits, digits_cnn, float_cnn):
    _, Xte, _, yte = digits
    cm, info, _ = float_cnn
    got = cm.run(Xte)
    sess = graph.session(digits_cnn)
    name = digits_cnn.graph.input[0].name
    want = np.concatenate([sess.run(None, {name: Xte[i:i + 1]})[0] for i in range(len(Xte))])
    assert got.shape == want.shape == (len(Xte), 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert (got.argmax(1) == yte).mean() > 0.8      # a trained model on real images
    ops = {n.op_type for n in digits_cnn.graph.node}
    # the graph really holds what the test claims to cover (BN is folded by the exporter)
    assert {"Conv", "Add", "MaxPool", "Softmax", "Gemm", "Clip"} <= ops
    groups = [a.i for n in digits_cnn.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert 8 in groups


def test_float_arena_equals_profiler_peak(digits_cnn, float_cnn):
    _, info, out = float_cnn
    prof = profile_model(digits_cnn, latency=False)
    assert info["arena_size"] == prof["peak_ram_bytes"] > 0
    h = (out / "digits.h").read_text()
    assert f"#define DIGITS_ARENA_SIZE {prof['peak_ram_bytes']}" in h
    assert "#define DIGITS_INPUT_SIZE 256" in h and "#define DIGITS_OUTPUT_SIZE 40" in h
    assert "int digits_run(const void *input, void *output);" in h


def test_emitted_text(float_cnn):
    _, info, out = float_cnn
    c = (out / "digits.c").read_text()
    assert "malloc" not in c and "static const float" in c
    assert "k_conv_f32" in c and "k_conv_s8" not in c and "k_tree_ensemble" not in c
    # one arena, statically sized
    assert len(re.findall(r"static union \{ uint64_t align; unsigned char bytes\[\d+\]; \} el_arena;", c)) == 1
    # an application compiles against the header alone
    app = out / "app.c"
    app.write_text('#include "digits.h"\nstatic float in[64], o[10];\n'
                   'int main(void) { return digits_run(in, o); }\n')
    import subprocess
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-o",
                        str(out / "app"), str(app), str(out / "digits.c"), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([str(out / "app")]).returncode == 0


def test_float_kernels_small_graphs(tmp_path):
    """Ops the CNN does not hold: grouped/dilated/strided conv, transposes, concat, pads,
    sigmoid/tanh, batch norm as a kernel, MatMul with a batch, each against onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "s"),
             numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "t"),
             numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "mu"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "var"),
             numpy_helper.from_array(rng.normal(size=(11, 7)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(rng.normal(size=(1, 6, 1, 1)).astype(np.float32), "bias4")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, strides=[2, 1],
                         dilations=[1, 2], pads=[1, 2, 0, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "t", "mu", "var"], ["bn"]),
        helper.make_node("Add", ["bn", "bias4"], ["ba"]),
        helper.make_node("Sigmoid", ["ba"], ["sg"]),
        helper.make_node("Tanh", ["c"], ["th"]),
        helper.make_node("Concat", ["sg", "th"], ["cc"], axis=1),
        helper.make_node("Pad", ["cc", "pads"], ["pd"], mode="reflect"),
        helper.make_node("Transpose", ["pd"], ["tr"], perm=[0, 2, 1, 3]),
        helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 2], strides=[2, 2],
                         pads=[1, 0, 1, 1], count_include_pad=1),
        helper.make_node("MatMul", ["tr", "m"], ["mm"]),
        helper.make_node("Softmax", ["mm"], ["y"], axis=2),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("ap", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = onnx.shape_inference.infer_shapes(m)
    cm, info = build(m, tmp_path, "small")
    assert info["arena_size"] == profile_model(m, latency=False)["peak_ram_bytes"]
    for trial in range(3):
        x = rng.normal(size=(1, 4, 9, 9)).astype(np.float32)
        got = cm.run_all(x)
        want = graph.run(m, x)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- int8: MLPerf Tiny against TFLite Micro ---------------------------------------------------


@pytest.fixture(scope="module")
def kws_c(mlperf_dir, tmp_path_factory):
    from edgeloop.frontends.tflite import load_tflite

    model = load_tflite(mlperf_dir / "kws_ref_model.tflite")
    out = tmp_path_factory.mktemp("kws")
    cm, info = build(model, out, "kws", opt="-O2")
    return model, cm, info, out


@pytest.fixture(scope="module")
def ad_c(mlperf_dir, tmp_path_factory):
    from edgeloop.frontends.tflite import load_tflite

    model = load_tflite(mlperf_dir / "ad01_int8.tflite")
    out = tmp_path_factory.mktemp("ad")
    cm, info = build(model, out, "ad", opt="-O2")
    return model, cm, info, out


def test_kws_golden_and_tflm(mlperf_dir, kws_c):
    model, cm, info, out = kws_c
    x = kws_input(mlperf_dir)
    y = cm.run(x)
    interp = tflm(mlperf_dir / "kws_ref_model.tflite")
    interp.set_input(x, 0)
    interp.invoke()
    expected = np.full((1, 12), -128, np.int8)
    expected[0, 5] = 127
    np.testing.assert_array_equal(y, expected)                 # the README's golden result
    np.testing.assert_array_equal(y, interp.get_output(0))     # identical to TFLite Micro
    # perturbed real inputs give unsaturated softmax outputs: still identical, and equal to
    # the numpy reference
    rng = np.random.default_rng(0)
    low = lower(model)
    unsaturated = 0
    for _ in range(12):
        xp = np.clip(x.astype(np.int64) + rng.integers(-40, 41, x.shape), -128, 127).astype(np.int8)
        y = cm.run(xp)
        interp.set_input(xp, 0)
        interp.invoke()
        np.testing.assert_array_equal(y, interp.get_output(0))
        np.testing.assert_array_equal(y, reference.run(low, xp)[0])
        unsaturated += int(np.count_nonzero((y > -128) & (y < 127)))
    assert unsaturated > 10


def test_kws_header_and_no_float(mlperf_dir, kws_c):
    model, cm, info, out = kws_c
    h = (out / "kws.h").read_text()
    c = (out / "kws.c").read_text()
    assert "#define KWS_INPUT_SIZE 490" in h and "#define KWS_OUTPUT_SIZE 12" in h
    assert "#define KWS_INPUT_ZERO_POINT 83" in h and "#define KWS_OUTPUT_ZERO_POINT -128" in h
    assert info["input_quant"]["scale"] == pytest.approx(0.5847029)
    # no floating point anywhere in the int8 model's code
    assert not re.search(r"\b(float|double)\b", c) and "math.h" not in c
    # TFLite Micro plans 16,000 bytes of activations for KWS (two 25x5x64 maps); with the
    # convolutions after the first one run in place, the arena is the input (490) and the
    # first convolution's output (8,000), and it is the profiler's figure
    assert info["arena_size"] == 490 + 8000 == profile_model(model, latency=False)["peak_ram_bytes"]
    assert {"conv_s8", "conv_s8_grp_ip", "conv_s8_pw_ip", "fc_s8", "pool_s8", "softmax_s8"} <= set(
        info["kernels"])
    # on DSP cores the convolutions run backends/c/fast.py's kernels (the depthwise and
    # pointwise ones in place), the generic ones being compiled only without the extension
    assert {"fast_dw3x3_s8", "fast_conv_s8_10x4s2x2", "fast_conv_s8_1x1s1x1"} <= set(info["kernels"])
    assert [r["kernel"] for r in info["layers"] if r["op"] == "Conv"][:3] == [
        "fast_conv_s8_10x4s2x2", "fast_dw3x3_s8", "fast_conv_s8_1x1s1x1"]
    assert "#if EL_FAST" in c


def test_ad_score_and_tflm(mlperf_dir, ad_c):
    model, cm, info, out = ad_c
    interp = tflm(mlperf_dir / "ad01_int8.tflite")
    low = lower(model)
    errors, mismatches = [], 0
    windows = ad_windows(mlperf_dir)
    for k, w in enumerate(windows):
        x = ad_quantize(w)
        y = cm.run(x)
        interp.set_input(x, 0)
        interp.invoke()
        mismatches += int(np.count_nonzero(y != interp.get_output(0)))
        if k % 7 == 0:
            np.testing.assert_array_equal(y, reference.run(low, x)[0])
        deq = (y.astype(np.float32) - AD_OUT_ZP) * np.float32(AD_OUT_SCALE)
        errors.append(np.mean((w - deq[0]) ** 2))
    assert len(windows) == 196
    assert mismatches == 0                       # every output of every window identical
    assert np.mean(errors) == pytest.approx(10.26, abs=0.01)
    assert info["arena_size"] == 768 == profile_model(model, latency=False)["peak_ram_bytes"]
    assert "float" not in (out / "ad.c").read_text()


# ----- int8: onnxruntime's quantize_static QDQ model of the digits CNN ----------------------------


@pytest.fixture(scope="module")
def qdq_cnn(digits, digits_cnn, tmp_path_factory):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    Xtr = digits[0]
    out = tmp_path_factory.mktemp("qdq")
    onnx.save(digits_cnn, out / "float.onnx")
    name = digits_cnn.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: Xtr[i:i + 1]} for i in range(200)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(out / "float.onnx"), str(out / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    q = onnx.load(out / "q.onnx")
    cm, info = build(q, out, "qdigits")
    return q, cm, info


def test_qdq_cnn_matches_reference_and_onnxruntime(digits, qdq_cnn):
    _, Xte, _, yte = digits
    q, cm, info = qdq_cnn
    assert info["arena_size"] == profile_model(q, latency=False)["peak_ram_bytes"]
    assert {"conv_s8", "pool_s8", "fc_s8", "softmax_s8"} <= set(info["kernels"])
    # the residual Add runs fused into the convolution before it, over the skip tensor; on
    # DSP cores backends/c/fast.py's kernels run instead (their generic twins elsewhere)
    assert {"add_s8", "conv_s8_res"} & set(info["kernels"])
    assert {"fast_dw3x3_s8", "fast_conv_s8_3x3s1x1"} <= set(info["kernels"])
    low = lower(q)
    got = cm.run(Xte)
    ref = np.concatenate([reference.run(low, Xte[i:i + 1])[0] for i in range(len(Xte))])
    np.testing.assert_array_equal(got, ref)          # C == numpy reference, bit for bit
    sess = graph.session(q)
    name = q.graph.input[0].name
    want = np.concatenate([sess.run(None, {name: Xte[i:i + 1]})[0] for i in range(len(Xte))])
    # the output is DequantizeLinear(softmax int8): compare in output quantization steps
    dq = next(n for n in q.graph.node if n.output[0] == q.graph.output[0].name)
    step = float(onnx.numpy_helper.to_array(next(i for i in q.graph.initializer
                                                 if i.name == dq.input[1])))
    steps = np.round(np.abs(got - want) / step).astype(int)
    # End to end, one-step rounding differences (onnxruntime rounds once in float, TFLite's
    # fixed-point requantization twice) are amplified by the layers after them, most on the
    # softmax output near a decision: measured 95-98% of the outputs within one step and a few
    # up to 24 steps (onnxruntime 1.32's calibration); each kernel alone is within one step
    # (the next test) and the predictions agree.
    assert np.mean(steps <= 1) > 0.9 and steps.max() <= 48, np.bincount(steps.ravel())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    assert (got.argmax(1) == yte).mean() > 0.8


def test_qdq_cnn_per_kernel_within_one_step(digits, qdq_cnn):
    """Each int8 kernel alone, fed onnxruntime's own input tensors, is within one step of
    onnxruntime's output (the requantization rounding), without end-to-end amplification."""
    _, Xte, _, _ = digits
    q, cm, info = qdq_cnn
    low = lower(q)
    int8_outs = sorted({a[1] for c in low.calls for a in c.args if a[0] == "out"
                        and not c.kernel.endswith("f32") and c.kernel != "dequantize_s8"})
    exposed = onnx.ModelProto()
    exposed.CopyFrom(q)
    have = {o.name for o in exposed.graph.output}
    for t in sorted({a[1] for c in low.calls for a in c.args if a[0] in ("in", "out")}):
        if t not in have:
            exposed.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = graph.session(exposed)
    names = [o.name for o in sess.get_outputs()]
    worst = {}
    for i in range(0, 60):
        vals = dict(zip(names, sess.run(None, {q.graph.input[0].name: Xte[i:i + 1]})))
        # each fast kernel and the generic one it stands for (backends/c/fast.py)
        # (a fast conv fused with the residual Add reads the skip from its own output, which
        # this one-call check zeroes: it is checked end to end in test_backend_c_fast.py)
        for call in [k for c in low.calls for k in (c, c.alt) if k is not None
                     and not (k.op == "Conv+Add" and k.kernel.startswith("fast_"))]:
            outs = [a[1] for a in call.args if a[0] == "out"]
            store = {k: np.array(v).ravel() for k, v in vals.items()}
            for o in outs:
                store[o] = np.zeros_like(store[o])
            reference.execute(call, lambda t: store[t])
            for o in outs:
                if o in int8_outs:
                    d = np.abs(store[o].astype(np.int64) - vals[o].ravel().astype(np.int64))
                    worst[call.kernel] = max(worst.get(call.kernel, 0), int(d.max()))
    assert {"conv_s8", "pool_s8", "fc_s8", "softmax_s8"} <= set(worst)
    assert {"fast_dw3x3_s8", "fast_conv_s8_3x3s1x1"} <= set(worst)
    assert {"add_s8", "conv_s8_res"} & set(worst)
    assert max(worst.values()) <= 1, worst


def _tiny_tflite_net():
    """Every int8 kernel the MLPerf models lack, in one TFLite model (built with the
    importer tests' Tiny helper and calibrated on the float model's TFLM run)."""
    from test_frontend_tflite import Tiny

    rng = np.random.default_rng(1)
    tensors = {
        "x": (1, 9, 11, 3), "y": (1, 5, 6, 4),
        "w0": rng.normal(0, 0.5, (4, 3, 3, 3)), "b0": rng.normal(0, 0.2, 4),
        "a": (1, 5, 6, 4), "s": (1, 5, 6, 4), "p": (1, 3, 3, 4),
        "ipad": np.array([[0, 0], [1, 0], [0, 2], [0, 0]]), "q": (1, 4, 5, 4),
        "w1": rng.normal(0, 0.5, (1, 3, 3, 8)), "b1": rng.normal(0, 0.2, 8), "d": (1, 4, 5, 8),
        "d2": (1, 4, 5, 8), "c": (1, 4, 5, 16), "ap": (1, 2, 3, 16), "r6": (1, 2, 3, 16),
        "rs": (1, 96), "w2": rng.normal(0, 0.2, (6, 96)), "b2": rng.normal(0, 0.2, 6),
        "f": (1, 6), "out": (1, 6),
    }
    ops = [
        # SAME padding with stride 2 on odd sizes, fused RELU6
        ("CONV_2D", ["x", "w0", "b0"], "a", dict(padding="SAME", stride=2, act="RELU6")),
        ("ADD", ["a", "y"], "s", dict(act="RELU")),
        ("MAX_POOL_2D", ["s"], "p", dict(padding="SAME", stride=2, filter=2)),
        ("PAD", ["p", "ipad"], "q", {}),
        ("DEPTHWISE_CONV_2D", ["q", "w1", "b1"], "d", dict(padding="SAME", stride=1,
                                                            multiplier=2)),
        ("RELU", ["d"], "d2", {}),
        ("CONCATENATION", ["d2", "d2"], "c", dict(axis=-1)),
        # SAME average pooling counts only the valid pixels at the border
        ("AVERAGE_POOL_2D", ["c"], "ap", dict(padding="SAME", stride=2, filter=3)),
        ("RELU6", ["ap"], "r6", {}),
        # flattening NHWC data of an NCHW graph: a real int8 Transpose
        ("RESHAPE", ["r6"], "rs", dict(shape=[1, 96])),
        ("FULLY_CONNECTED", ["rs", "w2", "b2"], "f", {}),
        ("SOFTMAX", ["f"], "out", {}),
    ]
    return Tiny(["x", "y"], tensors, ops, ["out", "c"], {"w0": 0, "w1": 3, "w2": 0})


def test_tiny_tflite_int8_kernels_match_tflm(tmp_path):
    from edgeloop.frontends.tflite import load_tflite

    tiny = _tiny_tflite_net()
    rng = np.random.default_rng(7)
    float_feeds = [rng.normal(0, 2, tiny.tensors[n]).astype(np.float32) for n in tiny.inputs]
    quant = tiny.calibrate(tiny.build(), float_feeds, False)
    data = tiny.build(quant)
    (tmp_path / "tiny.tflite").write_bytes(data)
    model = load_tflite(tmp_path / "tiny.tflite")
    ops = {n.op_type for n in model.graph.node}
    assert {"Pad", "Concat", "MaxPool", "AveragePool", "Add", "Transpose", "Softmax"} <= ops
    cm, info = build(model, tmp_path, "tiny")
    assert {"pad_nd", "concat", "requant_s8", "copy_nd"} <= set(info["kernels"])
    assert {"add_s8", "conv_s8_res"} & set(info["kernels"])
    assert info["arena_size"] == profile_model(model, latency=False)["peak_ram_bytes"]
    interp = tflm(data)
    low = lower(model)
    for trial in range(15):
        feeds = []
        for n in tiny.inputs:
            s, z = quant[n]
            x = np.round(rng.normal(0, 2, tiny.tensors[n]) / s) + z
            feeds.append(np.clip(x, -128, 127).astype(np.int8))
        for k, x in enumerate(feeds):
            interp.set_input(x, k)
        interp.invoke()
        got = cm.run_all(*feeds)
        ref = reference.run(low, *feeds)
        for k, y in enumerate(got):
            np.testing.assert_array_equal(y, interp.get_output(k))   # TFLite Micro, bit for bit
            np.testing.assert_array_equal(y, ref[k])                 # numpy reference


def test_cross_compiles_for_cortex_m4(float_cnn, kws_c, qdq_cnn):
    """The same text compiles with arm-none-eabi-gcc for a Cortex-M4F, warnings as errors."""
    import shutil
    import subprocess

    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("arm-none-eabi-gcc is not installed (.ci/run installs it)")
        pytest.skip("arm-none-eabi-gcc is not installed")
    dirs = [(float_cnn[2], "digits"), (kws_c[3], "kws")]
    for d, prefix in dirs:
        r = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-mcpu=cortex-m4",
                            "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-c", "-o",
                            str(d / f"{prefix}.arm.o"), str(d / f"{prefix}.c")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_int8_sigmoid_tanh_match_tflm(tmp_path):
    """TFLite's int8 LOGISTIC and TANH (gemmlowp fixed point), bit for bit."""
    from test_frontend_tflite import Tiny

    from edgeloop.frontends.tflite import load_tflite

    rng = np.random.default_rng(1)
    tensors = {"x": (1, 40), "w": rng.normal(0, 0.6, (30, 40)), "b": rng.normal(0, 0.5, 30),
               "f": (1, 30), "sg": (1, 30), "th": (1, 30)}
    ops = [("FULLY_CONNECTED", ["x", "w", "b"], "f", {}), ("LOGISTIC", ["f"], "sg", {}),
           ("TANH", ["f"], "th", {})]
    tiny = Tiny(["x"], tensors, ops, ["sg", "th"], {"w": 0})
    quant = tiny.calibrate(tiny.build(), [rng.normal(0, 2, (1, 40)).astype(np.float32)], False)
    data = tiny.build(quant)
    (tmp_path / "lt.tflite").write_bytes(data)
    model = load_tflite(tmp_path / "lt.tflite")
    cm, info = build(model, tmp_path, "lt")
    assert "logistic_s8" in info["kernels"]
    interp = tflm(data)
    low = lower(model)
    s, z = quant["x"]
    seen = [set(), set()]
    for trial in range(60):
        x = np.clip(np.round(rng.normal(0, 3, (1, 40)) / s) + z, -128, 127).astype(np.int8)
        interp.set_input(x, 0)
        interp.invoke()
        got, ref = cm.run_all(x), reference.run(low, x)
        for k in range(2):
            np.testing.assert_array_equal(got[k], interp.get_output(k))
            np.testing.assert_array_equal(got[k], ref[k])
            seen[k].update(got[k].ravel().tolist())
    assert min(len(v) for v in seen) > 40       # the whole curve, not just its saturated ends

"""The TFLite importer against the TFLite Micro interpreter, on real MLPerf Tiny models and data.

Reference: the ``tflite-micro`` pip package (TFLM's reference kernels), the bit-exact int8
oracle for these models. The imported graph runs on onnxruntime (``edgeloop.graph``).

Why int8 results can differ by one step, and only at single operators: onnxruntime
dequantizes, computes in float and rounds half to even in QuantizeLinear; TFLM
requantizes the int32 accumulator with a fixed-point multiplier and shift in two
rounding steps (gemmlowp's SaturatingRoundingDoublingHighMul, then a rounding right
shift by -shift bits). The double rounding moves the rounding threshold below .5 by up
to 2**(shift-1) (0.125 of a step for a shift of -2). ``test_ad_int8_matches_tflm``
proves that this is the whole difference: an emulation of TFLM's integer kernel, fed with
the weights, biases, scales and zero points read from the imported ONNX graph, is
bit-exact with TFLM on every layer and every window.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.utils import Extractor

from edgeloop import graph
from edgeloop.errors import ModelLoadError, UnsupportedOperatorError
from edgeloop.frontends import load_file
from edgeloop.frontends.tflite import load_tflite

from tflite_micro.python.tflite_micro import runtime  # noqa: E402
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb  # noqa: E402
import flatbuffers  # noqa: E402

AD_IN_SCALE, AD_IN_ZP = 0.39101523, 89
AD_OUT_SCALE, AD_OUT_ZP = 0.36449847, 96


# ----- shared helpers -----------------------------------------------------------------------


def kws_input(mlperf_dir: Path) -> np.ndarray:
    """The 490 int8 MFCC values of the reference submission's kws_input_data.cc."""
    text = (mlperf_dir / "kws_input_data.cc").read_text()
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)  # drop comments
    body = text[text.index("=") + 1:]                           # the initializer only
    values = [int(v) for v in re.findall(r"-?\d+", body)]
    assert len(values) == 490
    return np.array(values, np.int8).reshape(1, 49, 10, 1)


def ad_windows(mlperf_dir: Path) -> np.ndarray:
    """The 196 sliding windows (5 rows of 128 log-mel bins, stride one row) -> [196, 640]."""
    spec = np.fromfile(mlperf_dir / "normal_id_01_00000000_hist_librosa.bin", "<f4")
    spec = spec.reshape(200, 128)
    return np.stack([spec[i:i + 5].reshape(-1) for i in range(196)]).astype(np.float32)


def ad_quantize(w: np.ndarray) -> np.ndarray:
    return np.clip(np.round(w / AD_IN_SCALE) + AD_IN_ZP, -128, 127).astype(np.int8)[None]


def tflm(model: bytes | Path, all_outputs: bool = False):
    """A TFLM interpreter; with all_outputs every operator's output is a graph output, so
    the intermediate tensors can be read after invoke() (TFLM otherwise reuses them)."""
    data = model.read_bytes() if isinstance(model, Path) else model
    if all_outputs:
        m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
        sg = m.subgraphs[0]
        sg.outputs = [o for op in sg.operators for o in op.outputs]
        data = pack(m)
    return runtime.Interpreter.from_bytes(data)


def pack(model) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


class LayerCheck:
    """Runs each imported operator alone on TFLM's own input to it and compares outputs.

    End to end, a one-step difference early in a network is amplified by the layers after
    it; per operator the importer's semantics are checked without that amplification.
    """

    def __init__(self, data: bytes, model: onnx.ModelProto):
        self.interp = tflm(data, all_outputs=True)
        m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
        sg = m.subgraphs[0]
        self.names = [t.name.decode() for t in sg.tensors]
        self.graph_inputs = list(sg.inputs)
        self.op_io = []
        for op in sg.operators:
            # activations only: constants hold data in their buffer
            ins = [i for i in op.inputs if i >= 0 and (i in sg.inputs or m.buffers[
                sg.tensors[i].buffer].data is None or len(m.buffers[sg.tensors[i].buffer].data) == 0)]
            self.op_io.append((list(dict.fromkeys(ins)), list(op.outputs)))
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes = {v.name: graph.tensor_shape(v) for v in
                       list(inferred.graph.value_info) + list(inferred.graph.input)
                       + list(inferred.graph.output)}
        # A 4-D graph output that other operators read is kept NCHW inside the graph under
        # the name '<name>/nchw'; the operators read that one.
        self.onnx_name = {n: (n + "/nchw" if n + "/nchw" in self.shapes else n)
                          for n in self.names}
        self.sessions = []
        for ins, outs in self.op_io:
            sub = Extractor(model).extract_model([self.onnx_name[self.names[i]] for i in ins],
                                                 [self.names[o] for o in outs])
            self.sessions.append(graph.session(sub))
        self.diff_count = [0] * len(self.op_io)
        self.max_diff = [0] * len(self.op_io)
        self.max_float_diff = [0.0] * len(self.op_io)

    def _to_onnx(self, name: str, x: np.ndarray) -> np.ndarray:
        shape = self.shapes.get(name)
        if x.ndim == 4 and shape and list(x.shape) != list(shape):
            assert list(shape) == [x.shape[0], x.shape[3], x.shape[1], x.shape[2]]
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x

    def run(self, *inputs: np.ndarray) -> None:
        for k, x in enumerate(inputs):
            self.interp.set_input(x, k)
        self.interp.invoke()
        values = {i: x for i, x in zip(self.graph_inputs, inputs)}
        every_output = [o for _, outs in self.op_io for o in outs]
        for pos, o in enumerate(every_output):
            values[o] = self.interp.get_output(pos)
        for k, (ins, outs) in enumerate(self.op_io):
            feeds = {self.onnx_name[self.names[i]]:
                     self._to_onnx(self.onnx_name[self.names[i]], values[i]) for i in ins}
            for got, out in zip(self.sessions[k].run(None, feeds), outs, strict=True):
                want = values[out]
                if got.ndim == 4 and got.shape != want.shape:
                    got = got.transpose(0, 2, 3, 1)
                if want.dtype == np.float32:
                    self.max_float_diff[k] = max(self.max_float_diff[k],
                                                 float(np.max(np.abs(got - want), initial=0)))
                else:
                    d = np.abs(got.astype(np.int64) - want.astype(np.int64))
                    self.diff_count[k] += int(np.count_nonzero(d))
                    self.max_diff[k] = max(self.max_diff[k], int(d.max(initial=0)))


# ----- KWS (DS-CNN, int8 and hybrid) ----------------------------------------------------------


@pytest.fixture(scope="module")
def kws(mlperf_dir):
    return load_tflite(mlperf_dir / "kws_ref_model.tflite")


def test_kws_int8_golden_and_tflm(mlperf_dir, kws):
    onnx.checker.check_model(kws, full_check=True)
    x = kws_input(mlperf_dir)
    (y,) = graph.run(kws, x)
    interp = tflm(mlperf_dir / "kws_ref_model.tflite")
    interp.set_input(x, 0)
    interp.invoke()
    ref = interp.get_output(0)
    expected = np.full((1, 12), -128, np.int8)
    expected[0, 5] = 127
    assert y.dtype == np.int8 and y.shape == (1, 12)
    np.testing.assert_array_equal(ref, expected)    # the README's golden result
    np.testing.assert_array_equal(y, ref)           # identical end to end


def test_kws_int8_per_layer(mlperf_dir, kws):
    check = LayerCheck((mlperf_dir / "kws_ref_model.tflite").read_bytes(), kws)
    check.run(kws_input(mlperf_dir))
    # Measured on the reference input: every operator within one step of TFLM (the
    # requantization rounding described at the top); the counts are recorded so a
    # change shows up. Conv/depthwise layers differ in a few of 8000 values.
    assert max(check.max_diff) <= 1, check.max_diff
    assert sum(check.diff_count) <= 130, check.diff_count


def test_kws_graph_structure(kws):
    """The QDQ form the memory planner and the C backend rely on."""
    ops = [n.op_type for n in kws.graph.node]
    # input: one layout change, as a Reshape (only the size-1 channel moves), in int8.
    first_block = ops[:ops.index("QuantizeLinear") + 1]
    assert first_block == ["Reshape", "DequantizeLinear", "DequantizeLinear",
                           "DequantizeLinear", "Conv", "Relu", "QuantizeLinear"]
    assert "Transpose" not in ops
    assert ops.count("Reshape") == 2      # the input layout change and the flatten
    assert ops.count("Conv") == 9 and ops.count("QuantizeLinear") == 12
    (inp,), (out,) = kws.graph.input, kws.graph.output
    assert graph.tensor_shape(inp) == [1, 49, 10, 1]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT8
    assert graph.tensor_shape(out) == [1, 12]
    meta = graph.get_metadata(kws)
    assert meta["source_format"] == "tflite"
    assert meta["input_quant"] == [{"name": "input_1", "scale": pytest.approx(0.5847029),
                                    "zero_point": 83}]
    assert meta["output_quant"] == [{"name": "Identity", "scale": 0.00390625,
                                     "zero_point": -128}]
    # Depthwise conv: group = channels, weights [64, 1, 3, 3], per-channel scales on axis 0.
    inits = {i.name: i for i in kws.graph.initializer}
    dw = [n for n in kws.graph.node if n.op_type == "Conv"][1]
    assert {a.name: a for a in dw.attribute}["group"].i == 64
    wdq = next(n for n in kws.graph.node if n.output[0] == dw.input[1])
    assert list(inits[wdq.input[0]].dims) == [64, 1, 3, 3]
    assert inits[wdq.input[0]].data_type == onnx.TensorProto.INT8
    assert list(inits[wdq.input[1]].dims) == [64]


def int8_activation_peak(model: onnx.ModelProto) -> int:
    """Peak bytes of live int8 activations with each DQ->op->Q sandwich as one kernel.

    A simple lifetime planner (no in-place reuse): a tensor lives from the node that
    makes it to its last reader. Float values inside a sandwich are not counted: the C
    backend lowers the sandwich into one integer kernel.
    """
    inits = {i.name for i in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    sizes = {}
    for name, v in infos.items():
        if name not in inits and v.type.tensor_type.elem_type == onnx.TensorProto.INT8:
            sizes[name] = int(np.prod(graph.tensor_shape(v)))
    nodes = list(model.graph.node)
    first, last = {}, {}
    for k, node in enumerate(nodes):
        for o in node.output:
            first.setdefault(o, k)
        end = k
        if node.op_type == "DequantizeLinear":
            # read by a sandwich: live until the sandwich's QuantizeLinear writes its output
            end = next((j for j in range(k, len(nodes)) if nodes[j].op_type == "QuantizeLinear"),
                       len(nodes))
        for i in node.input:
            last[i] = max(last.get(i, -1), end)
    for i in model.graph.input:
        first[i.name] = -1
    for o in model.graph.output:
        last[o.name] = len(nodes)
    peak = 0
    for k in range(len(nodes)):
        live = sum(s for n, s in sizes.items() if first.get(n, 0) <= k <= last.get(n, -1))
        peak = max(peak, live)
    return peak


def test_activation_peak_not_above_tflm(mlperf_dir, kws):
    # TFLite Micro plans 16,000 bytes of activations for KWS and 768 for AD.
    assert int8_activation_peak(kws) == 16000   # 2 x [1,64,25,5] int8
    ad = load_tflite(mlperf_dir / "ad01_int8.tflite")
    assert int8_activation_peak(ad) == 768      # [1,640] in + [1,128] out


def test_kws_hybrid_float_model(mlperf_dir, kws):
    """Float I/O, int8 dynamic-range weights: float compute with DequantizeLinear weights.

    TFLM refuses hybrid models, so the reference is the int8 model on the same input.
    """
    m = load_tflite(mlperf_dir / "kws_ref_model_float32.tflite")
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 5
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.get_metadata(m)["input_quant"] is None
    xq = kws_input(mlperf_dir)
    x = ((xq.astype(np.float32) - 83) * np.float32(0.5847029)).astype(np.float32)
    (p,) = graph.run(m, x)
    assert p.shape == (1, 12) and int(np.argmax(p)) == 5
    assert p[0, 5] > 0.99 and abs(float(p.sum()) - 1) < 1e-5
    (yq,) = graph.run(kws, xq)
    np.testing.assert_allclose(p, (yq.astype(np.float32) + 128) / 256, atol=0.01)


# ----- AD (fully-connected autoencoder, fp32 and int8) ----------------------------------------


def test_ad_fp32_score_and_tflm(mlperf_dir):
    path = mlperf_dir / "ad01_fp32.tflite"
    m = load_tflite(path)
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node] == ["Gemm", "Relu"] * 9 + ["Gemm"]
    sess, interp = graph.session(m), tflm(path)
    errors, ref_errors, worst = [], [], 0.0
    for w in ad_windows(mlperf_dir):
        (y,) = sess.run(None, {"input_1": w[None]})
        interp.set_input(w[None], 0)
        interp.invoke()
        ref = interp.get_output(0)
        worst = max(worst, float(np.max(np.abs(y - ref))))
        errors.append(np.mean((w - y[0]) ** 2))
        ref_errors.append(np.mean((w - ref[0]) ** 2))
    # float32 summation order differs between the runtimes; measured worst 0.006 on
    # outputs of magnitude ~10-60.
    assert worst < 0.01
    assert np.mean(errors) == pytest.approx(9.70711, abs=0.01)
    assert np.mean(errors) == pytest.approx(np.mean(ref_errors), abs=1e-3)


def _quantize_multiplier(m: float) -> tuple[int, int]:
    frac, shift = math.frexp(m)
    q = round(frac * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    return q, shift


def _tflm_requantize(acc: np.ndarray, m: float) -> np.ndarray:
    """TFLM's MultiplyByQuantizedMultiplier: rounding doubling high mul, rounding shift."""
    q, shift = _quantize_multiplier(m)
    ab = acc.astype(np.int64) * (1 << max(shift, 0)) * q
    s = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))   # C division truncates toward zero
    e = max(-shift, 0)
    mask = (1 << e) - 1
    return (high >> e) + ((high & mask) > (mask >> 1) + (high < 0))


def _gemm_layers(m: onnx.ModelProto):
    """Per Gemm sandwich, the int8 integer-kernel parameters read from the imported graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {n.output[0]: n for n in m.graph.node}
    consumer = {n.input[0]: n for n in m.graph.node}
    layers = []
    for n in m.graph.node:
        if n.op_type != "Gemm":
            continue
        dx, dw, db = (producer[i] for i in n.input)
        q = consumer[n.output[0]]
        relu = q.op_type == "Relu"
        if relu:
            q = consumer[q.output[0]]
        layers.append(dict(
            x_zp=int(inits[dx.input[2]]), x_scale=float(inits[dx.input[1]]),
            w=inits[dw.input[0]].astype(np.int64), w_scale=float(inits[dw.input[1]]),
            w_zp=int(inits[dw.input[2]]), b=inits[db.input[0]].astype(np.int64),
            b_scale=float(inits[db.input[1]]), y_scale=float(inits[q.input[1]]),
            y_zp=int(inits[q.input[2]]), relu=relu))
    return layers


def test_ad_int8_matches_tflm(mlperf_dir):
    path = mlperf_dir / "ad01_int8.tflite"
    m = load_tflite(path)
    onnx.checker.check_model(m, full_check=True)
    layers = _gemm_layers(m)
    assert len(layers) == 10 and all(ly["w"].dtype == np.int64 for ly in layers)
    check = LayerCheck(path.read_bytes(), m)
    sess, interp = graph.session(m), tflm(path)
    errors, ref_errors, e2e_diff, e2e_max, emulated_mismatch = [], [], 0, 0, 0
    for w in ad_windows(mlperf_dir):
        x = ad_quantize(w)
        (y,) = sess.run(None, {"input_1": x})
        interp.set_input(x, 0)
        interp.invoke()
        ref = interp.get_output(0)
        d = np.abs(y.astype(np.int64) - ref.astype(np.int64))
        e2e_diff += int(np.count_nonzero(d))
        e2e_max = max(e2e_max, int(d.max()))
        deq = (y.astype(np.float32) - AD_OUT_ZP) * np.float32(AD_OUT_SCALE)
        ref_deq = (ref.astype(np.float32) - AD_OUT_ZP) * np.float32(AD_OUT_SCALE)
        errors.append(np.mean((w - deq[0]) ** 2))
        ref_errors.append(np.mean((w - ref_deq[0]) ** 2))
        check.run(x)
        # TFLM's integer kernel, from the imported graph's parameters, on TFLM's own inputs
        h = x.astype(np.int64)
        for k, ly in enumerate(layers):
            assert ly["w_zp"] == 0
            assert ly["b_scale"] == pytest.approx(ly["x_scale"] * ly["w_scale"], rel=1e-6)
            acc = (h - ly["x_zp"]) @ ly["w"].T + ly["b"]
            mult = ly["x_scale"] * ly["w_scale"] / ly["y_scale"]
            out = np.clip(_tflm_requantize(acc, mult) + ly["y_zp"], -128, 127)
            want = check.interp.get_output(k).astype(np.int64)
            emulated_mismatch += int(np.count_nonzero(out != want))
            h = want
    # The emulation is bit-exact: the imported weights, biases, scales and zero points
    # are exactly TFLM's, and the only difference is the requantization rounding.
    assert emulated_mismatch == 0
    # Per operator (TFLM's input fed to one imported sandwich): at most one step. Measured
    # 2,879 of 307,328 values over the 196 windows (layer 2, whose shift of -2 moves the
    # rounding threshold most, accounts for 1,625).
    assert max(check.max_diff) == 1, check.max_diff
    assert sum(check.diff_count) <= 3000, check.diff_count
    # End to end the single steps propagate through ten layers: measured 39,954 of
    # 125,440 output values differ, by at most 12 steps; the score agrees to 1e-3.
    assert e2e_max <= 12 and e2e_diff <= 40000, (e2e_max, e2e_diff)
    assert np.mean(ref_errors) == pytest.approx(10.26, abs=0.01)
    assert np.mean(errors) == pytest.approx(np.mean(ref_errors), abs=0.01)


# ----- robustness -------------------------------------------------------------------------------


def _check_load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_tflite(path)
    message = str(info.value)
    assert "not a valid TFLite flatbuffer" in message and "\n" not in message
    assert info.value.__cause__ is None   # no chained parser traceback behind it
    return message


@pytest.mark.parametrize("cut", [0, 7, 100, 1000, 20000, -200, -16])
def test_truncated_file(mlperf_dir, tmp_path, cut):
    data = (mlperf_dir / "kws_ref_model.tflite").read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    _check_load_error(p)


def test_corrupt_files(mlperf_dir, tmp_path):
    data = bytearray((mlperf_dir / "kws_ref_model.tflite").read_bytes())
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"\x00" * 64)
    assert "TFL3" in _check_load_error(p)
    p.write_bytes(b"this is not a model, just text " * 10)
    assert "TFL3" in _check_load_error(p)
    bad_root = bytearray(data)
    bad_root[0:4] = (len(data) + 100).to_bytes(4, "little")
    p.write_bytes(bytes(bad_root))
    _check_load_error(p)
    garbage = bytearray(data[:8]) + bytearray(np.random.default_rng(0).integers(
        0, 256, len(data) - 8, dtype=np.uint8).tobytes())
    p.write_bytes(bytes(garbage))
    _check_load_error(p)
    # Through the generic loader the error also names the file.
    p.write_bytes(bytes(data[:500]))
    with pytest.raises(ModelLoadError) as info:
        load_file(p)
    assert str(info.value).startswith(str(p)) and "not a valid TFLite flatbuffer" in str(info.value)


# ----- tiny models built here, for operators the MLPerf models lack --------------------------

OPS = fb.BuiltinOperator
ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}


def _options(op: str, o: dict):
    """The options table for one operator, as the schema's object API wants it."""
    pad = {"SAME": fb.Padding.SAME, "VALID": fb.Padding.VALID}
    act = ACT[o.get("act", "NONE")]
    if op == "CONV_2D":
        t = fb.Conv2DOptionsT()
        t.padding, t.strideH, t.strideW = pad[o["padding"]], o["stride"], o["stride"]
        t.dilationHFactor = t.dilationWFactor = o.get("dilation", 1)
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.Conv2DOptions, t
    if op == "DEPTHWISE_CONV_2D":
        t = fb.DepthwiseConv2DOptionsT()
        t.padding, t.strideH, t.strideW = pad[o["padding"]], o["stride"], o["stride"]
        t.depthMultiplier, t.fusedActivationFunction = o["multiplier"], act
        t.dilationHFactor = t.dilationWFactor = 1
        return fb.BuiltinOptions.DepthwiseConv2DOptions, t
    if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        t = fb.Pool2DOptionsT()
        t.padding, t.strideH, t.strideW = pad[o["padding"]], o["stride"], o["stride"]
        t.filterHeight = t.filterWidth = o["filter"]
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.Pool2DOptions, t
    if op == "ADD":
        t = fb.AddOptionsT()
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.AddOptions, t
    if op == "CONCATENATION":
        t = fb.ConcatenationOptionsT()
        t.axis, t.fusedActivationFunction = o["axis"], act
        return fb.BuiltinOptions.ConcatenationOptions, t
    if op == "FULLY_CONNECTED":
        t = fb.FullyConnectedOptionsT()
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.FullyConnectedOptions, t
    if op in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        t = fb.ReducerOptionsT()
        t.keepDims = o.get("keep_dims", False)
        return fb.BuiltinOptions.ReducerOptions, t
    if op == "SOFTMAX":
        t = fb.SoftmaxOptionsT()
        t.beta = 1.0
        return fb.BuiltinOptions.SoftmaxOptions, t
    if op == "RESHAPE":
        t = fb.ReshapeOptionsT()
        t.newShape = list(o["shape"])
        return fb.BuiltinOptions.ReshapeOptions, t
    if op == "PAD":
        return fb.BuiltinOptions.PadOptions, fb.PadOptionsT()
    if op == "MUL":
        t = fb.MulOptionsT()
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.MulOptions, t
    if op in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        bilinear = op == "RESIZE_BILINEAR"
        t = fb.ResizeBilinearOptionsT() if bilinear else fb.ResizeNearestNeighborOptionsT()
        t.alignCorners = o.get("align_corners", False)
        t.halfPixelCenters = o.get("half_pixel_centers", False)
        return (fb.BuiltinOptions.ResizeBilinearOptions if bilinear
                else fb.BuiltinOptions.ResizeNearestNeighborOptions), t
    if op == "STRIDED_SLICE":
        t = fb.StridedSliceOptionsT()
        t.beginMask, t.endMask = o.get("begin_mask", 0), o.get("end_mask", 0)
        t.shrinkAxisMask = o.get("shrink_axis_mask", 0)
        return fb.BuiltinOptions.StridedSliceOptions, t
    if op in ("SUB", "DIV", "L2_NORMALIZATION"):
        t = {"SUB": fb.SubOptionsT, "DIV": fb.DivOptionsT, "L2_NORMALIZATION": fb.L2NormOptionsT}[op]()
        t.fusedActivationFunction = act
        return getattr(fb.BuiltinOptions, {"L2_NORMALIZATION": "L2NormOptions"}.get(
            op, op.title() + "Options")), t
    if op == "LEAKY_RELU":
        t = fb.LeakyReluOptionsT()
        t.alpha = o["alpha"]
        return fb.BuiltinOptions.LeakyReluOptions, t
    if op in ("SPLIT", "SPLIT_V"):
        t = fb.SplitOptionsT() if op == "SPLIT" else fb.SplitVOptionsT()
        t.numSplits = o["num"]
        return getattr(fb.BuiltinOptions, "SplitOptions" if op == "SPLIT" else "SplitVOptions"), t
    if op == "PACK":
        t = fb.PackOptionsT()
        t.valuesCount, t.axis = o["num"], o["axis"]
        return fb.BuiltinOptions.PackOptions, t
    if op == "UNPACK":
        t = fb.UnpackOptionsT()
        t.num, t.axis = o["num"], o["axis"]
        return fb.BuiltinOptions.UnpackOptions, t
    if op == "GATHER":
        t = fb.GatherOptionsT()
        t.axis = o["axis"]
        return fb.BuiltinOptions.GatherOptions, t
    if op == "SPACE_TO_DEPTH":
        t = fb.SpaceToDepthOptionsT()
        t.blockSize = o["block_size"]
        return fb.BuiltinOptions.SpaceToDepthOptions, t
    if op == "BATCH_MATMUL":
        t = fb.BatchMatMulOptionsT()
        t.adjX, t.adjY = o.get("adj_x", False), o.get("adj_y", False)
        return fb.BuiltinOptions.BatchMatMulOptions, t
    if op == "GELU":
        t = fb.GeluOptionsT()
        t.approximate = o.get("approximate", False)
        return fb.BuiltinOptions.GeluOptions, t
    if op == "MIRROR_PAD":
        t = fb.MirrorPadOptionsT()
        t.mode = fb.MirrorPadMode.REFLECT
        return fb.BuiltinOptions.MirrorPadOptions, t
    if op == "TRANSPOSE_CONV":
        t = fb.TransposeConvOptionsT()
        t.padding, t.strideH, t.strideW = pad[o["padding"]], o["stride"], o["stride"]
        t.fusedActivationFunction = act
        return fb.BuiltinOptions.TransposeConvOptions, t
    if op == "DEPTH_TO_SPACE":
        t = fb.DepthToSpaceOptionsT()
        t.blockSize = o["block_size"]
        return fb.BuiltinOptions.DepthToSpaceOptions, t
    return 0, None


# Fixed output quantization TFLM requires for these int8 kernels.
FIXED_QUANT = {"LOGISTIC": (1 / 256, -128), "SOFTMAX": (1 / 256, -128), "TANH": (1 / 128, 0),
               "L2_NORMALIZATION": (1 / 128, 0)}
# Kernels whose int8 output must share the input's scale and zero point (TFLM's RELU6
# clamps the raw int8 values and ignores the output's parameters).
SAME_QUANT = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "RESHAPE", "CONCATENATION", "RELU6",
              "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "DEPTH_TO_SPACE",
              "TRANSPOSE", "SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "GATHER", "SPACE_TO_DEPTH",
              "REDUCE_MAX"}


def _outs(out) -> list[str]:
    """An operator's output names: one name, or a list for SPLIT, SPLIT_V and UNPACK."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


# Operators whose first version LiteRT no longer registers.
OP_VERSIONS = {OPS.BROADCAST_TO: 2}


class Tiny:
    """A small TFLite model: float, or int8 (calibrated on the float model's TFLM run).

    tensors: name -> shape (activations) or a numpy array (weights: 'w*' per-channel
    int8 with the channel axis given, 'k*' per-tensor int8, 'b*' bias, 'i*' int32 constants).
    ops: (OP_NAME, [inputs], output or [outputs], options).
    """

    def __init__(self, inputs, tensors, ops, outputs, weight_axis):
        self.inputs, self.tensors, self.ops, self.outputs = inputs, tensors, ops, outputs
        self.weight_axis = weight_axis

    def build(self, quant: dict | None = None) -> bytes:
        m = fb.ModelT()
        m.version = 3
        m.buffers = [fb.BufferT()]
        sg = fb.SubGraphT()
        sg.tensors, sg.operators = [], []
        index = {}
        codes: list[int] = []
        # a bias's scale is input scale x weight scale: find each bias's input and weights
        bias_of = {op[1][2]: (op[1][0], op[1][1]) for op in self.ops if len(op[1]) > 2
                   and op[1][2].startswith("b")}
        # TRANSPOSE_CONV's inputs are (output shape, weights, input, bias)
        bias_of.update({op[1][3]: (op[1][2], op[1][1]) for op in self.ops
                        if op[0] == "TRANSPOSE_CONV" and len(op[1]) > 3})

        def add_tensor(name):
            spec = self.tensors[name]
            t = fb.TensorT()
            t.name = name.encode()
            t.buffer = 0
            if isinstance(spec, np.ndarray):
                data = spec
                if name.startswith("i"):
                    t.type = fb.TensorType.INT32
                    data = spec.astype(np.int32)
                elif quant is None:
                    t.type = fb.TensorType.FLOAT32
                    data = spec.astype(np.float32)
                elif name.startswith(("w", "k")):
                    axis = self.weight_axis.get(name)  # none: one scale for the tensor ('k*')
                    other = tuple(a for a in range(spec.ndim) if a != axis)
                    scale = np.maximum(np.abs(spec).max(axis=other), 1e-6) / 127
                    shape = [1] * spec.ndim
                    if axis is not None:
                        shape[axis] = -1
                    scale = scale.reshape(-1)
                    data = np.clip(np.round(spec / scale.reshape(shape)), -127, 127)
                    data = data.astype(np.int8)
                    t.type = fb.TensorType.INT8
                    t.quantization = qparams(scale, np.zeros(scale.size, np.int64), axis or 0)
                    self.wscale[name] = scale
                else:  # bias
                    x, w = bias_of[name]
                    scale = quant[x][0] * self.wscale[w]
                    data = np.round(spec / scale).astype(np.int32)
                    t.type = fb.TensorType.INT32
                    t.quantization = qparams(scale, np.zeros(scale.size, np.int64), 0)
                t.shape = list(spec.shape)
                buf = fb.BufferT()
                buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
                m.buffers.append(buf)
                t.buffer = len(m.buffers) - 1
            else:
                t.shape = list(spec)
                if quant is None:
                    t.type = fb.TensorType.FLOAT32
                else:
                    t.type = fb.TensorType.INT8 if name in quant else fb.TensorType.FLOAT32
                    if name in quant:
                        s, z = quant[name]
                        t.quantization = qparams(np.array([s]), np.array([z]), 0)
            sg.tensors.append(t)
            index[name] = len(sg.tensors) - 1

        def qparams(scale, zp, axis):
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in scale]
            q.zeroPoint = [int(z) for z in zp]
            q.quantizedDimension = axis
            return q

        self.wscale = {}
        for name in self.inputs:
            add_tensor(name)
        for op_name, ins, out, opts in self.ops:
            if quant is None and op_name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            for name in ins:
                if name not in index:
                    add_tensor(name)
            for o in _outs(out):
                if o not in index:
                    add_tensor(o)
            code = getattr(OPS, op_name)
            if code not in codes:
                codes.append(code)
            op = fb.OperatorT()
            op.opcodeIndex = codes.index(code)
            op.inputs = [index[self.alias(i, quant)] for i in ins]
            op.outputs = [index[o] for o in _outs(out)]
            op.builtinOptionsType, op.builtinOptions = _options(op_name, opts)
            sg.operators.append(op)
        sg.inputs = [index[n] for n in self.inputs]
        sg.outputs = [index[self.alias(n, quant)] for n in self.outputs]
        m.subgraphs = [sg]
        m.operatorCodes = []
        for code in codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
            oc.version = OP_VERSIONS.get(code, 1)
            m.operatorCodes.append(oc)
        return pack(m)

    def alias(self, name, quant):
        # In the float model QUANTIZE/DEQUANTIZE are left out: their output is their input.
        if quant is None:
            for op_name, ins, out, _ in self.ops:
                if out == name and op_name in ("QUANTIZE", "DEQUANTIZE"):
                    return self.alias(ins[0], quant)
        return name

    def calibrate(self, float_model: bytes, feeds: list[np.ndarray], float_io: bool) -> dict:
        interp = tflm(float_model, all_outputs=True)
        for k, x in enumerate(feeds):
            interp.set_input(x, k)
        interp.invoke()
        m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(float_model, 0))
        sg = m.subgraphs[0]
        ranges = {}
        for k, x in zip(self.inputs, feeds):
            ranges[k] = (float(x.min()), float(x.max()))
        every_output = [o for op in sg.operators for o in op.outputs]
        for pos, o in enumerate(every_output):
            y = interp.get_output(pos)
            ranges[sg.tensors[o].name.decode()] = (float(y.min()), float(y.max()))
        quant = {}

        def qp(lo, hi):
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            s = (hi - lo) / 255 or 1.0
            return s, int(np.clip(round(-128 - lo / s), -128, 127))

        for op_name, ins, out, _ in self.ops:
            for name in [*ins, *_outs(out)]:
                if isinstance(self.tensors[name], np.ndarray) or name in quant:
                    continue
                if float_io and (name in self.inputs or name in self.outputs):
                    continue
                src = self.alias(name, None)
                if op_name in FIXED_QUANT and name in _outs(out):
                    quant[name] = FIXED_QUANT[op_name]
                elif op_name in SAME_QUANT and name in _outs(out):
                    acts = [i for i in ins if not isinstance(self.tensors[i], np.ndarray)]
                    quant[name] = quant[acts[0]]
                else:
                    quant[name] = qp(*ranges[src])
        return quant


def _tiny_conv_net():
    rng = np.random.default_rng(1)
    tensors = {
        "x": (1, 7, 9, 3), "y": (1, 4, 5, 4),
        "w0": rng.normal(0, 0.5, (4, 3, 3, 3)), "b0": rng.normal(0, 0.2, 4),
        "a": (1, 4, 5, 4), "s": (1, 4, 5, 4), "p": (1, 2, 3, 4),
        "ipad": np.array([[0, 0], [1, 0], [0, 2], [0, 0]]), "q": (1, 3, 5, 4),
        "w1": rng.normal(0, 0.5, (1, 3, 3, 8)), "b1": rng.normal(0, 0.2, 8), "d": (1, 3, 5, 8),
        "d2": (1, 3, 5, 8), "c": (1, 3, 5, 16), "iaxes": np.array([1, 2]), "mean": (1, 16),
        "w2": rng.normal(0, 0.2, (6, 240)), "b2": rng.normal(0, 0.2, 6), "f": (1, 6),
        "out": (1, 6),
    }
    ops = [
        # SAME with stride 2 on odd sizes: the extra padding pixel goes at the end
        ("CONV_2D", ["x", "w0", "b0"], "a", dict(padding="SAME", stride=2, act="RELU6")),
        ("ADD", ["a", "y"], "s", dict(act="RELU")),
        ("MAX_POOL_2D", ["s"], "p", dict(padding="SAME", stride=2, filter=2)),
        ("PAD", ["p", "ipad"], "q", {}),
        ("DEPTHWISE_CONV_2D", ["q", "w1", "b1"], "d", dict(padding="SAME", stride=1,
                                                            multiplier=2)),
        ("RELU", ["d"], "d2", {}),
        ("CONCATENATION", ["d2", "d2"], "c", dict(axis=-1)),
        ("MEAN", ["c", "iaxes"], "mean", {}),
        # flattens a [1,3,5,16] tensor in NHWC order: a real Transpose is needed
        ("FULLY_CONNECTED", ["c", "w2", "b2"], "f", {}),
        ("LOGISTIC", ["f"], "out", {}),
    ]
    axes = {"w0": 0, "w1": 3, "w2": 0}
    return Tiny(["x", "y"], tensors, ops, ["mean", "out", "c"], axes)


def _tiny_pool_net():
    tensors = {"x": (1, 7, 6, 2), "xq": (1, 7, 6, 2), "ap": (1, 4, 3, 2), "r": (1, 4, 3, 2),
               "rs": (1, 24), "th": (1, 24), "sm": (1, 24), "out": (1, 24),
               "r6": (1, 4, 3, 2)}
    ops = [
        ("QUANTIZE", ["x"], "xq", {}),
        # SAME average pooling counts only the valid pixels at the border
        ("AVERAGE_POOL_2D", ["xq"], "ap", dict(padding="SAME", stride=2, filter=3)),
        ("RELU6", ["ap"], "r6", {}),
        ("RELU", ["r6"], "r", {}),
        ("RESHAPE", ["r"], "rs", dict(shape=[1, 24])),
        ("TANH", ["rs"], "th", {}),
        ("SOFTMAX", ["th"], "sm", {}),
        ("DEQUANTIZE", ["sm"], "out", {}),
    ]
    return Tiny(["x"], tensors, ops, ["out"], {})


def _tiny_mediapipe_ops_net(**resize):
    """The operators MediaPipe's vision models add: PRELU, HARD_SWISH, MUL, the two resizes
    (in one of TFLite's three coordinate conventions), STRIDED_SLICE and DEPTH_TO_SPACE."""
    rng = np.random.default_rng(5)
    tensors = {
        "x": (1, 5, 7, 4),
        "w0": rng.normal(0, 0.5, (8, 3, 3, 4)), "b0": rng.normal(0, 0.2, 8), "c": (1, 5, 7, 8),
        "kalpha": rng.uniform(0.05, 0.6, (1, 1, 8)), "p": (1, 5, 7, 8),
        "h": (1, 5, 7, 8), "isize": np.array([11, 13]), "r": (1, 11, 13, 8),
        "isize2": np.array([8, 9]), "n": (1, 8, 9, 8), "m": (1, 8, 9, 8),
        "ibegin": np.array([0, 1, 0, 2]), "iend": np.array([1, 7, 9, 6]),
        "istrides": np.array([1, 2, 3, 1]), "sl": (1, 3, 3, 4), "d2s": (1, 6, 6, 1),
        "ibegin2": np.array([0, 2, 0, 0]), "iend2": np.array([1, 3, 9, 8]),
        "istrides2": np.array([1, 1, 1, 1]), "row": (1, 9, 8),
        "ioshape": np.array([1, 10, 14, 6]), "w3": rng.normal(0, 0.4, (6, 4, 4, 8)),
        "b3": rng.normal(0, 0.2, 6), "tc": (1, 10, 14, 6),
    }
    ops = [
        ("CONV_2D", ["x", "w0", "b0"], "c", dict(padding="SAME", stride=1)),
        ("PRELU", ["c", "kalpha"], "p", {}),
        ("HARD_SWISH", ["p"], "h", {}),
        # upsampling by a ratio that is not a power of two: every coordinate convention shows
        ("RESIZE_BILINEAR", ["h", "isize"], "r", resize),
        ("RESIZE_NEAREST_NEIGHBOR", ["r", "isize2"], "n", resize),
        ("MUL", ["n", "n"], "m", {}),
        ("STRIDED_SLICE", ["m", "ibegin", "iend", "istrides"], "sl", {}),
        ("DEPTH_TO_SPACE", ["sl"], "d2s", dict(block_size=2)),
        # shrink_axis_mask drops the sliced axis: [1, 9, 8] from row 2 of [1, 8, 9, 8]
        ("STRIDED_SLICE", ["m", "ibegin2", "iend2", "istrides2"], "row", dict(shrink_axis_mask=2)),
        # SAME, stride 2, 4x4 kernel: the output starts one pixel into the scatter
        ("TRANSPOSE_CONV", ["ioshape", "w3", "h", "b3"], "tc", dict(padding="SAME", stride=2)),
    ]
    return Tiny(["x"], tensors, ops, ["d2s", "row", "r", "tc"], {"w0": 0, "w3": 0})


def _tiny_movement_net():
    """More builtins, float and int8: arithmetic, reductions and moving values in TFLite's
    axis order while the tensors run NCHW inside (after a convolution)."""
    rng = np.random.default_rng(9)
    tensors = {
        "x": (1, 6, 8, 4), "w0": rng.normal(0, 0.5, (8, 3, 3, 4)), "b0": rng.normal(0, 0.2, 8),
        "c": (1, 6, 8, 8), "ksub": rng.normal(0, 1, (1, 1, 1, 8)), "sub": (1, 6, 8, 8),
        "lr": (1, 6, 8, 8), "iperm": np.array([0, 2, 1, 3]), "tr": (1, 8, 6, 8),
        "ibeg": np.array([0, 1, 0, 2]), "isize": np.array([1, -1, 4, 4]), "sl": (1, 7, 4, 4),
        "iax": np.array([3]), "s1": (1, 7, 4, 2), "s2": (1, 7, 4, 2),
        "isz": np.array([1, -1]), "v1": (1, 7, 4, 1), "v2": (1, 7, 4, 3),
        "pk": (2, 1, 7, 4, 2), "u0": (1, 7, 4), "u1": (1, 7, 4), "u2": (1, 7, 4),
        "iidx": np.array([3, 0, 5]), "g": (1, 6, 8, 3), "sd": (1, 3, 4, 32),
        "iaxes": np.array([1, 2]), "sm": (1, 8), "iaxis3": np.array([3]), "rm": (1, 6, 8, 1),
        "diff": (1, 6, 8, 8), "l2": (1, 6, 8, 8),
    }
    ops = [
        ("CONV_2D", ["x", "w0", "b0"], "c", dict(padding="SAME", stride=1)),
        ("SUB", ["c", "ksub"], "sub", {}),
        ("LEAKY_RELU", ["sub"], "lr", dict(alpha=0.2)),
        ("TRANSPOSE", ["lr", "iperm"], "tr", {}),
        ("SLICE", ["tr", "ibeg", "isize"], "sl", {}),
        ("SPLIT", ["iax", "sl"], ["s1", "s2"], dict(num=2)),
        ("SPLIT_V", ["sl", "isz", "iax"], ["v1", "v2"], dict(num=2)),
        ("PACK", ["s1", "s2"], "pk", dict(num=2, axis=0)),
        ("UNPACK", ["v2"], ["u0", "u1", "u2"], dict(num=3, axis=3)),
        ("GATHER", ["c", "iidx"], "g", dict(axis=3)),
        ("SPACE_TO_DEPTH", ["c"], "sd", dict(block_size=2)),
        ("SUM", ["c", "iaxes"], "sm", {}),
        ("REDUCE_MAX", ["c", "iaxis3"], "rm", dict(keep_dims=True)),
        ("SQUARED_DIFFERENCE", ["c", "lr"], "diff", {}),
        ("L2_NORMALIZATION", ["c"], "l2", {}),
    ]
    return Tiny(["x"], tensors, ops, ["pk", "v1", "u0", "u2", "g", "sd", "sm", "rm", "diff", "l2"],
                {"w0": 0})


MEDIAPIPE_OPS_NETS = [
    functools.partial(_tiny_mediapipe_ops_net),
    functools.partial(_tiny_mediapipe_ops_net, align_corners=True),
    functools.partial(_tiny_mediapipe_ops_net, half_pixel_centers=True),
]


@pytest.mark.parametrize("net", [_tiny_conv_net, _tiny_pool_net] + MEDIAPIPE_OPS_NETS
                         + [_tiny_movement_net],
                         ids=["conv", "pool", "mediapipe_ops", "mediapipe_ops_align_corners",
                              "mediapipe_ops_half_pixel", "movement"])
def test_tiny_models_against_tflm(tmp_path, net):
    tiny = net()
    rng = np.random.default_rng(7)
    float_feeds = [rng.normal(0, 2, tiny.tensors[n]).astype(np.float32) for n in tiny.inputs]
    float_bytes = tiny.build()
    float_path = tmp_path / "float.tflite"
    float_path.write_bytes(float_bytes)
    fm = load_tflite(float_path)
    onnx.checker.check_model(fm, full_check=True)
    interp = tflm(float_bytes)
    for k, x in enumerate(float_feeds):
        interp.set_input(x, k)
    interp.invoke()
    got = graph.run(fm, *float_feeds)
    assert [o.name for o in fm.graph.output] == [tiny.alias(n, None) for n in tiny.outputs]
    for k, y in enumerate(got):
        np.testing.assert_allclose(y, interp.get_output(k), rtol=1e-5, atol=1e-5)
    # Per operator in float: picking values (nearest resize, slices, depth-to-space, PRELU)
    # is bit-exact, so the coordinate conventions match; arithmetic is within a few ulps.
    fcheck = LayerCheck(float_bytes, fm)
    fcheck.run(*float_feeds)
    for (kind, *_), d in zip([op for op in tiny.ops if op[0] not in ("QUANTIZE", "DEQUANTIZE")],
                             fcheck.max_float_diff):
        exact = kind in ("RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "DEPTH_TO_SPACE", "PRELU",
                         "MAX_POOL_2D", "PAD", "RESHAPE", "CONCATENATION", "RELU", "RELU6")
        assert d <= (0.0 if exact else 2e-5), (kind, fcheck.max_float_diff)

    float_io = "QUANTIZE" in [op[0] for op in tiny.ops]
    quant = tiny.calibrate(float_bytes, float_feeds, float_io)
    int8_bytes = tiny.build(quant)
    int8_path = tmp_path / "int8.tflite"
    int8_path.write_bytes(int8_bytes)
    qm = load_tflite(int8_path)
    onnx.checker.check_model(qm, full_check=True)
    check = LayerCheck(int8_bytes, qm)
    interp = tflm(int8_bytes)
    for trial in range(5):
        feeds = []
        for n in tiny.inputs:
            x = rng.normal(0, 2, tiny.tensors[n]).astype(np.float32)
            if not float_io:
                s, z = quant[n]
                x = np.clip(np.round(x / s) + z, -128, 127).astype(np.int8)
            feeds.append(x)
        check.run(*feeds)
        for k, x in enumerate(feeds):
            interp.set_input(x, k)
        interp.invoke()
        for k, y in enumerate(graph.run(qm, *feeds)):
            ref = interp.get_output(k)
            assert y.dtype == ref.dtype and y.shape == ref.shape
    # Each operator alone is within one step of TFLM (the rounding described at the top);
    # data movement (pad, max pool, concatenation, reshape) is exact. One exception: TFLM's
    # int8 bilinear resize takes its coordinates in 10-bit fixed point (scale rounded to
    # 1/1024, and under half_pixel_centers a truncated half offset), so where neighbours
    # differ by most of the int8 range the interpolated value moves by up to two steps.
    for kind, d in zip([op[0] for op in tiny.ops], check.max_diff, strict=True):
        assert d <= (2 if kind == "RESIZE_BILINEAR" else 1), (kind, check.max_diff)
        if kind in ("RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "DEPTH_TO_SPACE"):
            assert d == 0, (kind, check.max_diff)
    assert max(check.max_float_diff) <= 1e-6


def _tiny_float_math_net():
    """The rest of the arithmetic, in float (the int8 kernels of these are rare in models)."""
    rng = np.random.default_rng(11)
    tensors = {
        "x": (1, 5, 6, 4), "w0": rng.normal(0, 0.5, (4, 3, 3, 4)), "b0": rng.normal(0, 0.2, 4),
        "c": (1, 5, 6, 4), "ab": (1, 5, 6, 4), "ex": (1, 5, 6, 4), "lg": (1, 5, 6, 4),
        "sq": (1, 5, 6, 4), "rs": (1, 5, 6, 4), "sqr": (1, 5, 6, 4), "ng": (1, 5, 6, 4),
        "el": (1, 5, 6, 4), "ge": (1, 5, 6, 4), "gea": (1, 5, 6, 4), "mx": (1, 5, 6, 4),
        "mn": (1, 5, 6, 4), "dv": (1, 5, 6, 4), "ls": (1, 5, 6, 4), "fl": (1, 5, 6, 4),
        "ce": (1, 5, 6, 4), "ipads": np.array([[0, 0], [1, 2], [2, 1], [0, 0]]),
        "mp": (1, 8, 9, 4), "im": np.array([1, 1, 2, 1]), "tl": (1, 5, 12, 4),
        "ibs": np.array([2, 5, 6, 4]), "bt": (2, 5, 6, 4), "kmat": rng.normal(0, 1, (1, 5, 4, 3)),
        "mm": (1, 5, 6, 3), "kone": np.ones((1, 1, 1, 4)), "pos": (1, 5, 6, 4),
    }
    ops = [
        ("CONV_2D", ["x", "w0", "b0"], "c", dict(padding="SAME", stride=1)),
        ("ABS", ["c"], "ab", {}),
        ("ADD", ["ab", "kone"], "pos", {}),
        ("EXP", ["c"], "ex", {}),
        ("LOG", ["pos"], "lg", {}),
        ("SQRT", ["pos"], "sq", {}),
        ("RSQRT", ["pos"], "rs", {}),
        ("SQUARE", ["c"], "sqr", {}),
        ("NEG", ["c"], "ng", {}),
        ("ELU", ["c"], "el", {}),
        ("GELU", ["c"], "ge", {}),
        ("GELU", ["c"], "gea", dict(approximate=True)),
        ("MAXIMUM", ["c", "ng"], "mx", {}),
        ("MINIMUM", ["c", "ng"], "mn", {}),
        ("DIV", ["c", "pos"], "dv", {}),
        ("LOG_SOFTMAX", ["c"], "ls", {}),
        ("FLOOR", ["c"], "fl", {}),
        ("CEIL", ["c"], "ce", {}),
        ("MIRROR_PAD", ["c", "ipads"], "mp", {}),
        ("TILE", ["c", "im"], "tl", {}),
        ("BROADCAST_TO", ["c", "ibs"], "bt", {}),
        ("BATCH_MATMUL", ["c", "kmat"], "mm", {}),
    ]
    outs = ["lg", "sq", "rs", "sqr", "el", "ge", "gea", "mx", "mn", "dv", "ls", "fl", "ce", "mp",
            "tl", "bt", "mm", "ex"]
    return Tiny(["x"], tensors, ops, outs, {"w0": 0})


def test_float_math_against_tflm(tmp_path):
    tiny = _tiny_float_math_net()
    data = tiny.build()
    p = tmp_path / "math.tflite"
    p.write_bytes(data)
    model = load_tflite(p)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(2).normal(0, 1.5, tiny.tensors["x"]).astype(np.float32)
    # LiteRT's reference kernels: TFLM has no GELU or TILE
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    refs = [interp.get_tensor(o["index"]) for o in interp.get_output_details()]
    for name, y, ref in zip(tiny.outputs, graph.run(model, x), refs, strict=True):
        np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5, err_msg=name)


def test_unsupported_operator(tmp_path):
    tensors = {"x": (1, 4), "y": (1, 4)}
    tiny = Tiny(["x"], tensors, [("REVERSE_V2", ["x"], "y", {})], ["y"], {})
    p = tmp_path / "reverse.tflite"
    p.write_bytes(tiny.build())
    with pytest.raises(UnsupportedOperatorError) as info:
        load_tflite(p)
    assert info.value.op == "REVERSE_V2" and info.value.node == "y"
    assert "TFLite operator REVERSE_V2 is not supported" in str(info.value)


def test_random_corruption_never_leaks_a_traceback(mlperf_dir, tmp_path):
    """Bytes flipped anywhere: the import succeeds or raises a one-line edgeloop error."""
    from edgeloop.errors import EdgeloopError

    data = (mlperf_dir / "kws_ref_model.tflite").read_bytes()
    rng = np.random.default_rng(0)
    p = tmp_path / "flipped.tflite"
    outcomes = {"ok": 0, "error": 0}
    for trial in range(60):
        b = bytearray(data)
        for _ in range(3):  # half the trials aim at the tables in the first 4 KB
            k = int(rng.integers(8, 4096 if trial % 2 else len(b)))
            b[k] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            load_tflite(p)
            outcomes["ok"] += 1
        except EdgeloopError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_float16_weights_behind_dequantize_fold_into_constants(tmp_path):
    """float16 models store weights as FLOAT16 constants read through DEQUANTIZE."""
    tiny = _tiny_conv_net()
    data = tiny.build()
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    sg = m.subgraphs[0]
    w_index = sg.operators[0].inputs[1]
    w_tensor = sg.tensors[w_index]
    w = np.frombuffer(bytes(bytearray(m.buffers[w_tensor.buffer].data)), np.float32)
    half = fb.TensorT()
    half.name, half.shape, half.type = b"w0_f16", list(w_tensor.shape), fb.TensorType.FLOAT16
    buf = fb.BufferT()
    buf.data = np.frombuffer(w.astype(np.float16).tobytes(), np.uint8)
    m.buffers.append(buf)
    half.buffer = len(m.buffers) - 1
    sg.tensors.append(half)
    w_tensor.buffer = 0                       # the float32 weights now come from DEQUANTIZE
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = OPS.DEQUANTIZE
    code.version = 1
    m.operatorCodes.append(code)
    deq = fb.OperatorT()
    deq.opcodeIndex, deq.inputs, deq.outputs = len(m.operatorCodes) - 1, [len(sg.tensors) - 1], \
        [w_index]
    sg.operators.insert(0, deq)
    f16 = pack(m)
    # reference: the float32 model with weights rounded to float16 (TFLM has no fp16 kernels)
    ref_model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    ref_w = ref_model.subgraphs[0].tensors[w_index]
    ref_model.buffers[ref_w.buffer].data = np.frombuffer(
        w.astype(np.float16).astype(np.float32).tobytes(), np.uint8)
    interp = tflm(pack(ref_model))

    p = tmp_path / "f16.tflite"
    p.write_bytes(f16)
    imported = load_tflite(p)
    assert "DequantizeLinear" not in [n.op_type for n in imported.graph.node]
    rng = np.random.default_rng(3)
    feeds = [rng.normal(0, 2, tiny.tensors[n]).astype(np.float32) for n in tiny.inputs]
    for k, x in enumerate(feeds):
        interp.set_input(x, k)
    interp.invoke()
    for k, y in enumerate(graph.run(imported, *feeds)):
        np.testing.assert_allclose(y, interp.get_output(k), rtol=1e-5, atol=1e-5)


def _sparse_fc_model(dense: np.ndarray, traversal, block_map, block) -> bytes:
    """y = FULLY_CONNECTED(x, DENSIFY(w)) with w stored in TFLite's sparse format: row and
    column blocks (dense rows of blocks, CSR over block columns, dense inside a block) in
    the given traversal order of the expanded dims."""
    rows, cols = dense.shape
    br, bc = block if block else (1, 1)
    grid = dense.reshape(rows // br, br, cols // bc, bc).transpose(0, 2, 1, 3)  # [R, C, br, bc]
    if list(traversal[:2]) == [1, 0]:  # column-major over the blocks
        grid = grid.transpose(1, 0, 2, 3)
    segments, indices, values = [0], [], []
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            if np.any(grid[r, c]):
                indices.append(c)
                values.append(grid[r, c].reshape(-1))
        segments.append(len(indices))

    def level(fmt, size=0, seg=None, idx=None):
        d = fb.DimensionMetadataT()
        d.format, d.denseSize = fmt, size
        if seg is not None:
            d.arraySegmentsType = d.arrayIndicesType = fb.SparseIndexVector.Int32Vector
            d.arraySegments, d.arrayIndices = fb.Int32VectorT(), fb.Int32VectorT()
            d.arraySegments.values, d.arrayIndices.values = seg, idx
        return d

    sp = fb.SparsityParametersT()
    sp.traversalOrder, sp.blockMap = list(traversal), list(block_map)
    sp.dimMetadata = [level(fb.DimensionType.DENSE, grid.shape[0]),
                      level(fb.DimensionType.SPARSE_CSR, seg=segments, idx=indices)]
    if block:
        sp.dimMetadata += [level(fb.DimensionType.DENSE, br), level(fb.DimensionType.DENSE, bc)]
    m = fb.ModelT()
    m.version, m.buffers = 3, [fb.BufferT()]
    buf = fb.BufferT()
    buf.data = np.frombuffer(np.concatenate(values).astype(np.float32).tobytes(), np.uint8)
    m.buffers.append(buf)

    def tensor(name, shape, buffer=0, sparsity=None):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer, t.sparsity = name, list(shape), fb.TensorType.FLOAT32, \
            buffer, sparsity
        return t

    sg = fb.SubGraphT()
    sg.tensors = [tensor(b"x", (1, cols)), tensor(b"w_sparse", (rows, cols), 1, sp),
                  tensor(b"w", (rows, cols)), tensor(b"y", (1, rows))]
    codes = []
    for code in (OPS.DENSIFY, OPS.FULLY_CONNECTED):
        oc = fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 1
        codes.append(oc)
    m.operatorCodes = codes
    densify, fc = fb.OperatorT(), fb.OperatorT()
    densify.opcodeIndex, densify.inputs, densify.outputs = 0, [1], [2]
    fc.opcodeIndex, fc.inputs, fc.outputs = 1, [0, 2, -1], [3]
    fc.builtinOptionsType, fc.builtinOptions = _options("FULLY_CONNECTED", {})
    sg.operators, sg.inputs, sg.outputs = [densify, fc], [0], [3]
    m.subgraphs = [sg]
    return pack(m)


@pytest.mark.parametrize("traversal,block_map,block", [
    ([0, 1], [], None),                 # CSR
    ([1, 0], [], None),                 # CSC: columns first
    ([0, 1, 2, 3], [0, 1], (2, 2)),     # 2x2 blocks, CSR over block columns
    ([0, 1, 2, 3], [0, 1], (1, 4)),     # 1x4 blocks (TFLite's own sparse FC format)
])
def test_sparse_weights_densify_like_litert(tmp_path, traversal, block_map, block):
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(4)
    dense = rng.normal(0, 1, (8, 8)).astype(np.float32)
    mask = rng.random((8 // (block or (1, 1))[0], 8 // (block or (1, 1))[1])) < 0.4
    dense *= np.kron(mask, np.ones(block or (1, 1))).astype(np.float32)
    data = _sparse_fc_model(dense, traversal, block_map, block)
    p = tmp_path / "sparse.tflite"
    p.write_bytes(data)
    model = load_tflite(p)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(w["w"], dense)  # densified exactly, values where they were
    meta = graph.get_metadata(model)["sparse_initializers"]["w"]
    assert meta["nonzeros"] == int(np.count_nonzero(dense)) and meta["size"] == 64
    assert meta["tflite_tensor"] == "w_sparse" and meta["block_size"] == list(block or [])
    x = rng.normal(0, 1, (1, 8)).astype(np.float32)
    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    ref = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(graph.run(model, x)[0], ref, rtol=1e-5, atol=1e-5)

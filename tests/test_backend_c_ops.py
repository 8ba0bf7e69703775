"""The operators public models use (Resize, PRelu, HardSwish, HardSigmoid, Split,
ConvTranspose, DepthToSpace, SpaceToDepth, Pow) in the C backend, against onnxruntime.

Three tiers on small graphs made here: the lowering (which kernel, one int8 kernel per QDQ
sandwich), the emitted C compiled with -Wall -Wextra -Werror (all cases in one gcc run,
under AddressSanitizer and UBSan), and the outputs of that C on the host against
onnxruntime (float within float rounding, int8 within one quantization step). Then one
real model from the MediaPipe wheel, exported to C and run on a scikit-image photograph.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.backends.c.codegen import render
from edgeloop.backends.c.lower import Lowerer
from edgeloop.errors import UnsupportedOperatorError
from edgeloop.profile.analysis import analyze

from c_harness import run_sanitized

OPSET = 19
RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, 0, None) for o in outputs],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 9
    del m.graph.output[:]
    m = onnx.shape_inference.infer_shapes(m)
    m.graph.output.extend([vi for vi in m.graph.value_info if vi.name in outputs])
    onnx.checker.check_model(m, full_check=True)
    return m


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _float_op(op, shape, consts=(), n_out=1, low=-3.0, high=3.0, **attrs):
    """x -> op(x, *consts) -> y[, y1 ...]; ``consts``: (name, array) or "" (omitted)."""
    inits = [_init(c[0], c[1]) for c in consts if c]
    ins = ["x"] + [c[0] if c else "" for c in consts]
    outs = ["y"] + [f"y{k}" for k in range(1, n_out)]
    m = _model([helper.make_node(op, ins, outs, **attrs)],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], outs, inits)
    return m, {"x": RNG.uniform(low, high, shape).astype(np.float32)}


def _float_ops(op, shape, variants, **attrs):
    """One input x, one ``op`` node per variant ``(consts, attrs)``: outputs y, y1, ..."""
    inits, nodes, outs = [], [], []
    for k, (consts, extra) in enumerate(variants):
        ins = ["x"]
        for c in consts:
            if c:
                inits.append(_init(f"{c[0]}{k}", c[1]))
            ins.append(f"{c[0]}{k}" if c else "")
        outs.append(f"y{k}" if k else "y")
        nodes.append(helper.make_node(op, ins, [outs[-1]], **attrs, **extra))
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], outs, inits)
    return m, {"x": RNG.uniform(-3, 3, shape).astype(np.float32)}


X_Q, Y_Q = (0.04, 3), (0.05, -4)


def _qdq_op(op, shape, consts=(), xq=X_Q, yq=Y_Q, **attrs):
    """int8 x -> DequantizeLinear -> op(., *consts) -> QuantizeLinear -> int8 y. A const
    given as (name, int8 array, scale[, axis]) sits behind its own DequantizeLinear."""
    inits = [_init("xs", np.float32(xq[0])), _init("xz", np.int8(xq[1])),
             _init("ys", np.float32(yq[0])), _init("yz", np.int8(yq[1]))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
    ins = ["xf"]
    for c in consts:
        if not c:
            ins.append("")
        elif len(c) == 2:
            inits.append(_init(c[0], c[1]))
            ins.append(c[0])
        else:
            name, q, s, *axis = c
            inits += [_init(name + "_q", q), _init(name + "_s", np.asarray(s, np.float32)),
                      _init(name + "_z", np.zeros(np.shape(s), q.dtype))]
            nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"],
                                          [name], **({"axis": axis[0]} if axis else {})))
            ins.append(name)
    nodes += [helper.make_node(op, ins, ["yf"], **attrs),
              helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT8, list(shape))], ["y"], inits)
    return m, {"x": RNG.integers(-128, 128, shape).astype(np.int8)}


def _sizes(v):
    return ("sizes", np.asarray(v, np.int64))


def _scales(v):
    return ("scales", np.asarray(v, np.float32))


COORDS = ["asymmetric", "align_corners", "half_pixel", "pytorch_half_pixel"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _cases():
    """(id, model, feeds, kernel the main op lowers to, int8?)."""
    out = []
    # Resize: every coordinate transformation and rounding, growing and shrinking by uneven
    # ratios (one model per transformation, one Resize per variant)
    for coord in COORDS + ["tf_half_pixel_for_nn"]:
        variants = [(["", "", _sizes([1, 2, 7, 8])], dict(nearest_mode=nm)) for nm in NEAREST]
        variants.append((["", "", _sizes([1, 2, 2, 3])], {}))
        out.append((f"resize-nearest-{coord}",
                    *_float_ops("Resize", (1, 2, 3, 5), variants, mode="nearest",
                                coordinate_transformation_mode=coord),
                    "resize_nearest", False))
    for coord in COORDS:
        out.append((f"resize-linear-{coord}",
                    *_float_ops("Resize", (2, 3, 4, 5), [(["", "", _sizes(s)], {}) for s in
                                                         ([2, 3, 9, 7], [2, 3, 3, 2], [2, 3, 1, 4])],
                                mode="linear", coordinate_transformation_mode=coord),
                    "resize_linear_f32", False))
    out.append(("resize-linear-scales",
                *_float_op("Resize", (1, 3, 4, 6), ["", _scales([1, 1, 2.5, 1.5])], mode="linear",
                           coordinate_transformation_mode="pytorch_half_pixel"),
                "resize_linear_f32", False))
    out.append(("resize-nearest-3d",
                *_float_op("Resize", (2, 3, 5), ["", _scales([1, 2, 0.6])], mode="nearest"),
                "resize_nearest", False))
    # PRelu: per-channel slope, one slope
    out.append(("prelu-channel", *_float_op("PRelu", (1, 4, 3, 5), [("s", RNG.normal(0, 1, (4, 1, 1)).astype(np.float32))]),
                "binary_f32", False))
    out.append(("prelu-scalar", *_float_op("PRelu", (2, 7), [("s", np.float32([0.25]))]), "binary_f32", False))
    out.append(("hardswish", *_float_op("HardSwish", (3, 40), low=-5, high=5), "unary_f32", False))
    out.append(("hardsigmoid", *_float_op("HardSigmoid", (3, 40), low=-5, high=5, alpha=0.3, beta=0.4),
                "unary_f32", False))
    out.append(("pow-square", *_float_op("Pow", (2, 9), [("p", np.float32(2.0))]), "binary_f32", False))
    out.append(("pow-int-exponent", *_float_op("Pow", (2, 9), [("p", np.int64(3))]), "binary_f32", False))
    out.append(("pow-sqrt", *_float_op("Pow", (2, 9), [("p", np.float32(0.5))], low=0.1), "binary_f32", False))
    # Split: given sizes, equal parts, a negative axis
    out.append(("split-sizes", *_float_op("Split", (2, 7, 3), [("sp", np.int64([2, 5]))], n_out=2, axis=1),
                "copy_nd", False))
    out.append(("split-equal", *_float_op("Split", (2, 3, 6), n_out=3, axis=-1, num_outputs=3), "copy_nd", False))
    # ConvTranspose: strides with output padding, groups, dilation, SAME_UPPER, 1-D
    w = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b = RNG.normal(0, 0.5, 3).astype(np.float32)
    out.append(("convtranspose-stride", *_float_op("ConvTranspose", (1, 4, 5, 4), [("w", w), ("b", b)], strides=[2, 2],
                                                   pads=[1, 0, 1, 1], output_padding=[1, 0]),
                "convtranspose_f32", False))
    out.append(("convtranspose-groups", *_float_op(
        "ConvTranspose", (2, 4, 3, 3), [("w", RNG.normal(0, 0.5, (4, 2, 2, 3)).astype(np.float32))],
        group=2, strides=[1, 2], dilations=[2, 1]), "convtranspose_f32", False))
    out.append(("convtranspose-same", *_float_op("ConvTranspose", (1, 4, 3, 4), [("w", w)], strides=[2, 2],
                                                 auto_pad="SAME_UPPER"), "convtranspose_f32", False))
    out.append(("convtranspose-1d", *_float_op(
        "ConvTranspose", (1, 2, 6), [("w", RNG.normal(0, 0.5, (2, 3, 4)).astype(np.float32))], strides=[3],
        pads=[1, 2]), "convtranspose_f32", False))
    for mode in ("DCR", "CRD"):
        out.append((f"depthtospace-{mode}", *_float_op("DepthToSpace", (2, 12, 2, 3), blocksize=2, mode=mode),
                    "copy_nd", False))
    out.append(("spacetodepth", *_float_op("SpaceToDepth", (1, 3, 6, 9), blocksize=3), "copy_nd", False))

    # nearest picks values: TFLite's importer resizes an int8 tensor itself (no QDQ)
    raw = _model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                                   coordinate_transformation_mode="half_pixel",
                                   nearest_mode="round_prefer_ceil")],
                 [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3, 4, 5])], ["y"],
                 [_init("sizes", np.int64([1, 3, 8, 10]))])
    out.append(("resize-nearest-int8-tensor", raw, {"x": RNG.integers(-128, 128, (1, 3, 4, 5)).astype(np.int8)},
                "resize_nearest", False))

    # int8 QDQ sandwiches: one integer kernel each
    for coord in ("asymmetric", "align_corners", "half_pixel"):
        out.append((f"q-resize-linear-{coord}", *_qdq_op("Resize", (1, 3, 5, 4), ["", "", _sizes([1, 3, 9, 10])],
                                                          mode="linear", coordinate_transformation_mode=coord),
                    "resize_linear_s8", True))
    out.append(("q-resize-linear-same-q", *_qdq_op("Resize", (1, 2, 4, 4), ["", _scales([1, 1, 2, 2])], yq=X_Q,
                                                    mode="linear"), "resize_linear_s8", True))
    out.append(("q-resize-nearest", *_qdq_op("Resize", (1, 3, 5, 4), ["", "", _sizes([1, 3, 9, 10])],
                                              mode="nearest", coordinate_transformation_mode="half_pixel"),
                "resize_nearest", True))
    slope_q = RNG.integers(-127, 128, (4, 1, 1)).astype(np.int8)
    out.append(("q-prelu-int8-slope", *_qdq_op("PRelu", (1, 4, 3, 5), [("s", slope_q, 0.01)]), "prelu_s8", True))
    out.append(("q-prelu-float-slope", *_qdq_op("PRelu", (1, 4, 3, 5), [("s", RNG.normal(0, 0.7, (4, 1, 1)).astype(np.float32))]),
                "prelu_s8", True))
    out.append(("q-hardswish", *_qdq_op("HardSwish", (2, 64)), "lut_s8", True))
    out.append(("q-hardsigmoid", *_qdq_op("HardSigmoid", (2, 64), yq=(1 / 256, -128)), "lut_s8", True))
    # a calibrated output quantization (not TFLite's 1/256): a table rather than a refusal
    out.append(("q-sigmoid-calibrated", *_qdq_op("Sigmoid", (2, 64), yq=(0.0035, -125)), "lut_s8", True))
    out.append(("q-tanh-calibrated", *_qdq_op("Tanh", (2, 64), yq=(0.007, 2)), "lut_s8", True))
    wq = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = RNG.uniform(0.005, 0.02, 3).astype(np.float32)
    bq = RNG.integers(-300, 300, 3).astype(np.int32)
    out.append(("q-convtranspose", *_qdq_op("ConvTranspose", (1, 4, 4, 5),
                                            [("w", wq, ws, 1), ("b", bq, np.float32(X_Q[0]) * ws, 0)],
                                            yq=(0.2, 1), strides=[2, 2], pads=[1, 1, 0, 0]),
                "convtranspose_s8", True))
    out.append(("q-depthtospace", *_qdq_op("DepthToSpace", (1, 8, 3, 2), blocksize=2), "copy_nd", True))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case rendered and run once from one sanitized build (-Wall -Wextra -Werror)."""
    d = tmp_path_factory.mktemp("ops")
    runs = []
    for k, (_, model, feeds, _, _) in enumerate(CASES):
        text, header, info = render(model, f"op{k}")
        (d / f"op{k}.c").write_text(text)
        (d / f"op{k}.h").write_text(header)
        runs.append((d / f"op{k}.c", info, [feeds[i["name"]] for i in info["inputs"]]))
    return dict(zip([c[0] for c in CASES], run_sanitized(runs, d)))


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_lowers_to_its_kernel(case):
    name, model, _, kernel, is_int8 = case
    steps = [s for s in analyze(model).steps if s.kind != "alias"]
    if is_int8:   # the whole DequantizeLinear -> op -> QuantizeLinear is one integer kernel
        assert [s.kind for s in steps] == ["kernel"], [(s.kind, s.op) for s in steps]
    kernels = [c.kernel for c in Lowerer(model).run().calls]
    assert kernels and set(kernels[:len(model.graph.output)]) == {kernel}, kernels
    assert "dequantize_s8" not in kernels and "quantize_s8" not in kernels


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_c_matches_onnxruntime(case, built):
    name, model, feeds, _, is_int8 = case
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = built[name]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if is_int8:   # within one quantization step
            assert np.abs(g.astype(int) - w.astype(int)).max() <= 1, name
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_int8_tables_equal_onnxruntime_exactly(built):
    # the table is the op onnxruntime runs, quantized as QuantizeLinear does
    for name, model, feeds, kernel, _ in CASES:
        if kernel == "lut_s8":
            want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            np.testing.assert_array_equal(built[name][0], want[0])


@pytest.mark.parametrize("attrs,words", [
    ({"mode": "cubic"}, "Resize mode 'cubic' is not supported"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
     "coordinate_transformation_mode 'tf_crop_and_resize' is not supported"),
])
def test_unsupported_resize_says_what(attrs, words):
    model, _ = _float_op("Resize", (1, 2, 3, 4), ["", "", _sizes([1, 2, 6, 8])], **attrs)
    with pytest.raises(UnsupportedOperatorError) as info:
        Lowerer(model).run()
    msg = str(info.value)
    assert words in msg and "\n" not in msg and "Resize" in msg


def test_resize_of_the_channel_axis_is_refused():
    model, _ = _float_op("Resize", (1, 2, 3, 4), ["", "", _sizes([1, 4, 3, 4])], mode="nearest")
    with pytest.raises(UnsupportedOperatorError, match="other axes than the last two"):
        Lowerer(model).run()


# ----- a real model from the MediaPipe wheel ---------------------------------------------------


def test_selfie_segmentation_exports_and_matches_onnxruntime_on_a_photo(tmp_path):
    """MediaPipe's landscape selfie segmentation (HardSwish, bilinear Resize, ConvTranspose):
    exported to C, built on the host, run on scikit-image's astronaut photograph."""
    from PIL import Image

    from edgeloop import graph
    from edgeloop.backends.c import CModel, compile_shared, generate
    from edgeloop.frontends import load_file

    from wheel_assets import mediapipe_model, photo

    model = load_file(mediapipe_model("selfie_segmentation/selfie_segmentation_landscape.tflite"))
    ops = {n.op_type for n in model.graph.node}
    assert {"HardSwish", "Resize", "ConvTranspose"} <= ops
    shape = graph.tensor_shape(model.graph.input[0])
    h, w = (shape[1], shape[2]) if shape[3] == 3 else (shape[2], shape[3])
    img = np.asarray(Image.open(photo("astronaut.png")).convert("RGB").resize((w, h), Image.BILINEAR),
                     np.float32) / 255.0    # MediaPipe's [0, 1] input for this model
    x = (img if shape[3] == 3 else img.transpose(2, 0, 1))[None].astype(np.float32)
    info = generate(model, tmp_path)
    got = CModel(compile_shared(tmp_path, opt="-O1"), info).run_all(x)
    want = graph.run(model, x)
    for g, ref in zip(got, want):
        assert g.shape == ref.shape
        err = float(np.max(np.abs(g - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        assert err <= 3e-4, err   # measured 3.8e-5 (float sums in another order than onnxruntime)
    # a person on the photograph: the mask is not flat
    assert float(np.ptp(want[0])) > 0.5


def test_int8_split_runs_as_dequantize_split_quantize(tmp_path):
    """A Split in a QDQ graph (several outputs: no one-output int8 kernel) runs on the
    dequantized tensor and each part is quantized again."""
    from edgeloop.backends.c import CModel, compile_shared, generate

    inits = [_init("xs", np.float32(0.05)), _init("xz", np.int8(2)), _init("sp", np.int64([3, 1])),
             _init("as", np.float32(0.04)), _init("az", np.int8(-3)), _init("bs", np.float32(0.06)),
             _init("bz", np.int8(5))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Split", ["xf", "sp"], ["af", "bf"], axis=1),
             helper.make_node("QuantizeLinear", ["af", "as", "az"], ["a"]),
             helper.make_node("QuantizeLinear", ["bf", "bs", "bz"], ["b"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 4, 3])], ["a", "b"], inits)
    x = RNG.integers(-128, 128, (2, 4, 3)).astype(np.int8)
    info = generate(m, tmp_path)
    got = CModel(compile_shared(tmp_path, opt="-O1"), info).run_all(x)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert [g.shape for g in got] == [(2, 3, 3), (2, 1, 3)]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1

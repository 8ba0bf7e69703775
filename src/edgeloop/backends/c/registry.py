"""The C backend's operators, one record each: the only place that says what is supported.

A record (:class:`Op`) has up to two implementations:

- ``float``: the ONNX node on float tensors (or integer data movement), one step;
- ``int8``: the main operator of a QDQ sandwich ``DequantizeLinear -> op ->
  [epilogue ...] -> QuantizeLinear``, one integer kernel (TFLite Micro's arithmetic).

Each implementation (:class:`Impl`) names its C kernel file(s) under ``kernels/`` (whose
``k_<name>`` signature the lowering binds by keyword), the enum constant that selects the
function in a shared kernel (declared in that C file), the :class:`~edgeloop.backends.c.
lower.Lowerer` method that lowers it, its numpy reference in :mod:`edgeloop.backends.c.
reference` (``None``: checked against onnxruntime instead), its in-place scheme, and,
for int8, the epilogues it fuses. ``sample`` is a small instance the registry test builds
a graph from, for every pattern below, to check it lowers, compiles and runs.

Read by the profiler's analysis (which QDQ chains are one kernel, which steps may run in
place), by the quantizer (which ops to quantize), by the lowering (dispatch), by the
reference and by the tests. Importing it loads nothing heavy (no numpy, no onnx).

To add an operator: a record here, its kernel file ``kernels/<name>.c``, its lowering
method, and (for int8) its numpy reference; the registry test then covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# in-place schemes (see edgeloop.profile.analysis.decide_inplace)
ELEMENTWISE = "elementwise"   # y[i] from x[i] only (or a row read in full before written)
BINARY = "binary"             # y[i] from a[i] and b[i]: may overwrite a same-shape operand
CONV = "conv"                 # the conv_pixels / conv_groups schemes


@dataclass(frozen=True)
class Sample:
    """A small instance of an operator for the registry test.

    ``operands``: per ONNX input, ``("x", shape)`` an activation (``"x8"``: an int8 one),
    ``("w", shape)`` a weight constant (int8 behind a DequantizeLinear in a QDQ graph),
    ``("var", shape)`` a positive constant, ``("b", n)`` a bias, ``("i64", values)`` /
    ``("f", value)`` / ``("i8", value)`` a constant parameter, ``("none",)`` an omitted
    optional input (an empty name).
    """

    operands: tuple
    attrs: dict = field(default_factory=dict)
    outputs: int = 1


@dataclass(frozen=True)
class Impl:
    kernels: tuple[str, ...]          # C kernel files it emits (kernels/<name>.c)
    lower: str                        # Lowerer method
    code: str = ""                    # enum constant of kernels[0] selecting the function
    params: tuple = ()                # (attribute, default) passed as p0, p1 (unary_f32)
    reference: tuple[str, ...] = ()   # numpy reference functions; () = onnxruntime
    inplace: str = ""                 # ELEMENTWISE, BINARY, CONV or ""
    epilogues: tuple[str, ...] = ()   # int8: ops fused after the main op (Relu, Clip)
    bias_add: bool = False            # int8: a constant Add right after the main op is its bias
    residual_add: bool = False        # int8: fuses a following residual Add(output, skip),
    #                                   writing over skip (edgeloop.profile.analysis._fuse_residual)
    out_q: tuple | None = None        # int8: the output quantization the kernel requires
    same_q: bool = False              # int8: inputs must share the output's quantization
    quantize: bool = True             # int8: in the quantizer's default op list
    sample: Sample | None = None


@dataclass(frozen=True)
class Op:
    name: str
    domain: str = ""
    float: Impl | None = None
    int8: Impl | None = None


ACT = ("Relu", "Clip")
_U = ("unary_f32",)


def _unary(code, params=(), **kw):
    return Impl(_U, "lower_unary", code=code, params=params, inplace=ELEMENTWISE,
                sample=Sample((("x", (2, 5)),), kw.pop("attrs", {})), **kw)


def _binary(code):
    return Impl(("binary_f32",), "lower_binary", code=code, inplace=BINARY,
                sample=Sample((("x", (2, 3, 4)), ("x", (3, 1)))))


def _reduce(code, sample_attrs=None):
    return Impl(("reduce_f32",), "op_Reduce", code=code, reference=("reduce_f32",),
                sample=Sample((("x", (2, 3, 4)),), sample_attrs or {"axes": [1]}))


_POOL = {"kernel_shape": [2, 2], "strides": [2, 2]}
_ALIAS_Q = Impl(("requant_s8",), "q_reshape", epilogues=ACT, reference=("requant_s8",),
                inplace=ELEMENTWISE, quantize=False,
                sample=Sample((("x", (1, 2, 3, 4)),), {}))

# an element-wise int8 function as a table filled at export (the op run by onnxruntime on
# every int8 input, then quantized): exact to onnxruntime's QDQ arithmetic
_LUT = Impl(("lut_s8",), "q_lut", epilogues=ACT, inplace=ELEMENTWISE, reference=("lut_s8",),
            quantize=False, sample=Sample((("x", (1, 2, 5)),)))

_OPS = [
    Op("Conv",
       float=Impl(("conv_f32", "conv_f32_pw_ip", "conv_f32_grp_ip"), "op_Conv", inplace=CONV,
                  sample=Sample((("x", (1, 3, 6, 6)), ("w", (4, 3, 3, 3)), ("b", 4)),
                                {"pads": [1, 1, 1, 1]})),
       int8=Impl(("conv_s8", "conv_s8_pw_ip", "conv_s8_grp_ip", "conv_s8_res", "fast_dw3x3_s8",
                  "fast_conv"),
                 "q_Conv",
                 epilogues=ACT, bias_add=True, residual_add=True, inplace=CONV,
                 reference=("conv_s8", "conv_s8_pw_ip", "conv_s8_grp_ip", "conv_s8_res"),
                 sample=Sample((("x", (1, 3, 6, 6)), ("w", (4, 3, 3, 3)), ("b", 4)),
                               {"pads": [1, 1, 1, 1], "strides": [2, 1]}))),
    Op("Gemm",
       float=Impl(("matmul_f32",), "op_Gemm",
                  sample=Sample((("x", (2, 5)), ("w", (4, 5)), ("b", 4)), {"transB": 1})),
       int8=Impl(("fc_s8", "fast_fc_s8"), "q_Gemm", epilogues=ACT, bias_add=True, reference=("fc_s8",),
                 sample=Sample((("x", (1, 5)), ("w", (4, 5)), ("b", 4)), {"transB": 1}))),
    Op("MatMul",
       float=Impl(("matmul_f32",), "op_MatMul", sample=Sample((("x", (2, 3, 5)), ("w", (5, 4))))),
       int8=Impl(("fc_s8", "fast_fc_s8"), "q_MatMul", epilogues=ACT, bias_add=True, reference=("fc_s8",),
                 sample=Sample((("x", (1, 3, 5)), ("w", (5, 4)))))),
    Op("Add", float=_binary("EL_BINARY_ADD"),
       int8=Impl(("add_s8", "fast_add_s8"), "q_Add", epilogues=ACT, inplace=BINARY, reference=("add_s8",),
                 sample=Sample((("x", (1, 3, 4)), ("x", (3, 1)))))),
    Op("Sub", float=_binary("EL_BINARY_SUB")),
    Op("Mul", float=_binary("EL_BINARY_MUL")),
    Op("Div", float=_binary("EL_BINARY_DIV")),
    Op("Max", float=_binary("EL_BINARY_MAX")),
    Op("Min", float=_binary("EL_BINARY_MIN")),
    Op("Relu", float=_unary("EL_UNARY_RELU"),
       int8=Impl(("requant_s8",), "q_Relu", epilogues=ACT, inplace=ELEMENTWISE,
                 reference=("requant_s8",), sample=Sample((("x", (1, 2, 5)),)))),
    Op("Clip", float=Impl(_U, "op_Clip", code="EL_UNARY_CLIP", inplace=ELEMENTWISE,
                          sample=Sample((("x", (2, 5)), ("f", -0.5), ("f", 0.7)))),
       int8=Impl(("requant_s8",), "q_Clip", epilogues=ACT, inplace=ELEMENTWISE,
                 reference=("requant_s8",),
                 sample=Sample((("x", (1, 2, 5)), ("f", -0.5), ("f", 0.7))))),
    Op("Sigmoid", float=_unary("EL_UNARY_SIGMOID"),
       int8=Impl(("logistic_s8", "lut_s8"), "q_Sigmoid", out_q=(1 / 256, -128), reference=("logistic_s8", "lut_s8"),
                 sample=Sample((("x", (1, 2, 5)),)))),
    Op("Tanh", float=_unary("EL_UNARY_TANH"),
       int8=Impl(("logistic_s8", "lut_s8"), "q_Tanh", out_q=(1 / 128, 0), reference=("logistic_s8", "lut_s8"),
                 sample=Sample((("x", (1, 2, 5)),)))),
    Op("LeakyRelu", float=_unary("EL_UNARY_LEAKYRELU", (("alpha", 0.01),), attrs={"alpha": 0.2}),
       int8=_LUT),
    Op("Abs", float=_unary("EL_UNARY_ABS")),
    Op("Neg", float=_unary("EL_UNARY_NEG")),
    Op("Exp", float=_unary("EL_UNARY_EXP")),
    Op("Sqrt", float=_unary("EL_UNARY_SQRT")),
    Op("HardSigmoid", float=_unary("EL_UNARY_HARDSIGMOID", (("alpha", 0.2), ("beta", 0.5))),
       int8=_LUT),
    Op("HardSwish", float=_unary("EL_UNARY_HARDSWISH"), int8=_LUT),
    Op("Elu", float=_unary("EL_UNARY_ELU", (("alpha", 1.0),)), int8=_LUT),
    Op("PRelu",
       float=Impl(("binary_f32",), "lower_binary", code="EL_BINARY_PRELU", inplace=BINARY,
                  sample=Sample((("x", (1, 3, 4, 4)), ("w", (3, 1, 1))))),
       int8=Impl(("prelu_s8",), "q_PRelu", epilogues=ACT, inplace=ELEMENTWISE,
                 reference=("prelu_s8",), quantize=False,
                 sample=Sample((("x", (1, 3, 4, 4)), ("w", (3, 1, 1)))))),
    Op("Pow", float=_binary("EL_BINARY_POW")),
    Op("Resize",
       float=Impl(("resize_nearest", "resize_linear_f32"), "op_Resize",
                  reference=("resize_nearest",),
                  sample=Sample((("x", (1, 2, 3, 4)), ("none",), ("none",), ("i64", [1, 2, 7, 6])),
                                {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})),
       int8=Impl(("resize_nearest", "requant_s8", "resize_linear_s8"), "q_Resize", epilogues=ACT,
                 reference=("resize_nearest", "requant_s8", "resize_linear_s8"), quantize=False,
                 sample=Sample((("x", (1, 2, 3, 4)), ("none",), ("none",), ("i64", [1, 2, 7, 6])),
                               {"mode": "linear", "coordinate_transformation_mode": "align_corners"}))),
    Op("ConvTranspose",
       float=Impl(("convtranspose_f32",), "op_ConvTranspose",
                  sample=Sample((("x", (1, 3, 4, 4)), ("w", (3, 2, 3, 3)), ("b", 2)),
                                {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})),
       int8=Impl(("convtranspose_s8",), "q_ConvTranspose", epilogues=ACT,
                 reference=("convtranspose_s8",), quantize=False,
                 sample=Sample((("x", (1, 3, 4, 4)), ("w", (3, 2, 3, 3)), ("b", 2)),
                               {"strides": [2, 2], "pads": [1, 0, 1, 0]}))),
    Op("DepthToSpace",
       float=Impl(("copy_nd", "fast_transpose8"), "op_DepthToSpace", reference=("copy_nd",),
                  sample=Sample((("x", (1, 8, 2, 3)),), {"blocksize": 2, "mode": "CRD"})),
       int8=Impl(("copy_nd", "requant_s8", "fast_transpose8"), "q_space_depth", epilogues=ACT,
                 reference=("copy_nd", "requant_s8"), quantize=False,
                 sample=Sample((("x", (1, 8, 2, 3)),), {"blocksize": 2}))),
    Op("SpaceToDepth",
       float=Impl(("copy_nd", "fast_transpose8"), "op_SpaceToDepth", reference=("copy_nd",),
                  sample=Sample((("x", (1, 2, 4, 6)),), {"blocksize": 2})),
       int8=Impl(("copy_nd", "requant_s8", "fast_transpose8"), "q_space_depth", epilogues=ACT,
                 reference=("copy_nd", "requant_s8"), quantize=False,
                 sample=Sample((("x", (1, 2, 4, 6)),), {"blocksize": 2}))),
    Op("Split", float=Impl(("copy_nd", "fast_transpose8"), "op_Split", reference=("copy_nd",),
                           sample=Sample((("x", (2, 6)), ("i64", [2, 4])), {"axis": 1}, outputs=2))),
    Op("Reciprocal", float=_unary("EL_UNARY_RECIPROCAL")),
    Op("Floor", float=_unary("EL_UNARY_FLOOR")),
    Op("Ceil", float=_unary("EL_UNARY_CEIL")),
    Op("MaxPool",
       float=Impl(("pool_f32",), "op_pool", sample=Sample((("x", (1, 2, 4, 4)),), _POOL)),
       int8=Impl(("pool_s8",), "q_pool", epilogues=ACT, reference=("pool_s8",),
                 sample=Sample((("x", (1, 2, 4, 4)),), _POOL))),
    Op("AveragePool",
       float=Impl(("pool_f32",), "op_pool", sample=Sample((("x", (1, 2, 4, 4)),), _POOL)),
       int8=Impl(("pool_s8",), "q_pool", epilogues=ACT, reference=("pool_s8",),
                 sample=Sample((("x", (1, 2, 4, 4)),), _POOL))),
    Op("GlobalAveragePool",
       float=Impl(("reduce_f32",), "op_GlobalAveragePool", code="EL_REDUCE_MEAN",
                  reference=("reduce_f32",), sample=Sample((("x", (1, 3, 4, 4)),))),
       int8=Impl(("pool_s8",), "q_global_pool", epilogues=ACT, reference=("pool_s8",),
                 sample=Sample((("x", (1, 3, 4, 4)),)))),
    Op("GlobalMaxPool",
       float=Impl(("reduce_f32",), "op_GlobalAveragePool", code="EL_REDUCE_MAX",
                  reference=("reduce_f32",), sample=Sample((("x", (1, 3, 4, 4)),))),
       int8=Impl(("pool_s8",), "q_global_pool", epilogues=ACT, reference=("pool_s8",),
                 sample=Sample((("x", (1, 3, 4, 4)),)))),
    Op("ReduceMean", float=_reduce("EL_REDUCE_MEAN"),
       int8=Impl(("pool_s8",), "q_ReduceMean", epilogues=ACT, reference=("pool_s8",),
                 sample=Sample((("x", (1, 3, 4, 4)),), {"axes": [2, 3]}))),
    Op("ReduceSum", float=Impl(("reduce_f32",), "op_Reduce", code="EL_REDUCE_SUM",
                               reference=("reduce_f32",),
                               sample=Sample((("x", (2, 3, 4)), ("i64", [1]))))),
    Op("ReduceMax", float=_reduce("EL_REDUCE_MAX")),
    Op("ReduceMin", float=_reduce("EL_REDUCE_MIN")),
    Op("Softmax",
       float=Impl(("softmax_f32",), "op_Softmax", inplace=ELEMENTWISE,
                  sample=Sample((("x", (2, 5)),))),
       int8=Impl(("softmax_s8",), "q_Softmax", out_q=(1 / 256, -128), inplace=ELEMENTWISE,
                 reference=("softmax_s8",), sample=Sample((("x", (1, 2, 5)),)))),
    Op("LogSoftmax", float=Impl(("softmax_f32",), "op_LogSoftmax", inplace=ELEMENTWISE,
                                sample=Sample((("x", (2, 5)),)))),
    Op("BatchNormalization",
       float=Impl(("batchnorm_f32",), "op_BatchNormalization", inplace=ELEMENTWISE,
                  sample=Sample((("x", (1, 3, 2, 2)), ("w", (3,)), ("w", (3,)), ("w", (3,)),
                                 ("var", (3,)))))),
    Op("Transpose",
       float=Impl(("copy_nd", "fast_transpose8"), "op_Transpose", reference=("copy_nd",),
                  sample=Sample((("x", (2, 3, 4)),), {"perm": [2, 0, 1]})),
       int8=Impl(("copy_nd", "requant_s8", "fast_transpose8"), "q_Transpose", epilogues=ACT,
                 reference=("copy_nd", "requant_s8"),
                 sample=Sample((("x", (1, 3, 4)),), {"perm": [0, 2, 1]}))),
    Op("Expand", float=Impl(("copy_nd",), "op_Expand", reference=("copy_nd",),
                            sample=Sample((("x", (3, 1)), ("i64", [2, 3, 4]))))),
    Op("Identity", float=Impl(("copy_nd",), "op_Identity", reference=("copy_nd",),
                              sample=Sample((("x", (2, 3)),))), int8=_ALIAS_Q),
    Op("Reshape", float=Impl(("copy_nd",), "op_Identity", reference=("copy_nd",),
                             sample=Sample((("x", (2, 3)), ("i64", [3, 2])))),
       int8=Impl(("requant_s8",), "q_reshape", epilogues=ACT, reference=("requant_s8",),
                 inplace=ELEMENTWISE, quantize=False,
                 sample=Sample((("x", (1, 2, 3)), ("i64", [1, 6]))))),
    Op("Flatten", float=Impl(("copy_nd",), "op_Identity", reference=("copy_nd",),
                             sample=Sample((("x", (2, 3, 2)),))), int8=_ALIAS_Q),
    Op("Squeeze", float=Impl(("copy_nd",), "op_Identity", reference=("copy_nd",),
                             sample=Sample((("x", (2, 1, 3)), ("i64", [1])))),
       int8=Impl(("requant_s8",), "q_reshape", epilogues=ACT, reference=("requant_s8",),
                 inplace=ELEMENTWISE, quantize=False,
                 sample=Sample((("x", (1, 2, 1, 3)), ("i64", [2]))))),
    Op("Unsqueeze", float=Impl(("copy_nd",), "op_Identity", reference=("copy_nd",),
                               sample=Sample((("x", (2, 3)), ("i64", [1])))),
       int8=Impl(("requant_s8",), "q_reshape", epilogues=ACT, reference=("requant_s8",),
                 inplace=ELEMENTWISE, quantize=False,
                 sample=Sample((("x", (1, 2, 3)), ("i64", [1]))))),
    Op("Slice", float=Impl(("copy_nd",), "op_Slice", reference=("copy_nd",),
                           sample=Sample((("x", (3, 5)), ("i64", [0, 1]), ("i64", [3, 5]),
                                          ("i64", [0, 1]), ("i64", [2, 2]))))),
    Op("Concat",
       float=Impl(("concat",), "op_Concat", reference=("concat",),
                  sample=Sample((("x", (2, 3)), ("x", (2, 2))), {"axis": 1})),
       int8=Impl(("concat", "requant_s8"), "q_Concat", epilogues=ACT, same_q=True,
                 reference=("concat", "requant_s8"),
                 sample=Sample((("x", (1, 2, 3)), ("x", (1, 1, 3))), {"axis": 1}))),
    Op("Pad",
       float=Impl(("pad_nd",), "op_Pad", reference=("pad_nd",),
                  sample=Sample((("x", (2, 3)), ("i64", [0, 1, 1, 2])))),
       int8=Impl(("pad_nd", "requant_s8"), "q_Pad", epilogues=ACT,
                 reference=("pad_nd", "requant_s8"),
                 sample=Sample((("x", (1, 2, 3)), ("i64", [0, 0, 1, 0, 1, 2]))))),
    Op("ArgMax", float=Impl(("argmax_f32",), "op_ArgMax", sample=Sample((("x", (2, 5)),),
                                                                         {"axis": 1}))),
    Op("ArgMin", float=Impl(("argmax_f32",), "op_ArgMin", sample=Sample((("x", (2, 5)),),
                                                                         {"axis": 1}))),
    Op("Gather", float=Impl(("gather",), "op_Gather",
                            sample=Sample((("x", (4, 3)), ("i64", [3, 0, 2])), {"axis": 0}))),
    Op("Cast", float=Impl((), "op_Cast", sample=Sample((("x", (2, 3)),), {"to": 6}))),
    Op("QuantizeLinear",
       float=Impl(("quantize_s8",), "op_QuantizeLinear", reference=("quantize_s8",),
                  sample=Sample((("x", (2, 5)), ("f", 0.02), ("i8", 3)))),
       # DequantizeLinear -> QuantizeLinear with another scale: a requantization
       int8=Impl(("requant_s8",), "q_reshape", reference=("requant_s8",), quantize=False,
                 sample=Sample((("x", (1, 2, 5)),)))),
    Op("DequantizeLinear",
       float=Impl(("dequantize_s8",), "op_DequantizeLinear", reference=("dequantize_s8",),
                  sample=Sample((("x8", (2, 5)), ("f", 0.02), ("i8", -3))))),
    # ONNX-ML
    Op("ArrayFeatureExtractor", "ai.onnx.ml", float=Impl(("gather",), "op_ArrayFeatureExtractor")),
    Op("Scaler", "ai.onnx.ml", float=Impl(("scaler",), "op_Scaler")),
    Op("Normalizer", "ai.onnx.ml", float=Impl(("normalizer",), "op_Normalizer")),
    Op("LinearClassifier", "ai.onnx.ml", float=Impl(("linear_classifier",), "op_LinearClassifier")),
    Op("LinearRegressor", "ai.onnx.ml", float=Impl(("linear_regressor",), "op_LinearRegressor")),
    Op("TreeEnsembleClassifier", "ai.onnx.ml",
       float=Impl(("tree_ensemble",), "op_TreeEnsembleClassifier")),
    Op("TreeEnsembleRegressor", "ai.onnx.ml",
       float=Impl(("tree_ensemble",), "op_TreeEnsembleRegressor")),
]

OPS: dict[str, Op] = {o.name: o for o in _OPS}


@dataclass(frozen=True)
class Head:
    """A detection head decoded in C after the graph (``<prefix>_detect``, generated by
    :mod:`edgeloop.backends.c.detect`): the kernel files it emits."""

    kind: str
    kernels: tuple[str, ...]


HEADS: dict[str, Head] = {h.kind: h for h in (
    Head("ssd_anchors", ("detect_ssd",)),
    Head("tflite_ssd", ("detect_ssd",)),
    Head("centroids", ("detect_centroids",)),
    Head("yolov8", ("detect_yolo",)),
    Head("yolov5", ("detect_yolo",)),
)}


def _domain_ok(op: Op, domain: str) -> bool:
    return (domain or "") in (("ai.onnx.ml",) if op.domain == "ai.onnx.ml" else ("", "ai.onnx"))


def float_impl(op_type: str, domain: str = "") -> Impl | None:
    """The float (one node, one step) implementation of ``op_type``, or None."""
    op = OPS.get(op_type)
    return op.float if op is not None and _domain_ok(op, domain) else None


def int8_impl(op_type: str, domain: str = "") -> Impl | None:
    """The int8 kernel whose main operator is ``op_type``, or None."""
    op = OPS.get(op_type)
    return op.int8 if op is not None and _domain_ok(op, domain) else None


def epilogue_ops() -> set[str]:
    """Every op some int8 kernel fuses after its main op (Add: a bias)."""
    out = {e for o in _OPS if o.int8 for e in o.int8.epilogues}
    if any(o.int8 and o.int8.bias_add for o in _OPS):
        out.add("Add")
    return out


def quantizable_ops() -> tuple[str, ...]:
    """The ops the quantizer turns into QDQ sandwiches by default: those with an int8 kernel."""
    return tuple(o.name for o in _OPS if o.int8 is not None and o.int8.quantize)


def supported_ops(domain: str = "") -> set[str]:
    return {o.name for o in _OPS if o.float is not None and _domain_ok(o, domain)}


def code(impl: Impl) -> int:
    """The integer the C kernel switches on for ``impl`` (declared in the kernel file)."""
    from edgeloop.backends.c import kernel_lib
    return kernel_lib.constant(impl.kernels[0], impl.code)

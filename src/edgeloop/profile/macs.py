"""Multiply-accumulate (MAC) counts per ONNX operator.

Conventions (one number per node, batch as in the shapes given):

- Conv / ConvInteger / QLinearConv: ``prod(Y.shape) * prod(W.shape[1:])``, i.e.
  ``N*C_out*H_out*W_out*(C_in/group)*kH*kW``; grouped, depthwise, strided,
  padded and dilated convolutions all follow from the real output shape.
  Bias adds are not counted (they are folded into the accumulator start).
- ConvTranspose: ``prod(X.shape) * prod(W.shape[1:])`` (every input element
  is scattered into ``C_out/group*kH*kW`` outputs).
- Gemm / MatMul (batched too) / MatMulInteger / QLinearMatMul:
  ``prod(Y.shape) * K``.
- MaxPool / AveragePool / LpPool: ``prod(Y.shape) * prod(kernel_shape)``
  (one compare or add per window element per output element).
  GlobalAveragePool / GlobalMaxPool / GlobalLpPool and the Reduce* ops,
  ArgMax / ArgMin / TopK: one per *input* element.
- Resize: nearest is data movement (0); linear ``prod(Y.shape) * 2**k`` and cubic
  ``prod(Y.shape) * 4**k`` for the k axes it resizes (one MAC per input value an output
  value weighs).
- LSTM / GRU / RNN (and onnxruntime's DynamicQuantizeLSTM): ``seq * batch * (|W| + |R|)``,
  every input and recurrent weight once per time step (the gate nonlinearities are not
  counted).
- Everything else that computes (activations, Add/Sub/Mul/Div, Softmax,
  BatchNormalization and the other normalisations, Scaler, Normalizer, a
  standalone Quantize/DequantizeLinear, ...): one per *output* element.
- Pure data movement (Reshape, Flatten, Transpose, Concat, Pad, Squeeze,
  Unsqueeze, Identity, Cast, Shape, Gather, Slice, ZipMap,
  ArrayFeatureExtractor, ...): 0.
- Quantize/DequantizeLinear inside an int8 QDQ kernel, and the fused
  activation or bias add of such a kernel, count 0; that decision is made by
  the profiler (:mod:`edgeloop.profile.analysis`), not here.
- Tree ensembles: comparisons, ``N * sum over trees of the tree's max depth``.
  LinearClassifier / LinearRegressor: ``N * len(coefficients)``.
  SVMs: ``N * (n_support_vectors * n_features + len(coefficients))``.

An operator not listed raises :class:`~edgeloop.errors.UnsupportedOperatorError`.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import onnx
from onnx import helper

from edgeloop.errors import EdgeloopError, UnsupportedOperatorError

Shapes = Mapping[str, Sequence[int] | None]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _shape(node: onnx.NodeProto, shapes: Shapes, tensor: str) -> tuple[int, ...]:
    shape = shapes.get(tensor) if tensor else None
    if shape is None:
        raise EdgeloopError(f"shape of tensor '{tensor}' is unknown; cannot count MACs",
                            node=_name(node), op=node.op_type)
    return tuple(int(d) for d in shape)


def _in(node, shapes, i=0):
    return _shape(node, shapes, node.input[i])


def _out(node, shapes, i=0):
    return _shape(node, shapes, node.output[i])


def _batch(node, shapes) -> int:
    """Rows of a 2-D ML-op input ([N, F]); 1 for a 1-D input."""
    x = _in(node, shapes)
    return x[0] if len(x) >= 2 else 1


def _features(node, shapes) -> int:
    x = _in(node, shapes)
    return x[-1] if x else 1


# --- the counters -----------------------------------------------------------

def _zero(node, shapes) -> int:
    return 0


def _per_output(node, shapes) -> int:
    return math.prod(_out(node, shapes))


def _per_input(node, shapes) -> int:
    return math.prod(_in(node, shapes))


def _conv_with_weight(slot: int) -> Callable:
    def count(node, shapes) -> int:
        w = _in(node, shapes, slot)
        return math.prod(_out(node, shapes)) * math.prod(w[1:])
    return count


def _conv_transpose(node, shapes) -> int:
    w = _in(node, shapes, 1)
    return math.prod(_in(node, shapes, 0)) * math.prod(w[1:])


def _gemm(node, shapes) -> int:
    a = _in(node, shapes, 0)
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return math.prod(_out(node, shapes)) * k


def _matmul(node, shapes) -> int:
    a = _in(node, shapes, 0)
    return math.prod(_out(node, shapes)) * (a[-1] if a else 1)


def _pool(node, shapes) -> int:
    kernel = _attr(node, "kernel_shape")
    if not kernel:
        raise EdgeloopError("pooling node has no kernel_shape", node=_name(node), op=node.op_type)
    return math.prod(_out(node, shapes)) * math.prod(kernel)


def _linear_ml(node, shapes) -> int:
    return _batch(node, shapes) * len(_attr(node, "coefficients", []) or [])


def _svm(node, shapes) -> int:
    n_sv = sum(_attr(node, "vectors_per_class", []) or [])
    if not n_sv:  # SVMRegressor stores n_supports instead
        n_sv = int(_attr(node, "n_supports", 0) or 0)
    n_coef = len(_attr(node, "coefficients", []) or [])
    return _batch(node, shapes) * (n_sv * _features(node, shapes) + n_coef)


def _tree_depths_legacy(node) -> list[int]:
    """Max depth (comparisons on the longest root-to-leaf path) of each tree of a
    TreeEnsembleClassifier/Regressor, walked with an explicit stack (no recursion)."""
    tree_ids = _attr(node, "nodes_treeids", []) or []
    node_ids = _attr(node, "nodes_nodeids", []) or []
    modes = [m.decode() if isinstance(m, bytes) else m for m in (_attr(node, "nodes_modes", []) or [])]
    true_ids = _attr(node, "nodes_truenodeids", []) or []
    false_ids = _attr(node, "nodes_falsenodeids", []) or []
    trees: dict[int, dict[int, tuple[str, int, int]]] = {}
    for i, (t, n) in enumerate(zip(tree_ids, node_ids)):
        trees.setdefault(t, {})[n] = (modes[i], true_ids[i], false_ids[i])
    depths = []
    for tree in trees.values():
        children = {c for mode, a, b in tree.values() if mode != "LEAF" for c in (a, b)}
        roots = [n for n in tree if n not in children] or [min(tree)]
        best = 0
        stack = [(r, 0) for r in roots]
        seen = 0
        while stack:
            n, depth = stack.pop()
            seen += 1
            if seen > 4 * len(tree) + 4:  # a malformed (cyclic) tree
                raise EdgeloopError("tree ensemble has a cycle", node=_name(node), op=node.op_type)
            entry = tree.get(n)
            if entry is None or entry[0] == "LEAF":
                best = max(best, depth)
                continue
            stack.append((entry[1], depth + 1))
            stack.append((entry[2], depth + 1))
        depths.append(best)
    return depths


def _tree_depths_v5(node) -> list[int]:
    """Same for ai.onnx.ml opset 5 ``TreeEnsemble`` (children flagged as leaf or node)."""
    roots = _attr(node, "tree_roots", []) or []
    t_ids = _attr(node, "nodes_truenodeids", []) or []
    t_leaf = _attr(node, "nodes_trueleafs", []) or []
    f_ids = _attr(node, "nodes_falsenodeids", []) or []
    f_leaf = _attr(node, "nodes_falseleafs", []) or []
    depths = []
    for r in roots:
        best, stack, seen = 0, [(r, 1)], 0
        while stack:
            n, depth = stack.pop()
            seen += 1
            if seen > 4 * len(t_ids) + 4:
                raise EdgeloopError("tree ensemble has a cycle", node=_name(node), op=node.op_type)
            best = max(best, depth)
            if not t_leaf[n]:
                stack.append((t_ids[n], depth + 1))
            if not f_leaf[n]:
                stack.append((f_ids[n], depth + 1))
        depths.append(best)
    return depths


def _tree_legacy(node, shapes) -> int:
    return _batch(node, shapes) * sum(_tree_depths_legacy(node))


def _tree_v5(node, shapes) -> int:
    return _batch(node, shapes) * sum(_tree_depths_v5(node))


def _resize(node, shapes) -> int:
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "nearest":
        return 0
    y = _out(node, shapes)
    try:
        x = _in(node, shapes)
        k = sum(1 for a, b in zip(x, y) if a != b) if len(x) == len(y) else len(y)
    except EdgeloopError:  # input shape unknown: every axis may be resized
        k = len(y)
    return math.prod(y) * (4 if mode == "cubic" else 2) ** k


def _recurrent(node, shapes) -> int:
    x = _in(node, shapes)  # [seq, batch, input] or [batch, seq, input]: the first two either way
    return math.prod(x[:2]) * (math.prod(_in(node, shapes, 1)) + math.prod(_in(node, shapes, 2)))


def _dynamic_quantize(node, shapes) -> int:
    return 2 * math.prod(_in(node, shapes))  # min/max scan, then quantize


_DATA_MOVEMENT = """
Reshape Flatten Transpose Concat Pad Squeeze Unsqueeze Identity Cast CastLike Shape Size
Gather GatherElements GatherND Slice Split SplitToSequence Expand Tile Constant ConstantOfShape
DepthToSpace SpaceToDepth Dropout OneHot NonZero ScatterND ScatterElements Scatter Range EyeLike
Trilu ReverseSequence Compress Optional OptionalGetElement OptionalHasElement
ZipMap ArrayFeatureExtractor FeatureVectorizer DictVectorizer CastMap LabelEncoder
OneHotEncoder CategoryMapper
""".split()

_ELEMENTWISE = """
Abs Neg Exp Log Sqrt Reciprocal Pow Ceil Floor Round Sign Sin Cos Tan Asin Acos Atan Sinh Cosh
Asinh Acosh Atanh Erf Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Tanh
Softplus Softsign Mish ThresholdedRelu Clip Add Sub Mul Div Mod Max Min Mean Sum Equal Less
Greater LessOrEqual GreaterOrEqual And Or Xor Not IsNaN IsInf BitShift BitwiseAnd BitwiseOr
BitwiseXor BitwiseNot Where Softmax LogSoftmax Hardmax BatchNormalization InstanceNormalization
LayerNormalization GroupNormalization LpNormalization LRN MeanVarianceNormalization
Upsample QuantizeLinear DequantizeLinear QLinearAdd QLinearMul QLinearSigmoid QLinearLeakyRelu
QLinearSoftmax Scaler Normalizer Binarizer Imputer
""".split()

_PER_INPUT = """
GlobalAveragePool GlobalMaxPool GlobalLpPool ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax ArgMin TopK
QLinearGlobalAveragePool CumSum
""".split()

MAC_COUNTERS: dict[str, Callable[[onnx.NodeProto, Shapes], int]] = {
    **{op: _zero for op in _DATA_MOVEMENT},
    **{op: _per_output for op in _ELEMENTWISE},
    **{op: _per_input for op in _PER_INPUT},
    "Conv": _conv_with_weight(1),
    "ConvInteger": _conv_with_weight(1),
    "QLinearConv": _conv_with_weight(3),
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "QLinearAveragePool": _pool,
    "DynamicQuantizeLinear": _dynamic_quantize,
    "Resize": _resize,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "DynamicQuantizeLSTM": _recurrent,
    "LinearClassifier": _linear_ml,
    "LinearRegressor": _linear_ml,
    "SVMClassifier": _svm,
    "SVMRegressor": _svm,
    "TreeEnsembleClassifier": _tree_legacy,
    "TreeEnsembleRegressor": _tree_legacy,
    "TreeEnsemble": _tree_v5,
}
"""op_type -> counter(node, shapes). Public so other stages can ask what is countable."""


def count_macs(node: onnx.NodeProto, shapes: Shapes) -> int:
    """MACs of one node given ``shapes`` (tensor name -> concrete shape).

    Raises UnsupportedOperatorError for an operator with no counting rule and
    EdgeloopError if a shape the rule needs is unknown.
    """
    counter = MAC_COUNTERS.get(node.op_type)
    if counter is None:
        raise UnsupportedOperatorError(f"cannot count operator '{node.op_type}'",
                                       node=_name(node), op=node.op_type)
    return int(counter(node, shapes))

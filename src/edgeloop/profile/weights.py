"""Parameter counts and stored weight bytes.

``params`` counts the elements of constant tensors that are model weights:
initializers and Constant-node tensors that

- have a float type or an 8/16/32-bit integer type (int64, bool and string
  constants are shapes, axes, indices or labels in ONNX),
- have rank >= 1 (0-d scalars are constants such as Clip bounds or a 0.5 in GELU),
- and feed at least one node input that is not a control slot: quantization
  scales and zero points (inputs 1 and 2 of Quantize/DequantizeLinear), shape,
  axes, pads, indices and bounds inputs (see ``CONTROL_SLOTS``).

So a QDQ model reports the same params as its float original (int8 weights
and int32 biases count; scales and zero points do not). For ONNX-ML
operators the learned numbers live in attributes: their float arrays
(coefficients, intercepts, thresholds, leaf values, support vectors, ...)
count as params.

``weight_bytes`` counts stored bytes of *all* initializers and Constant nodes
at their ONNX element size, plus ONNX-ML attribute arrays at the width a
device would store them (floats 4 bytes, integers 4 bytes as int32, tree
node modes 1 byte, strings their length + 1).
"""

from __future__ import annotations

import math

import onnx

from edgeloop.profile.analysis import GraphAnalysis, constant_bytes, dtype_name

CONTROL_SLOTS: dict[str, set[int]] = {
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2}, "DynamicQuantizeLinear": set(),
    "Clip": {1, 2}, "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3},
    "Resize": {1, 2, 3}, "Upsample": {1}, "Expand": {1}, "Tile": {1}, "Squeeze": {1},
    "Unsqueeze": {1}, "TopK": {1}, "Split": {1}, "OneHot": {0, 1, 2}, "ConstantOfShape": {0},
    "Range": {0, 1, 2}, "Gather": {1}, "GatherElements": {1}, "GatherND": {1},
    "ScatterND": {1}, "ScatterElements": {1}, "CumSum": {1}, "Trilu": {1},
    "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "MatMulInteger": {2, 3}, "ConvInteger": {2, 3}, "Dropout": {1, 2},
    # skl2onnx looks labels up with ArrayFeatureExtractor(classes, index): a table, not weights
    "ArrayFeatureExtractor": {0, 1},
    **{op: {1} for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                          "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                          "ReduceSumSquare")},
}

_WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1"):
    if hasattr(onnx.TensorProto, _name):
        _WEIGHT_TYPES.add(getattr(onnx.TensorProto, _name))

# ONNX-ML attributes that are labels or settings rather than learned numbers.
_ML_NOT_PARAMS = {"kernel_params", "classlabels_ints", "classlabels_strings",
                  "classlabels_int64s", "post_transform", "aggregate_function", "kernel_type"}
_ML_ENUM_STRINGS = {"nodes_modes"}


def param_tensors(a: GraphAnalysis) -> set[str]:
    """Names of constant tensors that count as params (rule in the module docstring)."""
    names = set()
    for name, t in a.constants.items():
        if t.data_type not in _WEIGHT_TYPES or len(t.dims) == 0:
            continue
        for node_idx, slot in a.consumers.get(name, []):
            op = a.nodes[node_idx].op_type
            if slot not in CONTROL_SLOTS.get(op, ()):
                names.add(name)
                break
    return names


def ml_attribute_weights(node: onnx.NodeProto) -> tuple[int, dict[str, int]]:
    """(params, {dtype: bytes}) held in an ONNX-ML node's attributes."""
    if node.domain != "ai.onnx.ml" or node.op_type == "ZipMap":
        return 0, {}
    params = 0
    by_dtype: dict[str, int] = {}

    def add(dtype: str, n: int):
        if n:
            by_dtype[dtype] = by_dtype.get(dtype, 0) + n

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.FLOATS:
            add("float32", 4 * len(attr.floats))
            if attr.name not in _ML_NOT_PARAMS:
                params += len(attr.floats)
        elif attr.type == onnx.AttributeProto.INTS:
            add("int32", 4 * len(attr.ints))
        elif attr.type == onnx.AttributeProto.STRINGS:
            if attr.name in _ML_ENUM_STRINGS:
                add("uint8", len(attr.strings))
            else:
                add("string", sum(len(s) + 1 for s in attr.strings))
        elif attr.type == onnx.AttributeProto.TENSOR:
            t = attr.t
            add(dtype_name(t.data_type), constant_bytes(t))
            if attr.name not in _ML_NOT_PARAMS and t.data_type in _WEIGHT_TYPES:
                params += math.prod(t.dims)
    return params, by_dtype


def constant_roots(a: GraphAnalysis, node_indices: list[int]) -> set[str]:
    """Constant tensors (initializers / Constant outputs) that feed these nodes,
    directly or through folded constant computations such as DequantizeLinear(W)."""
    roots: set[str] = set()
    stack = [t for i in node_indices for t in a.nodes[i].input if t and t in a.static]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in a.constants:
            roots.add(t)
            continue
        p = a.producer.get(t)
        if p is not None:
            stack.extend(x for x in a.nodes[p].input if x and x in a.static)
    return roots


def weight_totals(a: GraphAnalysis) -> tuple[int, int, dict[str, int]]:
    """(params, weight_bytes, weight_bytes_by_dtype) of the whole model."""
    pnames = param_tensors(a)
    params = sum(math.prod(a.constants[n].dims) for n in pnames)
    by_dtype: dict[str, int] = {}
    for t in a.constants.values():
        key = dtype_name(t.data_type)
        by_dtype[key] = by_dtype.get(key, 0) + constant_bytes(t)
    for n in a.nodes:
        p, b = ml_attribute_weights(n)
        params += p
        for k, v in b.items():
            by_dtype[k] = by_dtype.get(k, 0) + v
    by_dtype = {k: v for k, v in sorted(by_dtype.items()) if v}
    return params, sum(by_dtype.values()), by_dtype


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _count_non_finite(values) -> tuple[int, int]:
    import numpy as np

    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return int(np.isnan(arr).sum()), int(np.isinf(arr).sum())


def non_finite_weights(model: onnx.ModelProto) -> list[dict]:
    """Weights holding NaN or +-inf: [{tensor, node, nan, inf}] in graph order.

    Checked: float initializers and Constant-node tensors of rank >= 1 that feed
    a node input which is not a control slot (the same rule as ``params``), and
    the float arrays of ONNX-ML operators (coefficients, thresholds, leaf values).
    Such a model answers NaN for every input, so export refuses it.
    """
    from edgeloop.profile.analysis import constant_array, constant_node_tensor

    g = model.graph
    tensors: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            try:
                tensors[n.output[0]] = constant_node_tensor(n)
            except Exception:  # a Constant without a value: the loader reports it
                continue
    feeds_weight_slot: set[str] = set()
    for n in g.node:
        control = CONTROL_SLOTS.get(n.op_type, ())
        feeds_weight_slot.update(t for slot, t in enumerate(n.input) if t and slot not in control)
    found = []
    for name, t in tensors.items():
        if t.data_type not in _FLOAT_TYPES or len(t.dims) == 0 or name not in feeds_weight_slot:
            continue
        arr = constant_array(t)
        if arr is None:
            continue
        nan, inf = _count_non_finite(arr)
        if nan or inf:
            found.append({"tensor": name, "node": None, "nan": nan, "inf": inf})
    for n in g.node:
        if n.domain != "ai.onnx.ml":
            continue
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.FLOATS and attr.name not in _ML_NOT_PARAMS and attr.floats:
                nan, inf = _count_non_finite(list(attr.floats))
                if nan or inf:
                    found.append({"tensor": f"{n.name or n.op_type}.{attr.name}", "node": n.name, "nan": nan,
                                  "inf": inf})
    return found


def describe_non_finite(entry: dict) -> str:
    parts = [f"{entry['nan']} NaN" if entry["nan"] else "", f"{entry['inf']} inf" if entry["inf"] else ""]
    return f"weight tensor '{entry['tensor']}' holds " + " and ".join(p for p in parts if p)


def check_finite(model: onnx.ModelProto, *, where: str | None = None) -> None:
    """Raise a one-line EdgeloopError naming the first weight tensor with NaN or inf values."""
    from edgeloop.errors import EdgeloopError

    bad = non_finite_weights(model)
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise EdgeloopError(f"{describe_non_finite(bad[0])}{more}; the model would answer NaN, so it is "
                            "refused (retrain it, or fix the weights)", where=where)

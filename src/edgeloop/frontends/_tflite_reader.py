"""Read a .tflite flatbuffer into plain Python objects, without TensorFlow.

The generated readers of the ``tflite`` package are lazy: a corrupt or
truncated file only fails when a field is touched, from deep inside
flatbuffers (``struct.error``, ``IndexError``, ``ValueError`` ...). So this
module touches every field the importer needs, once, up front, and turns any
such failure into one ``ModelLoadError`` line. The converter in ``tflite.py``
then works on the plain objects below, and an exception there is a bug in
edgeloop, not a bad file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.errors import EdgeloopError, ModelLoadError

# TensorType enum of the TFLite schema -> numpy dtype. Types we cannot
# represent map to None and are rejected only if the importer needs the tensor.
_DTYPES: dict[int, Any] = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64,
    6: np.bool_, 7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64,
    15: np.uint32, 16: np.uint16,
}
_TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING",
               6: "BOOL", 7: "INT16", 8: "COMPLEX64", 9: "INT8", 10: "FLOAT64",
               11: "COMPLEX128", 12: "UINT64", 13: "RESOURCE", 14: "VARIANT", 15: "UINT32",
               16: "UINT16", 17: "INT4", 18: "BFLOAT16"}

ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
PADDINGS = {0: "SAME", 1: "VALID"}


@dataclass
class TflTensor:
    index: int
    name: str
    type_name: str                 # TFLite's own name for the element type, e.g. "INT8"
    dtype: Any                     # numpy dtype, or None when numpy has no equivalent
    shape: tuple[int, ...]
    data: np.ndarray | None        # contents of a constant tensor (shaped), else None
    scale: np.ndarray | None       # float32 [n] quantization scales, None if not quantized
    zero_point: np.ndarray | None  # int64 [n]
    quant_dim: int = 0
    sparse: dict[str, Any] | None = None  # how the file stored it, when it was sparse (densified)

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class TflOp:
    index: int
    name: str                      # builtin operator name ("CONV_2D") or the custom code
    inputs: list[int]              # tensor indices; -1 marks an omitted optional input
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    custom_options: bytes = b""    # a custom operator's raw options
    is_custom: bool = False        # name is a custom code, not a builtin operator


@dataclass
class TflGraph:
    tensors: list[TflTensor]
    ops: list[TflOp]
    inputs: list[int]
    outputs: list[int]
    version: int


def _fail(detail: str) -> ModelLoadError:
    return ModelLoadError(f"not a valid TFLite flatbuffer: {detail}")


def _empty_table():
    """A flatbuffer table with no fields: option readers built on it return schema defaults.

    An operator may legally omit its options table; reading defaults this way keeps them
    in one place (the generated code) instead of re-typing the schema here.
    """
    import flatbuffers

    b = flatbuffers.Builder(16)
    b.StartObject(0)
    b.Finish(b.EndObject())
    data = b.Output()
    return bytes(data), flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)


def _options(op, cls):
    obj = cls()
    table = op.BuiltinOptions()
    if table is None:
        data, pos = _empty_table()
        obj.Init(data, pos)
    else:
        obj.Init(table.Bytes, table.Pos)
    return obj


def _read_options(name: str, op) -> dict[str, Any]:
    """Decode the options the converter needs, per operator."""
    import tflite

    if name == "CONV_2D":
        o = _options(op, tflite.Conv2DOptions)
        return dict(padding=PADDINGS.get(o.Padding(), o.Padding()), stride=(o.StrideH(), o.StrideW()),
                    dilation=(o.DilationHFactor(), o.DilationWFactor()),
                    activation=o.FusedActivationFunction())
    if name == "DEPTHWISE_CONV_2D":
        o = _options(op, tflite.DepthwiseConv2DOptions)
        return dict(padding=PADDINGS.get(o.Padding(), o.Padding()), stride=(o.StrideH(), o.StrideW()),
                    dilation=(o.DilationHFactor(), o.DilationWFactor()),
                    depth_multiplier=o.DepthMultiplier(), activation=o.FusedActivationFunction())
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        o = _options(op, tflite.Pool2DOptions)
        return dict(padding=PADDINGS.get(o.Padding(), o.Padding()), stride=(o.StrideH(), o.StrideW()),
                    filter=(o.FilterHeight(), o.FilterWidth()),
                    activation=o.FusedActivationFunction())
    if name == "FULLY_CONNECTED":
        o = _options(op, tflite.FullyConnectedOptions)
        return dict(activation=o.FusedActivationFunction(), weights_format=o.WeightsFormat(),
                    keep_num_dims=bool(o.KeepNumDims()))
    if name == "SOFTMAX":
        return dict(beta=float(_options(op, tflite.SoftmaxOptions).Beta()))
    if name == "ADD":
        return dict(activation=_options(op, tflite.AddOptions).FusedActivationFunction())
    if name == "CONCATENATION":
        o = _options(op, tflite.ConcatenationOptions)
        return dict(axis=o.Axis(), activation=o.FusedActivationFunction())
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        return dict(keep_dims=bool(_options(op, tflite.ReducerOptions).KeepDims()))
    if name in ("SUB", "DIV", "L2_NORMALIZATION"):
        cls = {"SUB": tflite.SubOptions, "DIV": tflite.DivOptions,
               "L2_NORMALIZATION": tflite.L2NormOptions}[name]
        return dict(activation=_options(op, cls).FusedActivationFunction())
    if name == "LEAKY_RELU":
        return dict(alpha=float(_options(op, tflite.LeakyReluOptions).Alpha()))
    if name == "SPLIT":
        return dict(num_splits=int(_options(op, tflite.SplitOptions).NumSplits()))
    if name == "SPLIT_V":
        return dict(num_splits=int(_options(op, tflite.SplitVOptions).NumSplits()))
    if name == "PACK":
        o = _options(op, tflite.PackOptions)
        return dict(axis=int(o.Axis()), values_count=int(o.ValuesCount()))
    if name == "UNPACK":
        o = _options(op, tflite.UnpackOptions)
        return dict(axis=int(o.Axis()), num=int(o.Num()))
    if name == "GATHER":
        o = _options(op, tflite.GatherOptions)
        return dict(axis=int(o.Axis()), batch_dims=int(o.BatchDims()))
    if name == "SPACE_TO_DEPTH":
        return dict(block_size=int(_options(op, tflite.SpaceToDepthOptions).BlockSize()))
    if name == "BATCH_MATMUL":
        o = _options(op, tflite.BatchMatMulOptions)
        return dict(adj_x=bool(o.AdjX()), adj_y=bool(o.AdjY()))
    if name == "GELU":
        return dict(approximate=bool(_options(op, tflite.GeluOptions).Approximate()))
    if name == "MIRROR_PAD":
        return dict(mode={0: "REFLECT", 1: "SYMMETRIC"}.get(_options(op, tflite.MirrorPadOptions).Mode()))
    if name == "TRANSPOSE_CONV":
        o = _options(op, tflite.TransposeConvOptions)
        return dict(padding=PADDINGS.get(o.Padding(), o.Padding()), stride=(o.StrideH(), o.StrideW()),
                    activation=o.FusedActivationFunction())
    if name == "DEPTH_TO_SPACE":
        return dict(block_size=int(_options(op, tflite.DepthToSpaceOptions).BlockSize()))
    if name == "MUL":
        return dict(activation=_options(op, tflite.MulOptions).FusedActivationFunction())
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        cls = (tflite.ResizeBilinearOptions if name == "RESIZE_BILINEAR"
               else tflite.ResizeNearestNeighborOptions)
        o = _options(op, cls)
        return dict(align_corners=bool(o.AlignCorners()), half_pixel_centers=bool(o.HalfPixelCenters()))
    if name == "STRIDED_SLICE":
        o = _options(op, tflite.StridedSliceOptions)
        return dict(begin_mask=o.BeginMask(), end_mask=o.EndMask(), ellipsis_mask=o.EllipsisMask(),
                    new_axis_mask=o.NewAxisMask(), shrink_axis_mask=o.ShrinkAxisMask(),
                    offset=bool(o.Offset()))
    return {}


# TFLite_Detection_PostProcess: its options (a flexbuffer map) with TFLite's defaults for the
# optional ones (detection_postprocess.cc); the required ones have no default.
POSTPROCESS = "TFLite_Detection_PostProcess"
_PP_REQUIRED = ("max_detections", "max_classes_per_detection", "num_classes",
                "nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale", "h_scale", "w_scale")
_PP_DEFAULTS = {"detections_per_class": 100, "use_regular_nms": False}


def postprocess_options(raw: bytes) -> dict[str, Any]:
    """The options of a TFLite_Detection_PostProcess operator, read from its flexbuffer."""
    from flatbuffers import flexbuffers

    try:
        opts = flexbuffers.Loads(bytes(raw)) if raw else None
    except Exception:  # any garbage raises from deep inside the flexbuffer reader
        opts = None
    if not isinstance(opts, dict):
        raise _fail(f"the options of {POSTPROCESS} are not a flexbuffer map")
    missing = [k for k in _PP_REQUIRED if k not in opts]
    if missing:
        raise _fail(f"{POSTPROCESS} options lack {', '.join(missing)}")
    out = dict(_PP_DEFAULTS)
    for k in _PP_REQUIRED + tuple(_PP_DEFAULTS):
        v = opts.get(k, out.get(k))
        if k == "use_regular_nms":
            out[k] = bool(v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise _fail(f"{POSTPROCESS} option {k} is {v!r}, not a number")
        elif k in ("max_detections", "max_classes_per_detection", "num_classes", "detections_per_class"):
            out[k] = int(v)
        else:
            out[k] = float(v)
    return out


def _index_vector(kind: int, table) -> np.ndarray:
    """A SparseIndexVector union (Int32Vector, Uint16Vector or Uint8Vector) as int64."""
    import tflite

    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(kind)
    if cls is None or table is None:
        raise _fail(f"sparse index vector of unknown type {kind}")
    v = cls()
    v.Init(table.Bytes, table.Pos)
    return np.asarray(v.ValuesAsNumpy() if v.ValuesLength() else [], np.int64).reshape(-1)


def _densify(name: str, sp, values: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    """TFLite's sparse tensor format (schema ``SparsityParameters``) -> the dense array.

    Hand-written: no Python library reads this format (TFLite does it in C++, in
    ``sparsity_format_converter.cc``). The stored values are listed in traversal order over
    the expanded dims (the original dims, then one per block dim); each level is DENSE
    (every index up to dense_size) or SPARSE_CSR (``array_segments[p]:array_segments[p+1]``
    of ``array_indices`` under parent position p). The levels are walked breadth first with
    numpy; children stay grouped under their parent, so the leaves come out in the order the
    values are stored.
    """
    rank = len(shape)
    order = [int(v) for v in sp.TraversalOrderAsNumpy()] if sp.TraversalOrderLength() else list(range(rank))
    block_map = [int(v) for v in sp.BlockMapAsNumpy()] if sp.BlockMapLength() else []
    n_levels = sp.DimMetadataLength()
    if n_levels != len(order) or n_levels != rank + len(block_map) or sorted(order) != list(range(n_levels)) \
            or any(not 0 <= d < rank for d in block_map):
        raise _fail(f"tensor '{name}' has inconsistent sparsity parameters")
    block_size = []
    for k in range(len(block_map)):
        level = order.index(rank + k)
        block_size.append(int(sp.DimMetadata(level).DenseSize()))
    pos = np.zeros(1, np.int64)                 # position of each partial path at this level
    idx = np.zeros((1, 0), np.int64)            # its index along every level so far
    for level in range(n_levels):
        dm = sp.DimMetadata(level)
        if dm.Format() == 0:  # DENSE
            size = int(dm.DenseSize())
            child = np.tile(np.arange(size, dtype=np.int64), pos.size)
            parent = np.repeat(np.arange(pos.size), size)
            pos = pos[parent] * size + child
        else:  # SPARSE_CSR
            seg = _index_vector(dm.ArraySegmentsType(), dm.ArraySegments())
            ind = _index_vector(dm.ArrayIndicesType(), dm.ArrayIndices())
            if pos.size and (pos.max() + 1 >= seg.size or seg[-1] > ind.size or np.any(np.diff(seg) < 0)):
                raise _fail(f"tensor '{name}' has sparse segments that do not fit its indices")
            counts = seg[pos + 1] - seg[pos]
            parent = np.repeat(np.arange(pos.size), counts)
            starts = np.repeat(seg[pos], counts)
            offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = starts + offsets
            child = ind[pos]
        idx = np.concatenate([idx[parent], child[:, None]], axis=1)
    if idx.shape[0] != values.size:
        raise _fail(f"constant tensor '{name}' holds {values.size} sparse values, "
                    f"its sparsity parameters list {idx.shape[0]}")
    coords = np.zeros((idx.shape[0], rank), np.int64)
    for level in range(rank):
        coords[:, order[level]] = idx[:, level]
    for level in range(rank, n_levels):
        k = order[level] - rank
        coords[:, block_map[k]] = coords[:, block_map[k]] * block_size[k] + idx[:, level]
    if np.any(coords >= np.asarray(shape, np.int64)) or np.any(coords < 0):
        raise _fail(f"tensor '{name}' has a sparse index outside its shape {list(shape)}")
    dense = np.zeros(shape, values.dtype)
    dense[tuple(coords.T)] = values.reshape(-1)
    info = {"format": "tflite_sparsity", "nonzeros": int(values.size),
            "size": int(np.prod(shape, dtype=np.int64)), "block_size": block_size,
            "block_map": block_map}
    return dense, info


def _tensor(model, graph, i: int, buf: bytes, n_buffers: int) -> TflTensor:
    t = graph.Tensors(i)
    name = (t.Name() or b"").decode("utf-8", errors="replace") or f"tensor_{i}"
    ttype = t.Type()
    dtype = _DTYPES.get(ttype)
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    if any(d < 0 for d in shape):
        raise _fail(f"tensor '{name}' has a negative dimension {list(shape)}")

    scale = zero_point = None
    quant_dim = 0
    q = t.Quantization()
    if q is not None and q.ScaleLength() > 0:
        scale = np.asarray(q.ScaleAsNumpy(), dtype=np.float32).reshape(-1)
        if q.ZeroPointLength() > 0:
            zero_point = np.asarray(q.ZeroPointAsNumpy(), dtype=np.int64).reshape(-1)
        else:
            zero_point = np.zeros(scale.shape, np.int64)
        if zero_point.size != scale.size:
            raise _fail(f"tensor '{name}' has {scale.size} scales but {zero_point.size} zero points")
        quant_dim = int(q.QuantizedDimension())

    data = None
    b = t.Buffer()
    if b >= n_buffers:
        raise _fail(f"tensor '{name}' refers to buffer {b} of {n_buffers}")
    if b > 0:  # buffer 0 is the empty sentinel every activation points to
        buffer = model.Buffers(b)
        raw: bytes | np.ndarray | None = None
        if buffer.Offset() > 1:
            # Models over 2 GB keep weights after the flatbuffer, addressed by offset.
            off, size = int(buffer.Offset()), int(buffer.Size())
            if off + size > len(buf):
                raise _fail(f"the data of tensor '{name}' lies beyond the end of the file")
            raw = buf[off:off + size]
        elif buffer.DataLength() > 0:
            raw = buffer.DataAsNumpy()
        if raw is not None and len(raw) > 0:
            if dtype is None:
                raise _fail(f"constant tensor '{name}' has type {_TYPE_NAMES.get(ttype, ttype)}, "
                            "which edgeloop cannot read")
            itemsize = np.dtype(dtype).itemsize
            sp = t.Sparsity()
            if sp is not None:
                if len(raw) % itemsize:
                    raise _fail(f"sparse constant tensor '{name}' holds {len(raw)} bytes, not a "
                                f"whole number of {_TYPE_NAMES.get(ttype, ttype)} values")
                values = np.frombuffer(bytes(raw), dtype=np.dtype(dtype).newbyteorder("<"))
                data, sparse = _densify(name, sp, values.astype(np.dtype(dtype)), shape)
                return TflTensor(i, name, _TYPE_NAMES.get(ttype, str(ttype)), dtype, shape, data,
                                 scale, zero_point, quant_dim, sparse)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if len(raw) != count * itemsize:
                raise _fail(f"constant tensor '{name}' holds {len(raw)} bytes, "
                            f"its shape {list(shape)} needs {count * itemsize}")
            # Flatbuffers data is little endian; .copy() detaches it from the file buffer.
            data = np.frombuffer(bytes(raw), dtype=np.dtype(dtype).newbyteorder("<"))
            data = data.astype(np.dtype(dtype), copy=True).reshape(shape)
    return TflTensor(i, name, _TYPE_NAMES.get(ttype, str(ttype)), dtype, shape, data,
                     scale, zero_point, quant_dim)


def parse(buf: bytes) -> TflGraph:
    """Parse the main subgraph of a TFLite model; raise ModelLoadError on a bad file."""
    if len(buf) < 8:
        raise _fail(f"the file is only {len(buf)} bytes long")
    if buf[4:8] != b"TFL3":
        raise _fail("the 'TFL3' file identifier is missing")
    try:
        return _parse(buf)
    except EdgeloopError:
        raise
    except Exception as e:  # anything flatbuffers/numpy raise on garbage offsets
        detail = " ".join(str(e).split()) or "unreadable"
        raise _fail(f"{type(e).__name__}: {detail}"[:300]) from None


def _check_count(n: int, buf: bytes, what: str) -> int:
    # A vector's entries take at least 4 bytes each; a count that cannot fit in the file
    # is garbage (iterating it would take forever or read nonsense).
    if n < 0 or n * 4 > len(buf):
        raise _fail(f"impossible number of {what} ({n})")
    return n


def _parse(buf: bytes) -> TflGraph:
    import tflite
    from tflite.utils import BUILTIN_OPCODE2NAME

    root = int.from_bytes(buf[0:4], "little")
    if root + 4 > len(buf):
        raise _fail("the root table offset points past the end of the file")
    model = tflite.Model.GetRootAsModel(buf, 0)
    version = int(model.Version())
    if version != 3:
        raise _fail(f"schema version {version}, expected 3")
    if _check_count(model.SubgraphsLength(), buf, "subgraphs") < 1:
        raise _fail("the model has no subgraph")
    n_buffers = _check_count(model.BuffersLength(), buf, "buffers")

    opcodes: list[str] = []
    custom_codes: set[int] = set()
    for j in range(_check_count(model.OperatorCodesLength(), buf, "operator codes")):
        oc = model.OperatorCodes(j)
        # Codes < 127 live in the deprecated int8 field, newer ones in builtin_code.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == 32:  # CUSTOM
            custom_codes.add(j)
            custom = oc.CustomCode()
            opcodes.append(custom.decode("utf-8", errors="replace") if custom else "CUSTOM")
        else:
            opcodes.append(BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}"))

    # Only subgraph 0 is the model; the others are bodies of control-flow operators
    # (WHILE, IF, CALL_ONCE), which are rejected as unsupported operators anyway.
    g = model.Subgraphs(0)
    n_tensors = _check_count(g.TensorsLength(), buf, "tensors")
    tensors = [_tensor(model, g, i, buf, n_buffers) for i in range(n_tensors)]

    def indices(values, what: str, allow_missing: bool) -> list[int]:
        out = [int(v) for v in values]
        for v in out:
            if not (0 <= v < n_tensors or (allow_missing and v == -1)):
                raise _fail(f"{what} refers to tensor {v} of {n_tensors}")
        return out

    ops: list[TflOp] = []
    for k in range(_check_count(g.OperatorsLength(), buf, "operators")):
        op = g.Operators(k)
        idx = int(op.OpcodeIndex())
        if not 0 <= idx < len(opcodes):
            raise _fail(f"operator {k} uses operator code {idx} of {len(opcodes)}")
        name = opcodes[idx]
        ins = indices(op.InputsAsNumpy() if op.InputsLength() else [], f"operator {k} ({name})", True)
        outs = indices(op.OutputsAsNumpy() if op.OutputsLength() else [], f"operator {k} ({name})",
                       False)
        custom = bytes(op.CustomOptionsAsNumpy().tobytes()) if op.CustomOptionsLength() else b""
        is_custom = idx in custom_codes
        options = postprocess_options(custom) if is_custom and name == POSTPROCESS else _read_options(name, op)
        ops.append(TflOp(k, name, ins, outs, options, custom, is_custom))

    inputs = indices(g.InputsAsNumpy() if g.InputsLength() else [], "the graph inputs", False)
    outputs = indices(g.OutputsAsNumpy() if g.OutputsLength() else [], "the graph outputs", False)
    if not outputs:
        raise _fail("the graph has no outputs")
    return TflGraph(tensors, ops, inputs, outputs, version)

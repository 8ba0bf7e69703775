"""One pass over an ONNX graph that every profiler number is read from.

It resolves concrete shapes and dtypes of every tensor (onnx shape inference,
then onnxruntime on zeros for what inference leaves open), finds what is
constant (initializers, Constant nodes and everything computed only from
them or from tensor shapes: folded at export time, stored in flash), and
groups nodes into the *steps* a device really executes:

- an int8 QDQ kernel: ``DequantizeLinear(x_q) -> op -> [bias Add] -> [Relu|Clip]
  -> QuantizeLinear`` is one step that reads the integer tensors and writes
  the QuantizeLinear output; the float tensors inside never exist on the device.
  Which main ops and epilogues form a kernel is the C backend's operator registry
  (:mod:`edgeloop.backends.c.registry`): a chain no kernel implements stays float steps;
  an int8 convolution and the residual int8 Add after it can be one step writing over
  the skip tensor (:func:`_fuse_residual`);
- an alias (Reshape, Flatten, Squeeze, Unsqueeze, Identity, ZipMap, and a
  ``DequantizeLinear -> Reshape -> QuantizeLinear`` with unchanged quantization):
  no step, the output shares its input's buffer;
- every other node is one step of its own.

Shapes assume batch 1: a symbolic *leading* dimension of a graph input is set
to 1 (any other symbolic input dimension is an error, since no single number
can stand for it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeloop.backends.c import registry
from edgeloop.errors import EdgeloopError, UnsupportedOperatorError

ALIAS_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
# Ops that a TFLite-style int8 kernel folds into its requantization step (the registry's).
EPILOGUE_OPS = registry.epilogue_ops()
QUANT_DOMAINS = {"", "ai.onnx", "com.microsoft"}
CONTROL_FLOW = {"If", "Loop", "Scan"}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli"}
# Ops that only move or relabel data: they make no "precision" demand on a target.
NON_COMPUTE = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Concat", "Pad",
    "Cast", "CastLike", "Shape", "Size", "Gather", "GatherElements", "GatherND", "Slice",
    "Split", "Expand", "Tile", "Constant", "ConstantOfShape", "DepthToSpace", "SpaceToDepth",
    "Dropout", "ZipMap", "ArrayFeatureExtractor", "FeatureVectorizer", "QuantizeLinear",
    "DequantizeLinear", "OneHot", "NonZero", "Range",
}


def node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def is_q(node: onnx.NodeProto) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in QUANT_DOMAINS


def is_dq(node: onnx.NodeProto) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in QUANT_DOMAINS


def dtype_name(elem_type: int) -> str:
    """'float32', 'int8', ... for an ONNX TensorProto data type."""
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - exotic types: use ONNX's own name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def dtype_bits(elem_type: int) -> int:
    if elem_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 4
    if elem_type == getattr(onnx.TensorProto, "FLOAT4E2M1", -1):
        return 4
    if elem_type == onnx.TensorProto.STRING:
        return 8
    return 8 * np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def nbytes(numel: int, elem_type: int) -> int:
    return (numel * dtype_bits(elem_type) + 7) // 8


def type_string(tp: onnx.TypeProto) -> str:
    """A readable type for non-tensor values, e.g. 'sequence(map(int64, float32))'."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return dtype_name(tp.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"sequence({type_string(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(tp.map_type.key_type)}, {type_string(tp.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    return "unknown"


@dataclass
class Step:
    """One unit of device work (or an alias, which does no work)."""

    kind: str                 # "op", "kernel" (int8 QDQ), or "alias"
    name: str
    op: str                   # the main operator
    nodes: list[int]          # indices of the ONNX nodes it covers
    main: int                 # index of the node whose MACs it costs
    reads: list[str]          # activation tensors it reads (device tensors, before aliasing)
    writes: list[str]         # tensors it writes
    precision: str | None = None  # "int8", "float32", ... ; None for data movement
    index: int = -1           # position among executing steps; -1 for aliases
    # in-place execution (decided by :func:`decide_inplace`, read by the planner and the C
    # lowering alike): the read tensor whose buffer the output overwrites, how, and the
    # per-step work area the kernel needs for it (planned in the arena, alive this step only)
    inplace_input: str | None = None
    inplace_scheme: str = ""      # "elementwise", "conv_pixels", "conv_groups" or "residual"
    scratch_bytes: int = 0
    scratch_dtype: str = ""
    # a convolution kernel that also runs the residual Add after it (see _fuse_residual)
    residual: "Residual | None" = None

    @property
    def fused_mains(self) -> list[int]:
        """Main nodes of the steps fused into this one (their MACs are this step's too)."""
        return [self.residual.add.main] if self.residual is not None else []


@dataclass
class Residual:
    """``y = Add(conv(x), skip)`` as one step: the conv step and the Add step it absorbed."""

    conv: Step                # the convolution kernel as it was (writes ``c``)
    add: Step                 # the int8 Add kernel (reads ``c`` and ``skip``, writes ``y``)
    skip: str                 # the other operand of the Add, overwritten by ``y``
    c: str                    # the convolution's int8 output, which no longer exists


@dataclass
class GraphAnalysis:
    model: onnx.ModelProto            # the model with batch fixed to 1 and shapes inferred
    nodes: list[onnx.NodeProto]       # topological order
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    non_tensor: dict[str, str]        # value name -> type string for sequences/maps
    constants: dict[str, onnx.TensorProto]
    static: set[str]
    producer: dict[str, int]
    consumers: dict[str, list[tuple[int, int]]]
    graph_inputs: list[str]
    graph_outputs: list[str]
    steps: list[Step] = field(default_factory=list)
    alias_of: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose buffer it uses
    assumptions: list[str] = field(default_factory=list)

    def root(self, tensor: str) -> str:
        """The tensor whose buffer ``tensor`` lives in (follows aliases, no recursion)."""
        seen = 0
        while tensor in self.alias_of:
            tensor = self.alias_of[tensor]
            seen += 1
            if seen > len(self.alias_of):
                raise EdgeloopError(f"alias cycle at tensor '{tensor}'")
        return tensor

    def numel(self, tensor: str) -> int:
        return math.prod(self.shapes[tensor])

    def tensor_bytes(self, tensor: str) -> int:
        return nbytes(self.numel(tensor), self.elem_types[tensor])


# --- topological order ---------------------------------------------------------

def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in a topological order (the given order when it already is one).

    Kahn's algorithm with a queue that prefers the original order, so the
    result is deterministic and equal to the file's order for valid graphs.
    """
    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_by: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = i
    pending = [0] * len(nodes)
    users: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        deps = {produced_by[t] for t in n.input if t not in available and t in produced_by}
        pending[i] = len(deps)
        for d in deps:
            users[d].append(i)
    import heapq
    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise EdgeloopError("graph has a cycle; cannot order its nodes")
    return [nodes[i] for i in order]


# --- constants --------------------------------------------------------------------

def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto:
    """The tensor a Constant node produces (as a TensorProto, for sizes)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "sparse_value":
            sp = a.sparse_tensor
            # stored as values + indices
            t = onnx.TensorProto(data_type=sp.values.data_type)
            t.dims.extend([math.prod(sp.values.dims) + math.prod(sp.indices.dims)])
            return t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
        if a.name == "value_string":
            return helper.make_tensor("", onnx.TensorProto.STRING, [], [a.s])
        if a.name == "value_strings":
            return helper.make_tensor("", onnx.TensorProto.STRING, [len(a.strings)], list(a.strings))
    raise EdgeloopError("Constant node without a value", node=node.name, op="Constant")


def constant_bytes(t: onnx.TensorProto) -> int:
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return nbytes(math.prod(t.dims), t.data_type)


def constant_array(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - external data not loaded, exotic type
        return None


# --- shapes -------------------------------------------------------------------------

def _static_dims(tp: onnx.TypeProto) -> tuple[int, ...] | None:
    t = tp.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            return None
    return tuple(dims)


def _fix_batch(model: onnx.ModelProto, assumptions: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name for t in m.graph.initializer}
    del m.graph.value_info[:]  # re-infer everything under batch 1
    for vi in m.graph.input:
        if vi.name in init or vi.type.WhichOneof("value") != "tensor_type":
            continue
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            raise EdgeloopError(f"graph input '{vi.name}' has no shape; give the model a static input shape")
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            label = d.dim_param or "?"
            if i == 0:
                d.Clear()
                d.dim_value = 1
                assumptions.append(f"input '{vi.name}': leading dimension '{label}' taken as batch 1")
            else:
                raise EdgeloopError(
                    f"graph input '{vi.name}' has a symbolic dimension '{label}' at position {i}; "
                    "only a leading (batch) dimension can be assumed, as 1; give the model a static shape (--input-shape NAME=DIMS)")
    for vi in m.graph.output:  # let inference fill the output dims for batch 1
        if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
    return m


def _run_for_shapes(model: onnx.ModelProto, wanted: list[str]) -> dict[str, np.ndarray]:
    """Run the model once on zeros with ``wanted`` exposed as outputs."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in wanted:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        feeds[i.name] = np.zeros(shape, dtype=_ort_dtype(i.type))
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, feeds)
    return {n: v for n, v in zip(names, values) if isinstance(v, np.ndarray)}


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def _ort_dtype(type_str: str):
    if type_str not in _ORT_TYPES:
        raise EdgeloopError(f"cannot make an input of type {type_str}")
    return _ORT_TYPES[type_str]


def _resolve_shapes(model: onnx.ModelProto, nodes, assumptions):
    fixed = _fix_batch(model, assumptions)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # noqa: BLE001 - best effort; onnxruntime fills the gaps
        inferred = fixed
    shapes: dict[str, tuple[int, ...]] = {}
    elem: dict[str, int] = {}
    non_tensor: dict[str, str] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        kind = vi.type.WhichOneof("value")
        if kind == "tensor_type":
            if vi.type.tensor_type.elem_type:
                elem[vi.name] = vi.type.tensor_type.elem_type
            dims = _static_dims(vi.type)
            if dims is not None:
                shapes[vi.name] = dims
        elif kind is not None:
            non_tensor[vi.name] = type_string(vi.type)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
        elem[t.name] = t.data_type
    for n in nodes:
        if n.op_type == "Constant":
            t = constant_node_tensor(n)
            shapes[n.output[0]] = tuple(t.dims)
            elem[n.output[0]] = t.data_type
    unknown = [o for n in nodes for o in n.output
               if o and o not in non_tensor and (o not in shapes or o not in elem)]
    if unknown:
        try:
            values = _run_for_shapes(fixed, unknown)
        except EdgeloopError:
            raise
        except Exception as e:  # noqa: BLE001
            raise EdgeloopError(f"shape of tensor '{unknown[0]}' is unknown and onnxruntime could "
                                f"not run the model to find it ({str(e).splitlines()[0][:200]})") from None
        for name, v in values.items():
            shapes[name] = tuple(v.shape)
            elem[name] = helper.np_dtype_to_tensor_dtype(v.dtype)
    return inferred, shapes, elem, non_tensor


# --- the analysis ---------------------------------------------------------------------

def analyze(model: onnx.ModelProto) -> GraphAnalysis:
    """Shapes, constants and device steps of ``model`` (see the module docstring)."""
    assumptions: list[str] = []
    for n in model.graph.node:
        if n.op_type in CONTROL_FLOW:
            raise UnsupportedOperatorError(f"cannot profile control-flow operator '{n.op_type}'",
                                           node=n.name or None, op=n.op_type)
    nodes = topological_order(model.graph)
    inferred, shapes, elem, non_tensor = _resolve_shapes(model, nodes, assumptions)
    g = model.graph
    constants = {t.name: t for t in g.initializer}
    for n in nodes:
        if n.op_type == "Constant" and n.output:
            constants[n.output[0]] = constant_node_tensor(n)
    producer: dict[str, int] = {}
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
        for slot, t in enumerate(n.input):
            if t:
                consumers[t].append((i, slot))
    graph_inputs = [i.name for i in g.input if i.name not in constants]
    graph_outputs = [o.name for o in g.output]

    # What is constant: folded at export time, never computed on the device.
    static = set(constants)
    for n in nodes:
        if n.op_type in RANDOM_OPS or not n.output:
            continue
        ins = [t for t in n.input if t]
        if n.op_type in ("Shape", "Size") and ins and ins[0] in shapes:
            static.update(o for o in n.output if o)
        elif ins and all(t in static for t in ins):
            static.update(o for o in n.output if o)

    a = GraphAnalysis(model=inferred, nodes=nodes, shapes=shapes, elem_types=elem,
                      non_tensor=non_tensor, constants=constants, static=static, producer=producer,
                      consumers=consumers, graph_inputs=graph_inputs, graph_outputs=graph_outputs,
                      assumptions=assumptions)
    _build_steps(a)
    _fuse_residual(a)
    _mark_inplace(a)
    return a


def _qparams_equal(a: GraphAnalysis, dq: onnx.NodeProto, q: onnx.NodeProto) -> bool:
    """Same scale and zero point on a DequantizeLinear and a QuantizeLinear?"""
    def value(node, slot):
        if len(node.input) <= slot or not node.input[slot]:
            return np.zeros(()) if slot == 2 else None
        t = a.constants.get(node.input[slot])
        return None if t is None else constant_array(t)
    for slot in (1, 2):
        x, y = value(dq, slot), value(q, slot)
        if x is None or y is None:
            return False
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.size == y.size:
            if not np.array_equal(x, y):
                return False
        elif not (x.size and y.size and np.all(x == x[0]) and np.all(y == x[0])):
            return False  # per-channel vs per-tensor: equal only when uniform
    return True


def _find_kernel(a: GraphAnalysis, q_idx: int):
    """The int8 kernel ending in QuantizeLinear node ``q_idx``: (chain, dq_inputs) or None.

    Walk back from the QuantizeLinear through single-consumer float tensors:
    epilogue ops (Relu, Clip, bias Add) with one non-constant input keep the
    walk going, the first other op is the kernel's main op. Every non-constant
    input of the chain must come from a DequantizeLinear, otherwise the float
    tensors are real (a float op whose output is quantized) and there is no kernel.
    The main op must have an int8 kernel in the registry that fuses exactly these
    epilogues (:func:`_kernel_accepts`), else the chain stays float steps.
    """
    nodes = a.nodes
    outputs = set(a.graph_outputs)
    chain = [q_idx]
    data = nodes[q_idx].input[0]
    if data in a.static:
        return None
    while True:
        p = a.producer.get(data)
        if p is None or is_dq(nodes[p]):
            break
        pn = nodes[p]
        if data in outputs or len(a.consumers[data]) != 1:
            return None
        if is_q(pn) or pn.op_type in CONTROL_FLOW:
            return None
        if any(o and o != data and (a.consumers.get(o) or o in outputs) for o in pn.output):
            return None  # a second output (e.g. MaxPool indices) is used elsewhere
        chain.append(p)
        dyn = [t for t in pn.input if t and t not in a.static]
        if pn.op_type in EPILOGUE_OPS and len(dyn) == 1:
            data = dyn[0]
            continue
        break
    inside = {o for i in chain for o in nodes[i].output if o}
    dq_inputs = []
    for i in chain:
        for t in nodes[i].input:
            if not t or t in a.static or t in inside:
                continue
            p = a.producer.get(t)
            if p is None or not is_dq(nodes[p]):
                return None
            if t not in dq_inputs:
                dq_inputs.append(t)
    if not dq_inputs or not _kernel_accepts(a, chain):
        return None
    return chain, dq_inputs


def _kernel_accepts(a: GraphAnalysis, chain: list[int]) -> bool:
    """Does the registry's int8 kernel of the chain's main op fuse its epilogues?

    ``chain`` is [QuantizeLinear, epilogue..., main] (walked back). A bias Add must come
    right after a main op without a bias of its own, its constant one value per output
    channel (or one value); Relu and Clip (constant bounds) after that.
    """
    nodes = a.nodes
    main = nodes[chain[-1]]
    if len(chain) == 1:   # DequantizeLinear -> QuantizeLinear: a requantization
        return registry.int8_impl("QuantizeLinear") is not None
    impl = registry.int8_impl(main.op_type, main.domain)
    if impl is None:
        return False
    cur = main.output[0]
    for k, i in enumerate(reversed(chain[1:-1])):
        n = nodes[i]
        if n.op_type == "Add" and k == 0 and impl.bias_add:
            if len(main.input) > 2 and main.input[2]:
                return False   # the main op already has a bias
            other = [t for t in n.input if t != cur]
            if len(other) != 1 or other[0] not in a.static or not _is_channel_bias(a, main, other[0]):
                return False
        elif n.op_type not in impl.epilogues:
            return False
        elif n.op_type == "Clip" and any(t and t not in a.static for t in n.input[1:]):
            return False
        cur = n.output[0]
    return True


def _is_channel_bias(a: GraphAnalysis, main: onnx.NodeProto, t: str) -> bool:
    shape = list(a.shapes.get(t, ()))
    y = a.shapes.get(main.output[0])
    if y is None or len(shape) > len(y):
        return False
    n = math.prod(shape)
    if n == 1:
        return True
    axis = 1 if main.op_type == "Conv" else len(y) - 1   # the output-channel axis
    full = [1] * (len(y) - len(shape)) + shape
    return full[axis] == y[axis] and n == y[axis]


def _precision_of(a: GraphAnalysis, node: onnx.NodeProto) -> str | None:
    if node.op_type in NON_COMPUTE:
        return None
    types = [a.elem_types.get(t) for t in list(node.input) + list(node.output) if t]
    floats = [dtype_name(t) for t in types if t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                   onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)]
    if floats:
        # the widest float among inputs and outputs is what the target must compute in
        for name in ("float64", "float32", "bfloat16", "float16"):
            if name in floats:
                return name
    if node.op_type.startswith("QLinear") or node.op_type in ("ConvInteger", "MatMulInteger"):
        return "int8"  # onnxruntime's operator-oriented integer form
    # other integer-only ops (label lookups, index arithmetic) make no demand on a target
    return None


def _foldable_bn(a: GraphAnalysis, i: int) -> int | None:
    """Index of a BatchNormalization that can be folded into float Conv node ``i``: the
    conv's only consumer, inference mode, constant parameters, one output; else None."""
    n = a.nodes[i]
    if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or not n.output or not n.output[0]:
        return None
    y = n.output[0]
    if y in a.static or y in a.graph_outputs or a.elem_types.get(y) != onnx.TensorProto.FLOAT:
        return None
    if len(n.input) < 2 or n.input[1] not in a.static:
        return None
    users = a.consumers.get(y, [])
    if len(users) != 1 or users[0][1] != 0:
        return None
    j = users[0][0]
    bn = a.nodes[j]
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return None
    at = {x.name: helper.get_attribute_value(x) for x in bn.attribute}
    if at.get("training_mode", 0) or len([o for o in bn.output if o]) != 1 or not bn.output[0]:
        return None
    if len(bn.input) < 5 or any(not t or t not in a.constants for t in bn.input[1:5]):
        return None
    return j


def _build_steps(a: GraphAnalysis) -> None:
    nodes = a.nodes
    kernels: dict[int, tuple[list[int], list[str]]] = {}  # q index -> (chain, dq inputs)
    in_kernel: dict[int, int] = {}  # node index -> q index of its kernel
    for i, n in enumerate(nodes):
        if is_q(n) and n.output[0] not in a.static:
            k = _find_kernel(a, i)
            if k is not None:
                kernels[i] = k
                for j in k[0]:
                    in_kernel[j] = i
    outputs = set(a.graph_outputs)

    def dq_source(t: str) -> str:
        return nodes[a.producer[t]].input[0]

    steps: list[Step] = []
    folded_bn: set[int] = set()
    for i, n in enumerate(nodes):
        outs = [o for o in n.output if o]
        if not outs or all(o in a.static for o in outs):
            continue  # folded constant computation
        name = node_name(n, i)
        if i in in_kernel:
            if in_kernel[i] != i:
                continue  # emitted with its QuantizeLinear
            chain, dq_inputs = kernels[i]
            main = chain[-1]
            mnode = nodes[main]
            reads = [dq_source(t) for t in dq_inputs]
            alias = (len(dq_inputs) == 1 and (main == i or mnode.op_type in ALIAS_OPS and len(chain) == 2)
                     and _qparams_equal(a, nodes[a.producer[dq_inputs[0]]], n))
            if alias:
                a.alias_of[n.output[0]] = reads[0]
                steps.append(Step("alias", node_name(mnode, main), mnode.op_type, sorted(chain), main,
                                  reads, [n.output[0]]))
                continue
            qtype = dtype_name(a.elem_types.get(reads[0], onnx.TensorProto.INT8))
            precision = "int8" if qtype in ("int8", "uint8") else qtype
            if mnode.op_type in NON_COMPUTE:
                precision = None
            steps.append(Step("kernel", node_name(mnode, main), mnode.op_type, sorted(chain), main,
                              reads, [n.output[0]], precision))
            continue
        if is_dq(n) and n.input[0] not in a.static:
            out = n.output[0]
            users = a.consumers.get(out, [])
            if out not in outputs and users and all(u in in_kernel for u, _ in users):
                continue  # virtual: its kernels read the integer tensor directly
        data = [t for t in n.input if t and t not in a.static]
        if (n.op_type in ALIAS_OPS or n.op_type == "ZipMap") and len(data) == 1 and len(outs) == 1:
            # no work on the device: the output is a view of the input's buffer
            a.alias_of[outs[0]] = data[0]
            steps.append(Step("alias", name, n.op_type, [i], i, data, outs))
            continue
        for o in outs:
            if o in a.non_tensor:
                raise UnsupportedOperatorError(
                    f"cannot profile a non-tensor value '{o}' ({a.non_tensor[o]})",
                    node=name, op=n.op_type)
        if i in folded_bn:
            continue  # folded into the convolution before it
        bn = _foldable_bn(a, i)
        if bn is not None and bn not in in_kernel:
            # Conv -> BatchNormalization: one step (the BN scales and shifts the conv's
            # weights and bias at export time); the conv's own output never exists
            folded_bn.add(bn)
            steps.append(Step("op", name, n.op_type, [i, bn], i, data, [nodes[bn].output[0]],
                              _precision_of(a, n)))
            continue
        steps.append(Step("op", name, n.op_type, [i], i, data, outs, _precision_of(a, n)))
    index = 0
    for s in steps:
        if s.kind != "alias":
            s.index = index
            index += 1
    a.steps = steps


# --- in-place execution ------------------------------------------------------------------
#
# A step may write its output over an input that no later step reads, when the kernel
# computes every output element only from input elements it no longer needs. The
# decision is made here, once, and stored on the step: the memory planner gives the
# output the input's buffer (and plans the step's scratch), and the C lowering emits the
# in-place kernel for exactly these steps, so the arena the C declares stays the
# profiler's peak.

# which kernels may write over their input: the ``inplace`` of each registry record
# (elementwise, binary, conv), for the float step or the int8 kernel of a main op

_NEVER = 1 << 62


def last_reads(a: GraphAnalysis) -> dict[str, int]:
    """Buffer owner (``a.root``) -> index of the last executing step that reads it; graph
    outputs never die."""
    last: dict[str, int] = {}
    for s in a.steps:
        if s.kind == "alias":
            continue
        for t in s.reads:
            r = a.root(t)
            last[r] = max(last.get(r, -1), s.index)
    for o in a.graph_outputs:
        last[a.root(o)] = _NEVER
    return last


def _dq_source(a: GraphAnalysis, t: str) -> str | None:
    p = a.producer.get(t)
    if p is None or not is_dq(a.nodes[p]):
        return None
    return a.nodes[p].input[0]


def decide_inplace(a: GraphAnalysis, s: Step, last: dict[str, int]):
    """(input tensor, scheme, scratch elements, scratch dtype) when step ``s`` can write its
    output over an input's buffer, else None. ``last`` is :func:`last_reads`.

    Schemes (the C kernels in ``backends/c/kernels/`` implement them; the registry says
    which operator may use which):

    - ``elementwise``: output element i is computed from input element i only (or a
      softmax row is read in full before any of it is written), so writing y[i] over x[i]
      destroys nothing still needed. No scratch.
    - ``conv_pixels``: 1x1 convolution, stride 1, no padding, one group, C_out <= C_in,
      NCHW, batch 1. Output (m, p) depends on input (c, p) for every c. For each spatial
      position p in increasing order the kernel first copies the C_in input values at p
      into the scratch (minus the zero point, int16, for int8), then computes the C_out
      outputs at p from the scratch and stores them at (m, p), m < C_out <= C_in: those
      addresses are input values at position p, already saved, and no later position
      p' > p reads position p. Scratch: C_in elements.
    - ``conv_groups``: grouped convolution (G > 1, e.g. depthwise), batch 1. Output group
      g (channels [g*M/G, (g+1)*M/G)) depends only on input group g. Group g's output is
      computed into the scratch, then copied to its place, offset g*(M/G)*OH*OW. With
      (M/G)*OH*OW <= (C/G)*H*W that copy ends at or before the end of input group g, so it
      only overwrites input groups <= g, all consumed. Any kernel size, stride and
      padding. Scratch: (M/G)*OH*OW output elements.
    """
    if s.kind == "alias" or len(s.writes) != 1:
        return None
    y = s.writes[0]
    if y in a.static or y not in a.shapes or y not in a.elem_types:
        return None
    node = a.nodes[s.main]
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    yt = a.elem_types[y]
    if s.kind == "kernel":
        srcs = [_dq_source(a, t) if t and t not in a.static else None for t in node.input]
        if yt != onnx.TensorProto.INT8:
            return None
    else:
        srcs = [t if t and t not in a.static else None for t in node.input]
        if yt != onnx.TensorProto.FLOAT:
            return None

    def dies(t):
        if t is None or t not in a.shapes or a.elem_types.get(t) != yt:
            return False
        r = a.root(t)
        return (r not in a.static and r in a.shapes and last.get(r, _NEVER) == s.index
                and a.elem_types.get(r) == yt and a.tensor_bytes(r) >= a.tensor_bytes(y))

    numel_y = a.numel(y)
    impl = (registry.int8_impl if s.kind == "kernel" else registry.float_impl)(op, node.domain)
    scheme = impl.inplace if impl is not None else ""
    if scheme == registry.CONV:
        return _conv_inplace(a, s, node, srcs[0] if srcs else None, y, dies)
    if scheme == registry.ELEMENTWISE:
        if op == "BatchNormalization" and len([o for o in node.output if o]) != 1:
            return None
        x = srcs[0] if srcs else None
        if dies(x) and a.numel(x) == numel_y:
            return x, "elementwise", 0, ""
        return None
    if scheme == registry.BINARY:
        if len(node.input) != 2:
            return None
        for k in (0, 1):
            x, other = srcs[k], srcs[1 - k]
            if not dies(x) or tuple(a.shapes[x]) != tuple(a.shapes[y]):
                continue
            if (other is not None and a.root(other) == a.root(x)
                    and tuple(a.shapes.get(other, ())) != tuple(a.shapes[y])):
                continue  # the other operand reads the same buffer at other positions
            return x, "elementwise", 0, ""
    return None


def _conv_inplace(a, s, node, x, y, dies):
    if x is None or not dies(x):
        return None
    xs, ys = tuple(a.shapes[x]), tuple(a.shapes[y])
    if len(xs) not in (3, 4) or len(ys) != len(xs) or xs[0] != 1 or ys[0] != 1:
        return None
    w = node.input[1] if len(node.input) > 1 else ""
    ws = a.shapes.get(w)
    if not w or w not in a.static or ws is None or len(ws) != len(xs):
        return None
    at = {x_.name: helper.get_attribute_value(x_) for x_ in node.attribute}
    G = int(at.get("group", 1))
    C, M = xs[1], ys[1]
    hw, ohw = math.prod(xs[2:]), math.prod(ys[2:])
    if G < 1 or C % G or M % G:
        return None
    int8 = s.kind == "kernel"
    esize = 1 if int8 else 4
    out_bytes = M * ohw * esize
    if G == 1:
        strides = list(at.get("strides", [1] * (len(xs) - 2)))
        if (any(k != 1 for k in ws[2:]) or any(v != 1 for v in strides) or ys[2:] != xs[2:]
                or M > C):
            return None
        scratch = C * (2 if int8 else 4)
        if scratch >= out_bytes:
            return None
        return x, "conv_pixels", C, "int16" if int8 else "float32"
    mg, cg = M // G, C // G
    if mg * ohw > cg * hw or mg * ohw * esize >= out_bytes:
        return None
    return x, "conv_groups", mg * ohw, "int8" if int8 else "float32"


def _fuse_residual(a: GraphAnalysis) -> None:
    """Fuse ``c = Conv(...)`` (an int8 kernel) into the int8 ``y = Add(c, skip)`` after it,
    writing ``y`` over ``skip``, when that is exact and saves memory.

    The fused step computes each output channel of the convolution (rounded to int8 with
    ``c``'s quantization, as the two kernels would) into a one-plane scratch, then adds
    the skip tensor's plane and stores the result over that plane: output element i
    depends on ``skip`` only at i. Conditions: the registry's Conv kernel fuses a residual
    Add; ``c`` is read by that Add only; ``c``, ``skip`` and ``y`` have one shape (no
    broadcasting), batch 1, int8; ``skip``'s buffer is last read by the Add. The fused step
    runs where the convolution ran when ``skip`` exists by then and nothing reads it in
    between; otherwise (e.g. a 1x1 projection of the skip computed after the
    convolution) where the Add ran. It reads the conv's inputs and ``skip`` and writes
    ``y``; the other step disappears, and so does ``c``'s buffer, so a residual block
    needs two activation buffers, not three.
    """
    conv_impl = registry.int8_impl("Conv")
    if conv_impl is None or not conv_impl.residual_add:
        return
    for _ in range(len(a.steps)):
        last = last_reads(a)
        writer = {t: s for s in a.steps if s.kind != "alias" for t in s.writes}
        readers: dict[str, list[int]] = defaultdict(list)
        for s in a.steps:
            if s.kind != "alias":
                for t in s.reads:
                    readers[a.root(t)].append(s.index)
        found = None
        for add in a.steps:
            if add.kind != "kernel" or add.op != "Add" or len(add.reads) != 2 or add.residual:
                continue
            for k in (0, 1):
                c, skip = add.reads[k], add.reads[1 - k]
                conv = writer.get(c)
                place = conv is not None and _residual_ok(a, conv, add, c, skip, last, readers, writer)
                if place:
                    found = (conv, add, c, skip, place)
                    break
            if found:
                break
        if found is None:
            break
        conv, add, c, skip, place = found
        before = Step(conv.kind, conv.name, conv.op, list(conv.nodes), conv.main, list(conv.reads),
                      list(conv.writes), conv.precision, conv.index)
        conv.residual = Residual(before, add, skip, c)
        conv.nodes = sorted(conv.nodes + add.nodes)
        conv.reads = conv.reads + [skip]
        conv.writes = list(add.writes)
        ys = a.shapes[add.writes[0]]
        conv.inplace_input, conv.inplace_scheme = skip, "residual"
        conv.scratch_bytes, conv.scratch_dtype = math.prod(ys[2:]), "int8"
        if place == "late":   # the fused step takes the Add's place
            a.steps.remove(conv)
            a.steps[a.steps.index(add)] = conv
        else:
            a.steps.remove(add)
        index = 0
        for s in a.steps:
            if s.kind != "alias":
                s.index = index
                index += 1


def _residual_ok(a, conv, add, c, skip, last, readers, writer) -> str:
    """"early" (fuse at the convolution), "late" (at the Add) or "" (do not fuse)."""
    if conv.kind != "kernel" or conv.op != "Conv" or conv.residual or conv.writes != [c]:
        return ""
    if c in a.graph_outputs or c == skip or a.root(skip) == a.root(c):
        return ""
    # c feeds only the Add (through its virtual DequantizeLinear)
    users = a.consumers.get(c, [])
    if len(users) != 1 or not is_dq(a.nodes[users[0][0]]):
        return ""
    dq_out = a.nodes[users[0][0]].output[0]
    if dq_out in a.graph_outputs or any(i not in add.nodes for i, _ in a.consumers.get(dq_out, [])):
        return ""
    y = add.writes[0]
    shapes = [a.shapes.get(t) for t in (c, skip, y)]
    if None in shapes or not (shapes[0] == shapes[1] == shapes[2]) or len(shapes[0]) < 3 \
            or shapes[0][0] != 1:
        return ""
    if any(a.elem_types.get(t) != onnx.TensorProto.INT8 for t in (c, skip, y)):
        return ""
    r = a.root(skip)
    if r in a.static or r not in a.shapes or a.elem_types.get(r) != onnx.TensorProto.INT8:
        return ""
    if last.get(r, _NEVER) != add.index or a.tensor_bytes(r) < a.tensor_bytes(y):
        return ""
    if any(a.root(t) == r for t in conv.reads):
        return ""   # the convolution reads the skip itself: writing over it would corrupt it
    w = writer.get(r)
    if (w is not None and w.index >= conv.index) or any(
            conv.index <= i < add.index for i in readers.get(r, [])):
        return "late"   # skip computed or read after the convolution: fuse at the Add
    return "early"


def _mark_inplace(a: GraphAnalysis) -> None:
    last = last_reads(a)
    for s in a.steps:
        if s.inplace_scheme:
            continue   # decided with its fusion
        d = decide_inplace(a, s, last)
        if d is None:
            continue
        x, scheme, n, dt = d
        s.inplace_input, s.inplace_scheme = x, scheme
        s.scratch_dtype = dt
        s.scratch_bytes = n * (np.dtype(dt).itemsize if dt else 0)

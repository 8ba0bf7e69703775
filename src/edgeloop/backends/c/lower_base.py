"""The lowering's shared state: the analysis, the plan, constant values, and call building.

:class:`LowererBase` holds what every operator's lowering reads (shapes, dtypes, constant
values, the step being lowered and its in-place decision) and :meth:`LowererBase.emit`,
which binds a kernel call by keyword against the ``k_<name>`` signature declared in the
kernel's C file (:func:`edgeloop.backends.c.kernel_lib.bind`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeloop.backends.c import kernel_lib, registry
from edgeloop.errors import EdgeloopError, UnsupportedOperatorError


CTYPES = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "int32": "int32_t",
          "int64": "int64_t", "bool": "uint8_t", "int16": "int16_t", "float64": "double"}


@dataclass
class Call:
    kernel: str
    args: list
    name: str = ""
    op: str = ""
    # a fast kernel's call (backends/c/fast.py) carries the generic call it stands for: the
    # generated C runs the fast one on cores with the DSP extension, the generic elsewhere
    alt: "Call | None" = None


@dataclass
class Lowered:
    calls: list[Call]
    plan: object                      # MemoryPlan
    inputs: list[dict]                # name, dtype, shape, nbytes, offset
    outputs: list[dict]
    arena_size: int
    alignment: int
    precision: str
    quant: dict = field(default_factory=dict)   # tensor -> (scale, zp) for int8 I/O


def _strides(shape) -> list[int]:
    s, out = 1, []
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def broadcast_strides(in_shape, out_shape) -> list[int]:
    """Element strides of ``in_shape`` read as ``out_shape`` (numpy broadcasting)."""
    in_shape = [1] * (len(out_shape) - len(in_shape)) + list(in_shape)
    st = _strides(in_shape)
    return [0 if d == 1 and o != 1 else s for d, o, s in zip(in_shape, out_shape, st)]


def ints(**kw) -> dict:
    """Integer arguments by name: ``ints(n=4)`` -> ``{"n": ("int", 4)}``."""
    return {k: ("int", int(v)) for k, v in kw.items()}


def conv_geometry_args(C, M, g, G) -> dict:
    """The geometry parameters every convolution kernel takes (C, H, W, M, OH, ... G)."""
    return ints(C=C, H=g["H"], W=g["W"], M=M, OH=g["OH"], OW=g["OW"], KH=g["KH"], KW=g["KW"],
                SH=g["SH"], SW=g["SW"], PT=g["PT"], PL=g["PL"], DH=g["DH"], DW=g["DW"], G=G)


def _i32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int32).ravel()



class LowererBase:
    def __init__(self, model: onnx.ModelProto):
        from edgeloop.profile.analysis import analyze
        from edgeloop.profile.memory import plan_model

        self.model = model
        self.a = analyze(model)
        plan = plan_model(model, _analysis=self.a)
        self.alignment = 1
        if not self._aligned(plan):
            # every buffer at a multiple of its element size (an int64 or double at 8: a
            # misaligned load is undefined behaviour in C, and UBSan reports it)
            self.alignment = max(self._itemsize(b.dtype) for b in plan.buffers)
            plan = plan_model(model, alignment=self.alignment, _analysis=self.a)
        self.plan = plan
        self.values = self._static_values()
        self.calls: list[Call] = []
        self.step = None   # the step being lowered (its in-place decision)
        self.impl = None   # its registry implementation
        self.residual = None   # the Add arguments while lowering a conv fused with one
        self.pending_fast = None   # a fast kernel's call waiting for its generic call

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def _itemsize(dtype) -> int:
        return np.dtype(dtype).itemsize if dtype in CTYPES else 1

    def _aligned(self, plan) -> bool:
        return all(b.offset % self._itemsize(b.dtype) == 0 for b in plan.buffers)

    def _static_values(self) -> dict[str, np.ndarray]:
        """Values of every constant tensor (initializers, Constant nodes, folded subgraphs)."""
        a = self.a
        vals: dict[str, np.ndarray] = {}
        for name, t in a.constants.items():
            try:
                vals[name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001
                pass
        todo = [n for n in a.nodes if n.op_type != "Constant" and n.output
                and all((o in a.static) for o in n.output if o)]
        if not todo:
            return vals
        inits = []
        for n in todo:
            if n.op_type in ("Shape", "Size") and n.input[0] not in a.static:
                shp = np.array(a.shapes[n.input[0]], dtype=np.int64)
                if n.op_type == "Size":
                    vals[n.output[0]] = np.array(shp.prod(), np.int64)
                else:
                    start = next((x.i for x in n.attribute if x.name == "start"), 0)
                    end = next((x.i for x in n.attribute if x.name == "end"), None)
                    vals[n.output[0]] = shp[start:end]
        rest = [n for n in todo if n.output[0] not in vals]
        if not rest:
            return vals
        for name, v in vals.items():
            inits.append(numpy_helper.from_array(np.asarray(v), name))
        outs = [o for n in rest for o in n.output if o]
        g = helper.make_graph(rest, "static", [], [helper.make_tensor_value_info(
            o, a.elem_types.get(o, 0), None) for o in outs], inits)
        m = helper.make_model(g, opset_imports=list(self.model.opset_import))
        m.ir_version = self.model.ir_version
        try:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            res = ort.InferenceSession(m.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"]).run(outs, {})
        except Exception:  # noqa: BLE001 - fall back to onnx's own reference evaluator
            try:
                from onnx.reference import ReferenceEvaluator
                res = ReferenceEvaluator(m).run(outs, {})
            except Exception as e:  # noqa: BLE001
                raise EdgeloopError(f"cannot fold the model's constant subgraph "
                                    f"({str(e).splitlines()[0][:200]})") from None
        for o, v in zip(outs, res):
            vals[o] = np.asarray(v)
        return vals

    def const(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise UnsupportedOperatorError(f"'{name}' must be a constant (the C backend bakes "
                                           "shapes, axes and parameters into the code)")
        return self.values[name]

    def is_static(self, name: str) -> bool:
        return name in self.a.static

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.a.shapes:
            return tuple(self.a.shapes[name])
        return tuple(self.a.shapes[self.a.root(name)])

    def dtype(self, name: str) -> str:
        from edgeloop.profile.analysis import dtype_name
        t = self.a.elem_types.get(name) or self.a.elem_types.get(self.a.root(name))
        return dtype_name(t)

    def numel(self, name: str) -> int:
        return int(np.prod(self.shape(name), dtype=np.int64))

    def operand(self, name: str, dtype=None):
        """An arg for a tensor that may be an activation or a constant."""
        if self.is_static(name):
            v = self.const(name)
            return ("const", np.ascontiguousarray(v if dtype is None else v.astype(dtype)))
        return ("in", name)

    def emit(self, kernel, node, op, /, **args):
        """Append a call of ``k_<kernel>``; ``args`` by parameter name (as declared in
        the kernel's C file), each an arg tuple (see the module docstring of ``lower``)."""
        bound = list(args.values()) if kernel.startswith("cast:") else kernel_lib.bind(kernel, args)
        call = Call(kernel, bound, node, op)
        if self.pending_fast is not None:   # the generic call a fast one stands for
            call, self.pending_fast = replace(self.pending_fast, alt=call), None
        self.calls.append(call)

    def emit_fast(self, kernel, node, op, /, **args):
        """A fast kernel's call (``backends/c/fast.py``) for the generic call emitted next
        by the same lowering method, which it replaces on cores with the DSP extension."""
        self.pending_fast = Call(kernel, kernel_lib.bind(kernel, args), node, op)

    # -- driver ---------------------------------------------------------------------
    def run(self) -> Lowered:
        from edgeloop.profile.analysis import node_name
        a = self.a
        for s in a.steps:
            if s.kind == "alias":
                continue
            self.step = s
            if s.kind == "kernel":
                self.lower_kernel(s)
                continue
            node = a.nodes[s.main]
            name = node_name(node, s.main)
            self.impl = registry.float_impl(node.op_type, node.domain)
            if self.impl is None:
                raise UnsupportedOperatorError(
                    f"the C backend does not support operator {node.op_type}", node=name,
                    op=node.op_type)
            getattr(self, self.impl.lower)(node, name)
        ins, outs = [], []
        for nm in a.graph_inputs:
            ins.append(self._io(nm))
        for nm in a.graph_outputs:
            if self.is_static(nm):
                raise UnsupportedOperatorError(f"graph output '{nm}' is a constant", op="Constant")
            outs.append(self._io(nm))
        from edgeloop.profile import _overall_precision
        quant = {}
        from edgeloop.graph import get_metadata
        meta = get_metadata(self.model)
        for key in ("input_quant", "output_quant"):
            for q in meta.get(key) or []:
                quant[q["name"]] = (float(q["scale"]), int(q["zero_point"]))
        return Lowered(self.calls, self.plan, ins, outs, self.plan.peak_bytes, self.alignment,
                       _overall_precision(a), quant)

    def _io(self, name):
        dt = self.dtype(name)
        if dt not in CTYPES:
            raise UnsupportedOperatorError(f"tensor '{name}' has type {dt}, which the C backend "
                                           "does not support")
        return {"name": name, "dtype": dt, "shape": list(self.shape(name)),
                "nbytes": self.numel(name) * np.dtype(dt).itemsize,
                "offset": self.plan.offset_of(name)}

    # -- attribute helpers --------------------------------------------------------------
    @staticmethod
    def attrs(node) -> dict:
        return {x.name: helper.get_attribute_value(x) for x in node.attribute}

    def unsupported(self, node, name, what):
        raise UnsupportedOperatorError(what, node=name, op=node.op_type)

    def _check_float(self, node, name, tensors):
        for t in tensors:
            if t and self.dtype(t) != "float32":
                self.unsupported(node, name, f"{node.op_type} on {self.dtype(t)} tensors is not "
                                 "supported by the C backend (float32 only)")

    def _conv_geometry(self, node, name, xshape, wshape, yshape):
        at = self.attrs(node)
        nd = len(xshape) - 2
        if nd not in (1, 2):
            self.unsupported(node, name, f"{nd}-D convolution is not supported (1-D and 2-D only)")
        ks = list(wshape[2:]) if wshape is not None else list(at.get("kernel_shape"))
        strides = list(at.get("strides", [1] * nd))
        dil = list(at.get("dilations", [1] * nd))
        pads = list(at.get("pads", [0] * (2 * nd)))
        auto = at.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        in_sp = list(xshape[2:])
        out_sp = list(yshape[2:])
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * nd)
            for i in range(nd):
                total = max(0, (out_sp[i] - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1 - in_sp[i])
                small, big = total // 2, total - total // 2
                pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0] * (2 * nd)
        if nd == 1:
            ks, strides, dil = [1] + ks, [1] + strides, [1] + dil
            pads = [0, pads[0], 0, pads[1]]
            in_sp, out_sp = [1] + in_sp, [1] + out_sp
        return dict(H=in_sp[0], W=in_sp[1], OH=out_sp[0], OW=out_sp[1], KH=ks[0], KW=ks[1],
                    SH=strides[0], SW=strides[1], PT=pads[0], PL=pads[1], PB=pads[2], PR=pads[3],
                    DH=dil[0], DW=dil[1], at=at)

    # -- in-place execution (decided once by the analysis; see decide_inplace) ------------
    def _inplace_conv(self, x, y) -> str:
        """The step's in-place convolution scheme ("conv_pixels", "conv_groups") or ""."""
        s = self.step
        if s is None or not s.inplace_scheme.startswith("conv_"):
            return ""
        if s.inplace_input != x or s.writes[0] != y or self.plan.offset_of(x) != self.plan.offset_of(y):
            raise EdgeloopError(f"internal: in-place plan of step '{s.name}' does not match its "
                                "convolution")
        return s.inplace_scheme

    def _folded_bn(self, node):
        """The BatchNormalization the analysis folded into this Conv's step, or None."""
        s = self.step
        if s is None or len(s.nodes) != 2 or s.main not in s.nodes:
            return None
        other = self.a.nodes[next(i for i in s.nodes if i != s.main)]
        return other if other.op_type == "BatchNormalization" else None

    def _scratch_arg(self):
        from edgeloop.profile.memory import scratch_name
        return ("arena", scratch_name(self.step), self.step.scratch_dtype)


"""Lower an ONNX graph to a list of kernel calls over one planned arena.

The device steps come from the profiler's analysis (:mod:`edgeloop.profile.analysis`):
an int8 QDQ sandwich is one integer kernel, Reshape/Flatten/Squeeze/Unsqueeze are
aliases, every other node is one step. Buffers and offsets come from
:func:`edgeloop.profile.memory.plan_model`, so the arena the C declares is the peak the
profiler reports.

A call is ``Call(kernel, args)``; each arg is ``("in", tensor)``, ``("out", tensor)``,
``("const", ndarray)``, ``("null",)``, ``("int", v)``, ``("float", v)`` or ``("arena",
buffer, dtype)`` (a planned scratch buffer of an in-place step). The C emitter prints them;
:mod:`edgeloop.backends.c.reference` runs the same calls in numpy.

In-place steps (``Step.inplace_input``, decided once by the analysis) need no special
handling for element-wise kernels: the plan gives input and output one offset. In-place
convolutions use the ``*_pw_ip`` / ``*_grp_ip`` kernels with the step's scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeloop.backends.c import fast
from edgeloop.errors import EdgeloopError, UnsupportedOperatorError

CTYPES = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "int32": "int32_t",
          "int64": "int64_t", "bool": "uint8_t", "int16": "int16_t", "float64": "double"}


@dataclass
class Call:
    kernel: str
    args: list
    name: str = ""
    op: str = ""


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


# ---------------------------------------------------------------- TFLite arithmetic

def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2**(shift - 31), q a 31-bit integer."""
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = round(frac * (1 << 31))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        q, shift = (1 << 31) - 1, 30
    return int(q), int(shift)


def act_range(lo_f, hi_f, scale: float, zp: int) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for a float clamp range."""
    lo, hi = -128, 127
    if lo_f is not None:
        lo = max(lo, zp + int(_round_away(lo_f / scale)))
    if hi_f is not None:
        hi = min(hi, zp + int(_round_away(hi_f / scale)))
    return lo, hi


def _round_away(v: float) -> float:
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


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


def _i32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int32).ravel()


class Lowerer:
    def __init__(self, model: onnx.ModelProto):
        from edgeloop.profile.analysis import analyze
        from edgeloop.profile.memory import plan_model

        self.model = model
        self.a = analyze(model)
        plan = plan_model(model, _analysis=self.a)
        self.alignment = 1
        if not self._aligned(plan):
            plan = plan_model(model, alignment=4, _analysis=self.a)
            self.alignment = 4
        self.plan = plan
        self.values = self._static_values()
        self.calls: list[Call] = []
        self.step = None   # the step being lowered (its in-place decision)

    # -- helpers --------------------------------------------------------------------
    def _aligned(self, plan) -> bool:
        for b in plan.buffers:
            size = np.dtype(b.dtype).itemsize if b.dtype in CTYPES else 1
            if b.offset % min(size, 4):
                return False
        return True

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

    def emit(self, kernel, args, node, op):
        self.calls.append(Call(kernel, list(args), node, op))

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
            fn = getattr(self, "op_" + node.op_type, None)
            if fn is None or node.domain not in ("", "ai.onnx", "ai.onnx.ml"):
                raise UnsupportedOperatorError(
                    f"the C backend does not support operator {node.op_type}", node=name,
                    op=node.op_type)
            fn(node, name)
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

    # ================================================================ float ops
    def op_Conv(self, node, name):
        self._check_float(node, name, [node.input[0], node.output[0]])
        x, w = node.input[0], node.input[1]
        if not self.is_static(w):
            self.unsupported(node, name, "convolution weights must be constant")
        wv = self.const(w).astype(np.float32)
        xs, ys = self.shape(x), self.shape(node.output[0])
        g = self._conv_geometry(node, name, xs, wv.shape, ys)
        G = int(g["at"].get("group", 1))
        b = ("const", self.const(node.input[2]).astype(np.float32)) if len(node.input) > 2 and node.input[2] else ("null",)
        bn = self._folded_bn(node)
        if bn is not None:
            # batch norm folded into the weights and bias: y = s * (conv(x) + b - mean) + beta
            # with s = gamma / sqrt(var + eps), per output channel
            at = self.attrs(bn)
            gamma, beta, mean, var = (self.const(t).astype(np.float64).ravel() for t in bn.input[1:5])
            sc = gamma / np.sqrt(var + at.get("epsilon", 1e-5))
            b0 = b[1].astype(np.float64) if b[0] == "const" else np.zeros(ys[1])
            wv = (self.const(w).astype(np.float64) * sc.reshape((-1,) + (1,) * (wv.ndim - 1))).astype(np.float32)
            b = ("const", ((b0 - mean) * sc + beta).astype(np.float32))
            node = onnx.NodeProto()
            node.CopyFrom(self.a.nodes[self.step.main])
            node.output[0] = bn.output[0]
        N = xs[0]
        scheme = self._inplace_conv(x, node.output[0])
        if scheme == "conv_pixels":
            self.emit("conv_f32_pw_ip", [("in", x), ("out", node.output[0]), ("const", wv), b] + [
                ("int", v) for v in (xs[1], g["H"] * g["W"], ys[1])] + [self._scratch_arg()],
                name, "Conv")
            return
        if scheme == "conv_groups":
            self.emit("conv_f32_grp_ip", [("in", x), ("out", node.output[0]), ("const", wv), b] + [
                ("int", v) for v in (xs[1], g["H"], g["W"], ys[1], g["OH"], g["OW"], g["KH"], g["KW"],
                                     g["SH"], g["SW"], g["PT"], g["PL"], g["DH"], g["DW"], G)]
                + [self._scratch_arg()], name, "Conv")
            return
        for n in range(N):
            self.emit("conv_f32", [("in", x, n * int(np.prod(xs[1:]))), ("out", node.output[0], n * int(np.prod(ys[1:]))),
                                   ("const", wv), b] + [("int", v) for v in (
                xs[1], g["H"], g["W"], ys[1], g["OH"], g["OW"], g["KH"], g["KW"], g["SH"], g["SW"],
                g["PT"], g["PL"], g["DH"], g["DW"], G)], name, "Conv")

    def _matmul(self, node, name, a, b, y, trans_a=0, trans_b=0, c=None, alpha=1.0, beta=1.0):
        self._check_float(node, name, [a, b, y])
        ash, bsh, ysh = self.shape(a), self.shape(b), self.shape(y)
        if len(ash) == 1 or len(bsh) == 1:
            # 1-D operands: numpy's matmul promotes them
            ash = (1,) + ash if len(ash) == 1 else ash
            bsh = bsh + (1,) if len(bsh) == 1 else bsh
        M, K = (ash[-1], ash[-2]) if trans_a else (ash[-2], ash[-1])
        N = bsh[-2] if trans_b else bsh[-1]
        batch_shape = ysh[:-2] if len(ysh) >= 2 else ()
        batch = int(np.prod(batch_shape, dtype=np.int64)) if batch_shape else 1
        if len(ysh) < 2:
            batch = 1

        def bstride(shape):
            lead = shape[:-2]
            if not lead or int(np.prod(lead)) == 1:
                return 0
            if int(np.prod(lead)) != batch:
                self.unsupported(node, name, "MatMul with partially broadcast batch dimensions "
                                 "is not supported")
            return shape[-1] * shape[-2]
        a_ms, a_ks = (1, ash[-1]) if trans_a else (ash[-1], 1)
        b_ks, b_ns = (1, bsh[-1]) if trans_b else (bsh[-1], 1)
        cargs = [("null",)]
        c_ms = c_ns = 0
        if c is not None:
            cv = (self.const(c).astype(np.float32) * np.float32(beta)).astype(np.float32)
            cv = np.broadcast_to(cv, (M, N)) if cv.ndim <= 2 else None
            if cv is None:
                self.unsupported(node, name, "Gemm bias must broadcast to [M, N]")
            cargs = [("const", np.ascontiguousarray(cv))]
            c_ms, c_ns = N, 1
        self.emit("matmul_f32", [self.operand(a, np.float32), self.operand(b, np.float32)] + cargs +
                  [("out", y)] + [("int", v) for v in (batch, M, K, N, bstride(ash), a_ms, a_ks,
                                                      bstride(bsh), b_ks, b_ns, c_ms, c_ns)] +
                  [("float", float(alpha))], name, node.op_type)

    def op_MatMul(self, node, name):
        self._matmul(node, name, node.input[0], node.input[1], node.output[0])

    def op_Gemm(self, node, name):
        at = self.attrs(node)
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if c is not None and not self.is_static(c):
            self.unsupported(node, name, "Gemm with a non-constant C is not supported")
        self._matmul(node, name, node.input[0], node.input[1], node.output[0],
                     at.get("transA", 0), at.get("transB", 0), c, at.get("alpha", 1.0),
                     at.get("beta", 1.0))

    def _binary(self, node, name, code):
        self._check_float(node, name, [node.input[0], node.input[1], node.output[0]])
        y = node.output[0]
        ys = self.shape(y)
        args = []
        strides = []
        for t in node.input[:2]:
            ts = self.const(t).shape if self.is_static(t) else self.shape(t)
            args.append(self.operand(t, np.float32))
            strides.append(broadcast_strides(ts, ys))
        shape = list(ys) or [1]
        sa = strides[0] or [0]
        sb = strides[1] or [0]
        self.emit("binary_f32", args + [("out", y), ("int", code), ("int", int(np.prod(shape))),
                                        ("int", len(shape)), ("const", _i32(shape)),
                                        ("const", _i32(sa)), ("const", _i32(sb))], name, node.op_type)

    def op_Add(self, node, name):
        self._binary(node, name, 0)

    def op_Sub(self, node, name):
        self._binary(node, name, 1)

    def op_Mul(self, node, name):
        self._binary(node, name, 2)

    def op_Div(self, node, name):
        self._binary(node, name, 3)

    def _variadic(self, node, name, code):
        if len(node.input) != 2:
            self.unsupported(node, name, f"{node.op_type} with {len(node.input)} inputs is not supported")
        self._binary(node, name, code)

    def op_Max(self, node, name):
        self._variadic(node, name, 4)

    def op_Min(self, node, name):
        self._variadic(node, name, 5)

    def _unary(self, node, name, code, p0=0.0, p1=0.0):
        self._check_float(node, name, [node.input[0], node.output[0]])
        self.emit("unary_f32", [("in", node.input[0]), ("out", node.output[0]),
                                ("int", self.numel(node.output[0])), ("int", code),
                                ("float", float(p0)), ("float", float(p1))], name, node.op_type)

    def op_Relu(self, node, name):
        self._unary(node, name, 0)

    def op_Clip(self, node, name):
        at = self.attrs(node)
        lo, hi = at.get("min", -np.inf), at.get("max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const(node.input[1]))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const(node.input[2]))
        self._unary(node, name, 1, lo, hi)

    def op_Sigmoid(self, node, name):
        self._unary(node, name, 2)

    def op_Tanh(self, node, name):
        self._unary(node, name, 3)

    def op_LeakyRelu(self, node, name):
        self._unary(node, name, 4, self.attrs(node).get("alpha", 0.01))

    def op_Abs(self, node, name):
        self._unary(node, name, 5)

    def op_Neg(self, node, name):
        self._unary(node, name, 6)

    def op_Exp(self, node, name):
        self._unary(node, name, 7)

    def op_Sqrt(self, node, name):
        self._unary(node, name, 8)

    def op_HardSigmoid(self, node, name):
        at = self.attrs(node)
        self._unary(node, name, 9, at.get("alpha", 0.2), at.get("beta", 0.5))

    def op_Elu(self, node, name):
        self._unary(node, name, 10, self.attrs(node).get("alpha", 1.0))

    def op_Reciprocal(self, node, name):
        self._unary(node, name, 11)

    def op_Floor(self, node, name):
        self._unary(node, name, 12)

    def op_Ceil(self, node, name):
        self._unary(node, name, 13)

    def _pool(self, node, name, is_max):
        self._check_float(node, name, [node.input[0], node.output[0]])
        if len([o for o in node.output if o]) > 1:
            self.unsupported(node, name, "MaxPool indices output is not supported")
        at = self.attrs(node)
        xs, ys = self.shape(node.input[0]), self.shape(node.output[0])
        if at.get("storage_order", 0):
            self.unsupported(node, name, "storage_order=1 is not supported")
        g = self._conv_geometry(node, name, xs, None, ys)
        NC = xs[0] * xs[1]
        self.emit("pool_f32", [("in", node.input[0]), ("out", node.output[0])] + [("int", v) for v in (
            NC, g["H"], g["W"], g["OH"], g["OW"], g["KH"], g["KW"], g["SH"], g["SW"], g["PT"],
            g["PL"], g["PB"], g["PR"], g["DH"], g["DW"], int(is_max),
            int(at.get("count_include_pad", 0)))], name, node.op_type)

    def op_MaxPool(self, node, name):
        self._pool(node, name, True)

    def op_AveragePool(self, node, name):
        self._pool(node, name, False)

    def _reduce_call(self, node, name, x, y, axes, code, keep=True):
        xs = self.shape(x)
        r = len(xs)
        axes = sorted(a % r for a in axes) if axes is not None else list(range(r))
        if axes and axes != list(range(axes[0], axes[-1] + 1)):
            self.unsupported(node, name, "reduction over non-adjacent axes is not supported")
        if not axes:
            outer, R, inner = int(np.prod(xs)), 1, 1
        else:
            outer = int(np.prod(xs[:axes[0]], dtype=np.int64))
            R = int(np.prod(xs[axes[0]:axes[-1] + 1], dtype=np.int64))
            inner = int(np.prod(xs[axes[-1] + 1:], dtype=np.int64))
        self.emit("reduce_f32", [("in", x), ("out", y), ("int", outer), ("int", R), ("int", inner),
                                 ("int", code)], name, node.op_type)

    def op_GlobalAveragePool(self, node, name):
        self._check_float(node, name, [node.input[0]])
        self._reduce_call(node, name, node.input[0], node.output[0],
                          list(range(2, len(self.shape(node.input[0])))), 0)

    def op_GlobalMaxPool(self, node, name):
        self._check_float(node, name, [node.input[0]])
        self._reduce_call(node, name, node.input[0], node.output[0],
                          list(range(2, len(self.shape(node.input[0])))), 2)

    def _reduce(self, node, name, code):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        axes = at.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.const(node.input[1]).ravel()]
        if axes is not None and len(axes) == 0:
            axes = None
            if at.get("noop_with_empty_axes", 0):
                axes = []
        self._reduce_call(node, name, node.input[0], node.output[0], axes, code)

    def op_ReduceMean(self, node, name):
        self._reduce(node, name, 0)

    def op_ReduceSum(self, node, name):
        self._reduce(node, name, 1)

    def op_ReduceMax(self, node, name):
        self._reduce(node, name, 2)

    def op_ReduceMin(self, node, name):
        self._reduce(node, name, 3)

    def _softmax(self, node, name, log):
        self._check_float(node, name, [node.input[0]])
        xs = self.shape(node.input[0])
        opset = self._opset()
        axis = self.attrs(node).get("axis", -1 if opset >= 13 else 1) % max(len(xs), 1)
        if opset >= 13:
            outer, N, inner = int(np.prod(xs[:axis])), xs[axis], int(np.prod(xs[axis + 1:]))
        else:  # coerced to 2-D at axis
            outer, N, inner = int(np.prod(xs[:axis])), int(np.prod(xs[axis:])), 1
        self.emit("softmax_f32", [("in", node.input[0]), ("out", node.output[0]), ("int", outer),
                                  ("int", N), ("int", inner), ("int", int(log))], name, node.op_type)

    def _opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def op_Softmax(self, node, name):
        self._softmax(node, name, False)

    def op_LogSoftmax(self, node, name):
        self._softmax(node, name, True)

    def op_BatchNormalization(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        if at.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
            self.unsupported(node, name, "BatchNormalization in training mode is not supported")
        sc, b, mean, var = (self.const(t).astype(np.float64) for t in node.input[1:5])
        s = sc / np.sqrt(var + at.get("epsilon", 1e-5))
        t = b - mean * s
        xs = self.shape(node.input[0])
        self.emit("batchnorm_f32", [("in", node.input[0]), ("out", node.output[0]),
                                    ("const", s.astype(np.float32)), ("const", t.astype(np.float32)),
                                    ("int", xs[0]), ("int", xs[1] if len(xs) > 1 else 1),
                                    ("int", int(np.prod(xs[2:])))], name, node.op_type)

    def _esize(self, t):
        return np.dtype(self.dtype(t)).itemsize

    def _copy(self, node, name, x, y, shape, strides, x0=0):
        shape = list(shape) or [1]
        strides = list(strides) or [0]
        if fast.lower_copy(self, name, node.op_type, x, y, shape, strides, x0):
            return
        self.emit("copy_nd", [self.operand(x), ("out", y), ("int", self._esize(y)),
                              ("int", int(np.prod(shape))), ("int", len(shape)),
                              ("const", _i32(shape)), ("const", _i32(strides)), ("int", int(x0))],
                  name, node.op_type)

    def op_Transpose(self, node, name):
        xs = self.shape(node.input[0])
        perm = self.attrs(node).get("perm", list(range(len(xs)))[::-1])
        st = _strides(xs)
        self._copy(node, name, node.input[0], node.output[0], [xs[p] for p in perm],
                   [st[p] for p in perm])

    def op_Expand(self, node, name):
        xs, ys = self.shape(node.input[0]), self.shape(node.output[0])
        self._copy(node, name, node.input[0], node.output[0], ys, broadcast_strides(xs, ys))

    def op_Identity(self, node, name):  # a non-alias Identity (e.g. of a graph input)
        n = self.numel(node.output[0])
        self._copy(node, name, node.input[0], node.output[0], [n], [1])

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = op_Identity

    def op_Slice(self, node, name):
        xs = self.shape(node.input[0])
        r = len(xs)
        if len(node.input) < 3:
            self.unsupported(node, name, "Slice before opset 10 is not supported")
        starts = self.const(node.input[1]).ravel().tolist()
        ends = self.const(node.input[2]).ravel().tolist()
        axes = (self.const(node.input[3]).ravel().tolist() if len(node.input) > 3 and node.input[3]
                else list(range(len(starts))))
        steps = (self.const(node.input[4]).ravel().tolist() if len(node.input) > 4 and node.input[4]
                 else [1] * len(starts))
        st = _strides(xs)
        begin = [0] * r
        step = [1] * r
        for s, e, ax, k in zip(starts, ends, axes, steps):
            ax %= r
            d = xs[ax]
            lo, _, _ = slice(int(s), int(e), int(k)).indices(d)
            begin[ax], step[ax] = lo, int(k)
        ys = self.shape(node.output[0])
        x0 = sum(b * s for b, s in zip(begin, st))
        self._copy(node, name, node.input[0], node.output[0], ys, [s * k for s, k in zip(st, step)], x0)

    def op_Concat(self, node, name):
        y = node.output[0]
        ys = self.shape(y)
        axis = self.attrs(node)["axis"] % len(ys)
        es = self._esize(y)
        outer = int(np.prod(ys[:axis]))
        inner = int(np.prod(ys[axis + 1:]))
        off = 0
        for t in node.input:
            ts = self.const(t).shape if self.is_static(t) else self.shape(t)
            xb = ts[axis] * inner * es
            if xb:
                self.emit("concat", [self.operand(t), ("out", y), ("int", outer), ("int", xb),
                                     ("int", ys[axis] * inner * es), ("int", off)], name, "Concat")
            off += xb

    def op_Pad(self, node, name, value=None):
        at = self.attrs(node)
        mode = at.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        codes = {"constant": 0, "edge": 1, "reflect": 2}
        if mode not in codes:
            self.unsupported(node, name, f"Pad mode '{mode}' is not supported")
        xs, ys = self.shape(node.input[0]), self.shape(node.output[0])
        r = len(xs)
        if "pads" in at:
            pads = list(at["pads"])
        else:
            pads = self.const(node.input[1]).ravel().tolist()
        if len(node.input) > 3 and node.input[3]:
            axes = [a % r for a in self.const(node.input[3]).ravel().tolist()]
            full = [0] * (2 * r)
            for i, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[i], pads[i + len(axes)]
            pads = full
        if any(p < 0 for p in pads):
            self.unsupported(node, name, "negative pads are not supported")
        dt = self.dtype(node.output[0])
        if value is None:
            value = at.get("value", 0.0)
            if len(node.input) > 2 and node.input[2]:
                value = self.const(node.input[2]).ravel()[0]
        val = np.array([value], dtype=dt)
        self.emit("pad_nd", [self.operand(node.input[0]), ("out", node.output[0]),
                             ("int", np.dtype(dt).itemsize), ("int", self.numel(node.output[0])),
                             ("int", r), ("const", _i32(ys)), ("const", _i32(xs)),
                             ("const", _i32(pads[:r])), ("int", codes[mode]), ("const", val)],
                  name, "Pad")

    def _argm(self, node, name, is_min):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        xs = self.shape(node.input[0])
        ax = at.get("axis", 0) % len(xs)
        self.emit("argmax_f32", [("in", node.input[0]), ("out", node.output[0]),
                                 ("int", int(np.prod(xs[:ax]))), ("int", xs[ax]),
                                 ("int", int(np.prod(xs[ax + 1:]))), ("int", int(is_min)),
                                 ("int", int(at.get("select_last_index", 0)))], name, node.op_type)

    def op_ArgMax(self, node, name):
        self._argm(node, name, False)

    def op_ArgMin(self, node, name):
        self._argm(node, name, True)

    def _gather(self, node, name, data, idx, y, axis):
        ds = self.const(data).shape if self.is_static(data) else self.shape(data)
        axis %= len(ds)
        if self.is_static(idx):
            idx_arg = ("const", self.const(idx).astype(np.int64).ravel())
            K = idx_arg[1].size
        else:
            if self.dtype(idx) != "int64":
                self.unsupported(node, name, "indices must be int64")
            idx_arg, K = ("in", idx), self.numel(idx)
        self.emit("gather", [self.operand(data), idx_arg, ("out", y), ("int", self._esize(y)),
                             ("int", int(np.prod(ds[:axis]))), ("int", ds[axis]),
                             ("int", int(np.prod(ds[axis + 1:]))), ("int", K)], name, node.op_type)

    def op_Gather(self, node, name):
        self._gather(node, name, node.input[0], node.input[1], node.output[0],
                     self.attrs(node).get("axis", 0))

    def op_ArrayFeatureExtractor(self, node, name):
        self._gather(node, name, node.input[0], node.input[1], node.output[0], -1)

    def op_Cast(self, node, name):
        src, dst = self.dtype(node.input[0]), self.dtype(node.output[0])
        for d in (src, dst):
            if d not in CTYPES:
                self.unsupported(node, name, f"Cast involving {d} is not supported")
        self.emit("cast:" + src + ":" + dst, [("in", node.input[0]), ("out", node.output[0]),
                                               ("int", self.numel(node.output[0]))], name, "Cast")

    def _qparams(self, node, name):
        s = self.const(node.input[1])
        z = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        if s.size != 1 or z.size != 1:
            self.unsupported(node, name, "per-axis quantization of activations is not supported")
        return float(np.float32(s.ravel()[0])), int(z.ravel()[0]), z.dtype

    def op_QuantizeLinear(self, node, name):
        s, z, zdt = self._qparams(node, name)
        if zdt != np.int8 or self.dtype(node.input[0]) != "float32":
            self.unsupported(node, name, "only float32 -> int8 QuantizeLinear is supported")
        self.emit("quantize_s8", [("in", node.input[0]), ("out", node.output[0]),
                                  ("int", self.numel(node.output[0])), ("float", s), ("int", z)],
                  name, node.op_type)

    def op_DequantizeLinear(self, node, name):
        s, z, zdt = self._qparams(node, name)
        if self.dtype(node.input[0]) != "int8":
            self.unsupported(node, name, "only int8 -> float32 DequantizeLinear is supported")
        self.emit("dequantize_s8", [("in", node.input[0]), ("out", node.output[0]),
                                    ("int", self.numel(node.output[0])), ("float", s), ("int", z)],
                  name, node.op_type)

    # ================================================================ ONNX-ML
    POST = {"NONE": 0, "SOFTMAX": 1, "LOGISTIC": 2, "SOFTMAX_ZERO": 3}

    def _post(self, node, name, at):
        p = at.get("post_transform", b"NONE")
        p = p.decode() if isinstance(p, bytes) else p
        if p not in self.POST:
            self.unsupported(node, name, f"post_transform {p} is not supported")
        return self.POST[p]

    def _rows(self, x):
        xs = self.shape(x)
        return (int(np.prod(xs[:-1])) if len(xs) > 1 else 1), xs[-1]

    def op_Scaler(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        rows, F = self._rows(node.input[0])
        off = np.broadcast_to(np.asarray(at.get("offset", [0.0]), np.float32), (F,))
        sc = np.broadcast_to(np.asarray(at.get("scale", [1.0]), np.float32), (F,))
        self.emit("scaler", [("in", node.input[0]), ("out", node.output[0]), ("int", rows),
                             ("int", F), ("const", np.ascontiguousarray(off)),
                             ("const", np.ascontiguousarray(sc))], name, node.op_type)

    def op_Normalizer(self, node, name):
        self._check_float(node, name, [node.input[0]])
        norm = self.attrs(node).get("norm", b"MAX")
        norm = norm.decode() if isinstance(norm, bytes) else norm
        rows, F = self._rows(node.input[0])
        self.emit("normalizer", [("in", node.input[0]), ("out", node.output[0]), ("int", rows),
                                 ("int", F), ("int", {"MAX": 0, "L1": 1, "L2": 2}[norm])],
                  name, node.op_type)

    def _labels(self, node, name, at):
        if "classlabels_strings" in at:
            self.unsupported(node, name, "string class labels are not supported (use integer labels)")
        return np.asarray(at.get("classlabels_ints", at.get("classlabels_int64s", [])), np.int64)

    def op_LinearClassifier(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        classes = self._labels(node, name, at)
        rows, F = self._rows(node.input[0])
        coef = np.asarray(at["coefficients"], np.float32).reshape(-1, F)
        R = coef.shape[0]
        icpt = np.asarray(at.get("intercepts", [0.0] * R), np.float32)
        binary = int(R == 1 and len(classes) == 2)
        if not binary and R != len(classes):
            self.unsupported(node, name, "LinearClassifier with classes != coefficient rows")
        if at.get("multi_class", 0) and binary:
            self.unsupported(node, name, "multi_class binary LinearClassifier is not supported")
        self.emit("linear_classifier", [("in", node.input[0]), ("out", node.output[0]),
                                        ("out", node.output[1]), ("const", coef), ("const", icpt),
                                        ("const", classes), ("int", rows), ("int", F), ("int", R),
                                        ("int", len(classes)), ("int", self._post(node, name, at)),
                                        ("int", binary)], name, node.op_type)

    def op_LinearRegressor(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        rows, F = self._rows(node.input[0])
        T = int(at.get("targets", 1))
        coef = np.asarray(at["coefficients"], np.float32).reshape(T, F)
        icpt = np.asarray(at.get("intercepts", [0.0] * T), np.float32)
        self.emit("linear_regressor", [("in", node.input[0]), ("out", node.output[0]),
                                       ("const", coef), ("const", icpt), ("int", rows), ("int", F),
                                       ("int", T), ("int", self._post(node, name, at))],
                  name, node.op_type)

    MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4,
             "BRANCH_NEQ": 5, "LEAF": 6}

    def _trees(self, node, name, at, prefix):
        for k in ("nodes_values_as_tensor", "base_values_as_tensor", f"{prefix}_weights_as_tensor"):
            if k in at:
                self.unsupported(node, name, f"attribute {k} is not supported")
        tids = list(at["nodes_treeids"])
        nids = list(at["nodes_nodeids"])
        index = {(t, n): i for i, (t, n) in enumerate(zip(tids, nids))}
        modes = [m.decode() if isinstance(m, bytes) else m for m in at["nodes_modes"]]
        for m in modes:
            if m not in self.MODES:
                self.unsupported(node, name, f"tree node mode {m} is not supported")
        n = len(nids)
        tchild = np.zeros(n + 1, np.int32)
        fchild = np.zeros(n + 1, np.int32)
        for i in range(n):
            if modes[i] != "LEAF":
                tchild[i] = index[(tids[i], at["nodes_truenodeids"][i])]
                fchild[i] = index[(tids[i], at["nodes_falsenodeids"][i])]
        roots, seen = [], set()
        for i, t in enumerate(tids):
            if t not in seen:
                seen.add(t)
                children = {int(at["nodes_truenodeids"][j]) for j in range(n) if tids[j] == t and modes[j] != "LEAF"} | \
                           {int(at["nodes_falsenodeids"][j]) for j in range(n) if tids[j] == t and modes[j] != "LEAF"}
                root = next(j for j in range(n) if tids[j] == t and nids[j] not in children)
                roots.append(root)
        # leaf weights grouped by node
        wt = list(at[f"{prefix}_treeids"])
        wn = list(at[f"{prefix}_nodeids"])
        wid = list(at[f"{prefix}_ids"])
        ww = list(at[f"{prefix}_weights"])
        per: dict[int, list] = {}
        for t, nn, c, w in zip(wt, wn, wid, ww):
            per.setdefault(index[(t, nn)], []).append((c, w))
        first = np.zeros(n + 2, np.int32)
        targets, weights = [], []
        for i in range(n + 1):
            first[i] = len(targets)
            for c, w in per.get(i, []):
                targets.append(c)
                weights.append(w)
        first[n + 1] = len(targets)
        mvt = at.get("nodes_missing_value_tracks_true", [0] * n)
        feat = np.asarray(list(at["nodes_featureids"]) + [0], np.int32)
        thr = np.asarray(list(at["nodes_values"]) + [0.0], np.float32)
        mode = np.asarray([self.MODES[m] for m in modes] + [6], np.uint8)
        return dict(roots=np.asarray(roots, np.int32), feat=feat, thr=thr, mode=mode,
                    tchild=tchild, fchild=fchild, mvt=np.asarray(list(mvt) + [0], np.uint8),
                    first=first, targets=np.asarray(targets or [0], np.int32),
                    weights=np.asarray(weights or [0.0], np.float32), n_targets=len(set(wid)),
                    ids=set(wid))

    def _tree_call(self, node, name, tr, label, scores, T, base, aggregate, post, binary, classes):
        rows, F = self._rows(node.input[0])
        base_arg = ("const", np.asarray(base, np.float32)) if base is not None else ("null",)
        self.emit("tree_ensemble", [("in", node.input[0]), label, ("out", scores),
                                    ("scratch", "double", max(T, 1)), ("int", rows),
                                    ("int", F), ("int", len(tr["roots"])), ("const", tr["roots"]),
                                    ("const", tr["feat"]), ("const", tr["thr"]), ("const", tr["mode"]),
                                    ("const", tr["tchild"]), ("const", tr["fchild"]),
                                    ("const", tr["mvt"]), ("const", tr["first"]),
                                    ("const", tr["targets"]), ("const", tr["weights"]), base_arg,
                                    ("int", T), ("int", aggregate), ("int", post), ("int", binary),
                                    classes], name, node.op_type)

    def op_TreeEnsembleClassifier(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        classes = self._labels(node, name, at)
        tr = self._trees(node, name, at, "class")
        post = self._post(node, name, at)
        C = len(classes)
        binary = int(C == 2 and tr["ids"] <= {0, 1} and len(tr["ids"]) == 1)
        if binary and tr["ids"] != {1} and tr["ids"] != {0}:
            binary = 0
        if binary and tr["ids"] == {0}:
            tr["targets"][:] = 0
        base = at.get("base_values")
        if base is not None and binary and len(base) == 2:
            self.unsupported(node, name, "binary trees with two base values are not supported")
        if binary and post not in (0, 2):
            self.unsupported(node, name, "binary TreeEnsembleClassifier with this post_transform")
        self._tree_call(node, name, tr, ("out", node.output[0]), node.output[1], C if not binary else 1,
                        base, 0, post, binary, ("const", classes))

    def op_TreeEnsembleRegressor(self, node, name):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        tr = self._trees(node, name, at, "target")
        agg = at.get("aggregate_function", b"SUM")
        agg = agg.decode() if isinstance(agg, bytes) else agg
        aggs = {"SUM": 0, "AVERAGE": 1, "MAX": 2, "MIN": 3}
        if agg not in aggs:
            self.unsupported(node, name, f"aggregate_function {agg} is not supported")
        T = int(at.get("n_targets", 1))
        self._tree_call(node, name, tr, ("null",), node.output[0], T, at.get("base_values"),
                        aggs[agg], self._post(node, name, at), 0, ("null",))

    # ================================================================ int8 QDQ kernels
    def lower_kernel(self, s):
        a = self.a
        nodes = a.nodes
        qn = next(nodes[i] for i in s.nodes if nodes[i].op_type == "QuantizeLinear"
                  and nodes[i].output[0] == s.writes[0])
        mnode = nodes[s.main]
        from edgeloop.profile.analysis import node_name
        name = node_name(mnode, s.main)
        y = qn.output[0]
        y_s, y_zp, y_dt = self._qparams(qn, name)
        if y_dt != np.int8:
            self.unsupported(mnode, name, "only int8 quantized kernels are supported (not uint8)")
        # epilogue between the main op and the QuantizeLinear
        lo_f = hi_f = None
        bias_add = None
        cur = mnode.output[0]
        for i in sorted(s.nodes):
            n = nodes[i]
            if i == s.main or n is qn:
                continue
            if n.op_type == "Relu":
                lo_f = 0.0 if lo_f is None else max(lo_f, 0.0)
            elif n.op_type == "Clip":
                at = self.attrs(n)
                lo, hi = at.get("min"), at.get("max")
                if len(n.input) > 1 and n.input[1]:
                    lo = float(self.const(n.input[1]))
                if len(n.input) > 2 and n.input[2]:
                    hi = float(self.const(n.input[2]))
                if lo is not None:
                    lo_f = lo if lo_f is None else max(lo_f, lo)
                if hi is not None:
                    hi_f = hi if hi_f is None else min(hi_f, hi)
            elif n.op_type == "Add" and mnode.op_type in ("Conv", "Gemm", "MatMul") and bias_add is None:
                bias_add = next(t for t in n.input if t != cur and self.is_static(t))
            else:
                self.unsupported(n, node_name(n, i), f"{n.op_type} after {mnode.op_type} inside an "
                                 "int8 kernel is not supported")
            cur = n.output[0]
        lo, hi = act_range(lo_f, hi_f, y_s, y_zp)
        fn = getattr(self, "q_" + mnode.op_type, None)
        if fn is None:
            raise UnsupportedOperatorError(
                f"the C backend has no int8 kernel for {mnode.op_type}", node=name, op=mnode.op_type)
        fn(mnode, name, y, (y_s, y_zp), lo, hi, bias_add)

    def _dq_of(self, t):
        """(int tensor, scale array, zp array) behind a DequantizeLinear output."""
        p = self.a.producer.get(t)
        n = self.a.nodes[p] if p is not None else None
        if n is None or n.op_type != "DequantizeLinear":
            return None
        s = self.const(n.input[1]).astype(np.float32)
        z = (self.const(n.input[2]) if len(n.input) > 2 and n.input[2]
             else np.zeros(s.shape, np.int8))
        axis = self.attrs(n).get("axis", 1)
        return n.input[0], s, z, axis

    def _act_in(self, mnode, name, t):
        d = self._dq_of(t)
        if d is None or self.is_static(d[0]):
            self.unsupported(mnode, name, "expected a dequantized int8 activation input")
        src, s, z, _ = d
        if s.size != 1 or self.dtype(src) != "int8":
            self.unsupported(mnode, name, "int8 activations must be per-tensor int8")
        return src, float(s.ravel()[0]), int(z.ravel()[0])

    def _weights(self, mnode, name, t):
        d = self._dq_of(t)
        if d is None or not self.is_static(d[0]):
            self.unsupported(mnode, name, "int8 kernel weights must be a constant int8 tensor "
                             "behind a DequantizeLinear")
        src, s, z, axis = d
        w = self.const(src)
        if w.dtype != np.int8 or np.any(z != 0):
            self.unsupported(mnode, name, "weights must be int8 and symmetric (zero point 0)")
        return w, s.ravel(), axis

    def _bias(self, mnode, name, t, x_s, w_s, n_out):
        if t is None:
            return ("null",)
        d = self._dq_of(t)
        if d is not None and self.is_static(d[0]) and self.const(d[0]).dtype == np.int32:
            b = self.const(d[0]).astype(np.int64).ravel()
        else:  # a float bias: quantize it as TFLite does (scale x_scale * w_scale)
            bf = self.const(t).astype(np.float64).ravel()
            b = np.round(bf / (np.float64(x_s) * w_s.astype(np.float64)))
        return ("const", np.broadcast_to(b, (n_out,)).astype(np.int32).copy())

    @staticmethod
    def _mults(x_s, w_s, y_s):
        ms = [quantize_multiplier(float(x_s) * float(ws) / float(y_s)) for ws in w_s]
        return _i32([m for m, _ in ms]), _i32([s for _, s in ms])

    def q_Conv(self, mnode, name, y, yq, lo, hi, bias_add):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        w, w_s, axis = self._weights(mnode, name, mnode.input[1])
        M = w.shape[0]
        if w_s.size not in (1, M) or (w_s.size > 1 and axis != 0):
            self.unsupported(mnode, name, "conv weight scales must be per tensor or per output channel")
        w_s = np.broadcast_to(w_s, (M,))
        b = mnode.input[2] if len(mnode.input) > 2 and mnode.input[2] else bias_add
        bias = self._bias(mnode, name, b, x_s, w_s, M)
        mult, shift = self._mults(x_s, w_s, yq[0])
        xs, ys = self.shape(x), self.shape(y)
        g = self._conv_geometry(mnode, name, xs, w.shape, ys)
        G = int(g["at"].get("group", 1))
        scheme = self._inplace_conv(x, y)
        if fast.lower_conv(self, name, x, y, w, bias, mult, shift, xs, ys, g, G, scheme, x_zp, yq[1],
                           lo, hi):
            return
        head = [("in", x), ("out", y), ("const", np.ascontiguousarray(w)), bias, ("const", mult),
                ("const", shift)]
        if scheme == "conv_pixels":
            self.emit("conv_s8_pw_ip", head + [("int", v) for v in (
                xs[1], g["H"] * g["W"], ys[1], x_zp, yq[1], lo, hi)] + [self._scratch_arg()],
                name, "Conv")
            return
        if scheme == "conv_groups":
            self.emit("conv_s8_grp_ip", head + [("int", v) for v in (
                xs[1], g["H"], g["W"], ys[1], g["OH"], g["OW"], g["KH"], g["KW"], g["SH"], g["SW"],
                g["PT"], g["PL"], g["DH"], g["DW"], G, x_zp, yq[1], lo, hi)] + [self._scratch_arg()],
                name, "Conv")
            return
        for n in range(xs[0]):
            self.emit("conv_s8", [("in", x, n * int(np.prod(xs[1:]))), ("out", y, n * int(np.prod(ys[1:]))),
                                  ("const", np.ascontiguousarray(w)), bias, ("const", mult),
                                  ("const", shift)] + [("int", v) for v in (
                xs[1], g["H"], g["W"], ys[1], g["OH"], g["OW"], g["KH"], g["KW"], g["SH"], g["SW"],
                g["PT"], g["PL"], g["DH"], g["DW"], G, x_zp, yq[1], lo, hi)], name, "Conv")

    def _fc(self, mnode, name, y, yq, lo, hi, a_t, b_t, trans_b, bias_t):
        x, x_s, x_zp = self._act_in(mnode, name, a_t)
        w, w_s, axis = self._weights(mnode, name, b_t)
        if w.ndim != 2:
            self.unsupported(mnode, name, "int8 MatMul weights must be 2-D")
        wn = w if trans_b else w.T                    # [N, K]
        N, K = wn.shape
        w_axis_is_n = (axis % 2 == 0) if trans_b else (axis % 2 == 1)
        if w_s.size not in (1, N) or (w_s.size > 1 and not w_axis_is_n):
            self.unsupported(mnode, name, "weight scales must be per tensor or per output unit")
        per = int(w_s.size > 1)
        bias = self._bias(mnode, name, bias_t, x_s, np.broadcast_to(w_s, (N,)), N)
        if per:
            mult, shift = self._mults(x_s, w_s, yq[0])
        else:
            # TFLite's fully-connected multiplier: the float32 product of the scales, then
            # divided in double (GetQuantizedConvolutionMultipler)
            prod = float(np.float32(x_s) * np.float32(w_s[0]))
            m, sh = quantize_multiplier(prod / float(yq[0]))
            mult, shift = _i32([m]), _i32([sh])
        M = self.numel(x) // K
        # sum((x - zp) * w) + b == sum(x * w) + (b - zp * sum(w)): fold the input zero point
        # into the bias (as CMSIS-NN's kernel sums do); exact in int32 arithmetic
        b0 = bias[1].astype(np.int64) if bias[0] == "const" else np.zeros(N, np.int64)
        folded = b0 - x_zp * wn.astype(np.int64).sum(axis=1)
        bias = ("const", folded.astype(np.int32))
        if fast.lower_fc(self, name, x, y, wn, bias, mult, shift, per, M, K, N, yq[1], lo, hi):
            return
        self.emit("fc_s8", [("in", x), ("out", y), ("const", np.ascontiguousarray(wn)), bias,
                            ("const", mult), ("const", shift), ("int", per), ("int", M),
                            ("int", K), ("int", N), ("int", yq[1]), ("int", lo),
                            ("int", hi)], name, mnode.op_type)

    def q_Gemm(self, mnode, name, y, yq, lo, hi, bias_add):
        at = self.attrs(mnode)
        if at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
            self.unsupported(mnode, name, "int8 Gemm with transA, alpha or beta is not supported")
        b = mnode.input[2] if len(mnode.input) > 2 and mnode.input[2] else bias_add
        self._fc(mnode, name, y, yq, lo, hi, mnode.input[0], mnode.input[1], at.get("transB", 0), b)

    def q_MatMul(self, mnode, name, y, yq, lo, hi, bias_add):
        self._fc(mnode, name, y, yq, lo, hi, mnode.input[0], mnode.input[1], 0, bias_add)

    def _same(self, xq, yq):
        return xq[0] == yq[0] and xq[1] == yq[1]

    def _requant_params(self, x_s, x_zp, yq):
        same = int(np.float32(x_s) == np.float32(yq[0]) and x_zp == yq[1])
        m, sh = quantize_multiplier(float(x_s) / float(yq[0])) if not same else (0, 0)
        return same, m, sh

    def _qpool(self, mnode, name, y, yq, lo, hi, is_max, geom=None):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        xs, ys = self.shape(x), self.shape(y)
        if geom is None:
            at = self.attrs(mnode)
            if at.get("ceil_mode", 0) or any(d != 1 for d in at.get("dilations", [1, 1])):
                self.unsupported(mnode, name, "int8 pooling with ceil_mode or dilations")
            if not is_max and at.get("count_include_pad", 0) and any(at.get("pads", [0])):
                self.unsupported(mnode, name, "int8 average pooling with count_include_pad")
            geom = self._conv_geometry(mnode, name, xs, None, ys)
        same, m, sh = self._requant_params(x_s, x_zp, yq)
        g = geom
        self.emit("pool_s8", [("in", x), ("out", y)] + [("int", v) for v in (
            xs[0] * xs[1], g["H"], g["W"], g["OH"], g["OW"], g["KH"], g["KW"], g["SH"], g["SW"],
            g["PT"], g["PL"], int(is_max), same, x_zp, yq[1], m, sh, lo, hi)], name, mnode.op_type)

    def q_MaxPool(self, mnode, name, y, yq, lo, hi, _b):
        self._qpool(mnode, name, y, yq, lo, hi, True)

    def q_AveragePool(self, mnode, name, y, yq, lo, hi, _b):
        self._qpool(mnode, name, y, yq, lo, hi, False)

    def _global(self, mnode, name, y, yq, lo, hi, is_max):
        xs = self.shape(mnode.input[0])
        if len(xs) != 4:
            self.unsupported(mnode, name, "int8 global pooling needs a 4-D input")
        g = dict(H=xs[2], W=xs[3], OH=1, OW=1, KH=xs[2], KW=xs[3], SH=1, SW=1, PT=0, PL=0)
        self._qpool(mnode, name, y, yq, lo, hi, is_max, g)

    def q_GlobalAveragePool(self, mnode, name, y, yq, lo, hi, _b):
        self._global(mnode, name, y, yq, lo, hi, False)

    def q_GlobalMaxPool(self, mnode, name, y, yq, lo, hi, _b):
        self._global(mnode, name, y, yq, lo, hi, True)

    def q_ReduceMean(self, mnode, name, y, yq, lo, hi, _b):
        xs = self.shape(mnode.input[0])
        at = self.attrs(mnode)
        axes = at.get("axes")
        if len(mnode.input) > 1 and mnode.input[1]:
            axes = self.const(mnode.input[1]).ravel().tolist()
        if len(xs) != 4 or sorted(a % 4 for a in (axes or [])) != [2, 3]:
            self.unsupported(mnode, name, "int8 ReduceMean only over the spatial axes of a 4-D tensor")
        self._global(mnode, name, y, yq, lo, hi, False)

    def q_Add(self, mnode, name, y, yq, lo, hi, _b):
        ops = []
        for t in mnode.input[:2]:
            d = self._dq_of(t)
            if d is None or d[1].size != 1 or (self.is_static(d[0]) and self.const(d[0]).dtype != np.int8):
                self.unsupported(mnode, name, "int8 Add operands must be per-tensor int8")
            src, s, z, _ = d
            shape = self.const(src).shape if self.is_static(src) else self.shape(src)
            ops.append((self.operand(src), float(s.ravel()[0]), int(z.ravel()[0]), shape))
        ys = list(self.shape(y)) or [1]
        twice = 2 * max(ops[0][1], ops[1][1])
        ma, sa = quantize_multiplier(ops[0][1] / twice)
        mb, sb = quantize_multiplier(ops[1][1] / twice)
        my, sy = quantize_multiplier(twice / ((1 << 20) * yq[0]))
        q = _i32([ops[0][2], ops[1][2], yq[1], ma, sa, mb, sb, my, sy, lo, hi])
        if fast.lower_add(self, name, ops, y, ys, q):
            return
        self.emit("add_s8", [ops[0][0], ops[1][0], ("out", y), ("int", int(np.prod(ys))),
                             ("int", len(ys)), ("const", _i32(ys)),
                             ("const", _i32(broadcast_strides(ops[0][3], ys) or [0])),
                             ("const", _i32(broadcast_strides(ops[1][3], ys) or [0])),
                             ("const", q)], name, "Add")

    def _q_elementwise(self, mnode, name, y, yq, lo, hi, x=None):
        if x is None:
            x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        else:
            x, x_s, x_zp = x
        same, m, sh = self._requant_params(x_s, x_zp, yq)
        self.emit("requant_s8", [("in", x), ("out", y), ("int", self.numel(y)), ("int", same),
                                 ("int", x_zp), ("int", yq[1]), ("int", m), ("int", sh),
                                 ("int", lo), ("int", hi)], name, mnode.op_type)

    def q_Relu(self, mnode, name, y, yq, lo, hi, _b):
        lo2, hi2 = act_range(0.0, None, *yq)
        self._q_elementwise(mnode, name, y, yq, max(lo, lo2), min(hi, hi2))

    def q_Clip(self, mnode, name, y, yq, lo, hi, _b):
        at = self.attrs(mnode)
        lf, hf = at.get("min"), at.get("max")
        if len(mnode.input) > 1 and mnode.input[1]:
            lf = float(self.const(mnode.input[1]))
        if len(mnode.input) > 2 and mnode.input[2]:
            hf = float(self.const(mnode.input[2]))
        lo2, hi2 = act_range(lf, hf, *yq)
        self._q_elementwise(mnode, name, y, yq, max(lo, lo2), min(hi, hi2))

    def q_Transpose(self, mnode, name, y, yq, lo, hi, _b):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        xs = self.shape(x)
        perm = self.attrs(mnode).get("perm", list(range(len(xs)))[::-1])
        st = _strides(xs)
        self._copy(mnode, name, x, y, [xs[p] for p in perm], [st[p] for p in perm])
        self._finish_move(mnode, name, y, yq, lo, hi, x_s, x_zp)

    def _finish_move(self, mnode, name, y, yq, lo, hi, x_s, x_zp):
        same, m, sh = self._requant_params(x_s, x_zp, yq)
        if not same or lo > -128 or hi < 127:
            self.emit("requant_s8", [("in", y), ("out", y), ("int", self.numel(y)), ("int", same),
                                     ("int", x_zp), ("int", yq[1]), ("int", m), ("int", sh),
                                     ("int", lo), ("int", hi)], name, mnode.op_type)

    def _q_reshape(self, mnode, name, y, yq, lo, hi, _b):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        self._q_elementwise(mnode, name, y, yq, lo, hi, (x, x_s, x_zp))

    q_Reshape = q_Flatten = q_Squeeze = q_Unsqueeze = q_Identity = _q_reshape

    def q_Pad(self, mnode, name, y, yq, lo, hi, _b):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        at = self.attrs(mnode)
        value = at.get("value", 0.0)
        if len(mnode.input) > 2 and mnode.input[2]:
            value = float(self.const(mnode.input[2]).ravel()[0])
        qv = int(np.clip(_round_away(value / x_s) + x_zp, -128, 127))
        fake = onnx.NodeProto()
        fake.CopyFrom(mnode)
        fake.input[0] = x
        if len(fake.input) > 2:
            fake.input[2] = ""
        fake.output[0] = y
        self.op_Pad(fake, name, value=qv)
        self._finish_move(mnode, name, y, yq, lo, hi, x_s, x_zp)

    def q_Concat(self, mnode, name, y, yq, lo, hi, _b):
        ys = self.shape(y)
        axis = self.attrs(mnode)["axis"] % len(ys)
        outer = int(np.prod(ys[:axis]))
        inner = int(np.prod(ys[axis + 1:]))
        off = 0
        for t in mnode.input:
            x, x_s, x_zp = self._act_in(mnode, name, t)
            if not self._requant_params(x_s, x_zp, yq)[0]:
                self.unsupported(mnode, name, "int8 Concat inputs must share the output's scale "
                                 "and zero point")
            xb = self.shape(x)[axis] * inner
            self.emit("concat", [("in", x), ("out", y), ("int", outer), ("int", xb),
                                 ("int", ys[axis] * inner), ("int", off)], name, "Concat")
            off += xb
        if lo > -128 or hi < 127:
            self.emit("requant_s8", [("in", y), ("out", y), ("int", self.numel(y)), ("int", 1),
                                     ("int", 0), ("int", 0), ("int", 0), ("int", 0), ("int", lo),
                                     ("int", hi)], name, "Concat")

    def _q_logistic(self, mnode, name, y, yq, is_tanh):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        want = (1 / 128, 0) if is_tanh else (1 / 256, -128)
        if not (np.float32(yq[0]) == np.float32(want[0]) and yq[1] == want[1]):
            self.unsupported(mnode, name, f"int8 {mnode.op_type} needs output scale 1/"
                             f"{round(1 / want[0])} and zero point {want[1]} (TFLite's)")
        mult, lshift, radius = logistic_params(x_s)
        self.emit("logistic_s8", [("in", x), ("out", y), ("int", self.numel(y)), ("int", x_zp),
                                  ("int", mult), ("int", lshift), ("int", radius),
                                  ("int", int(is_tanh))], name, mnode.op_type)

    def q_Sigmoid(self, mnode, name, y, yq, lo, hi, _b):
        self._q_logistic(mnode, name, y, yq, False)

    def q_Tanh(self, mnode, name, y, yq, lo, hi, _b):
        self._q_logistic(mnode, name, y, yq, True)

    def q_Softmax(self, mnode, name, y, yq, lo, hi, _b):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        xs = self.shape(x)
        axis = self.attrs(mnode).get("axis", -1 if self._opset() >= 13 else 1) % len(xs)
        if axis != len(xs) - 1:
            self.unsupported(mnode, name, "int8 Softmax only over the last axis")
        tflm = int(np.float32(yq[0]) == np.float32(1 / 256) and yq[1] == -128)
        ym, ysh = quantize_multiplier(1.0 / (float(yq[0]) * (1 << 31)))
        mult, lshift, diff_min = softmax_params(x_s)
        N = xs[-1]
        self.emit("softmax_s8", [("in", x), ("out", y), ("int", self.numel(x) // N), ("int", N),
                                 ("int", mult), ("int", lshift), ("int", diff_min), ("int", tflm),
                                 ("int", yq[1]), ("int", ym), ("int", ysh)], name, "Softmax")


def logistic_params(input_scale: float, integer_bits: int = 4):
    """TFLite's int8 LOGISTIC/TANH preparation: multiplier, left shift and input radius."""
    real = float(input_scale) * float(1 << (31 - integer_bits))
    q, left_shift = math.frexp(real)
    mult = int(_round_away(q * (1 << 31)))
    radius = ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift) \
        if left_shift >= 0 else ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) * 2.0 ** -left_shift
    return mult, left_shift, int(math.floor(radius))


def softmax_params(input_scale: float, beta: float = 1.0, integer_bits: int = 5):
    """TFLite's PreprocessSoftmaxScaling and CalculateInputRadius for an int8 softmax."""
    real = min(beta * input_scale * (1 << (31 - integer_bits)), (1 << 31) - 1.0)
    q, shift = quantize_multiplier(real)     # QuantizeMultiplierGreaterThanOne
    left_shift = shift
    radius = ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift)
    diff_min = -int(math.floor(radius))
    return q, left_shift, diff_min


def lower(model: onnx.ModelProto) -> Lowered:
    return Lowerer(model).run()

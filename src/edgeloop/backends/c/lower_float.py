"""Float operators (and integer data movement): one ONNX node, one kernel call."""

from __future__ import annotations

import numpy as np
import onnx

from edgeloop.backends.c import fast, kernel_lib, registry
from edgeloop.backends.c.lower_base import (CTYPES, _i32, _strides, broadcast_strides, conv_geometry_args,
                                            ints)


class FloatOps:
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
        y = node.output[0]
        if scheme == "conv_pixels":
            self.emit("conv_f32_pw_ip", name, "Conv", x=("in", x), y=("out", y), w=("const", wv), b=b,
                      s=self._scratch_arg(), **ints(C=xs[1], hw=g["H"] * g["W"], M=ys[1]))
            return
        geom = conv_geometry_args(xs[1], ys[1], g, G)
        if scheme == "conv_groups":
            self.emit("conv_f32_grp_ip", name, "Conv", x=("in", x), y=("out", y), w=("const", wv),
                      b=b, s=self._scratch_arg(), **geom)
            return
        for n in range(N):
            self.emit("conv_f32", name, "Conv", x=("in", x, n * int(np.prod(xs[1:]))),
                      y=("out", y, n * int(np.prod(ys[1:]))), w=("const", wv), b=b, **geom)

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
        carg = ("null",)
        c_ms = c_ns = 0
        if c is not None:
            cv = (self.const(c).astype(np.float32) * np.float32(beta)).astype(np.float32)
            cv = np.broadcast_to(cv, (M, N)) if cv.ndim <= 2 else None
            if cv is None:
                self.unsupported(node, name, "Gemm bias must broadcast to [M, N]")
            carg = ("const", np.ascontiguousarray(cv))
            c_ms, c_ns = N, 1
        self.emit("matmul_f32", name, node.op_type, a=self.operand(a, np.float32),
                  b=self.operand(b, np.float32), c=carg, y=("out", y), alpha=("float", float(alpha)),
                  **ints(batch=batch, M=M, K=K, N=N, a_bs=bstride(ash), a_ms=a_ms, a_ks=a_ks,
                         b_bs=bstride(bsh), b_ks=b_ks, b_ns=b_ns, c_ms=c_ms, c_ns=c_ns))

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

    def lower_binary(self, node, name):
        """Add, Sub, Mul, Div, Max, Min: one broadcasting kernel, the registry's code."""
        if len(node.input) != 2:
            self.unsupported(node, name, f"{node.op_type} with {len(node.input)} inputs is not supported")
        # Pow's exponent may be an integer constant (its value is baked in as float)
        checked = [t for t in node.input[:2] if not (node.op_type == "Pow" and t == node.input[1]
                                                     and self.is_static(t))]
        self._check_float(node, name, checked + [node.output[0]])
        y = node.output[0]
        ys = self.shape(y)
        ops, strides = [], []
        for t in node.input[:2]:
            ts = self.const(t).shape if self.is_static(t) else self.shape(t)
            ops.append(self.operand(t, np.float32))
            strides.append(broadcast_strides(ts, ys))
        shape = list(ys) or [1]
        self.emit("binary_f32", name, node.op_type, a=ops[0], b=ops[1], y=("out", y),
                  shape=("const", _i32(shape)), a_strides=("const", _i32(strides[0] or [0])),
                  b_strides=("const", _i32(strides[1] or [0])),
                  **ints(op=registry.code(self.impl), n=int(np.prod(shape)), ndim=len(shape)))

    def _unary(self, node, name, p0=0.0, p1=0.0):
        self._check_float(node, name, [node.input[0], node.output[0]])
        self.emit("unary_f32", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  p0=("float", float(p0)), p1=("float", float(p1)),
                  **ints(n=self.numel(node.output[0]), op=registry.code(self.impl)))

    def lower_unary(self, node, name):
        """Element-wise float functions; the registry gives the code and the attributes
        passed as p0, p1 (with their ONNX defaults)."""
        at = self.attrs(node)
        self._unary(node, name, *(at.get(k, d) for k, d in self.impl.params))

    def op_Clip(self, node, name):
        at = self.attrs(node)
        lo, hi = at.get("min", -np.inf), at.get("max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const(node.input[1]))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const(node.input[2]))
        self._unary(node, name, lo, hi)

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
        self.emit("pool_f32", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  **ints(NC=NC, H=g["H"], W=g["W"], OH=g["OH"], OW=g["OW"], KH=g["KH"], KW=g["KW"],
                         SH=g["SH"], SW=g["SW"], PT=g["PT"], PL=g["PL"], PB=g["PB"], PR=g["PR"],
                         DH=g["DH"], DW=g["DW"], is_max=int(is_max),
                         include_pad=int(at.get("count_include_pad", 0))))

    def op_pool(self, node, name):
        """MaxPool and AveragePool."""
        self._pool(node, name, node.op_type == "MaxPool")

    def _reduce_call(self, node, name, x, y, axes):
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
        self.emit("reduce_f32", name, node.op_type, x=("in", x), y=("out", y),
                  **ints(outer=outer, R=R, inner=inner, op=registry.code(self.impl)))

    def op_GlobalAveragePool(self, node, name):
        """GlobalAveragePool and GlobalMaxPool: a reduction over the spatial axes."""
        self._check_float(node, name, [node.input[0]])
        self._reduce_call(node, name, node.input[0], node.output[0],
                          list(range(2, len(self.shape(node.input[0])))))

    def op_Reduce(self, node, name):
        """ReduceMean, ReduceSum, ReduceMax, ReduceMin (the registry gives the code)."""
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        axes = at.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.const(node.input[1]).ravel()]
        if axes is not None and len(axes) == 0:
            axes = None
            if at.get("noop_with_empty_axes", 0):
                axes = []
        self._reduce_call(node, name, node.input[0], node.output[0], axes)

    def _softmax(self, node, name, log):
        self._check_float(node, name, [node.input[0]])
        xs = self.shape(node.input[0])
        opset = self._opset()
        axis = self.attrs(node).get("axis", -1 if opset >= 13 else 1) % max(len(xs), 1)
        if opset >= 13:
            outer, N, inner = int(np.prod(xs[:axis])), xs[axis], int(np.prod(xs[axis + 1:]))
        else:  # coerced to 2-D at axis
            outer, N, inner = int(np.prod(xs[:axis])), int(np.prod(xs[axis:])), 1
        self.emit("softmax_f32", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  **ints(outer=outer, N=N, inner=inner, log_out=int(log)))

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
        self.emit("batchnorm_f32", name, node.op_type, x=("in", node.input[0]),
                  y=("out", node.output[0]), s=("const", s.astype(np.float32)),
                  t=("const", t.astype(np.float32)),
                  **ints(N=xs[0], C=xs[1] if len(xs) > 1 else 1, HW=int(np.prod(xs[2:]))))

    def _esize(self, t):
        return np.dtype(self.dtype(t)).itemsize

    def _copy(self, node, name, x, y, shape, strides, x0=0):
        shape = list(shape) or [1]
        strides = list(strides) or [0]
        fast.lower_copy(self, name, node.op_type, x, y, shape, strides, x0)
        self.emit("copy_nd", name, node.op_type, x=self.operand(x), y=("out", y),
                  shape=("const", _i32(shape)), strides=("const", _i32(strides)),
                  **ints(esize=self._esize(y), n=int(np.prod(shape)), ndim=len(shape), x0=x0))

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
                self.emit("concat", name, "Concat", x=self.operand(t), y=("out", y),
                          **ints(outer=outer, xbytes=xb, ybytes=ys[axis] * inner * es, offset=off))
            off += xb

    def op_Pad(self, node, name, value=None):
        at = self.attrs(node)
        mode = at.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        codes = {k.lower(): v for k, v in kernel_lib.enum("pad_nd", "EL_PAD_").items()}
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
        self.emit("pad_nd", name, "Pad", x=self.operand(node.input[0]), y=("out", node.output[0]),
                  oshape=("const", _i32(ys)), ishape=("const", _i32(xs)),
                  before=("const", _i32(pads[:r])), value=("const", val),
                  **ints(esize=np.dtype(dt).itemsize, n=self.numel(node.output[0]), ndim=r,
                         mode=codes[mode]))

    def _argm(self, node, name, is_min):
        self._check_float(node, name, [node.input[0]])
        at = self.attrs(node)
        xs = self.shape(node.input[0])
        ax = at.get("axis", 0) % len(xs)
        self.emit("argmax_f32", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  **ints(outer=int(np.prod(xs[:ax])), N=xs[ax], inner=int(np.prod(xs[ax + 1:])),
                         is_min=int(is_min), last=int(at.get("select_last_index", 0))))

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
        self.emit("gather", name, node.op_type, x=self.operand(data), idx=idx_arg, y=("out", y),
                  **ints(esize=self._esize(y), outer=int(np.prod(ds[:axis])), N=ds[axis],
                         inner=int(np.prod(ds[axis + 1:])), K=K))

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
        self.emit("cast:" + src + ":" + dst, name, "Cast", x=("in", node.input[0]),
                  y=("out", node.output[0]), n=("int", self.numel(node.output[0])))

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
        self.emit("quantize_s8", name, node.op_type, x=("in", node.input[0]), y=("out", node.output[0]),
                  scale=("float", s), **ints(n=self.numel(node.output[0]), zp=z))

    def op_DequantizeLinear(self, node, name):
        s, z, zdt = self._qparams(node, name)
        if self.dtype(node.input[0]) != "int8":
            self.unsupported(node, name, "only int8 -> float32 DequantizeLinear is supported")
        self.emit("dequantize_s8", name, node.op_type, x=("in", node.input[0]),
                  y=("out", node.output[0]), scale=("float", s),
                  **ints(n=self.numel(node.output[0]), zp=z))


    # -- Resize, ConvTranspose, DepthToSpace / SpaceToDepth, Split ------------------------
    def _resize_plan(self, node, name, x, y):
        """What a Resize does to the last two axes: (mode, outer, H, W, OH, OW, rows, cols)
        with ``rows``/``cols`` from :func:`resize_axis` (onnxruntime's coordinates)."""
        at = self.attrs(node)
        text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in at.items()}
        mode = text.get("mode", "nearest")
        opset = self._opset()
        coord = text.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
        nearest = text.get("nearest_mode", "round_prefer_floor" if opset >= 11 else "simple")
        if mode not in ("nearest", "linear"):
            self.unsupported(node, name, f"Resize mode '{mode}' is not supported (nearest and "
                             "linear only)")
        if coord not in RESIZE_COORDS:
            self.unsupported(node, name, f"Resize coordinate_transformation_mode '{coord}' is not "
                             f"supported ({', '.join(RESIZE_COORDS)})")
        if at.get("antialias", 0) or "axes" in at:
            self.unsupported(node, name, "Resize with antialias or axes is not supported")
        xs, ys = self.shape(x), self.shape(y)
        r = len(xs)
        inputs = list(node.input) + [""] * 4
        scales_t, sizes_t = (inputs[1], "") if opset < 11 else (inputs[2], inputs[3])
        scales = None
        if sizes_t and self.const(sizes_t).size:
            sizes = self.const(sizes_t).astype(np.int64).ravel()
            scales = [np.float32(o) / np.float32(i) for o, i in zip(sizes, xs)]
        elif scales_t and self.const(scales_t).size:
            scales = [np.float32(s) for s in self.const(scales_t).astype(np.float32).ravel()]
        if scales is None or len(scales) != r or r < 2:
            self.unsupported(node, name, "Resize needs constant scales or sizes for every axis "
                             "of a tensor of rank 2 or more")
        if any(xs[k] != ys[k] or scales[k] != 1 for k in range(r - 2)):
            self.unsupported(node, name, "Resize of other axes than the last two is not supported")
        rows = resize_axis(mode, coord, nearest, xs[-2], ys[-2], scales[-2])
        cols = resize_axis(mode, coord, nearest, xs[-1], ys[-1], scales[-1])
        outer = int(np.prod(xs[:-2], dtype=np.int64))
        return mode, outer, xs[-2], xs[-1], ys[-2], ys[-1], rows, cols

    def op_Resize(self, node, name):
        x, y = node.input[0], node.output[0]
        mode, outer, H, W, OH, OW, rows, cols = self._resize_plan(node, name, x, y)
        if mode == "nearest":   # data movement: any element type
            self.emit("resize_nearest", name, "Resize", x=("in", x), y=("out", y),
                      iy=("const", rows), ix=("const", cols),
                      **ints(esize=self._esize(y), outer=outer, H=H, W=W, OH=OH, OW=OW))
            return
        self._check_float(node, name, [x, y])
        f32 = [np.asarray(a, np.float32) for a in (rows[2], rows[3], cols[2], cols[3])]
        self.emit("resize_linear_f32", name, "Resize", x=("in", x), y=("out", y),
                  y0=("const", rows[0]), y1=("const", rows[1]), wy0=("const", f32[0]),
                  wy1=("const", f32[1]), x0=("const", cols[0]), x1=("const", cols[1]),
                  wx0=("const", f32[2]), wx1=("const", f32[3]),
                  **ints(outer=outer, H=H, W=W, OH=OH, OW=OW))

    def _convtranspose_geometry(self, node, name, xs, wshape, ys):
        """ConvTranspose's geometry as the kernels take it (2-D; 1-D as H = 1)."""
        at = self.attrs(node)
        nd = len(xs) - 2
        if nd not in (1, 2):
            self.unsupported(node, name, f"{nd}-D transposed convolution is not supported "
                             "(1-D and 2-D only)")
        ks = list(wshape[2:])
        strides = list(at.get("strides", [1] * nd))
        dil = list(at.get("dilations", [1] * nd))
        pads = list(at.get("pads", [0] * (2 * nd)))
        auto = at.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto != "NOTSET" or "output_shape" in at:
            # the padding that makes the inferred output size (onnxruntime's rule: SAME_UPPER
            # puts the larger half at the end)
            outp = list(at.get("output_padding", [0] * nd))
            pads = [0] * (2 * nd)
            for i in range(nd):
                total = max(0, strides[i] * (xs[2 + i] - 1) + outp[i] + (ks[i] - 1) * dil[i] + 1
                            - ys[2 + i])
                if auto == "VALID":
                    total = 0
                small, big = total // 2, total - total // 2
                pads[i], pads[i + nd] = (big, small) if auto == "SAME_LOWER" else (small, big)
        if nd == 1:
            ks, strides, dil, pads = [1] + ks, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
            xs, ys = (xs[0], xs[1], 1, xs[2]), (ys[0], ys[1], 1, ys[2])
        G = int(at.get("group", 1))
        return ints(C=xs[1], H=xs[2], W=xs[3], M=ys[1], OH=ys[2], OW=ys[3], KH=ks[0], KW=ks[1],
                    SH=strides[0], SW=strides[1], PT=pads[0], PL=pads[1], DH=dil[0], DW=dil[1],
                    G=G)

    def op_ConvTranspose(self, node, name):
        x, w, y = node.input[0], node.input[1], node.output[0]
        self._check_float(node, name, [x, y])
        if not self.is_static(w):
            self.unsupported(node, name, "transposed convolution weights must be constant")
        wv = self.const(w).astype(np.float32)
        xs, ys = self.shape(x), self.shape(y)
        geom = self._convtranspose_geometry(node, name, xs, wv.shape, ys)
        b = (("const", self.const(node.input[2]).astype(np.float32))
             if len(node.input) > 2 and node.input[2] else ("null",))
        xn, yn = int(np.prod(xs[1:])), int(np.prod(ys[1:]))
        for n in range(xs[0]):
            self.emit("convtranspose_f32", name, "ConvTranspose", x=("in", x, n * xn),
                      y=("out", y, n * yn), w=("const", wv), b=b, **geom)

    def _space_depth_view(self, node, name, x, to_space):
        """(shape, strides) of a copy_nd that does DepthToSpace (``to_space``) or
        SpaceToDepth: the output seen as 6-D, each axis' stride in the input."""
        at = self.attrs(node)
        bs = int(at["blocksize"])
        mode = at.get("mode", b"DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        xs = self.shape(x)
        if mode not in ("DCR", "CRD"):
            self.unsupported(node, name, f"{node.op_type} mode '{mode}' is not supported")
        if len(xs) != 4:
            self.unsupported(node, name, f"{node.op_type} needs a 4-D tensor")
        N, C, H, W = xs
        if to_space:
            c = C // (bs * bs)
            # y[n, k, h*bs + i, w*bs + j] = x[n, ch, h, w] with ch = (i*bs + j)*c + k (DCR)
            # or k*bs*bs + i*bs + j (CRD); the output as [N, c, H, bs, W, bs]
            ck, ci, cj = (H * W, bs * c * H * W, c * H * W) if mode == "DCR" else \
                (bs * bs * H * W, bs * H * W, H * W)
            return [N, c, H, bs, W, bs], [C * H * W, ck, W, ci, 1, cj]
        # y[n, (i*bs + j)*C + k, h, w] = x[n, k, h*bs + i, w*bs + j] (DCR: the output as
        # [N, bs, bs, C, H/bs, W/bs]) or y[n, k*bs*bs + i*bs + j, h, w] (CRD: [N, C, bs, bs, ...])
        if mode == "DCR":
            return [N, bs, bs, C, H // bs, W // bs], [C * H * W, W, 1, H * W, bs * W, bs]
        return [N, C, bs, bs, H // bs, W // bs], [C * H * W, H * W, W, 1, bs * W, bs]

    def op_DepthToSpace(self, node, name):
        shape, strides = self._space_depth_view(node, name, node.input[0], True)
        self._copy(node, name, node.input[0], node.output[0], shape, strides)

    def op_SpaceToDepth(self, node, name):
        shape, strides = self._space_depth_view(node, name, node.input[0], False)
        self._copy(node, name, node.input[0], node.output[0], shape, strides)

    def op_Split(self, node, name):
        x = node.input[0]
        xs = self.shape(x)
        axis = self.attrs(node).get("axis", 0) % len(xs)
        st = _strides(xs)
        off = 0
        for out in node.output:
            n = self.shape(out)[axis] if out else 0
            if out and n:
                self._copy(node, name, x, out, self.shape(out), st, off * st[axis])
            off += n


RESIZE_COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                 "tf_half_pixel_for_nn")


def _resize_coordinate(coord, out_len, in_len, scale):
    """The input coordinate of every output index, in float32 as onnxruntime computes it
    (upsamplebase.h, get_original_coordinate)."""
    f = np.float32
    xr = np.arange(out_len, dtype=np.float32)
    s = f(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        if coord == "half_pixel":
            return (xr + f(0.5)) / s - f(0.5)
        if coord == "pytorch_half_pixel":
            return (xr + f(0.5)) / s - f(0.5) if out_len > 1 else np.zeros(out_len, np.float32)
        if coord == "tf_half_pixel_for_nn":
            return (xr + f(0.5)) / s
        if coord == "align_corners":
            if out_len == 1:
                return np.zeros(1, np.float32)
            return xr * f(in_len - 1) / f(out_len - 1)
        return xr / s   # asymmetric


def resize_axis(mode, coord, nearest_mode, in_len, out_len, scale):
    """onnxruntime's source indices (and weights) along one resized axis.

    nearest: int32 input index per output index (get_nearest_pixel, clamped to the axis);
    linear: (i0, i1, w0, w1), the two input indices and their weights (float64 copies of
    the float32 values onnxruntime uses), as SetupUpsampleBilinear: the coordinate clamped
    to [0, in - 1], i1 = min(i0 + 1, in - 1), equal halves where i0 == i1.
    """
    f = np.float32
    if mode == "linear":
        c = (np.arange(out_len, dtype=np.float32) if f(scale) == 1
             else _resize_coordinate(coord, out_len, in_len, scale))
        c = np.clip(c, f(0), f(in_len - 1)).astype(np.float32)
        i0 = np.minimum(c.astype(np.int32), in_len - 1)
        i1 = np.minimum(i0 + 1, in_len - 1)
        w1 = np.abs(c - i0.astype(np.float32))   # onnxruntime's dx1: the weight of i1
        w0 = np.abs(c - i1.astype(np.float32))   # dx2: the weight of i0
        same = i0 == i1
        w0[same] = w1[same] = f(0.5)
        return i0.astype(np.int32), i1.astype(np.int32), w0.astype(np.float32), w1.astype(np.float32)
    c = _resize_coordinate(coord, out_len, in_len, scale)
    c = c.astype(np.float64)   # exact: the rounding below must not round again
    away = np.sign(c) * np.floor(np.abs(c) + 0.5)        # std::round: ties away from zero
    if nearest_mode == "round_prefer_floor":
        idx = np.where(c == np.trunc(c) + 0.5, np.floor(c), away)
    elif nearest_mode == "round_prefer_ceil":
        idx = away
    elif nearest_mode == "floor":
        idx = np.floor(c)
    elif nearest_mode == "ceil":
        idx = np.ceil(c)
    else:   # "simple" (Resize-10): ceil when shrinking, truncation when growing
        idx = np.ceil(c) if f(scale) < 1 else np.trunc(c)
    return np.clip(np.nan_to_num(idx), 0, in_len - 1).astype(np.int32)

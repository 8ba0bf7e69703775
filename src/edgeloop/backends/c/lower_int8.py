"""int8 QDQ kernels: TFLite-Micro-exact integer arithmetic for one QDQ sandwich."""

from __future__ import annotations

import numpy as np
import onnx

from edgeloop.backends.c import fast, registry
from edgeloop.backends.c.fixedpoint import (_round_away, act_range, logistic_params,
                                            quantize_multiplier, softmax_params)
from edgeloop.backends.c.lower_base import (_i32, _strides, broadcast_strides, conv_geometry_args,
                                            ints)
from edgeloop.errors import EdgeloopError, UnsupportedOperatorError


class Int8Ops:
    def lower_kernel(self, s):
        if s.residual is not None:
            return self._lower_residual(s)
        mnode, name, y, yq, lo, hi, bias_add = self._kernel_parts(s)
        self.impl = registry.int8_impl(mnode.op_type, mnode.domain)
        if self.impl is None:   # the analysis forms kernels from the registry only
            raise UnsupportedOperatorError(
                f"the C backend has no int8 kernel for {mnode.op_type}", node=name, op=mnode.op_type)
        getattr(self, self.impl.lower)(mnode, name, y, yq, lo, hi, bias_add)

    def _lower_residual(self, s):
        """A convolution and the residual Add after it as one call (conv_s8_res), writing
        over the skip tensor (the analysis' _fuse_residual decided it)."""
        r = s.residual
        amain, aname, ay, ayq, alo, ahi, _ = self._kernel_parts(r.add)
        ops, q = self._add_quant(amain, aname, ayq, alo, ahi)
        srcs = [self._dq_of(t)[0] for t in amain.input[:2]]
        if srcs[0] != r.c:   # the kernel adds (conv output, skip): swap the operands' halves
            q = q[[1, 0, 2, 5, 6, 3, 4, 7, 8, 9, 10]]
        self.residual = dict(y=("out", ay), r=("in", r.skip), q=("const", q),
                             s=self._scratch_arg())
        try:
            mnode, name, y, yq, lo, hi, bias_add = self._kernel_parts(r.conv)
            self.impl = registry.int8_impl("Conv")
            self.q_Conv(mnode, name, y, yq, lo, hi, bias_add)
        finally:
            self.residual = None

    def _kernel_parts(self, s):
        """(main node, name, output, (scale, zp), lo, hi, bias Add constant) of a QDQ step."""
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
            elif n.op_type == "Add" and bias_add is None:   # the analysis checked it is a bias
                bias_add = next(t for t in n.input if t != cur and self.is_static(t))
            else:
                self.unsupported(n, node_name(n, i), f"{n.op_type} after {mnode.op_type} inside an "
                                 "int8 kernel is not supported")
            cur = n.output[0]
        lo, hi = act_range(lo_f, hi_f, y_s, y_zp)
        return mnode, name, y, (y_s, y_zp), lo, hi, bias_add

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
        # a fast kernel for DSP cores (backends/c/fast.py), paired with the generic call below
        fast.lower_conv(self, name, x, y, w, bias, mult, shift, xs, ys, g, G, scheme, x_zp, yq[1],
                        lo, hi)
        common = dict(w=("const", np.ascontiguousarray(w)), b=bias, mult=("const", mult),
                      shift=("const", shift), **ints(x_zp=x_zp, y_zp=yq[1], lo=lo, hi=hi))
        if scheme == "conv_pixels":
            self.emit("conv_s8_pw_ip", name, "Conv", x=("in", x), y=("out", y), s=self._scratch_arg(),
                      **common, **ints(C=xs[1], hw=g["H"] * g["W"], M=ys[1]))
            return
        geom = conv_geometry_args(xs[1], ys[1], g, G)
        if self.residual is not None:
            if xs[0] != 1:
                raise EdgeloopError(f"internal: residual fusion of '{name}' with batch {xs[0]}")
            res = dict(common)
            res["c_zp"] = res.pop("y_zp")     # the conv's own output quantization
            self.emit("conv_s8_res", name, "Conv+Add", x=("in", x), **res, **geom, **self.residual)
            return
        if scheme == "conv_groups":
            self.emit("conv_s8_grp_ip", name, "Conv", x=("in", x), y=("out", y), s=self._scratch_arg(),
                      **common, **geom)
            return
        for n in range(xs[0]):
            self.emit("conv_s8", name, "Conv", x=("in", x, n * int(np.prod(xs[1:]))),
                      y=("out", y, n * int(np.prod(ys[1:]))), **common, **geom)

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
        fast.lower_fc(self, name, x, y, wn, bias, mult, shift, per, M, K, N, yq[1], lo, hi)
        self.emit("fc_s8", name, mnode.op_type, x=("in", x), y=("out", y),
                  w=("const", np.ascontiguousarray(wn)), b=bias, mult=("const", mult),
                  shift=("const", shift),
                  **ints(per_channel=per, M=M, K=K, N=N, y_zp=yq[1], lo=lo, hi=hi))

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

    def _mean_params(self, x_s, yq, n):
        """TFLite's integer Mean (QuantizedMeanOrSum): QuantizeMultiplier(x_scale / y_scale)
        with 1/n folded in (n's bit length as extra shift, capped so the shift stays >= -31)."""
        m, sh = quantize_multiplier(float(x_s) / float(yq[0]))
        extra = min(int(n).bit_length() - 1, 32, 31 + sh)   # >= 0: quantize_multiplier's sh >= -31
        return (m << extra) // int(n), sh - extra

    def _qpool(self, mnode, name, y, yq, lo, hi, mode, geom=None):
        """mode 0 AveragePool (TFLM's AVERAGE_POOL_2D: divide, then requantize), 1 MaxPool,
        2 mean over the whole window (GlobalAveragePool, ReduceMean: TFLite's integer Mean)."""
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        xs, ys = self.shape(x), self.shape(y)
        if geom is None:
            at = self.attrs(mnode)
            if at.get("ceil_mode", 0) or any(d != 1 for d in at.get("dilations", [1, 1])):
                self.unsupported(mnode, name, "int8 pooling with ceil_mode or dilations")
            if mode == 0 and at.get("count_include_pad", 0) and any(at.get("pads", [0])):
                self.unsupported(mnode, name, "int8 average pooling with count_include_pad")
            geom = self._conv_geometry(mnode, name, xs, None, ys)
        g = geom
        if mode == 2:
            same, (m, sh) = 0, self._mean_params(x_s, yq, g["KH"] * g["KW"])
        else:
            same, m, sh = self._requant_params(x_s, x_zp, yq)
        self.emit("pool_s8", name, mnode.op_type, x=("in", x), y=("out", y),
                  **ints(NC=xs[0] * xs[1], H=g["H"], W=g["W"], OH=g["OH"], OW=g["OW"], KH=g["KH"],
                         KW=g["KW"], SH=g["SH"], SW=g["SW"], PT=g["PT"], PL=g["PL"],
                         mode=mode, same_q=same, x_zp=x_zp, y_zp=yq[1], mult=m, shift=sh,
                         lo=lo, hi=hi))

    def q_pool(self, mnode, name, y, yq, lo, hi, _b):
        """MaxPool and AveragePool."""
        self._qpool(mnode, name, y, yq, lo, hi, int(mnode.op_type == "MaxPool"))

    def _global(self, mnode, name, y, yq, lo, hi, is_max):
        xs = self.shape(mnode.input[0])
        if len(xs) != 4:
            self.unsupported(mnode, name, "int8 global pooling needs a 4-D input")
        g = dict(H=xs[2], W=xs[3], OH=1, OW=1, KH=xs[2], KW=xs[3], SH=1, SW=1, PT=0, PL=0)
        self._qpool(mnode, name, y, yq, lo, hi, 1 if is_max else 2, g)

    def q_global_pool(self, mnode, name, y, yq, lo, hi, _b):
        """GlobalAveragePool and GlobalMaxPool."""
        self._global(mnode, name, y, yq, lo, hi, mnode.op_type == "GlobalMaxPool")

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
        ops, q = self._add_quant(mnode, name, yq, lo, hi)
        ys = list(self.shape(y)) or [1]
        fast.lower_add(self, name, ops, y, ys, q)
        self.emit("add_s8", name, "Add", a=ops[0][0], b=ops[1][0], y=("out", y),
                  shape=("const", _i32(ys)),
                  a_strides=("const", _i32(broadcast_strides(ops[0][3], ys) or [0])),
                  b_strides=("const", _i32(broadcast_strides(ops[1][3], ys) or [0])), q=("const", q),
                  **ints(n=int(np.prod(ys)), ndim=len(ys)))

    def _add_quant(self, mnode, name, yq, lo, hi):
        """The operands (arg, scale, zp, shape) of an int8 Add and its parameter array."""
        ops = []
        for t in mnode.input[:2]:
            d = self._dq_of(t)
            if d is None or d[1].size != 1 or (self.is_static(d[0]) and self.const(d[0]).dtype != np.int8):
                self.unsupported(mnode, name, "int8 Add operands must be per-tensor int8")
            src, s, z, _ = d
            shape = self.const(src).shape if self.is_static(src) else self.shape(src)
            ops.append((self.operand(src), float(s.ravel()[0]), int(z.ravel()[0]), shape))
        twice = 2 * max(ops[0][1], ops[1][1])
        ma, sa = quantize_multiplier(ops[0][1] / twice)
        mb, sb = quantize_multiplier(ops[1][1] / twice)
        my, sy = quantize_multiplier(twice / ((1 << 20) * yq[0]))
        return ops, _i32([ops[0][2], ops[1][2], yq[1], ma, sa, mb, sb, my, sy, lo, hi])

    def _q_elementwise(self, mnode, name, y, yq, lo, hi, x=None):
        if x is None:
            x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        else:
            x, x_s, x_zp = x
        same, m, sh = self._requant_params(x_s, x_zp, yq)
        self._requant(name, mnode.op_type, x, y, same, x_zp, yq[1], m, sh, lo, hi)

    def _requant(self, name, op, x, y, same_q, x_zp, y_zp, mult, shift, lo, hi):
        self.emit("requant_s8", name, op, x=("in", x), y=("out", y),
                  **ints(n=self.numel(y), same_q=same_q, x_zp=x_zp, y_zp=y_zp, mult=mult,
                         shift=shift, lo=lo, hi=hi))

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
            self._requant(name, mnode.op_type, y, y, same, x_zp, yq[1], m, sh, lo, hi)

    def q_reshape(self, mnode, name, y, yq, lo, hi, _b):
        """Reshape-like ops (and DequantizeLinear -> QuantizeLinear) with new quantization."""
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        self._q_elementwise(mnode, name, y, yq, lo, hi, (x, x_s, x_zp))


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
            self.emit("concat", name, "Concat", x=("in", x), y=("out", y),
                      **ints(outer=outer, xbytes=xb, ybytes=ys[axis] * inner, offset=off))
            off += xb
        if lo > -128 or hi < 127:
            self._requant(name, "Concat", y, y, 1, 0, 0, 0, 0, lo, hi)

    def _q_logistic(self, mnode, name, y, yq, is_tanh):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        want = (1 / 128, 0) if is_tanh else (1 / 256, -128)
        if not (np.float32(yq[0]) == np.float32(want[0]) and yq[1] == want[1]):
            # another output quantization than TFLite's (e.g. onnxruntime's calibrated one):
            # the function as a table
            return self.q_lut(mnode, name, y, yq, -128, 127, None)
        mult, lshift, radius = logistic_params(x_s)
        self.emit("logistic_s8", name, mnode.op_type, x=("in", x), y=("out", y),
                  **ints(n=self.numel(y), x_zp=x_zp, mult=mult, left_shift=lshift, radius=radius,
                         is_tanh=int(is_tanh)))

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
        self.emit("softmax_s8", name, "Softmax", x=("in", x), y=("out", y),
                  **ints(outer=self.numel(x) // N, N=N, mult=mult, left_shift=lshift,
                         diff_min=diff_min, tflm=tflm, y_zp=yq[1], y_mult=ym, y_shift=ysh))


    # -- Resize, PRelu, ConvTranspose, DepthToSpace / SpaceToDepth, table functions -------
    def q_Resize(self, mnode, name, y, yq, lo, hi, _b):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        mode, outer, H, W, OH, OW, rows, cols = self._resize_plan(mnode, name, x, y)
        geo = ints(outer=outer, H=H, W=W, OH=OH, OW=OW)
        if mode == "nearest":   # picking values, then the output's quantization
            self.emit("resize_nearest", name, "Resize", x=("in", x), y=("out", y),
                      iy=("const", rows), ix=("const", cols), **geo, **ints(esize=1))
            self._finish_move(mnode, name, y, yq, lo, hi, x_s, x_zp)
            return
        # Q10 weights (TFLite's integer bilinear resize), each pair summing to 1024
        (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = rows, cols
        qy1 = np.round(wy1.astype(np.float64) * 1024).astype(np.int32)
        qx1 = np.round(wx1.astype(np.float64) * 1024).astype(np.int32)
        m, sh = quantize_multiplier(float(x_s) / float(yq[0]) / float(1 << 20))
        self.emit("resize_linear_s8", name, "Resize", x=("in", x), y=("out", y),
                  y0=("const", y0), y1=("const", y1), wy0=("const", (1024 - qy1).astype(np.int32)),
                  wy1=("const", qy1), x0=("const", x0), x1=("const", x1),
                  wx0=("const", (1024 - qx1).astype(np.int32)), wx1=("const", qx1), **geo,
                  **ints(x_zp=x_zp, y_zp=yq[1], mult=m, shift=sh, lo=lo, hi=hi))

    def q_PRelu(self, mnode, name, y, yq, lo, hi, _b):
        """TFLite's int8 PRELU; a float slope is quantized per tensor, symmetric."""
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        slope = mnode.input[1]
        if not self.is_static(slope):
            self.unsupported(mnode, name, "int8 PRelu needs a constant slope")
        d = self._dq_of(slope)
        if d is not None and self.is_static(d[0]) and d[1].size == 1 and \
                self.const(d[0]).dtype == np.int8:
            a_q, a_s, a_zp = self.const(d[0]), float(d[1].ravel()[0]), int(d[2].ravel()[0])
        else:
            af = self.const(slope).astype(np.float64)
            a_s = float(np.max(np.abs(af))) / 127 if np.any(af) else 1.0
            a_q, a_zp = np.round(af / a_s).astype(np.int8), 0
        ys = list(self.shape(y)) or [1]
        mp, sp = quantize_multiplier(float(x_s) / float(yq[0]))
        mn, sn = quantize_multiplier(float(x_s) * a_s / float(yq[0]))
        self.emit("prelu_s8", name, "PRelu", x=("in", x), alpha=("const", a_q.astype(np.int8)),
                  y=("out", y), shape=("const", _i32(ys)),
                  a_strides=("const", _i32(broadcast_strides(a_q.shape, ys) or [0])),
                  **ints(n=int(np.prod(ys)), ndim=len(ys), x_zp=x_zp, a_zp=a_zp, y_zp=yq[1],
                         mult_pos=mp, shift_pos=sp, mult_neg=mn, shift_neg=sn, lo=lo, hi=hi))

    def q_ConvTranspose(self, mnode, name, y, yq, lo, hi, bias_add):
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        w, w_s, axis = self._weights(mnode, name, mnode.input[1])
        xs, ys = self.shape(x), self.shape(y)
        geom = self._convtranspose_geometry(mnode, name, xs, w.shape, ys)
        M, G = ys[1], geom["G"][1]
        if w_s.size not in (1, M) or (w_s.size > 1 and (axis % w.ndim != 1 or G != 1)):
            self.unsupported(mnode, name, "transposed conv weight scales must be per tensor or "
                             "per output channel (axis 1)")
        w_s = np.broadcast_to(w_s, (M,))
        b = mnode.input[2] if len(mnode.input) > 2 and mnode.input[2] else None
        bias = self._bias(mnode, name, b, x_s, w_s, M)
        mult, shift = self._mults(x_s, w_s, yq[0])
        xn, yn = int(np.prod(xs[1:])), int(np.prod(ys[1:]))
        for n in range(xs[0]):
            self.emit("convtranspose_s8", name, "ConvTranspose", x=("in", x, n * xn),
                      y=("out", y, n * yn), w=("const", np.ascontiguousarray(w)), b=bias,
                      mult=("const", mult), shift=("const", shift), **geom,
                      **ints(x_zp=x_zp, y_zp=yq[1], lo=lo, hi=hi))

    def q_space_depth(self, mnode, name, y, yq, lo, hi, _b):
        """DepthToSpace and SpaceToDepth: moving int8 values, then the output's quantization."""
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        shape, strides = self._space_depth_view(mnode, name, x, mnode.op_type == "DepthToSpace")
        self._copy(mnode, name, x, y, shape, strides)
        self._finish_move(mnode, name, y, yq, lo, hi, x_s, x_zp)

    def q_lut(self, mnode, name, y, yq, lo, hi, _b):
        """An element-wise function as a 256-entry table: every int8 input dequantized, the
        node run by onnxruntime (the definition of the op), quantized as QuantizeLinear
        does (round half to even, saturate) and clamped by the fused epilogue."""
        x, x_s, x_zp = self._act_in(mnode, name, mnode.input[0])
        q = np.arange(-128, 128, dtype=np.int32)
        xf = ((q - x_zp).astype(np.float32) * np.float32(x_s)).astype(np.float32)
        fy = _run_one_node(mnode, xf, self.model)
        yv = np.rint(fy / np.float32(yq[0])) + yq[1]
        table = np.clip(yv, max(lo, -128), min(hi, 127)).astype(np.int8)
        self.emit("lut_s8", name, mnode.op_type, x=("in", x), y=("out", y),
                  table=("const", table), **ints(n=self.numel(y)))


def _run_one_node(node, x: np.ndarray, model) -> np.ndarray:
    """onnxruntime's output of a one-input float node (its attributes kept) on ``x``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = helper.make_node(node.op_type, ["x"], ["y"], domain=node.domain)
    n.attribute.extend(node.attribute)
    g = helper.make_graph([n], "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(opset, 14))])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0], np.float32)

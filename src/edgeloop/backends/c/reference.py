"""A slow, obviously correct numpy definition of the C backend's kernels.

``run(lowered, *inputs)`` executes the same kernel calls the C code makes, each
written here independently in vectorized numpy (int64 arithmetic, explicit
wrap-around and rounding), so the generated C can be checked bit for bit against it
on int8, and this reference against TFLite Micro on TFLite sources.

The fixed-point arithmetic follows TFLite / gemmlowp:
``MultiplyByQuantizedMultiplier(x, m, shift) =
RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << max(shift, 0), m), max(-shift, 0))``.
"""

from __future__ import annotations

import numpy as np

from edgeloop.backends.c import fast, kernel_lib, registry
from edgeloop.backends.c.callargs import resolve
from edgeloop.backends.c.lower import Lowered, lower

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def wrap32(x):
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def trunc_div(a, b):
    """C integer division (rounds toward zero)."""
    a = np.asarray(a, np.int64)
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def srdhm(a, b):
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    r = trunc_div(ab + nudge, 1 << 31)
    return np.where((a == I32_MIN) & (b == I32_MIN), I32_MAX, r)


def rdbpot(x, e):
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def mbqm(x, m, shift):
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(wrap32(np.asarray(x, np.int64) << left), m), right)


def sat_shl(x, e):
    x = np.asarray(x, np.int64)
    thr = (1 << (31 - e)) - 1
    return np.where(x > thr, I32_MAX, np.where(x < -thr, I32_MIN, wrap32(x << e)))


# ---------------------------------------------------------------- gemmlowp exp / reciprocal

def exp_on_negative_values(a, integer_bits: int = 5):
    """gemmlowp's exp for a fixed-point input <= 0 with ``integer_bits``, result Q0.31."""
    a = np.asarray(a, np.int64)
    frac = 31 - integer_bits
    one_quarter = 1 << (frac - 2)
    amq = (a & (one_quarter - 1)) - one_quarter
    x = sat_shl(amq, integer_bits) + (1 << 28)   # Rescale to Q0.31, then + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    poly = rdbpot(srdhm(rdbpot(x4, 2) + x3, 715827883) + x2, 1)
    c = 1895147668                             # exp(-1/8)
    result = c + srdhm(c, x + poly)
    rem = amq - a
    for k, e in enumerate(range(-2, 5)):
        if integer_bits <= e:
            break
        mult = int(round(np.exp(-(2.0 ** e)) * (1 << 31)))
        result = np.where(rem & (1 << (frac - 2 + k)), srdhm(result, mult), result)
    return np.where(a == 0, I32_MAX, result)


def _half_reciprocal(a):
    """Newton-Raphson core shared by gemmlowp's 1/(1+x) and (1-x)/(1+x): 1/(1+x) in Q2.29."""
    s = np.asarray(a, np.int64) + I32_MAX
    half = trunc_div(s + np.where(s >= 0, 1, -1), 2)
    x = 1515870810 + srdhm(half, -1010580540)   # 48/17 - 32/17 * d, in Q2.29
    for _ in range(3):
        x = x + sat_shl(srdhm(x, (1 << 29) - srdhm(half, x)), 2)
    return x


def one_over_one_plus_x(a):
    """gemmlowp's 1/(1+x) for x in [0, 1) (Q0.31), result Q0.31 (Newton-Raphson)."""
    return sat_shl(_half_reciprocal(a), 1)


def one_minus_x_over_one_plus_x(a):
    """gemmlowp's (1-x)/(1+x) for x in [0, 1] (Q0.31), result Q0.31."""
    return sat_shl(_half_reciprocal(a) - (1 << 29), 2)


def clz32(x: int) -> int:
    return 32 - int(x).bit_length() if x > 0 else 32


# ---------------------------------------------------------------- kernels

def _conv_acc(x, w, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G, pad_value, dtype):
    """Sum over the receptive field; positions in the padding read ``pad_value``."""
    x = x[:C * H * W].reshape(C, H, W).astype(dtype)
    w = w.reshape(M, C // G, KH, KW).astype(dtype)
    pb = max(0, (OH - 1) * SH + (KH - 1) * DH + 1 - H - PT)
    pr = max(0, (OW - 1) * SW + (KW - 1) * DW + 1 - W - PL)
    xp = np.pad(x, ((0, 0), (PT, pb), (PL, pr)), constant_values=pad_value)
    cg, mg = C // G, M // G
    acc = np.zeros((M, OH, OW), dtype)
    for g in range(G):
        xs = xp[g * cg:(g + 1) * cg]
        for ky in range(KH):
            for kx in range(KW):
                patch = xs[:, ky * DH: ky * DH + (OH - 1) * SH + 1: SH,
                           kx * DW: kx * DW + (OW - 1) * SW + 1: SW]
                acc[g * mg:(g + 1) * mg] += np.einsum("chw,mc->mhw", patch,
                                                      w[g * mg:(g + 1) * mg, :, ky, kx])
    return acc


def conv_s8(x, y, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G,
            x_zp, y_zp, lo, hi):
    xc = x.astype(np.int64) - x_zp
    acc = _conv_acc(xc, w, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G, 0, np.int64)
    if b is not None:
        acc += b.astype(np.int64)[:, None, None]
    out = mbqm(acc, np.asarray(mult)[:, None, None], np.asarray(shift)[:, None, None]) + y_zp
    y[:M * OH * OW] = np.clip(out, lo, hi).ravel()


def conv_s8_pw_ip(x, y, w, b, mult, shift, C, hw, M, x_zp, y_zp, lo, hi, s):
    """The in-place 1x1 convolution: conv_s8's numbers (``x`` and ``y`` are views of one
    buffer here; conv_s8 reads all of ``x`` before it writes ``y``)."""
    conv_s8(x, y, w, b, mult, shift, C, 1, hw, M, 1, hw, 1, 1, 1, 1, 0, 0, 1, 1, 1,
            x_zp, y_zp, lo, hi)


def conv_s8_grp_ip(x, y, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW,
                   G, x_zp, y_zp, lo, hi, s):
    """The in-place grouped convolution: conv_s8's numbers."""
    conv_s8(x, y, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G,
            x_zp, y_zp, lo, hi)


def conv_s8_res(x, y, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G,
                x_zp, c_zp, lo, hi, r, q, s):
    """A convolution (conv_s8, rounded to int8) then the int8 Add with ``r`` (add_s8);
    ``y`` may be ``r``."""
    c = np.empty(M * OH * OW, np.int8)
    conv_s8(x, c, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, G,
            x_zp, c_zp, lo, hi)
    n = M * OH * OW
    add_s8(c, r[:n].copy(), y, n, 1, [n], [1], [1], q)


def fc_s8(x, y, w, b, mult, shift, per_channel, M, K, N, y_zp, lo, hi):
    # the input zero point arrives folded into the bias (b - x_zp * sum(w))
    acc = x[:M * K].reshape(M, K).astype(np.int64) @ w.reshape(N, K).astype(np.int64).T
    if b is not None:
        acc += b.astype(np.int64)
    m = mult if per_channel else np.full(N, mult[0])
    s = shift if per_channel else np.full(N, shift[0])
    y[:M * N] = np.clip(mbqm(acc, m, s) + y_zp, lo, hi).ravel()


def pool_s8(x, y, NC, H, W, OH, OW, KH, KW, SH, SW, PT, PL, mode, same_q, x_zp, y_zp, mult,
            shift, lo, hi):
    # mode 0 AveragePool (TFLM's AVERAGE_POOL_2D), 1 MaxPool, 2 mean (TFLite's integer Mean)
    xs = x[:NC * H * W].reshape(NC, H, W).astype(np.int64)
    out = np.zeros((NC, OH, OW), np.int64)
    for oy in range(OH):
        y0, y1 = max(oy * SH - PT, 0), min(oy * SH - PT + KH, H)
        for ox in range(OW):
            x0, x1 = max(ox * SW - PL, 0), min(ox * SW - PL + KW, W)
            win = xs[:, y0:y1, x0:x1].reshape(NC, -1)
            if mode == 1:
                out[:, oy, ox] = np.maximum(win.max(axis=1), -128)
            elif mode == 2:   # one multiplier for the scales and 1/count, no division
                out[:, oy, ox] = mbqm((win - x_zp).sum(axis=1), mult, shift) + y_zp
            else:
                n = win.shape[1]
                s = win.sum(axis=1)
                # TFLite: round half away from zero with C division
                out[:, oy, ox] = np.where(s > 0, trunc_div(s + n // 2, n), trunc_div(s - n // 2, n))
    if mode != 2 and not same_q:
        out = mbqm(out - x_zp, mult, shift) + y_zp
    y[:NC * OH * OW] = np.clip(out, lo, hi).ravel()


def _nd_gather(src, n, shape, strides, x0=0):
    idx = np.indices(tuple(int(d) for d in shape)).reshape(len(shape), -1)
    off = x0 + (idx * np.asarray(strides, np.int64)[:, None]).sum(axis=0)
    return src[off[:n]]


def add_s8(a, b, y, n, ndim, shape, a_strides, b_strides, q):
    a_zp, b_zp, y_zp, am, ash, bm, bsh, ym, ysh, lo, hi = (int(v) for v in q)
    u = (_nd_gather(a, n, shape, a_strides).astype(np.int64) - a_zp) * (1 << 20)
    v = (_nd_gather(b, n, shape, b_strides).astype(np.int64) - b_zp) * (1 << 20)
    s = mbqm(u, am, ash) + mbqm(v, bm, bsh)
    y[:n] = np.clip(mbqm(s, ym, ysh) + y_zp, lo, hi)


def requant_s8(x, y, n, same_q, x_zp, y_zp, mult, shift, lo, hi):
    v = x[:n].astype(np.int64)
    if not same_q:
        v = mbqm(v - x_zp, mult, shift) + y_zp
    y[:n] = np.clip(v, lo, hi)


def softmax_s8(x, y, outer, N, mult, left_shift, diff_min, tflm, y_zp, y_mult, y_shift):
    rows = x[:outer * N].reshape(outer, N).astype(np.int64)
    out = np.empty((outer, N), np.int64)
    for o in range(outer):
        d = rows[o] - rows[o].max()
        ok = d >= diff_min
        e = exp_on_negative_values(srdhm(d * (1 << left_shift), mult))
        total = int(np.where(ok, rdbpot(e, 12), 0).sum())
        total = int(wrap32(total))
        head = clz32(total & 0xFFFFFFFF)
        bits_over_unit = 12 - head
        shifted = int(wrap32(((total << head) & 0xFFFFFFFF) - (1 << 31)))
        recip = one_over_one_plus_x(shifted)
        if tflm:
            v = rdbpot(srdhm(recip, e), bits_over_unit + 31 - 8) - 128
            out[o] = np.where(ok, np.clip(v, -128, 127), -128)
        else:
            v = mbqm(rdbpot(srdhm(recip, e), bits_over_unit), y_mult, y_shift) + y_zp
            out[o] = np.where(ok, np.clip(v, -128, 127), np.clip(y_zp, -128, 127))
    y[:outer * N] = out.ravel()


def logistic_s8(x, y, n, x_zp, mult, left_shift, radius, is_tanh):
    v = x[:n].astype(np.int64) - x_zp
    q = mbqm(v, mult, left_shift)
    if is_tanh:
        t = exp_on_negative_values(-np.abs(q), 5)
        res = one_minus_x_over_one_plus_x(t)
        r = rdbpot(np.where(q == 0, 0, np.where(q < 0, -res, res)), 31 - 7)
    else:
        pos = one_over_one_plus_x(exp_on_negative_values(-np.abs(q), 4))
        r = rdbpot(np.where(q == 0, 1 << 30, np.where(q > 0, pos, I32_MAX - pos)), 31 - 8) - 128
    r = np.where(v <= -radius, -128, np.where(v >= radius, 127, r))
    y[:n] = np.clip(r, -128, 127)


def quantize_s8(x, y, n, scale, zp):
    v = np.rint(x[:n].astype(np.float32) / np.float32(scale)) + np.float32(zp)
    y[:n] = np.clip(v, -128, 127)


def dequantize_s8(x, y, n, scale, zp):
    y[:n] = (x[:n].astype(np.int32) - zp).astype(np.float32) * np.float32(scale)


def copy_nd(x, y, esize, n, ndim, shape, strides, x0):
    y[:n] = _nd_gather(x, n, shape, strides, x0)


def pad_nd(x, y, esize, n, ndim, oshape, ishape, before, mode, value):
    xs = x[:int(np.prod(ishape))].reshape(tuple(int(d) for d in ishape))
    pads = [(int(b), int(o) - int(i) - int(b)) for b, o, i in zip(before, oshape, ishape)]
    if mode == 0:
        out = np.pad(xs, pads, constant_values=value[0])
    else:
        out = np.pad(xs, pads, mode="edge" if mode == 1 else "reflect")
    y[:n] = out.ravel()


def concat(x, y, outer, xbytes, ybytes, offset):
    # buffers are typed arrays here, and the byte counts are element counts for int8
    es = y.itemsize
    xb, yb, off = xbytes // es, ybytes // es, offset // es
    yv = y[:outer * yb].reshape(outer, yb)
    yv[:, off:off + xb] = x[:outer * xb].reshape(outer, xb)


def reduce_f32(x, y, outer, R, inner, op):
    """Float reductions, accumulated in the C kernel's order (float32, one term at a time)."""
    v = x[:outer * R * inner].reshape(outer, R, inner).astype(np.float32)
    acc = v[:, 0].copy() if op >= 2 else np.zeros((outer, inner), np.float32)
    for r in range(R):
        if op == 2:
            acc = np.maximum(acc, v[:, r])
        elif op == 3:
            acc = np.minimum(acc, v[:, r])
        else:
            acc = (acc + v[:, r]).astype(np.float32)
    if op == 0:
        acc = (acc / np.float32(R)).astype(np.float32)
    y[:outer * inner] = acc.ravel()


# -- data movement and int8 kernels of the public models' operators (Resize, PRelu, ...) --
def resize_nearest(x, y, esize, outer, H, W, OH, OW, iy, ix):
    del esize  # the flat views are typed
    src = x[:outer * H * W].reshape(outer, H, W)
    y[:outer * OH * OW] = src[:, iy[:OH]][:, :, ix[:OW]].ravel()


def resize_linear_s8(x, y, outer, H, W, OH, OW, y0, y1, wy0, wy1, x0, x1, wx0, wx1, x_zp, y_zp,
                     mult, shift, lo, hi):
    v = x[:outer * H * W].astype(np.int64).reshape(outer, H, W) - x_zp
    r0, r1 = v[:, y0[:OH]], v[:, y1[:OH]]
    top = wx0[:OW].astype(np.int64) * r0[:, :, x0[:OW]] + wx1[:OW].astype(np.int64) * r0[:, :, x1[:OW]]
    bot = wx0[:OW].astype(np.int64) * r1[:, :, x0[:OW]] + wx1[:OW].astype(np.int64) * r1[:, :, x1[:OW]]
    acc = wy0[:OH, None].astype(np.int64) * top + wy1[:OH, None].astype(np.int64) * bot
    y[:outer * OH * OW] = np.clip(mbqm(acc, mult, shift) + y_zp, lo, hi).ravel()


def lut_s8(x, y, n, table):
    y[:n] = table[x[:n].astype(np.int64) + 128]


def prelu_s8(x, alpha, y, n, ndim, shape, a_strides, x_zp, a_zp, y_zp, mult_pos, shift_pos,
             mult_neg, shift_neg, lo, hi):
    v = x[:n].astype(np.int64) - x_zp
    a = _nd_gather(alpha, n, shape[:ndim], a_strides[:ndim]).astype(np.int64) - a_zp
    r = np.where(v >= 0, mbqm(v, mult_pos, shift_pos), mbqm(v * a, mult_neg, shift_neg))
    y[:n] = np.clip(r + y_zp, lo, hi)


def convtranspose_s8(x, y, w, b, mult, shift, C, H, W, M, OH, OW, KH, KW, SH, SW, PT, PL, DH,
                     DW, G, x_zp, y_zp, lo, hi):
    # scatter every input pixel (the definition), then cut the padding
    cg, mg = C // G, M // G
    xv = x[:C * H * W].astype(np.int64).reshape(C, H, W) - x_zp
    wv = w.astype(np.int64).reshape(C, mg, KH, KW)
    full = np.zeros((M, (H - 1) * SH + (KH - 1) * DH + 1 + OH, (W - 1) * SW + (KW - 1) * DW + 1 + OW),
                    np.int64)
    for g in range(G):
        xs = xv[g * cg:(g + 1) * cg]
        for ky in range(KH):
            for kx in range(KW):
                part = np.einsum("chw,cm->mhw", xs, wv[g * cg:(g + 1) * cg, :, ky, kx])
                full[g * mg:(g + 1) * mg, ky * DH:ky * DH + (H - 1) * SH + 1:SH,
                     kx * DW:kx * DW + (W - 1) * SW + 1:SW] += part
    acc = full[:, PT:PT + OH, PL:PL + OW]
    if b is not None:
        acc = acc + b[:M].astype(np.int64)[:, None, None]
    out = mbqm(wrap32(acc), np.asarray(mult[:M], np.int64)[:, None, None],
               np.asarray(shift[:M], np.int64)[:, None, None])
    y[:M * OH * OW] = np.clip(out + y_zp, lo, hi).ravel()


# the numpy definition of every kernel the registry says has one (a name without a function
# here is an error at import, so the registry and this file cannot drift apart)
KERNELS = {name: globals()[name] for op in registry.OPS.values() for impl in (op.float, op.int8)
           if impl is not None for name in impl.reference}


def run(low: Lowered | object, *inputs: np.ndarray) -> list[np.ndarray]:
    """Execute the lowered model's calls in numpy; returns every graph output."""
    if not isinstance(low, Lowered):
        low = lower(low)
    plan = low.plan
    store: dict[str, np.ndarray] = {}
    dtypes = {}
    for b in plan.buffers:
        dtypes[b.name] = b.dtype
        store[b.name] = np.zeros(b.size // max(np.dtype(b.dtype).itemsize, 1), b.dtype)

    def buf(t):
        return store[plan.tensors.get(t, t)]

    for spec, x in zip(low.inputs, inputs):
        buf(spec["name"])[:] = np.asarray(x, spec["dtype"]).ravel()
    for call in low.calls:
        execute(call, buf)
    return [buf(o["name"])[:int(np.prod(o["shape"]))].reshape(o["shape"]).copy()
            for o in low.outputs]


def execute(call, buf) -> None:
    """Run one kernel call; ``buf(tensor)`` gives the flat array holding a tensor. The
    arguments are passed by the names the C kernel declares (the reference functions
    use the same names; tests/test_backend_c_registry.py checks it)."""
    fn = KERNELS.get(call.kernel) or fast.reference_kernel(call.kernel)
    if fn is None:
        raise NotImplementedError(f"the numpy reference has no kernel {call.kernel}")
    values = resolve(call, {
        "in": lambda t, off=0: buf(t)[off:], "out": lambda t, off=0: buf(t)[off:],
        "const": lambda v: np.asarray(v).ravel(), "null": lambda: None,
        "arena": lambda *_: None, "scratch": lambda *_: None,
        "int": lambda v: v, "float": lambda v: v})
    fn(**{p.name: v for p, v in zip(kernel_lib.signature(call.kernel), values)})


"""Fast int8 kernels for the C backend, and the per-layer instruction profile hook.

Kept apart from the generic lowering (``lower.py``) and printing (``codegen.py``), which
call in here at a few marked places:

- :data:`PROFILE_PRELUDE` and :func:`layer_mark`: the generated ``<prefix>_run_all``
  calls ``EL_LAYER_MARK(k)`` before its first kernel call and after each one; the
  macro is empty unless the model is compiled with ``-DEL_PROFILE_LAYERS`` (the
  Cortex-M profile build of ``cortexm.py``), so normal builds are unchanged.
- :func:`layer_table`: one entry per kernel call (name, op, kernel, MACs) for the profile.
- :func:`lower_conv`, :func:`lower_fc`, :func:`lower_add`, :func:`lower_copy` (called
  first by ``Lowerer.q_Conv``, ``Lowerer._fc``, ``Lowerer.q_Add``, ``Lowerer._copy``):
  pick a fast kernel for a layer when it applies, write its weights in the kernel's
  access order (the same bytes, reordered once here; K padded to a multiple of 4) and
  fold the input zero point into the bias, then emit the call; they return False to
  leave the layer to the generic kernels. Kernels: ``fast_conv_s8`` (any KHxKW, one
  group: an im2col of two pixels and a 2x2 SMLAD tile), ``fast_dw3x3_s8`` (3x3
  depthwise, stride 1 or 2, in place too), ``fast_fc_s8``, ``fast_add_s8`` (same shapes),
  ``fast_transpose8`` (an int8 NHWC input to NCHW).
- :func:`reference_kernel` (called by ``reference.execute``): each fast kernel's numpy
  definition, which undoes the layout and runs the generic kernel's reference.

The C lives in ``kernels/dsp/fast_*.h`` (one file per kernel, DSP and portable paths
side by side); a thin wrapper per kernel shape class (``KHxKW`` and stride, on which
the compiler specialises the im2col) is written here. The requantisation is TFLite's,
bit for bit (``el_fast_rq`` on the tables of :func:`rq_table`, whose overflow is checked
here); the kernels' work buffers are on the stack, which
``--verify`` measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent / "kernels" / "dsp"
# the kernels' work buffers live on the stack (measured by --verify): a conv's two
# pixels' taps as int16 and its padded input rows, a fully-connected row as int16
MAX_STACK_BYTES = 8192
INT32_MIN = -2 ** 31

PROFILE_PRELUDE = """/* per-layer profile marks: empty unless built with -DEL_PROFILE_LAYERS (edgeloop's
   Cortex-M profile firmware defines el_layer_mark) */
#if defined(EL_PROFILE_LAYERS)
void el_layer_mark(int k);
#define EL_LAYER_MARK(k) el_layer_mark(k)
#else
#define EL_LAYER_MARK(k) ((void)0)
#endif
"""


FAST_PRELUDE = """/* fast kernels (SMLAD, weights in their access order) on cores with the DSP extension
   (Cortex-M4/M7/M33), the generic kernels elsewhere (bit-exact with each other);
   -DEL_FAST_KERNELS builds the fast kernels' portable C on other cores too */
#if defined(__ARM_FEATURE_DSP) || defined(EL_FAST_KERNELS)
#define EL_FAST 1
#else
#define EL_FAST 0
#endif
"""


def one_guard(guards: set) -> str:
    """"" (both builds), "fast" or "gen": which build needs a kernel or constant."""
    if "" in guards or {"fast", "gen"} <= guards or not guards:
        return ""
    return next(iter(guards))


def kernel_guards(kernels: list[str], direct: dict[str, set]) -> dict[str, str]:
    """For each kernel file of a model, which build needs it (see :func:`one_guard`), from
    the builds of the calls naming each kernel directly (a dependency follows its users)."""
    from edgeloop.backends.c import kernel_lib
    need: dict[str, set] = {k: set() for k in kernels}
    for k, g in direct.items():
        for d in kernel_lib.closure([k]):
            need.setdefault(d, set()).update(g)
    return {k: one_guard(need[k]) for k in kernels}


def layer_mark(k: int) -> str:
    return f"    EL_LAYER_MARK({int(k)});\n"


def layer_table(lowerer, calls) -> list[dict]:
    """``[{name, op, kernel, macs}]`` per kernel call; a node's MACs go to its first call."""
    from edgeloop.profile.analysis import node_name
    from edgeloop.profile.macs import count_macs

    a = lowerer.a
    macs: dict[str, int] = {}
    for s in a.steps:
        if s.kind == "alias":
            continue
        node = a.nodes[s.main]
        try:
            n = count_macs(node, a.shapes)
        except Exception:  # an operator without a counting rule: no MACs to report
            n = 0
        macs.setdefault(node_name(node, s.main), n)
    rows = []
    for call in calls:
        rows.append({"name": call.name, "op": call.op, "kernel": call.kernel.replace(":", "_"),
                     "macs": int(macs.pop(call.name, 0))})
    return rows


def layer_profile_table(layers: list[dict]):
    """The per-layer instruction profile of ``export --verify`` as a rich table."""
    from rich.table import Table

    total = sum(r["instructions"] for r in layers) or 1
    t = Table(title="Cortex-M4 instructions per layer (first input; QEMU counts instructions)")
    for col in ("layer", "op", "kernel", "MACs", "instructions", "share", "instr/MAC"):
        t.add_column(col, justify="right" if col in ("MACs", "instructions", "share", "instr/MAC") else "left")
    for r in layers:
        ipm = r.get("instructions_per_mac")
        t.add_row(str(r["name"]), str(r["op"]), str(r["kernel"]), f"{r['macs']:,}", f"{r['instructions']:,}",
                  f"{100 * r['instructions'] / total:.1f}%", f"{ipm:.2f}" if ipm is not None else "")
    return t


# ---------------------------------------------------------------- kernel registration

def _conv_wrapper(kh: int, kw: int, sh: int, sw: int) -> str:
    """The fast_conv_s8 kernel for one filter shape and stride (a generated unit of
    kernel_lib, around kernels/dsp/fast_conv_s8.h: the compiler specialises the im2col)."""
    from edgeloop.backends.c import kernel_lib
    taps = kernel_lib.register(f"fast_taps_{kh}x{kw}", ("fast_conv_s8",), f"""
/* fast_conv_s8's im2col specialised for a {kh}x{kw} filter */
static EL_FAST_NOINLINE void el_fast_taps_{kh}x{kw}(const int8_t *s, int16_t *q, int C, int W,
        long hw, int KP)
{{
    el_fast_taps(s, q, C, W, hw, {kh}, {kw}, KP);
}}
""")
    name = f"fast_conv_s8_{kh}x{kw}s{sh}x{sw}"
    text = f"""
/* fast_conv_s8 for a {kh}x{kw} filter at stride {sh}x{sw}; t: the requantization table
   (fast.py's rq_table); q: a fused residual Add's add_table (the output then holds the
   skip tensor on entry), or null */
static void k_{name}(const int8_t *x, int8_t *y, const int32_t *w, const int32_t *b,
        const int32_t *t, int C, int H, int W, int M, int OH, int OW, int PT, int PL,
        int x_zp, int lo, int hi, int RB, const int32_t *q)
{{
    EL_FAST_COL(col, 2 * ((C * {kh * kw} + 3) & ~3));
    int8_t rows[RB];
    el_fast_conv_s8(x, y, (const int8_t *)w, b, t, col, rows, el_fast_taps_{kh}x{kw}, C, H, W, M,
                    OH, OW, {kh}, {kw}, {sh}, {sw}, PT, PL, x_zp, lo, hi, q);
}}
"""
    return kernel_lib.register(name, (taps,), text, base="fast_conv")


# ---------------------------------------------------------------- weight layouts

def conv_weights(w: np.ndarray) -> np.ndarray:
    """[M, C, KH, KW] int8 -> the fast_conv_s8 layout (see its header), as int32 words.

    Taps (c, ky, kx) padded with zeros to a multiple of 4; each group of 4 stored as
    (t0, t2, t1, t3); rows interleaved by output-channel pairs group by group; an odd
    last row alone."""
    M = w.shape[0]
    rows = w.reshape(M, -1).astype(np.int8)
    k = rows.shape[1]
    kp = (k + 3) & ~3
    rows = np.pad(rows, ((0, 0), (0, kp - k)))
    groups = rows.reshape(M, kp // 4, 4)[:, :, [0, 2, 1, 3]]
    parts = []
    for m in range(0, M - 1, 2):
        parts.append(groups[m:m + 2].transpose(1, 0, 2).ravel())
    if M % 2:
        parts.append(groups[M - 1].ravel())
    flat = np.ascontiguousarray(np.concatenate(parts).astype(np.int8))
    return flat.view("<i4").astype(np.int32)


# ---------------------------------------------------------------- selection

RQ_WORDS = 4   # words per channel of a requantization table (see rq_table)


def rq_table(mult, shift, y_zp, bound, pre: int = 0):
    """The fast kernels' requantization (el_fast_rq in fast_conv_s8.h) per channel as int32
    words (m, K, E, L), or None when the 32-bit form could overflow for some input.

    TFLite's MultiplyByQuantizedMultiplier of x << pre, plus y_zp, computed as
    ``(K + 2 h + (h >> 31)) >> E`` with ``h = SMMULR(x << L, m)``: L = 1 + pre + left
    shift (SMMULR of the doubled value is gemmlowp's rounded doubling high multiply),
    E = 1 + right shift, and K = 2^(E-1) + y_zp * 2^E. The shift right by E of 2h rounds
    half away from zero like RoundingDivideByPOT of h by E - 1 (also for E - 1 = 0).
    bound: the largest |x| per channel (or one for all); every intermediate value must
    then fit in an int32."""
    m = np.atleast_1d(np.asarray(mult, np.int64))
    sh = np.broadcast_to(np.atleast_1d(np.asarray(shift, np.int64)), m.shape)
    bound = np.broadcast_to(np.atleast_1d(np.asarray(bound, np.int64)), m.shape)
    if np.any(m == INT32_MIN) or np.any(sh < -30) or np.any(sh > 30):
        return None
    left = np.maximum(sh, 0)
    L = 1 + pre + left
    E = 1 + np.maximum(-sh, 0)
    K = (1 << (E - 1)) + int(y_zp) * (1 << E)
    lim = 2 ** 31
    xs = [int(b) << int(v) for b, v in zip(bound, L)]          # |x << L|
    hs = [(int(b) << int(v)) + 1 for b, v in zip(bound, pre + left)]   # |h|
    if any(v >= lim for v in xs) or any(2 * h + 1 + abs(int(k)) >= lim for h, k in zip(hs, K)):
        return None
    return np.stack([m, K, E, L], axis=1).astype(np.int32).ravel()


def rq_params(table, pre: int = 0):
    """(mult, shift, y_zp) back from :func:`rq_table` (for the numpy references)."""
    t = np.asarray(table, np.int64).reshape(-1, RQ_WORDS)
    E, L = t[:, 2], t[:, 3]
    y_zp = int((t[0, 1] - (1 << (E[0] - 1))) >> E[0])
    return t[:, 0].astype(np.int32), (L - 1 - pre - (E - 1)).astype(np.int32), y_zp


def acc_bound(w, folded) -> np.ndarray:
    """The largest |accumulator| per output channel: |bias| + 128 * sum |w| (int8 taps)."""
    M = w.shape[0]
    return np.abs(np.asarray(folded, np.int64)) + 128 * np.abs(w.reshape(M, -1).astype(np.int64)).sum(axis=1)


def add_table(q):
    """fx_add.h's 11 Add parameters (a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi) as
    el_fast_add's words: a_zp b_zp lo hi, the rq_table entries of a and b (inputs shifted
    left by 20) and of the sum, then each input's rescaled value for the 256 int8 values
    (TFLite's MultiplyByQuantizedMultiplier, reference.mbqm: 2 KB of flash that spare
    the two rescales per output); None when the 32-bit form could overflow."""
    from edgeloop.backends.c import reference as ref

    q = np.asarray(q, np.int64)
    ta = rq_table(q[3], q[4], 0, 255, pre=20)
    tb = rq_table(q[5], q[6], 0, 255, pre=20)
    if ta is None or tb is None:
        return None
    side = [(255 << (20 + max(int(s), 0))) + 1 for s in (q[4], q[6])]
    ty = rq_table(q[7], q[8], q[2], sum(side))
    if ty is None:
        return None
    v = np.arange(-128, 128, dtype=np.int64)
    la = ref.mbqm((v - q[0]) << 20, q[3], q[4])
    lb = ref.mbqm((v - q[1]) << 20, q[5], q[6])
    return np.concatenate([[q[0], q[1], q[9], q[10]], ta, tb, ty, la, lb]).astype(np.int32)


def add_params(t) -> np.ndarray:
    """The 11 fx_add.h parameters back from :func:`add_table`."""
    t = np.asarray(t, np.int64)
    am, ash, _ = rq_params(t[4:8], pre=20)
    bm, bsh, _ = rq_params(t[8:12], pre=20)
    ym, ysh, yzp = rq_params(t[12:16])
    return np.array([t[0], t[1], yzp, am[0], ash[0], bm[0], bsh[0], ym[0], ysh[0], t[2], t[3]],
                    np.int32)


def _ints(**kw) -> dict:
    return {k: ("int", int(v)) for k, v in kw.items()}


def lower_conv(lw, name, x, y, w, bias, mult, shift, xs, ys, g, G, scheme, x_zp, y_zp, lo, hi) -> bool:
    """Emit fast_conv_s8 (or fast_dw3x3_s8) for an int8 Conv when it applies (also a conv
    fused with the residual Add after it, ``lw.residual``); False leaves it to conv_s8."""
    res = lw.residual
    if res is None and _lower_depthwise(lw, name, x, y, w, bias, mult, shift, xs, g, G, scheme,
                                        x_zp, y_zp, lo, hi):
        return True
    if G != 1 or g["DH"] != 1 or g["DW"] != 1 or xs[0] != 1 or w.ndim != 4:
        return False
    M, C, KH, KW = (int(v) for v in w.shape)
    kp = (C * KH * KW + 3) & ~3
    SH, SW, OH, OW = int(g["SH"]), int(g["SW"]), int(g["OH"]), int(g["OW"])
    inside = (g["PT"] == 0 and g["PL"] == 0 and (OH - 1) * SH + KH <= g["H"]
              and (OW - 1) * SW + KW <= g["W"])
    rows = 1 if inside else C * KH * ((OW - 1) * SW + KW)   # the padded input rows
    if 4 * kp + rows > MAX_STACK_BYTES:
        return False
    if res is not None:
        # fused residual: the output is written over the skip tensor, each element read
        # (the skip value) and written at its own place; the input must be another buffer
        out, skip = res["y"][1], res["r"][1]
        if scheme or lw.plan.offset_of(out) != lw.plan.offset_of(skip) \
                or lw.plan.offset_of(x) == lw.plan.offset_of(skip):
            return False
        q_add = add_table(res["q"][1])
        if q_add is None:
            return False
        y_arg, q_arg = ("out", out), ("const", q_add)
    elif scheme == "conv_pixels":
        # in place: only the pointwise case where every pair of pixels is read before
        # its outputs are written at the same places
        if (KH, KW, g["SH"], g["SW"], g["PT"], g["PL"]) != (1, 1, 1, 1, 0, 0) or M > C \
                or lw.plan.offset_of(x) != lw.plan.offset_of(y):
            return False
        y_arg, q_arg = ("out", y), ("null",)
    elif scheme:
        return False
    else:
        y_arg, q_arg = ("out", y), ("null",)
    b = bias[1].astype(np.int64) if bias[0] == "const" else np.zeros(M, np.int64)
    folded = b - int(x_zp) * w.reshape(M, -1).astype(np.int64).sum(axis=1)
    table = rq_table(mult, shift, y_zp, acc_bound(w, folded))
    if table is None or np.any(folded < INT32_MIN) or np.any(folded > 2 ** 31 - 1):
        return False
    kernel = _conv_wrapper(KH, KW, SH, SW)
    lw.emit_fast(kernel, name, "Conv+Add" if res is not None else "Conv", x=("in", x), y=y_arg,
                 w=("const", conv_weights(w)), b=("const", folded.astype(np.int32)),
                 t=("const", table), q=q_arg,
                 **_ints(C=C, H=g["H"], W=g["W"], M=M, OH=OH, OW=OW, PT=g["PT"], PL=g["PL"],
                         x_zp=x_zp, lo=lo, hi=hi, RB=rows))
    return True


def _lower_depthwise(lw, name, x, y, w, bias, mult, shift, xs, g, G, scheme, x_zp, y_zp, lo, hi) -> bool:
    """A 3x3 depthwise conv (multiplier 1, stride 1 or 2, dilation 1), in place or not."""
    C = int(xs[1])
    if (G != C or w.shape != (C, 1, 3, 3) or xs[0] != 1 or g["DH"] != 1 or g["DW"] != 1
            or g["SH"] != g["SW"] or g["SH"] not in (1, 2) or scheme not in ("", None, "conv_groups")
            or ((g["OH"] - 1) * g["SH"] + 3) * (((g["OW"] - 1) * g["SH"] + 7) & ~3) > MAX_STACK_BYTES):
        return False
    b = bias[1].astype(np.int64) if bias[0] == "const" else np.zeros(C, np.int64)
    folded = b - int(x_zp) * w.reshape(C, -1).astype(np.int64).sum(axis=1)
    table = rq_table(mult, shift, y_zp, acc_bound(w, folded))
    if table is None or np.any(folded < INT32_MIN) or np.any(folded > 2 ** 31 - 1):
        return False
    lw.emit_fast("fast_dw3x3_s8", name, "Conv", x=("in", x), y=("out", y),
                 w=("const", np.ascontiguousarray(w)), b=("const", folded.astype(np.int32)),
                 t=("const", table),
                 s=lw._scratch_arg() if scheme == "conv_groups" else ("null",),
                 **_ints(C=C, H=g["H"], W=g["W"], OH=g["OH"], OW=g["OW"], S=g["SH"], PT=g["PT"],
                         PL=g["PL"], x_zp=x_zp, lo=lo, hi=hi))
    return True


def lower_add(lw, name, ops, y, ys, q) -> bool:
    """Emit fast_add_s8 for an int8 Add of two activations of the output's shape."""
    table = add_table(q)
    if any(op[0][0] != "in" or tuple(op[3]) != tuple(ys) for op in ops) or table is None:
        return False
    lw.emit_fast("fast_add_s8", name, "Add", a=ops[0][0], b=ops[1][0], y=("out", y),
                 n=("int", int(np.prod(ys))), q=("const", table))
    return True


def conv_weights_inverse(words: np.ndarray, M: int, C: int, KH: int, KW: int) -> np.ndarray:
    """The ONNX [M, C, KH, KW] weights back from :func:`conv_weights` (for the reference)."""
    k = C * KH * KW
    kp = (k + 3) & ~3
    flat = np.ascontiguousarray(np.asarray(words, np.int32)).astype("<i4").view(np.int8)
    rows = np.zeros((M, kp // 4, 4), np.int8)
    pos = 0
    for m in range(0, M - 1, 2):
        n = 2 * kp
        rows[m:m + 2] = flat[pos:pos + n].reshape(kp // 4, 2, 4).transpose(1, 0, 2)
        pos += n
    if M % 2:
        rows[M - 1] = flat[pos:pos + kp].reshape(kp // 4, 4)
    rows = rows[:, :, [0, 2, 1, 3]].reshape(M, kp)[:, :k]
    return rows.reshape(M, C, KH, KW)


def reference_kernel(name: str):
    """The numpy definition of a fast kernel (for ``reference.py``), or None.

    Each undoes the export-time layout and calls the generic kernel's reference, so the
    C kernel, its weight layout and its bias folding are checked against conv_s8/add_s8."""
    from edgeloop.backends.c import reference as ref

    if name == "fast_add_s8":
        def add(a, b, y, n, q):
            one = np.array([1], np.int32)
            ref.add_s8(a, b, y, n, 1, np.array([n], np.int32), one, one, add_params(q))
        return add
    if name == "fast_transpose8":
        def transpose(x, y, R, S):
            y[:R * S] = x[:R * S].reshape(S, R).T.ravel()
        return transpose
    if name == "fast_dw3x3_s8":
        def dw(x, y, w, b, t, C, H, W, OH, OW, S, PT, PL, x_zp, lo, hi, s):
            mult, shift, y_zp = rq_params(t)
            bias = b.astype(np.int64) + int(x_zp) * w.reshape(C, -1).astype(np.int64).sum(axis=1)
            ref.conv_s8(x, y, w.reshape(C, 1, 3, 3), bias, mult, shift, C, H, W, C, OH, OW, 3, 3, S, S,
                        PT, PL, 1, 1, C, x_zp, y_zp, lo, hi)
        return dw
    if name == "fast_fc_s8":
        def fc(x, y, w, b, t, per_channel, M, K, N, lo, hi):
            mult, shift, y_zp = rq_params(t)
            wn = conv_weights_inverse(w, N, K, 1, 1).reshape(N, K)
            ref.fc_s8(x, y, wn, b, mult, shift, per_channel, M, K, N, y_zp, lo, hi)
        return fc
    if not name.startswith("fast_conv_s8_"):
        return None
    kh, kw, sh, sw = (int(v) for v in name[len("fast_conv_s8_"):].replace("s", "x").split("x"))

    def conv(x, y, w, b, t, C, H, W, M, OH, OW, PT, PL, x_zp, lo, hi, RB, q):
        mult, shift, y_zp = rq_params(t)
        wt = conv_weights_inverse(w, M, C, kh, kw)
        bias = b.astype(np.int64) + int(x_zp) * wt.reshape(M, -1).astype(np.int64).sum(axis=1)
        args = (x, y, wt, bias, mult, shift, C, H, W, M, OH, OW, kh, kw, sh, sw, PT, PL, 1, 1, 1, x_zp,
                y_zp, lo, hi)
        if q is None:
            ref.conv_s8(*args)
        else:   # a fused residual Add: y holds the skip tensor
            ref.conv_s8_res(*args, y, add_params(q), None)
    return conv


def lower_fc(lw, name, x, y, wn, bias, mult, shift, per, M, K, N, y_zp, lo, hi) -> bool:
    """Emit fast_fc_s8 for an int8 fully-connected layer (``wn``: [N, K], ``bias`` already
    holding b - x_zp * sum(w)); False leaves it to fc_s8."""
    kp = (K + 3) & ~3
    # a layer under 1024 weights stays with fc_s8: too small to pay for a second kernel's code
    if K * N < 1024 or 2 * kp > MAX_STACK_BYTES or bias[0] != "const":
        return False
    bound = acc_bound(wn, bias[1])
    table = rq_table(mult, shift, y_zp, bound if per else bound.max())
    if table is None:
        return False
    lw.emit_fast("fast_fc_s8", name, lw.a.nodes[lw.step.main].op_type, x=("in", x), y=("out", y),
                 w=("const", conv_weights(wn.reshape(N, K, 1, 1))), b=bias, t=("const", table),
                 **_ints(per_channel=per, M=M, K=K, N=N, lo=lo, hi=hi))
    return True


def _merged_dims(shape, strides) -> list[tuple[int, int]]:
    """(size, stride) of a strided copy's output dims, size-1 dims dropped and
    neighbours that walk the input contiguously merged."""
    dims = [(int(n), int(s)) for n, s in zip(shape, strides) if int(n) != 1]
    out: list[tuple[int, int]] = []
    for n, s in dims:
        if out and out[-1][1] == s * n:
            out[-1] = (out[-1][0] * n, s)
        else:
            out.append((n, s))
    return out


def lower_copy(lw, name, op, x, y, shape, strides, x0) -> bool:
    """Emit fast_transpose8 for a one-byte copy that is a 2-D transpose; False leaves it
    to copy_nd."""
    dims = _merged_dims(shape, strides)
    if lw.is_static(x) or x0 or lw._esize(y) != 1 or len(dims) != 2:
        return False
    (R, sr), (S, ss) = dims
    if sr != 1 or ss != R:
        return False
    lw.emit_fast("fast_transpose8", name, op, x=("in", x), y=("out", y), R=("int", R),
                 S=("int", S))
    return True

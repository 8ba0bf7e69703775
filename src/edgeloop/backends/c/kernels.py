"""C99 source of every kernel the generator can emit (only the used ones are written).

Each entry: name -> (dependencies, C text). Kernels are ``static`` functions of flat
buffers plus integer/float parameters; the Python lowering (``lower.py``) computes the
parameters and ``reference.py`` defines the same functions in numpy.

The integer helpers follow TFLite / gemmlowp: SaturatingRoundingDoublingHighMul,
RoundingDivideByPOT, MultiplyByQuantizedMultiplier (two roundings, as TFLite Micro's
reference kernels), and gemmlowp's fixed-point exp and reciprocal for the int8 softmax.
Written by hand because no library emits C for them.
"""

from __future__ import annotations

KERNELS: dict[str, tuple[tuple[str, ...], str]] = {}


def _k(name: str, deps: tuple[str, ...], text: str) -> None:
    KERNELS[name] = (deps, text.strip("\n") + "\n")


# ---------------------------------------------------------------- fixed-point helpers

_k("fx", (), r"""
/* the requantization runs once per output: inlined (gcc otherwise calls it) */
#if defined(__GNUC__)
#define EL_INLINE inline __attribute__((always_inline))
#else
#define EL_INLINE inline
#endif
static EL_INLINE int32_t el_srdhm(int32_t a, int32_t b)
{
    int64_t ab;
    int32_t nudge;
    if (a == b && a == INT32_MIN) return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static EL_INLINE int32_t el_rdbpot(int32_t x, int e)
{
    int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    int32_t rem = x & mask;
    int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}

static EL_INLINE int32_t el_mbqm(int32_t x, int32_t m, int shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    return el_rdbpot(el_srdhm((int32_t)((uint32_t)x << left), m), right);
}

static int32_t el_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}
""")

# ---------------------------------------------------------------- float kernels

_k("conv_f32", (), r"""
static void k_conv_f32(const float *x, float *y, const float *w, const float *b,
                       int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                       int SH, int SW, int PT, int PL, int DH, int DW, int G)
{
    int cg = C / G, mg = M / G, m, oy, ox, c, ky, kx;
    long hw = (long)H * W;
    for (m = 0; m < M; ++m) {
        const float *xg = x + (long)(m / mg) * cg * hw;
        const float *wm = w + (long)m * cg * KH * KW;
        float *ym = y + (long)m * OH * OW;
        for (oy = 0; oy < OH; ++oy) {
            int iy0 = oy * SH - PT, ky0 = 0, ky1 = KH;
            while (ky0 < KH && iy0 + ky0 * DH < 0) ++ky0;          /* taps inside the input */
            while (ky1 > ky0 && iy0 + (ky1 - 1) * DH >= H) --ky1;
            for (ox = 0; ox < OW; ++ox) {
                int ix0 = ox * SW - PL, kx0 = 0, kx1 = KW;
                float acc = b ? b[m] : 0.0f;
                while (kx0 < KW && ix0 + kx0 * DW < 0) ++kx0;
                while (kx1 > kx0 && ix0 + (kx1 - 1) * DW >= W) --kx1;
                for (c = 0; c < cg; ++c) {
                    const float *xc = xg + c * hw + ix0;
                    const float *wc = wm + (long)c * KH * KW;
                    for (ky = ky0; ky < ky1; ++ky) {
                        const float *xr = xc + (long)(iy0 + ky * DH) * W;
                        const float *wr = wc + ky * KW;
                        for (kx = kx0; kx < kx1; ++kx) acc += xr[kx * DW] * wr[kx];
                    }
                }
                ym[oy * OW + ox] = acc;
            }
        }
    }
}
""")

_k("matmul_f32", (), r"""
static void k_matmul_f32(const float *a, const float *b, const float *c, float *y,
                         int batch, int M, int K, int N,
                         int a_bs, int a_ms, int a_ks, int b_bs, int b_ks, int b_ns,
                         int c_ms, int c_ns, float alpha)
{
    int t, i, j, k;
    for (t = 0; t < batch; ++t) {
        const float *at = a + (long)t * a_bs;
        const float *bt = b + (long)t * b_bs;
        float *yt = y + (long)t * M * N;
        for (i = 0; i < M; ++i) {
            for (j = 0; j < N; ++j) {
                float acc = 0.0f;
                for (k = 0; k < K; ++k)
                    acc += at[(long)i * a_ms + (long)k * a_ks] * bt[(long)k * b_ks + (long)j * b_ns];
                acc *= alpha;
                if (c) acc += c[(long)i * c_ms + (long)j * c_ns];
                yt[(long)i * N + j] = acc;
            }
        }
    }
}
""")

_k("nd_index", (), r"""
/* offset of flat output index i in a strided input (shapes of the output) */
static long el_nd_offset(long i, int ndim, const int32_t *shape, const int32_t *strides)
{
    long off = 0;
    int d;
    for (d = ndim - 1; d >= 0; --d) {
        long q = i / shape[d];
        off += (i - q * shape[d]) * (long)strides[d];
        i = q;
    }
    return off;
}
""")

_k("binary_f32", ("nd_index",), r"""
static void k_binary_f32(const float *a, const float *b, float *y, int op, long n, int ndim,
                         const int32_t *shape, const int32_t *as, const int32_t *bs)
{
    long i;
    for (i = 0; i < n; ++i) {
        float u = a[el_nd_offset(i, ndim, shape, as)];
        float v = b[el_nd_offset(i, ndim, shape, bs)];
        float r;
        switch (op) {
        case 0: r = u + v; break;
        case 1: r = u - v; break;
        case 2: r = u * v; break;
        case 3: r = u / v; break;
        case 4: r = u > v ? u : v; break;
        default: r = u < v ? u : v; break;
        }
        y[i] = r;
    }
}
""")

_k("unary_f32", (), r"""
static void k_unary_f32(const float *x, float *y, long n, int op, float p0, float p1)
{
    long i;
    for (i = 0; i < n; ++i) {
        float v = x[i];
        switch (op) {
        case 0: v = v > 0.0f ? v : 0.0f; break;                       /* Relu */
        case 1: v = v < p0 ? p0 : (v > p1 ? p1 : v); break;           /* Clip */
        case 2: v = 1.0f / (1.0f + expf(-v)); break;                  /* Sigmoid */
        case 3: v = tanhf(v); break;                                  /* Tanh */
        case 4: v = v >= 0.0f ? v : v * p0; break;                    /* LeakyRelu */
        case 5: v = fabsf(v); break;                                  /* Abs */
        case 6: v = -v; break;                                        /* Neg */
        case 7: v = expf(v); break;                                   /* Exp */
        case 8: v = sqrtf(v); break;                                  /* Sqrt */
        case 9: v = p0 * v + p1; v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); break; /* HardSigmoid */
        case 10: v = v >= 0.0f ? v : p0 * (expf(v) - 1.0f); break;    /* Elu */
        case 11: v = 1.0f / v; break;                                 /* Reciprocal */
        case 12: v = floorf(v); break;                                /* Floor */
        default: v = ceilf(v); break;                                 /* Ceil */
        }
        y[i] = v;
    }
}
""")

_k("pool_f32", (), r"""
static void k_pool_f32(const float *x, float *y, int NC, int H, int W, int OH, int OW,
                       int KH, int KW, int SH, int SW, int PT, int PL, int PB, int PR,
                       int DH, int DW, int is_max, int include_pad)
{
    int nc, oy, ox, ky, kx;
    for (nc = 0; nc < NC; ++nc) {
        const float *xc = x + (long)nc * H * W;
        for (oy = 0; oy < OH; ++oy) {
            for (ox = 0; ox < OW; ++ox) {
                float acc = is_max ? -INFINITY : 0.0f;
                int count = 0, padded = 0;
                for (ky = 0; ky < KH; ++ky) {
                    int iy = oy * SH - PT + ky * DH;
                    for (kx = 0; kx < KW; ++kx) {
                        int ix = ox * SW - PL + kx * DW;
                        if (iy >= -PT && iy < H + PB && ix >= -PL && ix < W + PR) ++padded;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        if (is_max) { if (xc[iy * W + ix] > acc) acc = xc[iy * W + ix]; }
                        else acc += xc[iy * W + ix];
                        ++count;
                    }
                }
                if (!is_max) acc = acc / (float)(include_pad ? padded : (count ? count : 1));
                y[((long)nc * OH + oy) * OW + ox] = acc;
            }
        }
    }
}
""")

_k("reduce_f32", (), r"""
static void k_reduce_f32(const float *x, float *y, long outer, long R, long inner, int op)
{
    long o, r, i;
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * R * inner + i;
            float acc = op >= 2 ? p[0] : 0.0f;
            for (r = 0; r < R; ++r) {
                float v = p[r * inner];
                if (op == 2) acc = v > acc ? v : acc;
                else if (op == 3) acc = v < acc ? v : acc;
                else acc += v;
            }
            if (op == 0) acc /= (float)R;
            y[o * inner + i] = acc;
        }
    }
}
""")

_k("softmax_f32", (), r"""
static void k_softmax_f32(const float *x, float *y, long outer, long N, long inner, int log_out)
{
    long o, i, j;
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * N * inner + i;
            float *q = y + o * N * inner + i;
            float mx = p[0], sum = 0.0f;
            for (j = 1; j < N; ++j) if (p[j * inner] > mx) mx = p[j * inner];
            for (j = 0; j < N; ++j) sum += expf(p[j * inner] - mx);
            for (j = 0; j < N; ++j)
                q[j * inner] = log_out ? (p[j * inner] - mx) - logf(sum)
                                       : expf(p[j * inner] - mx) / sum;
        }
    }
}
""")

_k("batchnorm_f32", (), r"""
static void k_batchnorm_f32(const float *x, float *y, const float *s, const float *t,
                            long N, long C, long HW)
{
    long n, c, i;
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (i = 0; i < HW; ++i) {
                long k = (n * C + c) * HW + i;
                y[k] = x[k] * s[c] + t[c];
            }
}
""")

_k("copy_nd", ("nd_index",), r"""
static void k_copy_nd(const void *x, void *y, int esize, long n, int ndim,
                      const int32_t *shape, const int32_t *strides, long x0)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long i;
    for (i = 0; i < n; ++i)
        memcpy(dst + i * esize, src + (x0 + el_nd_offset(i, ndim, shape, strides)) * esize,
               (size_t)esize);
}
""")

_k("pad_nd", (), r"""
static void k_pad_nd(const void *x, void *y, int esize, long n, int ndim, const int32_t *oshape,
                     const int32_t *ishape, const int32_t *before, int mode, const void *value)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long i;
    for (i = 0; i < n; ++i) {
        long rest = i, off = 0, stride = 1;
        int d, inside = 1;
        for (d = ndim - 1; d >= 0; --d) {
            long q = rest / oshape[d];
            long c = rest - q * oshape[d] - before[d];
            rest = q;
            if (c < 0 || c >= ishape[d]) {
                if (mode == 0) inside = 0;
                else if (mode == 1) c = c < 0 ? 0 : ishape[d] - 1;             /* edge */
                else {                                                          /* reflect */
                    long period = 2 * (long)ishape[d] - 2;
                    if (period <= 0) c = 0;
                    else {
                        c = c % period;
                        if (c < 0) c += period;
                        if (c >= ishape[d]) c = period - c;
                    }
                }
            }
            off += c * stride;
            stride *= ishape[d];
        }
        memcpy(dst + i * esize, inside ? src + off * esize : (const unsigned char *)value,
               (size_t)esize);
    }
}
""")

_k("concat", (), r"""
static void k_concat(const void *x, void *y, long outer, long xbytes, long ybytes, long offset)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long o;
    for (o = 0; o < outer; ++o)
        memcpy(dst + o * ybytes + offset, src + o * xbytes, (size_t)xbytes);
}
""")

_k("argmax_f32", (), r"""
static void k_argmax_f32(const float *x, int64_t *y, long outer, long N, long inner,
                         int is_min, int last)
{
    long o, i, j;
    for (o = 0; o < outer; ++o)
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * N * inner + i;
            long best = 0;
            for (j = 1; j < N; ++j) {
                float v = p[j * inner], b = p[best * inner];
                int better = is_min ? (last ? v <= b : v < b) : (last ? v >= b : v > b);
                if (better) best = j;
            }
            y[o * inner + i] = best;
        }
}
""")

_k("gather", (), r"""
static void k_gather(const void *x, const int64_t *idx, void *y, int esize, long outer,
                     long N, long inner, long K)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long o, k;
    for (o = 0; o < outer; ++o)
        for (k = 0; k < K; ++k) {
            long j = (long)idx[k];
            if (j < 0) j += N;
            if (j < 0 || j >= N) j = 0;
            memcpy(dst + (o * K + k) * inner * esize, src + (o * N + j) * inner * esize,
                   (size_t)(inner * esize));
        }
}
""")

_k("quantize_s8", (), r"""
static void k_quantize_s8(const float *x, int8_t *y, long n, float scale, int zp)
{
    long i;
    for (i = 0; i < n; ++i) {
        float v = rintf(x[i] / scale) + (float)zp;
        y[i] = (int8_t)(v < -128.0f ? -128 : (v > 127.0f ? 127 : (int)v));
    }
}
""")

_k("dequantize_s8", (), r"""
static void k_dequantize_s8(const int8_t *x, float *y, long n, float scale, int zp)
{
    long i;
    for (i = 0; i < n; ++i) y[i] = (float)((int32_t)x[i] - zp) * scale;
}
""")

# ---------------------------------------------------------------- int8 kernels (TFLM reference)

# Cortex-M4/M7/M33 (the DSP extension): two 16x16 multiply-accumulates per SMLAD on
# sign-extended byte pairs (SXTB16). Integer sums in int32 do not depend on the order of
# the products, so these paths are bit-exact with the portable loops, which the host
# build (no __ARM_FEATURE_DSP) keeps running. Loads go through memcpy (strict aliasing;
# the compiler emits one unaligned LDR, which these cores allow).
_k("fx_dsp", (), r"""
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define EL_DSP 1
static inline int32_t el_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* bytes 1 and 3 sign-extended to two int16 (SXTB16 with its built-in rotation) */
static inline int32_t el_sxtb16_r8(int32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#endif
""")

_k("conv_s8", ("fx", "fx_dsp"), r"""
/* One input channel per output channel (depthwise, or a one-channel input), dilation 1.
   A whole window: sum(x * w) - x_zp * sum(w), sum(w) folded into the bias once (and
   SMLAD on rows of 4 taps on the DSP path); a window cut by the border sums
   (x - x_zp) * w over the taps inside the input. Kept out of line: inlined into k_conv_s8
   they lose their registers to its locals. */
#if defined(__GNUC__)
#define EL_NOINLINE __attribute__((noinline))
#else
#define EL_NOINLINE
#endif
static EL_NOINLINE void el_conv1_s8(const int8_t *x, int8_t *y, const int8_t *w, int32_t bias,
                                    int32_t qm, int qs, int H, int W, int OH, int OW, int KH,
                                    int KW, int SH, int SW, int PT, int PL, int x_zp, int y_zp,
                                    int lo, int hi)
{
    int oy, ox, ky, kx;
    int32_t bias_full = bias;
    for (ky = 0; ky < KH * KW; ++ky) bias_full -= x_zp * (int32_t)w[ky];
    for (oy = 0; oy < OH; ++oy) {
        int iy = oy * SH - PT;
        int ky0 = iy < 0 ? -iy : 0, ky1 = iy + KH > H ? H - iy : KH;
        for (ox = 0; ox < OW; ++ox) {
            int ix = ox * SW - PL;
            int kx0 = ix < 0 ? -ix : 0, kx1 = ix + KW > W ? W - ix : KW;
            int32_t acc;
            if (ky0 == 0 && ky1 == KH && kx0 == 0 && kx1 == KW) {
                const int8_t *xr = x + (long)iy * W + ix, *wr = w;
                acc = bias_full;
                for (ky = 0; ky < KH; ++ky, xr += W, wr += KW) {
                    kx = 0;
#if defined(EL_DSP)
                    for (; kx + 4 <= KW; kx += 4) {
                        int32_t xv = el_ld32(xr + kx), wv = el_ld32(wr + kx);
                        acc = __smlad(__sxtb16(xv), __sxtb16(wv), acc);
                        acc = __smlad(el_sxtb16_r8(xv), el_sxtb16_r8(wv), acc);
                    }
#endif
                    for (; kx < KW; ++kx) acc += (int32_t)xr[kx] * (int32_t)wr[kx];
                }
            } else {
                acc = bias;
                for (ky = ky0; ky < ky1; ++ky) {
                    const int8_t *xr = x + (long)(iy + ky) * W + ix, *wr = w + ky * KW;
                    for (kx = kx0; kx < kx1; ++kx)
                        acc += ((int32_t)xr[kx] - x_zp) * (int32_t)wr[kx];
                }
            }
            acc = el_mbqm(acc, qm, qs) + y_zp;
            *y++ = (int8_t)el_clamp(acc, lo, hi);
        }
    }
}

/* one output of a window cut by the border: acc + sum((x - x_zp) * w) over its taps
   inside the input (out of line: the loops of the whole windows keep their registers) */
static EL_NOINLINE int32_t el_conv1_edge(const int8_t *x, const int8_t *w, int32_t acc, int H,
                                         int W, int KH, int KW, int iy, int ix, int x_zp)
{
    int ky0 = iy < 0 ? -iy : 0, ky1 = iy + KH > H ? H - iy : KH;
    int kx0 = ix < 0 ? -ix : 0, kx1 = ix + KW > W ? W - ix : KW, ky, kx;
    for (ky = ky0; ky < ky1; ++ky) {
        const int8_t *xr = x + (long)(iy + ky) * W + ix, *wr = w + ky * KW;
        for (kx = kx0; kx < kx1; ++kx) acc += ((int32_t)xr[kx] - x_zp) * (int32_t)wr[kx];
    }
    return acc;
}

/* el_conv1_s8 for a 3x3 filter: per output row, the left border, the whole windows (the
   filter in registers; on the DSP path a row of 3 taps is one 4-byte load, SXTB16 twice,
   one SMLAD for taps 0 and 2 and one SMLABB/SMLABT for tap 1), the right border */
static EL_NOINLINE void el_conv1_3x3_s8(const int8_t *x, int8_t *y, const int8_t *w,
                                        int32_t bias, int32_t qm, int qs, int H, int W,
                                        int OH, int OW, int SH, int SW, int PT, int PL,
                                        int x_zp, int y_zp, int lo, int hi)
{
    int32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6],
            w7 = w[7], w8 = w[8];
    int32_t bias_full = bias - x_zp * (w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7 + w8);
    /* a window missing its left (right) column: the bias minus x_zp times the other taps */
    int32_t zc0 = bias - x_zp * (w1 + w2 + w4 + w5 + w7 + w8);
    int32_t zc2 = bias - x_zp * (w0 + w1 + w3 + w4 + w6 + w7);
    /* whole windows: ix = ox * SW - PL >= 0 and ix + 3 <= W */
    int ox_lo = (PL + SW - 1) / SW, ox_hi = W >= 3 ? (W - 3 + PL) / SW + 1 : 0;
    int oy, ox;
#if defined(EL_DSP)
#define EL_PAIR(lo16, hi16) ((int32_t)(((uint32_t)(uint16_t)(hi16) << 16) | (uint16_t)(lo16)))
    int32_t p02 = EL_PAIR(w0, w2), p35 = EL_PAIR(w3, w5), p68 = EL_PAIR(w6, w8);
    int32_t p14 = EL_PAIR(w1, w4), p7 = EL_PAIR(w7, 0);
#undef EL_PAIR
#endif
    if (ox_hi > OW) ox_hi = OW;
    if (ox_lo > OW) ox_lo = OW;
    if (ox_hi < ox_lo) ox_hi = ox_lo;
    for (oy = 0; oy < OH; ++oy) {
        int iy = oy * SH - PT, a = ox_lo, z = ox_hi;
        int8_t *yr = y + (long)oy * OW;
        if (iy < 0 || iy + 3 > H) a = z = OW;
#if defined(EL_DSP)
        /* the 4th byte of a row's load stays in the plane except, maybe, at the very end */
        if (z > a && (long)(iy + 2) * W + (long)(z - 1) * SW - PL + 4 > (long)H * W) --z;
#endif
        for (ox = 0; ox < a; ++ox) {
            int ix = ox * SW - PL;
            int32_t acc;
            if (ix == -1 && a < OW && W >= 2) {   /* rows inside, the left column outside */
                const int8_t *r = x + (long)iy * W;
                acc = zc0 + r[0] * w1 + r[1] * w2 + r[W] * w4 + r[W + 1] * w5
                    + r[2 * W] * w7 + r[2 * W + 1] * w8;
            } else {
                acc = el_conv1_edge(x, w, bias, H, W, 3, 3, iy, ix, x_zp);
            }
            yr[ox] = (int8_t)el_clamp(el_mbqm(acc, qm, qs) + y_zp, lo, hi);
        }
        if (a < z) {
            const int8_t *r = x + (long)iy * W + (long)a * SW - PL;
            for (ox = a; ox < z; ++ox, r += SW) {
                int32_t acc;
#if defined(EL_DSP)
                int32_t v0 = el_ld32(r), v1 = el_ld32(r + W), v2 = el_ld32(r + 2 * W);
                acc = __smlad(__sxtb16(v0), p02, bias_full);
                acc = __smlabb(el_sxtb16_r8(v0), p14, acc);
                acc = __smlad(__sxtb16(v1), p35, acc);
                acc = __smlabt(el_sxtb16_r8(v1), p14, acc);
                acc = __smlad(__sxtb16(v2), p68, acc);
                acc = __smlabb(el_sxtb16_r8(v2), p7, acc);
#else
                acc = bias_full + r[0] * w0 + r[1] * w1 + r[2] * w2 + r[W] * w3 + r[W + 1] * w4
                    + r[W + 2] * w5 + r[2 * W] * w6 + r[2 * W + 1] * w7 + r[2 * W + 2] * w8;
#endif
                yr[ox] = (int8_t)el_clamp(el_mbqm(acc, qm, qs) + y_zp, lo, hi);
            }
        }
        for (ox = z; ox < OW; ++ox) {
            int ix = ox * SW - PL;
            int32_t acc;
            if (ix == W - 2 && ix >= 0 && iy >= 0 && iy + 3 <= H) {
                /* rows inside, the right column outside */
                const int8_t *r = x + (long)iy * W + ix;
                acc = zc2 + r[0] * w0 + r[1] * w1 + r[W] * w3 + r[W + 1] * w4
                    + r[2 * W] * w6 + r[2 * W + 1] * w7;
            } else {
                acc = el_conv1_edge(x, w, bias, H, W, 3, 3, iy, ix, x_zp);
            }
            yr[ox] = (int8_t)el_clamp(el_mbqm(acc, qm, qs) + y_zp, lo, hi);
        }
    }
}

static void k_conv_s8(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                      const int32_t *mult, const int32_t *shift,
                      int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                      int SH, int SW, int PT, int PL, int DH, int DW, int G,
                      int x_zp, int y_zp, int lo, int hi)
{
    int cg = C / G, mg = M / G, m, oy, ox, c, ky, kx;
    long hw = (long)H * W;
    if (KH == 1 && KW == 1 && SH == 1 && SW == 1 && PT == 0 && PL == 0 && OH == H && OW == W) {
        /* pointwise: sum(x * w) - x_zp * sum(w), one multiply-accumulate per tap */
        long p;
        for (m = 0; m < M; ++m) {
            const int8_t *xg = x + (long)(m / mg) * cg * hw;
            const int8_t *wm = w + (long)m * cg;
            int32_t wsum = 0, bias = b ? b[m] : 0;
            for (c = 0; c < cg; ++c) wsum += wm[c];
            bias -= x_zp * wsum;
            for (p = 0; p < hw; ++p) {
                const int8_t *xp = xg + p;
                int32_t acc = bias;
                for (c = 0; c < cg; ++c) acc += (int32_t)xp[c * hw] * (int32_t)wm[c];
                acc = el_mbqm(acc, mult[m], shift[m]) + y_zp;
                y[(long)m * hw + p] = (int8_t)el_clamp(acc, lo, hi);
            }
        }
        return;
    }
    /* A whole window: sum(x * w) - x_zp * sum(w), sum(w) folded into the bias once per
       output channel, so the zero point leaves the inner loop (rows of 4 taps by SMLAD on
       the DSP path); a window cut by the border sums (x - x_zp) * w over its taps. */
    for (m = 0; m < M; ++m) {
        const int8_t *xg = x + (long)(m / mg) * cg * hw;
        const int8_t *wm = w + (long)m * cg * KH * KW;
        int32_t bias = b ? b[m] : 0, qm = mult[m], bias_full;
        int qs = shift[m], taps = cg * KH * KW, k;
        int8_t *ym = y + (long)m * OH * OW;
        if (cg == 1 && DH == 1 && DW == 1) {
            if (KH == 3 && KW == 3)
                el_conv1_3x3_s8(xg, ym, wm, bias, qm, qs, H, W, OH, OW, SH, SW, PT, PL,
                                x_zp, y_zp, lo, hi);
            else
                el_conv1_s8(xg, ym, wm, bias, qm, qs, H, W, OH, OW, KH, KW, SH, SW, PT, PL,
                            x_zp, y_zp, lo, hi);
            continue;
        }
        bias_full = bias;
        for (k = 0; k < taps; ++k) bias_full -= x_zp * (int32_t)wm[k];
        for (oy = 0; oy < OH; ++oy) {
            int iy0 = oy * SH - PT, ky0 = 0, ky1 = KH;
            while (ky0 < KH && iy0 + ky0 * DH < 0) ++ky0;          /* taps inside the input */
            while (ky1 > ky0 && iy0 + (ky1 - 1) * DH >= H) --ky1;
            for (ox = 0; ox < OW; ++ox) {
                int ix0 = ox * SW - PL, kx0 = 0, kx1 = KW;
                int32_t acc;
                while (kx0 < KW && ix0 + kx0 * DW < 0) ++kx0;
                while (kx1 > kx0 && ix0 + (kx1 - 1) * DW >= W) --kx1;
                if (ky0 == 0 && ky1 == KH && kx0 == 0 && kx1 == KW) {
                    const int8_t *wr = wm;
                    acc = bias_full;
                    for (c = 0; c < cg; ++c) {
                        const int8_t *xr = xg + c * hw + (long)iy0 * W + ix0;
                        for (ky = 0; ky < KH; ++ky, xr += (long)DH * W, wr += KW) {
                            if (KW == 3 && DW == 1) {
                                acc += xr[0] * wr[0] + xr[1] * wr[1] + xr[2] * wr[2];
                                continue;
                            }
                            kx = 0;
#if defined(EL_DSP)
                            if (DW == 1)
                                for (; kx + 4 <= KW; kx += 4) {
                                    int32_t xv = el_ld32(xr + kx), wv = el_ld32(wr + kx);
                                    acc = __smlad(__sxtb16(xv), __sxtb16(wv), acc);
                                    acc = __smlad(el_sxtb16_r8(xv), el_sxtb16_r8(wv), acc);
                                }
#endif
                            for (; kx < KW; ++kx) acc += (int32_t)xr[kx * DW] * (int32_t)wr[kx];
                        }
                    }
                } else {
                    acc = bias;
                    for (c = 0; c < cg; ++c) {
                        const int8_t *xc = xg + c * hw + ix0;
                        const int8_t *wc = wm + (long)c * KH * KW;
                        for (ky = ky0; ky < ky1; ++ky) {
                            const int8_t *xr = xc + (long)(iy0 + ky * DH) * W;
                            const int8_t *wr = wc + ky * KW;
                            for (kx = kx0; kx < kx1; ++kx)
                                acc += ((int32_t)xr[kx * DW] - x_zp) * (int32_t)wr[kx];
                        }
                    }
                }
                acc = el_mbqm(acc, qm, qs) + y_zp;
                ym[oy * OW + ox] = (int8_t)el_clamp(acc, lo, hi);
            }
        }
    }
}
""")

# In-place convolutions: the output is written over the input (x and y point into one
# buffer; see edgeloop.profile.analysis.decide_inplace for why neither scheme overwrites an
# input value before its last read). s: this step's planned scratch in the arena. Two
# kernels rather than one with a switch: the compiler then specializes each on its own.

_k("conv_s8_pw_ip", ("fx", "fx_dsp"), r"""
/* 1x1, stride 1, no padding, one group, M <= C: per position p, save the C input values
   at p (minus the zero point, int16) to s, then store the M outputs at p. */
static void k_conv_s8_pw_ip(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                            const int32_t *mult, const int32_t *shift, int C, long hw, int M,
                            int x_zp, int y_zp, int lo, int hi, int16_t *s)
{
    /* On the DSP path each group of 4 channels is saved as (v0, v2, v1, v3), the order in
       which SXTB16 unpacks 4 weight bytes, so one SMLAD takes two products. Two outputs
       per pass share each load of s. */
    long p;
    int m, c, c4 = 0;
#if defined(EL_DSP)
    c4 = C & ~3;
#endif
    for (p = 0; p < hw; ++p) {
        const int8_t *xp = x + p;
        for (c = 0; c < c4; c += 4, xp += 4 * hw) {
            s[c] = (int16_t)((int32_t)xp[0] - x_zp);
            s[c + 1] = (int16_t)((int32_t)xp[2 * hw] - x_zp);
            s[c + 2] = (int16_t)((int32_t)xp[hw] - x_zp);
            s[c + 3] = (int16_t)((int32_t)xp[3 * hw] - x_zp);
        }
        for (; c < C; ++c, xp += hw) s[c] = (int16_t)((int32_t)*xp - x_zp);
        for (m = 0; m < M; m += 2) {
            int two = m + 1 < M;
            const int8_t *w0 = w + (long)m * C, *w1 = two ? w0 + C : w0;
            const int16_t *sp = s;
            int32_t a0 = b ? b[m] : 0, a1 = (b && two) ? b[m + 1] : 0;
            c = 0;
#if defined(EL_DSP)
            for (; c + 8 <= c4; c += 8) {
                int32_t s02 = el_ld32(sp), s13 = el_ld32(sp + 2);
                int32_t u = el_ld32(w0), v = el_ld32(w1);
                a0 = __smlad(s02, __sxtb16(u), a0);
                a0 = __smlad(s13, el_sxtb16_r8(u), a0);
                a1 = __smlad(s02, __sxtb16(v), a1);
                a1 = __smlad(s13, el_sxtb16_r8(v), a1);
                s02 = el_ld32(sp + 4);
                s13 = el_ld32(sp + 6);
                u = el_ld32(w0 + 4);
                v = el_ld32(w1 + 4);
                a0 = __smlad(s02, __sxtb16(u), a0);
                a0 = __smlad(s13, el_sxtb16_r8(u), a0);
                a1 = __smlad(s02, __sxtb16(v), a1);
                a1 = __smlad(s13, el_sxtb16_r8(v), a1);
                sp += 8; w0 += 8; w1 += 8;
            }
            for (; c < c4; c += 4) {
                int32_t s02 = el_ld32(sp), s13 = el_ld32(sp + 2);
                int32_t u = el_ld32(w0), v = el_ld32(w1);
                a0 = __smlad(s02, __sxtb16(u), a0);
                a0 = __smlad(s13, el_sxtb16_r8(u), a0);
                a1 = __smlad(s02, __sxtb16(v), a1);
                a1 = __smlad(s13, el_sxtb16_r8(v), a1);
                sp += 4; w0 += 4; w1 += 4;
            }
#endif
            for (; c < C; ++c) {
                int32_t sv = *sp++;
                a0 += sv * (int32_t)*w0++;
                a1 += sv * (int32_t)*w1++;
            }
            y[(long)m * hw + p] = (int8_t)el_clamp(el_mbqm(a0, mult[m], shift[m]) + y_zp, lo, hi);
            if (two)
                y[(long)(m + 1) * hw + p] =
                    (int8_t)el_clamp(el_mbqm(a1, mult[m + 1], shift[m + 1]) + y_zp, lo, hi);
        }
    }
}
""")

_k("conv_s8_grp_ip", ("fx", "conv_s8"), r"""
/* grouped (e.g. depthwise), (M/G)*OH*OW <= (C/G)*H*W: each group's output into s, then
   copied to its place, which ends within the input groups already consumed. */
static void k_conv_s8_grp_ip(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                             const int32_t *mult, const int32_t *shift,
                             int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                             int SH, int SW, int PT, int PL, int DH, int DW, int G,
                             int x_zp, int y_zp, int lo, int hi, int8_t *s)
{
    int cg = C / G, mg = M / G, g;
    long hw = (long)H * W, ohw = (long)OH * OW;
    for (g = 0; g < G; ++g) {
        long m0 = (long)g * mg;
        k_conv_s8(x + (long)g * cg * hw, s, w + m0 * cg * KH * KW, b ? b + m0 : 0,
                  mult + m0, shift + m0, cg, H, W, mg, OH, OW, KH, KW, SH, SW, PT, PL,
                  DH, DW, 1, x_zp, y_zp, lo, hi);
        memcpy(y + m0 * ohw, s, (size_t)(mg * ohw));
    }
}
""")

_k("conv_f32_pw_ip", (), r"""
/* the float 1x1 in-place scheme; the sums run in the order of k_conv_f32 */
static void k_conv_f32_pw_ip(const float *x, float *y, const float *w, const float *b,
                             int C, long hw, int M, float *s)
{
    long p;
    int m, c;
    for (p = 0; p < hw; ++p) {
        for (c = 0; c < C; ++c) s[c] = x[(long)c * hw + p];
        for (m = 0; m < M; ++m) {
            const float *wm = w + (long)m * C;
            float acc = b ? b[m] : 0.0f;
            for (c = 0; c < C; ++c) acc += s[c] * wm[c];
            y[(long)m * hw + p] = acc;
        }
    }
}
""")

_k("conv_f32_grp_ip", ("conv_f32",), r"""
/* the float grouped in-place scheme (k_conv_f32 per group, then copied) */
static void k_conv_f32_grp_ip(const float *x, float *y, const float *w, const float *b,
                              int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                              int SH, int SW, int PT, int PL, int DH, int DW, int G, float *s)
{
    int cg = C / G, mg = M / G, g;
    long hw = (long)H * W, ohw = (long)OH * OW;
    for (g = 0; g < G; ++g) {
        long m0 = (long)g * mg;
        k_conv_f32(x + (long)g * cg * hw, s, w + m0 * cg * KH * KW, b ? b + m0 : 0,
                   cg, H, W, mg, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, 1);
        memcpy(y + m0 * ohw, s, (size_t)(mg * ohw) * sizeof(float));
    }
}
""")

_k("fc_s8", ("fx", "fx_dsp"), r"""
static void k_fc_s8(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                    const int32_t *mult, const int32_t *shift, int per_channel,
                    int M, int K, int N, int y_zp, int lo, int hi)
{
    /* the input zero point is folded into the bias: b - x_zp * sum(w). Two output
       neurons per pass share each load of the input row. */
    int i, j, k;
    for (i = 0; i < M; ++i) {
        const int8_t *xr = x + (long)i * K;
        int8_t *yr = y + (long)i * N;
        for (j = 0; j < N; j += 2) {
            int two = j + 1 < N;
            const int8_t *w0 = w + (long)j * K, *w1 = two ? w0 + K : w0, *xp = xr;
            int32_t a0 = 0, a1 = 0;
            int q;
            k = K;
#if defined(EL_DSP)
            for (; k >= 4; k -= 4) {
                int32_t xv = el_ld32(xp), u = el_ld32(w0), v = el_ld32(w1);
                int32_t xe = __sxtb16(xv), xo = el_sxtb16_r8(xv);
                a0 = __smlad(xe, __sxtb16(u), a0);
                a0 = __smlad(xo, el_sxtb16_r8(u), a0);
                a1 = __smlad(xe, __sxtb16(v), a1);
                a1 = __smlad(xo, el_sxtb16_r8(v), a1);
                xp += 4; w0 += 4; w1 += 4;
            }
#endif
            for (; k > 0; --k) {
                int32_t xv = *xp++;
                a0 += xv * (int32_t)*w0++;
                a1 += xv * (int32_t)*w1++;
            }
            if (b) { a0 += b[j]; if (two) a1 += b[j + 1]; }
            q = per_channel ? j : 0;
            yr[j] = (int8_t)el_clamp(el_mbqm(a0, mult[q], shift[q]) + y_zp, lo, hi);
            if (two) {
                q = per_channel ? j + 1 : 0;
                yr[j + 1] = (int8_t)el_clamp(el_mbqm(a1, mult[q], shift[q]) + y_zp, lo, hi);
            }
        }
    }
}
""")

_k("pool_s8", ("fx",), r"""
static void k_pool_s8(const int8_t *x, int8_t *y, int NC, int H, int W, int OH, int OW,
                      int KH, int KW, int SH, int SW, int PT, int PL, int is_max,
                      int same_q, int x_zp, int y_zp, int32_t mult, int shift, int lo, int hi)
{
    int nc, oy, ox, ky, kx;
    for (nc = 0; nc < NC; ++nc) {
        const int8_t *xc = x + (long)nc * H * W;
        for (oy = 0; oy < OH; ++oy) {
            for (ox = 0; ox < OW; ++ox) {
                int32_t acc = is_max ? -128 : 0;
                int count = 0;
                for (ky = 0; ky < KH; ++ky) {
                    int iy = oy * SH - PT + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (kx = 0; kx < KW; ++kx) {
                        int ix = ox * SW - PL + kx;
                        if (ix < 0 || ix >= W) continue;
                        if (is_max) { if (xc[iy * W + ix] > acc) acc = xc[iy * W + ix]; }
                        else acc += xc[iy * W + ix];
                        ++count;
                    }
                }
                if (!is_max && count > 0)
                    acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                if (!same_q) acc = el_mbqm(acc - x_zp, mult, shift) + y_zp;
                y[((long)nc * OH + oy) * OW + ox] = (int8_t)el_clamp(acc, lo, hi);
            }
        }
    }
}
""")

_k("add_s8", ("fx", "nd_index"), r"""
static void k_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n, int ndim,
                     const int32_t *shape, const int32_t *as, const int32_t *bs,
                     const int32_t *q /* a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi */)
{
    long i;
    for (i = 0; i < n; ++i) {
        int32_t u = ((int32_t)a[el_nd_offset(i, ndim, shape, as)] - q[0]) * (1 << 20);
        int32_t v = ((int32_t)b[el_nd_offset(i, ndim, shape, bs)] - q[1]) * (1 << 20);
        int32_t s = el_mbqm(u, q[3], q[4]) + el_mbqm(v, q[5], q[6]);
        s = el_mbqm(s, q[7], q[8]) + q[2];
        y[i] = (int8_t)el_clamp(s, q[9], q[10]);
    }
}
""")

_k("requant_s8", ("fx",), r"""
static void k_requant_s8(const int8_t *x, int8_t *y, long n, int same_q, int x_zp, int y_zp,
                         int32_t mult, int shift, int lo, int hi)
{
    long i;
    for (i = 0; i < n; ++i) {
        int32_t v = x[i];
        if (!same_q) v = el_mbqm(v - x_zp, mult, shift) + y_zp;
        y[i] = (int8_t)el_clamp(v, lo, hi);
    }
}
""")

_k("softmax_s8", ("fx", "fx_exp", "fx_recip", "fx_clz"), r"""
static void k_softmax_s8(const int8_t *x, int8_t *y, long outer, long N, int32_t mult,
                         int left_shift, int32_t diff_min, int tflm, int y_zp, int32_t y_mult,
                         int y_shift)
{
    long o, j;
    for (o = 0; o < outer; ++o) {
        const int8_t *p = x + o * N;
        int8_t *q = y + o * N;
        int32_t mx = -128, sum = 0, recip;
        int headroom, bits_over_unit;
        for (j = 0; j < N; ++j) if (p[j] > mx) mx = p[j];
        for (j = 0; j < N; ++j) {
            int32_t d = (int32_t)p[j] - mx;
            if (d >= diff_min)
                sum += el_rdbpot(el_exp_neg(el_srdhm(d * (1 << left_shift), mult), 5), 12);
        }
        headroom = el_clz32((uint32_t)sum);
        bits_over_unit = 12 - headroom;
        recip = el_one_over_one_plus((int32_t)(((uint32_t)sum << headroom) - ((uint32_t)1 << 31)));
        for (j = 0; j < N; ++j) {
            int32_t d = (int32_t)p[j] - mx;
            if (d >= diff_min) {
                int32_t e = el_exp_neg(el_srdhm(d * (1 << left_shift), mult), 5);
                int32_t v;
                if (tflm) {   /* TFLite's output: scale 1/256, zero point -128 */
                    v = el_rdbpot(el_srdhm(recip, e), bits_over_unit + 31 - 8) - 128;
                } else {      /* the probability in Q0.31, requantized to the output scale */
                    v = el_rdbpot(el_srdhm(recip, e), bits_over_unit);
                    v = el_mbqm(v, y_mult, y_shift) + y_zp;
                }
                q[j] = (int8_t)el_clamp(v, -128, 127);
            } else {
                q[j] = (int8_t)(tflm ? -128 : el_clamp(y_zp, -128, 127));
            }
        }
    }
}
""")

_k("fx_exp", ("fx",), r"""
/* gemmlowp fixed point: exp on [-1/4, 0), exp on negative values (5 integer bits),
   1/(1+x) on [0, 1) by Newton-Raphson, as TFLite's reference int8 softmax uses them */
static int32_t el_sat_shl(int32_t x, int e)
{
    int32_t thr = (int32_t)((((int64_t)1) << (31 - e)) - 1);
    if (x > thr) return INT32_MAX;
    if (x < -thr) return INT32_MIN;
    return (int32_t)((uint32_t)x << e);
}

static int32_t el_exp_quarter(int32_t a)
{
    int32_t x = a + (1 << 28);
    int32_t x2 = el_srdhm(x, x), x3 = el_srdhm(x2, x), x4 = el_srdhm(x2, x2);
    int32_t x4_4 = el_rdbpot(x4, 2);
    int32_t poly = el_rdbpot(el_srdhm(x4_4 + x3, 715827883) + x2, 1);
    return 1895147668 + el_srdhm(1895147668, x + poly);
}

static int32_t el_exp_neg(int32_t a /* Q(ib).(31-ib), <= 0 */, int ib)
{
    static const int32_t mults[7] = {1672461947, 1302514674, 790015084, 290630308,
                                     39332535, 720401, 242};   /* exp(-2^e), e = -2..4 */
    int frac = 31 - ib;
    int32_t quarter = (int32_t)1 << (frac - 2);
    int32_t amq = (a & (quarter - 1)) - quarter;
    int32_t result = el_exp_quarter(el_sat_shl(amq, ib));
    int32_t rem = amq - a;
    int k;
    for (k = 0; k < 7 && ib > k - 2; ++k)
        if (rem & ((int32_t)1 << (frac - 2 + k))) result = el_srdhm(result, mults[k]);
    return a == 0 ? INT32_MAX : result;
}
""")

_k("fx_half_recip", ("fx_exp",), r"""
/* Newton-Raphson core shared by gemmlowp's 1/(1+x) and (1-x)/(1+x): 1/(1+x) in Q2.29 */
static int32_t el_half_recip(int32_t a /* Q0.31 in [0, 1] */)
{
    int64_t sum = (int64_t)a + INT32_MAX;
    int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + el_srdhm(half_den, -1010580540);
    int k;
    for (k = 0; k < 3; ++k) {
        int32_t hdx = el_srdhm(half_den, x);
        int32_t one_minus = (1 << 29) - hdx;
        x = x + el_sat_shl(el_srdhm(x, one_minus), 2);
    }
    return x;
}
""")

_k("fx_recip", ("fx_half_recip",), r"""
static int32_t el_one_over_one_plus(int32_t a /* Q0.31 in [0, 1) */)
{
    return el_sat_shl(el_half_recip(a), 1);
}
""")

_k("fx_tanh", ("fx_half_recip",), r"""
/* (1 - x) / (1 + x) for x in [0, 1], as gemmlowp's tanh uses it */
static int32_t el_one_minus_over_one_plus(int32_t a)
{
    return el_sat_shl(el_half_recip(a) - (1 << 29), 2);
}
""")

_k("fx_clz", (), r"""
static int el_clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) return 32;
    while (!(x & 0x80000000u)) { x <<= 1; ++n; }
    return n;
}
""")

_k("logistic_s8", ("fx", "fx_exp", "fx_recip", "fx_tanh"), r"""
/* TFLite's int8 LOGISTIC / TANH (reference_integer_ops): input rescaled to Q4.27, gemmlowp's
   fixed-point logistic or tanh, output scale 1/256 zero point -128 (logistic) or
   1/128 zero point 0 (tanh) */
static void k_logistic_s8(const int8_t *x, int8_t *y, long n, int x_zp, int32_t mult,
                          int left_shift, int32_t radius, int is_tanh)
{
    long i;
    for (i = 0; i < n; ++i) {
        int32_t v = (int32_t)x[i] - x_zp, r;
        if (v <= -radius) { y[i] = is_tanh ? -128 : -128; continue; }
        if (v >= radius) { y[i] = 127; continue; }
        v = el_mbqm(v, mult, left_shift);            /* Q4.27 */
        if (is_tanh) {
            int32_t neg = v < 0 ? v : -v;             /* -|v| */
            int32_t t = el_exp_neg(neg, 5);           /* the same raw read as Q5: exp(-2|v|) */
            int32_t res = el_one_minus_over_one_plus(t);
            r = v == 0 ? 0 : (v < 0 ? -res : res);
            r = el_rdbpot(r, 31 - 7);
        } else {
            int32_t absv = v > 0 ? v : -v;
            int32_t pos = el_one_over_one_plus(el_exp_neg(-absv, 4));
            r = v == 0 ? (1 << 30) : (v > 0 ? pos : INT32_MAX - pos);
            r = el_rdbpot(r, 31 - 8) - 128;
        }
        y[i] = (int8_t)el_clamp(r, -128, 127);
    }
}
""")

# ---------------------------------------------------------------- classic ML (ONNX-ML)

_k("post_transform", (), r"""
/* ONNX-ML post_transform: 0 NONE, 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO, 4 PROBIT(unsupported) */
static void el_post_transform(float *s, int n, int mode)
{
    int j;
    if (mode == 2) {
        for (j = 0; j < n; ++j) s[j] = 1.0f / (1.0f + expf(-s[j]));
    } else if (mode == 1 || mode == 3) {
        float mx = s[0], sum = 0.0f;
        for (j = 1; j < n; ++j) if (s[j] > mx) mx = s[j];
        for (j = 0; j < n; ++j) {
            if (mode == 3 && s[j] == 0.0f) continue;
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        for (j = 0; j < n; ++j) s[j] = (mode == 3 && s[j] == 0.0f) ? 0.0f : s[j] / sum;
    }
}
""")

_k("linear_classifier", ("post_transform",), r"""
static void k_linear_classifier(const float *x, int64_t *label, float *scores,
                                const float *coef, const float *icpt, const int64_t *classes,
                                long rows, int F, int R, int n_classes, int mode, int binary)
{
    long r;
    int j, k;
    for (r = 0; r < rows; ++r) {
        const float *xr = x + r * F;
        float *s = scores + r * (binary ? 2 : R);
        int best = 0;
        for (j = 0; j < R; ++j) {
            float acc = icpt[j];
            for (k = 0; k < F; ++k) acc += xr[k] * coef[(long)j * F + k];
            s[binary ? 1 : j] = acc;
        }
        if (binary) {
            /* one score for two classes: label by its sign, scores as onnxruntime gives them */
            float v = s[1];
            best = v > 0.0f ? 1 : 0;
            if (mode == 2) { s[1] = 1.0f / (1.0f + expf(-v)); s[0] = 1.0f - s[1]; }
            else { s[0] = -v; el_post_transform(s, 2, mode); }
        } else {
            for (j = 1; j < R; ++j) if (s[j] > s[best]) best = j;
            el_post_transform(s, R, mode);
        }
        label[r] = classes[best];
        (void)n_classes;
    }
}
""")

_k("linear_regressor", ("post_transform",), r"""
static void k_linear_regressor(const float *x, float *y, const float *coef, const float *icpt,
                               long rows, int F, int T, int mode)
{
    long r;
    int j, k;
    for (r = 0; r < rows; ++r) {
        for (j = 0; j < T; ++j) {
            float acc = icpt[j];
            for (k = 0; k < F; ++k) acc += x[r * F + k] * coef[(long)j * F + k];
            y[r * T + j] = acc;
        }
        el_post_transform(y + r * T, T, mode);
    }
}
""")

_k("scaler", (), r"""
static void k_scaler(const float *x, float *y, long rows, int F, const float *offset,
                     const float *scale)
{
    long r;
    int k;
    for (r = 0; r < rows; ++r)
        for (k = 0; k < F; ++k) y[r * F + k] = (x[r * F + k] - offset[k]) * scale[k];
}
""")

_k("normalizer", (), r"""
static void k_normalizer(const float *x, float *y, long rows, int F, int norm /* 0 max 1 l1 2 l2 */)
{
    long r;
    int k;
    for (r = 0; r < rows; ++r) {
        const float *p = x + r * F;
        float acc = 0.0f;
        for (k = 0; k < F; ++k) {
            float v = p[k];
            if (norm == 0) { if (k == 0 || v > acc) acc = v; }
            else if (norm == 1) acc += fabsf(v);
            else acc += v * v;
        }
        if (norm == 2) acc = sqrtf(acc);
        for (k = 0; k < F; ++k) y[r * F + k] = acc != 0.0f ? p[k] / acc : p[k];
    }
}
""")

_k("tree_ensemble", ("post_transform",), r"""
/* Trees as flat arrays: node feature, threshold, mode (0 LEQ 1 LT 2 GTE 3 GT 4 EQ 5 NEQ
   6 leaf), true/false child (global index), missing-tracks-true; a leaf's weights are
   leaf_first[node] .. leaf_first[node + 1] in (target, weight). */
static void k_tree_ensemble(const float *x, int64_t *label, float *scores, double *acc,
                            long rows, int F,
                            int n_roots, const int32_t *roots, const int32_t *feat,
                            const float *thr, const uint8_t *mode, const int32_t *tchild,
                            const int32_t *fchild, const uint8_t *mvt, const int32_t *leaf_first,
                            const int32_t *leaf_target, const float *leaf_weight,
                            const float *base, int T, int aggregate, int post, int binary,
                            const int64_t *classes)
{
    /* leaf weights are summed in double: scikit-learn sums its float64 votes, and near
       ties (a forest's 10 votes against 10) must break the same way */
    long r;
    int t, j;
    for (r = 0; r < rows; ++r) {
        const float *xr = x + r * F;
        float *s = scores + r * (binary ? 2 : T);
        for (j = 0; j < T; ++j) acc[j] = 0.0;
        for (t = 0; t < n_roots; ++t) {
            int n = roots[t], k;
            while (mode[n] != 6) {
                float v = xr[feat[n]], th = thr[n];
                int go;
                switch (mode[n]) {
                case 0: go = v <= th; break;
                case 1: go = v < th; break;
                case 2: go = v >= th; break;
                case 3: go = v > th; break;
                case 4: go = v == th; break;
                default: go = v != th; break;
                }
                if (v != v) go = mvt[n];
                n = go ? tchild[n] : fchild[n];
            }
            for (k = leaf_first[n]; k < leaf_first[n + 1]; ++k) {
                double *d = &acc[binary ? 0 : leaf_target[k]];
                double w = (double)leaf_weight[k];
                if (aggregate == 2) { if (t == 0 || w > *d) *d = w; }
                else if (aggregate == 3) { if (t == 0 || w < *d) *d = w; }
                else *d += w;
            }
        }
        for (j = 0; j < T; ++j) {
            if (aggregate == 1) acc[j] /= (double)n_roots;
            if (base) acc[j] += (double)base[j];
        }
        if (label) {
            /* averaged votes (no post_transform): sums closer than 1e-6 are a tie in
               scikit-learn's float64 arithmetic that the float32 weights of the ONNX
               graph blur (a forest's 10 votes against 10) */
            double tie = post == 0 ? 1e-6 : 0.0;
            int best = 0;
            if (binary) {
                double v = acc[0];
                if (post == 2) { s[1] = (float)(1.0 / (1.0 + exp(-v))); s[0] = 1.0f - s[1]; best = v > 0.0; }
                else { s[1] = (float)v; s[0] = (float)(1.0 - v); best = v > 0.5 + tie; }
            } else {
                /* the first class wins ties, as in scikit-learn */
                for (j = 1; j < T; ++j) if (acc[j] > acc[best] + tie) best = j;
                for (j = 0; j < T; ++j) s[j] = (float)acc[j];
                el_post_transform(s, T, post);
            }
            label[r] = classes[best];
        } else {
            for (j = 0; j < T; ++j) s[j] = (float)acc[j];
            el_post_transform(s, T, post);
        }
    }
}
""")

FLOAT_MATH = {"unary_f32", "softmax_f32", "pool_f32", "quantize_s8", "post_transform", "normalizer"}


def closure(names) -> list[str]:
    """The kernels ``names`` need, dependencies first, each once."""
    out: list[str] = []

    def add(n):
        if n in out:
            return
        for d in KERNELS[n][0]:
            add(d)
        out.append(n)

    for n in names:
        add(n)
    return out

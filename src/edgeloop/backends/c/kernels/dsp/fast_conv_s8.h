/* fast_conv_s8.h: int8 convolution (one group, dilation 1) as a small im2col and a
 * 2x2-tiled matrix product: two output pixels times two output channels per pass,
 * four int32 partial sums in registers, SMLAD on packed int16 pairs on a Cortex-M
 * with the DSP extension (a portable C loop over the same layout elsewhere).
 *
 * Layouts, written by edgeloop.backends.c.fast at export:
 * - K = C * KH * KW taps in the order (c, ky, kx), padded with zero weights to KP, a
 *   multiple of 4.
 * - weights: output channels in pairs (m, m + 1); for each group of 4 taps, 4 bytes of
 *   row m then 4 bytes of row m + 1, each group's bytes stored as (t0, t2, t1, t3) so
 *   that SXTB16 gives the pair (t0, t1) and SXTB16 ROR 8 the pair (t2, t3). An odd last
 *   channel is stored alone (4 bytes per group). The byte count is that of the ONNX
 *   weights (plus the zero padding of K).
 * - bias: b - x_zp * sum(w) per channel, so the taps multiply the raw int8 input and a
 *   tap in the padding holds x_zp (its term x_zp * w cancels).
 * - the column buffer (int16, 2 * KP values, on the caller's stack): for each pair of
 *   taps j, the word (a_2j, a_2j+1) of pixel A then the word of pixel B.
 *
 * Requantization: el_fast_rq is TFLite's MultiplyByQuantizedMultiplier plus the zero
 * point, bit-exact (see its comment). Depends on the "fx" and "fx_dsp" helpers. */
#ifndef EL_FAST_CONV_S8_H
#define EL_FAST_CONV_S8_H

#include <stdint.h>
#include <string.h>
#include "../fx.h"
#include "fx_dsp.h"

#if defined(__GNUC__)
#define EL_FAST_NOINLINE __attribute__((noinline, unused))
#else
#define EL_FAST_NOINLINE
#endif

/* The requantization of the conv, depthwise and Add kernels: r is one channel's entry
 * (m, K, E, L) of backends/c/fast.py's rq_table, which also holds the output zero point
 * and checked at export that no step below overflows for any input. SMMULR of x << L
 * (L = 1 + left shift) is gemmlowp's rounded doubling high multiply: that adds 2^30 to a
 * non-negative product and 1 - 2^30 to a negative one, then divides by 2^31 rounding
 * toward zero, which for a product -k < 0 is floor((2^30 - k) / 2^31), so in all cases
 * floor((x m + 2^30) / 2^31) = floor((2x m + 2^31) / 2^32), SMMULR of 2x and m (the one
 * saturating case, both INT32_MIN, is excluded at export). RoundingDivideByPOT by E - 1
 * rounds half away from zero; so does the shift right by E of 2h + 2^(E-1) - (h < 0),
 * and E - 1 = 0 is exact too. K = 2^(E-1) + y_zp 2^E adds the zero point on the way.
 * Five instructions on the DSP path. */
static EL_INLINE int32_t el_fast_mulhr(int32_t a, int32_t b)
{
#if defined(EL_DSP)
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 31)) >> 32);
#endif
}

static EL_INLINE int32_t el_fast_rq(int32_t x, int32_t m, int32_t k, int32_t e, int32_t l)
{
    int32_t h = el_fast_mulhr((int32_t)((uint32_t)x << l), m);
    return (int32_t)((uint32_t)k + ((uint32_t)h << 1) + (uint32_t)(h >> 31)) >> e;
}

/* v to int8, then to [lo, hi] (which lie within int8). clip: lo > -128 or hi < 127; the
 * DSP path saturates with SSAT and compares only then (kernels compute it once). */
static EL_INLINE int32_t el_fast_sat(int32_t v, int32_t lo, int32_t hi, int clip)
{
#if defined(EL_DSP)
    v = __ssat(v, 8);
    if (!clip) return v;
#else
    (void)clip;
#endif
    return el_clamp(v, lo, hi);
}

#define EL_FAST_CLIP(lo, hi) ((lo) > -128 || (hi) < 127)

/* TFLite's int8 Add of int8 a and b (fx_add.h's el_add_s8): q is backends/c/fast.py's
 * add_table (a_zp b_zp lo hi, the rq_table entries of a, b and the sum, then a's and b's
 * rescaled values for -128..127); the sum's rescale by el_fast_rq */
static EL_INLINE int8_t el_fast_add(int32_t a, int32_t b, const int32_t *q)
{
    int32_t s = q[16 + 128 + a] + q[16 + 384 + b];
    return (int8_t)el_fast_sat(el_fast_rq(s, q[12], q[13], q[14], q[15]), q[2], q[3],
                               EL_FAST_CLIP(q[2], q[3]));
}

/* Two int16 in one word, a in the low half (PKHBT), stored through memcpy (one STR). */
#define EL_FAST_PACK(a, b) \
    ((int32_t)(((uint32_t)(uint16_t)(int16_t)(a)) | ((uint32_t)(uint16_t)(int16_t)(b) << 16)))

static EL_INLINE void el_fast_st32(int16_t *p, int32_t v)
{
    memcpy(p, &v, 4);
}

/* One pixel's taps into the column buffer, from a window wholly inside src (rows of W
 * bytes, channel planes hw bytes apart; s: the window's top-left tap of channel 0). The
 * pixel's pairs of taps go to every other word: q is col for pixel A, col + 2 for B.
 * Taps from KP - (K rounded up to even) on are zero. 3x3 filters take two channels (18
 * taps, 9 pairs) per step, 1x1 two channels, an even KW pairs along the row. */
static EL_INLINE void el_fast_taps(const int8_t *s, int16_t *q, int C, int W, long hw, int KH,
                                   int KW, int KP)
{
    int16_t *end = q + 2 * KP;
    int c, ky, kx;
    if (KH == 3 && KW == 3) {
        for (c = 0; c + 2 <= C; c += 2, s += 2 * hw, q += 36) {
            const int8_t *s1 = s + W, *s2 = s + 2 * W, *u = s + hw;
            const int8_t *u1 = u + W, *u2 = u + 2 * W;
            el_fast_st32(q, EL_FAST_PACK(s[0], s[1]));
            el_fast_st32(q + 4, EL_FAST_PACK(s[2], s1[0]));
            el_fast_st32(q + 8, EL_FAST_PACK(s1[1], s1[2]));
            el_fast_st32(q + 12, EL_FAST_PACK(s2[0], s2[1]));
            el_fast_st32(q + 16, EL_FAST_PACK(s2[2], u[0]));
            el_fast_st32(q + 20, EL_FAST_PACK(u[1], u[2]));
            el_fast_st32(q + 24, EL_FAST_PACK(u1[0], u1[1]));
            el_fast_st32(q + 28, EL_FAST_PACK(u1[2], u2[0]));
            el_fast_st32(q + 32, EL_FAST_PACK(u2[1], u2[2]));
        }
        if (c < C) {
            const int8_t *s1 = s + W, *s2 = s + 2 * W;
            el_fast_st32(q, EL_FAST_PACK(s[0], s[1]));
            el_fast_st32(q + 4, EL_FAST_PACK(s[2], s1[0]));
            el_fast_st32(q + 8, EL_FAST_PACK(s1[1], s1[2]));
            el_fast_st32(q + 12, EL_FAST_PACK(s2[0], s2[1]));
            el_fast_st32(q + 16, EL_FAST_PACK(s2[2], 0));
            q += 20;
        }
    } else if (KH == 1 && KW == 1) {
        for (c = 0; c + 2 <= C; c += 2, s += 2 * hw, q += 4) el_fast_st32(q, EL_FAST_PACK(s[0], s[hw]));
        if (c < C) {
            el_fast_st32(q, EL_FAST_PACK(s[0], 0));
            q += 4;
        }
    } else if (KW % 2 == 0) {
        for (c = 0; c < C; ++c, s += hw) {
            const int8_t *r = s;
            for (ky = 0; ky < KH; ++ky, r += W)
                for (kx = 0; kx < KW; kx += 2, q += 4) el_fast_st32(q, EL_FAST_PACK(r[kx], r[kx + 1]));
        }
    } else {
        int k = 0;
        for (c = 0; c < C; ++c, s += hw) {
            const int8_t *r = s;
            for (ky = 0; ky < KH; ++ky, r += W)
                for (kx = 0; kx < KW; ++kx, ++k) q[2 * k - (k & 1)] = r[kx];
        }
        if (k & 1) q[2 * k - 1] = 0;   /* the second half of the last pair */
        q += 2 * (k + (k & 1));
    }
    for (; q < end; q += 4) el_fast_st32(q, 0);
}

#if defined(EL_DSP)
/* el_fast_taps of a 1x1 filter for two neighbouring pixels s[0] and s[1] at once: one
 * halfword per channel holds both pixels' bytes, two channels' halfwords make a word
 * (A_c, B_c, A_c+1, B_c+1), and SXTB16 gives pixel A's pair, SXTB16 ROR 8 pixel B's */
static EL_FAST_NOINLINE void el_fast_taps_1x1_pair(const int8_t *s, int16_t *q, int C, long hw,
                                                   int KP)
{
    int16_t *end = q + 2 * KP;
    int c;
    for (c = 0; c + 2 <= C; c += 2, s += 2 * hw, q += 4) {
        uint16_t h0, h1;
        int32_t v;
        memcpy(&h0, s, 2);
        memcpy(&h1, s + hw, 2);
        v = (int32_t)((uint32_t)h0 | ((uint32_t)h1 << 16));
        el_fast_st32(q, __sxtb16(v));
        el_fast_st32(q + 2, el_sxtb16_r8(v));
    }
    if (c < C) {   /* an odd last channel: its pair's second tap is zero */
        uint16_t h0;
        memcpy(&h0, s, 2);
        el_fast_st32(q, __sxtb16((int32_t)h0));
        el_fast_st32(q + 2, el_sxtb16_r8((int32_t)h0));
        q += 4;
    }
    for (; q < end; q += 4) {
        el_fast_st32(q, 0);
        el_fast_st32(q + 2, 0);
    }
}
#endif

#if defined(__GNUC__)
#define EL_FAST_COL(name, n) int16_t name[n] __attribute__((aligned(8)))
#else
#define EL_FAST_COL(name, n) int16_t name[n]
#endif

#if defined(EL_DSP)
/* two words from p, p + 4; p += 8 (one LDRD: any two registers in Thumb-2) */
#define EL_FAST_LDRD(a, b, p) \
    __asm__("ldrd %0, %1, [%2], #8" : "=r"(a), "=r"(b), "+r"(p) : : "memory")
#endif

#if defined(EL_DSP)
/* 4 taps of the 2x2 tile: two LDRD of the two pixels' pairs, one of the two rows'
 * 4 weight bytes (t0 t2 t1 t3: SXTB16 gives t0 t1, SXTB16 ROR 8 t2 t3) */
#define EL_FAST_TILE4() do { \
        int32_t xa, xb, wa, wb, u; \
        EL_FAST_LDRD(xa, xb, pc); \
        EL_FAST_LDRD(wa, wb, pw); \
        u = __sxtb16(wa); \
        a00 = __smlad(xa, u, a00); \
        a01 = __smlad(xb, u, a01); \
        u = __sxtb16(wb); \
        a10 = __smlad(xa, u, a10); \
        a11 = __smlad(xb, u, a11); \
        EL_FAST_LDRD(xa, xb, pc); \
        u = el_sxtb16_r8(wa); \
        a00 = __smlad(xa, u, a00); \
        a01 = __smlad(xb, u, a01); \
        u = el_sxtb16_r8(wb); \
        a10 = __smlad(xa, u, a10); \
        a11 = __smlad(xb, u, a11); \
    } while (0)
#endif

/* one channel's rq_table entry into four variables (two LDRD on the DSP path) */
#if defined(EL_DSP)
#define EL_FAST_LDQ(m, k, e, l, p) \
    __asm__("ldrd %0, %1, [%4]\n\tldrd %2, %3, [%4, #8]" \
            : "=&r"(m), "=&r"(k), "=&r"(e), "=r"(l) : "r"(p) : "memory")
#else
#define EL_FAST_LDQ(m, k, e, l, p) ((m) = (p)[0], (k) = (p)[1], (e) = (p)[2], (l) = (p)[3])
#endif

/* Store v at p, or with a residual (rq: fast.py's add_table of add(conv, r), r being
 * the output itself) the int8 sum of v and the skip value p holds: each output is read
 * and written at its own place only. */
#define EL_FAST_ST(p, v) ((p) = (int8_t)(rq ? el_fast_add((v), (p), rq) : (v)))

/* The 2x2 product for one pixel pair: ya, yb point at the two pixels' outputs of
 * channel 0, channel m is at + m * ysa (+ m * ysb). w: 4-byte aligned (LDRD).
 * t: the rq_table (4 words per channel). */
static EL_FAST_NOINLINE void el_fast_gemm_s8(const int16_t *col, const int8_t *w, int KP,
                                             const int32_t *b, const int32_t *t, int M,
                                             int8_t *ya, int8_t *yb, long ysa, long ysb, int lo,
                                             int hi, const int32_t *rq)
{
    int m;
    const int8_t *pw = w;
    const int plain = !rq && !EL_FAST_CLIP(lo, hi);   /* outputs need SSAT only */
    int8_t *pa = ya, *pb = yb;
    for (m = 0; m + 2 <= M; m += 2, t += 8, b += 2, pa += 2 * ysa, pb += 2 * ysb) {
        int32_t a00 = b[0], a01 = a00, a10 = b[1], a11 = a10;
        const int16_t *pc = col;
        int g;
#if defined(EL_DSP)
        /* two groups of 4 taps per pass (half the loop overhead), an odd one first */
        g = KP >> 2;
        if (g & 1) EL_FAST_TILE4();
        for (g >>= 1; g > 0; --g) {
            EL_FAST_TILE4();
            EL_FAST_TILE4();
        }
#else
        for (g = KP >> 2; g > 0; --g, pc += 8, pw += 8) {
            a00 += pc[0] * pw[0] + pc[1] * pw[2] + pc[4] * pw[1] + pc[5] * pw[3];
            a01 += pc[2] * pw[0] + pc[3] * pw[2] + pc[6] * pw[1] + pc[7] * pw[3];
            a10 += pc[0] * pw[4] + pc[1] * pw[6] + pc[4] * pw[5] + pc[5] * pw[7];
            a11 += pc[2] * pw[4] + pc[3] * pw[6] + pc[6] * pw[5] + pc[7] * pw[7];
        }
#endif
        {
            int32_t qm, qk, qe, ql;
            EL_FAST_LDQ(qm, qk, qe, ql, t);
            a00 = el_fast_rq(a00, qm, qk, qe, ql);
            a01 = el_fast_rq(a01, qm, qk, qe, ql);
            EL_FAST_LDQ(qm, qk, qe, ql, t + 4);
            a10 = el_fast_rq(a10, qm, qk, qe, ql);
            a11 = el_fast_rq(a11, qm, qk, qe, ql);
        }
        if (plain) {
            pa[0] = (int8_t)el_fast_sat(a00, -128, 127, 0);
            pb[0] = (int8_t)el_fast_sat(a01, -128, 127, 0);
            pa[ysa] = (int8_t)el_fast_sat(a10, -128, 127, 0);
            pb[ysb] = (int8_t)el_fast_sat(a11, -128, 127, 0);
        } else {
            EL_FAST_ST(pa[0], el_fast_sat(a00, lo, hi, 1));
            EL_FAST_ST(pb[0], el_fast_sat(a01, lo, hi, 1));
            EL_FAST_ST(pa[ysa], el_fast_sat(a10, lo, hi, 1));
            EL_FAST_ST(pb[ysb], el_fast_sat(a11, lo, hi, 1));
        }
    }
    if (m < M) {   /* the odd last channel: its row alone */
        int32_t a00 = b[0], a01 = a00;
        const int16_t *pc = col;
        int g;
        for (g = KP >> 2; g > 0; --g, pc += 8, pw += 4) {
#if defined(EL_DSP)
            int32_t wa = el_ld32(pw), u = __sxtb16(wa);
            a00 = __smlad(el_ld32(pc), u, a00);
            a01 = __smlad(el_ld32(pc + 2), u, a01);
            u = el_sxtb16_r8(wa);
            a00 = __smlad(el_ld32(pc + 4), u, a00);
            a01 = __smlad(el_ld32(pc + 6), u, a01);
#else
            a00 += pc[0] * pw[0] + pc[1] * pw[2] + pc[4] * pw[1] + pc[5] * pw[3];
            a01 += pc[2] * pw[0] + pc[3] * pw[2] + pc[6] * pw[1] + pc[7] * pw[3];
#endif
        }
        {
            int32_t v00 = el_fast_sat(el_fast_rq(a00, t[0], t[1], t[2], t[3]), lo, hi, 1);
            int32_t v01 = el_fast_sat(el_fast_rq(a01, t[0], t[1], t[2], t[3]), lo, hi, 1);
            EL_FAST_ST(pa[0], v00);
            EL_FAST_ST(pb[0], v01);
        }
    }
}

/* The whole convolution, x [C, H, W] -> y [M, OH, OW]. col: 2 * KP int16 (4-byte
 * aligned, EL_FAST_COL declares it). When every window lies inside the input, pixels
 * are taken in pairs in output order (a pair may span two rows) straight from x; y may
 * then be x itself for a 1x1 stride-1 convolution with M <= C (a pair's outputs are
 * written after its inputs were read, at the same pixels). Otherwise, per output row,
 * the KH input rows of every channel are first copied into rows (C * KH * WR bytes,
 * WR = (OW - 1) * SW + KW) with x_zp in the padding, and the windows read from there;
 * pairs then stay within the row. An odd last pixel runs as both pixels of a pair, its
 * second output going to a spare byte. taps: el_fast_taps for this KH x KW (one
 * out-of-line copy per filter shape, see backends/c/fast.py). */
typedef void (*el_fast_taps_fn)(const int8_t *s, int16_t *q, int C, int W, long hw, int KP);

static EL_FAST_NOINLINE void el_fast_conv_s8(const int8_t *x, int8_t *y, const int8_t *w,
                                             const int32_t *b, const int32_t *t, int16_t *col,
                                             int8_t *rows, el_fast_taps_fn taps, int C, int H,
                                             int W, int M, int OH, int OW, int KH, int KW,
                                             int SH, int SW, int PT, int PL, int x_zp, int lo,
                                             int hi, const int32_t *rq)
{
    int KP = (C * KH * KW + 3) & ~3;
    long n = (long)OH * OW, hw = (long)H * W, p;
    int oy, ox, c, ky;
    int8_t spare[2] = {0, 0};
#if defined(EL_DSP)
    if (KH == 1 && KW == 1 && SH == 1 && SW == 1 && PT == 0 && PL == 0 && OH == H && OW == W) {
        /* 1x1 stride 1: pixels p and p + 1 are neighbours in every channel plane */
        for (p = 0; p + 1 < n; p += 2) {
            el_fast_taps_1x1_pair(x + p, col, C, hw, KP);
            el_fast_gemm_s8(col, w, KP, b, t, M, y + p, y + p + 1, n, n, lo, hi, rq);
        }
        if (p < n) {
            taps(x + p, col, C, W, hw, KP);
            taps(x + p, col + 2, C, W, hw, KP);
            el_fast_gemm_s8(col, w, KP, b, t, M, y + p, spare, n, 0, lo, hi, rq);
        }
        return;
    }
#endif
    if (PT == 0 && PL == 0 && (OH - 1) * SH + KH <= H && (OW - 1) * SW + KW <= W) {
        oy = ox = 0;
        for (p = 0; p < n; p += 2) {
            int oyb = oy, oxb = ox + 1;
            if (oxb == OW) { oxb = 0; ++oyb; }
            taps(x + (long)oy * SH * W + ox * SW, col, C, W, hw, KP);
            if (p + 1 < n) {
                taps(x + (long)oyb * SH * W + oxb * SW, col + 2, C, W, hw, KP);
                el_fast_gemm_s8(col, w, KP, b, t, M, y + p, y + p + 1, n, n, lo, hi, rq);
            } else {
                taps(x + (long)oy * SH * W + ox * SW, col + 2, C, W, hw, KP);
                el_fast_gemm_s8(col, w, KP, b, t, M, y + p, spare, n, 0, lo, hi, rq);
            }
            ox = oxb + 1;
            oy = oyb;
            if (ox == OW) { ox = 0; ++oy; }
        }
        return;
    }
    {
        int WR = (OW - 1) * SW + KW;
        long hr = (long)KH * WR;
        int left = PL < WR ? PL : WR;
        int copy = W < WR - left ? W : WR - left;
        for (oy = 0; oy < OH; ++oy) {
            int8_t *yr = y + (long)oy * OW;
            for (c = 0; c < C; ++c) {
                for (ky = 0; ky < KH; ++ky) {
                    int8_t *dst = rows + c * hr + (long)ky * WR;
                    int iy = oy * SH - PT + ky;
                    if (iy < 0 || iy >= H) {
                        memset(dst, x_zp, (size_t)WR);
                        continue;
                    }
                    memset(dst, x_zp, (size_t)left);
                    memcpy(dst + left, x + c * hw + (long)iy * W, (size_t)copy);
                    memset(dst + left + copy, x_zp, (size_t)(WR - left - copy));
                }
            }
            for (ox = 0; ox < OW; ox += 2) {
                taps(rows + ox * SW, col, C, WR, hr, KP);
                if (ox + 1 < OW) {
                    taps(rows + (ox + 1) * SW, col + 2, C, WR, hr, KP);
                    el_fast_gemm_s8(col, w, KP, b, t, M, yr + ox, yr + ox + 1, n, n, lo, hi,
                                    rq);
                } else {
                    taps(rows + ox * SW, col + 2, C, WR, hr, KP);
                    el_fast_gemm_s8(col, w, KP, b, t, M, yr + ox, spare, n, 0, lo, hi, rq);
                }
            }
        }
    }
}

#endif /* EL_FAST_CONV_S8_H */

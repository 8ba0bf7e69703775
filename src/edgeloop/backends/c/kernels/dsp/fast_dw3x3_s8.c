/* fast_dw3x3_s8.c: int8 3x3 depthwise convolution (multiplier 1) at stride 1 or 2.
 * Each channel's plane is first copied into a padded plane on the stack (x_zp in the
 * padding), so every window is whole: bias - x_zp * sum(w) is
 * folded at export, the taps multiply the raw input. On the DSP path one word load per
 * row and SXTB16 give (b0, b2) and (b1, b3): at stride 1 two outputs share each load
 * (SMLAD for taps 0 and 2, SMLAxy for tap 1), at stride 2 one output per load.
 * s: NULL, or the planned scratch plane of the in-place scheme (each channel's output
 * is computed into s, then copied over the consumed input, as conv_s8_grp_ip does).
 * t: the requantization table (fast.py's rq_table; el_fast_rq of fast_conv_s8.h). */
#ifndef EL_FAST_DW3X3_S8_C
#define EL_FAST_DW3X3_S8_C

#include <stdint.h>
#include <string.h>
#include "fast_conv_s8.h"

#define EL_DW_PAIR(lo16, hi16) ((int32_t)(((uint32_t)(uint16_t)(hi16) << 16) | (uint16_t)(lo16)))

/* stride 1: two outputs per step, the three row loads shared (see the file comment);
 * LO, HI, CLIP: el_fast_sat's range (constants for the SSAT-only loop) */
#define EL_DW_PAIRS(LO, HI, CLIP) \
    for (; ox + 2 <= OW; ox += 2) { \
        int32_t v = el_ld32(r0 + ox), e = __sxtb16(v), o = el_sxtb16_r8(v); \
        int32_t a = __smlad(e, p02, bias), c = __smlad(o, p02, bias); \
        a = __smlabb(o, p14, a); \
        c = __smlatb(e, p14, c); \
        v = el_ld32(r1 + ox); e = __sxtb16(v); o = el_sxtb16_r8(v); \
        a = __smlad(e, p35, a); \
        c = __smlad(o, p35, c); \
        a = __smlabt(o, p14, a); \
        c = __smlatt(e, p14, c); \
        v = el_ld32(r2 + ox); e = __sxtb16(v); o = el_sxtb16_r8(v); \
        a = __smlad(e, p68, a); \
        c = __smlad(o, p68, c); \
        a = __smlabb(o, p7, a); \
        c = __smlatb(e, p7, c); \
        yr[ox] = (int8_t)el_fast_sat(el_fast_rq(a, qm, qk, qe, ql), LO, HI, CLIP); \
        yr[ox + 1] = (int8_t)el_fast_sat(el_fast_rq(c, qm, qk, qe, ql), LO, HI, CLIP); \
    }

/* gcc would turn the padded plane's short fill and copy loops into memset and memcpy
   calls, which cost more than the loops for rows of a few words */
#if defined(__GNUC__) && !defined(__clang__)
#define EL_DW_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define EL_DW_NO_LIBCALLS
#endif

/* one channel: P holds the padded plane, HP rows of RS bytes (row r = input row r - PT,
 * column j = input column j - PL, x_zp outside the input) */
static EL_FAST_NOINLINE EL_DW_NO_LIBCALLS void el_fast_dw3x3_plane(const int8_t *x, int8_t *y,
                                                 const int8_t *w,
                                                 int32_t bias, const int32_t *t, int H,
                                                 int W, int OH, int OW, int S, int PT, int PL,
                                                 int x_zp, int lo, int hi, int8_t *P, int RS)
{
    int HP = (OH - 1) * S + 3, left = PL < RS ? PL : RS;
    int copy = W < RS - left ? W : RS - left;
    int oy, ox, r, i;
    const int32_t qm = t[0], qk = t[1], qe = t[2], ql = t[3];
    const int clip = EL_FAST_CLIP(lo, hi);
    int32_t zp4 = (int32_t)(0x01010101u * (uint8_t)x_zp);
#if defined(EL_DSP)
    int32_t p02 = EL_DW_PAIR(w[0], w[2]), p35 = EL_DW_PAIR(w[3], w[5]), p68 = EL_DW_PAIR(w[6], w[8]);
    int32_t p14 = EL_DW_PAIR(w[1], w[4]), p7 = EL_DW_PAIR(w[7], 0);
#endif
    /* each row: x_zp words over the whole row, then the input row's bytes at left (word
       copies, unaligned on the DSP cores, for short rows) */
    for (r = 0; r < HP; ++r) {
        int8_t *dst = P + (long)r * RS;
        int iy = r - PT;
        for (i = 0; i < RS; i += 4) el_fast_st32((int16_t *)(void *)(dst + i), zp4);
        if (iy >= 0 && iy < H) {
            const int8_t *src = x + (long)iy * W;
            int8_t *d = dst + left;
            i = 0;
            if (copy >= 32) {   /* long rows: the library's block copy */
                memcpy(d, src, (size_t)copy);
                i = copy;
            }
            for (; i + 4 <= copy; i += 4) {
                int32_t v;
                memcpy(&v, src + i, 4);
                memcpy(d + i, &v, 4);
            }
            for (; i < copy; ++i) d[i] = src[i];
        }
    }
    for (oy = 0; oy < OH; ++oy) {
        int8_t *yr = y + (long)oy * OW;
        const int8_t *r0 = P + (long)oy * S * RS, *r1 = r0 + RS, *r2 = r1 + RS;
        ox = 0;
#if defined(EL_DSP)
        if (S == 1 && !clip) {
            EL_DW_PAIRS(-128, 127, 0);
        } else if (S == 1) {
            EL_DW_PAIRS(lo, hi, 1);
        }
        for (; ox < OW; ++ox) {   /* stride 2, or the odd last output at stride 1 */
            const int ix = ox * S;
            int32_t v = el_ld32(r0 + ix), a = __smlad(__sxtb16(v), p02, bias);
            a = __smlabb(el_sxtb16_r8(v), p14, a);
            v = el_ld32(r1 + ix);
            a = __smlad(__sxtb16(v), p35, a);
            a = __smlabt(el_sxtb16_r8(v), p14, a);
            v = el_ld32(r2 + ix);
            a = __smlad(__sxtb16(v), p68, a);
            a = __smlabb(el_sxtb16_r8(v), p7, a);
            yr[ox] = (int8_t)el_fast_sat(el_fast_rq(a, qm, qk, qe, ql), lo, hi, clip);
        }
#else
        for (; ox < OW; ++ox) {
            const int8_t *a0 = r0 + ox * S, *a1 = r1 + ox * S, *a2 = r2 + ox * S;
            int32_t a = bias + a0[0] * w[0] + a0[1] * w[1] + a0[2] * w[2] + a1[0] * w[3]
                      + a1[1] * w[4] + a1[2] * w[5] + a2[0] * w[6] + a2[1] * w[7] + a2[2] * w[8];
            yr[ox] = (int8_t)el_fast_sat(el_fast_rq(a, qm, qk, qe, ql), lo, hi, clip);
        }
#endif
    }
}

static EL_FAST_NOINLINE void k_fast_dw3x3_s8(const int8_t *x, int8_t *y, const int8_t *w,
                                             const int32_t *b, const int32_t *t, int C, int H,
                                             int W, int OH, int OW, int S, int PT, int PL,
                                             int x_zp, int lo, int hi, int8_t *s)
{
    /* the padded plane: rows of the WR bytes the windows read plus the 4th byte of the
       last load, rounded up to words */
    int RS = ((OW - 1) * S + 3 + 4) & ~3, c;
    long hw = (long)H * W, ohw = (long)OH * OW;
    EL_FAST_COL(plane, (((OH - 1) * S + 3) * RS + 1) / 2);
    for (c = 0; c < C; ++c) {
        int8_t *out = s ? s : y + c * ohw;
        el_fast_dw3x3_plane(x + c * hw, out, w + 9 * c, b[c], t + 4 * c, H, W, OH, OW, S, PT,
                            PL, x_zp, lo, hi, (int8_t *)(void *)plane, RS);
        if (s) memcpy(y + c * ohw, s, (size_t)ohw);
    }
}

#endif /* EL_FAST_DW3X3_S8_C */

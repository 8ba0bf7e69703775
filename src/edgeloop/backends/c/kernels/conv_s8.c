/* conv_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_S8_C
#define EL_CONV_S8_C

#include <stdint.h>
#include "fx.h"
#include "dsp/fx_dsp.h"

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

#endif /* EL_CONV_S8_C */

/* fast_fc_s8.c: int8 fully connected, y[i, n] = requant(b[n] + sum_k x[i, k] * w[n, k]),
 * the input zero point folded into b at export. Each input row is widened once to
 * int16 (on the stack, zero-padded to KP), then four (or two, or one) output units per
 * pass run SMLAD on it, the weights in the fast_conv_s8 layout (units in pairs, groups
 * of 4 taps stored as t0 t2 t1 t3; 4-byte aligned). t: fast.py's rq_table, one entry per
 * unit or one for all (per_channel 0); el_fast_rq of fast_conv_s8.h. */
#ifndef EL_FAST_FC_S8_C
#define EL_FAST_FC_S8_C

#include <stdint.h>
#include <string.h>
#include "fast_conv_s8.h"

#if defined(EL_DSP)
/* 4 taps of 4 units: the row's two int16 pairs, then each unit pair's 8 weight bytes */
#define EL_FC_GROUP4() do { \
        int32_t x01, x23, wa, wb; \
        EL_FAST_LDRD(x01, x23, pc); \
        EL_FAST_LDRD(wa, wb, p0); \
        a0 = __smlad(x01, __sxtb16(wa), a0); \
        a1 = __smlad(x01, __sxtb16(wb), a1); \
        a0 = __smlad(x23, el_sxtb16_r8(wa), a0); \
        a1 = __smlad(x23, el_sxtb16_r8(wb), a1); \
        EL_FAST_LDRD(wa, wb, p1); \
        a2 = __smlad(x01, __sxtb16(wa), a2); \
        a3 = __smlad(x01, __sxtb16(wb), a3); \
        a2 = __smlad(x23, el_sxtb16_r8(wa), a2); \
        a3 = __smlad(x23, el_sxtb16_r8(wb), a3); \
    } while (0)
#endif

static EL_FAST_NOINLINE void el_fast_fc_row(const int16_t *col, const int8_t *w, int KP,
                                            const int32_t *b, const int32_t *t,
                                            int per_channel, int N, int8_t *y, int lo, int hi)
{
    int n, g, j, u;
    const int8_t *pw = w;
    int32_t acc[4];
    const int clip = EL_FAST_CLIP(lo, hi);
    {
        n = 0;
        while (n < N) {
            u = N - n >= 4 ? 4 : N - n;
            if (u == 4) {
                int32_t a0 = b[n], a1 = b[n + 1], a2 = b[n + 2], a3 = b[n + 3];
                const int16_t *pc = col;
                const int8_t *p0 = pw, *p1 = pw + 2 * KP;
#if defined(EL_DSP)
                /* two groups of 4 taps per pass (half the loop overhead), an odd one first */
                g = KP >> 2;
                if (g & 1) EL_FC_GROUP4();
                for (g >>= 1; g > 0; --g) {
                    EL_FC_GROUP4();
                    EL_FC_GROUP4();
                }
#else
                for (g = KP >> 2; g > 0; --g) {
                    a0 += pc[0] * p0[0] + pc[1] * p0[2] + pc[2] * p0[1] + pc[3] * p0[3];
                    a1 += pc[0] * p0[4] + pc[1] * p0[6] + pc[2] * p0[5] + pc[3] * p0[7];
                    a2 += pc[0] * p1[0] + pc[1] * p1[2] + pc[2] * p1[1] + pc[3] * p1[3];
                    a3 += pc[0] * p1[4] + pc[1] * p1[6] + pc[2] * p1[5] + pc[3] * p1[7];
                    pc += 4; p0 += 8; p1 += 8;
                }
#endif
                acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
            } else {
                /* the last 1-3 units: a pair's rows interleave, an odd last row is alone */
                for (j = 0; j < u; ++j) {
                    int step = (j == 2 || (u - j == 1 && j % 2 == 0)) ? 4 : 8;
                    const int8_t *p = pw + (j / 2) * 2 * KP + (j % 2) * 4;
                    const int16_t *pc = col;
                    int32_t a = b[n + j];
                    for (g = KP >> 2; g > 0; --g, pc += 4, p += step)
                        a += pc[0] * p[0] + pc[1] * p[2] + pc[2] * p[1] + pc[3] * p[3];
                    acc[j] = a;
                }
            }
            for (j = 0; j < u; ++j, ++n) {
                const int32_t *r = t + (per_channel ? 4 * n : 0);
                y[n] = (int8_t)el_fast_sat(el_fast_rq(acc[j], r[0], r[1], r[2], r[3]), lo, hi, clip);
            }
            pw += 4 * KP;
        }
    }
}

static EL_FAST_NOINLINE void k_fast_fc_s8(const int8_t *x, int8_t *y, const int32_t *w,
                                          const int32_t *b, const int32_t *t,
                                          int per_channel, int M, int K, int N, int lo, int hi)
{
    int KP = (K + 3) & ~3, i, k;
    EL_FAST_COL(col, (K + 3) & ~3);
    for (i = 0; i < M; ++i) {
        const int8_t *xr = x + (long)i * K;
        for (k = 0; k < K; ++k) col[k] = xr[k];
        for (; k < KP; ++k) col[k] = 0;
        el_fast_fc_row(col, (const int8_t *)w, KP, b, t, per_channel, N, y + (long)i * N, lo,
                       hi);
    }
}

#endif /* EL_FAST_FC_S8_C */

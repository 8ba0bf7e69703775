/* conv_s8_pw_ip.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_S8_PW_IP_C
#define EL_CONV_S8_PW_IP_C

#include <stdint.h>
#include "fx.h"
#include "dsp/fx_dsp.h"

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

#endif /* EL_CONV_S8_PW_IP_C */

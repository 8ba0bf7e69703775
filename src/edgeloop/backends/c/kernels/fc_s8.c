/* fc_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FC_S8_C
#define EL_FC_S8_C

#include <stdint.h>
#include "fx.h"
#include "dsp/fx_dsp.h"

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

#endif /* EL_FC_S8_C */

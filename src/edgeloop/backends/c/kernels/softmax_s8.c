/* softmax_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_SOFTMAX_S8_C
#define EL_SOFTMAX_S8_C

#include <stdint.h>
#include "fx.h"
#include "fx_exp.h"
#include "fx_recip.h"
#include "fx_clz.h"

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

#endif /* EL_SOFTMAX_S8_C */

/* logistic_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_LOGISTIC_S8_C
#define EL_LOGISTIC_S8_C

#include <stdint.h>
#include "fx.h"
#include "fx_exp.h"
#include "fx_recip.h"
#include "fx_tanh.h"

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

#endif /* EL_LOGISTIC_S8_C */

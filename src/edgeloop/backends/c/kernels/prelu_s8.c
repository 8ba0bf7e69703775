/* prelu_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_PRELU_S8_C
#define EL_PRELU_S8_C

#include <stdint.h>
#include "fx.h"
#include "nd_index.h"

/* TFLite's int8 PRELU (reference_ops::BroadcastPrelu4DSlow): v = x - x_zp; v >= 0 ->
   v * (x_s / y_s), else v * (alpha - a_zp) * (x_s * a_s / y_s); plus y_zp, clamped. alpha
   broadcasts to the output through a_strides. */
static void k_prelu_s8(const int8_t *x, const int8_t *alpha, int8_t *y, long n, int ndim,
                       const int32_t *shape, const int32_t *a_strides, int x_zp, int a_zp,
                       int y_zp, int32_t mult_pos, int shift_pos, int32_t mult_neg,
                       int shift_neg, int lo, int hi)
{
    long i;
    for (i = 0; i < n; ++i) {
        int32_t v = (int32_t)x[i] - x_zp, r;
        if (v >= 0) {
            r = el_mbqm(v, mult_pos, shift_pos);
        } else {
            int32_t a = (int32_t)alpha[el_nd_offset(i, ndim, shape, a_strides)] - a_zp;
            r = el_mbqm(v * a, mult_neg, shift_neg);
        }
        y[i] = (int8_t)el_clamp(r + y_zp, lo, hi);
    }
}

#endif /* EL_PRELU_S8_C */

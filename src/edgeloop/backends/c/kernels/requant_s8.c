/* requant_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_REQUANT_S8_C
#define EL_REQUANT_S8_C

#include <stdint.h>
#include "fx.h"

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

#endif /* EL_REQUANT_S8_C */

/* fx_half_recip.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_HALF_RECIP_H
#define EL_FX_HALF_RECIP_H

#include <stdint.h>
#include "fx_exp.h"

/* Newton-Raphson core shared by gemmlowp's 1/(1+x) and (1-x)/(1+x): 1/(1+x) in Q2.29 */
static int32_t el_half_recip(int32_t a /* Q0.31 in [0, 1] */)
{
    int64_t sum = (int64_t)a + INT32_MAX;
    int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + el_srdhm(half_den, -1010580540);
    int k;
    for (k = 0; k < 3; ++k) {
        int32_t hdx = el_srdhm(half_den, x);
        int32_t one_minus = (1 << 29) - hdx;
        x = x + el_sat_shl(el_srdhm(x, one_minus), 2);
    }
    return x;
}

#endif /* EL_FX_HALF_RECIP_H */

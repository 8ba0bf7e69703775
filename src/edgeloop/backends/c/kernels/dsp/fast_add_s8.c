/* fast_add_s8.c: the int8 Add of two tensors of the output's shape (no broadcast):
 * TFLite's arithmetic (both inputs shifted left by 20, rescaled to twice the larger
 * input scale, summed, rescaled to the output), with el_fast_mbqm (fast_conv_s8.h).
 * y may be a or b (each element is read before it is written). */
#ifndef EL_FAST_ADD_S8_C
#define EL_FAST_ADD_S8_C

#include <stdint.h>
#include <string.h>
#include "fast_conv_s8.h"

static EL_FAST_NOINLINE void k_fast_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n,
                          const int32_t *q /* a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi */)
{
    const int32_t a_zp = q[0], b_zp = q[1], y_zp = q[2], am = q[3], bm = q[5], ym = q[7];
    const int as = q[4], bs = q[6], ys = q[8];
    const int32_t lo = q[9], hi = q[10];
    long i;
    for (i = 0; i < n; ++i) {
        int32_t u = ((int32_t)a[i] - a_zp) * (1 << 20);
        int32_t v = ((int32_t)b[i] - b_zp) * (1 << 20);
        int32_t s = el_fast_mbqm(u, am, as) + el_fast_mbqm(v, bm, bs);
        s = el_fast_mbqm(s, ym, ys) + y_zp;
        y[i] = (int8_t)(s < lo ? lo : (s > hi ? hi : s));
    }
}

#endif /* EL_FAST_ADD_S8_C */

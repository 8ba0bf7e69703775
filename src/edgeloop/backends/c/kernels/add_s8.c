/* add_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_ADD_S8_C
#define EL_ADD_S8_C

#include <stdint.h>
#include "fx.h"
#include "nd_index.h"

static void k_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n, int ndim,
                     const int32_t *shape, const int32_t *a_strides, const int32_t *b_strides,
                     const int32_t *q /* a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi */)
{
    long i;
    for (i = 0; i < n; ++i) {
        int32_t u = ((int32_t)a[el_nd_offset(i, ndim, shape, a_strides)] - q[0]) * (1 << 20);
        int32_t v = ((int32_t)b[el_nd_offset(i, ndim, shape, b_strides)] - q[1]) * (1 << 20);
        int32_t s = el_mbqm(u, q[3], q[4]) + el_mbqm(v, q[5], q[6]);
        s = el_mbqm(s, q[7], q[8]) + q[2];
        y[i] = (int8_t)el_clamp(s, q[9], q[10]);
    }
}

#endif /* EL_ADD_S8_C */

/* add_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_ADD_S8_C
#define EL_ADD_S8_C

#include <stdint.h>
#include "fx.h"
#include "fx_add.h"
#include "nd_index.h"

static void k_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n, int ndim,
                     const int32_t *shape, const int32_t *a_strides, const int32_t *b_strides,
                     const int32_t *q /* a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi */)
{
    long i;
    for (i = 0; i < n; ++i)
        y[i] = el_add_s8(a[el_nd_offset(i, ndim, shape, a_strides)],
                         b[el_nd_offset(i, ndim, shape, b_strides)], q);
}

#endif /* EL_ADD_S8_C */

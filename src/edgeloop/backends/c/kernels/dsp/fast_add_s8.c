/* fast_add_s8.c: the int8 Add of two tensors of the output's shape (no broadcast):
 * TFLite's arithmetic (both inputs shifted left by 20, rescaled to twice the larger
 * input scale, summed, rescaled to the output) as el_fast_add (fast_conv_s8.h), q being
 * backends/c/fast.py's add_table. y may be a or b (each element is read before it is
 * written). */
#ifndef EL_FAST_ADD_S8_C
#define EL_FAST_ADD_S8_C

#include <stdint.h>
#include <string.h>
#include "fast_conv_s8.h"

static EL_FAST_NOINLINE void k_fast_add_s8(const int8_t *a, const int8_t *b, int8_t *y, long n,
                                           const int32_t *q)
{
    long i;
    for (i = 0; i < n; ++i) y[i] = el_fast_add(a[i], b[i], q);
}

#endif /* EL_FAST_ADD_S8_C */

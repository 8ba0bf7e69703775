/* lut_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_LUT_S8_C
#define EL_LUT_S8_C

#include <stdint.h>

/* An element-wise int8 function as a 256-entry table (entry x + 128 is the output for
   input x), filled at export time from the quantized function. */
static void k_lut_s8(const int8_t *x, int8_t *y, long n, const int8_t *table)
{
    long i;
    for (i = 0; i < n; ++i) y[i] = table[(int)x[i] + 128];
}

#endif /* EL_LUT_S8_C */

/* dequantize_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_DEQUANTIZE_S8_C
#define EL_DEQUANTIZE_S8_C

#include <stdint.h>

static void k_dequantize_s8(const int8_t *x, float *y, long n, float scale, int zp)
{
    long i;
    for (i = 0; i < n; ++i) y[i] = (float)((int32_t)x[i] - zp) * scale;
}

#endif /* EL_DEQUANTIZE_S8_C */

/* quantize_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_QUANTIZE_S8_C
#define EL_QUANTIZE_S8_C

#include <stdint.h>
#include <math.h>

static void k_quantize_s8(const float *x, int8_t *y, long n, float scale, int zp)
{
    long i;
    for (i = 0; i < n; ++i) {
        float v = rintf(x[i] / scale) + (float)zp;
        y[i] = (int8_t)(v < -128.0f ? -128 : (v > 127.0f ? 127 : (int)v));
    }
}

#endif /* EL_QUANTIZE_S8_C */

/* batchnorm_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_BATCHNORM_F32_C
#define EL_BATCHNORM_F32_C

#include <stdint.h>

static void k_batchnorm_f32(const float *x, float *y, const float *s, const float *t,
                            long N, long C, long HW)
{
    long n, c, i;
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (i = 0; i < HW; ++i) {
                long k = (n * C + c) * HW + i;
                y[k] = x[k] * s[c] + t[c];
            }
}

#endif /* EL_BATCHNORM_F32_C */

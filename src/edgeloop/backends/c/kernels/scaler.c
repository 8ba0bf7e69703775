/* scaler.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_SCALER_C
#define EL_SCALER_C

#include <stdint.h>

static void k_scaler(const float *x, float *y, long rows, int F, const float *offset,
                     const float *scale)
{
    long r;
    int k;
    for (r = 0; r < rows; ++r)
        for (k = 0; k < F; ++k) y[r * F + k] = (x[r * F + k] - offset[k]) * scale[k];
}

#endif /* EL_SCALER_C */

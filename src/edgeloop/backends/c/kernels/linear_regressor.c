/* linear_regressor.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_LINEAR_REGRESSOR_C
#define EL_LINEAR_REGRESSOR_C

#include <stdint.h>
#include "post_transform.h"

static void k_linear_regressor(const float *x, float *y, const float *coef, const float *icpt,
                               long rows, int F, int T, int mode)
{
    long r;
    int j, k;
    for (r = 0; r < rows; ++r) {
        for (j = 0; j < T; ++j) {
            float acc = icpt[j];
            for (k = 0; k < F; ++k) acc += x[r * F + k] * coef[(long)j * F + k];
            y[r * T + j] = acc;
        }
        el_post_transform(y + r * T, T, mode);
    }
}

#endif /* EL_LINEAR_REGRESSOR_C */

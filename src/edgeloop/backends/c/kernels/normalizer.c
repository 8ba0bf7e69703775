/* normalizer.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_NORMALIZER_C
#define EL_NORMALIZER_C

#include <stdint.h>
#include <math.h>

static void k_normalizer(const float *x, float *y, long rows, int F, int norm /* 0 max 1 l1 2 l2 */)
{
    long r;
    int k;
    for (r = 0; r < rows; ++r) {
        const float *p = x + r * F;
        float acc = 0.0f;
        for (k = 0; k < F; ++k) {
            float v = p[k];
            if (norm == 0) { if (k == 0 || v > acc) acc = v; }
            else if (norm == 1) acc += fabsf(v);
            else acc += v * v;
        }
        if (norm == 2) acc = sqrtf(acc);
        for (k = 0; k < F; ++k) y[r * F + k] = acc != 0.0f ? p[k] / acc : p[k];
    }
}

#endif /* EL_NORMALIZER_C */

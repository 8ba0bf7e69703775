/* normalizer.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_NORMALIZER_C
#define EL_NORMALIZER_C

#include <stdint.h>
#include <math.h>

/* Normalizer norms (ONNX's names; the lowering reads them from this file) */
enum { EL_NORM_MAX = 0, EL_NORM_L1 = 1, EL_NORM_L2 = 2 };

static void k_normalizer(const float *x, float *y, long rows, int F, int norm)
{
    long r;
    int k;
    for (r = 0; r < rows; ++r) {
        const float *p = x + r * F;
        float acc = 0.0f;
        for (k = 0; k < F; ++k) {
            float v = p[k];
            if (norm == EL_NORM_MAX) { if (k == 0 || v > acc) acc = v; }
            else if (norm == EL_NORM_L1) acc += fabsf(v);
            else acc += v * v;
        }
        if (norm == EL_NORM_L2) acc = sqrtf(acc);
        for (k = 0; k < F; ++k) y[r * F + k] = acc != 0.0f ? p[k] / acc : p[k];
    }
}

#endif /* EL_NORMALIZER_C */

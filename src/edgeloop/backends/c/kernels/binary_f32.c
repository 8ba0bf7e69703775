/* binary_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_BINARY_F32_C
#define EL_BINARY_F32_C

#include <stdint.h>
#include "nd_index.h"

static void k_binary_f32(const float *a, const float *b, float *y, int op, long n, int ndim,
                         const int32_t *shape, const int32_t *as, const int32_t *bs)
{
    long i;
    for (i = 0; i < n; ++i) {
        float u = a[el_nd_offset(i, ndim, shape, as)];
        float v = b[el_nd_offset(i, ndim, shape, bs)];
        float r;
        switch (op) {
        case 0: r = u + v; break;
        case 1: r = u - v; break;
        case 2: r = u * v; break;
        case 3: r = u / v; break;
        case 4: r = u > v ? u : v; break;
        default: r = u < v ? u : v; break;
        }
        y[i] = r;
    }
}

#endif /* EL_BINARY_F32_C */

/* binary_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_BINARY_F32_C
#define EL_BINARY_F32_C

#include <stdint.h>
#include <math.h>
#include "nd_index.h"

/* which operation (the lowering passes these by name, read from this file) */
enum {
    EL_BINARY_ADD = 0,
    EL_BINARY_SUB = 1,
    EL_BINARY_MUL = 2,
    EL_BINARY_DIV = 3,
    EL_BINARY_MAX = 4,
    EL_BINARY_MIN = 5,
    EL_BINARY_POW = 6,
    EL_BINARY_PRELU = 7
};

static void k_binary_f32(const float *a, const float *b, float *y, int op, long n, int ndim,
                         const int32_t *shape, const int32_t *a_strides, const int32_t *b_strides)
{
    long i;
    for (i = 0; i < n; ++i) {
        float u = a[el_nd_offset(i, ndim, shape, a_strides)];
        float v = b[el_nd_offset(i, ndim, shape, b_strides)];
        float r;
        switch (op) {
        case EL_BINARY_ADD: r = u + v; break;
        case EL_BINARY_SUB: r = u - v; break;
        case EL_BINARY_MUL: r = u * v; break;
        case EL_BINARY_DIV: r = u / v; break;
        case EL_BINARY_MAX: r = u > v ? u : v; break;
        case EL_BINARY_MIN: r = u < v ? u : v; break;
        case EL_BINARY_POW: r = v == 2.0f ? u * u : powf(u, v); break;
        case EL_BINARY_PRELU: default: r = u < 0.0f ? u * v : u; break;
        }
        y[i] = r;
    }
}

#endif /* EL_BINARY_F32_C */

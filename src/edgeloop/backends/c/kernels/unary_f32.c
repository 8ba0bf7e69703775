/* unary_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_UNARY_F32_C
#define EL_UNARY_F32_C

#include <stdint.h>
#include <math.h>

/* which function (the lowering passes these by name, read from this file) */
enum {
    EL_UNARY_RELU = 0,
    EL_UNARY_CLIP = 1,
    EL_UNARY_SIGMOID = 2,
    EL_UNARY_TANH = 3,
    EL_UNARY_LEAKYRELU = 4,
    EL_UNARY_ABS = 5,
    EL_UNARY_NEG = 6,
    EL_UNARY_EXP = 7,
    EL_UNARY_SQRT = 8,
    EL_UNARY_HARDSIGMOID = 9,
    EL_UNARY_ELU = 10,
    EL_UNARY_RECIPROCAL = 11,
    EL_UNARY_FLOOR = 12,
    EL_UNARY_CEIL = 13,
    EL_UNARY_HARDSWISH = 14
};

static void k_unary_f32(const float *x, float *y, long n, int op, float p0, float p1)
{
    long i;
    for (i = 0; i < n; ++i) {
        float v = x[i];
        switch (op) {
        case EL_UNARY_RELU: v = v > 0.0f ? v : 0.0f; break;
        case EL_UNARY_CLIP: v = v < p0 ? p0 : (v > p1 ? p1 : v); break;
        case EL_UNARY_SIGMOID: v = 1.0f / (1.0f + expf(-v)); break;
        case EL_UNARY_TANH: v = tanhf(v); break;
        case EL_UNARY_LEAKYRELU: v = v >= 0.0f ? v : v * p0; break;
        case EL_UNARY_ABS: v = fabsf(v); break;
        case EL_UNARY_NEG: v = -v; break;
        case EL_UNARY_EXP: v = expf(v); break;
        case EL_UNARY_SQRT: v = sqrtf(v); break;
        case EL_UNARY_HARDSIGMOID: v = p0 * v + p1; v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); break;
        case EL_UNARY_ELU: v = v >= 0.0f ? v : p0 * (expf(v) - 1.0f); break;
        case EL_UNARY_RECIPROCAL: v = 1.0f / v; break;
        case EL_UNARY_FLOOR: v = floorf(v); break;
        case EL_UNARY_CEIL: v = ceilf(v); break;
        case EL_UNARY_HARDSWISH: default: {
            /* x * HardSigmoid(x) with alpha 1/6, beta 1/2 (ONNX's definition) */
            float h = v * (1.0f / 6.0f) + 0.5f;
            v = v * (h < 0.0f ? 0.0f : (h > 1.0f ? 1.0f : h));
            break;
        }
        }
        y[i] = v;
    }
}

#endif /* EL_UNARY_F32_C */

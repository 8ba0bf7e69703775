/* unary_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_UNARY_F32_C
#define EL_UNARY_F32_C

#include <stdint.h>
#include <math.h>

static void k_unary_f32(const float *x, float *y, long n, int op, float p0, float p1)
{
    long i;
    for (i = 0; i < n; ++i) {
        float v = x[i];
        switch (op) {
        case 0: v = v > 0.0f ? v : 0.0f; break;                       /* Relu */
        case 1: v = v < p0 ? p0 : (v > p1 ? p1 : v); break;           /* Clip */
        case 2: v = 1.0f / (1.0f + expf(-v)); break;                  /* Sigmoid */
        case 3: v = tanhf(v); break;                                  /* Tanh */
        case 4: v = v >= 0.0f ? v : v * p0; break;                    /* LeakyRelu */
        case 5: v = fabsf(v); break;                                  /* Abs */
        case 6: v = -v; break;                                        /* Neg */
        case 7: v = expf(v); break;                                   /* Exp */
        case 8: v = sqrtf(v); break;                                  /* Sqrt */
        case 9: v = p0 * v + p1; v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); break; /* HardSigmoid */
        case 10: v = v >= 0.0f ? v : p0 * (expf(v) - 1.0f); break;    /* Elu */
        case 11: v = 1.0f / v; break;                                 /* Reciprocal */
        case 12: v = floorf(v); break;                                /* Floor */
        default: v = ceilf(v); break;                                 /* Ceil */
        }
        y[i] = v;
    }
}

#endif /* EL_UNARY_F32_C */

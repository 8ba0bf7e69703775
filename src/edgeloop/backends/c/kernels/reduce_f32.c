/* reduce_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_REDUCE_F32_C
#define EL_REDUCE_F32_C

#include <stdint.h>

/* which reduction (the lowering passes these by name, read from this file) */
enum { EL_REDUCE_MEAN = 0, EL_REDUCE_SUM = 1, EL_REDUCE_MAX = 2, EL_REDUCE_MIN = 3 };

static void k_reduce_f32(const float *x, float *y, long outer, long R, long inner, int op)
{
    long o, r, i;
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * R * inner + i;
            float acc = op >= EL_REDUCE_MAX ? p[0] : 0.0f;
            for (r = 0; r < R; ++r) {
                float v = p[r * inner];
                if (op == EL_REDUCE_MAX) acc = v > acc ? v : acc;
                else if (op == EL_REDUCE_MIN) acc = v < acc ? v : acc;
                else acc += v;
            }
            if (op == EL_REDUCE_MEAN) acc /= (float)R;
            y[o * inner + i] = acc;
        }
    }
}

#endif /* EL_REDUCE_F32_C */

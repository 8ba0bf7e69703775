/* argmax_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_ARGMAX_F32_C
#define EL_ARGMAX_F32_C

#include <stdint.h>

static void k_argmax_f32(const float *x, int64_t *y, long outer, long N, long inner,
                         int is_min, int last)
{
    long o, i, j;
    for (o = 0; o < outer; ++o)
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * N * inner + i;
            long best = 0;
            for (j = 1; j < N; ++j) {
                float v = p[j * inner], b = p[best * inner];
                int better = is_min ? (last ? v <= b : v < b) : (last ? v >= b : v > b);
                if (better) best = j;
            }
            y[o * inner + i] = best;
        }
}

#endif /* EL_ARGMAX_F32_C */

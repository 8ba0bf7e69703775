/* softmax_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_SOFTMAX_F32_C
#define EL_SOFTMAX_F32_C

#include <stdint.h>
#include <math.h>

static void k_softmax_f32(const float *x, float *y, long outer, long N, long inner, int log_out)
{
    long o, i, j;
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const float *p = x + o * N * inner + i;
            float *q = y + o * N * inner + i;
            float mx = p[0], sum = 0.0f;
            for (j = 1; j < N; ++j) if (p[j * inner] > mx) mx = p[j * inner];
            for (j = 0; j < N; ++j) sum += expf(p[j * inner] - mx);
            for (j = 0; j < N; ++j)
                q[j * inner] = log_out ? (p[j * inner] - mx) - logf(sum)
                                       : expf(p[j * inner] - mx) / sum;
        }
    }
}

#endif /* EL_SOFTMAX_F32_C */

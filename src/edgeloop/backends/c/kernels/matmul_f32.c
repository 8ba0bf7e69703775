/* matmul_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_MATMUL_F32_C
#define EL_MATMUL_F32_C

#include <stdint.h>

static void k_matmul_f32(const float *a, const float *b, const float *c, float *y,
                         int batch, int M, int K, int N,
                         int a_bs, int a_ms, int a_ks, int b_bs, int b_ks, int b_ns,
                         int c_ms, int c_ns, float alpha)
{
    int t, i, j, k;
    for (t = 0; t < batch; ++t) {
        const float *at = a + (long)t * a_bs;
        const float *bt = b + (long)t * b_bs;
        float *yt = y + (long)t * M * N;
        for (i = 0; i < M; ++i) {
            for (j = 0; j < N; ++j) {
                float acc = 0.0f;
                for (k = 0; k < K; ++k)
                    acc += at[(long)i * a_ms + (long)k * a_ks] * bt[(long)k * b_ks + (long)j * b_ns];
                acc *= alpha;
                if (c) acc += c[(long)i * c_ms + (long)j * c_ns];
                yt[(long)i * N + j] = acc;
            }
        }
    }
}

#endif /* EL_MATMUL_F32_C */

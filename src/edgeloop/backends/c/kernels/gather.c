/* gather.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_GATHER_C
#define EL_GATHER_C

#include <stdint.h>
#include <string.h>

static void k_gather(const void *x, const int64_t *idx, void *y, int esize, long outer,
                     long N, long inner, long K)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long o, k;
    for (o = 0; o < outer; ++o)
        for (k = 0; k < K; ++k) {
            long j = (long)idx[k];
            if (j < 0) j += N;
            if (j < 0 || j >= N) j = 0;
            memcpy(dst + (o * K + k) * inner * esize, src + (o * N + j) * inner * esize,
                   (size_t)(inner * esize));
        }
}

#endif /* EL_GATHER_C */

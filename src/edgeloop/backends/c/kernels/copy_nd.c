/* copy_nd.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_COPY_ND_C
#define EL_COPY_ND_C

#include <stdint.h>
#include <string.h>
#include "nd_index.h"

static void k_copy_nd(const void *x, void *y, int esize, long n, int ndim,
                      const int32_t *shape, const int32_t *strides, long x0)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long i;
    for (i = 0; i < n; ++i)
        memcpy(dst + i * esize, src + (x0 + el_nd_offset(i, ndim, shape, strides)) * esize,
               (size_t)esize);
}

#endif /* EL_COPY_ND_C */

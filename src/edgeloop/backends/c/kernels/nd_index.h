/* nd_index.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_ND_INDEX_H
#define EL_ND_INDEX_H

#include <stdint.h>

/* offset of flat output index i in a strided input (shapes of the output) */
static long el_nd_offset(long i, int ndim, const int32_t *shape, const int32_t *strides)
{
    long off = 0;
    int d;
    for (d = ndim - 1; d >= 0; --d) {
        long q = i / shape[d];
        off += (i - q * shape[d]) * (long)strides[d];
        i = q;
    }
    return off;
}

#endif /* EL_ND_INDEX_H */

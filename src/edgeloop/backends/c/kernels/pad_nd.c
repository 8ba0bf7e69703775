/* pad_nd.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_PAD_ND_C
#define EL_PAD_ND_C

#include <stdint.h>
#include <string.h>

/* Pad modes (ONNX's names; the lowering reads them from this file) */
enum { EL_PAD_CONSTANT = 0, EL_PAD_EDGE = 1, EL_PAD_REFLECT = 2 };

static void k_pad_nd(const void *x, void *y, int esize, long n, int ndim, const int32_t *oshape,
                     const int32_t *ishape, const int32_t *before, int mode, const void *value)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long i;
    for (i = 0; i < n; ++i) {
        long rest = i, off = 0, stride = 1;
        int d, inside = 1;
        for (d = ndim - 1; d >= 0; --d) {
            long q = rest / oshape[d];
            long c = rest - q * oshape[d] - before[d];
            rest = q;
            if (c < 0 || c >= ishape[d]) {
                if (mode == EL_PAD_CONSTANT) inside = 0;
                else if (mode == EL_PAD_EDGE) c = c < 0 ? 0 : ishape[d] - 1;
                else {                                                          /* reflect */
                    long period = 2 * (long)ishape[d] - 2;
                    if (period <= 0) c = 0;
                    else {
                        c = c % period;
                        if (c < 0) c += period;
                        if (c >= ishape[d]) c = period - c;
                    }
                }
            }
            off += c * stride;
            stride *= ishape[d];
        }
        memcpy(dst + i * esize, inside ? src + off * esize : (const unsigned char *)value,
               (size_t)esize);
    }
}

#endif /* EL_PAD_ND_C */

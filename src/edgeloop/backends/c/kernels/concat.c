/* concat.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONCAT_C
#define EL_CONCAT_C

#include <stdint.h>
#include <string.h>

static void k_concat(const void *x, void *y, long outer, long xbytes, long ybytes, long offset)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long o;
    for (o = 0; o < outer; ++o)
        memcpy(dst + o * ybytes + offset, src + o * xbytes, (size_t)xbytes);
}

#endif /* EL_CONCAT_C */

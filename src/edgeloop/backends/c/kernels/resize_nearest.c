/* resize_nearest.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_RESIZE_NEAREST_C
#define EL_RESIZE_NEAREST_C

#include <stdint.h>
#include <string.h>

/* Nearest-neighbour resize of the last two axes of [outer, H, W] to [outer, OH, OW]: each
   output row / column reads the input row iy[oy] / column ix[ox] (computed at export time
   with the model's coordinate transformation and rounding). Any element size. */
static void k_resize_nearest(const void *x, void *y, int esize, long outer, int H, int W,
                             int OH, int OW, const int32_t *iy, const int32_t *ix)
{
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    long o;
    int oy, ox;
    for (o = 0; o < outer; ++o)
        for (oy = 0; oy < OH; ++oy) {
            const unsigned char *row = src + ((o * H + iy[oy]) * (long)W) * esize;
            unsigned char *out = dst + ((o * OH + oy) * (long)OW) * esize;
            for (ox = 0; ox < OW; ++ox)
                memcpy(out + (long)ox * esize, row + (long)ix[ox] * esize, (size_t)esize);
        }
}

#endif /* EL_RESIZE_NEAREST_C */

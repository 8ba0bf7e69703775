/* resize_linear_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_RESIZE_LINEAR_S8_C
#define EL_RESIZE_LINEAR_S8_C

#include <stdint.h>
#include "fx.h"

/* int8 bilinear resize of [outer, H, W] to [outer, OH, OW]: the weights are Q10 fixed
   point (wy0 + wy1 == 1024, as TFLite's integer bilinear resize), the Q20 sum of
   (x - x_zp) * weights is requantized to the output with mult, shift (which include the
   2^-20), plus y_zp, clamped to [lo, hi]. */
static void k_resize_linear_s8(const int8_t *x, int8_t *y, long outer, int H, int W, int OH,
                               int OW, const int32_t *y0, const int32_t *y1, const int32_t *wy0,
                               const int32_t *wy1, const int32_t *x0, const int32_t *x1,
                               const int32_t *wx0, const int32_t *wx1, int x_zp, int y_zp,
                               int32_t mult, int shift, int lo, int hi)
{
    long o;
    int oy, ox;
    for (o = 0; o < outer; ++o) {
        const int8_t *plane = x + o * (long)H * W;
        int8_t *out = y + o * (long)OH * OW;
        for (oy = 0; oy < OH; ++oy) {
            const int8_t *r0 = plane + (long)y0[oy] * W, *r1 = plane + (long)y1[oy] * W;
            for (ox = 0; ox < OW; ++ox) {
                int32_t top = wx0[ox] * (r0[x0[ox]] - x_zp) + wx1[ox] * (r0[x1[ox]] - x_zp);
                int32_t bot = wx0[ox] * (r1[x0[ox]] - x_zp) + wx1[ox] * (r1[x1[ox]] - x_zp);
                int32_t acc = wy0[oy] * top + wy1[oy] * bot;
                out[(long)oy * OW + ox] = (int8_t)el_clamp(el_mbqm(acc, mult, shift) + y_zp, lo, hi);
            }
        }
    }
}

#endif /* EL_RESIZE_LINEAR_S8_C */

/* resize_linear_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_RESIZE_LINEAR_F32_C
#define EL_RESIZE_LINEAR_F32_C

#include <stdint.h>

/* Bilinear resize of the last two axes of [outer, H, W] to [outer, OH, OW]. Output row oy
   blends input rows y0[oy] and y1[oy] with weights wy0[oy], wy1[oy] (columns likewise),
   all computed at export time with the model's coordinate transformation; the sum is
   onnxruntime's order. */
static void k_resize_linear_f32(const float *x, float *y, long outer, int H, int W, int OH,
                                int OW, const int32_t *y0, const int32_t *y1, const float *wy0,
                                const float *wy1, const int32_t *x0, const int32_t *x1,
                                const float *wx0, const float *wx1)
{
    long o;
    int oy, ox;
    for (o = 0; o < outer; ++o) {
        const float *plane = x + o * (long)H * W;
        float *out = y + o * (long)OH * OW;
        for (oy = 0; oy < OH; ++oy) {
            const float *r0 = plane + (long)y0[oy] * W, *r1 = plane + (long)y1[oy] * W;
            for (ox = 0; ox < OW; ++ox)
                out[(long)oy * OW + ox] = wx0[ox] * wy0[oy] * r0[x0[ox]] + wx1[ox] * wy0[oy] * r0[x1[ox]]
                                        + wx0[ox] * wy1[oy] * r1[x0[ox]] + wx1[ox] * wy1[oy] * r1[x1[ox]];
        }
    }
}

#endif /* EL_RESIZE_LINEAR_F32_C */

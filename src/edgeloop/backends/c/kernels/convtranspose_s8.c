/* convtranspose_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONVTRANSPOSE_S8_C
#define EL_CONVTRANSPOSE_S8_C

#include <stdint.h>
#include "fx.h"

/* int8 2-D transposed convolution of one image (TFLite's TRANSPOSE_CONV arithmetic):
   acc = b[m] + sum (x - x_zp) * w over the inputs that scatter to the output pixel (as in
   convtranspose_f32.c), requantized per output channel (mult, shift), plus y_zp, clamped. */
static void k_convtranspose_s8(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                               const int32_t *mult, const int32_t *shift, int C, int H, int W,
                               int M, int OH, int OW, int KH, int KW, int SH, int SW, int PT,
                               int PL, int DH, int DW, int G, int x_zp, int y_zp, int lo, int hi)
{
    int cg = C / G, mg = M / G, m, oy, ox, c, ky, kx;
    for (m = 0; m < M; ++m) {
        int g = m / mg, mm = m - g * mg;
        for (oy = 0; oy < OH; ++oy)
            for (ox = 0; ox < OW; ++ox) {
                int32_t acc = b ? b[m] : 0;
                for (c = g * cg; c < (g + 1) * cg; ++c) {
                    const int8_t *wc = w + ((long)c * mg + mm) * KH * KW;
                    for (ky = 0; ky < KH; ++ky) {
                        int ty = oy + PT - ky * DH, iy;
                        if (ty < 0 || ty % SH) continue;
                        iy = ty / SH;
                        if (iy >= H) continue;
                        for (kx = 0; kx < KW; ++kx) {
                            int tx = ox + PL - kx * DW, ix;
                            if (tx < 0 || tx % SW) continue;
                            ix = tx / SW;
                            if (ix >= W) continue;
                            acc += ((int32_t)x[((long)c * H + iy) * W + ix] - x_zp)
                                   * (int32_t)wc[ky * KW + kx];
                        }
                    }
                }
                y[((long)m * OH + oy) * OW + ox] =
                    (int8_t)el_clamp(el_mbqm(acc, mult[m], shift[m]) + y_zp, lo, hi);
            }
    }
}

#endif /* EL_CONVTRANSPOSE_S8_C */

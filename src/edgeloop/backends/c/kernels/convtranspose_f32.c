/* convtranspose_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONVTRANSPOSE_F32_C
#define EL_CONVTRANSPOSE_F32_C

#include <stdint.h>

/* 2-D transposed convolution of one image, x [C, H, W] -> y [M, OH, OW], weights [C, M/G,
   KH, KW] (ONNX's layout), G groups. Written output-stationary: output pixel (oy, ox) sums
   the inputs whose scatter reaches it, iy = (oy + PT - ky * DH) / SH when that divides. */
static void k_convtranspose_f32(const float *x, float *y, const float *w, const float *b, int C,
                                int H, int W, int M, int OH, int OW, int KH, int KW, int SH,
                                int SW, int PT, int PL, int DH, int DW, int G)
{
    int cg = C / G, mg = M / G, m, oy, ox, c, ky, kx;
    for (m = 0; m < M; ++m) {
        int g = m / mg, mm = m - g * mg;
        for (oy = 0; oy < OH; ++oy)
            for (ox = 0; ox < OW; ++ox) {
                float acc = b ? b[m] : 0.0f;
                for (c = g * cg; c < (g + 1) * cg; ++c) {
                    const float *wc = w + ((long)c * mg + mm) * KH * KW;
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
                            acc += x[((long)c * H + iy) * W + ix] * wc[ky * KW + kx];
                        }
                    }
                }
                y[((long)m * OH + oy) * OW + ox] = acc;
            }
    }
}

#endif /* EL_CONVTRANSPOSE_F32_C */

/* conv_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_F32_C
#define EL_CONV_F32_C

#include <stdint.h>

static void k_conv_f32(const float *x, float *y, const float *w, const float *b,
                       int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                       int SH, int SW, int PT, int PL, int DH, int DW, int G)
{
    int cg = C / G, mg = M / G, m, oy, ox, c, ky, kx;
    long hw = (long)H * W;
    for (m = 0; m < M; ++m) {
        const float *xg = x + (long)(m / mg) * cg * hw;
        const float *wm = w + (long)m * cg * KH * KW;
        float *ym = y + (long)m * OH * OW;
        for (oy = 0; oy < OH; ++oy) {
            int iy0 = oy * SH - PT, ky0 = 0, ky1 = KH;
            while (ky0 < KH && iy0 + ky0 * DH < 0) ++ky0;          /* taps inside the input */
            while (ky1 > ky0 && iy0 + (ky1 - 1) * DH >= H) --ky1;
            for (ox = 0; ox < OW; ++ox) {
                int ix0 = ox * SW - PL, kx0 = 0, kx1 = KW;
                float acc = b ? b[m] : 0.0f;
                while (kx0 < KW && ix0 + kx0 * DW < 0) ++kx0;
                while (kx1 > kx0 && ix0 + (kx1 - 1) * DW >= W) --kx1;
                for (c = 0; c < cg; ++c) {
                    const float *xc = xg + c * hw + ix0;
                    const float *wc = wm + (long)c * KH * KW;
                    for (ky = ky0; ky < ky1; ++ky) {
                        const float *xr = xc + (long)(iy0 + ky * DH) * W;
                        const float *wr = wc + ky * KW;
                        for (kx = kx0; kx < kx1; ++kx) acc += xr[kx * DW] * wr[kx];
                    }
                }
                ym[oy * OW + ox] = acc;
            }
        }
    }
}

#endif /* EL_CONV_F32_C */

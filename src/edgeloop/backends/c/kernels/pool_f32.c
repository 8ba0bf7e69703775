/* pool_f32.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_POOL_F32_C
#define EL_POOL_F32_C

#include <stdint.h>
#include <math.h>

static void k_pool_f32(const float *x, float *y, int NC, int H, int W, int OH, int OW,
                       int KH, int KW, int SH, int SW, int PT, int PL, int PB, int PR,
                       int DH, int DW, int is_max, int include_pad)
{
    int nc, oy, ox, ky, kx;
    for (nc = 0; nc < NC; ++nc) {
        const float *xc = x + (long)nc * H * W;
        for (oy = 0; oy < OH; ++oy) {
            for (ox = 0; ox < OW; ++ox) {
                float acc = is_max ? -INFINITY : 0.0f;
                int count = 0, padded = 0;
                for (ky = 0; ky < KH; ++ky) {
                    int iy = oy * SH - PT + ky * DH;
                    for (kx = 0; kx < KW; ++kx) {
                        int ix = ox * SW - PL + kx * DW;
                        if (iy >= -PT && iy < H + PB && ix >= -PL && ix < W + PR) ++padded;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        if (is_max) { if (xc[iy * W + ix] > acc) acc = xc[iy * W + ix]; }
                        else acc += xc[iy * W + ix];
                        ++count;
                    }
                }
                if (!is_max) acc = acc / (float)(include_pad ? padded : (count ? count : 1));
                y[((long)nc * OH + oy) * OW + ox] = acc;
            }
        }
    }
}

#endif /* EL_POOL_F32_C */

/* pool_s8.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_POOL_S8_C
#define EL_POOL_S8_C

#include <stdint.h>
#include "fx.h"

/* mode 0: AveragePool as TFLite Micro's AVERAGE_POOL_2D (divide in input units with rounding,
 *         then requantize if the scales differ: bit-exact with TFLM, which has equal scales);
 * mode 1: MaxPool;
 * mode 2: a mean (ReduceMean, GlobalAveragePool) as TFLite's integer Mean: the sum of
 *         (x - x_zp) times one multiplier for x_scale / (y_scale * count), then + y_zp, so
 *         no precision is lost when the output scale is finer than the input's. */
static void k_pool_s8(const int8_t *x, int8_t *y, int NC, int H, int W, int OH, int OW,
                      int KH, int KW, int SH, int SW, int PT, int PL, int mode,
                      int same_q, int x_zp, int y_zp, int32_t mult, int shift, int lo, int hi)
{
    int nc, oy, ox, ky, kx;
    int is_max = mode == 1, is_mean = mode == 2;
    for (nc = 0; nc < NC; ++nc) {
        const int8_t *xc = x + (long)nc * H * W;
        for (oy = 0; oy < OH; ++oy) {
            for (ox = 0; ox < OW; ++ox) {
                int32_t acc = is_max ? -128 : 0;
                int32_t off = is_mean ? x_zp : 0;
                int count = 0;
                for (ky = 0; ky < KH; ++ky) {
                    int iy = oy * SH - PT + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (kx = 0; kx < KW; ++kx) {
                        int ix = ox * SW - PL + kx;
                        if (ix < 0 || ix >= W) continue;
                        if (is_max) { if (xc[iy * W + ix] > acc) acc = xc[iy * W + ix]; }
                        else acc += xc[iy * W + ix] - off;
                        ++count;
                    }
                }
                if (is_mean)
                    acc = el_mbqm(acc, mult, shift) + y_zp;
                else {
                    if (!is_max && count > 0)
                        acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    if (!same_q) acc = el_mbqm(acc - x_zp, mult, shift) + y_zp;
                }
                y[((long)nc * OH + oy) * OW + ox] = (int8_t)el_clamp(acc, lo, hi);
            }
        }
    }
}

#endif /* EL_POOL_S8_C */

/* conv_s8_res.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_S8_RES_C
#define EL_CONV_S8_RES_C

#include <stdint.h>
#include "fx.h"
#include "fx_add.h"
#include "conv_s8.c"

/* A convolution followed by a residual Add, y = add(conv(x), r), written over r (y == r
   is allowed: each output element depends on r only at its own position). One output
   channel at a time: the conv (exactly conv_s8's numbers, rounded to int8 with its own
   quantization c_zp, lo, hi) into the plane s (OH*OW), then the int8 add (q as add_s8's)
   of s and r's plane, stored where that plane was. x is never written. */
static void k_conv_s8_res(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                          const int32_t *mult, const int32_t *shift,
                          int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                          int SH, int SW, int PT, int PL, int DH, int DW, int G,
                          int x_zp, int c_zp, int lo, int hi, const int8_t *r,
                          const int32_t *q, int8_t *s)
{
    int cg = C / G, mg = M / G, m;
    long hw = (long)H * W, ohw = (long)OH * OW, p;
    for (m = 0; m < M; ++m) {
        k_conv_s8(x + (long)(m / mg) * cg * hw, s, w + (long)m * cg * KH * KW, b ? b + m : 0,
                  mult + m, shift + m, cg, H, W, 1, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, 1,
                  x_zp, c_zp, lo, hi);
        for (p = 0; p < ohw; ++p)
            y[(long)m * ohw + p] = el_add_s8(s[p], r[(long)m * ohw + p], q);
    }
}

#endif /* EL_CONV_S8_RES_C */

/* dsp/fast_conv.c: fast_conv_s8.h's int8 convolution for any filter shape and stride given
 * at run time. The export writes one thin copy of this per filter shape and stride instead
 * (backends/c/fast.py: k_fast_conv_s8_<KH>x<KW>s<SH>x<SW>, the same parameters without
 * KH, KW, SH, SW), so that the compiler specialises the im2col; this one is their pattern.
 * q: a fused residual Add's parameters (y then holds the skip tensor on entry), or null. */
#ifndef EL_FAST_CONV_C
#define EL_FAST_CONV_C

#include <stdint.h>
#include <string.h>
#include "fast_conv_s8.h"

static int el_fast_conv_kh, el_fast_conv_kw;

static void el_fast_taps_any(const int8_t *s, int16_t *q, int C, int W, long hw, int KP)
{
    el_fast_taps(s, q, C, W, hw, el_fast_conv_kh, el_fast_conv_kw, KP);
}

static void k_fast_conv(const int8_t *x, int8_t *y, const int32_t *w, const int32_t *b,
                        const int32_t *t, int C, int H, int W, int M,
                        int OH, int OW, int KH, int KW, int SH, int SW, int PT, int PL, int x_zp,
                        int lo, int hi, int RB, const int32_t *q)
{
    EL_FAST_COL(col, 2 * ((C * KH * KW + 3) & ~3));
    int8_t rows[RB];
    el_fast_conv_kh = KH;
    el_fast_conv_kw = KW;
    el_fast_conv_s8(x, y, (const int8_t *)w, b, t, col, rows, el_fast_taps_any, C, H, W, M, OH,
                    OW, KH, KW, SH, SW, PT, PL, x_zp, lo, hi, q);
}

#endif /* EL_FAST_CONV_C */

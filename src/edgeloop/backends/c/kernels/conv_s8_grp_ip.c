/* conv_s8_grp_ip.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_S8_GRP_IP_C
#define EL_CONV_S8_GRP_IP_C

#include <stdint.h>
#include <string.h>
#include "fx.h"
#include "conv_s8.c"

/* grouped (e.g. depthwise), (M/G)*OH*OW <= (C/G)*H*W: each group's output into s, then
   copied to its place, which ends within the input groups already consumed. */
static void k_conv_s8_grp_ip(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b,
                             const int32_t *mult, const int32_t *shift,
                             int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                             int SH, int SW, int PT, int PL, int DH, int DW, int G,
                             int x_zp, int y_zp, int lo, int hi, int8_t *s)
{
    int cg = C / G, mg = M / G, g;
    long hw = (long)H * W, ohw = (long)OH * OW;
    for (g = 0; g < G; ++g) {
        long m0 = (long)g * mg;
        k_conv_s8(x + (long)g * cg * hw, s, w + m0 * cg * KH * KW, b ? b + m0 : 0,
                  mult + m0, shift + m0, cg, H, W, mg, OH, OW, KH, KW, SH, SW, PT, PL,
                  DH, DW, 1, x_zp, y_zp, lo, hi);
        memcpy(y + m0 * ohw, s, (size_t)(mg * ohw));
    }
}

#endif /* EL_CONV_S8_GRP_IP_C */

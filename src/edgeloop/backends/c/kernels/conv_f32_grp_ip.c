/* conv_f32_grp_ip.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_F32_GRP_IP_C
#define EL_CONV_F32_GRP_IP_C

#include <stdint.h>
#include <string.h>
#include "conv_f32.c"

/* the float grouped in-place scheme (k_conv_f32 per group, then copied) */
static void k_conv_f32_grp_ip(const float *x, float *y, const float *w, const float *b,
                              int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                              int SH, int SW, int PT, int PL, int DH, int DW, int G, float *s)
{
    int cg = C / G, mg = M / G, g;
    long hw = (long)H * W, ohw = (long)OH * OW;
    for (g = 0; g < G; ++g) {
        long m0 = (long)g * mg;
        k_conv_f32(x + (long)g * cg * hw, s, w + m0 * cg * KH * KW, b ? b + m0 : 0,
                   cg, H, W, mg, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, 1);
        memcpy(y + m0 * ohw, s, (size_t)(mg * ohw) * sizeof(float));
    }
}

#endif /* EL_CONV_F32_GRP_IP_C */

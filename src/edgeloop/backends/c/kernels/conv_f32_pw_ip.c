/* conv_f32_pw_ip.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_CONV_F32_PW_IP_C
#define EL_CONV_F32_PW_IP_C

#include <stdint.h>

/* the float 1x1 in-place scheme; the sums run in the order of k_conv_f32 */
static void k_conv_f32_pw_ip(const float *x, float *y, const float *w, const float *b,
                             int C, long hw, int M, float *s)
{
    long p;
    int m, c;
    for (p = 0; p < hw; ++p) {
        for (c = 0; c < C; ++c) s[c] = x[(long)c * hw + p];
        for (m = 0; m < M; ++m) {
            const float *wm = w + (long)m * C;
            float acc = b ? b[m] : 0.0f;
            for (c = 0; c < C; ++c) acc += s[c] * wm[c];
            y[(long)m * hw + p] = acc;
        }
    }
}

#endif /* EL_CONV_F32_PW_IP_C */

/* fast_transpose8.c: a one-byte-element copy that is a 2-D transpose, y [R, S] =
 * x [S, R] transposed (e.g. an NHWC int8 input to NCHW: R channels, S pixels), with
 * pointer steps instead of copy_nd's per-element index arithmetic. */
#ifndef EL_FAST_TRANSPOSE8_C
#define EL_FAST_TRANSPOSE8_C

#include <stdint.h>

static void k_fast_transpose8(const int8_t *x, int8_t *y, long R, long S)
{
    long r, s;
    for (r = 0; r < R; ++r) {
        const int8_t *p = x + r;
        for (s = 0; s + 4 <= S; s += 4, p += 4 * R) {
            y[0] = p[0];
            y[1] = p[R];
            y[2] = p[2 * R];
            y[3] = p[3 * R];
            y += 4;
        }
        for (; s < S; ++s, p += R) *y++ = *p;
    }
}

#endif /* EL_FAST_TRANSPOSE8_C */

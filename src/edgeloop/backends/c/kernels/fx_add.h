/* fx_add.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_ADD_H
#define EL_FX_ADD_H

#include <stdint.h>
#include "fx.h"

/* TFLite's int8 ADD of one element pair: both operands to a common scale with 20 bits of
   headroom, summed, requantized to the output. q: a_zp b_zp y_zp a_m a_s b_m b_s y_m y_s lo hi */
static EL_INLINE int8_t el_add_s8(int32_t a, int32_t b, const int32_t *q)
{
    int32_t u = (a - q[0]) * (1 << 20);
    int32_t v = (b - q[1]) * (1 << 20);
    int32_t s = el_mbqm(u, q[3], q[4]) + el_mbqm(v, q[5], q[6]);
    s = el_mbqm(s, q[7], q[8]) + q[2];
    return (int8_t)el_clamp(s, q[9], q[10]);
}

#endif /* EL_FX_ADD_H */

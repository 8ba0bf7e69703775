/* fx_tanh.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_TANH_H
#define EL_FX_TANH_H

#include <stdint.h>
#include "fx_half_recip.h"

/* (1 - x) / (1 + x) for x in [0, 1], as gemmlowp's tanh uses it */
static int32_t el_one_minus_over_one_plus(int32_t a)
{
    return el_sat_shl(el_half_recip(a) - (1 << 29), 2);
}

#endif /* EL_FX_TANH_H */

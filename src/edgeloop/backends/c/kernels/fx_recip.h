/* fx_recip.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_RECIP_H
#define EL_FX_RECIP_H

#include <stdint.h>
#include "fx_half_recip.h"

static int32_t el_one_over_one_plus(int32_t a /* Q0.31 in [0, 1) */)
{
    return el_sat_shl(el_half_recip(a), 1);
}

#endif /* EL_FX_RECIP_H */

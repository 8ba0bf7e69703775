/* fx_clz.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_CLZ_H
#define EL_FX_CLZ_H

#include <stdint.h>

static int el_clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) return 32;
    while (!(x & 0x80000000u)) { x <<= 1; ++n; }
    return n;
}

#endif /* EL_FX_CLZ_H */

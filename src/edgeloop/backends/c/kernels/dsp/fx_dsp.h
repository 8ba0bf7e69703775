/* dsp/fx_dsp.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_DSP_FX_DSP_H
#define EL_DSP_FX_DSP_H

#include <stdint.h>
#include <string.h>

/* Cortex-M4/M7/M33 (the DSP extension): two 16x16 multiply-accumulates per SMLAD on
   sign-extended byte pairs (SXTB16). Integer sums in int32 do not depend on the order of
   the products, so these paths are bit-exact with the portable loops, which the host
   build (no __ARM_FEATURE_DSP) keeps running. Loads go through memcpy (strict aliasing;
   the compiler emits one unaligned LDR, which these cores allow). */

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define EL_DSP 1
static inline int32_t el_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* bytes 1 and 3 sign-extended to two int16 (SXTB16 with its built-in rotation) */
static inline int32_t el_sxtb16_r8(int32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#endif

#endif /* EL_DSP_FX_DSP_H */

/* fx.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_H
#define EL_FX_H

#include <stdint.h>

/* the requantization runs once per output: inlined (gcc otherwise calls it) */
#if defined(__GNUC__)
#define EL_INLINE inline __attribute__((always_inline))
#else
#define EL_INLINE inline
#endif
static EL_INLINE int32_t el_srdhm(int32_t a, int32_t b)
{
    int64_t ab;
    int32_t nudge;
    if (a == b && a == INT32_MIN) return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static EL_INLINE int32_t el_rdbpot(int32_t x, int e)
{
    int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    int32_t rem = x & mask;
    int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}

static EL_INLINE int32_t el_mbqm(int32_t x, int32_t m, int shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    return el_rdbpot(el_srdhm((int32_t)((uint32_t)x << left), m), right);
}

static int32_t el_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

#endif /* EL_FX_H */

/* fx_exp.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_FX_EXP_H
#define EL_FX_EXP_H

#include <stdint.h>
#include "fx.h"

/* gemmlowp fixed point: exp on [-1/4, 0), exp on negative values (5 integer bits),
   1/(1+x) on [0, 1) by Newton-Raphson, as TFLite's reference int8 softmax uses them */
static int32_t el_sat_shl(int32_t x, int e)
{
    int32_t thr = (int32_t)((((int64_t)1) << (31 - e)) - 1);
    if (x > thr) return INT32_MAX;
    if (x < -thr) return INT32_MIN;
    return (int32_t)((uint32_t)x << e);
}

static int32_t el_exp_quarter(int32_t a)
{
    int32_t x = a + (1 << 28);
    int32_t x2 = el_srdhm(x, x), x3 = el_srdhm(x2, x), x4 = el_srdhm(x2, x2);
    int32_t x4_4 = el_rdbpot(x4, 2);
    int32_t poly = el_rdbpot(el_srdhm(x4_4 + x3, 715827883) + x2, 1);
    return 1895147668 + el_srdhm(1895147668, x + poly);
}

static int32_t el_exp_neg(int32_t a /* Q(ib).(31-ib), <= 0 */, int ib)
{
    static const int32_t mults[7] = {1672461947, 1302514674, 790015084, 290630308,
                                     39332535, 720401, 242};   /* exp(-2^e), e = -2..4 */
    int frac = 31 - ib;
    int32_t quarter = (int32_t)1 << (frac - 2);
    int32_t amq = (a & (quarter - 1)) - quarter;
    int32_t result = el_exp_quarter(el_sat_shl(amq, ib));
    int32_t rem = amq - a;
    int k;
    for (k = 0; k < 7 && ib > k - 2; ++k)
        if (rem & ((int32_t)1 << (frac - 2 + k))) result = el_srdhm(result, mults[k]);
    return a == 0 ? INT32_MAX : result;
}

#endif /* EL_FX_EXP_H */

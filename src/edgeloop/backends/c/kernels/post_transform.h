/* post_transform.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_POST_TRANSFORM_H
#define EL_POST_TRANSFORM_H

#include <stdint.h>
#include <math.h>

/* ONNX-ML post_transform (ONNX's names; the lowering reads them from this file; PROBIT is
   not supported) */
enum { EL_POST_NONE = 0, EL_POST_SOFTMAX = 1, EL_POST_LOGISTIC = 2, EL_POST_SOFTMAX_ZERO = 3 };

static void el_post_transform(float *s, int n, int mode)
{
    int j;
    if (mode == EL_POST_LOGISTIC) {
        for (j = 0; j < n; ++j) s[j] = 1.0f / (1.0f + expf(-s[j]));
    } else if (mode == EL_POST_SOFTMAX || mode == EL_POST_SOFTMAX_ZERO) {
        float mx = s[0], sum = 0.0f;
        for (j = 1; j < n; ++j) if (s[j] > mx) mx = s[j];
        for (j = 0; j < n; ++j) {
            if (mode == EL_POST_SOFTMAX_ZERO && s[j] == 0.0f) continue;
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        for (j = 0; j < n; ++j) s[j] = (mode == EL_POST_SOFTMAX_ZERO && s[j] == 0.0f) ? 0.0f : s[j] / sum;
    }
}

#endif /* EL_POST_TRANSFORM_H */

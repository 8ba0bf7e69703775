/* post_transform.h: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_POST_TRANSFORM_H
#define EL_POST_TRANSFORM_H

#include <stdint.h>
#include <math.h>

/* ONNX-ML post_transform: 0 NONE, 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO, 4 PROBIT(unsupported) */
static void el_post_transform(float *s, int n, int mode)
{
    int j;
    if (mode == 2) {
        for (j = 0; j < n; ++j) s[j] = 1.0f / (1.0f + expf(-s[j]));
    } else if (mode == 1 || mode == 3) {
        float mx = s[0], sum = 0.0f;
        for (j = 1; j < n; ++j) if (s[j] > mx) mx = s[j];
        for (j = 0; j < n; ++j) {
            if (mode == 3 && s[j] == 0.0f) continue;
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        for (j = 0; j < n; ++j) s[j] = (mode == 3 && s[j] == 0.0f) ? 0.0f : s[j] / sum;
    }
}

#endif /* EL_POST_TRANSFORM_H */

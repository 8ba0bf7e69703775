/* linear_classifier.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_LINEAR_CLASSIFIER_C
#define EL_LINEAR_CLASSIFIER_C

#include <stdint.h>
#include <math.h>
#include "post_transform.h"

static void k_linear_classifier(const float *x, int64_t *label, float *scores,
                                const float *coef, const float *icpt, const int64_t *classes,
                                long rows, int F, int R, int n_classes, int mode, int binary)
{
    long r;
    int j, k;
    for (r = 0; r < rows; ++r) {
        const float *xr = x + r * F;
        float *s = scores + r * (binary ? 2 : R);
        int best = 0;
        for (j = 0; j < R; ++j) {
            float acc = icpt[j];
            for (k = 0; k < F; ++k) acc += xr[k] * coef[(long)j * F + k];
            s[binary ? 1 : j] = acc;
        }
        if (binary) {
            /* one score for two classes: label by its sign, scores as onnxruntime gives them */
            float v = s[1];
            best = v > 0.0f ? 1 : 0;
            if (mode == 2) { s[1] = 1.0f / (1.0f + expf(-v)); s[0] = 1.0f - s[1]; }
            else { s[0] = -v; el_post_transform(s, 2, mode); }
        } else {
            for (j = 1; j < R; ++j) if (s[j] > s[best]) best = j;
            el_post_transform(s, R, mode);
        }
        label[r] = classes[best];
        (void)n_classes;
    }
}

#endif /* EL_LINEAR_CLASSIFIER_C */

/* tree_ensemble.c: edgeloop C kernel (only what a model uses is copied into its .c). */
#ifndef EL_TREE_ENSEMBLE_C
#define EL_TREE_ENSEMBLE_C

#include <stdint.h>
#include <math.h>
#include "post_transform.h"

/* node modes and aggregate functions (ONNX's names; the lowering reads them from this file) */
enum { EL_TREE_BRANCH_LEQ = 0, EL_TREE_BRANCH_LT = 1, EL_TREE_BRANCH_GTE = 2, EL_TREE_BRANCH_GT = 3,
       EL_TREE_BRANCH_EQ = 4, EL_TREE_BRANCH_NEQ = 5, EL_TREE_LEAF = 6 };
enum { EL_AGG_SUM = 0, EL_AGG_AVERAGE = 1, EL_AGG_MAX = 2, EL_AGG_MIN = 3 };

/* Trees as flat arrays: node feature, threshold, mode, true/false child (global index), missing-tracks-true; a leaf's weights are
   leaf_first[node] .. leaf_first[node + 1] in (target, weight). */
static void k_tree_ensemble(const float *x, int64_t *label, float *scores, double *acc,
                            long rows, int F,
                            int n_roots, const int32_t *roots, const int32_t *feat,
                            const float *thr, const uint8_t *mode, const int32_t *tchild,
                            const int32_t *fchild, const uint8_t *mvt, const int32_t *leaf_first,
                            const int32_t *leaf_target, const float *leaf_weight,
                            const float *base, int T, int aggregate, int post, int binary,
                            const int64_t *classes)
{
    /* leaf weights are summed in double: scikit-learn sums its float64 votes, and near
       ties (a forest's 10 votes against 10) must break the same way */
    long r;
    int t, j;
    for (r = 0; r < rows; ++r) {
        const float *xr = x + r * F;
        float *s = scores + r * (binary ? 2 : T);
        for (j = 0; j < T; ++j) acc[j] = 0.0;
        for (t = 0; t < n_roots; ++t) {
            int n = roots[t], k;
            while (mode[n] != EL_TREE_LEAF) {
                float v = xr[feat[n]], th = thr[n];
                int go;
                switch (mode[n]) {
                case EL_TREE_BRANCH_LEQ: go = v <= th; break;
                case EL_TREE_BRANCH_LT: go = v < th; break;
                case EL_TREE_BRANCH_GTE: go = v >= th; break;
                case EL_TREE_BRANCH_GT: go = v > th; break;
                case EL_TREE_BRANCH_EQ: go = v == th; break;
                case EL_TREE_BRANCH_NEQ: default: go = v != th; break;
                }
                if (v != v) go = mvt[n];
                n = go ? tchild[n] : fchild[n];
            }
            for (k = leaf_first[n]; k < leaf_first[n + 1]; ++k) {
                double *d = &acc[binary ? 0 : leaf_target[k]];
                double w = (double)leaf_weight[k];
                if (aggregate == EL_AGG_MAX) { if (t == 0 || w > *d) *d = w; }
                else if (aggregate == EL_AGG_MIN) { if (t == 0 || w < *d) *d = w; }
                else *d += w;
            }
        }
        for (j = 0; j < T; ++j) {
            if (aggregate == EL_AGG_AVERAGE) acc[j] /= (double)n_roots;
            if (base) acc[j] += (double)base[j];
        }
        if (label) {
            /* averaged votes (no post_transform): sums closer than 1e-6 are a tie in
               scikit-learn's float64 arithmetic that the float32 weights of the ONNX
               graph blur (a forest's 10 votes against 10) */
            double tie = post == EL_POST_NONE ? 1e-6 : 0.0;
            int best = 0;
            if (binary) {
                double v = acc[0];
                if (post == EL_POST_LOGISTIC) { s[1] = (float)(1.0 / (1.0 + exp(-v))); s[0] = 1.0f - s[1]; best = v > 0.0; }
                else { s[1] = (float)v; s[0] = (float)(1.0 - v); best = v > 0.5 + tie; }
            } else {
                /* the first class wins ties, as in scikit-learn */
                for (j = 1; j < T; ++j) if (acc[j] > acc[best] + tie) best = j;
                for (j = 0; j < T; ++j) s[j] = (float)acc[j];
                el_post_transform(s, T, post);
            }
            label[r] = classes[best];
        } else {
            for (j = 0; j < T; ++j) s[j] = (float)acc[j];
            el_post_transform(s, T, post);
        }
    }
}

#endif /* EL_TREE_ENSEMBLE_C */

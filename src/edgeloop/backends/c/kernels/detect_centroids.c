/* detect_centroids.c: a centroids (FOMO-style heatmap) head decoded on the device.
 *
 * Per cell: the first class with the highest score (background channel skipped), kept
 * when it reaches the threshold; 4-neighbour connected cells of one class become one
 * object: its cells' bounding box in input pixels and their best score. Same result and
 * order as edgeloop.runtime.detect.centroid_blobs + decode: best score first, ties by the
 * blob's last cell. Scores: int8 through a 256-entry table computed at export, float as
 * they are (activation none). No malloc: best / cls / stack hold h*w entries. */
#ifndef EL_DETECT_CENTROIDS_C
#define EL_DETECT_CENTROIDS_C

#include <stdint.h>
#include "detect_rank.h"

static void k_detect_centroids(const void *m, int is_int8, const double *lut, long h, long w,
                               long nch, int nchw, int c0, double thr, double cell_w,
                               double cell_h, int max_det, double *best, int *cls, long *stack,
                               double *kb, double *ks, int *kc, long *kkey, int *count)
{
    long i, cells = h * w;
    int c, kept = 0;
    for (i = 0; i < cells; ++i) {
        double b = 0.0;
        int bc = 0;
        for (c = c0; c < nch; ++c) {
            long at = nchw ? (long)c * cells + i : i * nch + c;
            double v = is_int8 ? lut[((const int8_t *)m)[at] + 128] : (double)((const float *)m)[at];
            if (c == c0 || v > b) { b = v; bc = c - c0; }
        }
        best[i] = b;
        /* cls < 0: not a cell of any object (or already taken by a blob) */
        cls[i] = b >= thr ? bc : -1;
    }
    for (i = 0; i < cells; ++i) {
        long top = 0, x1, y1, x2, y2, last = i;
        int k, c_blob = cls[i];
        double score;
        if (c_blob < 0)
            continue;
        x1 = x2 = i % w; y1 = y2 = i / w; score = best[i];
        stack[top++] = i;
        cls[i] = -1;
        while (top > 0) {
            long p = stack[--top], py = p / w, px = p % w, nb[4];
            int q, nn = 0;
            if (px < x1) x1 = px;
            if (px > x2) x2 = px;
            if (py < y1) y1 = py;
            if (py > y2) y2 = py;
            if (best[p] > score) score = best[p];
            if (p > last) last = p;
            if (py > 0) nb[nn++] = p - w;
            if (py < h - 1) nb[nn++] = p + w;
            if (px > 0) nb[nn++] = p - 1;
            if (px < w - 1) nb[nn++] = p + 1;
            for (q = 0; q < nn; ++q)
                if (cls[nb[q]] == c_blob) { cls[nb[q]] = -1; stack[top++] = nb[q]; }
        }
        /* keep the max_det best blobs, best first */
        if (kept == max_det && !el_det_before(score, last, ks[max_det - 1], kkey[max_det - 1]))
            continue;
        for (k = kept < max_det ? kept : max_det - 1;
             k > 0 && el_det_before(score, last, ks[k - 1], kkey[k - 1]); --k) {
            int t;
            for (t = 0; t < 4; ++t) kb[4 * k + t] = kb[4 * (k - 1) + t];
            ks[k] = ks[k - 1]; kc[k] = kc[k - 1]; kkey[k] = kkey[k - 1];
        }
        kb[4 * k + 0] = (double)x1 * cell_w;
        kb[4 * k + 1] = (double)y1 * cell_h;
        kb[4 * k + 2] = (double)(x2 + 1) * cell_w;
        kb[4 * k + 3] = (double)(y2 + 1) * cell_h;
        ks[k] = score; kc[k] = c_blob; kkey[k] = last;
        if (kept < max_det) ++kept;
    }
    *count = kept;
}

#endif /* EL_DETECT_CENTROIDS_C */

/* detect_nms.h: candidates and greedy NMS shared by the box-regressing heads (edgeloop).
 *
 * Candidates are kept sorted best first (ties: the lower index, numpy's stable argsort);
 * NMS follows edgeloop.runtime.detect.nms term by term, including its shift of each class
 * into its own region by class * span (span: the candidates' coordinate range + 1). */
#ifndef EL_DETECT_NMS_H
#define EL_DETECT_NMS_H

#include "detect_rank.h"

/* numpy box_iou(a, b) for one pair, term by term */
static double el_det_iou(const double *a, const double *b)
{
    double l = a[0] > b[0] ? a[0] : b[0], t = a[1] > b[1] ? a[1] : b[1];
    double r = a[2] < b[2] ? a[2] : b[2], btm = a[3] < b[3] ? a[3] : b[3];
    double w = r - l, h = btm - t, inter, wa, ha, wb, hb, area_a, area_b, uni;
    if (!(w >= 0)) w = 0;
    if (!(h >= 0)) h = 0;
    inter = w * h;
    wa = a[2] - a[0]; ha = a[3] - a[1]; wb = b[2] - b[0]; hb = b[3] - b[1];
    if (!(wa >= 0)) wa = 0;
    if (!(ha >= 0)) ha = 0;
    if (!(wb >= 0)) wb = 0;
    if (!(hb >= 0)) hb = 0;
    area_a = wa * ha;
    area_b = wb * hb;
    uni = area_a + area_b - inter;
    return uni > 0 ? inter / uni : 0.0;
}

/* insert candidate (i, score, class) into the sorted list of m; box widens the span */
static void el_det_insert(long *cand, double *cand_s, int *cand_c, long m, long i, double score,
                          int c, const double *box, double *lo, double *hi)
{
    long j;
    int k;
    for (k = 0; k < 4; ++k) {
        if (m == 0 && k == 0) { *lo = box[0]; *hi = box[0]; }
        if (box[k] < *lo) *lo = box[k];
        if (box[k] > *hi) *hi = box[k];
    }
    for (j = m; j > 0 && el_det_before(score, i, cand_s[j - 1], cand[j - 1]); --j) {
        cand[j] = cand[j - 1];
        cand_s[j] = cand_s[j - 1];
        cand_c[j] = cand_c[j - 1];
    }
    cand[j] = i;
    cand_s[j] = score;
    cand_c[j] = c;
}

/* the box of candidate i again (recomputed: no n-sized box store) */
typedef void (*el_det_box_fn)(const void *ctx, long i, double *box);

/* greedy NMS over the m sorted candidates; returns how many were kept (<= max_det).
 * ki (may be 0): the kept candidates' own indices (an SSD head's keypoints need them). */
static int el_det_nms(const long *cand, const double *cand_s, const int *cand_c, long m,
                      el_det_box_fn box_of, const void *ctx, double lo, double hi, int nms,
                      double iou, int by_class, int max_det, double *kb, double *ks, int *kc,
                      long *ki)
{
    double span = m > 0 ? (hi - lo) + 1.0 : 0.0, box[4], sb[4], kbs[4];
    long j;
    int k, q, kept = 0;
    for (j = 0; j < m && kept < max_det; ++j) {
        double shift = by_class ? (double)cand_c[j] * span : 0.0;
        int ok = 1;
        box_of(ctx, cand[j], box);
        if (nms) {
            for (q = 0; q < 4; ++q) sb[q] = box[q] + shift;
            for (k = 0; k < kept && ok; ++k) {
                double ks_shift = by_class ? (double)kc[k] * span : 0.0;
                for (q = 0; q < 4; ++q) kbs[q] = kb[4 * k + q] + ks_shift;
                if (el_det_iou(kbs, sb) > iou) ok = 0;
            }
        }
        if (!ok)
            continue;
        for (q = 0; q < 4; ++q) kb[4 * kept + q] = box[q];
        ks[kept] = cand_s[j];
        kc[kept] = cand_c[j];
        if (ki)
            ki[kept] = cand[j];
        ++kept;
    }
    return kept;
}

#endif /* EL_DETECT_NMS_H */

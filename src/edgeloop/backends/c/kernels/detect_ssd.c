/* detect_ssd.c: an SSD-style head (ssd_anchors, tflite_ssd) decoded on the device.
 *
 * For each anchor: a cheap threshold test on the raw score (int8: the threshold converted
 * once to the int8 domain, q >= q_thr; float: the logit of the threshold), then, for the
 * candidates only, the score (int8: a 256-entry table computed at export, float: the
 * activation), the box from its anchor, and greedy NMS with at most max_det detections.
 * No malloc: cand / cand_s hold n entries, kb / ks / kc max_det. */
#ifndef EL_DETECT_SSD_C
#define EL_DETECT_SSD_C

#include <math.h>
#include <stdint.h>
#include "detect_common.h"

/* Every value is read and computed in double, in the operation order of
 * edgeloop.runtime.detect (numpy float64), so an int8 head gives the numpy decoder's boxes
 * bit for bit. */

/* output element i as float64: int8 outputs dequantized ((q - zp) * scale) */
static double el_det_value(const void *p, int is_int8, long i, double scale, double zp)
{
    if (is_int8)
        return ((double)((const int8_t *)p)[i] - zp) * scale;
    return (double)((const float *)p)[i];
}

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

enum { EL_DET_ACT_NONE = 0, EL_DET_ACT_SIGMOID = 1 };

/* the score of anchor i, class column c (float64, as numpy's _activate) */
static double el_ssd_score(const void *s, int s_int8, long i,
                           const double *lut, int act, double clip)
{
    double x;
    if (s_int8)
        return lut[((const int8_t *)s)[i] + 128];
    x = (double)((const float *)s)[i];
    if (clip > 0) {
        if (x < -clip) x = -clip;
        if (x > clip) x = clip;
    }
    return act == EL_DET_ACT_SIGMOID ? 1.0 / (1.0 + exp(-x)) : x;
}

/* box of anchor i in input pixels (x1 y1 x2 y2); 0 when not finite */
static int el_ssd_box(const void *b, int b_int8, long i, int stride, double b_scale, double b_zp,
                      const double *anchors, int yx, const double *scale, int exp_size,
                      double tw, double th, double *out)
{
    const double *a = anchors + 4 * i;
    double t0 = el_det_value(b, b_int8, i * stride + 0, b_scale, b_zp);
    double t1 = el_det_value(b, b_int8, i * stride + 1, b_scale, b_zp);
    double t2 = el_det_value(b, b_int8, i * stride + 2, b_scale, b_zp);
    double t3 = el_det_value(b, b_int8, i * stride + 3, b_scale, b_zp);
    double tx, ty, tww, thh, sx, sy, sw, sh, cx, cy, w, h;
    if (yx) { ty = t0; tx = t1; thh = t2; tww = t3; sy = scale[0]; sx = scale[1]; sh = scale[2]; sw = scale[3]; }
    else { tx = t0; ty = t1; tww = t2; thh = t3; sx = scale[0]; sy = scale[1]; sw = scale[2]; sh = scale[3]; }
    cx = tx / sx * a[2] + a[0];
    cy = ty / sy * a[3] + a[1];
    if (exp_size) {
        w = exp(tww / sw) * a[2];
        h = exp(thh / sh) * a[3];
    } else {
        w = tww / sw * a[2];
        h = thh / sh * a[3];
    }
    if (!isfinite(cx) || !isfinite(w))
        return 0;
    out[0] = (cx - w / 2) * tw;
    out[1] = (cy - h / 2) * th;
    out[2] = (cx + w / 2) * tw;
    out[3] = (cy + h / 2) * th;
    return 1;
}

static void k_detect_ssd(const void *b, int b_int8, double b_scale, double b_zp, int stride,
                         const void *s, int s_int8, int nc, int c0,
                         const double *lut, int q_thr, int act, double clip, double raw_thr,
                         double thr, const double *anchors, long n, int yx, const double *scale,
                         int exp_size, double tw, double th, int nms, double iou, int by_class,
                         int max_det, long *cand, double *cand_s, int *cand_c, double *kb,
                         double *ks, int *kc, int *count)
{
    long i, m = 0, j, k;
    int c, kept = 0;
    double span = 0.0, lo = 0.0, hi = 0.0, box[4];
    int have = 0;
    for (i = 0; i < n; ++i) {
        /* the cheap test: the best raw score against the threshold in the raw domain */
        int pass = 0, best_c = 0;
        double best = 0.0;
        for (c = c0; c < nc && !pass; ++c) {
            if (s_int8)
                pass = ((const int8_t *)s)[i * nc + c] >= q_thr;
            else
                pass = !(((const float *)s)[i * nc + c] < raw_thr);
        }
        if (!pass)
            continue;
        for (c = c0; c < nc; ++c) {   /* numpy argmax: the first maximum */
            double v = el_ssd_score(s, s_int8, i * nc + c, lut, act, clip);
            if (c == c0 || v > best) { best = v; best_c = c - c0; }
        }
        if (!isfinite(best) || !(best >= thr))
            continue;
        if (!el_ssd_box(b, b_int8, i, stride, b_scale, b_zp, anchors, yx, scale, exp_size, tw, th, box))
            continue;
        for (k = 0; k < 4; ++k) {
            if (!have || box[k] < lo) lo = box[k];
            if (!have || box[k] > hi) hi = box[k];
            have = 1;
        }
        /* insertion sort: best first, ties by anchor index */
        for (j = m; j > 0 && el_det_before(best, i, cand_s[j - 1], cand[j - 1]); --j) {
            cand[j] = cand[j - 1];
            cand_s[j] = cand_s[j - 1];
            cand_c[j] = cand_c[j - 1];
        }
        cand[j] = i;
        cand_s[j] = best;
        cand_c[j] = best_c;
        ++m;
    }
    /* numpy's nms shifts each class into its own region by class * span */
    span = have ? (hi - lo) + 1.0 : 0.0;
    for (j = 0; j < m && kept < max_det; ++j) {
        double shift = by_class ? (double)cand_c[j] * span : 0.0, sb[4], kbs[4];
        int ok = 1;
        el_ssd_box(b, b_int8, cand[j], stride, b_scale, b_zp, anchors, yx, scale, exp_size, tw, th, box);
        if (nms) {
            for (k = 0; k < 4; ++k) sb[k] = box[k] + shift;
            for (k = 0; k < kept && ok; ++k) {
                int q;
                double ks_shift = by_class ? (double)kc[k] * span : 0.0;
                for (q = 0; q < 4; ++q) kbs[q] = kb[4 * k + q] + ks_shift;
                if (el_det_iou(kbs, sb) > iou) ok = 0;
            }
        }
        if (!ok)
            continue;
        for (k = 0; k < 4; ++k) kb[4 * kept + k] = box[k];
        ks[kept] = cand_s[j];
        kc[kept] = cand_c[j];
        ++kept;
    }
    *count = kept;
}

#endif /* EL_DETECT_SSD_C */

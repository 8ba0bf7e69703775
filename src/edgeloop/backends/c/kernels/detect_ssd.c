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
#include "detect_nms.h"

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

/* what a box needs besides its index */
struct el_ssd_coder {
    const void *b;
    int b_int8, yx, exp_size;
    long stride;
    double b_scale, b_zp, tw, th;
    const double *anchors, *scale;
};

/* box of anchor i in input pixels (x1 y1 x2 y2); 0 when not finite */
static int el_ssd_box(const struct el_ssd_coder *e, long i, double *out)
{
    const double *a = e->anchors + 4 * i, *scale = e->scale;
    double t0 = el_det_value(e->b, e->b_int8, i * e->stride + 0, e->b_scale, e->b_zp);
    double t1 = el_det_value(e->b, e->b_int8, i * e->stride + 1, e->b_scale, e->b_zp);
    double t2 = el_det_value(e->b, e->b_int8, i * e->stride + 2, e->b_scale, e->b_zp);
    double t3 = el_det_value(e->b, e->b_int8, i * e->stride + 3, e->b_scale, e->b_zp);
    double tx, ty, tww, thh, sx, sy, sw, sh, cx, cy, w, h;
    if (e->yx) { ty = t0; tx = t1; thh = t2; tww = t3; sy = scale[0]; sx = scale[1]; sh = scale[2]; sw = scale[3]; }
    else { tx = t0; ty = t1; tww = t2; thh = t3; sx = scale[0]; sy = scale[1]; sw = scale[2]; sh = scale[3]; }
    cx = tx / sx * a[2] + a[0];
    cy = ty / sy * a[3] + a[1];
    if (e->exp_size) {
        w = exp(tww / sw) * a[2];
        h = exp(thh / sh) * a[3];
    } else {
        w = tww / sw * a[2];
        h = thh / sh * a[3];
    }
    if (!isfinite(cx) || !isfinite(w))
        return 0;
    out[0] = (cx - w / 2) * e->tw;
    out[1] = (cy - h / 2) * e->th;
    out[2] = (cx + w / 2) * e->tw;
    out[3] = (cy + h / 2) * e->th;
    return 1;
}

static void el_ssd_box_of(const void *ctx, long i, double *box)
{
    (void)el_ssd_box((const struct el_ssd_coder *)ctx, i, box);
}

static void k_detect_ssd(const void *b, int b_int8, double b_scale, double b_zp, int stride,
                         const void *s, int s_int8, int nc, int c0,
                         const double *lut, int q_thr, int act, double clip, double raw_thr,
                         double thr, const double *anchors, long n, int yx, const double *scale,
                         int exp_size, double tw, double th, int nms, double iou, int by_class,
                         int max_det, long *cand, double *cand_s, int *cand_c, double *kb,
                         double *ks, int *kc, int nk, long *ki, double *kk, int *count)
{
    struct el_ssd_coder e;
    long i, m = 0;
    int c;
    double lo = 0.0, hi = 0.0, box[4];
    e.b = b; e.b_int8 = b_int8; e.yx = yx; e.exp_size = exp_size; e.stride = stride;
    e.b_scale = b_scale; e.b_zp = b_zp; e.tw = tw; e.th = th; e.anchors = anchors; e.scale = scale;
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
        if (!isfinite(best) || !(best >= thr) || !el_ssd_box(&e, i, box))
            continue;
        el_det_insert(cand, cand_s, cand_c, m++, i, best, best_c, box, &lo, &hi);
    }
    *count = el_det_nms(cand, cand_s, cand_c, m, el_ssd_box_of, &e, lo, hi, nms, iou, by_class,
                        max_det, kb, ks, kc, ki);
    /* keypoints of the kept boxes: nk (x, y) pairs after the box in each row, decoded from the
     * anchor as numpy does ((k / sx * aw + ax) * tw), in the box coder's scale order */
    for (c = 0; c < *count && nk > 0; ++c) {
        const double *a = anchors + 4 * ki[c];
        double sx = yx ? scale[1] : scale[0], sy = yx ? scale[0] : scale[1];
        int j;
        for (j = 0; j < nk; ++j) {
            long at = ki[c] * stride + 4 + 2 * j;
            double kx = el_det_value(b, b_int8, at, b_scale, b_zp);
            double ky = el_det_value(b, b_int8, at + 1, b_scale, b_zp);
            kk[2 * (c * nk + j)] = (kx / sx * a[2] + a[0]) * tw;
            kk[2 * (c * nk + j) + 1] = (ky / sy * a[3] + a[1]) * th;
        }
    }
}

#endif /* EL_DETECT_SSD_C */

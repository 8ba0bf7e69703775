/* detect_yolo.c: a YOLO head (yolov8: [4+nc] values per box, yolov5: [5+nc] with
 * objectness) decoded on the device: boxes cx cy w h in input pixels, class scores as
 * they are (yolov5: times the objectness), greedy NMS with at most max_det detections.
 * Value j of box i is at a[i * si + j * sj] (both layouts, [N, k] and [k, N]). int8
 * values go through a 256-entry table of their float64 value (computed at export); for
 * yolov8 the threshold is first tested in the int8 domain (q >= q_thr). */
#ifndef EL_DETECT_YOLO_C
#define EL_DETECT_YOLO_C

#include <math.h>
#include <stdint.h>
#include "detect_nms.h"

struct el_yolo_out {
    const void *a;
    int is_int8;
    long si, sj;
    const double *lut;
};

static double el_yolo_value(const struct el_yolo_out *o, long i, long j)
{
    long at = i * o->si + j * o->sj;
    if (o->is_int8)
        return o->lut[((const int8_t *)o->a)[at] + 128];
    return (double)((const float *)o->a)[at];
}

static void el_yolo_box_of(const void *ctx, long i, double *box)
{
    const struct el_yolo_out *o = (const struct el_yolo_out *)ctx;
    double cx = el_yolo_value(o, i, 0), cy = el_yolo_value(o, i, 1);
    double w = el_yolo_value(o, i, 2), h = el_yolo_value(o, i, 3);
    box[0] = cx - w / 2;
    box[1] = cy - h / 2;
    box[2] = cx + w / 2;
    box[3] = cy + h / 2;
}

static void k_detect_yolo(const void *a, int is_int8, const double *lut, long n, int k, long si,
                          long sj, int obj, int q_thr, double thr, int nms, double iou,
                          int by_class, int max_det, long *cand, double *cand_s, int *cand_c,
                          double *kb, double *ks, int *kc, int *count)
{
    struct el_yolo_out o;
    long i, m = 0;
    int c, first = obj ? 5 : 4;
    double lo = 0.0, hi = 0.0, box[4];
    o.a = a; o.is_int8 = is_int8; o.si = si; o.sj = sj; o.lut = lut;
    for (i = 0; i < n; ++i) {
        double best = 0.0, ob = obj ? el_yolo_value(&o, i, 4) : 1.0;
        int best_c = 0;
        if (is_int8 && !obj && k > first) {   /* the cheap test, in the int8 domain */
            int pass = 0;
            for (c = first; c < k && !pass; ++c)
                pass = ((const int8_t *)a)[i * si + c * sj] >= q_thr;
            if (!pass)
                continue;
        }
        if (k == first)
            best = el_yolo_value(&o, i, 4);
        for (c = first; c < k; ++c) {   /* numpy argmax: the first maximum */
            double v = obj ? el_yolo_value(&o, i, c) * ob : el_yolo_value(&o, i, c);
            if (c == first || v > best) { best = v; best_c = c - first; }
        }
        if (!isfinite(best) || !(best >= thr))
            continue;
        el_yolo_box_of(&o, i, box);
        el_det_insert(cand, cand_s, cand_c, m++, i, best, best_c, box, &lo, &hi);
    }
    *count = el_det_nms(cand, cand_s, cand_c, m, el_yolo_box_of, &o, lo, hi, nms, iou, by_class,
                        max_det, kb, ks, kc, 0);
}

#endif /* EL_DETECT_YOLO_C */

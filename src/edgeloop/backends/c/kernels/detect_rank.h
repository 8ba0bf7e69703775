/* detect_rank.h: the order of detections (edgeloop detection-head kernels).
 * Kept detections are held best first in kb (x1 y1 x2 y2), ks (score), kc (class). */
#ifndef EL_DETECT_RANK_H
#define EL_DETECT_RANK_H

/* (s, k) ranks before (t, j): higher score first, then the lower key (numpy's stable
 * argsort of -score) */
static int el_det_before(double s, long k, double t, long j)
{
    return s > t || (s == t && k < j);
}

#endif /* EL_DETECT_RANK_H */

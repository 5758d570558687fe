/* One windowed aggregate per query over entries sorted by (key, time, offset): models/agg_window.py.
 *
 * Query q reads entries lo[q] .. hi[q]-1 (its key's, up to its time) and keeps those at or before it
 * (offset <= its offset) and inside the window (its time - the entry's time < window), in ascending
 * order: the same entries, in the same order, as the numpy path, so every result is bit for bit equal.
 */
#include <math.h>
#include <stdint.h>

enum { EVENTS = 0, COUNT = 1, SUM = 2, MEAN = 3, MIN = 4, MAX = 5, DISTINCT = 6 };

void ss_window(const int64_t *et, const int64_t *eo, const double *xf, const int64_t *xi, int64_t null_hash,
               const int64_t *lo, const int64_t *hi, const int64_t *qt, const int64_t *qo, int64_t nq,
               int64_t window, int64_t op, double *out, int64_t *table, int64_t *stamp, int64_t mask) {
    for (int64_t q = 0; q < nq; q++) {
        int64_t n = 0, distinct = 0;
        double acc = 0.0;
        for (int64_t e = lo[q]; e < hi[q]; e++) {
            if (eo[e] > qo[q] || qt[q] - et[e] >= window)
                continue;
            if (op == EVENTS) {
                n++;
            } else if (op == DISTINCT) {
                int64_t v = xi[e];
                if (v == null_hash)
                    continue;
                uint64_t h = (uint64_t)v * 0x9E3779B97F4A7C15ULL;
                int64_t slot = (int64_t)(h >> 20) & mask;
                while (stamp[slot] == q + 1 && table[slot] != v)
                    slot = (slot + 1) & mask;
                if (stamp[slot] != q + 1) {
                    stamp[slot] = q + 1;
                    table[slot] = v;
                    distinct++;
                }
            } else {
                double x = xf[e];
                if (isnan(x))
                    continue;
                if (op == MIN)
                    acc = n == 0 ? x : (acc < x ? acc : x);
                else if (op == MAX)
                    acc = n == 0 ? x : (acc > x ? acc : x);
                else
                    acc += x;
                n++;
            }
        }
        if (op == EVENTS || op == COUNT)
            out[q] = (double)n;
        else if (op == DISTINCT)
            out[q] = (double)distinct;
        else if (op == SUM)
            out[q] = acc;
        else if (op == MEAN)
            out[q] = n ? acc / (double)n : NAN;
        else
            out[q] = n ? acc : NAN;
    }
}

/* The windowed aggregates of one store per query, over two runs of entries, each sorted by (key, time,
 * offset): a partition's segment and its recent entries (models/aggregates.py, models/agg_window.py).
 *
 * Query q reads the segment's entries alo[q] .. ahi[q]-1 and the recent entries blo[q] .. bhi[q]-1 (its
 * key's), merged in (time, offset) order, in one pass for every aggregate; an aggregate keeps the entries at
 * or before the query (offset <= its offset) and inside its window (0 <= the query's time - the entry's time
 * < window): the same entries, in the same order, as the numpy path, so every result is bit for bit equal.
 * The queries are taken in the order ``order`` gives (by key: the entries are then read nearly in sequence).
 */
#include <math.h>
#include <stdint.h>

enum { EVENTS = 0, COUNT = 1, SUM = 2, MEAN = 3, MIN = 4, MAX = 5, DISTINCT = 6 };
enum { PREFETCH = 6 };          /* queries ahead whose first segment entries are prefetched (memory latency) */

typedef struct {
    int64_t op, window;
    const double *af, *bf;      /* the two runs' values: float64 (COUNT .. MAX) */
    const int64_t *ai, *bi;     /* or int64 text hashes (DISTINCT) */
    double *out;                /* one value per query */
    int64_t *table, *stamp;     /* DISTINCT: an open-addressing set, a slot in use when stamp = query + 1 */
    int64_t mask;
} agg_t;

void ss_windows(const int64_t *at, const int64_t *ao, const int64_t *bt, const int64_t *bo, const int64_t *alo,
                const int64_t *ahi, const int64_t *blo, const int64_t *bhi, const int64_t *qt, const int64_t *qo,
                const int64_t *order, int64_t nq, int64_t longest, int64_t null_hash, int64_t nagg, agg_t *aggs,
                int64_t *n, double *acc) {
    for (int64_t qq = 0; qq < nq; qq++) {
        int64_t q = order[qq];
        if (qq + PREFETCH < nq) {                /* a later query's segment entries: fetched while this one runs */
            int64_t p = alo[order[qq + PREFETCH]];
            if (p < ahi[order[qq + PREFETCH]]) {
                int64_t last = ahi[order[qq + PREFETCH]] - 1;      /* and the line of its last one */
                __builtin_prefetch(at + p);
                __builtin_prefetch(ao + p);
                __builtin_prefetch(at + last);
                __builtin_prefetch(ao + last);
                for (int64_t g = 0; g < nagg; g++) {
                    if (aggs[g].af) { __builtin_prefetch(aggs[g].af + p); __builtin_prefetch(aggs[g].af + last); }
                    if (aggs[g].ai) { __builtin_prefetch(aggs[g].ai + p); __builtin_prefetch(aggs[g].ai + last); }
                }
            }
        }
        for (int64_t g = 0; g < nagg; g++) {
            n[g] = 0;
            acc[g] = 0.0;
        }
        int64_t i = alo[q], j = blo[q];
        while (i < ahi[q] || j < bhi[q]) {
            int from_a = j >= bhi[q] || (i < ahi[q] && (at[i] < bt[j] || (at[i] == bt[j] && ao[i] < bo[j])));
            int64_t e = from_a ? i++ : j++;
            int64_t t = from_a ? at[e] : bt[e], o = from_a ? ao[e] : bo[e];
            int64_t age = qt[q] - t;
            if (o > qo[q] || age < 0 || age >= longest)
                continue;
            for (int64_t g = 0; g < nagg; g++) {
                agg_t *a = &aggs[g];
                if (age >= a->window)
                    continue;
                if (a->op == EVENTS) {
                    n[g]++;
                } else if (a->op == DISTINCT) {
                    int64_t v = from_a ? a->ai[e] : a->bi[e];
                    if (v == null_hash)
                        continue;
                    uint64_t h = (uint64_t)v * 0x9E3779B97F4A7C15ULL;
                    int64_t slot = (int64_t)(h >> 20) & a->mask;
                    while (a->stamp[slot] == q + 1 && a->table[slot] != v)
                        slot = (slot + 1) & a->mask;
                    if (a->stamp[slot] != q + 1) {
                        a->stamp[slot] = q + 1;
                        a->table[slot] = v;
                        n[g]++;
                    }
                } else {
                    double x = from_a ? a->af[e] : a->bf[e];
                    if (isnan(x))
                        continue;
                    if (a->op == MIN)
                        acc[g] = n[g] == 0 ? x : (acc[g] < x ? acc[g] : x);
                    else if (a->op == MAX)
                        acc[g] = n[g] == 0 ? x : (acc[g] > x ? acc[g] : x);
                    else
                        acc[g] += x;
                    n[g]++;
                }
            }
        }
        for (int64_t g = 0; g < nagg; g++) {
            int64_t op = aggs[g].op;
            double *out = aggs[g].out;
            if (op == EVENTS || op == COUNT || op == DISTINCT)
                out[q] = (double)n[g];
            else if (op == SUM)
                out[q] = acc[g];
            else if (op == MEAN)
                out[q] = n[g] ? acc[g] / (double)n[g] : NAN;
            else
                out[q] = n[g] ? acc[g] : NAN;
        }
    }
}

/* Merge run b (nb entries, sorted) into run a (na entries, sorted; its columns have room for na + nb) in place,
   from the back, by (key, time, offset) (columns 0, 1, 2: int64); an entry of a stays before an equal one of b.
   Every column is 8 bytes wide and moved whole (float columns as their bits). */
void ss_merge(int64_t ncols, int64_t *const *a, int64_t na, const int64_t *const *b, int64_t nb) {
    const int64_t *ak = a[0], *at = a[1], *ao = a[2], *bk = b[0], *bt = b[1], *bo = b[2];
    int64_t i = na - 1, j = nb - 1, w = na + nb - 1;
    while (j >= 0) {
        int from_a = 0;
        if (i >= 0)
            from_a = ak[i] != bk[j] ? ak[i] > bk[j] : at[i] != bt[j] ? at[i] > bt[j] : ao[i] > bo[j];
        if (from_a) {
            for (int64_t c = 0; c < ncols; c++) a[c][w] = a[c][i];
            i--;
        } else {
            for (int64_t c = 0; c < ncols; c++) a[c][w] = b[c][j];
            j--;
        }
        w--;
    }
}

/* ss_windows' arguments checked: each query's ranges inside its run (alo <= ahi within na entries, blo <= bhi
   within nb) and order a permutation of the nq queries (seen: nq zeroed bytes). Returns the most entries one
   query reads, or -1 (a range outside its run) or -2 (not a permutation). */
int64_t ss_windows_check(const int64_t *alo, const int64_t *ahi, int64_t na, const int64_t *blo, const int64_t *bhi,
                         int64_t nb, const int64_t *order, int64_t nq, uint8_t *seen) {
    int64_t most = 0;
    for (int64_t q = 0; q < nq; q++) {
        if (alo[q] < 0 || ahi[q] < alo[q] || ahi[q] > na || blo[q] < 0 || bhi[q] < blo[q] || bhi[q] > nb)
            return -1;
        int64_t m = ahi[q] - alo[q] + bhi[q] - blo[q];
        if (m > most) most = m;
        int64_t o = order[q];
        if (o < 0 || o >= nq || seen[o]) return -2;
        seen[o] = 1;
    }
    return most;
}

/* The n entries (key codes k in [0, nkeys), times t, offsets o) ordered by (key, time, offset) when that is the
   order of a stable sort by key alone, the usual case (each key's entries arrive in time order): a counting
   sort by key into order[], and starts[c] .. starts[c + 1] the place of key c's entries (starts: nkeys + 1
   zeroed). Returns 0; or 1 when some key's entries are not in (time, offset) order, or -1 when a code is
   outside [0, nkeys) (order then unset). */
int64_t ss_by_key(const int64_t *k, const int64_t *t, const int64_t *o, int64_t n, int64_t nkeys, int64_t *starts,
                  int64_t *order) {
    for (int64_t i = 0; i < n; i++) {
        if (k[i] < 0 || k[i] >= nkeys) return -1;
        starts[k[i] + 1]++;
    }
    for (int64_t c = 0; c < nkeys; c++) starts[c + 1] += starts[c];
    for (int64_t i = 0; i < n; i++) order[starts[k[i]]++] = i;     /* starts[c] now the end of key c */
    for (int64_t c = nkeys; c > 0; c--) starts[c] = starts[c - 1];
    starts[0] = 0;
    for (int64_t j = 1; j < n; j++) {
        int64_t a = order[j - 1], b = order[j];
        if (k[a] == k[b] && (t[a] > t[b] || (t[a] == t[b] && o[a] > o[b]))) return 1;
    }
    return 0;
}


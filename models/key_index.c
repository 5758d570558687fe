/* Key bytes -> codes in open-addressing hash tables (``models/key_index.py`` loads it with ctypes).

   A key is its bytes with trailing zero bytes dropped (as numpy's fixed-width bytes read them), so both
   functions code exactly as the numpy path does. Tables hold codes (-1: an empty slot), probed linearly;
   a hit is checked byte for byte (or word for word), so a hash collision never merges two keys. */

#include <stdint.h>
#include <string.h>

static inline uint64_t mix(uint64_t x) {          /* the splitmix64 finaliser */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* The hash of a key of n bytes held as zero-padded 64-bit words: its length, then each word it reaches
   (``models.key_index._hash`` computes the same). */
static inline uint64_t hash_words(const uint64_t *w, int64_t stride, int64_t n) {
    uint64_t h = mix((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    for (int64_t j = 0; j < (n + 7) / 8; j++) h = mix(h ^ w[j * stride]);
    return h;
}

static inline uint64_t hash_bytes(const uint8_t *p, int64_t n) {
    uint64_t h = mix((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t w;
        memcpy(&w, p + j, 8);
        h = mix(h ^ w);
    }
    if (j < n) {
        uint64_t w = 0;
        memcpy(&w, p + j, (size_t)(n - j));
        h = mix(h ^ w);
    }
    return h;
}

static inline int64_t trimmed(const uint8_t *p, int64_t n) {
    while (n > 0 && p[n - 1] == 0) n--;
    return n;
}

/* Group the n rows of a string column (row i: buf[start[i] .. start[i] + length[i]), null where length < 0)
   by value: codes[i] = the value's rank in order of first sight (-1 for a null row); value d's bytes are
   copied to fixed[d * w ..] (zeroed by the caller; w at least the longest value), first[d] = the first row
   holding it, size[d] its length. table: cap slots (a power of two, at least 2n), every one -1.
   Returns the number of distinct values. */
int64_t ss_group(const uint8_t *buf, const int64_t *start, const int64_t *length, int64_t n, int64_t *table,
                 int64_t cap, int64_t *codes, int64_t *first, int64_t *size, uint8_t *fixed, int64_t w) {
    uint64_t mask = (uint64_t)cap - 1;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (length[i] < 0) {
            codes[i] = -1;
            continue;
        }
        const uint8_t *p = buf + start[i];
        int64_t len = trimmed(p, length[i]);
        uint64_t slot = hash_bytes(p, len) & mask;
        for (;;) {
            int64_t d = table[slot];
            if (d < 0) {
                table[slot] = k;
                memcpy(fixed + k * w, p, (size_t)len);
                first[k] = i;
                size[k] = len;
                codes[i] = k++;
                break;
            }
            if (size[d] == len && memcmp(buf + start[first[d]], p, (size_t)len) == 0) {
                codes[i] = d;
                break;
            }
            slot = (slot + 1) & mask;
        }
    }
    return k;
}

enum { AHEAD = 8, RING = 16 };  /* keys hashed and their slots prefetched ahead of the probe (memory latency);
                                   RING > AHEAD hashes held */

/* Insert code c (its words at words[c * w ..], its length lens[c]) into the table. */
static inline void place(int64_t *table, uint64_t mask, const uint64_t *words, int64_t w, const int64_t *lens,
                         int64_t c) {
    uint64_t slot = hash_words(words + c * w, 1, lens[c]) & mask;
    while (table[slot] >= 0) slot = (slot + 1) & mask;
    table[slot] = c;
}

/* The table rebuilt over codes 0 .. n-1 (every slot -1 on entry); a code longer than max_bytes (held by the
   caller's dict) is left out. */
void ss_index_build(int64_t *table, int64_t cap, const uint64_t *words, int64_t w, const int64_t *lens, int64_t n,
                    int64_t max_bytes) {
    for (int64_t c = 0; c < n; c++)
        if (lens[c] <= max_bytes) place(table, (uint64_t)cap - 1, words, w, lens, c);
}

/* The codes of m keys (key i: kwords[idx[i] * kw .. + kw), zero-padded, length klen[idx[i]]) in an index of n
   codes (code c's words at words[c * w ..], its length at lens[c]). A key not held is given the next code, its
   words and length stored and its slot taken. The caller guarantees room for n + m codes, w >= kw and
   cap >= 2 (n + m). out[i] = key i's code; returns the new n. Each key's slot is prefetched AHEAD keys before
   it is probed, and the words of the code found there half as many before. */
int64_t ss_index(int64_t *table, int64_t cap, uint64_t *words, int64_t w, int64_t *lens, int64_t n,
                 const uint64_t *kwords, int64_t kw, const int64_t *klen, const int64_t *idx, int64_t m,
                 int64_t *out) {
    uint64_t mask = (uint64_t)cap - 1, ring[RING];
    for (int64_t step = 0; step < m + AHEAD; step++) {
        if (step < m) {
            ring[step % RING] = hash_words(kwords + idx[step] * kw, 1, klen[idx[step]]);
            __builtin_prefetch(table + (ring[step % RING] & mask));
        }
        int64_t half = step - AHEAD / 2;
        if (half >= 0 && half < m) {
            int64_t c = table[ring[half % RING] & mask];
            if (c >= 0) {
                __builtin_prefetch(words + c * w);
                __builtin_prefetch(lens + c);
            }
        }
        int64_t i = step - AHEAD;
        if (i < 0)
            continue;
        const uint64_t *key = kwords + idx[i] * kw;
        int64_t len = klen[idx[i]], used = (len + 7) / 8;
        uint64_t slot = ring[i % RING] & mask;
        for (;;) {
            int64_t c = table[slot];
            if (c < 0) {
                for (int64_t j = 0; j < w; j++) words[n * w + j] = j < kw ? key[j] : 0;
                lens[n] = len;
                table[slot] = n;
                out[i] = n++;
                break;
            }
            if (lens[c] == len) {
                int64_t j = 0;
                while (j < used && words[c * w + j] == key[j]) j++;
                if (j == used) {
                    out[i] = c;
                    break;
                }
            }
            slot = (slot + 1) & mask;
        }
    }
    return n;
}

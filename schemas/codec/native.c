/* Byte-copy kernels for the columnar Avro codec (schemas/_native.py loads this with ctypes).
 *
 * numpy can only express "copy n variable-length segments" through per-byte index arrays
 * (8 bytes of index per byte copied); these loops do the same copies with memcpy.
 * Callers validate every offset and length before calling: there are no checks here.
 */
#include <stdint.h>
#include <string.h>

/* dst[dst_pos[i] .. +len[i]) = src[src_pos[i] .. +len[i]) for each i; a negative len copies nothing. */
void ss_copy_segments(uint8_t *dst, const int64_t *dst_pos, const uint8_t *src, const int64_t *src_pos,
                      const int64_t *len, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (len[i] > 0) memcpy(dst + dst_pos[i], src + src_pos[i], (size_t)len[i]);
    }
}

/* The same with the source segments laid end to end (segment i starts where i-1 ended). */
void ss_copy_packed(uint8_t *dst, const int64_t *dst_pos, const uint8_t *src, const int64_t *len, int64_t n) {
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        if (len[i] > 0) {
            memcpy(dst + dst_pos[i], src + at, (size_t)len[i]);
            at += len[i];
        }
    }
}

/* dst[dst_pos[i] .. +width) = src[i*src_stride .. +width): rows of a matrix (stride = width) or
 * one constant block (stride = 0). */
void ss_copy_rows(uint8_t *dst, const int64_t *dst_pos, const uint8_t *src, int64_t src_stride, int64_t width,
                  int64_t n) {
    for (int64_t i = 0; i < n; i++) memcpy(dst + dst_pos[i], src + i * src_stride, (size_t)width);
}

/* out[i] = 1 when buf[start[i] .. +len[i]) holds a byte >= 0x80 (so it needs a real UTF-8 check),
 * else 0; a length <= 0 is an empty segment. */
void ss_non_ascii(const uint8_t *buf, const int64_t *start, const int64_t *len, int64_t n, uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = buf + start[i];
        int64_t k = len[i], j = 0;
        uint64_t acc = 0;
        for (; j + 8 <= k; j += 8) {
            uint64_t w;
            memcpy(&w, p + j, 8);
            acc |= w;
        }
        uint8_t tail = 0;
        for (; j < k; j++) tail |= p[j];
        out[i] = ((acc & 0x8080808080808080ULL) != 0) | (tail >> 7);
    }
}

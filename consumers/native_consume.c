/* Drain a confluent-kafka Consumer's queue into flat arrays (consumers/native_consume.py loads this).
 *
 * Two calls per batch. ss_take does exactly what confluent-kafka's Consumer.consume does around
 * rd_kafka_consume_batch_queue for timeouts under its 200 ms chunk: CallState_begin (GIL released,
 * the thread's CallState set, so rebalance, commit, error, stats and log callbacks served inside
 * the call find it), the call, CallState_end (GIL back, signals checked, a callback's exception
 * restored). It then records each message's lengths and metadata and keeps the messages.
 * ss_copy copies values and keys into the caller's buffers and destroys the messages.
 * It is called through ctypes.PyDLL (the GIL held on entry and exit; a Python error set in
 * between is raised by ctypes). No Python.h: confluent-kafka's and librdkafka's entry points
 * arrive as function pointers resolved in their own modules.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* rd_kafka_message_t (librdkafka ABI, stable since 0.9) */
typedef struct {
    int err;
    void *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *private_;
} ss_rkmessage;

typedef struct {
    void (*begin)(void *handle, void *callstate);
    int (*end)(void *handle, void *callstate);
    ssize_t (*consume)(void *rkqu, int timeout_ms, ss_rkmessage **msgs, size_t size);
    void (*destroy)(ss_rkmessage *msg);
    int64_t (*timestamp)(const ss_rkmessage *msg, int *tstype);
    int (*last_error)(void);
} ss_fns;

/* Returns the number of messages taken (>= 0), -1 when CallState_end failed (a signal handler
 * raised or a callback raised: the messages are destroyed, as Consumer.consume does, and the
 * Python error is set), or -2 on a librdkafka error (its code in *err_out). For message i:
 * vlen/klen are -1 for a null value/key, else the byte length; their sums (nulls as 0) go to
 * *vtotal / *ktotal. callstate is zeroed scratch memory at least as big as confluent's CallState. */
int64_t ss_take(const ss_fns *f, void *handle, void *rkqu, int timeout_ms, int64_t max, void *callstate,
                ss_rkmessage **msgs, int64_t *vlen, int64_t *klen, int32_t *part, int64_t *off, int64_t *ts,
                int32_t *tstype, int32_t *err, void **rkt, int64_t *vtotal, int64_t *ktotal, int *err_out) {
    f->begin(handle, callstate);
    ssize_t n = f->consume(rkqu, timeout_ms, msgs, (size_t)max);
    int last = n < 0 ? f->last_error() : 0;
    if (!f->end(handle, callstate)) {
        for (ssize_t i = 0; i < n; i++) f->destroy(msgs[i]);
        return -1;
    }
    if (n < 0) {
        *err_out = last;
        return -2;
    }
    int64_t vt = 0, kt = 0;
    for (ssize_t i = 0; i < n; i++) {
        const ss_rkmessage *m = msgs[i];
        vlen[i] = m->payload ? (int64_t)m->len : -1;
        klen[i] = m->key ? (int64_t)m->key_len : -1;
        vt += m->payload ? (int64_t)m->len : 0;
        kt += m->key ? (int64_t)m->key_len : 0;
        part[i] = m->partition;
        off[i] = m->offset;
        int tt = 0;
        ts[i] = f->timestamp(m, &tt);
        tstype[i] = tt;
        err[i] = m->err;
        rkt[i] = m->rkt;
    }
    *vtotal = vt;
    *ktotal = kt;
    return (int64_t)n;
}

/* Values end to end into vbuf, keys end to end into kbuf (nulls take no bytes), then destroy the
 * messages. An errored message's payload is its error string: copied like a value (the caller
 * reads it as the error text). The buffers hold the totals ss_take reported. */
void ss_copy(const ss_fns *f, ss_rkmessage **msgs, int64_t n, uint8_t *vbuf, uint8_t *kbuf) {
    size_t vat = 0, kat = 0;
    for (int64_t i = 0; i < n; i++) {
        ss_rkmessage *m = msgs[i];
        if (m->payload && m->len) {
            memcpy(vbuf + vat, m->payload, m->len);
            vat += m->len;
        }
        if (m->key && m->key_len) {
            memcpy(kbuf + kat, m->key, m->key_len);
            kat += m->key_len;
        }
        f->destroy(m);
    }
}

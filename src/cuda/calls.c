/* A device rank's calls in flight (calls.h): the API's order rules. */
#include <string.h>
#include "cuda/calls.h"
#include "cuda/kern_launch.h"
#include "util/util.h"

void gpu_calls_init(gpu_calls_t *c, int ll, int buffers)
{
    c->B = ll ? (buffers < 1 ? 1 : buffers > GPU_CALLS_MAX ? GPU_CALLS_MAX
                                                           : buffers)
              : 1;
    c->ll = ll;
    c->next = 0;
    c->combining = -1;
    for (int b = 0; b < GPU_CALLS_MAX; b++)
        c->slot[b] = (gpu_call_t){ 0, GPU_CALL_FREE, 0, 0 };
}

/* The live slot of call n, or NULL (never dispatched, or done). */
static gpu_call_t *find(gpu_calls_t *c, uint64_t n, int *b)
{
    if (n >= c->next)
        return NULL;
    int i = (int)(n % (uint64_t)c->B);
    gpu_call_t *s = &c->slot[i];
    if (s->state == GPU_CALL_FREE || s->n != n)
        return NULL;
    *b = i;
    return s;
}

static epx_status_t order(const char *what, const char *why)
{
    return epx__error(EPX_ERR_STATE, "%s: %s", what, why);
}

epx_status_t gpu_calls_send(gpu_calls_t *c, int64_t T, uint64_t *n, int *b)
{
    int i = (int)(c->next % (uint64_t)c->B);
    gpu_call_t *s = &c->slot[i];
    if (s->state != GPU_CALL_FREE) {
        if (c->ll)
            return order("dispatch", "low latency: the call that used this "
                         "buffer (ll_buffers ago) is not combined or "
                         "released yet on this rank");
        if (s->state != GPU_CALL_RECEIVED)
            return order("dispatch", "the previous dispatch/combine of this "
                         "engine is not finished (call its recv first)");
        s->state = GPU_CALL_FREE;   /* received, never combined: abandoned */
    }
    *s = (gpu_call_t){ c->next, GPU_CALL_SENT, T, 0 };
    *n = c->next++;
    *b = i;
    return EPX_OK;
}

static epx_status_t failed(const gpu_call_t *s)
{
    return epx__error((epx_status_t)s->failed, "dispatch: the call failed "
                      "on the device (%s: a rank's bad argument or "
                      "overflow); release its handle",
                      epx_status_str((epx_status_t)s->failed));
}

epx_status_t gpu_calls_recv(gpu_calls_t *c, uint64_t n, int *b)
{
    gpu_call_t *s = find(c, n, b);
    if (!s || (s->state != GPU_CALL_SENT && s->state != GPU_CALL_RECEIVED))
        return order("dispatch_recv", "the handle's dispatch is not in "
                     "flight (combined, released, or abandoned)");
    if (s->failed)
        return failed(s);
    s->state = GPU_CALL_RECEIVED;
    return EPX_OK;
}

epx_status_t gpu_calls_poll(const gpu_calls_t *c, uint64_t n, int *b,
                            int *received)
{
    const gpu_call_t *s = find((gpu_calls_t *)c, n, b);
    if (!s || (s->state != GPU_CALL_SENT && s->state != GPU_CALL_RECEIVED))
        return order("dispatch_poll", "no dispatch of this handle between "
                     "its send and its combine_send");
    if (s->failed)
        return failed(s);
    *received = s->state == GPU_CALL_RECEIVED;
    return EPX_OK;
}

void gpu_calls_fail(gpu_calls_t *c, uint64_t n, epx_status_t st)
{
    int b;
    gpu_call_t *s = find(c, n, &b);
    if (s && (s->state == GPU_CALL_SENT || s->state == GPU_CALL_RECEIVED) &&
        st != EPX_OK)
        s->failed = st;
}

int gpu_ll_poll_read(const int64_t *pub, int L, uint64_t id, uint8_t *ready,
                     int64_t *counts, int32_t *fail)
{
    int n = 0;
    *fail = (uint64_t)__atomic_load_n(&pub[EPXK_LLPUB_FAIL],
                                      __ATOMIC_ACQUIRE) == id
        ? (int32_t)pub[EPXK_LLPUB_FAILST] : 0;
    for (int j = 0; j < L; j++) {
        /* a unit's count is stored before its word (release) */
        ready[j] = !*fail &&
                   (uint64_t)__atomic_load_n(&pub[EPXK_LLPUB_COUNTS + L + j],
                                             __ATOMIC_ACQUIRE) == id;
        counts[j] = ready[j] ? pub[EPXK_LLPUB_COUNTS + j] : 0;
        n += ready[j];
    }
    return n;
}

int gpu_poll_read(const int64_t *pub, int L, uint64_t seq, uint8_t *ready,
                  int64_t *counts, int64_t *rows, int64_t *agree)
{
    /* The sequence word is stored last (release): the rest is this
     * call's once it reads seq. */
    if ((uint64_t)__atomic_load_n(&pub[EPXK_PUB_SEQ], __ATOMIC_ACQUIRE) !=
        seq) {
        if (L > 0) {
            memset(ready, 0, (size_t)L);
            memset(counts, 0, sizeof(int64_t) * 2 * (size_t)L);
        }
        *rows = *agree = 0;
        return 0;
    }
    *agree = pub[EPXK_PUB_AGREE];
    *rows = pub[EPXK_PUB_ROWS];
    if (L > 0)   /* no local expert: counts may be NULL */
        memcpy(counts, pub + EPXK_PUB_COUNTS, sizeof(int64_t) * 2 * (size_t)L);
    int n = 0;
    for (int j = 0; j < L; j++) {
        ready[j] = (uint64_t)__atomic_load_n(&pub[EPXK_PUB_COUNTS + 2 * L + j],
                                             __ATOMIC_ACQUIRE) == seq;
        n += ready[j];
    }
    return n;
}

/* Is call n the oldest outstanding one? */
static int oldest(const gpu_calls_t *c, uint64_t n)
{
    for (int i = 0; i < c->B; i++)
        if (c->slot[i].state != GPU_CALL_FREE && c->slot[i].n < n)
            return 0;
    return 1;
}

epx_status_t gpu_calls_combine_send(gpu_calls_t *c, uint64_t n, int *b,
                                    int64_t *T)
{
    gpu_call_t *s = find(c, n, b);
    if (!s || s->state != GPU_CALL_RECEIVED)
        return order("combine", "no received dispatch for this handle");
    if (c->combining >= 0)
        return order("combine", "another call's combine is in flight "
                     "(its combine_recv first)");
    if (!oldest(c, n))
        return order("combine", "low latency: an earlier call is not "
                     "combined or released yet (calls combine in the "
                     "order they were dispatched)");
    s->state = GPU_CALL_COMBINING;
    c->combining = *b;
    *T = s->T;
    return EPX_OK;
}

epx_status_t gpu_calls_combine_recv(gpu_calls_t *c, uint64_t n, int *b)
{
    gpu_call_t *s = find(c, n, b);
    if (!s || s->state != GPU_CALL_COMBINING)
        return order("combine", "recv without a matching combine_send");
    s->state = GPU_CALL_FREE;
    c->combining = -1;
    return EPX_OK;
}

int gpu_calls_release(gpu_calls_t *c, uint64_t n, int *b)
{
    gpu_call_t *s = find(c, n, b);
    if (!s)
        return GPU_NOTHING;
    int st = s->state;
    s->state = GPU_CALL_FREE;
    if (st == GPU_CALL_COMBINING)
        c->combining = -1;
    if (!c->ll)
        return GPU_NOTHING;
    return st == GPU_CALL_COMBINING ? GPU_FINISH : GPU_ABANDON;
}

int gpu_calls_outstanding(const gpu_calls_t *c)
{
    int k = 0;
    for (int i = 0; i < c->B; i++)
        k += c->slot[i].state != GPU_CALL_FREE;
    return k;
}

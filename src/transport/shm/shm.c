/*
 * shm transport: ranks on one host.  Each rank's window is one POSIX shared
 * memory object, /epx-<job>-<window>-<rank>, mapped by every rank that
 * reaches it through shm (every rank, unless some pairs use the network:
 * then the object is also the memory the network writes into); it is
 * unlinked as soon as every peer has mapped it, so a
 * crash afterwards leaves nothing in /dev/shm; every name is known to every
 * rank, so when creation fails (a rank died before unlinking its object)
 * the survivors remove them all.  The object is sized for the caller's
 * worst case but stays sparse: tmpfs commits a page only when it is first
 * written, so creation checks that the worst case fits in /dev/shm (a
 * write past the end of tmpfs is a SIGBUS, not an error).
 *
 * Layout of an object: nsignals signal slots of one cache line each, then
 * the data area (page aligned).  A put is a memcpy into the peer's mapping;
 * a signal is a seq_cst fetch-add on the peer's slot (ordered after the
 * puts before it) plus a futex wake when the target sleeps.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "util/util.h"
#include "core/group.h"
#include "transport/transport.h"

typedef struct shm_signal {
    uint64_t value;            /* atomic; futex on its low 32 bits */
    uint32_t waiters;          /* atomic; > 0 while someone sleeps */
    char pad[64 - 12];
} shm_signal_t;

typedef struct shm_win {
    epx_win_t base;
    size_t map_len;            /* header + size */
    size_t hdr;                /* offset of the data area */
    void **maps;               /* [nranks] mapping bases */
    shm_signal_t *sig;         /* local signal slots */
    long spin, yield;
    size_t counted;            /* added to comm->shm_bytes */
} shm_win_t;

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

static void shm_name(char *buf, size_t len, const epx_comm_t *comm,
                     unsigned win, int rank)
{
    snprintf(buf, len, "/epx-%s-%u-%d", comm->job, win, rank);
}

/* Every rank's object of window `id`, whoever created it (ENOENT when
 * already gone is the common case). */
static void shm_unlink_all(const epx_comm_t *comm, unsigned id)
{
    char name[96];
    for (int r = 0; r < comm->nranks; r++) {
        shm_name(name, sizeof(name), comm, id, r);
        shm_unlink(name);
    }
}

/* The windows of this host may all fill up: every local rank's, this one
 * included, plus what the communicator's live windows may still grow to
 * (counted in full: conservative).  Refuse a window that could not be
 * written in full rather than die of SIGBUS in the middle of a dispatch. */
static epx_status_t shm_space_check(const epx_comm_t *comm, size_t map_len)
{
    struct statvfs v;
    if (statvfs("/dev/shm", &v) != 0)
        return EPX_OK;   /* not a tmpfs we can see: nothing to promise */
    double avail = (double)v.f_bavail * (double)v.f_frsize;
    int local = comm->tl_peers[EPX_TL_SHM] > 0 ? comm->tl_peers[EPX_TL_SHM] : 1;
    double worst = ((double)comm->shm_bytes + (double)map_len) * local;
    if (worst <= avail)
        return EPX_OK;
    return epx__error(EPX_ERR_NOMEM,
                      "shm: the windows of the %d ranks on this host may grow "
                      "to %.2f GiB (this one %.2f MiB a rank) but /dev/shm has "
                      "%.2f GiB free; a dispatch that filled them would die of "
                      "SIGBUS.  Enlarge /dev/shm (docker run --shm-size) or "
                      "lower max_tokens_per_rank", local, worst / (1 << 30),
                      (double)map_len / (1 << 20), avail / (1 << 30));
}

static void shm_unmap_all(shm_win_t *w)
{
    if (!w->maps)
        return;
    for (int r = 0; r < w->base.comm->nranks; r++)
        if (w->maps[r] && w->maps[r] != MAP_FAILED)
            munmap(w->maps[r], w->map_len);
}

static void shm_win_free(shm_win_t *w)
{
    w->base.comm->shm_bytes -= w->counted;
    shm_unmap_all(w);
    free(w->maps);
    free(w->base.peer);
    free(w);
}

static epx_status_t shm_map(const char *name, size_t len, int create,
                            void **out)
{
    int fd = shm_open(name, O_RDWR | (create ? O_CREAT | O_EXCL : 0), 0600);
    if (fd < 0)
        return epx__syserror(EPX_ERR_SYSTEM, "shm: shm_open(%s)", name);
    if (create && ftruncate(fd, (off_t)len) != 0) {
        epx_status_t st = epx__syserror(EPX_ERR_NOMEM,
                                        "shm: ftruncate(%s, %zu)", name, len);
        close(fd);
        shm_unlink(name);
        return st;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        epx_status_t st = epx__syserror(EPX_ERR_NOMEM, "shm: mmap(%s, %zu)",
                                        name, len);
        if (create)
            shm_unlink(name);
        return st;
    }
    *out = p;
    return EPX_OK;
}

static epx_status_t shm_win_create(epx_comm_t *comm, size_t size, int nsignals,
                                   epx_win_t **out)
{
    int R = comm->nranks, bad = -1;
    shm_win_t *w = calloc(1, sizeof(*w));
    if (!w)
        return epx__error(EPX_ERR_NOMEM, "shm: out of memory");
    w->base.ops = &epx__tl_shm;
    w->base.comm = comm;
    w->base.size = size;
    w->base.nsignals = nsignals;
    w->hdr = page_round(sizeof(shm_signal_t) * (size_t)(nsignals > 0 ? nsignals : 1));
    w->map_len = w->hdr + page_round(size ? size : 1);
    w->maps = calloc((size_t)R, sizeof(void *));
    w->base.peer = calloc((size_t)R, sizeof(void *));
    w->spin = epx__cfg_long("EPX_SPIN");
    w->yield = epx__cfg_long("EPX_YIELD");
    unsigned id = comm->next_win++;
    char name[96];
    shm_name(name, sizeof(name), comm, id, comm->rank);

    epx_status_t mine = (w->maps && w->base.peer) ? EPX_OK
        : epx__error(EPX_ERR_NOMEM, "shm: out of memory");
    if (mine == EPX_OK)
        mine = shm_space_check(comm, w->map_len);
    if (mine == EPX_OK)
        mine = shm_map(name, w->map_len, 1, &w->maps[comm->rank]);
    if (mine == EPX_OK) {
        w->counted = w->map_len;
        comm->shm_bytes += w->counted;
    }
    epx_status_t st = epx__comm_agree(comm, mine, &bad);
    if (st != EPX_OK)
        goto err_created;

    for (int r = 0; r < R && mine == EPX_OK; r++) {
        if (r == comm->rank || comm->peer_tl[r] != EPX_TL_SHM)
            continue;
        char peer[96];
        shm_name(peer, sizeof(peer), comm, id, r);
        mine = shm_map(peer, w->map_len, 0, &w->maps[r]);
    }
    /* Every peer has mapped (or failed to map) every object: unlink them
     * all, ours and, should a peer have died before unlinking its own,
     * theirs. */
    st = epx__comm_agree(comm, mine, &bad);
    shm_unlink_all(comm, id);
    if (st != EPX_OK)
        goto err_mapped;

    for (int r = 0; r < R; r++)
        if (w->maps[r])
            w->base.peer[r] = (char *)w->maps[r] + w->hdr;
    w->base.local = (char *)w->maps[comm->rank] + w->hdr;
    w->sig = (shm_signal_t *)w->maps[comm->rank];
    EPX_LOG(EPX_LOG_DEBUG, "shm", comm->rank,
            "window %u: %zu bytes (sparse), %d signals, %d peers mapped", id,
            size, nsignals, comm->tl_peers[EPX_TL_SHM]);
    *out = &w->base;
    return EPX_OK;

err_created:
    shm_unlink_all(comm, id);
err_mapped:
    shm_win_free(w);
    if (mine != EPX_OK || bad < 0)   /* ours, or the bootstrap's: said already */
        return mine != EPX_OK ? mine : st;
    return epx__error(st == EPX_ERR_NOMEM ? EPX_ERR_NOMEM : EPX_ERR_PEER,
                      "shm: rank %d could not create or map its window (%s)",
                      bad, epx_status_str(st));
}

static void shm_win_destroy(epx_win_t *win)
{
    if (win)
        shm_win_free((shm_win_t *)win);
}

/* Large puts bypass the cache: the writer never reads the data back and
 * the reader is another core, so fetching the target lines first (what a
 * plain store does) would only waste memory bandwidth. */
#define SHM_NT_MIN 2048
static void copy_stream(void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
    if (len >= SHM_NT_MIN && ((uintptr_t)dst & 15) == 0) {
        __m128i *d = dst;
        const __m128i *s = src;
        size_t n = len / 64;
        for (size_t i = 0; i < n; i++, d += 4, s += 4) {
            __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1),
                    c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
            _mm_stream_si128(d, a);
            _mm_stream_si128(d + 1, b);
            _mm_stream_si128(d + 2, c);
            _mm_stream_si128(d + 3, e);
        }
        memcpy(d, s, len % 64);
        return;
    }
#endif
    memcpy(dst, src, len);
}

/* A bad peer or slot is the caller's bug: refuse it before touching
 * memory (an index past the mappings would write anywhere). */
static epx_status_t bad_index(const epx_win_t *win, const char *op, int peer,
                              int slot)
{
    if (peer < 0 || peer >= win->comm->nranks)
        return epx__error(EPX_ERR_INVALID, "shm: %s to rank %d of %d", op,
                          peer, win->comm->nranks);
    return epx__error(EPX_ERR_INVALID, "shm: %s on signal slot %d of %d", op,
                      slot, win->nsignals);
}
#define SHM_BAD_PEER(win, peer) \
    EPX_UNLIKELY((unsigned)(peer) >= (unsigned)(win)->comm->nranks)
#define SHM_BAD_SLOT(win, slot) \
    EPX_UNLIKELY((unsigned)(slot) >= (unsigned)(win)->nsignals)

static epx_status_t shm_put(epx_win_t *win, int peer, size_t off,
                            const void *src, size_t len)
{
    if (SHM_BAD_PEER(win, peer))
        return bad_index(win, "put", peer, 0);
    if (EPX_UNLIKELY(off > win->size || len > win->size - off))
        return epx__error(EPX_ERR_RANGE,
                          "shm: put of %zu bytes at %zu beyond window of %zu",
                          len, off, win->size);
    copy_stream((char *)win->peer[peer] + off, src, len);
    return EPX_OK;
}

static long futex(void *addr, int op, uint32_t val,
                  const struct timespec *ts)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static epx_status_t shm_signal(epx_win_t *win, int peer, int slot,
                               uint64_t inc)
{
    shm_win_t *w = (shm_win_t *)win;
    if (SHM_BAD_PEER(win, peer) || SHM_BAD_SLOT(win, slot))
        return bad_index(win, "signal", peer, slot);
    shm_signal_t *s = (shm_signal_t *)w->maps[peer] + slot;
#if defined(__x86_64__)
    _mm_sfence();   /* streaming stores of earlier puts before the signal */
#endif
    __atomic_fetch_add(&s->value, inc, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST))
        futex(&s->value, FUTEX_WAKE, INT_MAX, NULL); /* low word on LE */
    return EPX_OK;
}

static epx_status_t shm_wait(epx_win_t *win, int slot, uint64_t value)
{
    shm_win_t *w = (shm_win_t *)win;
    if (SHM_BAD_SLOT(win, slot))
        return bad_index(win, "wait", win->comm->rank, slot);
    shm_signal_t *s = w->sig + slot;
    uint64_t v;
    for (long i = 0; i < w->spin; i++) {
        if ((v = __atomic_load_n(&s->value, __ATOMIC_ACQUIRE)) >= value)
            return EPX_OK;
        epx__cpu_relax();
    }
    for (long i = 0; i < w->yield; i++) {
        if ((v = __atomic_load_n(&s->value, __ATOMIC_ACQUIRE)) >= value)
            return EPX_OK;
        sched_yield();
    }
    double deadline = epx__now() + epx__comm_timeout(win->comm);
    const struct timespec nap = { 0, 50 * 1000 * 1000 };
    for (;;) {
        __atomic_fetch_add(&s->waiters, 1, __ATOMIC_SEQ_CST);
        v = __atomic_load_n(&s->value, __ATOMIC_SEQ_CST);
        if (v < value)
            futex(&s->value, FUTEX_WAIT, (uint32_t)v, &nap);
        __atomic_fetch_sub(&s->waiters, 1, __ATOMIC_SEQ_CST);
        if ((v = __atomic_load_n(&s->value, __ATOMIC_ACQUIRE)) >= value)
            return EPX_OK;
        epx_status_t alive = epx__comm_alive(win->comm);
        if (alive != EPX_OK)
            return alive;
        if (epx__now() > deadline)
            return epx__error(EPX_ERR_TIMEOUT,
                              "rank %d: no signal from peers after %.1f s "
                              "(slot %d at %llu, waiting for %llu)",
                              win->comm->rank, epx__comm_timeout(win->comm),
                              slot, (unsigned long long)v,
                              (unsigned long long)value);
    }
}

/* Orders the puts before it against the ones after it (streaming stores
 * are weakly ordered; plain stores already are in order on x86). */
static epx_status_t shm_flush(epx_win_t *win, int peer)
{
    if (SHM_BAD_PEER(win, peer))
        return bad_index(win, "flush", peer, 0);
#if defined(__x86_64__)
    _mm_sfence();
#else
    __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
    return EPX_OK;
}

static uint64_t shm_count(epx_win_t *win, int slot)
{
    return __atomic_load_n(&((shm_win_t *)win)->sig[slot].value,
                           __ATOMIC_ACQUIRE);
}

const epx_tl_ops_t epx__tl_shm = {
    .name = "shm",
    .win_create = shm_win_create,
    .win_destroy = shm_win_destroy,
    .put = shm_put,
    .signal = shm_signal,
    .wait = shm_wait,
    .flush = shm_flush,
    .count = shm_count,
};

/*
 * moe layer internals: the engine, its window layout, the routing handle.
 *
 * Window of each rank: the protocol's (src/proto/geom.h, the CUDA
 * executor's too), laid out by proto_geom_layout into epx_moe.g, sized
 * for the worst case but sparse, so memory follows the tokens actually
 * received.  The host's words there: the count block of each source and
 * call parity (header PROTO_CNT_*: status, cached, handle's call, layer,
 * placement hash; tokens per destination rank; tokens per unit; the
 * sequence word call + 1, written after the rest so a reader knows the
 * block is this call's and complete), the combine status per source and
 * parity, the completion words `done` (ht_poll.c), its progress record
 * (progress.c), one entry per received token [3+K] (source, return slot,
 * number of local rows, rows), and the rows with their metadata, scales
 * and row scales, and the partials coming back.
 */
#ifndef EPX_MOE_H
#define EPX_MOE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "epx.h"
#include "core/comm.h"
#include "transport/transport.h"
#include "moe/wire.h"
#include "moe/ops.h"
#include "proto/proto.h"

struct gpu_moe;

/* Throughput mode's data phases, by path (the count exchange, checks and
 * call order are shared, dispatch.c and combine.c): flat (rows straight
 * to each destination, moe_flat_path) or hierarchical (once per
 * destination domain, then forwarded: hier*.c, moe_hier_path). */
typedef struct moe_ht_path {
    /* after the count exchange of an uncached dispatch; NULL: nothing */
    epx_status_t (*plan)(epx_moe_t *m, epx_handle_t *h);
    /* the rows, and the signal that they are all written */
    epx_status_t (*send)(epx_moe_t *m, epx_handle_t *h,
                         const epx_dispatch_args_t *a);
    /* the expert outputs (checked); *word: how they were left (MOE_COMB_*) */
    epx_status_t (*combine_send)(epx_moe_t *m, epx_handle_t *h,
                                 const epx_combine_args_t *a, int32_t *word);
    /* every rank's partials are in: the output of combine `call` */
    void (*combine_out)(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out,
                        uint64_t call);
} moe_ht_path_t;
extern const moe_ht_path_t moe_flat_path, moe_hier_path;
epx_status_t moe_flat_send(epx_moe_t *m, epx_handle_t *h,
                           const epx_dispatch_args_t *a);

enum { MOE_SIG_COUNTS = 0, MOE_SIG_DATA = 1, MOE_SIG_COMB = 2, MOE_NSIG = 3 };
enum { MOE_IDLE = 0, MOE_SENT, MOE_RECEIVED, MOE_COMBINING };
enum { MOE_ST_COMB = 0 };
/* Combine status words >= 0 also say how the sender left its outputs. */
enum { MOE_COMB_PUSHED = 0, MOE_COMB_PULL = 1, MOE_COMB_PULL_UNWEIGHTED = 2 };

/* progress.c: this rank's record in its window (MOE_PR_* int64 words):
 * the step it entered last, of which call (numbered from 1: throughput
 * mode's m->calls, low latency's call + 1), and the layer; a timeout
 * names the peers whose record is behind. */
enum { MOE_AT_IDLE = 0, MOE_AT_DISPATCH_SEND, MOE_AT_DISPATCH_RECV,
       MOE_AT_COMBINE_SEND, MOE_AT_COMBINE_RECV, MOE_AT_DONE };
enum { MOE_PR_CALL = 0, MOE_PR_AT = 1, MOE_PR_LAYER = 2, MOE_PR_WORDS = 3 };
_Static_assert(MOE_PR_WORDS * 8 <= PROTO_PROGRESS_BYTES,
               "the progress record fits its region of the window");

struct epx_moe {
    const moe_ops_t *ops;      /* the executor (ops.h) */
    const moe_ht_path_t *path; /* throughput mode: flat or hierarchical */
    struct gpu_moe *gpu;       /* device ranks (src/cuda/gpu.h), else NULL */
    int32_t *st_ecount;        /* device ranks: [E] a dispatch's pairs per
                                  expert, from its per-slot counts */
    epx_comm_t *comm;
    epx_moe_params_t p;
    int R, rank, E, K, H;
    int U;                     /* units a token is routed to: the experts,
                                  or the slots (num_slots > 0) */
    size_t esize, row_bytes;   /* engine dtype: x given, y, partials */
    moe_wire_t fmt;            /* how x travels (wire.h) */
    void *stage_q, *stage_s;   /* one quantized row: data, scales */
    float stage_g;             /* and its NVFP4 row scale */
    int64_t put_dispatch, put_combine;  /* bytes put (statistics) */
    int32_t *u2r;              /* [U] owning rank */
    int32_t *first;            /* [R+1] first unit of each rank */
    /* replicas (num_slots > 0), per layer; phy2log[l*U] < 0: not set */
    int32_t *phy2log;          /* [layers][U] */
    int32_t *rep_off;          /* [layers][E+1] CSR of each expert's slots */
    int32_t *rep;              /* [layers][U] slots, ascending per expert */
    int32_t *pick;             /* [layers][E] local-first slot for this rank */
    int32_t *policy;           /* [layers] */
    uint32_t *place_hash;      /* [layers] agreed in the count exchange */
    int32_t *rank_domain;      /* [R] from the topology (local-first) */
    int32_t *local_exp;        /* [local units] logical expert, for recv */
    /* weight migration (src/balance/migrate.c) */
    void **w_base;             /* [layers] registered weights, or NULL */
    size_t *w_bytes;           /* [layers] bytes per slot */
    epx_win_t *w_stage;        /* staging window: one layer's local slots */
    size_t w_stage_bytes;
    uint64_t w_stage_calls;    /* rebalances done: signal target */
    struct moe_mig *mig;       /* a migration started, not finished */
    int maxdest;               /* min(K, R): destinations per token at most */
    int64_t maxT;
    proto_geom_t g;            /* the window (proto/geom.h); in low latency
                                  its shape, the buffers in ll->off */
    size_t win_bytes;          /* the window: g.total, and the hierarchical
                                  regions after it (hier.c) */
    size_t win_progress;       /* this rank's progress record in it */
    epx_win_t *win;
    uint64_t n_counts, n_data, n_comb;   /* phases done: signal targets */
    uint64_t calls;            /* dispatches started (progress records) */
    unsigned eid;              /* the comm's engine number (progress) */
    int state;
    int broken;                /* a wait failed: peers are out of step */
    epx_handle_t *cur;         /* handle of the call in flight */
    epx_handle_t *spare;       /* a released handle, kept for reuse */
    /* setup-time scratch, reused by every call */
    int32_t *blk;              /* [g.cnt_ints] this rank's count block */
    /* load statistics (stats.c) */
    int layers;                /* num_layers (>= 1) */
    double decay;
    int64_t dispatches, *st_window;     /* [layers][E] */
    double *st_decayed;                 /* [layers][E] */
    int64_t *st_phys;                   /* [layers][U] */
    int64_t *st_gwindow, *st_gphys;     /* global copies (epx_moe_stats) */
    double *st_gdecayed;
    int st_wsize;                       /* window in dispatches, 0: since
                                           the reset */
    int32_t *st_ring;                   /* [layers][st_wsize][E] */
    int64_t *st_lcalls;                 /* [layers] dispatches recorded */
    void *wire;                /* [row_bytes] one row in the engine dtype */
    int32_t *mode;             /* [R] how each rank left its outputs */
    int direct;                /* every peer window is load/store mapped */
    struct moe_ll *ll;         /* low-latency mode (ll.h), else NULL */
    struct moe_hier *hier;     /* EPX_MOE_HIERARCHICAL (hier.h), or NULL */
    epx_handle_t *live;        /* every handle allocated and not freed */
};

struct epx_handle {
    epx_moe_t *moe;            /* NULL once the engine is destroyed */
    epx_handle_t *live_prev, *live_next;   /* the engine's handles */
    int64_t T;
    void *stream, *cstream;    /* device ranks: dispatch's, combine's */
    /* send side: the routing layout (proto.h proto_walk_token) and its
     * bases from the count matrix */
    int32_t *idx;              /* [T*K] units, -1 = none */
    int32_t *epos;             /* [T*K] position among our rows to the
                                  unit (low latency: ll_call_t.pos) */
    int32_t *ndest;            /* [T] */
    int32_t *dest;             /* [T*maxdest] ascending ranks, then -1 */
    int32_t *pos;              /* [T*maxdest] position among our tokens
                                  to that rank */
    int64_t *sendoff;          /* [R] our tokens to lower ranks: return
                                  slots (proto_ret_slot) */
    uint64_t hash;             /* of idx, to check cached reuse */
    int64_t *entbase;          /* [R] our first entry at each destination
                                  (proto_dest_base) */
    int64_t *ebase;            /* [U] our first expert-major row per unit
                                  (proto_expert_base) */
    int layer;
    uint32_t place;            /* the layer's placement hash at dispatch */
    /* receive side */
    int64_t nent, nrows;
    int64_t *counts, *offsets; /* [nlocal] */
    int dispatched;            /* a dispatch completed with this routing */
    uint64_t call;             /* count exchange of its (uncached) dispatch
                                  (device ranks: its latest call) */
    int gpu_lay;               /* device ranks: its layout + 1 (gpu.h), 0:
                                  none */
    int gpu_counted;           /* device ranks: the call's statistics taken */
    int32_t *ecount;           /* [E] this rank's tokens per logical expert */
    int32_t *ucount;           /* [U] this rank's tokens per unit (slot) */
    struct ll_call *ll;        /* low-latency call (ll.h), else NULL */
    /* readiness (ht_poll.c): the sources that feed each local unit, CSR */
    int32_t *feed_off;         /* [nlocal + 1] */
    int32_t *feed_src;         /* [nlocal * R] ascending per unit */
    struct moe_hier_h *hier_h; /* hierarchical forwarding bases (hier.h) */
};

static inline int moe_nlocal(const epx_moe_t *m, int r)
{
    return m->first[r + 1] - m->first[r];
}
static inline char *moe_local(const epx_moe_t *m, size_t off)
{
    return (char *)m->win->local + off;
}
static inline int32_t *moe_blk(const epx_moe_t *m, uint64_t call, int src)
{
    return (int32_t *)moe_local(m, m->g.off_cnt) +
           ((size_t)(call & 1) * (size_t)m->R + (size_t)src) * (size_t)m->g.cnt_ints;
}
static inline size_t moe_status_off(const epx_moe_t *m, int phase,
                                    uint64_t call, int src)
{
    return m->g.off_status +
           sizeof(int32_t) * (((size_t)phase * 2 + (call & 1)) * (size_t)m->R +
                              (size_t)src);
}

/* A put counted in the engine's statistics (*counter += len). */
static inline epx_status_t moe_put(epx_moe_t *m, int64_t *counter, int peer,
                                   size_t off, const void *src, size_t len)
{
    *counter += (int64_t)len;
    return epx__win_put(m->win, peer, off, src, len);
}

/* Layer of a dispatch (0 for callers built against version 1 args). */
static inline int moe_args_layer(const epx_dispatch_args_t *a)
{
    return a->struct_size >= offsetof(epx_dispatch_args_t, layer) + sizeof(int)
        ? a->layer : 0;
}

/* The caller's NVFP4 tensor scale (version 3), 0 when not given. */
static inline float moe_args_gscale(const epx_dispatch_args_t *a)
{
    return a->struct_size >= offsetof(epx_dispatch_args_t, x_global_scale) +
                                 sizeof(float)
        ? a->x_global_scale : 0.0f;
}

/* The caller's lost mask (version 5), NULL when not given. */
static inline uint8_t *moe_args_lost(const epx_dispatch_args_t *a)
{
    return a->struct_size >= offsetof(epx_dispatch_args_t, lost) +
                                 sizeof(uint8_t *) && a->version >= 5
        ? a->lost : NULL;
}

/* A handle's units as the protocol core reads ids (h->idx, routed). */
static inline proto_ids_t moe_units(const epx_moe_t *m, const epx_handle_t *h)
{
    proto_ids_t u = { h->idx, 0, m->K, m->U, { 0, NULL, NULL, NULL } };
    return u;
}

/* This rank's count words of the call (proto.h's cnt: [R][cnt_ints] from
 * the first source's first count). */
static inline const int32_t *moe_cnt(const epx_moe_t *m, uint64_t call)
{
    return (const int32_t *)moe_local(m, m->g.off_cnt) +
           proto_cnt_index(&m->g, (int)(call & 1), 0);
}

void moe_progress(epx_moe_t *m, int at, int layer, uint64_t call);
/* st, or for EPX_ERR_TIMEOUT the same status with a message that names
 * the ranks behind this one and where each is (and logs them all). */
epx_status_t moe_diagnose(epx_moe_t *m, epx_status_t st, const char *what);
/* layout.c */
epx_status_t moe_check_tensor(const epx_tensor_t *t, const char *what,
                              const char *name, unsigned dtypes, int64_t rows,
                              int64_t cols);
epx_status_t moe_check_args(epx_moe_t *m, const epx_dispatch_args_t *a);
void moe_layout_sendoff(const epx_moe_t *m, epx_handle_t *h,
                        const int32_t *per_dest);
epx_status_t moe_layout(epx_moe_t *m, const epx_dispatch_args_t *a,
                        epx_handle_t *h);
uint64_t moe_hash_idx(const epx_moe_t *m, const epx_dispatch_args_t *a);
/* args->lost (if given) from the ids and the layer's placement. */
void moe_lost_write(const epx_moe_t *m, const epx_dispatch_args_t *a);
epx_handle_t *moe_handle_new(epx_moe_t *m, int64_t T);
void moe_handle_free(epx_handle_t *h);
/* Engine destruction: the handles the caller still holds forget it, so
 * releasing them later only frees them. */
void moe_handles_orphan(epx_moe_t *m);
/* h belongs to m: on its list of live handles (orphaned at destroy). */
void moe_handle_link(epx_moe_t *m, epx_handle_t *h);
/* engine.c: epx_moe_set_placement without its state check */
epx_status_t moe_placement_install(epx_moe_t *m, int layer,
                                   const int32_t *phy2log,
                                   epx_replica_policy_t policy);
/* The same, the engine's (host) tables only: a device rank's migration
 * queues their upload itself (gpu_mig_land). */
epx_status_t moe_placement_tables(epx_moe_t *m, int layer,
                                  const int32_t *phy2log,
                                  epx_replica_policy_t policy);
/* migrate.c: a pending migration, freed with the engine */
void moe_mig_free(epx_moe_t *m);
/* stats.c */
epx_status_t moe_stats_init(epx_moe_t *m);
void moe_stats_free(epx_moe_t *m);
void moe_stats_record(epx_moe_t *m, int layer, const int32_t *ecount,
                      const int32_t *ucount);
/* dispatch.c / combine.c */
/* Fill *out (the caller's struct_size honoured) with what h delivers:
 * the window's arrays; marks the expert-major padding rows. */
void moe_recv_describe(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out);
epx_status_t moe_first_error(epx_moe_t *m, int phase, uint64_t call,
                             const char *what);
epx_status_t moe_check_usable(const epx_moe_t *m, const char *what);
/* combine.c: throughput mode's combine (moe_ht_ops) */
epx_status_t moe_ht_combine_send(epx_moe_t *m, epx_handle_t *h,
                                 const epx_combine_args_t *a);
epx_status_t moe_ht_combine_recv(epx_moe_t *m, epx_handle_t *h,
                                 epx_tensor_t *out);
/* gpu_ops.c: device ranks (moe_gpu_ops); fills m from the GPU engine. */
epx_status_t moe_gpu_create(epx_moe_t *m, const epx_moe_params_t *params);
/* Device ranks in low latency: the load statistics of the calls the
 * device recorded since the last read into m's (keep), or dropped (a
 * reset); synchronises with the engine's stream.  EPX_OK, nothing to do,
 * elsewhere. */
epx_status_t moe_gpu_stats_sync(epx_moe_t *m, int keep);
/* reduce.c (arithmetic in proto.h), shared by every combine: one
 * destination rank's contribution to a token, the partial of an entry
 * rounded to the engine dtype, and a token's sum over its sources, whole
 * (moe_reduce_token) or a stretch at a time (moe_reduce_add, then
 * moe_reduce_out). */
typedef struct comb_src {
    const char *row;           /* the row; with ent: the peer's row base */
    const int32_t *ent;        /* NULL, or the peer's entry */
    const float *w;            /* with ent: the peer's weights, NULL = 1 */
} comb_src_t;
void moe_reduce_partial(const epx_moe_t *m, const char *rows,
                        const int32_t *ent, const float *w, void *dst);
void moe_reduce_token(const epx_moe_t *m, const comb_src_t *src, int nd,
                      char *out, epx_dtype_t out_dt);
void moe_reduce_add(const epx_moe_t *m, const comb_src_t *src, int nd,
                    int first, void *acc);
void moe_reduce_out(const epx_moe_t *m, const void *acc, int nd, char *out,
                    epx_dtype_t out_dt);
/* EPX_ERR_INVALID when the wire is quantized and y (checked against the
 * engine's rows) overlaps the window: the outputs need their own buffer. */
epx_status_t moe_check_y_apart(const epx_moe_t *m, const epx_tensor_t *y);
/* combine_recv's output: [T, H] BF16 or FP32, checked before anything is
 * consumed so the call can be retried. */
epx_status_t moe_check_out(const epx_moe_t *m, const epx_handle_t *h,
                           const epx_tensor_t *out);

/* ht_poll.c: throughput-mode readiness.  plan: after the count exchange
 * of an uncached dispatch, record which sources feed each local unit;
 * done_off: where source `src` writes its completion word. */
epx_status_t moe_ht_poll_plan(epx_moe_t *m, epx_handle_t *h);
void moe_ht_poll_free(epx_handle_t *h);
epx_status_t moe_ht_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                         uint8_t *ready, int *num_ready);
static inline size_t moe_done_off(const epx_moe_t *m, int src)
{
    return m->g.off_done + sizeof(int32_t) * (size_t)src;
}
/* Test hook: when set, epx_dispatch_send calls it between the count
 * exchange and the first row (a test holds one source back there to
 * check readiness).  NULL in normal use. */
extern void (*moe_hook_before_data)(epx_moe_t *m);

#endif /* EPX_MOE_H */

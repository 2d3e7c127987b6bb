/*
 * epx-bench internals: options, the workload every rank can reconstruct
 * (routing of all ranks, inputs of any (rank, token)), the per-rank result
 * blocks that rank 0 reports from, and the three measured implementations.
 */
#ifndef EPX_BENCH_H
#define EPX_BENCH_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "config.h"
#include "epx.h"
#include "npy.h"

#if defined(__GNUC__)
#define BENCH_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define BENCH_PRINTF(a, b)
#endif

enum { BENCH_IMPL_EPX = 0, BENCH_IMPL_MPI, BENCH_IMPL_MEMCPY, BENCH_NIMPL };
enum { BENCH_PHASE_DISPATCH = 0, BENCH_PHASE_COMBINE, BENCH_NPHASE };
extern const char *const bench_impl_names[BENCH_NIMPL];

typedef enum { BENCH_LAUNCH_AUTO, BENCH_LAUNCH_FORK, BENCH_LAUNCH_MPIRUN }
    bench_launcher_t;
typedef enum { BENCH_ROUTE_UNIFORM, BENCH_ROUTE_ZIPF } bench_routing_t;

#define BENCH_DEFAULT_RANKS 8
#define BENCH_DEFAULT_TOKENS 512
#define BENCH_MAX_RANKS 4096
#define BENCH_ERR_LEN 512
#define BENCH_MSG_LEN 1024
#define BENCH_NTL 2            /* transports a pair can get: shm, ucx */
#define BENCH_TL_LEN 256

typedef struct bench_opts {
    int ranks;                 /* 0 until known */
    int ranks_given;
    int64_t *tokens;           /* --tokens: one value, or one per rank */
    int ntokens;
    int hidden, hidden_given;
    int experts;
    int topk, topk_given;
    bench_routing_t routing;
    double zipf_s;
    char routing_str[32];
    double drop;               /* fraction of top-k slots set to -1 */
    uint64_t seed;
    int iters, warmup;
    epx_layout_t layout;
    int layout_given;
    int align;                 /* expert-major segment alignment */
    epx_mode_t mode;           /* --mode ht|ll */
    int ll_capacity;           /* --ll-capacity (0: the largest T) */
    int ll_drop;               /* --ll-drop: EPX_MOE_LL_DROP */
    int ll_buffers;            /* --ll-buffers (0: the library's 2) */
    int cuda_graph;            /* --cuda-graph: time graph replays (GPU LL) */
    int device_timing;         /* --device-timing: CUDA events, one timeline */
    int sms;                   /* --sms: device ranks' SMs (0: the engine's) */
    int64_t *sweep;            /* --tokens-sweep: token counts, one run each */
    int nsweep;
    struct bench_summary *summary; /* filled by bench_report when set */
    epx_dtype_t dtype;
    epx_wire_t wire;           /* --dtype fp8 ...: dtype BF16, quantized */
    unsigned impl_mask;        /* 1 << BENCH_IMPL_* */
    int json;
    int verify_all;
    int inplace;               /* expert outputs overwrite recv x */
    const char *trace_dir;
    const char *dump_dir;
    bench_launcher_t launcher;
    int routing_given;
    /* --balance: two runs of --iters steps, without and with replicas
     * re-planned from the global load statistics (run_balance.c) */
    int balance;
    int replan_every;
    int slots;                 /* 0: experts + experts/8, to a rank multiple */
    epx_balance_policy_t policy;
    int groups, domains;
    /* --drift: the online loop on a drifting load trace (drift.c) */
    int drift;
    int layers;                /* --layers (4) */
    int window;                /* --window: steps of load the plan sees
                                  (0: --replan-every) */
    int64_t max_moves;         /* --max-moves: slots per re-plan (-1: any) */
    int64_t bytes_per_slot;    /* --bytes-per-slot */
    const char *load_trace;    /* --load-trace: a recorded trace */
    const char *plot;          /* --plot: SVG through gnuplot */
    /* --overlap: two micro-batches through two engines, a GEMM expert
     * (run_overlap.c, expert_ffn.c) */
    int overlap;
    int overlap_thread;        /* --overlap-thread: the FFN on a compute
                                  thread per rank */
    int pin;                   /* --pin: the overlap threads on fixed CPUs */
    int ffn;                   /* expert intermediate size (0: 2H/7) */
    int blas_threads;
    int hierarchical;          /* --hierarchical: EPX_MOE_HIERARCHICAL */
    int device;                /* --device: BENCH_DEVICE_* */
    const char *transport;     /* --transport: EPX_TRANSPORTS, or NULL */
    /* --kill-rank R --at-iter N: the elastic run (elastic.c) */
    int kill_rank;             /* -1: none */
    int at_iter;
    int dtype_given, mode_given;
} bench_opts_t;

/* What a sweep keeps of one run (bench_report fills it). */
typedef struct bench_summary {
    int ran;                   /* epx ran */
    double us[3][2];           /* dispatch, combine, total: p50, p99 */
    int64_t checked, mismatches, dropped;
    int failed;
} bench_summary_t;

enum { BENCH_DEVICE_HOST = 0, BENCH_DEVICE_CUDA = 1 };
/* Exit status of --device cuda where there is no GPU (or no CUDA build). */
enum { BENCH_EXIT_NO_GPU = 3 };
/* load_trace.c: --load-trace's file, steps x L x E loads into *out (free
 * it); 0, or -1 after a message on stderr. */
int bench_load_trace_read(const char *path, int L, int E, double **out,
                          int *steps);
/* elastic.c: the whole --kill-rank run; returns the exit status. */
int bench_main_elastic(bench_opts_t *o);
/* drift.c: the whole --drift run; returns the exit status. */
int bench_drift_main(const bench_opts_t *o);
/* cuda_bench.c: the whole --device cuda run; returns the exit status. */
int bench_cuda_main(const bench_opts_t *o);
/* report.c: a JSON string (escaped) and a number (null if not finite). */
void bench_json_str(FILE *f, const char *s);
void bench_json_num(FILE *f, double v);

/* stats.c: order statistics over iterations, shared by the reports. */
enum { BENCH_Q_MIN, BENCH_Q_P10, BENCH_Q_P50, BENCH_Q_P90, BENCH_Q_P99,
       BENCH_Q_MAX, BENCH_NQ };
extern const char *const bench_q_names[BENCH_NQ];
int bench_cmp_double(const void *a, const void *b);
/* Sort v[n] (n > 0) in place; its median / quantiles (interpolated). */
double bench_median(double *v, int n);
void bench_quantiles(double *v, int n, double q[BENCH_NQ]);
/* ,"NAME_us": p50, "NAME_us_min": ... of q times scale (to us). */
void bench_json_quantiles(FILE *f, const char *name, const double q[BENCH_NQ],
                          double scale);
/* ,"verified": ..., "checked": ..., "mismatches": ... */
void bench_json_verified(FILE *f, int64_t checked, int64_t mismatches);

/* options.c */
enum { BENCH_OPTS_RUN = 0, BENCH_OPTS_EXIT_OK = 1, BENCH_OPTS_EXIT_ERR = 2 };
int bench_opts_parse(int argc, char **argv, bench_opts_t *o);
void bench_opts_free(bench_opts_t *o);
const char *bench_dtype_name(epx_dtype_t dt);
const char *bench_layout_name(epx_layout_t l);

/*
 * What every rank knows about the exchange: the routing of every rank, and
 * how to produce the input row of any (rank, token).  Built identically on
 * every rank (MPI) or once before the ranks fork.
 */
typedef struct bench_workload {
    int nranks, hidden, experts, topk;
    epx_dtype_t dtype;
    size_t dsize;
    epx_wire_t wire;
    uint64_t seed;
    int64_t *T;                /* [nranks] tokens per rank */
    int64_t max_T;
    int32_t **idx;             /* [nranks][T*K] global expert, -1 = none */
    float **w;                 /* [nranks][T*K] */
    int idx64;                 /* routing came as int64: dispatch passes it so */
    int *expert_rank;          /* [experts] placement (contiguous) */
    int64_t *rows_sent;        /* [nranks] (token, destination rank) pairs */
    bench_npy_t *trace_x;      /* [nranks] mapped x.npy (data NULL: generated) */
} bench_workload_t;

/* workload.c */
int bench_workload_build(const bench_opts_t *o, int nranks,
                         bench_workload_t *wl, char *err, size_t errlen);
void bench_workload_free(bench_workload_t *wl);
/* Ranks in a trace directory (rank0, rank1, ... present); 0 if none. */
int bench_trace_count_ranks(const char *dir);
/* Bytes rank r sends in dispatch (and receives back in combine). */
double bench_rank_bytes(const bench_workload_t *wl, int r);

/* routing.c: fill wl->idx / wl->w from --routing for every rank */
int bench_routing_generate(const bench_opts_t *o, bench_workload_t *wl,
                           char *err, size_t errlen);
uint64_t bench_mix(uint64_t a, uint64_t b, uint64_t c);
uint64_t bench_rng_next(uint64_t *state);

/* trace.c */
int bench_trace_load(const bench_opts_t *o, bench_workload_t *wl, char *err,
                     size_t errlen);

/* The result block each rank publishes; rank 0 (or the forking parent)
 * reads all of them.  `times` is [BENCH_NIMPL][BENCH_NPHASE][iters]. */
typedef struct bench_result {
    int32_t ran[BENCH_NIMPL];
    int32_t failed;            /* the rank hit an error (message in msg[0]) */
    int64_t rows_sent;
    int64_t checked[BENCH_NIMPL];      /* rows + tokens verified */
    int64_t put_bytes[BENCH_NPHASE];   /* epx: bytes the rank put, per
                                          iteration (engine statistics) */
    int64_t mismatches[BENCH_NIMPL];
    int64_t dropped;           /* epx, low latency: rows dropped at capacity
                                  over all iterations (not verified) */
    int64_t skipped;           /* epx iterations due for verification that
                                  were not verified: they dropped rows */
    char msg[BENCH_NIMPL][BENCH_MSG_LEN];
    /* Bytes of token rows this rank sends to ranks of other domains per
     * epx iteration (cross_known: domains were looked at): flat
     * (one row per remote destination rank) and hierarchical (one per
     * remote destination domain), from the routing; measured by a
     * hierarchical engine (dispatch rows, combine fp32 accumulators). */
    int32_t cross_known, num_domains;
    int64_t cross_flat, cross_hier, cross_meas_dispatch, cross_meas_combine;
    /* The backend of each of this rank's peers (self included): how many
     * per backend, and "shm to 0-3, ucx to 4-7". */
    int32_t tl_peers[BENCH_NTL];
    char tl_summary[BENCH_TL_LEN];
    double times[];
} bench_result_t;

/* --balance: the two runs use the time rows of impl 0 (without balancer)
 * and 1 (with), and ran/checked/mismatches/msg of the same index; each
 * rank's expert load of each step follows the times (bench_result_load). */
enum { BENCH_BAL_OFF = 0, BENCH_BAL_ON = 1, BENCH_NBAL };
/* --overlap: step times of communication alone (impl 0, phase 0), expert
 * compute alone (impl 0, phase 1) and both overlapped (impl 1, phase 0);
 * ran/checked/mismatches/msg of index 0. */
/* --overlap: the three runs alternate in blocks of this many steps. */
#define BENCH_OV_BLOCK 4
#define BENCH_OV_COMM(r, n) bench_result_times(r, n, 0, BENCH_PHASE_DISPATCH)
#define BENCH_OV_COMP(r, n) bench_result_times(r, n, 0, BENCH_PHASE_COMBINE)
#define BENCH_OV_BOTH(r, n) bench_result_times(r, n, 1, BENCH_PHASE_DISPATCH)
/* --overlap-thread: the FFN jobs' own time in each overlapped step (impl
 * 1, phase 1), to compare with compute alone */
#define BENCH_OV_FFN(r, n) bench_result_times(r, n, 1, BENCH_PHASE_COMBINE)
/* ... and the main thread's time in each overlapped step less its waits
 * for the FFN (impl 2, phase 0): communication beside the FFN */
#define BENCH_OV_COMMIN(r, n) bench_result_times(r, n, 2, BENCH_PHASE_DISPATCH)

size_t bench_result_size(int iters);
/* [iters] (token, expert) pairs this rank received in each step of a
 * --balance run. */
double *bench_result_load(bench_result_t *r, int iters, int run);
bench_result_t *bench_result_at(void *base, int rank, int iters);
double *bench_result_times(bench_result_t *r, int iters, int impl, int phase);

/* One rank's view while it runs. */
typedef struct bench_ctx {
    const bench_opts_t *o;
    const bench_workload_t *wl;
    int rank, nranks;
    int under_mpi;             /* MPI_COMM_WORLD is this job */
    epx_comm_t *comm;
    void *x;                   /* own [T,H] inputs, engine dtype */
    int first_local, num_local;
    bench_result_t *res;
    int verbose;               /* rank 0: progress on stderr */
} bench_ctx_t;

/* rank.c: everything one rank does; 0 on success (mismatches included). */
/* The routing's cross-domain bytes into ctx->res (collective: the
 * communicator's topology); when --hierarchical or EPX_TOPO_FILE. */
int bench_cross_domain(bench_ctx_t *ctx);
/* Engine parameters of the workload and options (no slots, one layer). */
void bench_moe_params(const bench_ctx_t *ctx, epx_moe_params_t *mp);
int bench_rank_main(bench_ctx_t *ctx);
void bench_progress(const bench_ctx_t *ctx, const char *fmt, ...)
    BENCH_PRINTF(2, 3);
/* Print an API failure; returns -1. */
int bench_api_fail(const bench_ctx_t *ctx, const char *call, epx_status_t st);
/* Is iteration `it` (0-based, warm-up included) one whose results are
 * verified? */
int bench_verify_iter(const bench_ctx_t *ctx, int it);

/* expert.c: inputs and the synthetic expert y = x * (1 + e/E) */
void bench_x_row(const bench_workload_t *wl, int rank, int64_t token,
                 void *row);
float bench_expert_scale(const bench_workload_t *wl, int expert);
/* Token-major: one row per received token = sum over its local experts of
 * w * x * scale, fp32, rounded once.  Expert-major: x * scale per row. */
void bench_expert_compute(const bench_ctx_t *ctx, const epx_recv_t *recv,
                          epx_layout_t layout, void *y, float *acc);

/* verify.c */
typedef struct bench_check {
    int64_t checked, mismatches;
    char *msg;                 /* first few mismatches, for the report */
    size_t msglen;
} bench_check_t;
void bench_check_fail(bench_check_t *c, const char *fmt, ...)
    BENCH_PRINTF(2, 3);
void bench_verify_recv(const bench_ctx_t *ctx, const epx_recv_t *recv,
                       epx_layout_t layout, const char *impl,
                       bench_check_t *c);
void bench_verify_out(const bench_ctx_t *ctx, const void *out,
                      const char *impl, bench_check_t *c);
void bench_verify_recv_replicas(const bench_ctx_t *ctx,
                                const epx_recv_t *recv, epx_layout_t layout,
                                const char *impl, bench_check_t *c);
double bench_tolerance_unit(epx_dtype_t dt, int topk);

/* The three implementations; each records times into ctx->res. */
int bench_run_epx(bench_ctx_t *ctx, epx_moe_t *moe);
int bench_run_memcpy(bench_ctx_t *ctx);
/* run_balance.c: both --balance runs */
int bench_run_balance(bench_ctx_t *ctx);
int bench_balance_slots(const bench_opts_t *o, int nranks);
/* One layer of E experts in S slots on R ranks, with the options'
 * groups, domains and policy. */
epx_balance_params_t bench_balance_params(const bench_opts_t *o, int E, int S,
                                          int R);
/* run_overlap.c: the three --overlap runs */
int bench_run_overlap(bench_ctx_t *ctx);
/* expert_ffn.c: a DeepSeek-style expert FFN per local expert on the
 * received rows, y = (silu(x W1) * (x W3)) W2 in fp32 through OpenBLAS
 * sgemm; the outputs stay in scratch (combine takes the synthetic
 * expert's, which the bench can verify). */
typedef struct bench_ffn bench_ffn_t;
int bench_ffn_available(void);
bench_ffn_t *bench_ffn_new(const bench_ctx_t *ctx, int nlocal);
void bench_ffn_free(bench_ffn_t *f);
/* Local expert j on the rows recv describes; returns rows processed. */
int64_t bench_ffn_expert(bench_ffn_t *f, const epx_recv_t *recv,
                         epx_layout_t layout, int j);
int bench_ffn_size(const bench_opts_t *o);
/* report_overlap.c */
int bench_report_overlap(const bench_opts_t *o, const bench_workload_t *wl,
                         void *results, const char *launcher);
#ifdef EPX_HAVE_MPI
int bench_run_mpi(bench_ctx_t *ctx);
int bench_main_mpi(bench_opts_t *o, int *argc, char ***argv);
#endif

/* wire.c: the quantized formats as the bench sees them, written from
 * epx.h and src/moe/README.md (independent of the library's codecs). */
typedef struct bench_wire {
    epx_wire_t wire;
    int block;                 /* 0: native */
    int64_t nblocks;
    size_t data_bytes, scale_bytes, global_bytes;
} bench_wire_t;
epx_wire_t bench_wire_parse(const char *name);   /* NATIVE if unknown */
const char *bench_wire_name(epx_wire_t wire);
void bench_wire_shape(epx_wire_t wire, int H, size_t dsize, bench_wire_t *w);
/* Row i of a received quantized x as floats. */
void bench_wire_dequant(const bench_wire_t *w, const epx_recv_t *recv,
                        int64_t i, int H, float *out);
/* Largest error the format may make on element h of a bf16 row x
 * (README's bounds, from the row's own block maxima).  bench_wire_maxima
 * fills bmax[w->nblocks] with each block's largest |x| and returns the
 * row's (rmax), once per row: recomputed per element, the check of a
 * 4096-token fp8 run cost minutes. */
double bench_wire_maxima(const bench_wire_t *w, const float *x, int H,
                         double *bmax);
double bench_wire_bound(const bench_wire_t *w, const double *bmax,
                        const float *x, int h, double rmax);

/* dump.c */
/* src_counts: low latency, [nlocal][nranks] rows per (expert, source)
 * (recv_counts_per_source.npy), else NULL. */
int bench_dump_rank(const bench_ctx_t *ctx, const void *out,
                    const int64_t *recv_counts, int nlocal,
                    const int64_t *src_counts, char *err, size_t errlen);
/* Quantized runs: the received x, its scales and row scales as bytes /
 * float32 (recv_x.npy, recv_scales.npy, recv_global_scale.npy). */
int bench_dump_recv(const bench_ctx_t *ctx, const epx_recv_t *recv, char *err,
                    size_t errlen);

/* precheck.c: before any rank starts, with a one-line message each:
 * the EPX_* settings; the workload, the balancer's parameters and the
 * output paths the options describe (resolves o->ranks).  0 or -1. */
int bench_precheck_env(void);
int bench_precheck(bench_opts_t *o);

/* launch.c */
int bench_main_fork(bench_opts_t *o);
int bench_main_sweep(bench_opts_t *o);
/* auto/mpirun launcher outside mpirun: run mpirun on ourselves, its
 * stdout passed on through this process; 0 with its exit status in *rc,
 * or -1 if it could not be started (the caller falls back or fails). */
int bench_run_mpirun(const bench_opts_t *o, int argc, char **argv, int *rc);
int bench_under_mpirun(void);
/* Resolve the rank count before launching (options, trace, default). */
int bench_resolve_ranks(bench_opts_t *o, int world, char *err, size_t errlen);

/* report.c: from all ranks' result blocks; returns the exit code
 * (0 verified, 1 mismatch or failure). */
int bench_report(const bench_opts_t *o, const bench_workload_t *wl,
                 void *results, const char *launcher, const char *mpi_skip);
/* report.c: each rank's transport per peer (bench_result_t.tl_*), as
 * text lines and as the JSON member "transports" (with its comma). */
void bench_transport_print(FILE *f, void *results, int iters, int nranks);
void bench_transport_json(FILE *f, void *results, int iters, int nranks);
/* report_balance.c: the --balance report */
int bench_report_balance(const bench_opts_t *o, const bench_workload_t *wl,
                         void *results, const char *launcher);

#endif /* EPX_BENCH_H */

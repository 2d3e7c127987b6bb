/* Command line of epx-bench: parsing, --help, --list-settings. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"

const char *const bench_impl_names[BENCH_NIMPL] = { "epx", "mpi",
                                                    "memcpy-limit" };

static const char bench_usage[] =
"Usage: epx-bench [options]\n"
"\n"
"Measures MoE dispatch + combine over N local ranks, three ways in one run:\n"
"  epx           epx_dispatch_send/recv, expert compute (not timed),\n"
"                epx_combine_send/recv\n"
"  mpi           the same exchange written with MPI: pack tokens per rank,\n"
"                MPI_Alltoall of counts, MPI_Alltoallv of tokens and routing\n"
"                metadata, unpack; back with MPI_Alltoallv of the results and\n"
"                a reduction at the source (needs the mpirun launcher);\n"
"                always bf16/fp32 rows, also under a quantized --dtype\n"
"  memcpy-limit  every rank memcpy's, concurrently, the bytes it moves in\n"
"                each phase (private buffers): the host's copy-bandwidth limit;\n"
"                a quantized --dtype's wire rows in dispatch\n"
"\n"
"Workload (defaults follow DeepSeek-V3):\n"
"  --ranks N             ranks (default 8; under mpirun: the job size)\n"
"  --tokens T[,T1,...]   tokens per rank, one value or one per rank (512)\n"
"  --hidden H            elements per token (7168)\n"
"  --experts E           experts over all ranks (256)\n"
"  --topk K              experts per token (8)\n"
"  --routing uniform|zipf:S  K distinct experts per token, uniformly or with\n"
"                        popularity ~ 1/rank^S over a seeded permutation of\n"
"                        the experts, without replacement (uniform)\n"
"  --drop F              fraction of top-k slots set to -1 (no expert) (0)\n"
"  --seed S              seed of routing, weights and inputs (1)\n"
"  --dtype T             x on the wire (bf16): bf16, fp32, or bf16 x\n"
"                        quantized by dispatch: fp8 (e4m3, fp32 scale / 128),\n"
"                        fp8-ue8m0 (UE8M0 scale / 128), mxfp8 (UE8M0 / 32),\n"
"                        nvfp4 (e2m1, e4m3 scale / 16, fp32 per token);\n"
"                        quantized x is received into its own buffers, so\n"
"                        expert outputs never go in place\n"
"  --layout token|expert token-major or expert-major receive layout (token)\n"
"  --align A             expert-major segment alignment in rows (128)\n"
"  --device host|cuda    host (default): the host executor and the rows\n"
"                        below; cuda: the GPU executor (bench/cuda_bench.c:\n"
"                        ranks as threads sharing GPU 0, the NCCL backend\n"
"                        with a GPU per rank, the device-to-device copy\n"
"                        limit; --json too); without a GPU it says so and\n"
"                        exits 3\n"
"  --mode ht|ll          throughput (count exchange, compact receive) or\n"
"                        low-latency (fixed (expert, source) ranges, no count\n"
"                        exchange; expert-major); default ht\n"
"  --ll-capacity C       low latency: rows per (expert, source) (0: the\n"
"                        largest --tokens)\n"
"  --ll-drop             low latency: drop rows beyond capacity (counted)\n"
"                        instead of failing with EPX_ERR_RANGE\n"
"  --ll-buffers B        low latency: buffers (calls in flight), 0 or 2..64\n"
"                        (0: the library's default, 2)\n"
"  --cuda-graph          with --device cuda --mode ll: after the warm-up,\n"
"                        each rank captures its dispatch and its combine\n"
"                        into two CUDA graphs, and the timed iterations\n"
"                        replay them (as decode runs low latency); throughput\n"
"                        mode cannot be captured (one host synchronisation\n"
"                        per dispatch)\n"
"  --device-timing       with --device cuda: time each phase by CUDA events on\n"
"                        each rank's stream, on one device timeline (span of\n"
"                        all ranks, per-rank time, start skew), add a copy\n"
"                        limited to the engine's SMs and a 1-token run (the\n"
"                        fixed cost; data = time - that floor)\n"
"  --sms N               with --device cuda: SMs (blocks) per device rank and\n"
"                        for the SM-limited copy (default: the device's SMs /\n"
"                        ranks on it, the engine's default)\n"
"  --tokens-sweep T1,T2,...  one run per token count (tokens per rank, fork\n"
"                        launcher, no mpi row); each run's table on stderr,\n"
"                        then per count the p50 and p99 of dispatch, combine\n"
"                        and total (or a JSON array with --json)\n"
"  --trace DIR           replay DIR/rank<r>/topk_idx.npy ([T,K] int32/int64),\n"
"                        topk_weights.npy ([T,K] float32) and optionally\n"
"                        x.npy ([T,H] float32, rounded to bf16); T may differ\n"
"                        per rank; give the --experts the trace was made for\n"
"  --dump DIR            write DIR/rank<r>/{x,topk_idx,topk_weights,out,\n"
"                        recv_counts}.npy (a dump replays with --trace)\n"
"\n"
"Run:\n"
"  --iters N             timed iterations (20)\n"
"  --warmup N            untimed iterations first (3)\n"
"  --impl LIST           comma-separated subset of epx,mpi,memcpy-limit (all)\n"
"  --launcher auto|fork|mpirun\n"
"                        auto: re-run under mpirun when MPI is built (mpi\n"
"                        baseline included), else fork; fork: built-in local\n"
"                        launcher, no mpi baseline (auto)\n"
"  --inplace, --no-inplace\n"
"                        epx: the expert writes its outputs over the received\n"
"                        x, as epx_combine_args_t allows; on shared memory the\n"
"                        sources then read them in place, saving a copy; or\n"
"                        into a separate buffer (default: in place)\n"
"  --transport auto|shm|ucx\n"
"                        sets EPX_TRANSPORTS for the ranks: auto (shm inside\n"
"                        a host or EPX_TOPO_FILE domain, ucx across), or every\n"
"                        pair over one backend (ucx: the network path, also\n"
"                        between ranks of one host); the report gives each\n"
"                        rank's choice (default: EPX_TRANSPORTS as set)\n"
"  --verify-all          verify every iteration (default: the first and the\n"
"                        last)\n"
"  --json                one JSON object on stdout (table goes to stderr)\n"
"  --list-settings [text|markdown]  the EPX_* environment settings\n"
"  -h, --help            this text\n"
"\n"
"Load balancing (--balance: no mpi or memcpy-limit rows):\n"
"  --balance             two epx runs of --steps steps on the same routing\n"
"                        (default --routing zipf:0.6): without the balancer\n"
"                        (contiguous experts), and with --slots slots whose\n"
"                        placement is re-planned every --replan-every steps\n"
"                        from the global load statistics (epx_moe_stats,\n"
"                        epx_balance_plan, epx_moe_set_placement); before the\n"
"                        first plan slot s holds expert s mod E.  Reports per\n"
"                        step the imbalance of the (token, expert) pairs the\n"
"                        ranks received, (max - mean) / mean, and the times\n"
"  --steps N             steps per run (same as --iters) (20)\n"
"  --replan-every N      steps between plans (5)\n"
"  --slots S             physical slots, a multiple of the ranks >= E\n"
"                        (E + E/8 rounded up to a multiple of the ranks)\n"
"  --policy epx|deepseek planner policy (epx)\n"
"  --groups G, --domains D  expert groups and rank domains of the plan (1)\n"
"\n"
"Online rebalancing on a drifting load (--drift: no ranks are started,\n"
"the loads are planned and measured as the balancer sees them):\n"
"  --drift               --steps steps of a generated trace (--layers, --experts,\n"
"                        Zipf --routing zipf:S over experts whose ranking\n"
"                        rotates by one every few steps) or --load-trace;\n"
"                        every --replan-every steps the epx policy re-plans\n"
"                        from the placement in use within --max-moves, the\n"
"                        DeepSeek policy from scratch; per step max/mean\n"
"                        rank load of none, epx and DeepSeek, slots and\n"
"                        bytes moved, planning time\n"
"  --layers N            layers of the generated trace (4)\n"
"  --window N            steps of load a plan sees (--replan-every)\n"
"  --max-moves N         slots the epx re-plan may change (-1: any) (32)\n"
"  --bytes-per-slot B    one expert's weights (44040192: 3 x 7168 x 2048 fp8)\n"
"  --load-trace FILE     recorded loads: one line per step, layers x experts\n"
"                        numbers (layer-major), '#' lines ignored\n"
"  --plot FILE.svg       max/mean per step through gnuplot (skipped with a\n"
"                        note when gnuplot is absent)\n"
"\n"
"Elastic expert parallelism (--kill-rank: the fork launcher, one layer,\n"
"FP32 expert-major, every output checked exactly):\n"
"  --kill-rank R         rank R kills itself (SIGKILL) in the middle of a\n"
"                        dispatch; the survivors shrink the communicator\n"
"                        (epx_comm_shrink), carry the --slots placement to the\n"
"                        live ranks (experts whose every replica was on R are\n"
"                        lost and masked), re-plan within --max-moves and move\n"
"                        the weights, redo the iteration and finish; reports\n"
"                        detection, shrink and recovery times\n"
"  --at-iter N           the iteration R dies in (0)\n"
"\n"
"Domains (the ranks' domains from the communicator's topology; on one\n"
"host, EPX_TOPO_FILE=gb200-nvl72-x2 or a description of several hosts\n"
"places the ranks on several domains):\n"
"  --hierarchical        epx engines with EPX_MOE_HIERARCHICAL: a token\n"
"                        crosses once per remote destination domain, then is\n"
"                        forwarded inside it; combine chains the sums back\n"
"                        (bitwise the flat result).  With it, or with\n"
"                        EPX_TOPO_FILE set, the report gives the token bytes\n"
"                        that cross domains per step: flat (one row per\n"
"                        remote destination rank) and hierarchical (one per\n"
"                        remote destination domain) from the routing, and\n"
"                        what the hierarchical engine counted\n"
"\n"
"Overlap (--overlap, needs OpenBLAS: epx only, no mpi or memcpy-limit rows):\n"
"  --overlap             two micro-batches (the workload each) through two\n"
"                        engines, two-batch overlap: each step dispatches\n"
"                        mb1, computes mb0's experts as epx_dispatch_poll\n"
"                        reports them ready, combines mb0, computes mb1,\n"
"                        combines mb1, dispatches the next mb0.  Three runs\n"
"                        of --iters steps: communication alone (combine\n"
"                        sends the rows as received), the expert alone (FFN\n"
"                        and the outputs combine sends), and overlapped;\n"
"                        hidden = (comm + compute - overlapped) / comm,\n"
"                        clamped to [0, 1], from the mean step times\n"
"  --overlap-thread      the expert (FFN, then outputs) runs on a compute\n"
"                        thread of each rank while its main thread moves\n"
"                        the other micro-batch (as a GPU runs experts on its\n"
"                        SMs while copies proceed): post expert(mb0);\n"
"                        dispatch mb1; wait, post expert(mb1); combine mb0;\n"
"                        dispatch the next mb0; wait, post expert(next\n"
"                        mb0); combine mb1.  Needs a free core per rank for\n"
"                        the thread to overlap anything\n"
"  --pin                 --overlap: rank r's main thread on the r-th CPU\n"
"                        this process may use (--overlap-thread: the 2r-th,\n"
"                        its compute thread on the next), wrapping around\n"
"  --ffn F               expert intermediate size: per local expert and\n"
"                        micro-batch, silu(x W1) * (x W3) then W2, fp32\n"
"                        sgemm, H x F weights (2H/7: DeepSeek-V3's 7168 ->\n"
"                        2048 ratio)\n"
"  --blas-threads N      OpenBLAS threads per rank (1)\n"
"\n"
"Timing: a barrier precedes each timed phase; a phase's time in an iteration\n"
"is the slowest rank's; p50 and p10..p90 are over the timed iterations;\n"
"total = dispatch + combine of the same iteration.\n"
"\n"
"Bytes (as nccl-tests' alltoall): a rank sends token rows x H x dtype size,\n"
"to every destination including itself, a token once per destination rank\n"
"however many of its experts live there; routing metadata is not counted.\n"
"Combine moves the same bytes back.  algbw = bytes per rank averaged over\n"
"ranks / time (dispatch, combine; total: both phases' bytes / total time);\n"
"busbw = algbw * (N-1)/N.  GB/s = 1e9 bytes/s.\n"
"\n"
"Verification: every received row is compared bit for bit with the source\n"
"row (regenerated from seed, rank, token), with its routing and per-expert\n"
"counts; every combined output element against\n"
"  ref = sum_k w_k * x * (1 + e_k/E) (computed in double), within\n"
"  |out - ref| <= (3u + (K+4) 2^-24) * sum_k |w_k * x * (1 + e_k/E)|,\n"
"  u = 2^-8 for bf16, 2^-24 for fp32 (one rounding of the expert output,\n"
"  of each rank's partial and of the final sum).  A mismatch makes the\n"
"  exit status 1; errors 2.\n";

static int parse_int(const char *opt, const char *v, long min, long max,
                     int *out)
{
    char *e;
    errno = 0;
    long x = v ? strtol(v, &e, 10) : 0;
    if (!v || e == v || *e || errno || x < min || x > max) {
        fprintf(stderr, "epx-bench: %s wants an integer in [%ld, %ld], "
                "got '%s'\n", opt, min, max, v ? v : "");
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_list(const char *opt, const char *v, int64_t **out,
                      int *nout)
{
    free(*out);
    *out = NULL;
    *nout = 0;
    if (!v || !*v)
        goto bad;
    int n = 1;
    for (const char *p = v; *p; p++)
        n += *p == ',';
    *out = calloc((size_t)n, sizeof(**out));
    if (!*out)
        goto bad;
    const char *p = v;
    for (int i = 0; i < n; i++) {
        char *e;
        errno = 0;
        long long x = strtoll(p, &e, 10);
        if (e == p || errno || x < 0 || x > (1LL << 30) ||
            (*e != ',' && *e != '\0'))
            goto bad;
        (*out)[i] = x;
        p = e + (*e == ',');
    }
    *nout = n;
    return 0;
bad:
    fprintf(stderr, "epx-bench: %s wants T or T0,T1,... (>= 0), got "
            "'%s'\n", opt, v ? v : "");
    return -1;
}

static int parse_tokens(const char *v, bench_opts_t *o)
{
    return parse_list("--tokens", v, &o->tokens, &o->ntokens);
}

static int parse_routing(const char *v, bench_opts_t *o)
{
    if (v && strcmp(v, "uniform") == 0) {
        o->routing = BENCH_ROUTE_UNIFORM;
    } else if (v && strncmp(v, "zipf:", 5) == 0) {
        char *e;
        errno = 0;
        double s = strtod(v + 5, &e);
        if (e == v + 5 || *e || errno || !(s >= 0 && s <= 16))
            goto bad;
        o->routing = BENCH_ROUTE_ZIPF;
        o->zipf_s = s;
    } else {
        goto bad;
    }
    snprintf(o->routing_str, sizeof(o->routing_str), "%s", v);
    o->routing_given = 1;
    return 0;
bad:
    fprintf(stderr, "epx-bench: --routing wants uniform or zipf:S "
            "(0 <= S <= 16), got '%s'\n", v ? v : "");
    return -1;
}

static int parse_impls(const char *v, bench_opts_t *o)
{
    o->impl_mask = 0;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", v ? v : "");
    for (char *save, *t = strtok_r(buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 0; i < BENCH_NIMPL; i++)
            if (strcmp(t, bench_impl_names[i]) == 0) {
                o->impl_mask |= 1u << i;
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "epx-bench: --impl: unknown '%s' (epx, mpi, "
                    "memcpy-limit)\n", t);
            return -1;
        }
    }
    if (!o->impl_mask) {
        fprintf(stderr, "epx-bench: --impl wants a list\n");
        return -1;
    }
    return 0;
}

/* Options that take no value: "--json=yes" is a mistake, not --json. */
static int is_flag(const char *name)
{
    static const char *const flags[] = {
        "--help", "--balance", "--hierarchical", "--overlap",
        "--overlap-thread", "--pin", "--drift", "--ll-drop", "--cuda-graph",
        "--device-timing",
        "--json", "--verify-all", "--inplace", "--no-inplace",
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (!strcmp(name, flags[i]))
            return 1;
    return 0;
}

static void print_md_cell(const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', stdout);
        fputc(*s, stdout);
    }
}

static void list_settings(const char *fmt)
{
    const epx_setting_t *t;
    int n = epx_settings(&t);
    if (strcmp(fmt, "markdown") == 0) {
        printf("| Setting | Default | Meaning |\n|---|---|---|\n");
        for (int i = 0; i < n; i++) {
            printf("| `%s` | ", t[i].name);
            if (*t[i].deflt) {
                printf("`");
                print_md_cell(t[i].deflt);
                printf("`");
            }
            printf(" | ");
            print_md_cell(t[i].help);
            printf(" |\n");
        }
        return;
    }
    for (int i = 0; i < n; i++)
        printf("%-16s %-8s %s\n", t[i].name, *t[i].deflt ? t[i].deflt : "-",
               t[i].help);
}

const char *bench_dtype_name(epx_dtype_t dt)
{
    return dt == EPX_DTYPE_FP32 ? "fp32" : "bf16";
}

const char *bench_layout_name(epx_layout_t l)
{
    return l == EPX_LAYOUT_EXPERT_MAJOR ? "expert" : "token";
}

void bench_opts_free(bench_opts_t *o)
{
    free(o->tokens);
    o->tokens = NULL;
    free(o->sweep);
    o->sweep = NULL;
}

int bench_opts_parse(int argc, char **argv, bench_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->hidden = 7168;
    o->experts = 256;
    o->topk = 8;
    o->routing = BENCH_ROUTE_UNIFORM;
    snprintf(o->routing_str, sizeof(o->routing_str), "uniform");
    o->seed = 1;
    o->inplace = 1;
    o->iters = 20;
    o->warmup = 3;
    o->kill_rank = -1;
    o->layout = EPX_LAYOUT_TOKEN_MAJOR;
    o->align = 128;
    o->dtype = EPX_DTYPE_BF16;
    o->impl_mask = (1u << BENCH_NIMPL) - 1;
    o->launcher = BENCH_LAUNCH_AUTO;
    o->replan_every = 5;
    o->layers = 4;
    o->max_moves = 32;
    o->bytes_per_slot = 44040192;
    o->policy = EPX_BALANCE_EPX;
    o->groups = o->domains = 1;
    o->blas_threads = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        /* --opt=value and --opt value */
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) == 0 && eq && (size_t)(eq - a) < sizeof(name)) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            val = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a);
        }
#define NEXT() (val ? val : (i + 1 < argc ? argv[++i] : NULL))
        if (val && is_flag(name)) {
            fprintf(stderr, "epx-bench: %s takes no value, got '%s'\n", name,
                    a);
            return BENCH_OPTS_EXIT_ERR;
        }
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            fputs(bench_usage, stdout);
            return BENCH_OPTS_EXIT_OK;
        } else if (!strcmp(name, "--list-settings")) {
            const char *fmt = val;
            if (!fmt && i + 1 < argc && argv[i + 1][0] != '-')
                fmt = argv[++i];
            if (!fmt)
                fmt = "text";
            if (strcmp(fmt, "text") && strcmp(fmt, "markdown")) {
                fprintf(stderr, "epx-bench: --list-settings wants text or "
                        "markdown, got '%s'\n", fmt);
                return BENCH_OPTS_EXIT_ERR;
            }
            list_settings(fmt);
            return BENCH_OPTS_EXIT_OK;
        } else if (!strcmp(name, "--ranks")) {
            if (parse_int(name, NEXT(), 1, BENCH_MAX_RANKS, &o->ranks))
                return BENCH_OPTS_EXIT_ERR;
            o->ranks_given = 1;
        } else if (!strcmp(name, "--tokens")) {
            if (parse_tokens(NEXT(), o))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--hidden")) {
            if (parse_int(name, NEXT(), 1, 1 << 20, &o->hidden))
                return BENCH_OPTS_EXIT_ERR;
            o->hidden_given = 1;
        } else if (!strcmp(name, "--experts")) {
            if (parse_int(name, NEXT(), 1, 1 << 20, &o->experts))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--topk")) {
            if (parse_int(name, NEXT(), 1, EPX_MAX_TOPK, &o->topk))
                return BENCH_OPTS_EXIT_ERR;
            o->topk_given = 1;
        } else if (!strcmp(name, "--routing")) {
            if (parse_routing(NEXT(), o))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--drop")) {
            const char *v = NEXT();
            char *e;
            o->drop = v ? strtod(v, &e) : -1;
            if (!v || e == v || *e || !(o->drop >= 0 && o->drop <= 1)) {
                fprintf(stderr, "epx-bench: --drop wants a fraction in "
                        "[0, 1], got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--seed")) {
            const char *v = NEXT();
            char *e;
            errno = 0;
            o->seed = v ? strtoull(v, &e, 0) : 0;
            /* strtoull takes "-1" as 2^64 - 1 */
            if (!v || e == v || *e || errno || strchr(v, '-')) {
                fprintf(stderr, "epx-bench: --seed wants an unsigned "
                        "integer, got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--balance")) {
            o->balance = 1;
        } else if (!strcmp(name, "--hierarchical")) {
            o->hierarchical = 1;
        } else if (!strcmp(name, "--transport")) {
            const char *v = NEXT();
            if (!v || (strcmp(v, "auto") && strcmp(v, "shm") &&
                       strcmp(v, "ucx"))) {
                fprintf(stderr, "epx-bench: --transport wants auto, shm or "
                        "ucx, got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
            o->transport = v;
        } else if (!strcmp(name, "--overlap")) {
            o->overlap = 1;
        } else if (!strcmp(name, "--overlap-thread")) {
            o->overlap = o->overlap_thread = 1;
        } else if (!strcmp(name, "--pin")) {
            o->pin = 1;
        } else if (!strcmp(name, "--ffn")) {
            if (parse_int(name, NEXT(), 1, 1 << 20, &o->ffn))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--blas-threads")) {
            if (parse_int(name, NEXT(), 1, 1024, &o->blas_threads))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--drift")) {
            o->drift = 1;
        } else if (!strcmp(name, "--kill-rank")) {
            if (parse_int(name, NEXT(), 0, BENCH_MAX_RANKS - 1, &o->kill_rank))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--at-iter")) {
            if (parse_int(name, NEXT(), 0, 1 << 30, &o->at_iter))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--layers")) {
            if (parse_int(name, NEXT(), 1, 1 << 12, &o->layers))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--window")) {
            if (parse_int(name, NEXT(), 1, 1000000, &o->window))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--max-moves")) {
            int v;
            if (parse_int(name, NEXT(), -1, 1 << 30, &v))
                return BENCH_OPTS_EXIT_ERR;
            o->max_moves = v;
        } else if (!strcmp(name, "--bytes-per-slot")) {
            const char *v = NEXT();
            char *e;
            errno = 0;
            long long b = v ? strtoll(v, &e, 0) : -1;
            if (!v || e == v || *e || errno || b < 0) {
                fprintf(stderr, "epx-bench: --bytes-per-slot wants bytes, "
                        "got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
            o->bytes_per_slot = b;
        } else if (!strcmp(name, "--load-trace")) {
            if (!(o->load_trace = NEXT()) || !*o->load_trace) {
                fprintf(stderr, "epx-bench: --load-trace wants a file\n");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--plot")) {
            if (!(o->plot = NEXT()) || !*o->plot) {
                fprintf(stderr, "epx-bench: --plot wants a file\n");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--replan-every")) {
            if (parse_int(name, NEXT(), 1, 1000000, &o->replan_every))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--slots")) {
            if (parse_int(name, NEXT(), 1, 1 << 24, &o->slots))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--groups")) {
            if (parse_int(name, NEXT(), 1, 1 << 20, &o->groups))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--domains")) {
            if (parse_int(name, NEXT(), 1, BENCH_MAX_RANKS, &o->domains))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--policy")) {
            const char *v = NEXT();
            if (v && !strcmp(v, "epx"))
                o->policy = EPX_BALANCE_EPX;
            else if (v && !strcmp(v, "deepseek"))
                o->policy = EPX_BALANCE_DEEPSEEK;
            else {
                fprintf(stderr, "epx-bench: --policy wants epx or deepseek, "
                        "got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--iters") || !strcmp(name, "--steps")) {
            if (parse_int(name, NEXT(), 1, 1000000, &o->iters))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--warmup")) {
            if (parse_int(name, NEXT(), 0, 1000000, &o->warmup))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--align")) {
            if (parse_int(name, NEXT(), 1, 1 << 20, &o->align))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--device")) {
            const char *v = NEXT();
            if (v && !strcmp(v, "host"))
                o->device = BENCH_DEVICE_HOST;
            else if (v && !strcmp(v, "cuda"))
                o->device = BENCH_DEVICE_CUDA;
            else {
                fprintf(stderr, "epx-bench: --device wants host or cuda, got "
                        "'%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--mode")) {
            const char *v = NEXT();
            o->mode_given = 1;
            if (v && !strcmp(v, "ht"))
                o->mode = EPX_MODE_THROUGHPUT;
            else if (v && !strcmp(v, "ll"))
                o->mode = EPX_MODE_LOW_LATENCY;
            else {
                fprintf(stderr, "epx-bench: --mode wants ht or ll, got '%s'\n",
                        v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--ll-capacity")) {
            if (parse_int(name, NEXT(), 0, 1 << 24, &o->ll_capacity))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--ll-drop")) {
            o->ll_drop = 1;
        } else if (!strcmp(name, "--cuda-graph")) {
            o->cuda_graph = 1;
        } else if (!strcmp(name, "--device-timing")) {
            o->device_timing = 1;
        } else if (!strcmp(name, "--sms")) {
            if (parse_int(name, NEXT(), 1, 1 << 16, &o->sms))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--ll-buffers")) {
            if (parse_int(name, NEXT(), 0, 64, &o->ll_buffers))
                return BENCH_OPTS_EXIT_ERR;
            if (o->ll_buffers == 1) {
                fprintf(stderr, "epx-bench: --ll-buffers wants 0 or 2..64\n");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--tokens-sweep")) {
            if (parse_list(name, NEXT(), &o->sweep, &o->nsweep))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--layout")) {
            o->layout_given = 1;
            const char *v = NEXT();
            if (v && !strcmp(v, "token"))
                o->layout = EPX_LAYOUT_TOKEN_MAJOR;
            else if (v && !strcmp(v, "expert"))
                o->layout = EPX_LAYOUT_EXPERT_MAJOR;
            else {
                fprintf(stderr, "epx-bench: --layout wants token or expert, "
                        "got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--dtype")) {
            const char *v = NEXT();
            o->dtype_given = 1;
            o->dtype = EPX_DTYPE_BF16;
            o->wire = EPX_WIRE_NATIVE;
            if (v && !strcmp(v, "fp32"))
                o->dtype = EPX_DTYPE_FP32;
            else if (!v || (strcmp(v, "bf16") &&
                            (o->wire = bench_wire_parse(v)) == EPX_WIRE_NATIVE)) {
                fprintf(stderr, "epx-bench: --dtype wants bf16, fp32, fp8, "
                        "fp8-ue8m0, mxfp8 or nvfp4, got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--impl")) {
            if (parse_impls(NEXT(), o))
                return BENCH_OPTS_EXIT_ERR;
        } else if (!strcmp(name, "--launcher")) {
            const char *v = NEXT();
            if (v && !strcmp(v, "auto"))
                o->launcher = BENCH_LAUNCH_AUTO;
            else if (v && !strcmp(v, "fork"))
                o->launcher = BENCH_LAUNCH_FORK;
            else if (v && !strcmp(v, "mpirun"))
                o->launcher = BENCH_LAUNCH_MPIRUN;
            else {
                fprintf(stderr, "epx-bench: --launcher wants auto, fork or "
                        "mpirun, got '%s'\n", v ? v : "");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--trace")) {
            if (!(o->trace_dir = NEXT()) || !*o->trace_dir) {
                fprintf(stderr, "epx-bench: --trace wants a directory\n");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--dump")) {
            if (!(o->dump_dir = NEXT()) || !*o->dump_dir) {
                fprintf(stderr, "epx-bench: --dump wants a directory\n");
                return BENCH_OPTS_EXIT_ERR;
            }
        } else if (!strcmp(name, "--json")) {
            o->json = 1;
        } else if (!strcmp(name, "--verify-all")) {
            o->verify_all = 1;
        } else if (!strcmp(name, "--inplace")) {
            o->inplace = 1;
        } else if (!strcmp(name, "--no-inplace")) {
            o->inplace = 0;
        } else {
            fprintf(stderr, "epx-bench: unknown option '%s' (see --help)\n",
                    a);
            return BENCH_OPTS_EXIT_ERR;
        }
#undef NEXT
    }
    if (o->mode == EPX_MODE_LOW_LATENCY) {
        if (o->layout_given && o->layout != EPX_LAYOUT_EXPERT_MAJOR) {
            fprintf(stderr, "epx-bench: --mode ll receives per expert: "
                    "--layout token does not apply\n");
            return BENCH_OPTS_EXIT_ERR;
        }
        if (o->balance) {
            fprintf(stderr, "epx-bench: --balance runs throughput mode\n");
            return BENCH_OPTS_EXIT_ERR;
        }
        o->layout = EPX_LAYOUT_EXPERT_MAJOR;
        o->align = 1;   /* ranges are fixed: alignment does not apply */
    }
    if (o->cuda_graph && (o->device != BENCH_DEVICE_CUDA ||
                          o->mode != EPX_MODE_LOW_LATENCY)) {
        fprintf(stderr, "epx-bench: --cuda-graph goes with --device cuda "
                "--mode ll (throughput mode synchronises with the host once "
                "per dispatch, which a graph cannot hold)\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    if ((o->device_timing || o->sms) && o->device != BENCH_DEVICE_CUDA) {
        fprintf(stderr, "epx-bench: %s goes with --device cuda\n",
                o->device_timing ? "--device-timing" : "--sms");
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->overlap && !bench_ffn_available()) {
        fprintf(stderr, "epx-bench: --overlap is unavailable: built without "
                "OpenBLAS (install libopenblas-dev and re-run configure)\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->overlap && (o->balance || o->dump_dir)) {
        fprintf(stderr, "epx-bench: --overlap goes with neither --balance "
                "nor --dump\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->nsweep > 0 && (o->balance || o->overlap || o->trace_dir ||
                          o->dump_dir || o->ntokens > 1 ||
                          o->launcher == BENCH_LAUNCH_MPIRUN)) {
        fprintf(stderr, "epx-bench: --tokens-sweep runs the fork launcher "
                "with one token count per run: not with --balance, "
                "--overlap, --trace, --dump, per-rank --tokens or "
                "--launcher mpirun\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->nsweep > 0)
        o->impl_mask &= ~(1u << BENCH_IMPL_MPI);
#ifdef EPX_HAVE_MPI
    const int no_mpi = o->launcher == BENCH_LAUNCH_FORK || o->nsweep > 0;
#else
    const int no_mpi = 1;
#endif
    if (!(o->impl_mask & ~(1u << BENCH_IMPL_MPI)) && no_mpi &&
        !o->balance && !o->overlap && !o->drift &&
        o->device == BENCH_DEVICE_HOST) {
        fprintf(stderr, "epx-bench: --impl mpi alone needs the mpirun "
                "launcher (%s): nothing would run\n",
#ifdef EPX_HAVE_MPI
                o->nsweep > 0 ? "--tokens-sweep runs the fork launcher"
                              : "--launcher fork has no MPI"
#else
                "epx was built without MPI"
#endif
                );
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->balance && o->dump_dir) {
        fprintf(stderr, "epx-bench: --dump does not go with --balance\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    if (o->balance && !o->routing_given && !o->trace_dir)
        parse_routing("zipf:0.6", o);
    if (o->dump_dir && !(o->impl_mask & (1u << BENCH_IMPL_EPX))) {
        fprintf(stderr, "epx-bench: --dump writes epx's outputs: keep epx "
                "in --impl\n");
        return BENCH_OPTS_EXIT_ERR;
    }
    return BENCH_OPTS_RUN;
}

/*
 * epx-balance: plans an expert placement from a loads file with
 * epx_balance_plan and shows it with its metrics, before (no balancer) and
 * after.  Command line, domains from a system description, and output here;
 * the input readers in tool_input.c.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epx.h"
#include "src/balance/tool.h"
#include "util/tool_io.h"

enum { EXIT_PLAN = 1, EXIT_USAGE = 2 };

static const char usage[] =
"Usage: epx-balance --loads FILE --slots S --ranks R [--groups G]\n"
"                   [--domains D | --system NAME|FILE] [--policy P]\n"
"                   [--current FILE [--live LIST | --lost-ranks LIST]\n"
"                   [--max-moves N] [--max-bytes B --bytes-per-slot N]]\n"
"                   [--json]\n"
"\n"
"Plans where the replicas of each MoE expert go (epx_balance_plan) from the\n"
"load of every expert of every layer, and shows the placement with how even\n"
"it is, next to the same figures without a balancer (experts in contiguous\n"
"blocks on the ranks).\n"
"\n"
"  -l, --loads FILE      loads [layers][experts]: a JSON array of arrays of\n"
"                        numbers, or a .npy file (float32, float64, int32 or\n"
"                        int64, 2-D, C order); finite and >= 0\n"
"  -s, --slots S         physical expert slots per layer (>= experts,\n"
"                        a multiple of the ranks)\n"
"  -r, --ranks R         ranks (with --live / --lost-ranks, --slots and\n"
"                        --ranks are those of --current, before the loss)\n"
"  -g, --groups G        expert groups (divides experts; default 1)\n"
"  -d, --domains D       NVLink or host domains (divides ranks; default 1)\n"
"  -S, --system NAME|FILE  take the domains from a system description: the\n"
"                        number of domains the R ranks fall into when placed\n"
"                        on it (as epx-topo --ranks R shows); the ranks of\n"
"                        each domain must be contiguous and equally many\n"
"  -p, --policy P        deepseek or epx (default epx)\n"
"  -c, --current FILE    epx policy: the placement in use, phy2log\n"
"                        [layers][slots] as JSON; replicas that stay on\n"
"                        their rank keep their slots\n"
"  -m, --max-moves N     with --current: re-plan from the placement in use,\n"
"                        changing at most N slots (all layers together);\n"
"                        never worse than the placement in use\n"
"  -B, --max-bytes B     the same, at most B bytes of expert weights moved\n"
"                        (needs --bytes-per-slot)\n"
"  -b, --bytes-per-slot N  bytes of one expert's weights (for --max-bytes\n"
"                        and the bytes reported)\n"
"  -L, --live LIST       with --current: only these ranks of the R survive\n"
"                        (e.g. 0-6,8-15); plans for them, renumbered in\n"
"                        order, with their slots of --current as the\n"
"                        placement in use; experts with no replica on them\n"
"                        are lost (no slot) and listed; --domains then\n"
"                        divides the live ranks\n"
"  -x, --lost-ranks LIST  the same, naming the ranks that died (e.g. 7)\n"
"  -j, --json            one JSON object instead of the tables\n"
"  -h, --help            this text\n"
"\n"
"Exit status: 0 done, 1 an input could not be read or no placement could be\n"
"planned (the message says why), 2 bad command line.\n"
"\n"
"Examples:\n"
"  epx-balance --loads loads.json --slots 16 --ranks 8 --groups 4 \\\n"
"              --domains 2 --policy deepseek\n"
"  epx-balance --loads loads.json --slots 32 --ranks 16 \\\n"
"              --current placement.json --lost-ranks 7\n";

typedef struct opts {
    const char *loads, *system, *current;
    const char *live, *lost_ranks;   /* rank lists, parsed once R is known */
    int slots, ranks, groups, domains;
    int domains_set;
    epx_balance_policy_t policy;
    int json;
    long long max_moves, max_bytes, bytes_per_slot;
} opts_t;

static void usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "epx-balance: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see epx-balance --help)\n");
}

static int parse_ll(const char *opt, const char *arg, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || errno || v < 0) {
        fprintf(stderr, "epx-balance: %s '%s': expected an integer >= 0 "
                "(see epx-balance --help)\n", opt, arg);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char *opt, const char *arg, int *out)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < 1 || v > INT_MAX) {
        fprintf(stderr, "epx-balance: %s '%s': expected a positive integer "
                "(see epx-balance --help)\n", opt, arg);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Returns 0 to go on, else the exit status (-1 after --help: exit 0). */
static int parse_args(int argc, char **argv, opts_t *o)
{
    static const struct option lopts[] = {
        { "loads", required_argument, NULL, 'l' },
        { "slots", required_argument, NULL, 's' },
        { "ranks", required_argument, NULL, 'r' },
        { "groups", required_argument, NULL, 'g' },
        { "domains", required_argument, NULL, 'd' },
        { "system", required_argument, NULL, 'S' },
        { "policy", required_argument, NULL, 'p' },
        { "current", required_argument, NULL, 'c' },
        { "json", no_argument, NULL, 'j' },
        { "max-moves", required_argument, NULL, 'm' },
        { "max-bytes", required_argument, NULL, 'B' },
        { "bytes-per-slot", required_argument, NULL, 'b' },
        { "live", required_argument, NULL, 'L' },
        { "lost-ranks", required_argument, NULL, 'x' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    memset(o, 0, sizeof(*o));
    o->groups = o->domains = 1;
    o->policy = EPX_BALANCE_EPX;
    o->max_moves = o->max_bytes = -1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":l:s:r:g:d:S:p:c:jm:B:b:L:x:h", lopts,
                            NULL)) != -1) {
        switch (c) {
        case 'l': o->loads = optarg; break;
        case 's': if (parse_int("--slots", optarg, &o->slots)) return 2; break;
        case 'r': if (parse_int("--ranks", optarg, &o->ranks)) return 2; break;
        case 'g':
            if (parse_int("--groups", optarg, &o->groups)) return 2;
            break;
        case 'd':
            if (parse_int("--domains", optarg, &o->domains)) return 2;
            o->domains_set = 1;
            break;
        case 'S': o->system = optarg; break;
        case 'p':
            if (strcmp(optarg, "deepseek") == 0)
                o->policy = EPX_BALANCE_DEEPSEEK;
            else if (strcmp(optarg, "epx") == 0)
                o->policy = EPX_BALANCE_EPX;
            else {
                usage_error("unknown policy '%s' (deepseek or epx)", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'c': o->current = optarg; break;
        case 'j': o->json = 1; break;
        case 'm':
            if (parse_ll("--max-moves", optarg, &o->max_moves)) return 2;
            break;
        case 'B':
            if (parse_ll("--max-bytes", optarg, &o->max_bytes)) return 2;
            break;
        case 'b':
            if (parse_ll("--bytes-per-slot", optarg, &o->bytes_per_slot))
                return 2;
            break;
        case 'L': o->live = optarg; break;
        case 'x': o->lost_ranks = optarg; break;
        case 'h': fputs(usage, stdout); return -1;
        case ':':
            usage_error("%s needs an argument", argv[optind - 1]);
            return EXIT_USAGE;
        default:
            usage_error("unknown option '%s'", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        usage_error("unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (!o->loads || !o->slots || !o->ranks) {
        usage_error("%s", !o->loads ? "--loads is required"
                          : !o->slots ? "--slots is required"
                                      : "--ranks is required");
        return EXIT_USAGE;
    }
    if ((o->max_moves >= 0 || o->max_bytes >= 0) &&
        (!o->current || o->policy != EPX_BALANCE_EPX)) {
        usage_error("%s", "--max-moves / --max-bytes re-plan the placement in "
                          "use: they need --current and the epx policy");
        return EXIT_USAGE;
    }
    if (o->max_bytes >= 0 && o->bytes_per_slot <= 0) {
        usage_error("%s", "--max-bytes needs --bytes-per-slot");
        return EXIT_USAGE;
    }
    if (o->live && o->lost_ranks) {
        usage_error("%s", "--live and --lost-ranks: give one of them");
        return EXIT_USAGE;
    }
    if ((o->live || o->lost_ranks) && !o->current) {
        usage_error("%s", "--live / --lost-ranks shrink the placement in use: "
                          "they need --current");
        return EXIT_USAGE;
    }
    if (o->system && o->domains_set) {
        usage_error("%s", "--domains and --system: give one of them");
        return EXIT_USAGE;
    }
    return 0;
}

/* A rank list "0-6,8,10-15" of ranks 0..R-1 into mark[R] (1 = named).
 * Returns 0, or -1 after a message. */
static int parse_ranks(const char *opt, const char *arg, int R, uint8_t *mark)
{
    const char *p = arg;
    memset(mark, 0, (size_t)R);
    for (;;) {
        char *end;
        long a, b;
        if (*p < '0' || *p > '9')
            goto bad;
        a = strtol(p, &end, 10);
        b = a;
        p = end;
        if (*p == '-') {
            if (p[1] < '0' || p[1] > '9')
                goto bad;
            b = strtol(p + 1, &end, 10);
            p = end;
        }
        if (b < a || b >= R) {
            fprintf(stderr, "epx-balance: %s '%s': %s %ld-%ld is not within "
                    "ranks 0-%d (see epx-balance --help)\n", opt, arg,
                    b < a ? "empty range" : "range", a, b, R - 1);
            return -1;
        }
        for (long r = a; r <= b; r++)
            mark[r] = 1;
        if (*p == '\0')
            return 0;
        if (*p++ != ',')
            goto bad;
    }
bad:
    fprintf(stderr, "epx-balance: %s '%s': expected ranks and ranges such as "
            "0-6,8-15 (see epx-balance --help)\n", opt, arg);
    return -1;
}

/* The number of domains the ranks fall into on a system description.  The
 * planner numbers domains by rank blocks (rank r in domain r / (R/D)), so
 * the placement must give each domain one contiguous, equally long run. */
static int system_domains(const opts_t *o, const uint8_t *live, int *domains)
{
    epx_topo_t *topo;
    if (epx_topo_load(o->system, &topo) != EPX_OK) {
        fprintf(stderr, "epx-balance: %s\n", epx_last_error());
        return -1;
    }
    if (epx_topo_place(topo, o->ranks) != EPX_OK) {
        fprintf(stderr, "epx-balance: %s\n", epx_last_error());
        epx_topo_destroy(topo);
        return -1;
    }
    /* With --live, the survivors keep their places: the domains are
     * those of the live ranks, in order (r counts them, rr is the rank in
     * the placement before). */
    int nd = epx_topo_num_domains(topo), prev = -1;
    char *seen = calloc(nd > 0 ? nd : 1, 1);
    int runs = 0, run_len = -1, len = 0, ok = seen != NULL;
    for (int r = 0, rr = 0; ok && rr < o->ranks; rr++) {
        if (live && !live[rr])
            continue;
        int d = epx_topo_rank_domain(topo, rr);
        if (d < 0 || d >= nd) {
            fprintf(stderr, "epx-balance: %s: rank %d lies in no domain\n",
                    epx_topo_name(topo), rr);
            ok = 0;
            break;
        }
        if (r > 0 && d == prev) {
            len++;
            r++;
            continue;
        }
        if (seen[d]) {
            fprintf(stderr, "epx-balance: %s: the ranks of domain %d are not "
                    "contiguous (rank %d comes back to it); the planner needs "
                    "each domain's ranks in one block\n", epx_topo_name(topo),
                    d, rr);
            ok = 0;
            break;
        }
        if (r > 0 && run_len >= 0 && len != run_len) {
            fprintf(stderr, "epx-balance: %s: %d %sranks in one domain, %d "
                    "in another; the planner needs equally many ranks per "
                    "domain\n", epx_topo_name(topo), run_len,
                    live ? "live " : "", len);
            ok = 0;
            break;
        }
        if (r > 0)
            run_len = len;
        seen[d] = 1;
        runs++;
        len = 1;
        prev = d;
        r++;
    }
    if (ok && run_len >= 0 && len != run_len) {
        fprintf(stderr, "epx-balance: %s: %d %sranks in one domain, %d in "
                "the last; the planner needs equally many ranks per domain\n",
                epx_topo_name(topo), run_len, live ? "live " : "", len);
        ok = 0;
    }
    free(seen);
    epx_topo_destroy(topo);
    *domains = runs;
    return ok ? 0 : -1;
}

typedef struct result {
    int L, E, S, R, D, G, maxrep;
    const double *load;
    int32_t *phy2log, *log2phy, *logcnt;
    double bal, imb, bal0, imb0;
    double *lbal, *limb, *lbal0, *limb0;
    int has_current;
    epx_balance_report_t rep;
    /* --live / --lost-ranks: the R0 ranks of --current, which survive,
     * the placement left on them (the one in use, x->S slots) and the
     * experts lost with the others, [L][E]. */
    int R0;
    const uint8_t *live, *lost;
    const int32_t *shrunk;
    int64_t nlost;
} result_t;

static const char *policy_name(epx_balance_policy_t p)
{
    return p == EPX_BALANCE_DEEPSEEK ? "deepseek" : "epx";
}

static json_t *json_ints(const int32_t *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static json_t *json_reals(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static int print_json(const opts_t *o, const result_t *x)
{
    json_t *cfg = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s}",
                            "loads", o->loads, "layers", x->L, "experts",
                            x->E, "slots", x->S, "ranks", x->R, "groups",
                            x->G, "domains", x->D, "policy",
                            policy_name(o->policy));
    if (o->system)
        json_object_set_new(cfg, "system", json_string(o->system));
    if (o->current)
        json_object_set_new(cfg, "current", json_string(o->current));
    if (x->live) {
        json_t *lv = json_array(), *dead = json_array();
        for (int r = 0; r < x->R0; r++)
            json_array_append_new(x->live[r] ? lv : dead, json_integer(r));
        json_object_set_new(cfg, "ranks_before", json_integer(x->R0));
        json_object_set_new(cfg, "slots_before",
                            json_integer((json_int_t)x->S / x->R * x->R0));
        json_object_set_new(cfg, "live", lv);
        json_object_set_new(cfg, "lost_ranks", dead);
    }

    json_t *p2l = json_array(), *l2p = json_array(), *cnt = json_array();
    for (int l = 0; l < x->L; l++) {
        json_array_append_new(p2l, json_ints(x->phy2log + (size_t)l * x->S,
                                             x->S));
        json_array_append_new(cnt, json_ints(x->logcnt + (size_t)l * x->E,
                                             x->E));
        json_t *le = json_array();
        for (int e = 0; e < x->E; e++) {
            const int32_t *s = x->log2phy +
                               ((size_t)l * x->E + e) * x->maxrep;
            json_array_append_new(le, json_ints(s, x->logcnt[(size_t)l * x->E
                                                             + e]));
        }
        json_array_append_new(l2p, le);
    }
    json_t *root = json_pack(
        "{s:o, s:o, s:o, s:o, s:f, s:f, s:o, s:o, s:{s:f, s:f, s:o, s:o}}",
        "config", cfg, "phy2log", p2l, "log2phy", l2p, "logcnt", cnt,
        "balancedness", x->bal, "imbalance", x->imb,
        "layer_balancedness", json_reals(x->lbal, x->L),
        "layer_imbalance", json_reals(x->limb, x->L),
        "before", "balancedness", x->bal0, "imbalance", x->imb0,
        "layer_balancedness", json_reals(x->lbal0, x->L),
        "layer_imbalance", json_reals(x->limb0, x->L));
    if (root && x->has_current)
        json_object_set_new(root, "moved",
                            json_pack("{s:I, s:I, s:f, s:f}", "moves",
                                      (json_int_t)x->rep.moves, "bytes",
                                      (json_int_t)x->rep.bytes, "max_before",
                                      x->rep.max_before, "max_after",
                                      x->rep.max_after));
    if (root && x->live) {
        json_t *lost = json_array(), *shr = json_array();
        for (int l = 0; l < x->L; l++) {
            json_t *le = json_array();
            for (int e = 0; e < x->E; e++)
                if (x->lost[(size_t)l * x->E + e])
                    json_array_append_new(le, json_integer(e));
            json_array_append_new(lost, le);
            json_array_append_new(shr, json_ints(x->shrunk + (size_t)l * x->S,
                                                 x->S));
        }
        json_object_set_new(root, "lost", lost);
        json_object_set_new(root, "num_lost", json_integer(x->nlost));
        json_object_set_new(root, "shrunk", shr);
    }
    if (!root) {
        fprintf(stderr, "epx-balance: out of memory\n");
        return EXIT_PLAN;
    }
    json_dumpf(root, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    json_decref(root);
    return 0;
}

static int cmp_hot(const void *a, const void *b, void *arg)
{
    const double *load = arg;
    int i = *(const int *)a, j = *(const int *)b;
    if (load[i] != load[j])
        return load[i] < load[j] ? 1 : -1;
    return i - j;
}

static void print_tables(const opts_t *o, const result_t *x)
{
    int per = x->S / x->R;
    printf("%d layers, %d experts, %d slots on %d ranks (%d per rank), "
           "%d groups, %d domains%s%s, policy %s\n", x->L, x->E, x->S, x->R,
           per, x->G, x->D, o->system ? " from " : "",
           o->system ? o->system : "", policy_name(o->policy));
    if (x->live) {
        int n = 0;
        printf("lost ranks");
        for (int r = 0; r < x->R0; r++)
            if (!x->live[r])
                printf("%s %d", n++ ? "," : "", r);
        printf(" of %d: the %d live ranks are renumbered in order and keep "
               "their slots of --current; %lld (layer, expert) pairs lost\n",
               x->R0, x->R, (long long)x->nlost);
        printf("before: the placement in use on the live ranks (lost experts' "
               "load is dropped, on no rank)\n");
    }
    printf("overall: balancedness %.4f -> %.4f, imbalance %.4f -> %.4f\n",
           x->bal0, x->bal, x->imb0, x->imb);
    if (x->has_current)
        printf("from --current: %lld slots moved (%lld bytes), sum of max "
               "rank loads %.2f -> %.2f\n", (long long)x->rep.moves,
               (long long)x->rep.bytes, x->rep.max_before, x->rep.max_after);
    int *order = malloc(x->E * sizeof(int));
    for (int l = 0; l < x->L; l++) {
        const double *ld = x->load + (size_t)l * x->E;
        const int32_t *p = x->phy2log + (size_t)l * x->S;
        const int32_t *cnt = x->logcnt + (size_t)l * x->E;
        printf("\nlayer %d: balancedness %.4f -> %.4f, imbalance %.4f -> "
               "%.4f\n", l, x->lbal0[l], x->lbal[l], x->limb0[l],
               x->limb[l]);
        if (x->live) {
            int n = 0;
            printf("  lost:");
            for (int e = 0; e < x->E; e++)
                if (x->lost[(size_t)l * x->E + e])
                    printf("%s expert %d (load %g)", n++ ? "," : "", e, ld[e]);
            printf("%s\n", n ? "" : " none");
        }
        if (x->live)
            printf("  %5s %4s %6s %12s  experts (phy2log)\n", "rank", "was",
                   "domain", "load");
        else
            printf("  %5s %6s %12s  experts (phy2log)\n", "rank", "domain",
                   "load");
        for (int r = 0, was = -1; r < x->R; r++) {
            double sum = 0;
            for (int k = 0; k < per; k++) {
                int e = p[r * per + k];
                sum += ld[e] / cnt[e];
            }
            if (x->live) {   /* the rank it was in --current */
                while (!x->live[++was])
                    ;
                printf("  %5d %4d %6d %12.2f ", r, was, r / (x->R / x->D), sum);
            } else {
                printf("  %5d %6d %12.2f ", r, r / (x->R / x->D), sum);
            }
            for (int k = 0; k < per; k++)
                printf(" %d", p[r * per + k]);
            putchar('\n');
        }
        if (!order)
            continue;
        int n = 0;
        for (int e = 0; e < x->E; e++)
            if (cnt[e] > 1)
                order[n++] = e;
        qsort_r(order, n, sizeof(int), cmp_hot, (void *)ld);
        printf("  replicated:");
        if (n == 0)
            printf(" none");
        for (int i = 0; i < n; i++)
            printf("%s expert %d (load %g) x%d", i ? "," : "", order[i],
                   ld[order[i]], cnt[order[i]]);
        putchar('\n');
    }
    free(order);
}

/* --live / --lost-ranks into live[R] (1 = survives).  Returns 0, or an
 * exit status after a message. */
static int live_ranks(const opts_t *o, uint8_t **live_out, int *nlive)
{
    uint8_t *live = malloc((size_t)o->ranks);
    if (!live) {
        fprintf(stderr, "epx-balance: out of memory\n");
        return EXIT_PLAN;
    }
    if (parse_ranks(o->live ? "--live" : "--lost-ranks",
                    o->live ? o->live : o->lost_ranks, o->ranks, live)) {
        free(live);
        return EXIT_USAGE;
    }
    int n = 0;
    for (int r = 0; r < o->ranks; r++) {
        if (o->lost_ranks)
            live[r] = !live[r];
        n += live[r];
    }
    if (n == 0) {
        usage_error("%s", "no rank of --ranks is left alive");
        free(live);
        return EXIT_USAGE;
    }
    *live_out = live;
    *nlive = n;
    return 0;
}

/* The placement in use on the live ranks and the experts lost (into x);
 * current becomes the shrunk placement.  Returns 0 or EXIT_PLAN. */
static int shrink_current(const opts_t *o, const tool_matrix_t *m,
                          const uint8_t *live, int nlive, int32_t **current,
                          uint8_t **lost, result_t *x)
{
    epx_balance_params_t old = EPX_BALANCE_PARAMS_INIT;
    old.num_layers = m->rows;
    old.num_experts = m->cols;
    old.num_slots = o->slots;
    old.num_ranks = o->ranks;
    size_t ns = (size_t)nlive * (o->slots / o->ranks);
    int32_t *shr = malloc((size_t)m->rows * (ns ? ns : 1) * sizeof(int32_t));
    *lost = malloc((size_t)m->rows * m->cols);
    if (!shr || !*lost) {
        fprintf(stderr, "epx-balance: out of memory\n");
        free(shr);
        return EXIT_PLAN;
    }
    if (epx_balance_shrink(&old, *current, live, shr, *lost, &x->nlost) !=
        EPX_OK) {
        fprintf(stderr, "epx-balance: %s\n", epx_last_error());
        free(shr);
        return EXIT_PLAN;
    }
    free(*current);
    *current = shr;
    x->R0 = o->ranks;
    x->R = nlive;
    x->S = (int)ns;
    x->live = live;
    x->lost = *lost;
    x->shrunk = shr;
    return 0;
}

static int balance_main(int argc, char **argv)
{
    opts_t o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    uint8_t *live = NULL, *lost = NULL;
    int nlive = o.ranks;
    if ((o.live || o.lost_ranks) && (rc = live_ranks(&o, &live, &nlive)))
        return rc;
    if (o.system && system_domains(&o, live, &o.domains)) {
        free(live);
        return EXIT_PLAN;
    }

    char err[512];
    tool_matrix_t m;
    if (tool_read_loads(o.loads, &m, err, sizeof(err))) {
        fprintf(stderr, "epx-balance: %s\n", err);
        free(live);
        return EXIT_PLAN;
    }
    result_t x = { .L = m.rows, .E = m.cols, .S = o.slots, .R = o.ranks,
                   .D = o.domains, .G = o.groups, .load = m.v };
    double *per_layer = NULL;
    int32_t *current = NULL;
    rc = EXIT_PLAN;
    if (o.current) {
        int cr, cc;
        if (tool_read_phy2log(o.current, &current, &cr, &cc, err,
                              sizeof(err))) {
            fprintf(stderr, "epx-balance: %s\n", err);
            goto out;
        }
        if (cr != m.rows || cc != o.slots) {
            fprintf(stderr, "epx-balance: %s: %d x %d, expected [layers = %d]"
                    "[slots = %d]\n", o.current, cr, cc, m.rows, o.slots);
            goto out;
        }
        if (live && shrink_current(&o, &m, live, nlive, &current, &lost, &x))
            goto out;
        if (o.policy == EPX_BALANCE_DEEPSEEK)
            fprintf(stderr, "epx-balance: note: %s\n",
                    live ? "the deepseek policy does not keep replicas in "
                           "place; --current only gives the experts lost"
                         : "--current is ignored by the deepseek policy");
    }
    x.has_current = current != NULL;

    epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
    bp.num_layers = m.rows;
    bp.num_experts = m.cols;
    bp.num_slots = x.S;
    bp.num_groups = o.groups;
    bp.num_domains = o.domains;
    bp.num_ranks = x.R;
    bp.policy = o.policy;
    bp.current_phy2log = current;
    bp.max_moves = o.max_moves;
    bp.max_bytes = o.max_bytes;
    bp.bytes_per_slot = o.bytes_per_slot;
    bp.lost = lost;
    bp.report = &x.rep;
    /* Enough replica room: the slots beyond the fewest available experts
     * of any layer, plus one. */
    int least = x.E;
    for (int l = 0; lost && l < x.L; l++) {
        int n = 0;
        for (int e = 0; e < x.E; e++)
            n += !lost[(size_t)l * x.E + e];
        least = n < least ? n : least;
    }
    x.maxrep = x.S >= least ? x.S - least + 1 : 1;
    size_t L = (size_t)x.L;
    x.phy2log = malloc(L * x.S * sizeof(int32_t));
    x.log2phy = malloc(L * x.E * x.maxrep * sizeof(int32_t));
    x.logcnt = malloc(L * x.E * sizeof(int32_t));
    per_layer = malloc(4 * L * sizeof(double));
    if (!x.phy2log || !x.log2phy || !x.logcnt || !per_layer) {
        fprintf(stderr, "epx-balance: out of memory\n");
        goto out;
    }
    x.lbal = per_layer;
    x.limb = per_layer + L;
    x.lbal0 = per_layer + 2 * L;
    x.limb0 = per_layer + 3 * L;
    /* Before: without a balancer, or after losing ranks the placement in
     * use on the live ranks. */
    if (epx_balance_plan(&bp, m.v, x.phy2log, x.log2phy, x.maxrep,
                         x.logcnt) != EPX_OK ||
        epx_balance_metrics(&bp, m.v, x.phy2log, &x.bal, &x.imb, x.lbal,
                            x.limb) != EPX_OK ||
        epx_balance_metrics(&bp, m.v, live ? current : NULL, &x.bal0,
                            &x.imb0, x.lbal0, x.limb0) != EPX_OK) {
        fprintf(stderr, "epx-balance: %s\n", epx_last_error());
        goto out;
    }
    if (o.json)
        rc = print_json(&o, &x);
    else {
        print_tables(&o, &x);
        rc = 0;
    }
out:
    free(x.phy2log);
    free(x.log2phy);
    free(x.logcnt);
    free(per_layer);
    free(current);
    free(lost);
    free(live);
    free(m.v);
    return rc;
}


int main(int argc, char **argv)
{
    int rc = balance_main(argc, argv);
    if (tool_stdout_close("epx-balance") && rc == 0)
        rc = EXIT_PLAN;
    return rc;
}

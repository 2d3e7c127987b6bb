/* The report: per-iteration slowest-rank times -> percentiles, bandwidth,
 * ratios, verification; as a table or one JSON object. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bench.h"
#include "topology/topo.h"

enum { S_DISPATCH, S_COMBINE, S_TOTAL, NS };
static const char *const s_names[NS] = { "dispatch", "combine", "total" };

typedef struct impl_stats {
    int ran;
    double us[NS][BENCH_NQ];
    double algbw[NS];          /* GB/s at p50 */
    double busbw[NS];
    int64_t checked, mismatches;
} impl_stats_t;

/* Sizes the engine's window is planned with (src/moe/README.md, "Memory"):
 * the dominant terms, per rank, in bytes.  Throughput: reserved for the
 * worst case, touched as tokens arrive; low latency: ll_buffers buffers of
 * fixed ranges. */
typedef struct mem_info {
    double window;             /* bytes per rank */
    double disp_tok, comb_tok; /* payload bytes on the wire per token */
    int cap, buffers;
} mem_info_t;

static void mem_compute(const bench_opts_t *o, const bench_workload_t *wl,
                        mem_info_t *mi)
{
    const double R = wl->nranks, T = (double)(wl->max_T > 0 ? wl->max_T : 1),
                 K = wl->topk, row = (double)wl->hidden * (double)wl->dsize;
    /* x travels and is received in the wire format; partials in the
     * engine dtype */
    bench_wire_t w;
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
    const double xrow = (double)(w.data_bytes + w.scale_bytes + w.global_bytes);
    double maxloc = 0, pairs = 0, dests = 0, toks = 0;
    for (int r = 0; r < wl->nranks; r++) {
        double n = (double)((int64_t)(r + 1) * wl->experts / wl->nranks -
                            (int64_t)r * wl->experts / wl->nranks);
        maxloc = n > maxloc ? n : maxloc;
        for (int64_t i = 0; i < wl->T[r] * wl->topk; i++)
            pairs += wl->idx[r][i] >= 0;
        dests += (double)wl->rows_sent[r];
        toks += (double)wl->T[r];
    }
    const double mind = K < R ? K : R, ent = 4 * (3 + K);
    memset(mi, 0, sizeof(*mi));
    if (o->mode == EPX_MODE_LOW_LATENCY) {
        mi->cap = o->ll_capacity > 0 ? o->ll_capacity : (int)T;
        mi->buffers = o->ll_buffers > 0 ? o->ll_buffers : 2;
        double rows = maxloc * R * mi->cap;
        mi->window = mi->buffers * (rows * (xrow + 8) + R * T * ent +
                                    T * mind * row + R * (4 * maxloc + 24));
    } else {
        double ents = R * T, per = K < maxloc ? K : maxloc;
        double rows = o->layout == EPX_LAYOUT_TOKEN_MAJOR
            ? ents : ents * per + maxloc * (o->align - 1);
        mi->window = rows * (xrow + 12) + ents * ent + T * mind * row +
                     (o->layout == EPX_LAYOUT_TOKEN_MAJOR ? ents * K * 4 : 0);
    }
    /* Dispatch moves a row per (token, destination) in token-major, per
     * (token, expert) otherwise; combine a partial per (token, destination). */
    double disp = o->layout == EPX_LAYOUT_TOKEN_MAJOR &&
                  o->mode == EPX_MODE_THROUGHPUT ? dests : pairs;
    mi->disp_tok = toks > 0 ? disp * xrow / toks : 0;
    mi->comb_tok = toks > 0 ? dests * row / toks : 0;
}

static void compute(const bench_opts_t *o, const bench_workload_t *wl,
                    void *results, double mean_bytes, impl_stats_t st[])
{
    const int N = wl->nranks, n = o->iters;
    double *v[NS];
    for (int s = 0; s < NS; s++)
        v[s] = calloc((size_t)n, sizeof(double));
    for (int impl = 0; impl < BENCH_NIMPL; impl++) {
        impl_stats_t *is = &st[impl];
        memset(is, 0, sizeof(*is));
        is->ran = bench_result_at(results, 0, n)->ran[impl];
        for (int r = 0; r < N; r++) {
            bench_result_t *res = bench_result_at(results, r, n);
            is->checked += res->checked[impl];
            is->mismatches += res->mismatches[impl];
        }
        if (!is->ran || !v[0] || !v[1] || !v[2])
            continue;
        for (int i = 0; i < n; i++) {
            double d = 0, c = 0;
            for (int r = 0; r < N; r++) {
                bench_result_t *res = bench_result_at(results, r, n);
                double rd = bench_result_times(res, n, impl,
                                               BENCH_PHASE_DISPATCH)[i];
                double rc = bench_result_times(res, n, impl,
                                               BENCH_PHASE_COMBINE)[i];
                d = rd > d ? rd : d;
                c = rc > c ? rc : c;
            }
            v[S_DISPATCH][i] = d * 1e6;
            v[S_COMBINE][i] = c * 1e6;
            v[S_TOTAL][i] = (d + c) * 1e6;
        }
        for (int s = 0; s < NS; s++) {
            bench_quantiles(v[s], n, is->us[s]);
            double bytes = s == S_TOTAL ? 2 * mean_bytes : mean_bytes;
            double us = is->us[s][BENCH_Q_P50];
            is->algbw[s] = us > 0 ? bytes / (us * 1e-6) / 1e9 : 0;
            is->busbw[s] = is->algbw[s] * (N - 1) / N;
        }
    }
    for (int s = 0; s < NS; s++)
        free(v[s]);
}

void bench_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void bench_json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

static double ratio(const impl_stats_t *num, const impl_stats_t *den, int s)
{
    const double d = den->us[s][BENCH_Q_P50];
    return d > 0 ? num->us[s][BENCH_Q_P50] / d : NAN;
}

/* Cross-domain token bytes per step, summed over ranks (see bench.h). */
typedef struct cross_sum {
    int known, domains;
    long long flat, hier, meas_d, meas_c;
} cross_sum_t;

static cross_sum_t cross_sum(const bench_opts_t *o, void *results, int N)
{
    cross_sum_t c = { 0, 0, 0, 0, 0, 0 };
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        c.known = res->cross_known;
        c.domains = res->num_domains;
        c.flat += res->cross_flat;
        c.hier += res->cross_hier;
        c.meas_d += res->cross_meas_dispatch;
        c.meas_c += res->cross_meas_combine;
    }
    return c;
}

static void cross_print(FILE *f, const bench_opts_t *o, void *results, int N)
{
    cross_sum_t c = cross_sum(o, results, N);
    if (!c.known)
        return;
    fprintf(f, "cross-domain token bytes per step (%d domains, all ranks): "
            "flat %lld, hierarchical %lld (from the routing)", c.domains,
            c.flat, c.hier);
    if (o->hierarchical)
        fprintf(f, "; the engine counted dispatch %lld%s, combine %lld (fp32 "
                "accumulators)", c.meas_d,
                c.meas_d == c.hier ? " (= routing)" : " (DIFFERS from routing)",
                c.meas_c);
    fputc('\n', f);
}

static void cross_json(FILE *f, const bench_opts_t *o, void *results, int N)
{
    cross_sum_t c = cross_sum(o, results, N);
    if (!c.known) {
        fprintf(f, "  \"cross_domain\": null,\n");
        return;
    }
    fprintf(f, "  \"cross_domain\": {\"topo_file\": ");
    bench_json_str(f, getenv("EPX_TOPO_FILE") ? getenv("EPX_TOPO_FILE") : "");
    fprintf(f, ", \"domains\": %d, \"hierarchical\": %s, "
            "\"flat_dispatch_bytes\": %lld, \"hier_dispatch_bytes\": %lld, "
            "\"measured_dispatch_bytes\": %lld, \"measured_combine_bytes\": "
            "%lld},\n", c.domains, o->hierarchical ? "true" : "false", c.flat,
            c.hier, c.meas_d, c.meas_c);
}

static const char *const tl_names[BENCH_NTL] = { "shm", "ucx" };

/* Pairs (rank, peer), self included, per backend: R x R in all. */
static void tl_pairs(void *results, int iters, int N, long long pairs[])
{
    for (int t = 0; t < BENCH_NTL; t++)
        pairs[t] = 0;
    for (int r = 0; r < N; r++)
        for (int t = 0; t < BENCH_NTL; t++)
            pairs[t] += bench_result_at(results, r, iters)->tl_peers[t];
}

void bench_transport_print(FILE *f, void *results, int iters, int N)
{
    long long pairs[BENCH_NTL];
    tl_pairs(results, iters, N, pairs);
    const char *env = getenv("EPX_TRANSPORTS");
    fprintf(f, "transports (EPX_TRANSPORTS=%s): pairs (rank, peer) incl. "
            "self: shm %lld, ucx %lld\n", env && *env ? env : "auto",
            pairs[0], pairs[1]);
    for (int r = 0; r < N; r++) {
        if (N > 16 && r == 4) {   /* the first ranks and the last */
            fprintf(f, "  ...\n");
            r = N - 1;
        }
        fprintf(f, "  rank %d: %s\n", r,
                bench_result_at(results, r, iters)->tl_summary);
    }
}

void bench_transport_json(FILE *f, void *results, int iters, int N)
{
    long long pairs[BENCH_NTL];
    tl_pairs(results, iters, N, pairs);
    const char *env = getenv("EPX_TRANSPORTS");
    fprintf(f, "  \"transports\": {\"requested\": ");
    bench_json_str(f, env && *env ? env : "auto");
    fprintf(f, ", \"pairs\": {");
    for (int t = 0; t < BENCH_NTL; t++)
        fprintf(f, "%s\"%s\": %lld", t ? ", " : "", tl_names[t], pairs[t]);
    fprintf(f, "}, \"per_rank\": [");
    for (int r = 0; r < N; r++) {
        fprintf(f, "%s", r ? ", " : "");
        bench_json_str(f, bench_result_at(results, r, iters)->tl_summary);
    }
    fprintf(f, "]},\n");
}

static void print_json(FILE *f, const bench_opts_t *o,
                       const bench_workload_t *wl, const impl_stats_t st[],
                       int verified, const char *launcher,
                       const char *mpi_skip, double mean_bytes,
                       double mean_rows, void *results, const double *put)
{
    epx_host_info_t hi;
    if (epx__topo_host_probe(&hi) != EPX_OK)
        memset(&hi, 0, sizeof(hi));
    fprintf(f, "{\n  \"verified\": %s,\n", verified ? "true" : "false");
    fprintf(f, "  \"config\": {\n    \"ranks\": %d,\n    \"launcher\": ",
            wl->nranks);
    bench_json_str(f, launcher);
    fprintf(f, ",\n    \"host\": ");
    bench_json_str(f, hi.hostname);
    fprintf(f, ",\n    \"host_cores\": %d,\n    \"host_pus\": %d,\n"
            "    \"host_numa_nodes\": %d", hi.cores, hi.pus, hi.numa_nodes);
    fprintf(f, ",\n    \"epx_version\": ");
    bench_json_str(f, epx_version_string());
    fprintf(f, ",\n    \"tokens_per_rank\": [");
    for (int r = 0; r < wl->nranks; r++)
        fprintf(f, "%s%lld", r ? ", " : "", (long long)wl->T[r]);
    fprintf(f, "],\n    \"hidden\": %d,\n    \"experts\": %d,\n"
            "    \"topk\": %d,\n    \"dtype\": \"%s\",\n"
            "    \"layout\": \"%s\",\n    \"expert_alignment\": %d,\n",
            wl->hidden, wl->experts, wl->topk, bench_dtype_name(wl->dtype),
            bench_layout_name(o->layout), o->align);
    mem_info_t mi;
    mem_compute(o, wl, &mi);
    int64_t dropped = 0;
    for (int r = 0; r < wl->nranks; r++)
        dropped += bench_result_at(results, r, o->iters)->dropped;
    fprintf(f, "    \"mode\": \"%s\",\n",
            o->mode == EPX_MODE_LOW_LATENCY ? "ll" : "ht");
    if (o->mode == EPX_MODE_LOW_LATENCY)
        fprintf(f, "    \"ll_capacity\": %d,\n    \"ll_buffers\": %d,\n"
                "    \"ll_drop\": %s,\n    \"ll_rows_dropped\": %lld,\n",
                mi.cap, mi.buffers, o->ll_drop ? "true" : "false",
                (long long)dropped);
    fprintf(f, "    \"window_bytes_per_rank\": %.0f,\n"
            "    \"dispatch_wire_bytes_per_token\": %.0f,\n"
            "    \"combine_wire_bytes_per_token\": %.0f,\n",
            mi.window, mi.disp_tok, mi.comb_tok);
    fprintf(f, "    \"routing\": ");
    bench_json_str(f, o->trace_dir ? "trace" : o->routing_str);
    fprintf(f, ",\n    \"drop\": ");
    bench_json_num(f, o->drop);
    fprintf(f, ",\n    \"trace\": ");
    if (o->trace_dir)
        bench_json_str(f, o->trace_dir);
    else
        fputs("null", f);
    fprintf(f, ",\n    \"seed\": %llu,\n    \"iters\": %d,\n"
            "    \"warmup\": %d,\n    \"verify_all\": %s,\n"
            "    \"inplace\": %s,\n",
            (unsigned long long)o->seed, o->iters, o->warmup,
            o->verify_all ? "true" : "false", o->inplace ? "true" : "false");
    fprintf(f, "    \"bytes_per_rank\": %.0f,\n    \"token_rows_per_rank\": ",
            mean_bytes);
    bench_json_num(f, mean_rows);
    fprintf(f, ",\n    \"tolerance_unit\": ");
    bench_json_num(f, bench_tolerance_unit(wl->dtype, wl->topk));
    bench_wire_t w;
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
    fprintf(f, ",\n    \"wire\": \"%s\",\n    \"wire_bytes_per_token_row\": "
            "%zu,\n    \"wire_data_bytes\": %zu,\n    \"wire_scale_bytes\": "
            "%zu,\n    \"wire_global_bytes\": %zu,\n"
            "    \"dispatch_bytes_put_per_rank\": %.0f,\n"
            "    \"combine_bytes_put_per_rank\": %.0f",
            wl->wire == EPX_WIRE_NATIVE ? bench_dtype_name(wl->dtype)
                                        : bench_wire_name(wl->wire),
            w.data_bytes + w.scale_bytes + w.global_bytes, w.data_bytes,
            w.scale_bytes, w.global_bytes, put[0], put[1]);
    fprintf(f, "\n  },\n  \"results\": [");
    const char *sep = "";
    for (int i = 0; i < BENCH_NIMPL; i++) {
        const impl_stats_t *is = &st[i];
        if (!is->ran && !(i == BENCH_IMPL_MPI && mpi_skip &&
                          (o->impl_mask & (1u << i))))
            continue;
        fprintf(f, "%s\n    {\"impl\": \"%s\"", sep, bench_impl_names[i]);
        sep = ",";
        if (!is->ran) {
            fprintf(f, ", \"skipped\": ");
            bench_json_str(f, mpi_skip);
            fputc('}', f);
            continue;
        }
        for (int s = 0; s < NS; s++)
            bench_json_quantiles(f, s_names[s], is->us[s], 1);
        for (int s = 0; s < NS; s++) {
            const char *pfx = s == S_TOTAL ? "" : s_names[s];
            fprintf(f, ",\n     \"%s%salgbw_gbps\": ", pfx, *pfx ? "_" : "");
            bench_json_num(f, is->algbw[s]);
            fprintf(f, ", \"%s%sbusbw_gbps\": ", pfx, *pfx ? "_" : "");
            bench_json_num(f, is->busbw[s]);
        }
        if (i != BENCH_IMPL_MEMCPY)
            bench_json_verified(f, is->checked, is->mismatches);
        fputc('}', f);
    }
    fprintf(f, "\n  ],\n  \"ratios\": {");
    sep = "";
    const int others[2] = { BENCH_IMPL_MPI, BENCH_IMPL_MEMCPY };
    const char *keys[2] = { "epx_vs_mpi", "epx_vs_memcpy_limit" };
    for (int j = 0; j < 2 && st[BENCH_IMPL_EPX].ran; j++) {
        if (!st[others[j]].ran)
            continue;
        fprintf(f, "%s\n    \"%s\": {", sep, keys[j]);
        for (int s = 0; s < NS; s++) {
            fprintf(f, "%s\"%s\": ", s ? ", " : "", s_names[s]);
            bench_json_num(f, ratio(&st[others[j]], &st[BENCH_IMPL_EPX], s));
        }
        fputc('}', f);
        sep = ",";
    }
    fprintf(f, "%s},\n", *sep ? "\n  " : "");
    cross_json(f, o, results, wl->nranks);
    bench_transport_json(f, results, o->iters, wl->nranks);
    fprintf(f, "  \"mismatches\": [");
    sep = "";
    for (int r = 0; r < wl->nranks; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        for (int i = 0; i < BENCH_NIMPL; i++) {
            char *save, buf[BENCH_MSG_LEN];
            snprintf(buf, sizeof(buf), "%s", res->msg[i]);
            for (char *l = strtok_r(buf, "\n", &save); l;
                 l = strtok_r(NULL, "\n", &save)) {
                fprintf(f, "%s\n    ", sep);
                bench_json_str(f, l);
                sep = ",";
            }
        }
    }
    fprintf(f, "%s]\n}\n", *sep ? "\n  " : "");
}

static void print_table(FILE *f, const bench_opts_t *o,
                        const bench_workload_t *wl, const impl_stats_t st[],
                        const char *launcher, const char *mpi_skip,
                        double mean_bytes, double mean_rows)
{
    char tokens[64];
    int64_t tmin = wl->T[0];
    for (int r = 1; r < wl->nranks; r++)
        tmin = wl->T[r] < tmin ? wl->T[r] : tmin;
    if (tmin == wl->max_T)
        snprintf(tokens, sizeof(tokens), "%lld tokens/rank",
                 (long long)tmin);
    else
        snprintf(tokens, sizeof(tokens), "%lld..%lld tokens/rank",
                 (long long)tmin, (long long)wl->max_T);
    fprintf(f, "epx-bench %s: %d ranks (%s), %s, H %d, E %d, top-%d, %s, "
            "%s %s-major%s, routing %s, seed %llu\n", epx_version_string(),
            wl->nranks, launcher, tokens, wl->hidden, wl->experts, wl->topk,
            bench_dtype_name(wl->dtype),
            o->mode == EPX_MODE_LOW_LATENCY ? "low-latency" : "throughput",
            bench_layout_name(o->layout),
            o->inplace ? " in-place" : "",
            o->trace_dir ? o->trace_dir : o->routing_str,
            (unsigned long long)o->seed);
    epx_host_info_t hi;
    if (epx__topo_host_probe(&hi) == EPX_OK)
        fprintf(f, "host %s: %d cores, %d hardware threads, %d NUMA node%s "
                "(hwloc)\n", hi.hostname, hi.cores, hi.pus, hi.numa_nodes,
                hi.numa_nodes == 1 ? "" : "s");
    fprintf(f, "per rank and phase: %.4g %s sent (%.0f token rows), "
            "averaged over ranks; %d iterations after %d warm-up\n",
            mean_bytes >= 1e6 ? mean_bytes / 1e6 : mean_bytes / 1e3,
            mean_bytes >= 1e6 ? "MB" : "kB", mean_rows, o->iters, o->warmup);
    mem_info_t mi;
    mem_compute(o, wl, &mi);
    if (o->mode == EPX_MODE_LOW_LATENCY)
        fprintf(f, "window per rank: %.1f MiB (%d buffers of [local experts]"
                "[%d sources][capacity %d] rows)%s\n", mi.window / (1 << 20),
                mi.buffers, wl->nranks, mi.cap,
                o->ll_drop ? ", rows beyond capacity dropped" : "");
    else
        fprintf(f, "window per rank: %.1f MiB reserved (sparse: pages are "
                "committed as tokens arrive)\n", mi.window / (1 << 20));
    fprintf(f, "wire bytes per token (payload): dispatch %.0f, combine %.0f\n",
            mi.disp_tok, mi.comb_tok);
    fprintf(f, "times in us, slowest rank per iteration: p50 "
            "(p10..p90); algbw/busbw in GB/s at p50 of total\n\n");
    fprintf(f, "%-13s %24s %24s %24s %8s %8s\n", "impl", "dispatch_us",
            "combine_us", "total_us", "algbw", "busbw");
    for (int i = 0; i < BENCH_NIMPL; i++) {
        const impl_stats_t *is = &st[i];
        if (!(o->impl_mask & (1u << i)))
            continue;
        fprintf(f, "%-13s", bench_impl_names[i]);
        if (!is->ran) {
            fprintf(f, " not run: %s\n", i == BENCH_IMPL_MPI && mpi_skip
                                         ? mpi_skip : "?");
            continue;
        }
        for (int s = 0; s < NS; s++) {
            char cell[64];
            const char *fmt = is->us[s][BENCH_Q_P50] >= 100
                ? "%.0f (%.0f..%.0f)" : "%.1f (%.1f..%.1f)";
            snprintf(cell, sizeof(cell), fmt, is->us[s][BENCH_Q_P50],
                     is->us[s][BENCH_Q_P10], is->us[s][BENCH_Q_P90]);
            fprintf(f, " %24s", cell);
        }
        fprintf(f, " %8.2f %8.2f\n", is->algbw[S_TOTAL], is->busbw[S_TOTAL]);
    }
    if (st[BENCH_IMPL_EPX].ran)
        fprintf(f, "\nepx latency per call (dispatch + combine): p50 %.1f us, "
                "p99 %.1f us\n", st[BENCH_IMPL_EPX].us[S_TOTAL][BENCH_Q_P50],
                st[BENCH_IMPL_EPX].us[S_TOTAL][BENCH_Q_P99]);
    if (st[BENCH_IMPL_EPX].ran) {
        fputc('\n', f);
        if (st[BENCH_IMPL_MPI].ran)
            fprintf(f, "epx vs mpi:          dispatch %.2fx  combine %.2fx  "
                    "total %.2fx  (mpi time / epx time; > 1: epx faster)\n",
                    ratio(&st[1], &st[0], S_DISPATCH),
                    ratio(&st[1], &st[0], S_COMBINE),
                    ratio(&st[1], &st[0], S_TOTAL));
        if (st[BENCH_IMPL_MEMCPY].ran)
            fprintf(f, "epx vs memcpy-limit: dispatch %.2fx  combine %.2fx  "
                    "total %.2fx  (limit time / epx time; 1: at the limit)\n",
                    ratio(&st[2], &st[0], S_DISPATCH),
                    ratio(&st[2], &st[0], S_COMBINE),
                    ratio(&st[2], &st[0], S_TOTAL));
    }
}

int bench_report(const bench_opts_t *o, const bench_workload_t *wl,
                 void *results, const char *launcher, const char *mpi_skip)
{
    if (o->balance)
        return bench_report_balance(o, wl, results, launcher);
    if (o->overlap)
        return bench_report_overlap(o, wl, results, launcher);
    const int N = wl->nranks;
    double mean_bytes = 0, mean_rows = 0;
    for (int r = 0; r < N; r++) {
        mean_bytes += bench_rank_bytes(wl, r) / N;
        mean_rows += (double)wl->rows_sent[r] / N;
    }
    impl_stats_t st[BENCH_NIMPL];
    compute(o, wl, results, mean_bytes, st);
    /* Bytes the engine put per iteration (its statistics), mean of ranks. */
    double put[BENCH_NPHASE] = { 0, 0 };
    for (int r = 0; r < N; r++)
        for (int p = 0; p < BENCH_NPHASE; p++)
            put[p] += (double)bench_result_at(results, r, o->iters)->put_bytes[p] / N;

    int failed = 0;
    int64_t dropped = 0, skipped = 0;
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        failed |= res->failed;
        dropped += res->dropped;
        skipped = res->skipped > skipped ? res->skipped : skipped;
    }
    const int any = st[BENCH_IMPL_EPX].ran || st[BENCH_IMPL_MPI].ran;
    /* Dropped rows are missing by design: an iteration that dropped any is
     * not checked; if none was checked, nothing of epx was verified. */
    const int unchecked = st[BENCH_IMPL_EPX].ran &&
                          st[BENCH_IMPL_EPX].checked == 0 && skipped > 0;
    const int verified = !failed && any && !unchecked &&
                         st[BENCH_IMPL_EPX].mismatches == 0 &&
                         st[BENCH_IMPL_MPI].mismatches == 0;
    if (o->summary) {
        bench_summary_t *sm = o->summary;
        const impl_stats_t *e = &st[BENCH_IMPL_EPX];
        memset(sm, 0, sizeof(*sm));
        sm->ran = e->ran;
        for (int s = 0; s < NS; s++) {
            sm->us[s][0] = e->us[s][BENCH_Q_P50];
            sm->us[s][1] = e->us[s][BENCH_Q_P99];
        }
        sm->checked = e->checked;
        sm->mismatches = e->mismatches;
        sm->dropped = dropped;
        sm->failed = failed;
    }

    FILE *tf = o->json ? stderr : stdout;
    print_table(tf, o, wl, st, launcher, mpi_skip, mean_bytes, mean_rows);
    if (st[BENCH_IMPL_EPX].ran) {
        bench_wire_t w;
        bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
        fprintf(tf, "epx wire %s: %zu bytes per token row (data %zu, scales "
                "%zu, row scale %zu); bytes put per rank and iteration "
                "(engine statistics): dispatch %.4g MB, combine %.4g MB\n",
                wl->wire == EPX_WIRE_NATIVE ? bench_dtype_name(wl->dtype)
                                            : bench_wire_name(wl->wire),
                w.data_bytes + w.scale_bytes + w.global_bytes, w.data_bytes,
                w.scale_bytes, w.global_bytes, put[0] / 1e6, put[1] / 1e6);
    }
    if (o->json)
        print_json(stdout, o, wl, st, verified, launcher, mpi_skip,
                   mean_bytes, mean_rows, results, put);

    /* The first mismatches of each rank, then the verdict. */
    int shown = 0;
    for (int r = 0; r < N && !verified; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        for (int i = 0; i < BENCH_NIMPL; i++)
            if (res->msg[i][0] && shown++ < 8)
                fprintf(stderr, "%s", res->msg[i]);
    }
    cross_print(tf, o, results, N);
    bench_transport_print(tf, results, o->iters, N);
    fprintf(tf, "verified: ");
    if (verified) {
        for (int i = 0, n = 0; i < 2; i++)
            if (st[i].ran)
                fprintf(tf, "%s%s %lld rows+tokens", n++ ? ", " : "",
                        bench_impl_names[i], (long long)st[i].checked);
        fprintf(tf, ", no mismatch");
        if (skipped > 0)
            fprintf(tf, " (%lld iteration%s due for checking dropped rows "
                    "and went unchecked)", (long long)skipped,
                    skipped == 1 ? "" : "s");
        fputc('\n', tf);
    } else if (unchecked && !failed && st[BENCH_IMPL_MPI].mismatches == 0) {
        fprintf(tf, "nothing: every epx iteration due for checking "
                "dropped rows at capacity (%lld rows dropped over the run); "
                "raise --ll-capacity, or add --verify-all to check the "
                "iterations that drop nothing\n", (long long)dropped);
    } else if (!any) {
        fprintf(tf, "nothing (no epx or mpi run)\n");
    } else {
        fprintf(tf, "FAILED (epx %lld, mpi %lld mismatches)\n",
                (long long)st[BENCH_IMPL_EPX].mismatches,
                (long long)st[BENCH_IMPL_MPI].mismatches);
    }
    fflush(NULL);
    return failed || st[BENCH_IMPL_EPX].mismatches ||
           st[BENCH_IMPL_MPI].mismatches ? 1 : 0;
}

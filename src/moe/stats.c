/*
 * Load statistics: tokens this rank routes to each logical expert, per
 * layer, from the per-expert counts the routing layout computes anyway.
 * A window sum (since the last reset, or over the layer's last W
 * dispatches) and a load decayed at each dispatch of the layer; summed
 * over the ranks on request through the bootstrap's all-gather (a
 * setup-path collective: rare, not on the data path).
 *
 * The moving window keeps each of the last W dispatches' counts, as
 * serving engines do (a ring of [W][E] per layer): the sum drops a
 * dispatch exactly when it leaves, at the price of W x E x 4 bytes per
 * layer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"

epx_status_t moe_stats_init(epx_moe_t *m)
{
    size_t n = (size_t)m->layers * (size_t)m->E;
    size_t np = (size_t)m->layers * (size_t)m->U;
    m->st_window = calloc(n, sizeof(int64_t));
    m->st_decayed = calloc(n, sizeof(double));
    m->st_phys = calloc(np, sizeof(int64_t));
    m->st_gwindow = calloc(n, sizeof(int64_t));
    m->st_gdecayed = calloc(n, sizeof(double));
    m->st_gphys = calloc(np, sizeof(int64_t));
    if (!m->st_window || !m->st_decayed || !m->st_gwindow || !m->st_gdecayed ||
        !m->st_phys || !m->st_gphys)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (statistics)");
    return EPX_OK;
}

void moe_stats_free(epx_moe_t *m)
{
    free(m->st_ring);
    free(m->st_lcalls);
    free(m->st_window);
    free(m->st_decayed);
    free(m->st_gwindow);
    free(m->st_gdecayed);
    free(m->st_phys);
    free(m->st_gphys);
}

void moe_stats_record(epx_moe_t *m, int layer, const int32_t *ecount,
                      const int32_t *ucount)
{
    int64_t *p = m->st_phys + (size_t)layer * (size_t)m->U;
    for (int u = 0; u < m->U; u++)
        p[u] += ucount[u];
    int64_t *w = m->st_window + (size_t)layer * (size_t)m->E;
    double *d = m->st_decayed + (size_t)layer * (size_t)m->E;
    for (int e = 0; e < m->E; e++) {
        w[e] += ecount[e];
        d[e] = m->decay * d[e] + (double)ecount[e];
    }
    if (m->st_wsize > 0) {      /* the dispatch W before this one leaves */
        int64_t n = m->st_lcalls[layer]++;
        int32_t *old = m->st_ring + ((size_t)layer * (size_t)m->st_wsize +
                                     (size_t)(n % m->st_wsize)) * (size_t)m->E;
        for (int e = 0; e < m->E; e++) {
            w[e] -= old[e];
            old[e] = ecount[e];
        }
    }
    m->dispatches++;
}

epx_status_t epx_moe_stats_reset(epx_moe_t *m)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "moe: engine NULL");
    /* Device ranks in low latency: the calls recorded before the reset
     * are dropped, not read later. */
    (void)moe_gpu_stats_sync(m, 0);   /* a broken engine: nothing to drop */
    size_t n = (size_t)m->layers * (size_t)m->E;
    memset(m->st_window, 0, n * sizeof(int64_t));
    memset(m->st_decayed, 0, n * sizeof(double));
    memset(m->st_phys, 0, (size_t)m->layers * (size_t)m->U * sizeof(int64_t));
    if (m->st_wsize > 0) {
        memset(m->st_ring, 0, n * (size_t)m->st_wsize * sizeof(int32_t));
        memset(m->st_lcalls, 0, (size_t)m->layers * sizeof(int64_t));
    }
    m->dispatches = 0;
    m->put_dispatch = m->put_combine = 0;
    return EPX_OK;
}

epx_status_t epx_moe_stats_config(epx_moe_t *m, int window, double decay)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "moe: engine NULL");
    if (decay >= 1 || decay != decay)
        return epx__error(EPX_ERR_INVALID, "moe: stats decay %g not below 1",
                          decay);
    size_t n = (size_t)m->layers * (size_t)m->E;
    if (window >= 0 && window != m->st_wsize) {
        if (window > 0 && n * (size_t)window > ((size_t)1 << 40) / 4)
            return epx__error(EPX_ERR_RANGE, "moe: a window of %d dispatches "
                              "of %zu experts is too large", window, n);
        int32_t *ring = NULL;
        int64_t *lcalls = NULL;
        if (window > 0) {
            ring = calloc(n * (size_t)window, sizeof(int32_t));
            lcalls = calloc((size_t)m->layers, sizeof(int64_t));
            if (!ring || !lcalls) {
                free(ring);
                free(lcalls);
                return epx__error(EPX_ERR_NOMEM, "moe: out of memory "
                                  "(statistics window)");
            }
        }
        free(m->st_ring);
        free(m->st_lcalls);
        m->st_ring = ring;
        m->st_lcalls = lcalls;
        m->st_wsize = window;
    }
    if (decay >= 0)
        m->decay = decay;
    return epx_moe_stats_reset(m);
}

/* Sum every rank's record: [dispatches, dispatch bytes, combine bytes,
 * window..., physical..., decayed...], in rank order so every rank gets
 * the same sums; sums[3] gets the first three. */
static epx_status_t sum_over_ranks(epx_moe_t *m, int64_t *sums)
{
    size_t n = (size_t)m->layers * (size_t)m->E;
    size_t np = (size_t)m->layers * (size_t)m->U;
    size_t ni = 3 + n + np;                   /* int64 words, then doubles */
    size_t rec = sizeof(int64_t) * ni + sizeof(double) * n;
    char *mine = malloc(rec), *all = malloc(rec * (size_t)m->R);
    if (!mine || !all) {
        free(mine);
        free(all);
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (statistics)");
    }
    int64_t head[3] = { m->dispatches, m->put_dispatch, m->put_combine };
    memcpy(mine, head, sizeof(head));
    memcpy(mine + sizeof(int64_t) * 3, m->st_window, n * sizeof(int64_t));
    memcpy(mine + sizeof(int64_t) * (3 + n), m->st_phys, np * sizeof(int64_t));
    memcpy(mine + sizeof(int64_t) * ni, m->st_decayed, n * sizeof(double));
    epx_status_t st = epx__comm_allgather(m->comm, mine, all, rec);
    if (st == EPX_OK) {
        sums[0] = sums[1] = sums[2] = 0;
        memset(m->st_gwindow, 0, n * sizeof(int64_t));
        memset(m->st_gphys, 0, np * sizeof(int64_t));
        memset(m->st_gdecayed, 0, n * sizeof(double));
        for (int r = 0; r < m->R; r++) {
            const char *p = all + rec * (size_t)r;
            int64_t v;
            double d;
            for (int j = 0; j < 3; j++) {
                memcpy(&v, p + sizeof(int64_t) * (size_t)j, sizeof(v));
                sums[j] += v;
            }
            for (size_t i = 0; i < n; i++) {
                memcpy(&v, p + sizeof(int64_t) * (3 + i), sizeof(v));
                m->st_gwindow[i] += v;
                memcpy(&d, p + sizeof(int64_t) * ni + sizeof(double) * i,
                       sizeof(d));
                m->st_gdecayed[i] += d;
            }
            for (size_t i = 0; i < np; i++) {
                memcpy(&v, p + sizeof(int64_t) * (3 + n + i), sizeof(v));
                m->st_gphys[i] += v;
            }
        }
    }
    free(mine);
    free(all);
    return st;
}

epx_status_t epx_moe_stats(epx_moe_t *m, int global, epx_moe_stats_t *out)
{
    if (!m || !out)
        return epx__error(EPX_ERR_INVALID, "moe: engine or output NULL");
    /* Device ranks in low latency: the calls recorded on the device. */
    epx_status_t gst = moe_gpu_stats_sync(m, 1);
    if (gst != EPX_OK)
        return gst;
    epx_moe_stats_t s = { sizeof(s), m->layers, m->E, m->dispatches,
                          m->st_window, m->st_decayed, m->U, m->st_phys,
                          m->put_dispatch, m->put_combine, m->st_wsize };
    if (global) {
        int64_t sums[3] = { 0, 0, 0 };
        epx_status_t st = sum_over_ranks(m, sums);
        if (st != EPX_OK)
            return st;
        s.dispatches = sums[0];
        s.dispatch_bytes = sums[1];
        s.combine_bytes = sums[2];
        s.window = m->st_gwindow;
        s.decayed = m->st_gdecayed;
        s.physical = m->st_gphys;
    }
    size_t n = out->struct_size && out->struct_size < sizeof(s)
        ? out->struct_size : sizeof(s);
    s.struct_size = n;
    memcpy(out, &s, n);
    return EPX_OK;
}

epx_status_t epx_moe_stats_json(const epx_moe_stats_t *s, char **json)
{
    if (!s || !json || s->num_layers < 1 || s->num_experts < 1 || !s->window ||
        !s->decayed || s->num_slots < 1 || !s->physical)
        return epx__error(EPX_ERR_INVALID, "moe: statistics or output NULL");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return epx__syserror(EPX_ERR_NOMEM, "moe: open_memstream");
    fprintf(f, "{\"layers\": %d, \"experts\": %d, \"slots\": %d, "
            "\"dispatches\": %lld,\n \"window\": [", s->num_layers,
            s->num_experts, s->num_slots, (long long)s->dispatches);
    static const char *const next[] = { "],\n \"decayed\": [",
                                        "],\n \"physical\": [" };
    for (int pass = 0; pass < 3; pass++) {
        int width = pass == 2 ? s->num_slots : s->num_experts;
        if (pass)
            fputs(next[pass - 1], f);
        for (int l = 0; l < s->num_layers; l++) {
            fputs(l ? ",\n  [" : "\n  [", f);
            for (int e = 0; e < width; e++) {
                size_t i = (size_t)l * (size_t)width + (size_t)e;
                if (pass == 1)
                    fprintf(f, "%s%.17g", e ? ", " : "", s->decayed[i]);
                else
                    fprintf(f, "%s%lld", e ? ", " : "", (long long)
                            (pass ? s->physical[i] : s->window[i]));
            }
            fputc(']', f);
        }
    }
    fputs("]}\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return epx__syserror(EPX_ERR_NOMEM, "moe: writing the statistics");
    }
    *json = buf;
    return EPX_OK;
}

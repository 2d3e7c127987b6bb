/*
 * The communicator's topology map: EPX_TOPO_FILE's description placed with
 * the documented rule, or every rank's probe exchanged as description text
 * and merged.  Collective on first use; every rank computes the same map
 * from the same texts in the same order.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "core/comm.h"
#include "topology/model.h"

/* Every rank learns the worst status; a peer's failure becomes EPX_ERR_PEER. */
static epx_status_t agree(epx_comm_t *c, epx_status_t mine)
{
    int32_t v = mine, *all = malloc(sizeof(int32_t) * (size_t)c->nranks);
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    epx_status_t st = epx__comm_allgather(c, &v, all, sizeof(v));
    for (int r = 0; r < c->nranks && st == EPX_OK; r++)
        if (all[r] != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "topo: rank %d could not build its "
                             "map (%s)", r, epx_status_str((epx_status_t)all[r]));
    free(all);
    return st;
}

/* Each rank's probe as text, gathered: lengths first, then padded texts. */
static epx_status_t gather_texts(epx_comm_t *c, const char *mine,
                                 char **buf, size_t *stride)
{
    int64_t len = mine ? (int64_t)strlen(mine) + 1 : 0, maxlen = 0;
    int64_t *lens = malloc(sizeof(int64_t) * (size_t)c->nranks);
    if (!lens)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    epx_status_t st = epx__comm_allgather(c, &len, lens, sizeof(len));
    for (int r = 0; r < c->nranks; r++)
        if (lens[r] > maxlen)
            maxlen = lens[r];
    free(lens);
    if (st != EPX_OK)
        return st;
    char *send = calloc(1, (size_t)maxlen);
    char *all = malloc((size_t)maxlen * (size_t)c->nranks);
    if (!send || !all) {
        free(send);
        free(all);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    if (mine)
        memcpy(send, mine, (size_t)len);
    st = epx__comm_allgather(c, send, all, (size_t)maxlen);
    free(send);
    if (st != EPX_OK) {
        free(all);
        return st;
    }
    *buf = all;
    *stride = (size_t)maxlen;
    return EPX_OK;
}

/* Rank r drives the l-th GPU of its host, l = ranks before it on that host
 * (none when the host has fewer GPUs: a CPU rank). */
static epx_status_t place_probed(epx_topo_t *t, epx_topo_t *const *parts, int n)
{
    int *host = malloc(sizeof(int) * (size_t)n), *gpu = malloc(sizeof(int) * (size_t)n);
    if (!host || !gpu) {
        free(host);
        free(gpu);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    for (int r = 0; r < n; r++) {
        const epx_topo_obj_t *h0 = epx_topo_obj(parts[r], 0);
        host[r] = epx__topo_find(t, -1, h0 && h0->name ? h0->name : "");
        int l = 0;
        for (int q = 0; q < r; q++)
            l += host[q] == host[r];
        gpu[r] = -1;
        for (int i = 0; i < t->nobjs && gpu[r] < 0; i++)
            if (t->objs[i].kind == EPX_TOPO_GPU && t->objs[i].host == host[r] &&
                l-- == 0)
                gpu[r] = i;
    }
    epx_status_t st = epx__topo_set_ranks(t, n, host, gpu);
    free(host);
    free(gpu);
    return st;
}

static epx_status_t build_probed(epx_comm_t *c, epx_topo_t **out)
{
    epx_topo_t *mine = NULL, *merged = NULL, **parts = NULL;
    char *text = NULL, *all = NULL;
    size_t stride = 0;
    int n = c->nranks, nparts = 0;
    epx_status_t st = epx_topo_probe(&mine);
    if (st == EPX_OK)
        st = epx__topo_to_json(mine, &text);
    if ((st = agree(c, st)) != EPX_OK)
        goto out;
    if ((st = gather_texts(c, text, &all, &stride)) != EPX_OK)
        goto out;
    if (!(parts = calloc((size_t)n, sizeof(*parts)))) {
        st = epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        goto out;
    }
    for (; nparts < n && st == EPX_OK; nparts++)
        st = epx__topo_from_json(all + (size_t)nparts * stride, "rank probe",
                                 &parts[nparts]);
    if (st == EPX_OK)
        st = epx__topo_merge(parts, n, &merged);
    if (st == EPX_OK)
        st = epx__topo_finish(merged);
    if (st == EPX_OK)
        st = place_probed(merged, parts, n);
out:
    for (int i = 0; i < nparts; i++)
        epx_topo_destroy(parts[i]);
    free(parts);
    free(all);
    free(text);
    epx_topo_destroy(mine);
    if (st != EPX_OK) {
        epx_topo_destroy(merged);
        return st;
    }
    *out = merged;
    return EPX_OK;
}

epx_status_t epx_comm_topology(epx_comm_t *c, const epx_topo_t **out)
{
    if (!c || !out)
        return epx__error(EPX_ERR_INVALID, "topo: comm or output NULL");
    if (!c->topo) {
        const char *file = epx__cfg_str("EPX_TOPO_FILE");
        epx_topo_t *t = NULL;
        epx_status_t st;
        if (*file) {
            st = epx_topo_load(file, &t);
            if (st == EPX_OK)
                st = epx_topo_place(t, c->nranks);
            st = agree(c, st);
        } else {
            st = build_probed(c, &t);
        }
        if (st != EPX_OK) {
            epx_topo_destroy(t);
            return st;
        }
        EPX_LOG(EPX_LOG_INFO, "topo", c->rank,
                "map '%s': %d objects, %d domains; rank %d in domain %d",
                epx_topo_name(t), epx_topo_num_objs(t), epx_topo_num_domains(t),
                c->rank, epx_topo_rank_domain(t, c->rank));
        c->topo = t;
    }
    *out = c->topo;
    return EPX_OK;
}

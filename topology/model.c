/*
 * The topology map: builder, domains and cliques, paths, ranks, queries.
 * Every source of a map (probes, descriptions, merge) builds through here,
 * so every map is checked and indexed the same way.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "topology/model.h"

/* Latency of an implicit path when nothing measured it (us): orders of
 * magnitude, so callers can rank paths; 0 in a link means unknown. */
static const double default_lat_us[] = {
    [EPX_LINK_SELF] = 0.0, [EPX_LINK_NVLINK] = 1.0, [EPX_LINK_C2C] = 1.0,
    [EPX_LINK_PIX] = 1.5, [EPX_LINK_PXB] = 1.8, [EPX_LINK_PHB] = 2.0,
    [EPX_LINK_NODE] = 2.5, [EPX_LINK_SYS] = 3.0, [EPX_LINK_NET] = 5.0,
};

const char *epx_link_class_str(epx_link_class_t c)
{
    static const char *s[] = { "X", "NV", "C2C", "PIX", "PXB", "PHB", "NODE",
                               "SYS", "NET" };
    return (unsigned)c <= EPX_LINK_NET ? s[c] : "?";
}

epx_topo_t *epx__topo_new(const char *name)
{
    epx_topo_t *t = calloc(1, sizeof(*t));
    if (t && !(t->name = strdup(name ? name : ""))) {
        free(t);
        t = NULL;
    }
    return t;
}

void epx_topo_destroy(epx_topo_t *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nstrs; i++)
        free(t->strs[i]);
    free(t->strs);
    free(t->name);
    free(t->objs);
    free(t->gdom);
    free(t->links);
    free(t->domains);
    free(t->members);
    free(t->rank_host);
    free(t->rank_gpu);
    free(t->rank_domain);
    free(t);
}

const char *epx__topo_str(epx_topo_t *t, const char *s)
{
    if (!s)
        return NULL;
    for (int i = t->nstrs - 1; i >= 0 && i >= t->nstrs - 8; i--)
        if (strcmp(t->strs[i], s) == 0)   /* cheap reuse of recent names */
            return t->strs[i];
    if (t->nstrs == t->cap_strs) {
        int cap = t->cap_strs ? 2 * t->cap_strs : 64;
        char **n = realloc(t->strs, sizeof(char *) * (size_t)cap);
        if (!n)
            return NULL;
        t->strs = n;
        t->cap_strs = cap;
    }
    char *d = strdup(s);
    if (d)
        t->strs[t->nstrs++] = d;
    return d;
}

int epx__topo_add(epx_topo_t *t, epx_topo_kind_t kind, int host,
                  const char *name)
{
    if (t->finished || (kind != EPX_TOPO_HOST && (host < 0 || host >= t->nobjs ||
                                                  t->objs[host].kind != EPX_TOPO_HOST)))
        return -1;
    if (t->nobjs == t->cap_objs) {
        int cap = t->cap_objs ? 2 * t->cap_objs : 64;
        epx_topo_obj_t *o = realloc(t->objs, sizeof(*o) * (size_t)cap);
        if (!o)
            return -1;
        t->objs = o;
        topo_gpu_dom_t *g = realloc(t->gdom, sizeof(*g) * (size_t)cap);
        if (!g)
            return -1;
        t->gdom = g;
        t->cap_objs = cap;
    }
    int i = t->nobjs;
    epx_topo_obj_t *o = &t->objs[i];
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    o->index = i;
    o->host = kind == EPX_TOPO_HOST ? i : host;
    o->cpu = o->os_index = o->tray = o->slot = o->domain = o->clique = -1;
    if (name && !(o->name = epx__topo_str(t, name)))
        return -1;
    t->gdom[i].id = NULL;
    t->gdom[i].clique = -1;
    t->nobjs++;
    return i;
}

int epx__topo_find(const epx_topo_t *t, int host, const char *name)
{
    for (int i = 0; i < t->nobjs; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        if (!o->name || strcmp(o->name, name))
            continue;
        if (host < 0 ? o->kind == EPX_TOPO_HOST
                     : o->host == host && o->kind != EPX_TOPO_HOST)
            return i;
    }
    return -1;
}

epx_status_t epx__topo_link(epx_topo_t *t, int a, int b, epx_link_class_t cls,
                            int count, double bw_gbs, double lat_us)
{
    if (t->finished || a < 0 || b < 0 || a >= t->nobjs || b >= t->nobjs ||
        a == b || (unsigned)cls > EPX_LINK_NET || count < 0 || bw_gbs < 0 ||
        lat_us < 0)
        return epx__error(EPX_ERR_INVALID,
                          "topo: bad link %d-%d (class %d, count %d, %g GB/s)",
                          a, b, (int)cls, count, bw_gbs);
    if (t->nlinks == t->cap_links) {
        int cap = t->cap_links ? 2 * t->cap_links : 64;
        epx_topo_link_t *l = realloc(t->links, sizeof(*l) * (size_t)cap);
        if (!l)
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        t->links = l;
        t->cap_links = cap;
    }
    t->links[t->nlinks++] = (epx_topo_link_t){ a < b ? a : b, a < b ? b : a,
                                               cls, count, bw_gbs, lat_us };
    return EPX_OK;
}

epx_status_t epx__topo_gpu_domain(epx_topo_t *t, int gpu, const char *id,
                                  int clique)
{
    if (gpu < 0 || gpu >= t->nobjs || t->objs[gpu].kind != EPX_TOPO_GPU)
        return epx__error(EPX_ERR_INVALID, "topo: object %d is not a GPU", gpu);
    if (id && !(id = epx__topo_str(t, id)))
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    t->gdom[gpu].id = id;
    t->gdom[gpu].clique = id ? clique : -1;
    return EPX_OK;
}

static int find_domain(const epx_topo_t *t, epx_domain_kind_t kind,
                       const char *id)
{
    for (int d = 0; d < t->ndomains; d++)
        if (t->domains[d].kind == kind && strcmp(t->domains[d].id, id) == 0)
            return d;
    return -1;
}

/* Domains: NVLink domains by id in order of first appearance, then one
 * host domain per host; members in object order; cliques numbered densely per
 * domain in order of first appearance. */
epx_status_t epx__topo_finish(epx_topo_t *t)
{
    if (t->finished)
        return EPX_OK;
    int n = t->nobjs, limit = t->max_domain_gpus > 0 ? t->max_domain_gpus : 72;
    t->domains = calloc((size_t)n + 1, sizeof(*t->domains));
    t->members = malloc(sizeof(int) * ((size_t)n + 1));
    int *dom_of = malloc(sizeof(int) * ((size_t)n + 1));
    int *cliques = malloc(sizeof(int) * ((size_t)n + 1));   /* raw ids seen */
    if (!t->domains || !t->members || !dom_of || !cliques) {
        free(dom_of);
        free(cliques);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    /* Pass 1: create domains (NVLink ones first) and count members. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            const epx_topo_obj_t *o = &t->objs[i];
            epx_domain_kind_t kind;
            const char *id;
            if (pass == 0)
                dom_of[i] = -1;
            if (pass == 0 && o->kind == EPX_TOPO_GPU && t->gdom[i].id) {
                kind = EPX_DOMAIN_NVLINK;
                id = t->gdom[i].id;
            } else if (pass == 1 && o->kind == EPX_TOPO_HOST) {
                kind = EPX_DOMAIN_HOST;
                id = o->name ? o->name : "";
            } else {
                continue;
            }
            int d = find_domain(t, kind, id);
            if (d < 0) {
                d = t->ndomains++;
                t->domains[d].index = d;
                t->domains[d].kind = kind;
                t->domains[d].id = id;
            }
            dom_of[i] = d;
            t->domains[d].num_members++;
        }
    /* Pass 2: member lists, cliques, per-GPU NVLink bandwidth. */
    int at = 0;
    for (int d = 0; d < t->ndomains; d++) {
        epx_topo_domain_t *dm = &t->domains[d];
        if (dm->kind == EPX_DOMAIN_NVLINK && dm->num_members > limit) {
            epx_status_t st = epx__error(EPX_ERR_INVALID,
                "topo: NVLink domain '%s' has %d GPUs, more than %d "
                "(declare the domain's size to allow it)", dm->id,
                dm->num_members, limit);
            free(dom_of);
            free(cliques);
            return st;
        }
        dm->members = t->members + at;
        int k = 0, nclq = 0;
        double bw = 0;
        for (int i = 0; i < n; i++) {
            if (dom_of[i] != d)
                continue;
            t->members[at + k++] = i;
            epx_topo_obj_t *o = &t->objs[i];
            if (dm->kind != EPX_DOMAIN_NVLINK)
                continue;
            o->domain = d;
            int c = 0;
            while (c < nclq && cliques[c] != t->gdom[i].clique)
                c++;
            if (c == nclq)
                cliques[nclq++] = t->gdom[i].clique;
            o->clique = c;
            if (bw == 0 || (o->nvlink_gbs > 0 && o->nvlink_gbs < bw))
                bw = o->nvlink_gbs;
        }
        dm->num_cliques = dm->kind == EPX_DOMAIN_NVLINK ? nclq : 0;
        dm->nvlink_gbs = dm->kind == EPX_DOMAIN_NVLINK ? bw : 0;
        at += k;
    }
    free(dom_of);
    free(cliques);
    t->finished = 1;
    return EPX_OK;
}

int epx_topo_num_objs(const epx_topo_t *t) { return t ? t->nobjs : 0; }
int epx_topo_num_links(const epx_topo_t *t) { return t ? t->nlinks : 0; }
int epx_topo_num_domains(const epx_topo_t *t) { return t ? t->ndomains : 0; }
const char *epx_topo_name(const epx_topo_t *t) { return t ? t->name : NULL; }

const epx_topo_obj_t *epx_topo_obj(const epx_topo_t *t, int i)
{
    return t && i >= 0 && i < t->nobjs ? &t->objs[i] : NULL;
}
const epx_topo_link_t *epx_topo_link(const epx_topo_t *t, int i)
{
    return t && i >= 0 && i < t->nlinks ? &t->links[i] : NULL;
}
const epx_topo_domain_t *epx_topo_domain(const epx_topo_t *t, int i)
{
    return t && i >= 0 && i < t->ndomains ? &t->domains[i] : NULL;
}

/* Fastest NIC of a host, preferring one on `cpu`; its bandwidth or 0. */
static double host_nic_gbs(const epx_topo_t *t, int host, int cpu)
{
    double best = 0, local = 0;
    for (int i = 0; i < t->nobjs; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        if (o->kind != EPX_TOPO_NIC || o->host != host)
            continue;
        if (o->nic_gbs > best)
            best = o->nic_gbs;
        if (cpu >= 0 && o->cpu == cpu && o->nic_gbs > local)
            local = o->nic_gbs;
    }
    return local > 0 ? local : best;
}

epx_status_t epx_topo_path_between(const epx_topo_t *t, int a, int b,
                                   epx_topo_path_t *path)
{
    if (!t || !path || a < 0 || b < 0 || a >= t->nobjs || b >= t->nobjs)
        return epx__error(EPX_ERR_INVALID, "topo: no objects %d and %d", a, b);
    const epx_topo_obj_t *oa = &t->objs[a], *ob = &t->objs[b];
    epx_topo_path_t p = { EPX_LINK_SELF, 0, 0 };
    if (a == b)
        goto done;
    /* An explicit link wins when it is at least as near as the rules. */
    int best = -1;
    for (int i = 0; i < t->nlinks; i++) {
        const epx_topo_link_t *l = &t->links[i];
        if (((l->a == a && l->b == b) || (l->a == b && l->b == a)) &&
            (best < 0 || l->cls < t->links[best].cls ||
             (l->cls == t->links[best].cls && l->bw_gbs > t->links[best].bw_gbs)))
            best = i;
    }
    if (oa->domain >= 0 && oa->domain == ob->domain) {
        p.cls = EPX_LINK_NVLINK;
        p.bw_gbs = oa->nvlink_gbs < ob->nvlink_gbs ? oa->nvlink_gbs : ob->nvlink_gbs;
        p.lat_us = default_lat_us[EPX_LINK_NVLINK];
    } else if (oa->host != ob->host) {
        double ba = host_nic_gbs(t, oa->host, oa->cpu);
        double bb = host_nic_gbs(t, ob->host, ob->cpu);
        p.cls = EPX_LINK_NET;
        p.bw_gbs = ba < bb ? ba : bb;
        p.lat_us = default_lat_us[EPX_LINK_NET];
    } else {
        p.cls = oa->cpu >= 0 && oa->cpu == ob->cpu ? EPX_LINK_NODE : EPX_LINK_SYS;
        p.lat_us = default_lat_us[p.cls];
    }
    if (best >= 0 && t->links[best].cls <= p.cls) {
        const epx_topo_link_t *l = &t->links[best];
        p.cls = l->cls;
        p.bw_gbs = l->bw_gbs;
        p.lat_us = l->lat_us > 0 ? l->lat_us : default_lat_us[l->cls];
    }
done:
    *path = p;
    return EPX_OK;
}

epx_status_t epx__topo_set_ranks(epx_topo_t *t, int nranks, const int *host,
                                 const int *gpu)
{
    int *h = malloc(sizeof(int) * (size_t)(nranks > 0 ? nranks : 1));
    int *g = malloc(sizeof(int) * (size_t)(nranks > 0 ? nranks : 1));
    int *d = malloc(sizeof(int) * (size_t)(nranks > 0 ? nranks : 1));
    if (!h || !g || !d) {
        free(h); free(g); free(d);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    for (int r = 0; r < nranks; r++) {
        h[r] = host[r];
        g[r] = gpu[r];
        d[r] = g[r] >= 0 && t->objs[g[r]].domain >= 0
            ? t->objs[g[r]].domain
            : find_domain(t, EPX_DOMAIN_HOST, t->objs[h[r]].name ? t->objs[h[r]].name : "");
    }
    free(t->rank_host); free(t->rank_gpu); free(t->rank_domain);
    t->rank_host = h;
    t->rank_gpu = g;
    t->rank_domain = d;
    t->nranks = nranks;
    return EPX_OK;
}

epx_status_t epx_topo_place(epx_topo_t *t, int nranks)
{
    if (!t || !t->finished || nranks < 1)
        return epx__error(EPX_ERR_INVALID,
                          "topo: place needs a finished map and nranks >= 1");
    int ngpus = 0, nhosts = 0;
    for (int i = 0; i < t->nobjs; i++) {
        ngpus += t->objs[i].kind == EPX_TOPO_GPU;
        nhosts += t->objs[i].kind == EPX_TOPO_HOST;
    }
    if (nhosts == 0)
        return epx__error(EPX_ERR_INVALID, "topo: '%s' has no host", t->name);
    if (ngpus > 0 && nranks > ngpus)
        return epx__error(EPX_ERR_RANGE,
                          "topo: %d ranks but '%s' has %d GPUs (one rank per GPU)",
                          nranks, t->name, ngpus);
    int *host = malloc(sizeof(int) * (size_t)nranks);
    int *gpu = malloc(sizeof(int) * (size_t)nranks);
    if (!host || !gpu) {
        free(host); free(gpu);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    int per_host = (nranks + nhosts - 1) / nhosts, r = 0;
    for (int i = 0; i < t->nobjs && r < nranks; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        if (ngpus > 0 && o->kind == EPX_TOPO_GPU) {
            host[r] = o->host;
            gpu[r++] = i;
        } else if (ngpus == 0 && o->kind == EPX_TOPO_HOST) {
            for (int k = 0; k < per_host && r < nranks; k++) {
                host[r] = i;
                gpu[r++] = -1;
            }
        }
    }
    epx_status_t st = epx__topo_set_ranks(t, nranks, host, gpu);
    free(host);
    free(gpu);
    return st;
}

int epx_topo_num_ranks(const epx_topo_t *t) { return t ? t->nranks : 0; }
int epx_topo_rank_host(const epx_topo_t *t, int r)
{
    return t && r >= 0 && r < t->nranks ? t->rank_host[r] : -1;
}
int epx_topo_rank_gpu(const epx_topo_t *t, int r)
{
    return t && r >= 0 && r < t->nranks ? t->rank_gpu[r] : -1;
}
int epx_topo_rank_domain(const epx_topo_t *t, int r)
{
    return t && r >= 0 && r < t->nranks ? t->rank_domain[r] : -1;
}

epx_status_t epx_topo_rank_path(const epx_topo_t *t, int a, int b,
                                epx_topo_path_t *path)
{
    if (!t || a < 0 || b < 0 || a >= t->nranks || b >= t->nranks)
        return epx__error(EPX_ERR_INVALID, "topo: no ranks %d and %d in a map "
                          "of %d ranks", a, b, t ? t->nranks : 0);
    int oa = t->rank_gpu[a] >= 0 ? t->rank_gpu[a] : t->rank_host[a];
    int ob = t->rank_gpu[b] >= 0 ? t->rank_gpu[b] : t->rank_host[b];
    return epx_topo_path_between(t, oa, ob, path);
}

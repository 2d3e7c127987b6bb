/*
 * Merge maps (every rank's probe) into one: hosts are told apart by name;
 * the first map that describes a host wins, so ranks sharing a host
 * contribute it once.  Objects keep their order (parts in order, objects in
 * order), which makes the merged map the same on every rank.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "topology/model.h"

static epx_status_t copy_part(epx_topo_t *out, const epx_topo_t *p, int *map)
{
    for (int i = 0; i < p->nobjs; i++)
        map[i] = -1;
    for (int i = 0; i < p->nobjs; i++) {
        const epx_topo_obj_t *o = &p->objs[i];
        int host;
        if (o->kind == EPX_TOPO_HOST) {
            if (epx__topo_find(out, -1, o->name ? o->name : "") >= 0)
                continue;            /* described by an earlier part */
            host = -1;
        } else if ((host = map[o->host]) < 0) {
            continue;                /* its host was skipped */
        }
        int j = epx__topo_add(out, o->kind, host, o->name);
        if (j < 0)
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory merging");
        epx_topo_obj_t *n = epx__topo_objw(out, j);
        epx_topo_obj_t keep = *n;
        *n = *o;                     /* then fix what must be re-owned */
        n->index = j;
        n->host = keep.host;
        n->name = keep.name;
        n->cpu = o->cpu >= 0 ? map[o->cpu] : -1;
        n->domain = n->clique = -1;  /* recomputed by finish */
        if ((o->pci && !(n->pci = epx__topo_str(out, o->pci))) ||
            (o->model && !(n->model = epx__topo_str(out, o->model))) ||
            (o->arch && !(n->arch = epx__topo_str(out, o->arch))) ||
            (o->chassis && !(n->chassis = epx__topo_str(out, o->chassis))))
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory merging");
        map[i] = j;
        if (o->kind == EPX_TOPO_GPU && p->gdom[i].id) {
            epx_status_t st = epx__topo_gpu_domain(out, j, p->gdom[i].id,
                                                   p->gdom[i].clique);
            if (st != EPX_OK)
                return st;
        }
    }
    for (int i = 0; i < p->nlinks; i++) {
        const epx_topo_link_t *l = &p->links[i];
        if (map[l->a] < 0 || map[l->b] < 0)
            continue;
        epx_status_t st = epx__topo_link(out, map[l->a], map[l->b], l->cls,
                                         l->count, l->bw_gbs, l->lat_us);
        if (st != EPX_OK)
            return st;
    }
    return EPX_OK;
}

epx_status_t epx__topo_merge(epx_topo_t *const *parts, int n, epx_topo_t **out)
{
    if (n < 1 || !parts || !out)
        return epx__error(EPX_ERR_INVALID, "topo: nothing to merge");
    epx_topo_t *m = epx__topo_new(parts[0]->name);
    if (!m)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory merging");
    epx_status_t st = EPX_OK;
    for (int k = 0; k < n && st == EPX_OK; k++) {
        const epx_topo_t *p = parts[k];
        int *map = malloc(sizeof(int) * (size_t)(p->nobjs > 0 ? p->nobjs : 1));
        if (!map) {
            st = epx__error(EPX_ERR_NOMEM, "topo: out of memory merging");
            break;
        }
        if (p->max_domain_gpus > m->max_domain_gpus)
            m->max_domain_gpus = p->max_domain_gpus;
        st = copy_part(m, p, map);
        free(map);
    }
    if (st != EPX_OK) {
        epx_topo_destroy(m);
        return st;
    }
    *out = m;
    return EPX_OK;
}

/*
 * The topology map in memory and the builder every source of it uses
 * (probes, the description loader, the merge).  Build with epx__topo_new,
 * epx__topo_add, epx__topo_link, epx__topo_gpu_domain; then
 * epx__topo_finish computes the domains and cliques, and the map is
 * read-only from then on.
 */
#ifndef EPX_TOPO_MODEL_H
#define EPX_TOPO_MODEL_H

#include "epx.h"

typedef struct topo_gpu_dom {  /* builder-side domain key of a GPU */
    const char *id;            /* NULL: no NVLink domain */
    int clique;
} topo_gpu_dom_t;

struct epx_topo {
    char *name;                /* system name ("gb200-nvl72", "probe") */
    int nobjs, cap_objs;
    epx_topo_obj_t *objs;
    topo_gpu_dom_t *gdom;      /* [cap_objs], GPUs only */
    int nlinks, cap_links;
    epx_topo_link_t *links;
    int ndomains;
    epx_topo_domain_t *domains;
    int *members;              /* storage of every domain's members */
    int max_domain_gpus;       /* declared size limit; 0: 72 */
    int nranks;
    int *rank_host, *rank_gpu, *rank_domain;
    char **strs;               /* owned strings */
    int nstrs, cap_strs;
    int finished;
};

epx_topo_t *epx__topo_new(const char *name);
/* Copy of s owned by the map (NULL stays NULL); NULL on no memory. */
const char *epx__topo_str(epx_topo_t *t, const char *s);
/* New object with every optional field unknown (-1, 0, NULL); `host` is
 * the host's index (ignored for a host).  Returns the index, or -1. */
int epx__topo_add(epx_topo_t *t, epx_topo_kind_t kind, int host,
                  const char *name);
/* Writable object; valid until the next epx__topo_add (which may move
 * the array). */
static inline epx_topo_obj_t *epx__topo_objw(epx_topo_t *t, int i)
{
    return &t->objs[i];
}
epx_status_t epx__topo_link(epx_topo_t *t, int a, int b, epx_link_class_t cls,
                            int count, double bw_gbs, double lat_us);
/* GPU `gpu` belongs to the NVLink domain named `id` (NULL: none). */
epx_status_t epx__topo_gpu_domain(epx_topo_t *t, int gpu, const char *id,
                                  int clique);
/* Index of the object named `name` on host `host` (or the host named
 * `name` when host < 0), or -1. */
int epx__topo_find(const epx_topo_t *t, int host, const char *name);
/* Domains (NVLink by id, one host domain per host), cliques, checks.
 * More than max_domain_gpus (default 72) GPUs in one domain is an error. */
epx_status_t epx__topo_finish(epx_topo_t *t);
/* Rank table of a finished map (placement rule of epx.h). */
epx_status_t epx__topo_set_ranks(epx_topo_t *t, int nranks, const int *host,
                                 const int *gpu);

/* Description text <-> map (topology/load.c, topology/export.c).
 * `origin` names the text in error messages (a file path). */
epx_status_t epx__topo_from_json(const char *text, const char *origin,
                                 epx_topo_t **topo);
epx_status_t epx__topo_to_json(const epx_topo_t *t, char **text);

/* Probes (topology/probe_*.c): each adds what it finds to `t` under host
 * `host`; a missing library or device is not an error (logged at info). */
epx_status_t epx__topo_probe_hwloc(epx_topo_t *t, int host,
                                   const char *xml_path);
epx_status_t epx__topo_probe_nvml(epx_topo_t *t, int host);
epx_status_t epx__topo_probe_cuda(epx_topo_t *t, int host);

/* Merge several maps (e.g. every rank's probe): hosts with the same name
 * are one host (the first copy wins).  The result is not finished. */
epx_status_t epx__topo_merge(epx_topo_t *const *parts, int n,
                             epx_topo_t **out);

#endif /* EPX_TOPO_MODEL_H */

/*
 * epx-topo --ranks N: the placement epx_topo_place made (one rank per GPU
 * in map order; without GPUs, blocks of ranks per host) and each rank's
 * host, GPU and domain.
 */
#include <stdlib.h>
#include <string.h>

#include "topology/tool.h"

int tool_view_ranks(const tool_map_t *m, FILE *out)
{
    const epx_topo_t *t = m->topo;
    int n = epx_topo_num_ranks(t), nd = epx_topo_num_domains(t);
    int *seen_h = calloc((size_t)m->nobjs + 1, sizeof(int));
    int *seen_d = calloc((size_t)nd + 1, sizeof(int));
    if (!seen_h || !seen_d) {
        free(seen_h);
        free(seen_d);
        fprintf(stderr, "epx-topo: out of memory\n");
        return 1;
    }
    int hosts = 0, doms = 0, wh = 4, wg = 3;
    char nb[32];
    for (int r = 0; r < n; r++) {
        int h = epx_topo_rank_host(t, r), g = epx_topo_rank_gpu(t, r);
        int d = epx_topo_rank_domain(t, r);
        hosts += h >= 0 && !seen_h[h]++;
        doms += d >= 0 && !seen_d[d]++;
        int len = (int)strlen(tool_obj_name(epx_topo_obj(t, h), nb, sizeof(nb)));
        wh = len > wh ? len : wh;
        if (g >= 0) {
            len = (int)strlen(tool_obj_name(epx_topo_obj(t, g), nb, sizeof(nb)));
            wg = len > wg ? len : wg;
        }
    }
    fprintf(out, "System %s: %d %s on %d %s in %d %s\n", epx_topo_name(t), n,
            n == 1 ? "rank" : "ranks", hosts, hosts == 1 ? "host" : "hosts", doms,
            doms == 1 ? "domain" : "domains");
    fprintf(out, "%-6s%-*s  %-*s  %-6s%s\n", "rank", wh, "host", wg, "gpu",
            "tray", "domain");
    for (int r = 0; r < n; r++) {
        int h = epx_topo_rank_host(t, r), g = epx_topo_rank_gpu(t, r);
        const epx_topo_domain_t *d = epx_topo_domain(t, epx_topo_rank_domain(t, r));
        const epx_topo_obj_t *go = g >= 0 ? epx_topo_obj(t, g) : NULL;
        char tray[16] = "-";
        if (go && go->tray >= 0)
            snprintf(tray, sizeof(tray), "%d", go->tray);
        fprintf(out, "%-6d%-*s  ", r, wh,
                tool_obj_name(epx_topo_obj(t, h), nb, sizeof(nb)));
        fprintf(out, "%-*s  %-6s", wg, go ? tool_obj_name(go, nb, sizeof(nb)) : "-",
                tray);
        if (d)
            fprintf(out, "%d (%s %s)\n", d->index,
                    d->kind == EPX_DOMAIN_NVLINK ? "NVLink" : "host", d->id);
        else
            fprintf(out, "-\n");
    }
    free(seen_h);
    free(seen_d);
    return 0;
}

/*
 * epx-topo --domains: every domain of the map (epx_topo_domain): NVLink
 * domains with their size, cliques, per-GPU NVLink bandwidth and the
 * hosts they span (with their member GPUs), then the host domains.
 */
#include <stdlib.h>

#include "topology/tool.h"

static void print_nvlink(const tool_map_t *m, const epx_topo_domain_t *d,
                         FILE *out)
{
    const epx_topo_t *t = m->topo;
    char nb[32], bw[32];
    int *gpus_on = calloc((size_t)m->nhosts + 1, sizeof(int));
    int *per_clique = calloc((size_t)d->num_cliques + 1, sizeof(int));
    if (!gpus_on || !per_clique) {
        free(gpus_on);
        free(per_clique);
        return;
    }
    int nhosts = 0;
    for (int k = 0; k < d->num_members; k++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, d->members[k]);
        int hp = m->host_pos[o->index];
        if (hp >= 0 && gpus_on[hp]++ == 0)
            nhosts++;
        if (o->clique >= 0 && o->clique < d->num_cliques)
            per_clique[o->clique]++;
    }
    fprintf(out, "  size     %d %s on %d %s\n", d->num_members,
            d->num_members == 1 ? "GPU" : "GPUs", nhosts,
            nhosts == 1 ? "host" : "hosts");
    fprintf(out, "  cliques  %d", d->num_cliques);
    for (int c = 0; c < d->num_cliques; c++)
        fprintf(out, "%s%d: %d GPUs", c ? ", " : " (", c, per_clique[c]);
    fprintf(out, "%s\n", d->num_cliques ? ")" : "");
    fprintf(out, "  NVLink   %s GB/s per GPU per direction\n",
            tool_fmt_num(d->nvlink_gbs, bw, sizeof(bw)));
    const char *head = "  hosts    ";
    for (int hp = 0; hp < m->nhosts; hp++) {
        if (!gpus_on[hp])
            continue;
        fprintf(out, "%s%s:", head,
                tool_obj_name(epx_topo_obj(t, m->hosts[hp]), nb, sizeof(nb)));
        for (int k = 0; k < d->num_members; k++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, d->members[k]);
            if (m->host_pos[o->index] != hp)
                continue;
            fprintf(out, " %s", tool_obj_name(o, nb, sizeof(nb)));
            if (d->num_cliques > 1)
                fprintf(out, "/c%d", o->clique);
        }
        fputc('\n', out);
        head = "           ";
    }
    free(gpus_on);
    free(per_clique);
}

static void print_host(const tool_map_t *m, const epx_topo_domain_t *d,
                       FILE *out)
{
    const epx_topo_t *t = m->topo;
    for (int k = 0; k < d->num_members; k++) {
        int h = d->members[k];
        int cpus = 0, gpus = 0, nics = 0, nvl = 0;
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->host != h || o->kind == EPX_TOPO_HOST)
                continue;
            cpus += o->kind == EPX_TOPO_CPU;
            gpus += o->kind == EPX_TOPO_GPU;
            nvl += o->kind == EPX_TOPO_GPU && o->domain >= 0;
            nics += o->kind == EPX_TOPO_NIC;
        }
        fprintf(out, "  size     1 host: %d %s, %d %s, %d %s\n", cpus,
                cpus == 1 ? "CPU" : "CPUs", gpus, gpus == 1 ? "GPU" : "GPUs",
                nics, nics == 1 ? "NIC" : "NICs");
        if (gpus)
            fprintf(out, "  GPUs     %d in an NVLink domain, %d not\n", nvl,
                    gpus - nvl);
    }
}

int tool_view_domains(const tool_map_t *m, FILE *out)
{
    const epx_topo_t *t = m->topo;
    int n = epx_topo_num_domains(t);
    fprintf(out, "System %s: %d %s (%d NVLink, %d host)\n", epx_topo_name(t), n,
            n == 1 ? "domain" : "domains", m->ndomains_nvlink,
            n - m->ndomains_nvlink);
    for (int i = 0; i < n; i++) {
        const epx_topo_domain_t *d = epx_topo_domain(t, i);
        int nv = d->kind == EPX_DOMAIN_NVLINK;
        fprintf(out, "\nDomain %d: %s, id %s\n", d->index, nv ? "NVLink" : "host",
                d->id ? d->id : "");
        if (nv)
            print_nvlink(m, d, out);
        else
            print_host(m, d, out);
    }
    return 0;
}

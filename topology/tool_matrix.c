/*
 * epx-topo --matrix: the path class between every two GPUs and NICs, in
 * the manner of `nvidia-smi topo -m`, one block per host so that a 72-GPU
 * rack stays readable (18 blocks of 4 GPUs rather than a 72-column
 * table).  What a block cannot show, the paths to the other hosts' GPUs,
 * its last column sums up per class ("NV18:68 NET:72").
 */
#include <stdlib.h>
#include <string.h>

#include "topology/tool.h"

static const char legend[] =
"Legend:\n"
"  X    = self\n"
"  NV#  = NVLink, # links bonded (directly or through NVSwitches)\n"
"  C2C  = chip-to-chip link (NVLink-C2C between a GPU and its Grace CPU)\n"
"  PIX  = PCIe through at most one PCIe switch\n"
"  PXB  = PCIe through several PCIe switches, no host bridge\n"
"  PHB  = PCIe through a PCIe host bridge (the CPU)\n"
"  NODE = PCIe across the host bridges of one NUMA node\n"
"  SYS  = PCIe and the interconnect between NUMA nodes (UPI, xGMI, Grace-Grace)\n"
"  NET  = the network, through NICs (another host)\n";

#define LABEL 24

/* "NV18:68 NET:72": paths from `i` to the GPUs of other hosts, per label
 * in order of first appearance. */
static void print_remote(const tool_map_t *m, int i, FILE *out)
{
    const epx_topo_t *t = m->topo;
    const epx_topo_obj_t *o = epx_topo_obj(t, i);
    char (*labels)[LABEL] = malloc(sizeof(*labels) * (size_t)(m->nobjs + 1));
    int *counts = calloc((size_t)m->nobjs + 1, sizeof(int));
    int n = 0;
    if (!labels || !counts) {
        free(labels);
        free(counts);
        fputs("?", out);
        return;
    }
    for (int j = 0; j < m->nobjs; j++) {
        const epx_topo_obj_t *p = epx_topo_obj(t, j);
        if (p->kind != EPX_TOPO_GPU || p->host == o->host)
            continue;
        char lb[LABEL];
        tool_path_label(t, i, j, lb, sizeof(lb));
        int k = 0;
        while (k < n && strcmp(labels[k], lb))
            k++;
        if (k == n)
            memcpy(labels[n++], lb, sizeof(lb));
        counts[k]++;
    }
    for (int k = 0; k < n; k++)
        fprintf(out, "%s%s:%d", k ? " " : "", labels[k], counts[k]);
    free(labels);
    free(counts);
}

static void print_block(const tool_map_t *m, int h, int remote, FILE *out)
{
    const epx_topo_t *t = m->topo;
    char nb[32];
    int *objs = malloc(sizeof(int) * (size_t)(m->nobjs + 1));
    int n = 0, ngpus = 0, renamed = 0;
    if (!objs)
        return;
    for (int pass = 0; pass < 2; pass++)   /* GPUs, then NICs */
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->host != h || o->kind != (pass ? EPX_TOPO_NIC : EPX_TOPO_GPU))
                continue;
            objs[n++] = i;
            if (!pass) {
                char want[32];
                snprintf(want, sizeof(want), "gpu%d", m->local[i]);
                renamed |= !o->name || strcmp(o->name, want) != 0;
                ngpus++;
            }
        }
    fprintf(out, "Host %s\n", tool_obj_name(epx_topo_obj(t, h), nb, sizeof(nb)));
    if (n == 0) {
        fprintf(out, "  (no GPUs or NICs)\n\n");
        free(objs);
        return;
    }
    /* One width for every cell: the widest label or header, plus 2. */
    int w = 4;
    char lb[LABEL], hd[LABEL];
    for (int r = 0; r < n; r++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, objs[r]);
        int len = snprintf(hd, sizeof(hd), "%s%d",
                           o->kind == EPX_TOPO_GPU ? "GPU" : "NIC", m->local[objs[r]]);
        w = len > w ? len : w;
        for (int c = 0; c < n; c++) {
            len = (int)strlen(tool_path_label(t, objs[r], objs[c], lb, sizeof(lb)));
            w = len > w ? len : w;
        }
    }
    w += 2;
    fprintf(out, "%*s", w, "");
    for (int c = 0; c < n; c++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, objs[c]);
        snprintf(hd, sizeof(hd), "%s%d", o->kind == EPX_TOPO_GPU ? "GPU" : "NIC",
                 m->local[objs[c]]);
        fprintf(out, "%-*s", w, hd);
    }
    /* no trailing blanks: goldens and diffs stay clean */
    if (remote)
        fprintf(out, "%-14s%-15s%s\n", "CPU Affinity", "NUMA Affinity",
                "GPUs on other hosts");
    else
        fprintf(out, "%-14s%s\n", "CPU Affinity", "NUMA Affinity");
    for (int r = 0; r < n; r++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, objs[r]);
        snprintf(hd, sizeof(hd), "%s%d", o->kind == EPX_TOPO_GPU ? "GPU" : "NIC",
                 m->local[objs[r]]);
        fprintf(out, "%-*s", w, hd);
        for (int c = 0; c < n; c++)
            fprintf(out, "%-*s", w, tool_path_label(t, objs[r], objs[c], lb, sizeof(lb)));
        const epx_topo_obj_t *cpu = o->cpu >= 0 ? epx_topo_obj(t, o->cpu) : NULL;
        char numa[16] = "N/A";
        if (cpu && cpu->os_index >= 0)
            snprintf(numa, sizeof(numa), "%d", cpu->os_index);
        fprintf(out, "%-14s", cpu ? tool_obj_name(cpu, nb, sizeof(nb)) : "N/A");
        if (remote) {
            fprintf(out, "%-15s", numa);
            print_remote(m, objs[r], out);
        } else {
            fputs(numa, out);
        }
        fputc('\n', out);
    }
    if (renamed) {
        fprintf(out, "GPU Legend:\n");
        for (int r = 0; r < ngpus; r++)
            fprintf(out, "  GPU%d: %s\n", m->local[objs[r]],
                    tool_obj_name(epx_topo_obj(t, objs[r]), nb, sizeof(nb)));
    }
    if (n > ngpus) {
        fprintf(out, "NIC Legend:\n");
        for (int r = ngpus; r < n; r++)
            fprintf(out, "  NIC%d: %s\n", m->local[objs[r]],
                    tool_obj_name(epx_topo_obj(t, objs[r]), nb, sizeof(nb)));
    }
    fputc('\n', out);
    free(objs);
}

int tool_view_matrix(const tool_map_t *m, int host, FILE *out)
{
    /* The last column only where there are GPUs on other hosts to reach. */
    int remote = m->nhosts > 1 && m->count[EPX_TOPO_GPU] > 0;
    fprintf(out, "System %s: paths between GPUs and NICs, per host\n\n",
            epx_topo_name(m->topo));
    for (int hp = 0; hp < m->nhosts; hp++)
        if (host < 0 || m->hosts[hp] == host)
            print_block(m, m->hosts[hp], remote, out);
    fputs(legend, out);
    return 0;
}

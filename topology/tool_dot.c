/*
 * epx-topo --dot and --svg: the map as a Graphviz graph.  One cluster per
 * host holding its CPUs, GPUs, NVSwitches and NICs; explicit links as
 * labelled edges; an object attached to a CPU gets a dotted edge to it
 * unless a link (to the CPU, or from a NIC to a GPU of that CPU) shows
 * where it sits.  GPU-NVSwitch NVLinks (18 per GPU on an NVL72) are drawn
 * as one edge from each GPU to a node per NVLink domain, and NICs of a
 * multi-host map meet at one "network" node, so big systems stay legible.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "topology/tool.h"

#ifndef EPX_DOT
#define EPX_DOT ""
#endif

/* A double-quoted DOT string: quotes and backslashes escaped, newlines
 * as Graphviz's centred line break "\n". */
static void put_q(FILE *out, const char *s)
{
    fputc('"', out);
    for (; s && *s; s++) {
        if (*s == '\n') {
            fputs("\\n", out);
            continue;
        }
        if (*s == '"' || *s == '\\')
            fputc('\\', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static const char *fill(epx_topo_kind_t k)
{
    switch (k) {
    case EPX_TOPO_CPU: return "#cfe2f3";
    case EPX_TOPO_GPU: return "#b6d7a8";
    case EPX_TOPO_NVSWITCH: return "#ffe599";
    case EPX_TOPO_NIC: return "#f4cccc";
    default: return "#ffffff";
    }
}

static void node(const tool_map_t *m, int i, FILE *out)
{
    const epx_topo_obj_t *o = epx_topo_obj(m->topo, i);
    char nb[32], buf[32], label[256];
    int n = snprintf(label, sizeof(label), "%s %s", tool_kind_str(o->kind),
                     tool_obj_name(o, nb, sizeof(nb)));
    if (o->model && n < (int)sizeof(label))
        n += snprintf(label + n, sizeof(label) - (size_t)n, "\n%s", o->model);
    if (o->kind == EPX_TOPO_CPU && o->os_index >= 0 && n < (int)sizeof(label))
        n += snprintf(label + n, sizeof(label) - (size_t)n, "\nNUMA %d", o->os_index);
    if (o->kind == EPX_TOPO_GPU && o->memory_bytes && n < (int)sizeof(label))
        n += snprintf(label + n, sizeof(label) - (size_t)n, "\n%s",
                      tool_fmt_gb(o->memory_bytes, buf, sizeof(buf)));
    if (o->kind == EPX_TOPO_NIC && o->nic_gbs > 0 && n < (int)sizeof(label))
        n += snprintf(label + n, sizeof(label) - (size_t)n, "\n%s Gb/s",
                      tool_fmt_num(o->nic_gbs * 8, buf, sizeof(buf)));
    for (int r = 0; o->kind == EPX_TOPO_GPU && r < epx_topo_num_ranks(m->topo); r++)
        if (epx_topo_rank_gpu(m->topo, r) == i && n < (int)sizeof(label))
            n += snprintf(label + n, sizeof(label) - (size_t)n, "\nrank %d", r);
    fprintf(out, "    o%d [label=", i);
    put_q(out, label);
    fprintf(out, ", fillcolor=\"%s\"];\n", fill(o->kind));
}

static int linked(const epx_topo_t *t, int a, int b)
{
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        if ((l->a == a && l->b == b) || (l->a == b && l->b == a))
            return 1;
    }
    return 0;
}

/* Is `i` linked to a GPU attached to CPU `cpu`?  Then that GPU's edge to
 * the CPU already shows where `i` sits. */
static int linked_gpu_on(const epx_topo_t *t, int i, int cpu)
{
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        int p = l->a == i ? l->b : l->b == i ? l->a : -1;
        if (p >= 0 && epx_topo_obj(t, p)->kind == EPX_TOPO_GPU &&
            epx_topo_obj(t, p)->cpu == cpu)
            return 1;
    }
    return 0;
}

/* A GPU-NVSwitch NVLink (drawn through the domain node)? */
static int gpu_switch(const epx_topo_t *t, const epx_topo_link_t *l)
{
    epx_topo_kind_t ka = epx_topo_obj(t, l->a)->kind, kb = epx_topo_obj(t, l->b)->kind;
    return l->cls == EPX_LINK_NVLINK &&
           ((ka == EPX_TOPO_GPU && kb == EPX_TOPO_NVSWITCH) ||
            (kb == EPX_TOPO_GPU && ka == EPX_TOPO_NVSWITCH));
}

/* NVLink domain of an NVSwitch: that of the first GPU linked to it. */
static int switch_domain(const epx_topo_t *t, int s)
{
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        if (!gpu_switch(t, l) || (l->a != s && l->b != s))
            continue;
        return epx_topo_obj(t, l->a == s ? l->b : l->a)->domain;
    }
    return -1;
}

int tool_view_dot(const tool_map_t *m, FILE *out)
{
    const epx_topo_t *t = m->topo;
    char nb[32], buf[32], label[128];
    fprintf(out, "graph ");
    put_q(out, epx_topo_name(t));
    fprintf(out, " {\n  graph [fontname=\"Helvetica\", label=");
    put_q(out, epx_topo_name(t));
    /* left to right: CPUs, GPUs, NICs, then the domain and network nodes;
     * hosts stack downwards, so a rack of 18 trays stays one column */
    fprintf(out, ", labelloc=t, rankdir=LR];\n"
                 "  node [fontname=\"Helvetica\", shape=box, style=\"rounded,filled\"];\n"
                 "  edge [fontname=\"Helvetica\", fontsize=10];\n");
    for (int hp = 0; hp < m->nhosts; hp++) {
        int h = m->hosts[hp];
        fprintf(out, "  subgraph cluster_h%d {\n    label=", h);
        int n = snprintf(label, sizeof(label), "host %s",
                         tool_obj_name(epx_topo_obj(t, h), nb, sizeof(nb)));
        /* CPU ranks (no GPU) are placed in blocks: first and last */
        int first = -1, last = -1;
        for (int r = 0; r < epx_topo_num_ranks(t); r++)
            if (epx_topo_rank_host(t, r) == h && epx_topo_rank_gpu(t, r) < 0) {
                first = first < 0 ? r : first;
                last = r;
            }
        if (first >= 0 && n < (int)sizeof(label))
            snprintf(label + n, sizeof(label) - (size_t)n,
                     first == last ? "\nrank %d" : "\nranks %d-%d", first, last);
        put_q(out, label);
        fprintf(out, ";\n");
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->host == h && o->kind != EPX_TOPO_HOST)
                node(m, i, out);
        }
        fprintf(out, "  }\n");
    }
    for (int d = 0; d < epx_topo_num_domains(t); d++) {
        const epx_topo_domain_t *dm = epx_topo_domain(t, d);
        if (dm->kind != EPX_DOMAIN_NVLINK)
            continue;
        snprintf(label, sizeof(label), "NVLink domain %d\n%s\n%d GPUs, %s GB/s per GPU",
                 d, dm->id, dm->num_members,
                 tool_fmt_num(dm->nvlink_gbs, buf, sizeof(buf)));
        fprintf(out, "  d%d [label=", d);
        put_q(out, label);
        fprintf(out, ", shape=ellipse, fillcolor=\"#d9d2e9\"];\n");
    }
    int net = m->nhosts > 1 && m->count[EPX_TOPO_NIC] > 0;
    if (net)
        fprintf(out, "  net [label=\"network\", shape=ellipse, fillcolor=\"#eeeeee\"];\n");
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        if (gpu_switch(t, l))
            continue;
        int n = snprintf(label, sizeof(label), "%s", epx_link_class_str(l->cls));
        if (l->count > 1)
            n += snprintf(label + n, sizeof(label) - (size_t)n, "%d", l->count);
        if (l->bw_gbs > 0)
            snprintf(label + n, sizeof(label) - (size_t)n, " %s GB/s",
                     tool_fmt_num(l->bw_gbs, buf, sizeof(buf)));
        fprintf(out, "  o%d -- o%d [label=", l->a, l->b);
        put_q(out, label);
        fprintf(out, "];\n");
    }
    for (int i = 0; i < m->nobjs; i++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, i);
        if (o->kind == EPX_TOPO_HOST || o->kind == EPX_TOPO_CPU)
            continue;
        if (o->cpu >= 0 && !linked(t, i, o->cpu) &&
            (o->kind == EPX_TOPO_GPU || !linked_gpu_on(t, i, o->cpu)))
            fprintf(out, "  o%d -- o%d [style=dotted];\n", o->cpu, i);
        if (o->kind == EPX_TOPO_GPU && o->domain >= 0) {
            fprintf(out, "  o%d -- d%d [label=\"NV", i, o->domain);
            if (o->nvlinks > 0)
                fprintf(out, "%d", o->nvlinks);
            fprintf(out, "\", color=\"#674ea7\"];\n");
        }
        if (o->kind == EPX_TOPO_NVSWITCH) {
            int d = switch_domain(t, i);
            if (d >= 0)
                fprintf(out, "  o%d -- d%d [style=dashed, color=\"#674ea7\"];\n", i, d);
        }
        if (o->kind == EPX_TOPO_NIC && net) {
            fprintf(out, "  o%d -- net", i);
            if (o->nic_gbs > 0)
                fprintf(out, " [label=\"%s Gb/s\"]",
                        tool_fmt_num(o->nic_gbs * 8, buf, sizeof(buf)));
            fprintf(out, ";\n");
        }
    }
    fprintf(out, "}\n");
    return 0;
}

/* `dot` from PATH, else the one configure found; NULL when neither. */
static const char *find_dot(char *buf, size_t len)
{
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n > 0 && snprintf(buf, len, "%.*s/dot", (int)n, path) < (int)len &&
            access(buf, X_OK) == 0)
            return buf;
        path = end ? end + 1 : NULL;
    }
    if (EPX_DOT[0] && access(EPX_DOT, X_OK) == 0)
        return EPX_DOT;
    return NULL;
}

int tool_view_svg(const tool_map_t *m, const char *path)
{
    char buf[4096];
    const char *dot = find_dot(buf, sizeof(buf));
    if (!dot) {
        fprintf(stderr, "epx-topo: --svg needs Graphviz's dot, not found in PATH "
                        "(install it: apt-get install graphviz); --dot prints "
                        "the graph\n");
        return 1;
    }
    int fd[2];
    if (pipe(fd) != 0) {
        fprintf(stderr, "epx-topo: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "epx-topo: fork: %s\n", strerror(errno));
        close(fd[0]);
        close(fd[1]);
        return 1;
    }
    if (pid == 0) {   /* dot -Tsvg -o PATH < graph: no shell, any file name */
        dup2(fd[0], STDIN_FILENO);
        close(fd[0]);
        close(fd[1]);
        execl(dot, "dot", "-Tsvg", "-o", path, (char *)NULL);
        fprintf(stderr, "epx-topo: cannot run %s: %s\n", dot, strerror(errno));
        _exit(127);
    }
    close(fd[0]);
    signal(SIGPIPE, SIG_IGN);   /* a dot that dies early is reported below */
    FILE *out = fdopen(fd[1], "w");
    if (!out) {
        close(fd[1]);
        waitpid(pid, NULL, 0);
        fprintf(stderr, "epx-topo: fdopen: %s\n", strerror(errno));
        return 1;
    }
    tool_view_dot(m, out);
    int werr = ferror(out);
    fclose(out);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (werr || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "epx-topo: %s -Tsvg -o %s failed\n", dot, path);
        return 1;
    }
    return 0;
}

/*
 * epx-topo tree view, in the manner of lstopo's text output:
 *   host > CPU (NUMA node) > GPUs, NVSwitches, NICs attached to it;
 * objects without a known CPU hang from the host.  Each explicit link is
 * listed under the endpoint a reader looks for it at (GPU before NIC
 * before CPU); GPU-NVSwitch NVLinks are summarized on the NVSwitch line
 * and by the GPU's NVLink line.
 */
#include <stdarg.h>
#include <string.h>

#include "topology/tool.h"

static const char *plural(int n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* Where a link is listed: the endpoint of lower rank (GPU 0, NIC 1,
 * CPU 2, NVSwitch 3, host 4); both endpoints when they tie. */
static int kind_rank(epx_topo_kind_t k)
{
    switch (k) {
    case EPX_TOPO_GPU: return 0;
    case EPX_TOPO_NIC: return 1;
    case EPX_TOPO_CPU: return 2;
    case EPX_TOPO_NVSWITCH: return 3;
    default: return 4;
    }
}

/* Appends ", field" (": field" first) to an object's line. */
static void field(FILE *out, const char **sep, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void field(FILE *out, const char **sep, const char *fmt, ...)
{
    va_list ap;
    fputs(*sep, out);
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    *sep = ", ";
}

static void print_links(const tool_map_t *m, int i, int indent, FILE *out)
{
    const epx_topo_t *t = m->topo;
    const epx_topo_obj_t *o = epx_topo_obj(t, i);
    const char *sep = NULL;
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        if (l->a != i && l->b != i)
            continue;
        const epx_topo_obj_t *p = epx_topo_obj(t, l->a == i ? l->b : l->a);
        if (p->kind == EPX_TOPO_NVSWITCH && o->kind == EPX_TOPO_GPU)
            continue;          /* summarized by the NVLink line */
        if (kind_rank(p->kind) < kind_rank(o->kind))
            continue;          /* listed under the other endpoint */
        char nb[32], hb[32], bw[32];
        if (!sep) {
            fprintf(out, "%*slinks", indent, "");
            sep = ": ";
        }
        field(out, &sep, "%s %s", epx_link_class_str(l->cls),
              tool_obj_name(p, nb, sizeof(nb)));
        if (p->host != o->host)
            fprintf(out, "@%s", tool_obj_name(epx_topo_obj(t, p->host), hb,
                                              sizeof(hb)));
        if (l->count > 1)
            fprintf(out, " x%d", l->count);
        if (l->bw_gbs > 0)
            fprintf(out, " %s GB/s", tool_fmt_num(l->bw_gbs, bw, sizeof(bw)));
    }
    if (sep)
        fputc('\n', out);
}

static void print_gpu(const tool_map_t *m, int i, int indent, FILE *out)
{
    const epx_topo_t *t = m->topo;
    const epx_topo_obj_t *o = epx_topo_obj(t, i);
    char nb[32], buf[32];
    const char *sep = ": ";
    fprintf(out, "%*sGPU %s", indent, "", tool_obj_name(o, nb, sizeof(nb)));
    if (o->model && o->arch)
        field(out, &sep, "%s (%s)", o->model, o->arch);
    else if (o->model || o->arch)
        field(out, &sep, "%s", o->model ? o->model : o->arch);
    if (o->memory_bytes)
        field(out, &sep, "%s", tool_fmt_gb(o->memory_bytes, buf, sizeof(buf)));
    if (o->pci)
        field(out, &sep, "PCI %s", o->pci);
    if (o->tray >= 0)
        field(out, &sep, "tray %d", o->tray);
    if (o->slot >= 0)
        field(out, &sep, "slot %d", o->slot);
    fputc('\n', out);

    fprintf(out, "%*sNVLink: ", indent + 2, "");
    if (o->nvlinks > 0 || o->nvlink_gbs > 0)
        fprintf(out, "%d %s, %s GB/s", o->nvlinks,
                plural(o->nvlinks, "link", "links"),
                tool_fmt_num(o->nvlink_gbs, buf, sizeof(buf)));
    else
        fprintf(out, "none");
    if (o->domain >= 0) {
        const epx_topo_domain_t *d = epx_topo_domain(t, o->domain);
        fprintf(out, "; domain %d (%s), clique %d", o->domain, d ? d->id : "?",
                o->clique);
    }
    fputc('\n', out);
    print_links(m, i, indent + 2, out);
}

static void print_nvswitch(const tool_map_t *m, int i, int indent, FILE *out)
{
    const epx_topo_t *t = m->topo;
    const epx_topo_obj_t *o = epx_topo_obj(t, i);
    char nb[32], bw[32];
    const char *sep = ": ";
    fprintf(out, "%*sNVSwitch %s", indent, "", tool_obj_name(o, nb, sizeof(nb)));
    if (o->model)
        field(out, &sep, "%s", o->model);
    if (o->pci)
        field(out, &sep, "PCI %s", o->pci);
    int links = 0, gpus = 0;
    double gbs = 0;
    for (int k = 0; k < epx_topo_num_links(t); k++) {
        const epx_topo_link_t *l = epx_topo_link(t, k);
        int p = l->a == i ? l->b : l->b == i ? l->a : -1;
        if (p < 0 || l->cls != EPX_LINK_NVLINK ||
            epx_topo_obj(t, p)->kind != EPX_TOPO_GPU)
            continue;
        links += l->count;
        gbs += l->bw_gbs;
        gpus++;
    }
    if (gpus)
        field(out, &sep, "NVLink: %d %s to %d %s, %s GB/s", links,
              plural(links, "link", "links"), gpus, plural(gpus, "GPU", "GPUs"),
              tool_fmt_num(gbs, bw, sizeof(bw)));
    fputc('\n', out);
    print_links(m, i, indent + 2, out);
}

static void print_nic(const tool_map_t *m, int i, int indent, FILE *out)
{
    const epx_topo_obj_t *o = epx_topo_obj(m->topo, i);
    char nb[32], buf[32];
    const char *sep = ": ";
    fprintf(out, "%*sNIC %s", indent, "", tool_obj_name(o, nb, sizeof(nb)));
    if (o->model)
        field(out, &sep, "%s", o->model);
    if (o->nic_gbs > 0)   /* line rate in Gb/s, as NICs are sold */
        field(out, &sep, "%s Gb/s", tool_fmt_num(o->nic_gbs * 8, buf, sizeof(buf)));
    if (o->pci)
        field(out, &sep, "PCI %s", o->pci);
    fputc('\n', out);
    print_links(m, i, indent + 2, out);
}

/* GPUs, NVSwitches, NICs of host `h` attached to CPU `cpu` (-1: none). */
static void print_attached(const tool_map_t *m, int h, int cpu, int indent,
                           FILE *out)
{
    static const epx_topo_kind_t order[] = { EPX_TOPO_GPU, EPX_TOPO_NVSWITCH,
                                             EPX_TOPO_NIC };
    for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++)
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(m->topo, i);
            if (o->host != h || o->kind != order[k] || o->cpu != cpu)
                continue;
            if (o->kind == EPX_TOPO_GPU)
                print_gpu(m, i, indent, out);
            else if (o->kind == EPX_TOPO_NVSWITCH)
                print_nvswitch(m, i, indent, out);
            else
                print_nic(m, i, indent, out);
        }
}

static void print_cpu(const tool_map_t *m, int i, FILE *out)
{
    const epx_topo_obj_t *o = epx_topo_obj(m->topo, i);
    char nb[32], buf[32];
    const char *sep = ": ";
    fprintf(out, "  CPU %s", tool_obj_name(o, nb, sizeof(nb)));
    if (o->os_index >= 0)
        field(out, &sep, "NUMA %d", o->os_index);
    if (o->model)
        field(out, &sep, "%s", o->model);
    if (o->memory_bytes)
        field(out, &sep, "%s", tool_fmt_gb(o->memory_bytes, buf, sizeof(buf)));
    fputc('\n', out);
    print_links(m, i, 4, out);
}

/* "2 CPUs, 8 GPUs, 8 NICs" of the objects in `count`, empty kinds left out. */
static void print_counts(const int *count, FILE *out)
{
    static const char *const one[] = { "host", "CPU", "GPU", "NVSwitch", "NIC" };
    static const char *const many[] = { "hosts", "CPUs", "GPUs", "NVSwitches",
                                        "NICs" };
    const char *sep = "";
    for (int k = 0; k <= EPX_TOPO_NIC; k++) {
        if (!count[k])
            continue;
        fprintf(out, "%s%d %s", sep, count[k], plural(count[k], one[k], many[k]));
        sep = ", ";
    }
    if (!*sep)
        fprintf(out, "nothing");
}

int tool_view_tree(const tool_map_t *m, int host, FILE *out)
{
    const epx_topo_t *t = m->topo;
    fprintf(out, "System %s: ", epx_topo_name(t));
    print_counts(m->count, out);
    fprintf(out, "; %d NVLink %s\n", m->ndomains_nvlink,
            plural(m->ndomains_nvlink, "domain", "domains"));
    for (int hp = 0; hp < m->nhosts; hp++) {
        int h = m->hosts[hp];
        if (host >= 0 && h != host)
            continue;
        int count[EPX_TOPO_NIC + 1] = { 0 };
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->host == h && o->kind != EPX_TOPO_HOST)
                count[o->kind]++;
        }
        char nb[32];
        fprintf(out, "Host %s (", tool_obj_name(epx_topo_obj(t, h), nb, sizeof(nb)));
        print_counts(count, out);
        fprintf(out, ")\n");
        for (int i = 0; i < m->nobjs; i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->host != h || o->kind != EPX_TOPO_CPU)
                continue;
            print_cpu(m, i, out);
            print_attached(m, h, i, 4, out);
        }
        print_attached(m, h, -1, 2, out);
    }
    return 0;
}

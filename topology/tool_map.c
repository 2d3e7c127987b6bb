/* epx-topo: the map indexed for the views, and formatting helpers. */
#include <stdlib.h>
#include <string.h>

#include "topology/tool.h"

int tool_map_init(tool_map_t *m, const epx_topo_t *topo)
{
    memset(m, 0, sizeof(*m));
    m->topo = topo;
    m->nobjs = epx_topo_num_objs(topo);
    size_t n = (size_t)m->nobjs + 1;
    m->hosts = malloc(sizeof(int) * n);
    m->host_pos = malloc(sizeof(int) * n);
    m->local = malloc(sizeof(int) * n);
    if (!m->hosts || !m->host_pos || !m->local) {
        tool_map_free(m);
        return -1;
    }
    for (int i = 0; i < m->nobjs; i++) {
        const epx_topo_obj_t *o = epx_topo_obj(topo, i);
        m->count[o->kind]++;
        if (o->kind == EPX_TOPO_HOST)
            m->hosts[m->nhosts++] = i;
    }
    /* Hosts come before their objects in a finished map, but do not rely on
     * it: positions are found by search. */
    for (int i = 0; i < m->nobjs; i++) {
        const epx_topo_obj_t *o = epx_topo_obj(topo, i);
        m->host_pos[i] = -1;
        for (int h = 0; h < m->nhosts; h++)
            if (m->hosts[h] == o->host)
                m->host_pos[i] = h;
        int k = 0;
        for (int j = 0; j < i; j++) {
            const epx_topo_obj_t *p = epx_topo_obj(topo, j);
            k += p->kind == o->kind && p->host == o->host;
        }
        m->local[i] = o->kind == EPX_TOPO_HOST ? m->host_pos[i] : k;
    }
    for (int d = 0; d < epx_topo_num_domains(topo); d++)
        m->ndomains_nvlink += epx_topo_domain(topo, d)->kind == EPX_DOMAIN_NVLINK;
    return 0;
}

void tool_map_free(tool_map_t *m)
{
    free(m->hosts);
    free(m->host_pos);
    free(m->local);
    m->hosts = m->host_pos = m->local = NULL;
}

const char *tool_kind_str(epx_topo_kind_t k)
{
    static const char *const s[] = { "host", "CPU", "GPU", "NVSwitch", "NIC" };
    return (unsigned)k <= EPX_TOPO_NIC ? s[k] : "?";
}

const char *tool_obj_name(const epx_topo_obj_t *o, char *buf, size_t len)
{
    if (o->name && o->name[0])
        return o->name;
    static const char *const s[] = { "host", "cpu", "gpu", "nvswitch", "nic" };
    snprintf(buf, len, "%s%d", (unsigned)o->kind <= EPX_TOPO_NIC ? s[o->kind] : "obj",
             o->index);
    return buf;
}

const char *tool_fmt_num(double v, char *buf, size_t len)
{
    /* %.6g drops trailing zeros and keeps figures like 12.5 or 0.25 */
    snprintf(buf, len, "%.6g", v);
    return buf;
}

const char *tool_fmt_gb(uint64_t bytes, char *buf, size_t len)
{
    double gb = (double)bytes / 1e9;
    if (bytes % 1000000000ULL == 0 || gb >= 1000)
        snprintf(buf, len, "%.0f GB", gb);
    else
        snprintf(buf, len, "%.1f GB", gb);
    return buf;
}

int tool_nvlink_count(const epx_topo_t *t, int a, int b)
{
    for (int i = 0; i < epx_topo_num_links(t); i++) {
        const epx_topo_link_t *l = epx_topo_link(t, i);
        if (l->cls == EPX_LINK_NVLINK &&
            ((l->a == a && l->b == b) || (l->a == b && l->b == a)) && l->count > 0)
            return l->count;
    }
    const epx_topo_obj_t *oa = epx_topo_obj(t, a), *ob = epx_topo_obj(t, b);
    if (oa->kind != EPX_TOPO_GPU || ob->kind != EPX_TOPO_GPU)
        return 0;
    return oa->nvlinks < ob->nvlinks ? oa->nvlinks : ob->nvlinks;
}

const char *tool_path_label(const epx_topo_t *t, int a, int b, char *buf,
                            size_t len)
{
    epx_topo_path_t p;
    if (epx_topo_path_between(t, a, b, &p) != EPX_OK) {
        snprintf(buf, len, "?");
        return buf;
    }
    int n = p.cls == EPX_LINK_NVLINK ? tool_nvlink_count(t, a, b) : 0;
    if (n > 0)
        snprintf(buf, len, "%s%d", epx_link_class_str(p.cls), n);
    else
        snprintf(buf, len, "%s", epx_link_class_str(p.cls));
    return buf;
}

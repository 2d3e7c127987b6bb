/*
 * epx-topo --json: the map as one JSON object (schema "epx-topo/1", in
 * topology/epx-topo.md).  Built with jansson; written one array element
 * per line so that outputs diff well and stay greppable.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "topology/tool.h"

#define SCHEMA "epx-topo/1"
#define REAL_FLAGS JSON_REAL_PRECISION(10)

/* Owned json_t for a possibly-unknown value: NULL / -1 / 0 give null. */
static json_t *jstr(const char *s) { return s ? json_string(s) : json_null(); }
static json_t *jint(int v) { return v >= 0 ? json_integer(v) : json_null(); }
static json_t *jbytes(uint64_t v)
{
    return v ? json_integer((json_int_t)v) : json_null();
}
static json_t *jreal(double v) { return v > 0 ? json_real(v) : json_null(); }

static const char *name_of(const epx_topo_t *t, int i, char *buf, size_t len)
{
    return i >= 0 ? tool_obj_name(epx_topo_obj(t, i), buf, len) : NULL;
}

static json_t *names_on_host(const tool_map_t *m, int h, epx_topo_kind_t kind)
{
    json_t *a = json_array();
    char nb[32];
    for (int i = 0; i < m->nobjs; i++) {
        const epx_topo_obj_t *o = epx_topo_obj(m->topo, i);
        if (o->host == h && o->kind == kind)
            json_array_append_new(a, json_string(tool_obj_name(o, nb, sizeof(nb))));
    }
    return a;
}

static int host_domain(const epx_topo_t *t, int h)
{
    for (int d = 0; d < epx_topo_num_domains(t); d++) {
        const epx_topo_domain_t *dm = epx_topo_domain(t, d);
        if (dm->kind == EPX_DOMAIN_HOST && dm->num_members > 0 &&
            dm->members[0] == h)
            return d;
    }
    return -1;
}

static json_t *obj_json(const tool_map_t *m, int i)
{
    const epx_topo_t *t = m->topo;
    const epx_topo_obj_t *o = epx_topo_obj(t, i);
    char nb[32], hb[32], cb[32];
    json_t *j = json_object();
    json_object_set_new(j, "index", json_integer(i));
    json_object_set_new(j, "name", json_string(tool_obj_name(o, nb, sizeof(nb))));
    switch (o->kind) {
    case EPX_TOPO_HOST:
        json_object_set_new(j, "domain", jint(host_domain(t, i)));
        json_object_set_new(j, "cpus", names_on_host(m, i, EPX_TOPO_CPU));
        json_object_set_new(j, "gpus", names_on_host(m, i, EPX_TOPO_GPU));
        json_object_set_new(j, "nvswitches", names_on_host(m, i, EPX_TOPO_NVSWITCH));
        json_object_set_new(j, "nics", names_on_host(m, i, EPX_TOPO_NIC));
        return j;
    case EPX_TOPO_CPU:
        json_object_set_new(j, "host", jstr(name_of(t, o->host, hb, sizeof(hb))));
        json_object_set_new(j, "numa", jint(o->os_index));
        json_object_set_new(j, "model", jstr(o->model));
        json_object_set_new(j, "memory_bytes", jbytes(o->memory_bytes));
        return j;
    default:
        break;
    }
    json_object_set_new(j, "host", jstr(name_of(t, o->host, hb, sizeof(hb))));
    json_object_set_new(j, "cpu", jstr(name_of(t, o->cpu, cb, sizeof(cb))));
    json_object_set_new(j, "pci", jstr(o->pci));
    json_object_set_new(j, "model", jstr(o->model));
    if (o->kind == EPX_TOPO_GPU) {
        json_object_set_new(j, "arch", jstr(o->arch));
        json_object_set_new(j, "memory_bytes", jbytes(o->memory_bytes));
        json_object_set_new(j, "tray", jint(o->tray));
        json_object_set_new(j, "slot", jint(o->slot));
        json_object_set_new(j, "domain", jint(o->domain));
        json_object_set_new(j, "clique", jint(o->clique));
        json_object_set_new(j, "nvlinks", json_integer(o->nvlinks));
        json_object_set_new(j, "nvlink_gbs", jreal(o->nvlink_gbs));
    } else if (o->kind == EPX_TOPO_NIC) {
        json_object_set_new(j, "speed_gbit_s", jreal(o->nic_gbs * 8));
        json_object_set_new(j, "bw_gbs", jreal(o->nic_gbs));
    }
    return j;
}

static json_t *domain_json(const tool_map_t *m, const epx_topo_domain_t *d)
{
    const epx_topo_t *t = m->topo;
    char nb[32], hb[32];
    json_t *j = json_object(), *members = json_array(), *hosts = json_array();
    int *seen = calloc((size_t)m->nhosts + 1, sizeof(int));
    json_object_set_new(j, "index", json_integer(d->index));
    json_object_set_new(j, "kind", json_string(d->kind == EPX_DOMAIN_NVLINK
                                               ? "nvlink" : "host"));
    json_object_set_new(j, "id", jstr(d->id));
    json_object_set_new(j, "size", json_integer(d->num_members));
    json_object_set_new(j, "cliques", json_integer(d->num_cliques));
    json_object_set_new(j, "nvlink_gbs", jreal(d->nvlink_gbs));
    for (int k = 0; k < d->num_members; k++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, d->members[k]);
        json_t *mj = json_object();
        json_object_set_new(mj, "index", json_integer(o->index));
        json_object_set_new(mj, "host", jstr(name_of(t, o->host, hb, sizeof(hb))));
        json_object_set_new(mj, "name", json_string(tool_obj_name(o, nb, sizeof(nb))));
        if (d->kind == EPX_DOMAIN_NVLINK)
            json_object_set_new(mj, "clique", jint(o->clique));
        json_array_append_new(members, mj);
        int hp = m->host_pos[o->index];
        if (seen && hp >= 0 && !seen[hp]++)
            json_array_append_new(hosts, jstr(name_of(t, o->host, hb, sizeof(hb))));
    }
    free(seen);
    json_object_set_new(j, "hosts", hosts);
    json_object_set_new(j, "members", members);
    return j;
}

static json_t *link_json(const epx_topo_link_t *l)
{
    json_t *j = json_object();
    json_object_set_new(j, "a", json_integer(l->a));
    json_object_set_new(j, "b", json_integer(l->b));
    json_object_set_new(j, "class", json_string(epx_link_class_str(l->cls)));
    json_object_set_new(j, "count", json_integer(l->count));
    json_object_set_new(j, "bw_gbs", jreal(l->bw_gbs));
    json_object_set_new(j, "lat_us", jreal(l->lat_us));
    return j;
}

static json_t *rank_json(const epx_topo_t *t, int r)
{
    char hb[32], gb[32];
    json_t *j = json_object();
    json_object_set_new(j, "rank", json_integer(r));
    json_object_set_new(j, "host", jstr(name_of(t, epx_topo_rank_host(t, r), hb,
                                                sizeof(hb))));
    json_object_set_new(j, "gpu", jstr(name_of(t, epx_topo_rank_gpu(t, r), gb,
                                               sizeof(gb))));
    json_object_set_new(j, "gpu_index", jint(epx_topo_rank_gpu(t, r)));
    json_object_set_new(j, "domain", jint(epx_topo_rank_domain(t, r)));
    return j;
}

/* Top level indented, arrays one element per line. */
static int dump(json_t *root, FILE *out)
{
    const char *key;
    json_t *v;
    int first = 1;
    fputs("{\n", out);
    json_object_foreach(root, key, v) {
        json_t *kj = json_string(key);
        char *k = kj ? json_dumps(kj, JSON_ENCODE_ANY) : NULL;
        json_decref(kj);
        if (!k)
            return -1;
        fprintf(out, "%s  %s: ", first ? "" : ",\n", k);
        free(k);
        first = 0;
        if (json_is_array(v) && json_array_size(v) > 0) {
            size_t i;
            json_t *e;
            fputs("[\n", out);
            json_array_foreach(v, i, e) {
                char *s = json_dumps(e, JSON_ENCODE_ANY | REAL_FLAGS);
                if (!s)
                    return -1;
                fprintf(out, "    %s%s\n", s, i + 1 < json_array_size(v) ? "," : "");
                free(s);
            }
            fputs("  ]", out);
        } else {
            char *s = json_dumps(v, JSON_ENCODE_ANY | REAL_FLAGS);
            if (!s)
                return -1;
            fputs(s, out);
            free(s);
        }
    }
    fputs("\n}\n", out);
    return 0;
}

int tool_view_json(const tool_map_t *m, FILE *out)
{
    const epx_topo_t *t = m->topo;
    json_t *root = json_object();
    static const char *const arrays[] = { "hosts", "cpus", "gpus", "nvswitches",
                                          "nics" };
    json_object_set_new(root, "schema", json_string(SCHEMA));
    json_object_set_new(root, "system", jstr(epx_topo_name(t)));
    json_t *counts = json_object();
    for (int k = 0; k <= EPX_TOPO_NIC; k++)
        json_object_set_new(counts, arrays[k], json_integer(m->count[k]));
    json_object_set_new(counts, "nvlink_domains", json_integer(m->ndomains_nvlink));
    json_object_set_new(root, "counts", counts);
    for (int k = 0; k <= EPX_TOPO_NIC; k++) {
        json_t *a = json_array();
        for (int i = 0; i < m->nobjs; i++)
            if (epx_topo_obj(t, i)->kind == (epx_topo_kind_t)k)
                json_array_append_new(a, obj_json(m, i));
        json_object_set_new(root, arrays[k], a);
    }
    json_t *links = json_array();
    for (int i = 0; i < epx_topo_num_links(t); i++)
        json_array_append_new(links, link_json(epx_topo_link(t, i)));
    json_object_set_new(root, "links", links);
    json_t *doms = json_array();
    for (int d = 0; d < epx_topo_num_domains(t); d++)
        json_array_append_new(doms, domain_json(m, epx_topo_domain(t, d)));
    json_object_set_new(root, "domains", doms);
    if (epx_topo_num_ranks(t) > 0) {
        json_t *ranks = json_array();
        for (int r = 0; r < epx_topo_num_ranks(t); r++)
            json_array_append_new(ranks, rank_json(t, r));
        json_object_set_new(root, "ranks", ranks);
    }
    int rc = dump(root, out);
    json_decref(root);
    if (rc) {
        fprintf(stderr, "epx-topo: out of memory writing JSON\n");
        return 1;
    }
    return 0;
}

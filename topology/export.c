/*
 * Map -> system description (the schema of topology/systems/README.md), in
 * the plain explicit form: every host with its objects in map order, every
 * field that is known.  Loading the text gives the same map: the same
 * objects in the same order, the same links in the same order, the same
 * domains and cliques.  A map the schema cannot say (an unnamed object, a
 * host's objects out of order) is refused rather than written wrong.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "util/util.h"
#include "topology/model.h"
#include "topology/desc.h"

static epx_status_t cannot(const epx_topo_t *t, const char *fmt, ...)
    EPX_PRINTF(2, 3);

static epx_status_t cannot(const epx_topo_t *t, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return epx__error(EPX_ERR_UNSUPPORTED,
                      "topo: cannot export '%s' as a description: %s",
                      t->name ? t->name : "", why);
}

static epx_status_t nomem(void)
{
    return epx__error(EPX_ERR_NOMEM, "topo: out of memory exporting");
}

/* A double as JSON: an integer when it is one, so descriptions read like
 * hand-written ones; else a real (printed exactly by emit()). */
static json_t *num(double x)
{
    if (x > -9007199254740992.0 && x < 9007199254740992.0 &&   /* 2^53 */
        x == (double)(long long)x)
        return json_integer((json_int_t)x);
    return json_real(x);
}

/* Set obj[key] = v; 0 on no memory (v is consumed either way). */
static int put(json_t *obj, const char *key, json_t *v)
{
    return v && json_object_set_new(obj, key, v) == 0;
}

/* ------------------------------------------------------------ checking */

/* What the loader reads back must be what the map holds: names present
 * and unique in their host, each host followed by its objects, "cpu"
 * naming a CPU of the same host, no GPU/NIC field on another kind. */
static epx_status_t check_map(const epx_topo_t *t)
{
    int host = -1;
    for (int i = 0; i < t->nobjs; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        const char *kn = desc_kind_name(o->kind);
        if (!kn)
            return cannot(t, "object %d has kind %d", i, (int)o->kind);
        if (!o->name || !*o->name)
            return cannot(t, "object %d (%s) has no name", i, kn);
        if (o->kind == EPX_TOPO_HOST) {
            if (strchr(o->name, '/'))
                return cannot(t, "host name '%s' contains '/'", o->name);
            for (int j = 0; j < i; j++)
                if (t->objs[j].kind == EPX_TOPO_HOST &&
                    strcmp(t->objs[j].name, o->name) == 0)
                    return cannot(t, "two hosts are named '%s'", o->name);
            if (o->cpu != -1 || o->pci || o->os_index != -1)
                return cannot(t, "host '%s' has a cpu, pci or os_index",
                              o->name);
            host = i;
        } else if (o->host != host) {
            return cannot(t, "%s '%s' (object %d) does not follow its host",
                          kn, o->name, i);
        } else {
            for (int j = host + 1; j < i; j++)
                if (strcmp(t->objs[j].name, o->name) == 0)
                    return cannot(t, "two objects of host '%s' are named '%s'",
                                  t->objs[host].name, o->name);
        }
        if (o->cpu != -1 && (o->cpu < 0 || o->cpu >= t->nobjs ||
                             t->objs[o->cpu].kind != EPX_TOPO_CPU ||
                             t->objs[o->cpu].host != o->host))
            return cannot(t, "%s '%s': its cpu is not a CPU of its host", kn,
                          o->name);
        if (o->os_index < -1)
            return cannot(t, "%s '%s': os_index %d", kn, o->name, o->os_index);
        if (o->memory_bytes > (uint64_t)LLONG_MAX)
            return cannot(t, "%s '%s': memory %" PRIu64, kn, o->name,
                          o->memory_bytes);
        int gpu_fields = o->arch || o->tray != -1 || o->slot != -1 ||
                         o->nvlinks != 0 || o->nvlink_gbs != 0 ||
                         t->gdom[i].id;
        if (o->kind != EPX_TOPO_GPU && gpu_fields)
            return cannot(t, "%s '%s' has GPU fields", kn, o->name);
        if (o->kind != EPX_TOPO_NIC && o->nic_gbs != 0)
            return cannot(t, "%s '%s' has a NIC speed", kn, o->name);
        if (o->tray < -1 || o->slot < -1 || o->nvlinks < 0 ||
            !(o->nvlink_gbs >= 0) || !(o->nic_gbs >= 0) ||
            (t->gdom[i].id && t->gdom[i].clique < -1))
            return cannot(t, "%s '%s' has a negative field", kn, o->name);
    }
    for (int i = 0; i < t->nlinks; i++) {
        const epx_topo_link_t *l = &t->links[i];
        if (l->a < 0 || l->b < 0 || l->a >= t->nobjs || l->b >= t->nobjs ||
            l->a == l->b || l->cls <= EPX_LINK_SELF || l->cls > EPX_LINK_NET ||
            l->count < 0 || !(l->bw_gbs >= 0) || !(l->lat_us >= 0))
            return cannot(t, "link %d is not one a description can hold", i);
    }
    return EPX_OK;
}

/* Links go inside their host when that keeps the map's link order: the
 * links of each host in host order, then those across hosts. */
static int links_grouped(const epx_topo_t *t)
{
    int last = -1, across = 0;
    for (int i = 0; i < t->nlinks; i++) {
        const epx_topo_obj_t *a = &t->objs[t->links[i].a];
        const epx_topo_obj_t *b = &t->objs[t->links[i].b];
        int inside = a->host == b->host && a->kind != EPX_TOPO_HOST &&
                     b->kind != EPX_TOPO_HOST;
        if (!inside)
            across = 1;
        else if (across || a->host < last)
            return 0;
        else
            last = a->host;
    }
    return 1;
}

/* ------------------------------------------------------------ building */

static json_t *endpoint(const epx_topo_t *t, int i, int inside)
{
    const epx_topo_obj_t *o = &t->objs[i];
    if (inside || o->kind == EPX_TOPO_HOST)
        return json_string(o->name);
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s/%s", t->objs[o->host].name,
                     o->name);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        size_t hl = strlen(t->objs[o->host].name), ol = strlen(o->name);
        char *big = malloc(hl + ol + 2);
        if (!big)
            return NULL;
        memcpy(big, t->objs[o->host].name, hl);
        big[hl] = '/';
        memcpy(big + hl + 1, o->name, ol + 1);
        json_t *s = json_string(big);
        free(big);
        return s;
    }
    return json_string(buf);
}

static json_t *link_json(const epx_topo_t *t, const epx_topo_link_t *l,
                         int inside)
{
    json_t *j = json_object();
    if (!j || !put(j, "a", endpoint(t, l->a, inside)) ||
        !put(j, "b", endpoint(t, l->b, inside)) ||
        !put(j, "class", json_string(epx_link_class_str(l->cls))) ||
        (l->count != 1 && !put(j, "count", json_integer(l->count))) ||
        (l->bw_gbs > 0 && !put(j, "gbs", num(l->bw_gbs))) ||
        (l->lat_us > 0 && !put(j, "lat_us", num(l->lat_us)))) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *nvlink_json(const epx_topo_t *t, int i)
{
    const epx_topo_obj_t *o = &t->objs[i];
    const topo_gpu_dom_t *d = &t->gdom[i];
    json_t *j = json_object();
    int ok = j != NULL;
    if (ok && o->nvlinks > 0)
        ok = put(j, "links", json_integer(o->nvlinks));
    if (ok && o->nvlink_gbs > 0) {
        double per = o->nvlinks > 0 ? o->nvlink_gbs / o->nvlinks : 0;
        if (per > 0 && per * o->nvlinks == o->nvlink_gbs)
            ok = put(j, "gbs", num(per));     /* reads back exactly */
        else
            ok = put(j, "total_gbs", num(o->nvlink_gbs));
    }
    if (ok && d->id)
        ok = put(j, "domain", json_string(d->id)) &&
             (d->clique < 0 || put(j, "clique", json_integer(d->clique)));
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *object_json(const epx_topo_t *t, int i)
{
    const epx_topo_obj_t *o = &t->objs[i];
    json_t *j = json_object();
    int ok = j && put(j, "kind", json_string(desc_kind_name(o->kind))) &&
             put(j, "name", json_string(o->name));
    if (ok && o->model)
        ok = put(j, "model", json_string(o->model));
    if (ok && o->arch)
        ok = put(j, "arch", json_string(o->arch));
    if (ok && o->chassis)
        ok = put(j, "chassis", json_string(o->chassis));
    if (ok && o->pci)
        ok = put(j, "pci", json_string(o->pci));
    if (ok && o->memory_bytes) {
        if (o->memory_bytes % DESC_GB == 0)
            ok = put(j, "memory_gb",
                     json_integer((json_int_t)(o->memory_bytes / DESC_GB)));
        else
            ok = put(j, "memory_bytes", json_integer((json_int_t)o->memory_bytes));
    }
    if (ok && o->os_index >= 0)
        ok = put(j, "os_index", json_integer(o->os_index));
    if (ok && o->cpu >= 0)
        ok = put(j, "cpu", json_string(t->objs[o->cpu].name));
    if (ok && o->tray >= 0)
        ok = put(j, "tray", json_integer(o->tray));
    if (ok && o->slot >= 0)
        ok = put(j, "slot", json_integer(o->slot));
    if (ok && (o->nvlinks > 0 || o->nvlink_gbs > 0 || t->gdom[i].id))
        ok = put(j, "nvlink", nvlink_json(t, i));
    if (ok && o->nic_gbs > 0)
        ok = put(j, "gbit", num(o->nic_gbs * 8));   /* exact: a power of 2 */
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* NVLink domains with more GPUs than the default, declared so they load. */
static json_t *domains_json(const epx_topo_t *t)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    for (int i = 0; i < t->nobjs; i++) {
        const char *id = t->gdom[i].id;
        if (t->objs[i].kind != EPX_TOPO_GPU || !id)
            continue;
        int first = 1, n = 0;
        for (int j = 0; j < t->nobjs; j++)
            if (t->objs[j].kind == EPX_TOPO_GPU && t->gdom[j].id &&
                strcmp(t->gdom[j].id, id) == 0) {
                first = first && j >= i;
                n++;
            }
        if (!first || n <= DESC_DOMAIN_GPUS)
            continue;
        json_t *d = json_object();
        if (!d || json_array_append_new(arr, d) ||
            !put(d, "id", json_string(id)) ||
            !put(d, "size", json_integer(n > t->max_domain_gpus
                                             ? n : t->max_domain_gpus))) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *build(const epx_topo_t *t)
{
    int grouped = links_grouped(t);
    int *ord = malloc(sizeof(int) * (size_t)(t->nobjs > 0 ? t->nobjs : 1));
    json_t *root = json_object(), *hosts = json_array(), *top = json_array();
    json_t *doms = domains_json(t);
    int ok = ord && root && hosts && top && doms &&
             put(root, "schema", json_integer(DESC_SCHEMA)) &&
             put(root, "name", json_string(t->name ? t->name : "")) &&
             (json_array_size(doms) == 0 ||
              put(root, "domains", json_incref(doms))) &&
             put(root, "hosts", json_incref(hosts));
    json_t *objs = NULL;
    for (int i = 0; ok && i < t->nobjs; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        if (o->kind != EPX_TOPO_HOST) {
            ok = json_array_append_new(objs, object_json(t, i)) == 0;
            continue;
        }
        json_t *host = json_object();
        ord[i] = (int)json_array_size(hosts);
        uint64_t mem = o->memory_bytes;
        /* append_new owns `host` from here, on failure too */
        ok = json_array_append_new(hosts, host) == 0 &&
             put(host, "name", json_string(o->name)) &&
             (!o->model || put(host, "model", json_string(o->model))) &&
             (!mem || mem % DESC_GB != 0 ||
              put(host, "memory_gb", json_integer((json_int_t)(mem / DESC_GB)))) &&
             (!mem || mem % DESC_GB == 0 ||
              put(host, "memory_bytes", json_integer((json_int_t)mem))) &&
             put(host, "objects", (objs = json_array())) &&
             put(host, "links", json_array());
    }
    for (int i = 0; ok && i < t->nlinks; i++) {
        const epx_topo_link_t *l = &t->links[i];
        const epx_topo_obj_t *a = &t->objs[l->a], *b = &t->objs[l->b];
        int inside = grouped && a->host == b->host &&
                     a->kind != EPX_TOPO_HOST && b->kind != EPX_TOPO_HOST;
        json_t *dst = inside ? json_object_get(
                                   json_array_get(hosts, (size_t)ord[a->host]),
                                   "links")
                             : top;
        ok = json_array_append_new(dst, link_json(t, l, inside)) == 0;
    }
    /* Drop empty lists so descriptions stay short. */
    for (size_t k = 0; ok && k < json_array_size(hosts); k++) {
        json_t *hj = json_array_get(hosts, k);
        if (json_array_size(json_object_get(hj, "objects")) == 0)
            json_object_del(hj, "objects");
        if (json_array_size(json_object_get(hj, "links")) == 0)
            json_object_del(hj, "links");
    }
    if (ok && json_array_size(top) > 0)
        ok = put(root, "links", json_incref(top));
    free(ord);
    json_decref(hosts);
    json_decref(top);
    json_decref(doms);
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* --------------------------------------------------------------- text */

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int failed;
} sbuf_t;

static void add(sbuf_t *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap)
            cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->failed = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void adds(sbuf_t *b, const char *s) { add(b, s, strlen(s)); }

static void indent(sbuf_t *b, int depth)
{
    for (int i = 0; i < depth; i++)
        adds(b, "  ");
}

static int has_array(json_t *v)
{
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m)
        if (json_is_array(m))
            return 1;
    return 0;
}

/* The shortest decimal that reads back as the same double. */
static void real(sbuf_t *b, double x)
{
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    if (!strpbrk(buf, ".eEn"))
        strcat(buf, ".0");
    adds(b, buf);
}

/* Containers are laid out one member per line down to objects that hold
 * no array (an object, a link, a domain), which take one line each. */
static void emit(sbuf_t *b, json_t *v, int depth)
{
    if (json_is_real(v)) {
        real(b, json_real_value(v));
        return;
    }
    if (json_is_array(v) && json_array_size(v) > 0) {
        size_t i;
        json_t *m;
        adds(b, "[\n");
        json_array_foreach(v, i, m) {
            indent(b, depth + 1);
            emit(b, m, depth + 1);
            adds(b, i + 1 < json_array_size(v) ? ",\n" : "\n");
        }
        indent(b, depth);
        adds(b, "]");
        return;
    }
    int expand = json_is_object(v) && has_array(v);
    if (json_is_object(v) && json_object_size(v) > 0) {
        const char *k;
        json_t *m;
        size_t i = 0;
        adds(b, expand ? "{\n" : "{");
        json_object_foreach(v, k, m) {
            json_t *key = json_string(k);
            char *kt = key ? json_dumps(key, JSON_ENCODE_ANY) : NULL;
            json_decref(key);
            if (!kt) {
                b->failed = 1;
                return;
            }
            if (expand)
                indent(b, depth + 1);
            adds(b, kt);
            free(kt);
            adds(b, ": ");
            emit(b, m, depth + 1);
            if (++i < json_object_size(v))
                adds(b, expand ? ",\n" : ", ");
        }
        if (expand) {
            adds(b, "\n");
            indent(b, depth);
        }
        adds(b, "}");
        return;
    }
    char *s = json_dumps(v, JSON_ENCODE_ANY);
    if (!s) {
        b->failed = 1;
        return;
    }
    adds(b, s);
    free(s);
}

epx_status_t epx__topo_to_json(const epx_topo_t *t, char **text)
{
    if (!t || !text)
        return epx__error(EPX_ERR_INVALID, "topo: export needs a map");
    epx_status_t st = check_map(t);
    if (st != EPX_OK)
        return st;
    json_t *root = build(t);
    if (!root)
        return nomem();
    sbuf_t b = { NULL, 0, 0, 0 };
    emit(&b, root, 0);
    adds(&b, "\n");
    json_decref(root);
    if (b.failed) {
        free(b.s);
        return nomem();
    }
    *text = b.s;
    return EPX_OK;
}

epx_status_t epx_topo_export(const epx_topo_t *t, const char *path)
{
    if (!t || !path || !*path)
        return epx__error(EPX_ERR_INVALID, "topo: export needs a map and a path");
    char *text = NULL;
    epx_status_t st = epx__topo_to_json(t, &text);
    if (st != EPX_OK)
        return st;
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        return epx__syserror(EPX_ERR_SYSTEM, "topo: cannot write '%s'", path);
    }
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fclose(f) != 0;
    free(text);
    if (bad)
        return epx__syserror(EPX_ERR_SYSTEM, "topo: cannot write '%s'", path);
    return EPX_OK;
}

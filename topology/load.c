/*
 * System descriptions -> map (schema: topology/systems/README.md).
 * Parsed with jansson and built through the map builder, so a description
 * passes the same checks as a probe.  Every error is EPX_ERR_INVALID and
 * names the file, the JSON path and the reason; a failed load frees
 * everything it built.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <jansson.h>

#include "util/util.h"
#include "util/paths.h"
#include "topology/model.h"
#include "topology/desc.h"

#define PATH_LEN 384

typedef struct ld_dom {        /* an NVLink domain seen so far */
    const char *id;            /* in the JSON tree */
    int gpus, size;
    char decl[48];             /* "$.domains[i]" if declared, else "" */
} ld_dom_t;

typedef struct ld_host {       /* the host being built */
    int index;
    const char *name;
    const char *path;          /* "$.hosts[i]" */
    int tray;                  /* default GPU tray, -1 none */
    const char *domain;        /* default GPU NVLink domain, NULL none */
} ld_host_t;

typedef struct ld {
    const char *origin;        /* file name in messages */
    const char *context;       /* " (for $.hosts[3] 'x')" inside a host type */
    epx_topo_t *t;
    json_t *types;             /* $.host_types, or NULL */
    ld_dom_t *doms;
    int ndoms, cap_doms;
} ld_t;

static epx_status_t bad(const ld_t *ld, const char *path, const char *fmt, ...)
    EPX_PRINTF(3, 4);

static epx_status_t bad(const ld_t *ld, const char *path, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return epx__error(EPX_ERR_INVALID, "%s: %s: %s%s", ld->origin, path, why,
                      ld->context ? ld->context : "");
}

static epx_status_t nomem(const ld_t *ld)
{
    return epx__error(EPX_ERR_NOMEM, "%s: out of memory", ld->origin);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A path that does not fit ends in "..." rather than in a wrong name. */
static void cut(char *out, int n)
{
    if (n >= PATH_LEN)
        memcpy(out + PATH_LEN - 4, "...", 4);
}

static void sub(char *out, const char *path, const char *key)
{
    cut(out, snprintf(out, PATH_LEN, "%s.%s", path, key));
}

static void item(char *out, const char *path, size_t i)
{
    cut(out, snprintf(out, PATH_LEN, "%s[%zu]", path, i));
}

/* ------------------------------------------------------- typed members */

/* Refuse members not in `allowed` (NULL-terminated): catches typos. */
static epx_status_t check_keys(const ld_t *ld, json_t *obj, const char *path,
                               const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            char p[PATH_LEN], list[256] = "";
            sub(p, path, key);
            for (int i = 0; allowed[i]; i++) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "",
                         allowed[i]);
            }
            return bad(ld, p, "unknown field (known here: %s)", list);
        }
    }
    return EPX_OK;
}

static epx_status_t want_object(const ld_t *ld, const json_t *v,
                                const char *path)
{
    return json_is_object(v) ? EPX_OK
                             : bad(ld, path, "must be an object, not %s",
                                   type_name(v));
}

/* A non-empty string member; *out untouched when absent and optional. */
static epx_status_t get_str(const ld_t *ld, json_t *obj, const char *path,
                            const char *key, int required, const char **out)
{
    char p[PATH_LEN];
    json_t *v = json_object_get(obj, key);
    sub(p, path, key);
    if (!v)
        return required ? bad(ld, p, "missing field (a string)") : EPX_OK;
    if (!json_is_string(v))
        return bad(ld, p, "must be a string, not %s", type_name(v));
    if (json_string_length(v) == 0)
        return bad(ld, p, "must not be empty");
    *out = json_string_value(v);
    return EPX_OK;
}

/* An integer member in [lo, hi]. */
static epx_status_t get_int(const ld_t *ld, json_t *obj, const char *path,
                            const char *key, int required, long long lo,
                            long long hi, long long *out)
{
    char p[PATH_LEN];
    json_t *v = json_object_get(obj, key);
    sub(p, path, key);
    if (!v)
        return required ? bad(ld, p, "missing field (an integer)") : EPX_OK;
    if (!json_is_integer(v))
        return bad(ld, p, "must be an integer, not %s", type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return bad(ld, p, "must be between %lld and %lld (got %lld)", lo, hi,
                   x);
    *out = x;
    return EPX_OK;
}

static epx_status_t get_int32(const ld_t *ld, json_t *obj, const char *path,
                              const char *key, int lo, int *out)
{
    long long x = *out;
    epx_status_t st = get_int(ld, obj, path, key, 0, lo, INT_MAX, &x);
    *out = (int)x;
    return st;
}

/* A number member: > 0 when `positive`, else >= 0. */
static epx_status_t get_num(const ld_t *ld, json_t *obj, const char *path,
                            const char *key, int positive, const char *unit,
                            double *out)
{
    char p[PATH_LEN];
    json_t *v = json_object_get(obj, key);
    sub(p, path, key);
    if (!v)
        return EPX_OK;
    if (!json_is_number(v))
        return bad(ld, p, "must be a number (%s), not %s", unit, type_name(v));
    double x = json_number_value(v);
    if (positive ? !(x > 0) : !(x >= 0))
        return bad(ld, p, "must be %s 0 %s (got %g)", positive ? ">" : ">=",
                   unit, x);
    *out = x;
    return EPX_OK;
}

static epx_status_t get_array(const ld_t *ld, json_t *obj, const char *path,
                              const char *key, int required, json_t **out)
{
    char p[PATH_LEN];
    json_t *v = json_object_get(obj, key);
    sub(p, path, key);
    *out = NULL;
    if (!v)
        return required ? bad(ld, p, "missing field (an array)") : EPX_OK;
    if (!json_is_array(v))
        return bad(ld, p, "must be an array, not %s", type_name(v));
    *out = v;
    return EPX_OK;
}

/* "memory_gb" (decimal GB, vendor figures) or "memory_bytes". */
static epx_status_t get_memory(const ld_t *ld, json_t *obj, const char *path,
                               uint64_t *out)
{
    char p[PATH_LEN];
    double gb = -1;
    long long bytes = -1;
    epx_status_t st;
    if ((st = get_num(ld, obj, path, "memory_gb", 1, "GB", &gb)) != EPX_OK ||
        (st = get_int(ld, obj, path, "memory_bytes", 0, 1, LLONG_MAX,
                      &bytes)) != EPX_OK)
        return st;
    if (gb > 0 && bytes > 0) {
        sub(p, path, "memory_bytes");
        return bad(ld, p, "give memory_gb or memory_bytes, not both");
    }
    if (gb > 0) {
        if (gb > 1e9) {   /* an exabyte: a unit mistake, and past uint64 */
            sub(p, path, "memory_gb");
            return bad(ld, p, "%g GB is not a plausible memory size", gb);
        }
        *out = (uint64_t)(gb * (double)DESC_GB + 0.5);
    } else if (bytes > 0) {
        *out = (uint64_t)bytes;
    }
    return EPX_OK;
}

/* PCI bus id "dddd:bb:dd.f" (domain of 4 to 8 hex digits). */
static int pci_ok(const char *s)
{
    static const int len[] = { -4, 2, 2, 1 };   /* -4: 4..8 digits */
    static const char sep[] = { ':', ':', '.', '\0' };
    for (int f = 0; f < 4; f++) {
        int n = 0;
        while (isxdigit((unsigned char)s[n]))
            n++;
        if (len[f] < 0 ? (n < 4 || n > 8) : n != len[f])
            return 0;
        s += n;
        if (*s != sep[f])
            return 0;
        if (*s)
            s++;
    }
    return 1;
}

/* ------------------------------------------------------------- domains */

static ld_dom_t *dom_find(ld_t *ld, const char *id)
{
    for (int i = 0; i < ld->ndoms; i++)
        if (strcmp(ld->doms[i].id, id) == 0)
            return &ld->doms[i];
    return NULL;
}

static ld_dom_t *dom_add(ld_t *ld, const char *id)
{
    if (ld->ndoms == ld->cap_doms) {
        int cap = ld->cap_doms ? 2 * ld->cap_doms : 16;
        ld_dom_t *d = realloc(ld->doms, sizeof(*d) * (size_t)cap);
        if (!d)
            return NULL;
        ld->doms = d;
        ld->cap_doms = cap;
    }
    ld_dom_t *d = &ld->doms[ld->ndoms++];
    memset(d, 0, sizeof(*d));
    d->id = id;
    d->size = DESC_DOMAIN_GPUS;
    return d;
}

/* $.domains: declared NVLink domains (a size above the default). */
static epx_status_t load_domains(ld_t *ld, json_t *root)
{
    static const char *const keys[] = { "id", "size", "description",
                                        "switch_trays", "switch_chips", NULL };
    json_t *arr, *d;
    size_t i;
    epx_status_t st = get_array(ld, root, "$", "domains", 0, &arr);
    if (st != EPX_OK || !arr)
        return st;
    json_array_foreach(arr, i, d) {
        char p[PATH_LEN];
        const char *id = NULL, *desc = NULL;
        long long size = DESC_DOMAIN_GPUS, n = 0;
        item(p, "$.domains", i);
        if ((st = want_object(ld, d, p)) != EPX_OK ||
            (st = check_keys(ld, d, p, keys)) != EPX_OK ||
            (st = get_str(ld, d, p, "id", 1, &id)) != EPX_OK ||
            (st = get_int(ld, d, p, "size", 0, 1, INT_MAX, &size)) != EPX_OK ||
            (st = get_str(ld, d, p, "description", 0, &desc)) != EPX_OK ||
            (st = get_int(ld, d, p, "switch_trays", 0, 0, INT_MAX, &n)) != EPX_OK ||
            (st = get_int(ld, d, p, "switch_chips", 0, 0, INT_MAX, &n)) != EPX_OK)
            return st;
        ld_dom_t *prev = dom_find(ld, id);
        if (prev) {
            char q[PATH_LEN];
            sub(q, p, "id");
            return bad(ld, q, "duplicate domain id '%s' (first at %s)", id,
                       prev->decl);
        }
        ld_dom_t *dm = dom_add(ld, id);
        if (!dm)
            return nomem(ld);
        dm->size = (int)size;
        snprintf(dm->decl, sizeof(dm->decl), "$.domains[%zu]", i);
    }
    return EPX_OK;
}

/* GPU `gpu` (at `path`) joins NVLink domain `id`: count it, refuse a
 * domain past its size, then tell the builder. */
static epx_status_t join_domain(ld_t *ld, int gpu, const char *path,
                                const char *id, int clique)
{
    ld_dom_t *d = dom_find(ld, id);
    if (!d && !(d = dom_add(ld, id)))
        return nomem(ld);
    if (++d->gpus > d->size) {
        if (d->decl[0])
            return bad(ld, path,
                       "NVLink domain '%s' would have %d GPUs, more than the "
                       "%d declared at %s", id, d->gpus, d->size, d->decl);
        return bad(ld, path,
                   "NVLink domain '%s' would have %d GPUs, more than %d "
                   "(declare its size in $.domains to allow more)", id,
                   d->gpus, d->size);
    }
    return epx__topo_gpu_domain(ld->t, gpu, id, clique);
}

/* ------------------------------------------------------------- objects */

static const char *const common_keys[] = {
    "kind", "name", "model", "pci", "memory_gb", "memory_bytes", "os_index",
    "cpu", NULL };
static const char *const gpu_keys[] = { "arch", "tray", "slot", "chassis",
                                         "nvlink", NULL };
static const char *const nic_keys[] = { "gbit", "gbs", NULL };
static const char *const nvlink_keys[] = { "links", "gbs", "total_gbs",
                                           "domain", "clique", NULL };

static epx_status_t check_object_keys(const ld_t *ld, json_t *o,
                                      const char *path, epx_topo_kind_t kind)
{
    const char *keys[24];
    int n = 0;
    for (int i = 0; common_keys[i]; i++)
        keys[n++] = common_keys[i];
    const char *const *extra = kind == EPX_TOPO_GPU ? gpu_keys
                             : kind == EPX_TOPO_NIC ? nic_keys : NULL;
    for (int i = 0; extra && extra[i]; i++)
        keys[n++] = extra[i];
    keys[n] = NULL;
    return check_keys(ld, o, path, keys);
}

/* The GPU's "nvlink" member: link count and bandwidth, domain, clique. */
static epx_status_t load_nvlink(ld_t *ld, json_t *o, const char *path,
                                const ld_host_t *h, int gpu)
{
    char p[PATH_LEN];
    json_t *nv = json_object_get(o, "nvlink");
    epx_status_t st;
    if (!nv)
        return EPX_OK;
    sub(p, path, "nvlink");
    long long links = 0, clique = -1;
    double gbs = 0, total = 0;
    const char *domain = NULL;
    if ((st = want_object(ld, nv, p)) != EPX_OK ||
        (st = check_keys(ld, nv, p, nvlink_keys)) != EPX_OK ||
        (st = get_int(ld, nv, p, "links", 0, 0, INT_MAX, &links)) != EPX_OK ||
        (st = get_num(ld, nv, p, "gbs", 1, "GB/s per link and direction",
                      &gbs)) != EPX_OK ||
        (st = get_num(ld, nv, p, "total_gbs", 1, "GB/s per direction",
                      &total)) != EPX_OK ||
        (st = get_str(ld, nv, p, "domain", 0, &domain)) != EPX_OK ||
        (st = get_int(ld, nv, p, "clique", 0, 0, INT_MAX, &clique)) != EPX_OK)
        return st;
    char q[PATH_LEN];
    if (gbs > 0 && total > 0) {
        sub(q, p, "total_gbs");
        return bad(ld, q, "give gbs (per link) or total_gbs, not both");
    }
    if (gbs > 0 && links == 0) {
        sub(q, p, "gbs");
        return bad(ld, q, "a per-link bandwidth needs \"links\" > 0");
    }
    if (links > 0 && gbs == 0 && total == 0) {
        sub(q, p, "gbs");
        return bad(ld, q, "missing field (GB/s per link and direction, or "
                          "total_gbs)");
    }
    if (!domain)
        domain = h->domain;
    if (clique >= 0 && !domain) {
        sub(q, p, "clique");
        return bad(ld, q, "a clique needs an NVLink domain");
    }
    epx_topo_obj_t *g = epx__topo_objw(ld->t, gpu);
    g->nvlinks = (int)links;
    g->nvlink_gbs = total > 0 ? total : (double)links * gbs;
    if (!domain)
        return EPX_OK;
    return join_domain(ld, gpu, path, domain, (int)clique);   /* -1: none */
}

/* Pass 1 for one object: check it, add it with its own fields.  The
 * references to other objects ("cpu") wait for pass 2. */
static epx_status_t add_object(ld_t *ld, json_t *o, const char *path,
                               const ld_host_t *h, epx_topo_kind_t kind)
{
    epx_status_t st;
    const char *name = NULL, *model = NULL, *pci = NULL, *arch = NULL,
               *ref = NULL, *chassis = NULL;
    uint64_t mem = 0;
    int os_index = -1, tray = h->tray, slot = -1;
    double gbit = 0, gbs = 0;
    char p[PATH_LEN];
    if ((st = check_object_keys(ld, o, path, kind)) != EPX_OK ||
        (st = get_str(ld, o, path, "name", 1, &name)) != EPX_OK ||
        (st = get_str(ld, o, path, "model", 0, &model)) != EPX_OK ||
        (st = get_str(ld, o, path, "pci", 0, &pci)) != EPX_OK ||
        (st = get_str(ld, o, path, "cpu", 0, &ref)) != EPX_OK ||
        (st = get_memory(ld, o, path, &mem)) != EPX_OK ||
        (st = get_int32(ld, o, path, "os_index", 0, &os_index)) != EPX_OK)
        return st;
    if (pci && !pci_ok(pci)) {
        sub(p, path, "pci");
        return bad(ld, p, "'%s' is not a PCI bus id (dddd:bb:dd.f)", pci);
    }
    if (kind == EPX_TOPO_GPU &&
        ((st = get_str(ld, o, path, "arch", 0, &arch)) != EPX_OK ||
         (st = get_str(ld, o, path, "chassis", 0, &chassis)) != EPX_OK ||
         (st = get_int32(ld, o, path, "tray", 0, &tray)) != EPX_OK ||
         (st = get_int32(ld, o, path, "slot", 0, &slot)) != EPX_OK))
        return st;
    if (kind == EPX_TOPO_NIC &&
        ((st = get_num(ld, o, path, "gbit", 1, "Gb/s", &gbit)) != EPX_OK ||
         (st = get_num(ld, o, path, "gbs", 1, "GB/s", &gbs)) != EPX_OK))
        return st;
    if (gbit > 0 && gbs > 0) {
        sub(p, path, "gbs");
        return bad(ld, p, "give gbit or gbs, not both");
    }
    if (epx__topo_find(ld->t, h->index, name) >= 0) {
        sub(p, path, "name");
        return bad(ld, p, "duplicate name '%s' in host '%s'", name, h->name);
    }
    int i = epx__topo_add(ld->t, kind, h->index, name);
    if (i < 0)
        return nomem(ld);
    epx_topo_obj_t *n = epx__topo_objw(ld->t, i);
    if ((model && !(n->model = epx__topo_str(ld->t, model))) ||
        (pci && !(n->pci = epx__topo_str(ld->t, pci))) ||
        (arch && !(n->arch = epx__topo_str(ld->t, arch))) ||
        (chassis && !(n->chassis = epx__topo_str(ld->t, chassis))))
        return nomem(ld);
    n->memory_bytes = mem;
    n->os_index = os_index;
    if (kind == EPX_TOPO_GPU) {
        n->tray = tray;
        n->slot = slot;
        return load_nvlink(ld, o, path, h, i);
    }
    n->nic_gbs = gbit > 0 ? gbit / 8 : gbs;
    return EPX_OK;
}

/* Pass 2 for one object: its "cpu" names a CPU of the same host. */
static epx_status_t link_object(ld_t *ld, json_t *o, const char *path,
                                const ld_host_t *h)
{
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *ref = json_string_value(json_object_get(o, "cpu"));
    if (!ref)
        return EPX_OK;
    char p[PATH_LEN];
    sub(p, path, "cpu");
    int c = epx__topo_find(ld->t, h->index, ref);
    if (c < 0)
        return bad(ld, p, "no object named '%s' in host '%s'", ref, h->name);
    const epx_topo_obj_t *co = epx_topo_obj(ld->t, c);
    if (co->kind != EPX_TOPO_CPU)
        return bad(ld, p, "'%s' is a %s, not a cpu", ref,
                   desc_kind_name(co->kind));
    epx__topo_objw(ld->t, epx__topo_find(ld->t, h->index, name))->cpu = c;
    return EPX_OK;
}

static int kind_of(const char *s, epx_topo_kind_t *k)
{
    for (int i = EPX_TOPO_CPU; i <= EPX_TOPO_NIC; i++)
        if (strcmp(s, desc_kind_name((epx_topo_kind_t)i)) == 0) {
            *k = (epx_topo_kind_t)i;
            return 1;
        }
    return 0;
}

/* --------------------------------------------------------------- links */

static int class_of(const char *s, epx_link_class_t *c)
{
    for (int i = EPX_LINK_NVLINK; i <= EPX_LINK_NET; i++)
        if (strcasecmp(s, epx_link_class_str((epx_link_class_t)i)) == 0) {
            *c = (epx_link_class_t)i;
            return 1;
        }
    return 0;
}

/* Endpoint `key` of a link: an object of host h, or (h == NULL, across
 * hosts) "host/object" or "host". */
static epx_status_t endpoint(ld_t *ld, json_t *l, const char *path,
                             const char *key, const ld_host_t *h, int *out)
{
    const char *s = NULL;
    char p[PATH_LEN];
    epx_status_t st = get_str(ld, l, path, key, 1, &s);
    if (st != EPX_OK)
        return st;
    sub(p, path, key);
    if (h) {
        if ((*out = epx__topo_find(ld->t, h->index, s)) < 0)
            return bad(ld, p, "no object named '%s' in host '%s'", s, h->name);
        return EPX_OK;
    }
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    char host[256];
    if (hl >= sizeof(host) || hl == 0)
        return bad(ld, p, "'%s' is not \"host/object\" or \"host\"", s);
    memcpy(host, s, hl);
    host[hl] = '\0';
    int hi = epx__topo_find(ld->t, -1, host);
    if (hi < 0)
        return bad(ld, p, "no host named '%s'", host);
    if (!slash) {
        *out = hi;
        return EPX_OK;
    }
    if ((*out = epx__topo_find(ld->t, hi, slash + 1)) < 0)
        return bad(ld, p, "no object named '%s' in host '%s'", slash + 1, host);
    return EPX_OK;
}

static epx_status_t load_link(ld_t *ld, json_t *l, const char *path,
                              const ld_host_t *h)
{
    static const char *const keys[] = { "a", "b", "class", "count", "gbs",
                                        "lat_us", NULL };
    const char *cls_s = NULL;
    long long count = 1;
    double gbs = 0, lat = 0;
    int a = -1, b = -1;
    epx_link_class_t cls;
    epx_status_t st;
    char p[PATH_LEN];
    if ((st = want_object(ld, l, path)) != EPX_OK ||
        (st = check_keys(ld, l, path, keys)) != EPX_OK ||
        (st = endpoint(ld, l, path, "a", h, &a)) != EPX_OK ||
        (st = endpoint(ld, l, path, "b", h, &b)) != EPX_OK ||
        (st = get_str(ld, l, path, "class", 1, &cls_s)) != EPX_OK ||
        (st = get_int(ld, l, path, "count", 0, 0, INT_MAX, &count)) != EPX_OK ||
        (st = get_num(ld, l, path, "gbs", 1, "GB/s per direction", &gbs)) != EPX_OK ||
        (st = get_num(ld, l, path, "lat_us", 0, "us", &lat)) != EPX_OK)
        return st;
    if (!class_of(cls_s, &cls)) {
        sub(p, path, "class");
        return bad(ld, p, "unknown class '%s' (one of NV, C2C, PIX, PXB, PHB, "
                          "NODE, SYS, NET)", cls_s);
    }
    if (a == b) {
        sub(p, path, "b");
        return bad(ld, p, "a link joins two different objects");
    }
    st = epx__topo_link(ld->t, a, b, cls, (int)count, gbs, lat);
    return st == EPX_OK ? st : bad(ld, path, "%s", "the map refused the link");
}

static epx_status_t load_links(ld_t *ld, json_t *body, const char *path,
                               const ld_host_t *h)
{
    json_t *arr, *l;
    size_t i;
    char p[PATH_LEN], q[PATH_LEN];
    epx_status_t st = get_array(ld, body, path, "links", 0, &arr);
    if (st != EPX_OK || !arr)
        return st;
    sub(p, path, "links");
    json_array_foreach(arr, i, l) {
        item(q, p, i);
        if ((st = load_link(ld, l, q, h)) != EPX_OK)
            return st;
    }
    return EPX_OK;
}

/* --------------------------------------------------------------- hosts */

/* The objects of a host body, in one of two forms: "objects" (one list in
 * map order, each with its "kind") or the lists "cpus", "gpus",
 * "nvswitches", "nics" (added in that order).  Pass 1 adds, pass 2
 * resolves references. */
static epx_status_t host_objects(ld_t *ld, json_t *body, const char *path,
                                 const ld_host_t *h, int pass)
{
    static const char *const lists[] = { "objects", "cpus", "gpus",
                                         "nvswitches", "nics" };
    static const epx_topo_kind_t kinds[] = { EPX_TOPO_HOST, EPX_TOPO_CPU,
                                             EPX_TOPO_GPU, EPX_TOPO_NVSWITCH,
                                             EPX_TOPO_NIC };
    epx_status_t st;
    char p[PATH_LEN], q[PATH_LEN];
    json_t *all = json_object_get(body, "objects");
    for (int k = 0; k < 5; k++) {
        json_t *arr, *o;
        size_t i;
        if ((st = get_array(ld, body, path, lists[k], 0, &arr)) != EPX_OK)
            return st;
        if (!arr)
            continue;
        sub(p, path, lists[k]);
        if (all && k > 0)
            return bad(ld, p, "give \"objects\" or the per-kind lists, not "
                              "both");
        json_array_foreach(arr, i, o) {
            epx_topo_kind_t kind = kinds[k];
            item(q, p, i);
            if ((st = want_object(ld, o, q)) != EPX_OK)
                return st;
            if (pass == 2) {
                if ((st = link_object(ld, o, q, h)) != EPX_OK)
                    return st;
                continue;
            }
            if (k == 0) {
                const char *ks = NULL;
                char r[PATH_LEN];
                if ((st = get_str(ld, o, q, "kind", 1, &ks)) != EPX_OK)
                    return st;
                if (!kind_of(ks, &kind)) {
                    sub(r, q, "kind");
                    return bad(ld, r, "unknown kind '%s' (one of cpu, gpu, "
                                      "nvswitch, nic)", ks);
                }
            } else if (json_object_get(o, "kind")) {
                char r[PATH_LEN];
                sub(r, q, "kind");
                return bad(ld, r, "only objects in \"objects\" name a kind");
            }
            if ((st = add_object(ld, o, q, h, kind)) != EPX_OK)
                return st;
        }
    }
    return EPX_OK;
}

static epx_status_t load_host(ld_t *ld, json_t *hj, size_t index)
{
    static const char *const keys[] = {
        "name", "type", "tray", "nvlink_domain", "model", "memory_gb",
        "memory_bytes", "objects", "cpus", "gpus", "nvswitches", "nics",
        "links", NULL };
    static const char *const type_keys[] = {
        "description", "objects", "cpus", "gpus", "nvswitches", "nics",
        "links", NULL };
    static const char *const body_lists[] = { "objects", "cpus", "gpus",
                                              "nvswitches", "nics", "links",
                                              NULL };
    char path[PATH_LEN], p[PATH_LEN], bpath[PATH_LEN], ctx[PATH_LEN + 64];
    const char *name = NULL, *type = NULL, *model = NULL;
    uint64_t mem = 0;
    epx_status_t st;
    ld_host_t h = { -1, NULL, path, -1, NULL };
    item(path, "$.hosts", index);
    if ((st = want_object(ld, hj, path)) != EPX_OK ||
        (st = check_keys(ld, hj, path, keys)) != EPX_OK ||
        (st = get_str(ld, hj, path, "name", 1, &name)) != EPX_OK ||
        (st = get_str(ld, hj, path, "type", 0, &type)) != EPX_OK ||
        (st = get_int32(ld, hj, path, "tray", 0, &h.tray)) != EPX_OK ||
        (st = get_str(ld, hj, path, "nvlink_domain", 0, &h.domain)) != EPX_OK ||
        (st = get_str(ld, hj, path, "model", 0, &model)) != EPX_OK ||
        (st = get_memory(ld, hj, path, &mem)) != EPX_OK)
        return st;
    sub(p, path, "name");
    if (strchr(name, '/'))
        return bad(ld, p, "a host name must not contain '/'");
    if (epx__topo_find(ld->t, -1, name) >= 0)
        return bad(ld, p, "duplicate host name '%s'", name);
    json_t *body = hj;
    snprintf(bpath, sizeof(bpath), "%s", path);
    if (type) {
        for (int i = 0; body_lists[i]; i++)
            if (json_object_get(hj, body_lists[i])) {
                sub(p, path, body_lists[i]);
                return bad(ld, p, "a host of a type takes its objects from "
                                  "the type");
            }
        sub(p, path, "type");
        body = ld->types ? json_object_get(ld->types, type) : NULL;
        if (!body)
            return bad(ld, p, "no host type '%s' in $.host_types", type);
        snprintf(bpath, sizeof(bpath), "$.host_types.%s", type);
        if ((st = want_object(ld, body, bpath)) != EPX_OK ||
            (st = check_keys(ld, body, bpath, type_keys)) != EPX_OK)
            return st;
        snprintf(ctx, sizeof(ctx), " (for %s '%s')", path, name);
    }
    if ((h.index = epx__topo_add(ld->t, EPX_TOPO_HOST, -1, name)) < 0)
        return nomem(ld);
    h.name = epx_topo_obj(ld->t, h.index)->name;
    epx_topo_obj_t *ho = epx__topo_objw(ld->t, h.index);
    if (model && !(ho->model = epx__topo_str(ld->t, model)))
        return nomem(ld);
    ho->memory_bytes = mem;
    ld->context = type ? ctx : NULL;
    if ((st = host_objects(ld, body, bpath, &h, 1)) == EPX_OK &&
        (st = host_objects(ld, body, bpath, &h, 2)) == EPX_OK)
        st = load_links(ld, body, bpath, &h);
    ld->context = NULL;
    return st;
}

/* ---------------------------------------------------------------- root */

static epx_status_t load_sources(ld_t *ld, json_t *root)
{
    static const char *const keys[] = { "what", "url", "note", NULL };
    json_t *arr, *s;
    size_t i;
    epx_status_t st = get_array(ld, root, "$", "sources", 0, &arr);
    if (st != EPX_OK || !arr)
        return st;
    json_array_foreach(arr, i, s) {
        char p[PATH_LEN];
        const char *v = NULL;
        item(p, "$.sources", i);
        if ((st = want_object(ld, s, p)) != EPX_OK ||
            (st = check_keys(ld, s, p, keys)) != EPX_OK ||
            (st = get_str(ld, s, p, "what", 1, &v)) != EPX_OK ||
            (st = get_str(ld, s, p, "url", 1, &v)) != EPX_OK ||
            (st = get_str(ld, s, p, "note", 0, &v)) != EPX_OK)
            return st;
    }
    return EPX_OK;
}

static epx_status_t load_root(ld_t *ld, json_t *root)
{
    static const char *const keys[] = { "schema", "name", "description",
                                        "sources", "domains", "host_types",
                                        "hosts", "links", NULL };
    const char *name = NULL, *desc = NULL;
    long long schema = 0;
    json_t *hosts, *h;
    size_t i;
    epx_status_t st;
    if ((st = want_object(ld, root, "$")) != EPX_OK ||
        (st = check_keys(ld, root, "$", keys)) != EPX_OK ||
        (st = get_int(ld, root, "$", "schema", 1, 1, INT_MAX, &schema)) != EPX_OK)
        return st;
    if (schema != DESC_SCHEMA)
        return bad(ld, "$.schema", "schema %lld is not one this library reads "
                                   "(%d)", schema, DESC_SCHEMA);
    if ((st = get_str(ld, root, "$", "name", 1, &name)) != EPX_OK ||
        (st = get_str(ld, root, "$", "description", 0, &desc)) != EPX_OK ||
        (st = load_sources(ld, root)) != EPX_OK ||
        (st = load_domains(ld, root)) != EPX_OK ||
        (st = get_array(ld, root, "$", "hosts", 1, &hosts)) != EPX_OK)
        return st;
    ld->types = json_object_get(root, "host_types");
    if (ld->types && !json_is_object(ld->types))
        return bad(ld, "$.host_types", "must be an object, not %s",
                   type_name(ld->types));
    if (json_array_size(hosts) == 0)
        return bad(ld, "$.hosts", "a system has at least one host");
    if (!(ld->t = epx__topo_new(name)))
        return nomem(ld);
    json_array_foreach(hosts, i, h)
        if ((st = load_host(ld, h, i)) != EPX_OK)
            return st;
    if ((st = load_links(ld, root, "$", NULL)) != EPX_OK)
        return st;
    int limit = 0;
    for (int d = 0; d < ld->ndoms; d++) {
        if (ld->doms[d].decl[0] && ld->doms[d].gpus == 0)
            return bad(ld, ld->doms[d].decl, "no GPU is in NVLink domain '%s'",
                       ld->doms[d].id);
        if (ld->doms[d].size > DESC_DOMAIN_GPUS && ld->doms[d].size > limit)
            limit = ld->doms[d].size;
    }
    ld->t->max_domain_gpus = limit;
    if ((st = epx__topo_finish(ld->t)) != EPX_OK) {
        char why[512];
        snprintf(why, sizeof(why), "%s", epx_last_error());
        return epx__error(st, "%s: $: %s", ld->origin, why);
    }
    return EPX_OK;
}

epx_status_t epx__topo_from_json(const char *text, const char *origin,
                                 epx_topo_t **topo)
{
    ld_t ld = { origin ? origin : "(description)", NULL, NULL, NULL, NULL,
                0, 0 };
    if (!text || !topo)
        return epx__error(EPX_ERR_INVALID, "topo: no description text");
    const char *c = text;
    while (isspace((unsigned char)*c))
        c++;
    if (!*c)
        return bad(&ld, "$", "empty file (no JSON)");
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return bad(&ld, "$", "not JSON (line %d, column %d): %s", jerr.line,
                   jerr.column, jerr.text);
    epx_status_t st = load_root(&ld, root);
    json_decref(root);
    free(ld.doms);
    if (st != EPX_OK) {
        epx_topo_destroy(ld.t);
        return st;
    }
    *topo = ld.t;
    return EPX_OK;
}

/* ------------------------------------------------------------ the file */

static epx_status_t load_file(const char *path, epx_topo_t **topo)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return epx__syserror(EPX_ERR_INVALID, "%s: cannot open", path);
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return epx__error(EPX_ERR_INVALID, "%s: not a regular file", path);
    }
    if ((uintmax_t)sb.st_size > DESC_MAX_BYTES) {
        fclose(f);
        return epx__error(EPX_ERR_INVALID, "%s: larger than %u MiB", path,
                          DESC_MAX_BYTES >> 20);
    }
    size_t n = (size_t)sb.st_size;
    char *text = malloc(n + 1);
    if (!text) {
        fclose(f);
        return epx__error(EPX_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(text, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != n) {
        free(text);
        return epx__error(EPX_ERR_INVALID, "%s: read error", path);
    }
    text[n] = '\0';
    epx_status_t st;
    if (memchr(text, '\0', n))
        st = epx__error(EPX_ERR_INVALID, "%s: $: not JSON (a NUL byte)", path);
    else
        st = epx__topo_from_json(text, path, topo);
    free(text);
    return st;
}

static int is_path(const char *s)
{
    size_t n = strlen(s);
    return strchr(s, '/') || (n >= 5 && strcmp(s + n - 5, ".json") == 0);
}

int epx_topo_systems_dirs(const char **dirs, int max)
{
    const char *all[4];
    int n = 0;
    const char *env = epx__cfg_str("EPX_SYSTEMS_DIR");
    if (*env)
        all[n++] = env;
    n += epx__paths(EPX_PATH_SYSTEMS, all + n, 4 - n);
    for (int i = 0; dirs && i < n && i < max; i++)
        dirs[i] = all[i];
    return n;
}

/* System names are looked up in epx_topo_systems_dirs's order. */
epx_status_t epx_topo_load(const char *name_or_path, epx_topo_t **topo)
{
    if (!name_or_path || !*name_or_path || !topo)
        return epx__error(EPX_ERR_INVALID,
                          "topo: load needs a system name or a path");
    if (is_path(name_or_path))
        return load_file(name_or_path, topo);
    for (const char *c = name_or_path; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_' && *c != '.')
            return epx__error(EPX_ERR_INVALID,
                              "topo: '%s' is not a system name (letters, "
                              "digits, '-', '_', '.') nor a path",
                              name_or_path);
    const char *dirs[4];
    int nd = epx_topo_systems_dirs(dirs, 4);
    if (nd > 4)
        nd = 4;
    char tried[1024] = "";
    for (int i = 0; i < nd; i++) {
        if (!dirs[i] || !*dirs[i])
            continue;
        char path[PATH_MAX];
        struct stat sb;
        int n = snprintf(path, sizeof(path), "%s/%s.json", dirs[i],
                         name_or_path);
        if (n < 0 || (size_t)n >= sizeof(path))
            continue;
        if (stat(path, &sb) == 0)
            return load_file(path, topo);
        size_t l = strlen(tried);
        snprintf(tried + l, sizeof(tried) - l, "%s%s", l ? ", " : "", dirs[i]);
    }
    return epx__error(EPX_ERR_INVALID,
                      "topo: no system description '%s' (looked in %s)",
                      name_or_path, tried[0] ? tried : "no directory");
}

/*
 * System descriptions (topology/load.c, export.c, topology/systems/<name>.json):
 * every shipped description loads with the counts its hardware has; every
 * malformed one (tests/topology/data/bad) fails with EPX_ERR_INVALID and a
 * message naming the file, the JSON path and the reason; damaged copies of
 * the shipped ones never crash; export -> load gives the same map and the
 * same text; names are looked up where the README says.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "common/epx_test.h"
#include "topology/model.h"

#define DATA EPX_TEST_SRCDIR "/tests/topology/data/bad/"
#define SYSTEMS EPX_TEST_SRCDIR "/topology/systems/"

static const char *const shipped[] = {
    "gb200-nvl72", "gb300-nvl72", "gb200-nvl72-x2", "hgx-h100-8",
    "hgx-h200-8", "hgx-h100-x16", "dgx-b200-8", "cpu-host",
};
#define NSHIPPED (sizeof(shipped) / sizeof(shipped[0]))

static epx_topo_t *load(const char *name)
{
    epx_topo_t *t = NULL;
    epx_status_t st = epx_topo_load(name, &t);
    if (st != EPX_OK)
        fail_msg("%s: %s", name, epx_last_error());
    return t;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* ------------------------------------------------------------- counts */

typedef struct expect {
    const char *name;
    int hosts, cpus, gpus, nvswitches, nics;
    int nvl_domains, gpus_per_domain;
    double gpu_nvlink_gbs;     /* per GPU, per direction */
    double nic_gbs;            /* every NIC */
    const char *arch;
    int racks_of_trays;        /* GPUs carry tray 0..17 and slot 0..3 */
} expect_t;

static const expect_t expected[] = {
    { "gb200-nvl72", 18, 36, 72, 0, 72, 1, 72, 900, 50, "blackwell", 1 },
    { "gb300-nvl72", 18, 36, 72, 0, 72, 1, 72, 900, 100, "blackwell", 1 },
    { "gb200-nvl72-x2", 36, 72, 144, 0, 144, 2, 72, 900, 50, "blackwell", 1 },
    { "hgx-h100-8", 1, 2, 8, 4, 8, 1, 8, 450, 50, "hopper", 0 },
    { "hgx-h200-8", 1, 2, 8, 4, 8, 1, 8, 450, 50, "hopper", 0 },
    { "hgx-h100-x16", 16, 32, 128, 64, 128, 16, 8, 450, 50, "hopper", 0 },
    { "dgx-b200-8", 1, 2, 8, 2, 8, 1, 8, 900, 50, "blackwell", 0 },
    { "cpu-host", 1, 2, 0, 0, 0, 0, 0, 0, 0, NULL, 0 },
};

static void check_counts(const expect_t *e)
{
    epx_topo_t *t = load(e->name);
    int n[5] = { 0 };
    assert_string_equal(epx_topo_name(t), e->name);
    for (int i = 0; i < epx_topo_num_objs(t); i++) {
        const epx_topo_obj_t *o = epx_topo_obj(t, i);
        assert_int_equal(o->index, i);
        n[o->kind]++;
        if (o->kind == EPX_TOPO_GPU) {
            assert_true(o->nvlink_gbs == e->gpu_nvlink_gbs);
            assert_int_equal(o->nvlinks, 18);
            assert_string_equal(o->arch, e->arch);
            assert_true(o->memory_bytes > 0);
            assert_true(o->domain >= 0);
            assert_int_equal(epx_topo_obj(t, o->cpu)->kind, EPX_TOPO_CPU);
            assert_int_equal(epx_topo_obj(t, o->cpu)->host, o->host);
            if (e->racks_of_trays) {
                assert_true(o->tray >= 0 && o->tray < 18);
                assert_true(o->slot >= 0 && o->slot < 4);
                assert_int_equal(epx_topo_obj(t, o->host)->kind, EPX_TOPO_HOST);
            }
        }
        if (o->kind == EPX_TOPO_NIC)
            assert_true(o->nic_gbs == e->nic_gbs);
    }
    assert_int_equal(n[EPX_TOPO_HOST], e->hosts);
    assert_int_equal(n[EPX_TOPO_CPU], e->cpus);
    assert_int_equal(n[EPX_TOPO_GPU], e->gpus);
    assert_int_equal(n[EPX_TOPO_NVSWITCH], e->nvswitches);
    assert_int_equal(n[EPX_TOPO_NIC], e->nics);
    int nvl = 0, hostd = 0;
    for (int d = 0; d < epx_topo_num_domains(t); d++) {
        const epx_topo_domain_t *dm = epx_topo_domain(t, d);
        if (dm->kind == EPX_DOMAIN_HOST) {
            hostd++;
            continue;
        }
        nvl++;
        assert_int_equal(dm->num_members, e->gpus_per_domain);
        assert_int_equal(dm->num_cliques, 1);
        assert_true(dm->nvlink_gbs == e->gpu_nvlink_gbs);
        for (int k = 0; k < dm->num_members; k++)
            assert_int_equal(epx_topo_obj(t, dm->members[k])->domain, d);
    }
    assert_int_equal(nvl, e->nvl_domains);
    assert_int_equal(hostd, e->hosts);
    if (e->racks_of_trays) {   /* every (rack, tray, slot) exactly once */
        int seen[2][18][4] = { { { 0 } } };
        for (int i = 0; i < epx_topo_num_objs(t); i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->kind != EPX_TOPO_GPU)
                continue;
            int r = 0;
            for (int d = 0, k = 0; d < epx_topo_num_domains(t); d++)
                if (epx_topo_domain(t, d)->kind == EPX_DOMAIN_NVLINK) {
                    if (d == o->domain)
                        r = k;
                    k++;
                }
            assert_true(r < 2);
            seen[r][o->tray][o->slot]++;
        }
        for (int r = 0; r < e->nvl_domains; r++)
            for (int k = 0; k < 18; k++)
                for (int s = 0; s < 4; s++)
                    assert_int_equal(seen[r][k][s], 1);
    }
    epx_topo_destroy(t);
}

static void shipped_counts(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++)
        check_counts(&expected[i]);
}

/* Where a GPU has NVLink links to NVSwitch objects, they add up to the
 * GPU's own link count and bandwidth (the two ways a description says it
 * must agree). */
static void shipped_nvlink_consistent(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSHIPPED; s++) {
        epx_topo_t *t = load(shipped[s]);
        for (int g = 0; g < epx_topo_num_objs(t); g++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, g);
            if (o->kind != EPX_TOPO_GPU)
                continue;
            int links = 0, nsw = 0;
            double bw = 0;
            for (int i = 0; i < epx_topo_num_links(t); i++) {
                const epx_topo_link_t *l = epx_topo_link(t, i);
                int other = l->a == g ? l->b : l->b == g ? l->a : -1;
                if (other < 0 || l->cls != EPX_LINK_NVLINK ||
                    epx_topo_obj(t, other)->kind != EPX_TOPO_NVSWITCH)
                    continue;
                nsw++;
                links += l->count;
                bw += l->bw_gbs;
            }
            if (nsw == 0)
                continue;
            if (links != o->nvlinks || bw != o->nvlink_gbs)
                fail_msg("%s: %s of host %d: %d links / %g GB/s to NVSwitches, "
                         "%d / %g on the GPU", shipped[s], o->name, o->host,
                         links, bw, o->nvlinks, o->nvlink_gbs);
        }
        epx_topo_destroy(t);
    }
}

static int obj_at(const epx_topo_t *t, const char *host, const char *name)
{
    int h = epx__topo_find(t, -1, host);
    assert_true(h >= 0);
    int i = epx__topo_find(t, h, name);
    if (i < 0)
        fail_msg("no %s/%s", host, name);
    return i;
}

static void path_is(const epx_topo_t *t, int a, int b, epx_link_class_t cls,
                    double gbs)
{
    epx_topo_path_t p;
    assert_int_equal(epx_topo_path_between(t, a, b, &p), EPX_OK);
    if (p.cls != cls || p.bw_gbs != gbs)
        fail_msg("%s: path %d-%d is %s at %g GB/s, wanted %s at %g",
                 epx_topo_name(t), a, b, epx_link_class_str(p.cls), p.bw_gbs,
                 epx_link_class_str(cls), gbs);
}

/* Paths of the clusters: NVLink inside a domain, the network between. */
static void shipped_paths(void **state)
{
    (void)state;
    epx_topo_t *t = load("gb200-nvl72-x2");
    int a = obj_at(t, "rack0-tray00", "gpu0");
    path_is(t, a, obj_at(t, "rack0-tray17", "gpu3"), EPX_LINK_NVLINK, 900);
    path_is(t, a, obj_at(t, "rack1-tray00", "gpu0"), EPX_LINK_NET, 50);
    path_is(t, a, obj_at(t, "rack0-tray00", "cpu0"), EPX_LINK_C2C, 450);
    epx_topo_destroy(t);

    t = load("hgx-h100-x16");
    a = obj_at(t, "node00", "gpu0");
    path_is(t, a, obj_at(t, "node00", "gpu7"), EPX_LINK_NVLINK, 450);
    path_is(t, a, obj_at(t, "node01", "gpu0"), EPX_LINK_NET, 50);
    path_is(t, a, obj_at(t, "node00", "mlx5_0"), EPX_LINK_PIX, 63);
    path_is(t, obj_at(t, "node00", "gpu1"), obj_at(t, "node00", "mlx5_3"),
            EPX_LINK_PIX, 63);
    epx_topo_destroy(t);
}

/* The README's rank mapping: 72 ranks on gb200-nvl72 are one domain, rank
 * 4k..4k+3 on tray k, slot = rank % 4. */
static void shipped_ranks(void **state)
{
    (void)state;
    epx_topo_t *t = load("gb200-nvl72");
    assert_int_equal(epx_topo_place(t, 72), EPX_OK);
    int d0 = epx_topo_rank_domain(t, 0);
    assert_int_equal(epx_topo_domain(t, d0)->kind, EPX_DOMAIN_NVLINK);
    for (int r = 0; r < 72; r++) {
        const epx_topo_obj_t *g = epx_topo_obj(t, epx_topo_rank_gpu(t, r));
        assert_int_equal(epx_topo_rank_domain(t, r), d0);
        assert_int_equal(g->tray, r / 4);
        assert_int_equal(g->slot, r % 4);
    }
    epx_topo_destroy(t);
}

/* Each description with a GPU says where its figures come from. */
static void shipped_sources(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSHIPPED; s++) {
        char path[1024];
        snprintf(path, sizeof(path), SYSTEMS "%s.json", shipped[s]);
        json_error_t err;
        json_t *root = json_load_file(path, 0, &err);
        assert_non_null(root);
        json_t *src = json_object_get(root, "sources");
        assert_true(json_is_array(src));
        epx_topo_t *t = load(shipped[s]);
        int gpus = 0;
        for (int i = 0; i < epx_topo_num_objs(t); i++)
            gpus += epx_topo_obj(t, i)->kind == EPX_TOPO_GPU;
        epx_topo_destroy(t);
        if (gpus > 0 && json_array_size(src) == 0)
            fail_msg("%s: no sources", shipped[s]);
        size_t i;
        json_t *v;
        json_array_foreach(src, i, v) {
            const char *url = json_string_value(json_object_get(v, "url"));
            assert_non_null(url);
            assert_true(strncmp(url, "https://", 8) == 0);
        }
        json_decref(root);
    }
}

/* ---------------------------------------------------------- malformed */

typedef struct bad {
    const char *file;
    const char *path;          /* the JSON path the message names */
    const char *reason;        /* a piece of the reason */
} bad_t;

static const bad_t bad_cases[] = {
    { "missing-name.json", "$.hosts[0].gpus[1].name", "missing field" },
    { "missing-hosts.json", "$.hosts", "missing field" },
    { "wrong-type.json", "$.hosts[0].gpus[0].nvlink.links", "must be an integer, not a string" },
    { "wrong-type-host.json", "$.hosts[0]", "must be an object" },
    { "duplicate-name.json", "$.hosts[0].gpus[1].name", "duplicate name 'gpu0'" },
    { "duplicate-host.json", "$.hosts[1].name", "duplicate host name 'node0'" },
    { "duplicate-domain.json", "$.domains[1].id", "duplicate domain id 'rack0'" },
    { "unknown-link-end.json", "$.hosts[0].links[0].b", "no object named 'gpu9'" },
    { "unknown-cpu.json", "$.hosts[0].gpus[1].cpu", "no object named 'cpu7'" },
    { "cpu-not-a-cpu.json", "$.hosts[0].nics[0].cpu", "not a cpu" },
    { "cross-link-unknown-host.json", "$.links[0].b", "no host named 'node7'" },
    { "unknown-type.json", "$.hosts[0].type", "no host type 'hgx'" },
    { "self-link.json", "$.hosts[0].links[0].b", "two different objects" },
    { "zero-bandwidth.json", "$.hosts[0].links[0].gbs", "must be > 0" },
    { "negative-bandwidth.json", "$.hosts[0].gpus[1].nvlink.gbs", "(got -25)" },
    { "zero-nic-speed.json", "$.hosts[0].nics[0].gbit", "must be > 0" },
    { "type-zero-nic-speed.json", "$.host_types.tray.nics[0].gbit", "(for $.hosts[0] 'tray00')" },
    { "domain-73.json", "$.host_types.tray.gpus[0]", "would have 73 GPUs, more than 72" },
    { "domain-over-declared.json", "$.host_types.tray.gpus[0]", "more than the 64 declared at $.domains[0]" },
    { "unused-domain.json", "$.domains[0]", "no GPU is in NVLink domain 'rack9'" },
    { "unknown-class.json", "$.hosts[0].links[0].class", "unknown class 'NVL'" },
    { "unknown-kind.json", "$.hosts[0].objects[0].kind", "unknown kind 'fpga'" },
    { "unknown-field.json", "$.hosts[0].gpus[0].nvlnk", "unknown field" },
    { "bad-schema.json", "$.schema", "schema 2" },
    { "bad-pci.json", "$.hosts[0].gpus[0].pci", "not a PCI bus id" },
    { "no-hosts.json", "$.hosts", "at least one host" },
    { "not-json.json", "$", "not JSON (line 4" },
    { "empty.json", "$", "empty file" },
};

static void malformed(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_t *b = &bad_cases[i];
        char path[1024], want[1280];
        snprintf(path, sizeof(path), DATA "%s", b->file);
        epx_topo_t *t = (epx_topo_t *)&path;   /* must stay untouched */
        epx_status_t st = epx_topo_load(path, &t);
        const char *msg = epx_last_error();
        if (st != EPX_ERR_INVALID)
            fail_msg("%s: status %d (%s)", b->file, st, msg);
        assert_ptr_equal(t, (epx_topo_t *)&path);
        /* "<file>: <json path>: <reason>" */
        snprintf(want, sizeof(want), "%s: %s: ", path, b->path);
        if (strncmp(msg, want, strlen(want)) != 0 || !strstr(msg, b->reason))
            fail_msg("%s: message '%s', wanted '%s...%s'", b->file, msg, want,
                     b->reason);
    }
}

/* A 144-GPU domain loads when declared so; the same text without the
 * declaration does not. */
static void declared_domain(void **state)
{
    (void)state;
    static const char *fmt =
        "{\"schema\": 1, \"name\": \"nvl144\", %s"
        " \"host_types\": {\"t\": {\"gpus\": ["
        "  {\"name\": \"g0\", \"nvlink\": {\"links\": 18, \"gbs\": 50}},"
        "  {\"name\": \"g1\", \"nvlink\": {\"links\": 18, \"gbs\": 50}},"
        "  {\"name\": \"g2\", \"nvlink\": {\"links\": 18, \"gbs\": 50}},"
        "  {\"name\": \"g3\", \"nvlink\": {\"links\": 18, \"gbs\": 50}}]}},"
        " \"hosts\": [%s]}";
    char hosts[8192] = "", text[16384];
    for (int k = 0; k < 36; k++) {
        size_t n = strlen(hosts);
        snprintf(hosts + n, sizeof(hosts) - n,
                 "%s{\"name\": \"h%d\", \"type\": \"t\", \"nvlink_domain\": \"big\"}",
                 k ? ", " : "", k);
    }
    snprintf(text, sizeof(text), fmt,
             "\"domains\": [{\"id\": \"big\", \"size\": 144}],", hosts);
    epx_topo_t *t = NULL;
    assert_int_equal(epx__topo_from_json(text, "nvl144", &t), EPX_OK);
    int nvl = 0;
    for (int d = 0; d < epx_topo_num_domains(t); d++)
        if (epx_topo_domain(t, d)->kind == EPX_DOMAIN_NVLINK) {
            nvl++;
            assert_int_equal(epx_topo_domain(t, d)->num_members, 144);
        }
    assert_int_equal(nvl, 1);
    /* its export declares the domain again, so it loads back */
    char *x = NULL;
    assert_int_equal(epx__topo_to_json(t, &x), EPX_OK);
    assert_non_null(strstr(x, "\"domains\""));
    epx_topo_t *u = NULL;
    assert_int_equal(epx__topo_from_json(x, "export", &u), EPX_OK);
    free(x);
    epx_topo_destroy(u);
    epx_topo_destroy(t);

    snprintf(text, sizeof(text), fmt, "", hosts);
    t = NULL;
    assert_int_equal(epx__topo_from_json(text, "nvl144", &t), EPX_ERR_INVALID);
    assert_null(t);
    assert_non_null(strstr(epx_last_error(), "more than 72"));
}

/* Damaged copies of every shipped description (cut short, a byte
 * changed) load or fail with EPX_ERR_INVALID naming the origin; never a
 * crash (run under valgrind for leaks). */
static void damaged(void **state)
{
    (void)state;
    static const char junk[] = "{}[]\",:-0123456789.eatrnu \n/x";
    epxt_rng_t rng = { epxt_hash(epxt_seed(), 0x5157, 0, 0, 0) };
    int ok = 0, invalid = 0;
    for (size_t s = 0; s < NSHIPPED; s++) {
        char path[1024];
        snprintf(path, sizeof(path), SYSTEMS "%s.json", shipped[s]);
        char *orig = slurp(path);
        size_t n = strlen(orig);
        for (int k = 0; k < 150; k++) {
            char *text = strdup(orig);
            assert_non_null(text);
            size_t at = (size_t)epxt_below(&rng, n);
            if (k % 3 == 0)
                text[at] = '\0';
            else
                text[at] = junk[epxt_below(&rng, sizeof(junk) - 1)];
            epx_topo_t *t = NULL;
            epx_status_t st = epx__topo_from_json(text, "damaged", &t);
            if (st == EPX_OK) {
                ok++;
                assert_non_null(t);
                epx_topo_destroy(t);
            } else {
                invalid++;
                if (st != EPX_ERR_INVALID ||
                    strncmp(epx_last_error(), "damaged: $", 10) != 0)
                    fail_msg("%s, byte %zu: %d %s", shipped[s], at, st,
                             epx_last_error());
                assert_null(t);
            }
            free(text);
        }
        free(orig);
    }
    print_message("damaged descriptions: %d loaded, %d refused\n", ok, invalid);
    assert_true(invalid > 0);
}

/* ---------------------------------------------------------- round trip */

static int str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Every public field of two maps. */
static void same_map(const epx_topo_t *t, const epx_topo_t *u, const char *what)
{
    assert_string_equal(epx_topo_name(t), epx_topo_name(u));
    assert_int_equal(epx_topo_num_objs(t), epx_topo_num_objs(u));
    for (int i = 0; i < epx_topo_num_objs(t); i++) {
        const epx_topo_obj_t *a = epx_topo_obj(t, i), *b = epx_topo_obj(u, i);
        if (a->kind != b->kind || a->index != b->index || a->host != b->host ||
            a->cpu != b->cpu || !str_eq(a->name, b->name) ||
            !str_eq(a->pci, b->pci) || !str_eq(a->model, b->model) ||
            a->memory_bytes != b->memory_bytes || a->os_index != b->os_index ||
            !str_eq(a->arch, b->arch) || !str_eq(a->chassis, b->chassis) ||
            a->tray != b->tray ||
            a->slot != b->slot || a->domain != b->domain ||
            a->clique != b->clique || a->nvlinks != b->nvlinks ||
            a->nvlink_gbs != b->nvlink_gbs || a->nic_gbs != b->nic_gbs)
            fail_msg("%s: object %d (%s) differs", what, i, a->name);
    }
    assert_int_equal(epx_topo_num_links(t), epx_topo_num_links(u));
    for (int i = 0; i < epx_topo_num_links(t); i++) {
        const epx_topo_link_t *a = epx_topo_link(t, i), *b = epx_topo_link(u, i);
        if (a->a != b->a || a->b != b->b || a->cls != b->cls ||
            a->count != b->count || a->bw_gbs != b->bw_gbs ||
            a->lat_us != b->lat_us)
            fail_msg("%s: link %d differs", what, i);
    }
    assert_int_equal(epx_topo_num_domains(t), epx_topo_num_domains(u));
    for (int d = 0; d < epx_topo_num_domains(t); d++) {
        const epx_topo_domain_t *a = epx_topo_domain(t, d);
        const epx_topo_domain_t *b = epx_topo_domain(u, d);
        if (a->index != b->index || a->kind != b->kind || !str_eq(a->id, b->id) ||
            a->num_members != b->num_members || a->num_cliques != b->num_cliques ||
            a->nvlink_gbs != b->nvlink_gbs ||
            memcmp(a->members, b->members,
                   sizeof(int) * (size_t)a->num_members) != 0)
            fail_msg("%s: domain %d differs", what, d);
    }
}

/* t -> text -> map -> text: the same map, the same text; and through a
 * file with epx_topo_export / epx_topo_load. */
static void round_trip(const epx_topo_t *t, const char *what, const char *dir)
{
    char *x1 = NULL, *x2 = NULL;
    assert_int_equal(epx__topo_to_json(t, &x1), EPX_OK);
    epx_topo_t *u = NULL;
    if (epx__topo_from_json(x1, what, &u) != EPX_OK)
        fail_msg("%s: export does not load: %s", what, epx_last_error());
    same_map(t, u, what);
    assert_int_equal(epx__topo_to_json(u, &x2), EPX_OK);
    assert_string_equal(x1, x2);

    char path[1024];
    snprintf(path, sizeof(path), "%s/%s.json", dir, what);
    assert_int_equal(epx_topo_export(u, path), EPX_OK);
    epx_topo_t *v = load(path);
    same_map(t, v, what);
    char *x3 = slurp(path);
    assert_string_equal(x1, x3);
    unlink(path);
    free(x1);
    free(x2);
    free(x3);
    epx_topo_destroy(u);
    epx_topo_destroy(v);
}

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/epx-test-systems-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

static void shipped_round_trip(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSHIPPED; s++) {
        epx_topo_t *t = load(shipped[s]);
        round_trip(t, shipped[s], tmpdir);
        epx_topo_destroy(t);
    }
}

/* A map a probe could make: links out of host order and across hosts,
 * fields in every form the exporter knows (per-link vs total NVLink
 * bandwidth, bytes vs GB, a NIC below 1 GB/s, a clique id, no clique). */
static void built_round_trip(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("probe");
    int h[2], c[2][2], g[2], k[2];
    for (int i = 0; i < 2; i++) {
        char name[32];
        snprintf(name, sizeof(name), "host-%d.example", i);
        h[i] = epx__topo_add(t, EPX_TOPO_HOST, -1, name);
        epx__topo_objw(t, h[i])->memory_bytes = 123456789;
        c[i][0] = epx__topo_add(t, EPX_TOPO_CPU, h[i], "numa0");
        c[i][1] = epx__topo_add(t, EPX_TOPO_CPU, h[i], "numa1");
        epx__topo_objw(t, c[i][1])->memory_bytes = 512000000000ULL;
        g[i] = epx__topo_add(t, EPX_TOPO_GPU, h[i], "gpu0");
        epx_topo_obj_t *o = epx__topo_objw(t, g[i]);
        o->cpu = c[i][1];
        o->pci = epx__topo_str(t, "0000:1b:00.0");
        o->nvlinks = i ? 18 : 0;
        o->nvlink_gbs = i ? 450 : 100.1;   /* no links: a total only */
        assert_int_equal(epx__topo_gpu_domain(t, g[i], i ? "uuid-1" : "uuid-0",
                                              i ? 7 : -1), EPX_OK);
        k[i] = epx__topo_add(t, EPX_TOPO_NIC, h[i], "eth0");
        epx__topo_objw(t, k[i])->nic_gbs = i ? 12.5 : 0.125;
        epx__topo_objw(t, k[i])->os_index = 3;
    }
    /* host 1's link first, then host 0's, then one across: not groupable */
    assert_int_equal(epx__topo_link(t, c[1][0], c[1][1], EPX_LINK_SYS, 1, 0, 0.3), EPX_OK);
    assert_int_equal(epx__topo_link(t, g[0], k[0], EPX_LINK_PXB, 0, 31.5, 0), EPX_OK);
    assert_int_equal(epx__topo_link(t, k[0], k[1], EPX_LINK_NET, 2, 25, 4.25), EPX_OK);
    assert_int_equal(epx__topo_link(t, h[0], h[1], EPX_LINK_NET, 1, 0, 0), EPX_OK);
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    round_trip(t, "probe", tmpdir);
    char *x = NULL;
    assert_int_equal(epx__topo_to_json(t, &x), EPX_OK);
    assert_non_null(strstr(x, "\"total_gbs\": 100.1"));
    assert_non_null(strstr(x, "\"memory_bytes\": 123456789"));
    assert_non_null(strstr(x, "\"gbit\": 1}"));
    assert_non_null(strstr(x, "\"a\": \"host-1.example/numa0\""));
    free(x);
    epx_topo_destroy(t);
}

/* What a description cannot hold is refused, not written wrong. */
static void export_refused(void **state)
{
    (void)state;
    char *x = NULL;
    epx_topo_t *t = epx__topo_new("unnamed");
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "h");
    epx__topo_add(t, EPX_TOPO_GPU, h, NULL);
    assert_int_equal(epx__topo_to_json(t, &x), EPX_ERR_UNSUPPORTED);
    assert_non_null(strstr(epx_last_error(), "has no name"));
    epx_topo_destroy(t);

    t = epx__topo_new("scattered");
    int a = epx__topo_add(t, EPX_TOPO_HOST, -1, "a");
    epx__topo_add(t, EPX_TOPO_HOST, -1, "b");
    epx__topo_add(t, EPX_TOPO_CPU, a, "cpu0");
    assert_int_equal(epx__topo_to_json(t, &x), EPX_ERR_UNSUPPORTED);
    assert_non_null(strstr(epx_last_error(), "does not follow its host"));
    epx_topo_destroy(t);

    t = epx__topo_new("twins");
    h = epx__topo_add(t, EPX_TOPO_HOST, -1, "h");
    epx__topo_add(t, EPX_TOPO_CPU, h, "cpu0");
    epx__topo_add(t, EPX_TOPO_CPU, h, "cpu0");
    assert_int_equal(epx__topo_to_json(t, &x), EPX_ERR_UNSUPPORTED);
    epx_topo_destroy(t);
    assert_null(x);
    assert_int_equal(epx_topo_export(NULL, "/tmp/x.json"), EPX_ERR_INVALID);
}

/* ------------------------------------------------------------- lookup */

static void lookup(void **state)
{
    (void)state;
    epx_topo_t *t = NULL;
    /* a name in $EPX_SYSTEMS_DIR wins over the shipped ones */
    char path[1024];
    snprintf(path, sizeof(path), "%s/cpu-host.json", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"schema\": 1, \"name\": \"mine\", \"hosts\": [{\"name\": \"x\"}]}\n", f);
    fclose(f);
    setenv("EPX_SYSTEMS_DIR", tmpdir, 1);
    assert_int_equal(epx_topo_load("cpu-host", &t), EPX_OK);
    assert_string_equal(epx_topo_name(t), "mine");
    epx_topo_destroy(t);
    /* not there: the source tree's */
    t = load("hgx-h100-8");
    epx_topo_destroy(t);
    unsetenv("EPX_SYSTEMS_DIR");
    unlink(path);
    t = load("cpu-host");
    assert_string_equal(epx_topo_name(t), "cpu-host");
    epx_topo_destroy(t);

    t = NULL;
    assert_int_equal(epx_topo_load("no-such-system", &t), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "no system description 'no-such-system'"));
    assert_int_equal(epx_topo_load("a b", &t), EPX_ERR_INVALID);
    assert_int_equal(epx_topo_load("/nonexistent/x.json", &t), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "/nonexistent/x.json"));
    assert_int_equal(epx_topo_load(tmpdir, &t), EPX_ERR_INVALID);   /* a dir */
    assert_int_equal(epx_topo_load("", &t), EPX_ERR_INVALID);
    assert_int_equal(epx_topo_load(NULL, &t), EPX_ERR_INVALID);
    assert_null(t);
}

int main(void)
{
    epxt_init("test_systems");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shipped_counts),
        cmocka_unit_test(shipped_nvlink_consistent),
        cmocka_unit_test(shipped_paths),
        cmocka_unit_test(shipped_ranks),
        cmocka_unit_test(shipped_sources),
        cmocka_unit_test(malformed),
        cmocka_unit_test(declared_domain),
        cmocka_unit_test(damaged),
        cmocka_unit_test(shipped_round_trip),
        cmocka_unit_test(built_round_trip),
        cmocka_unit_test(export_refused),
        cmocka_unit_test(lookup),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}

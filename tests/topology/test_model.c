/*
 * The topology map builder and queries (topology/model.c, merge.c), on maps
 * built by hand: domains and cliques, path classes, rank placement, merge
 * of per-rank maps, and the domain size limit.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "util/util.h"
#include "topology/model.h"

/* Host `name`: 2 CPUs, `ngpu` GPUs (half per CPU) in NVLink domain `dom`
 * (NULL: none), one 400 Gb/s NIC per CPU; a PIX link GPU0-NIC0. */
static int add_host(epx_topo_t *t, const char *name, int ngpu, const char *dom)
{
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, name);
    int c0 = epx__topo_add(t, EPX_TOPO_CPU, h, "cpu0");
    int c1 = epx__topo_add(t, EPX_TOPO_CPU, h, "cpu1");
    int g0 = -1;
    for (int i = 0; i < ngpu; i++) {
        char n[16];
        snprintf(n, sizeof(n), "gpu%d", i);
        int g = epx__topo_add(t, EPX_TOPO_GPU, h, n);
        epx_topo_obj_t *o = epx__topo_objw(t, g);
        o->cpu = i < ngpu / 2 ? c0 : c1;
        o->nvlinks = 18;
        o->nvlink_gbs = 450;
        if (dom)
            assert_int_equal(epx__topo_gpu_domain(t, g, dom, i < 4 ? 7 : 9), EPX_OK);
        if (i == 0)
            g0 = g;
    }
    for (int i = 0; i < 2; i++) {
        char n[16];
        snprintf(n, sizeof(n), "mlx5_%d", i);
        int k = epx__topo_add(t, EPX_TOPO_NIC, h, n);
        epx__topo_objw(t, k)->cpu = i ? c1 : c0;
        epx__topo_objw(t, k)->nic_gbs = 50;
        if (i == 0 && g0 >= 0)
            assert_int_equal(epx__topo_link(t, g0, k, EPX_LINK_PIX, 1, 64, 0), EPX_OK);
    }
    return h;
}

static int gpu(const epx_topo_t *t, const char *host, const char *name)
{
    int h = epx__topo_find(t, -1, host);
    assert_true(h >= 0);
    int g = epx__topo_find(t, h, name);
    assert_true(g >= 0);
    return g;
}

static void domains_paths_ranks(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("two-hgx");
    add_host(t, "a", 8, "uuid-a");
    add_host(t, "b", 8, "uuid-b");
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    /* two NVLink domains (8 GPUs, 2 cliques each) + two host domains */
    assert_int_equal(epx_topo_num_domains(t), 4);
    const epx_topo_domain_t *d0 = epx_topo_domain(t, 0);
    assert_int_equal(d0->kind, EPX_DOMAIN_NVLINK);
    assert_string_equal(d0->id, "uuid-a");
    assert_int_equal(d0->num_members, 8);
    assert_int_equal(d0->num_cliques, 2);
    assert_true(d0->nvlink_gbs == 450);
    int a0 = gpu(t, "a", "gpu0"), a5 = gpu(t, "a", "gpu5"), b0 = gpu(t, "b", "gpu0");
    assert_int_equal(epx_topo_obj(t, a5)->clique, 1);
    epx_topo_path_t p;
    assert_int_equal(epx_topo_path_between(t, a0, a0, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_SELF);
    assert_int_equal(epx_topo_path_between(t, a0, a5, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_NVLINK);
    assert_true(p.bw_gbs == 450);
    assert_int_equal(epx_topo_path_between(t, a0, b0, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_NET);
    assert_true(p.bw_gbs == 50);
    int nic0 = epx__topo_find(t, epx__topo_find(t, -1, "a"), "mlx5_0");
    int nic1 = epx__topo_find(t, epx__topo_find(t, -1, "a"), "mlx5_1");
    assert_int_equal(epx_topo_path_between(t, a0, nic0, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_PIX);           /* explicit link */
    assert_int_equal(epx_topo_path_between(t, a0, nic1, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_SYS);           /* other NUMA node */
    assert_int_equal(epx_topo_path_between(t, a5, nic1, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_NODE);
    assert_true(strcmp(epx_link_class_str(EPX_LINK_NVLINK), "NV") == 0);

    assert_int_equal(epx_topo_place(t, 17), EPX_ERR_RANGE);
    assert_int_equal(epx_topo_place(t, 12), EPX_OK);
    assert_int_equal(epx_topo_num_ranks(t), 12);
    assert_int_equal(epx_topo_rank_gpu(t, 0), a0);
    assert_int_equal(epx_topo_rank_gpu(t, 8), b0);
    assert_int_equal(epx_topo_rank_domain(t, 7), 0);
    assert_int_equal(epx_topo_rank_domain(t, 8), epx_topo_obj(t, b0)->domain);
    epx_topo_destroy(t);
}

static void cpu_only_placement(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("cpus");
    add_host(t, "x", 0, NULL);
    add_host(t, "y", 0, NULL);
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    assert_int_equal(epx_topo_num_domains(t), 2);
    assert_int_equal(epx_topo_domain(t, 1)->kind, EPX_DOMAIN_HOST);
    assert_int_equal(epx_topo_place(t, 5), EPX_OK);   /* blocks of 3 */
    int x = epx__topo_find(t, -1, "x"), y = epx__topo_find(t, -1, "y");
    int want[5] = { x, x, x, y, y };
    for (int r = 0; r < 5; r++) {
        assert_int_equal(epx_topo_rank_host(t, r), want[r]);
        assert_int_equal(epx_topo_rank_gpu(t, r), -1);
        assert_int_equal(epx_topo_rank_domain(t, r), r < 3 ? 0 : 1);
    }
    epx_topo_destroy(t);
}

static void merge_dedups_hosts(void **state)
{
    (void)state;
    epx_topo_t *p[3] = { epx__topo_new("probe"), epx__topo_new("probe"),
                         epx__topo_new("probe") };
    add_host(p[0], "a", 4, "u");
    add_host(p[1], "a", 4, "u");      /* same host from another rank */
    add_host(p[2], "b", 4, "u");      /* same NVLink domain, other tray */
    epx_topo_t *m;
    assert_int_equal(epx__topo_merge(p, 3, &m), EPX_OK);
    assert_int_equal(epx__topo_finish(m), EPX_OK);
    assert_int_equal(epx_topo_num_objs(m), 2 * epx_topo_num_objs(p[0]));
    assert_int_equal(epx_topo_num_links(m), 2);
    const epx_topo_domain_t *d = epx_topo_domain(m, 0);
    assert_int_equal(d->num_members, 8);              /* one 8-GPU domain */
    int g = gpu(m, "b", "gpu1");
    assert_int_equal(epx_topo_obj(m, g)->domain, 0);
    assert_int_equal(epx_topo_obj(m, epx_topo_obj(m, g)->cpu)->kind,
                     EPX_TOPO_CPU);
    epx_topo_path_t pa;
    assert_int_equal(epx_topo_path_between(m, gpu(m, "a", "gpu0"), g, &pa), EPX_OK);
    assert_int_equal(pa.cls, EPX_LINK_NVLINK);
    for (int i = 0; i < 3; i++)
        epx_topo_destroy(p[i]);
    epx_topo_destroy(m);
}

static void domain_size_limit(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("too-big");
    for (int h = 0; h < 19; h++) {          /* 19 trays x 4 = 76 GPUs */
        char n[16];
        snprintf(n, sizeof(n), "tray%d", h);
        add_host(t, n, 4, "rack");
    }
    epx__error_clear();
    assert_int_equal(epx__topo_finish(t), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "76 GPUs"));
    epx_topo_destroy(t);
    t = epx__topo_new("declared");
    t->max_domain_gpus = 144;
    for (int h = 0; h < 19; h++) {
        char n[16];
        snprintf(n, sizeof(n), "tray%d", h);
        add_host(t, n, 4, "rack");
    }
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    epx_topo_destroy(t);
}

static void bad_builder_calls(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("bad");
    assert_int_equal(epx__topo_add(t, EPX_TOPO_GPU, 0, "orphan"), -1);
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "h");
    int c = epx__topo_add(t, EPX_TOPO_CPU, h, "cpu0");
    assert_int_equal(epx__topo_add(t, EPX_TOPO_GPU, c, "gpu0"), -1); /* not a host */
    assert_int_equal(epx__topo_link(t, h, h, EPX_LINK_SYS, 1, 1, 0), EPX_ERR_INVALID);
    assert_int_equal(epx__topo_link(t, h, c, EPX_LINK_SYS, 1, -1, 0), EPX_ERR_INVALID);
    assert_int_equal(epx__topo_gpu_domain(t, c, "x", 0), EPX_ERR_INVALID);
    epx_topo_path_t p;
    assert_int_equal(epx_topo_path_between(t, 0, 99, &p), EPX_ERR_INVALID);
    epx_topo_destroy(t);
    epx_topo_destroy(NULL);
}

int main(void)
{
    epxt_init("test_model");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(domains_paths_ranks),
        cmocka_unit_test(cpu_only_placement),
        cmocka_unit_test(merge_dedups_hosts),
        cmocka_unit_test(domain_size_limit),
        cmocka_unit_test(bad_builder_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

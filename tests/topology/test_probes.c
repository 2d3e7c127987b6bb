/*
 * The probes (topology/probe*.c): the hwloc probe on the hand-written XML
 * fixtures of tests/topology/data (objects, NUMA affinity, the PCIe class
 * of every GPU-GPU and GPU-NIC pair), the translation of NVML and CUDA
 * records into the map, the NVML and CUDA probes on this machine, and the
 * live epx_topo_probe.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "topology/probe.h"

#define DATA EPX_TEST_SRCDIR "/tests/topology/data/"

static epx_topo_t *load_fixture(const char *file, int *host)
{
    epx_topo_t *t = epx__topo_new("fixture");
    assert_non_null(t);
    *host = epx__topo_add(t, EPX_TOPO_HOST, -1, "node0");
    assert_true(*host >= 0);
    epx_status_t st = epx__topo_probe_hwloc(t, *host, file);
    if (st != EPX_OK)
        fail_msg("%s: %s", file, epx_last_error());
    return t;
}

static int count(const epx_topo_t *t, epx_topo_kind_t kind)
{
    int n = 0;
    for (int i = 0; i < epx_topo_num_objs(t); i++)
        n += epx_topo_obj(t, i)->kind == kind;
    return n;
}

static const epx_topo_obj_t *named(const epx_topo_t *t, int host, const char *name)
{
    int i = epx__topo_find(t, host, name);
    if (i < 0)
        fail_msg("no object '%s'", name);
    return epx_topo_obj(t, i);
}

/* Class of the explicit link between two objects; -1 when none. */
static int link_class(const epx_topo_t *t, int a, int b, double *bw)
{
    int found = -1;
    for (int i = 0; i < epx_topo_num_links(t); i++) {
        const epx_topo_link_t *l = epx_topo_link(t, i);
        if ((l->a == a && l->b == b) || (l->a == b && l->b == a)) {
            assert_int_equal(found, -1);          /* one link per pair */
            found = (int)l->cls;
            if (bw)
                *bw = l->bw_gbs;
        }
    }
    return found;
}

/* Each row: the classes from gpu<r> to every column object, in the manner
 * of nvidia-smi topo -m ("X" on the diagonal). */
static void check_matrix(const epx_topo_t *t, int host, const char *col_fmt,
                         int ncol, const char *const *rows, int nrow)
{
    for (int r = 0; r < nrow; r++) {
        char name[32], want[256];
        snprintf(name, sizeof(name), "gpu%d", r);
        int a = named(t, host, name)->index;
        snprintf(want, sizeof(want), "%s", rows[r]);
        char *save = NULL, *tok = strtok_r(want, " ", &save);
        for (int c = 0; c < ncol; c++, tok = strtok_r(NULL, " ", &save)) {
            assert_non_null(tok);
            snprintf(name, sizeof(name), col_fmt, c);
            int b = named(t, host, name)->index;
            const char *got = a == b ? "X" : epx_link_class_str(link_class(t, a, b, NULL));
            if (strcmp(got, tok))
                fail_msg("gpu%d-%s: %s, expected %s", r, name, got, tok);
        }
    }
}

/* ---- HGX H100 fixture */

static const char *const hgx_gpu_pci[] = {
    "0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
    "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0",
};
static const char *const hgx_nic_pci[] = {
    "0000:19:00.0", "0000:29:00.0", "0000:3b:00.0", "0000:5c:00.0",
    "0000:9b:00.0", "0000:aa:00.0", "0000:bb:00.0", "0000:da:00.0",
};

static void hgx_objects(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "hgx-h100.xml", &h);
    assert_int_equal(count(t, EPX_TOPO_HOST), 1);
    assert_int_equal(count(t, EPX_TOPO_CPU), 2);
    assert_int_equal(count(t, EPX_TOPO_GPU), 8);      /* not the BMC's VGA */
    assert_int_equal(count(t, EPX_TOPO_NVSWITCH), 4);
    assert_int_equal(count(t, EPX_TOPO_NIC), 8);      /* not the NVMe drive */
    int cpu[2];
    for (int c = 0; c < 2; c++) {
        char name[16];
        snprintf(name, sizeof(name), "cpu%d", c);
        const epx_topo_obj_t *o = named(t, h, name);
        cpu[c] = o->index;
        assert_int_equal(o->os_index, c);
        assert_int_equal(o->cpu, o->index);
        assert_true(o->memory_bytes == 1099511627776ull);
        assert_string_equal(o->model, "Intel(R) Xeon(R) Platinum 8480C");
    }
    for (int g = 0; g < 8; g++) {
        char name[16];
        snprintf(name, sizeof(name), "gpu%d", g);
        const epx_topo_obj_t *o = named(t, h, name);
        assert_string_equal(o->pci, hgx_gpu_pci[g]);
        assert_int_equal(o->os_index, g);
        assert_int_equal(o->cpu, cpu[g / 4]);
        assert_string_equal(o->model, "H100 SXM5 80GB");
        assert_string_equal(o->arch, "hopper");
        assert_int_equal(o->domain, -1);
        snprintf(name, sizeof(name), "mlx5_%d", g);
        o = named(t, h, name);
        assert_int_equal(o->kind, EPX_TOPO_NIC);
        assert_string_equal(o->pci, hgx_nic_pci[g]);
        assert_int_equal(o->cpu, cpu[g / 4]);
        assert_string_equal(o->model, "ConnectX-7");
        assert_true(o->nic_gbs == 0);                 /* XML: no sysfs rate */
    }
    for (int s = 0; s < 4; s++) {
        char name[16], pci[16];
        snprintf(name, sizeof(name), "nvswitch%d", s);
        snprintf(pci, sizeof(pci), "0000:%02x:00.0", 5 + s);
        const epx_topo_obj_t *o = named(t, h, name);
        assert_int_equal(o->kind, EPX_TOPO_NVSWITCH);
        assert_string_equal(o->pci, pci);
        assert_string_equal(o->model, "NVSwitch gen3 (H100)");
        assert_int_equal(o->cpu, cpu[0]);
    }
    epx_topo_destroy(t);
}

static void hgx_pcie_classes(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "hgx-h100.xml", &h);
    /* every GPU pair and GPU-NIC pair, once */
    assert_int_equal(epx_topo_num_links(t), 8 * 7 / 2 + 8 * 8);
    static const char *const gpu_gpu[] = {
        "X PXB NODE NODE SYS SYS SYS SYS",
        "PXB X NODE NODE SYS SYS SYS SYS",
        "NODE NODE X PXB SYS SYS SYS SYS",
        "NODE NODE PXB X SYS SYS SYS SYS",
        "SYS SYS SYS SYS X PHB NODE NODE",
        "SYS SYS SYS SYS PHB X NODE NODE",
        "SYS SYS SYS SYS NODE NODE X PHB",
        "SYS SYS SYS SYS NODE NODE PHB X",
    };
    static const char *const gpu_nic[] = {
        "PIX PXB NODE NODE SYS SYS SYS SYS",
        "PXB PIX NODE NODE SYS SYS SYS SYS",
        "NODE NODE PIX PXB SYS SYS SYS SYS",
        "NODE NODE PXB PIX SYS SYS SYS SYS",
        "SYS SYS SYS SYS PIX PHB NODE NODE",
        "SYS SYS SYS SYS PHB PIX NODE NODE",
        "SYS SYS SYS SYS NODE NODE PIX PHB",
        "SYS SYS SYS SYS NODE NODE PHB PIX",
    };
    check_matrix(t, h, "gpu%d", 8, gpu_gpu, 8);
    check_matrix(t, h, "mlx5_%d", 8, gpu_nic, 8);
    /* the bottleneck of a PIX path: Gen5 x16 links (hwloc: 63.015385) */
    double bw = 0;
    int g0 = named(t, h, "gpu0")->index, n0 = named(t, h, "mlx5_0")->index;
    assert_int_equal(link_class(t, g0, n0, &bw), EPX_LINK_PIX);
    assert_true(bw > 63.0 && bw < 63.1);
    for (int i = 0; i < epx_topo_num_links(t); i++)
        assert_int_equal(epx_topo_link(t, i)->count, 1);
    /* the finished map answers paths with these classes; no NVLink domain
     * from hwloc alone */
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    epx_topo_path_t p;
    assert_int_equal(epx_topo_path_between(t, g0, n0, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_PIX);
    int g4 = named(t, h, "gpu4")->index;
    assert_int_equal(epx_topo_path_between(t, g0, g4, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_SYS);
    assert_int_equal(epx_topo_num_domains(t), 1);
    assert_int_equal(epx_topo_domain(t, 0)->kind, EPX_DOMAIN_HOST);
    epx_topo_destroy(t);
}

/* ---- NVL72 compute tray fixture */

static void nvl72_tray(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "nvl72-tray.xml", &h);
    /* the four GPU-memory NUMA nodes are not CPUs */
    assert_int_equal(count(t, EPX_TOPO_CPU), 2);
    assert_int_equal(count(t, EPX_TOPO_GPU), 4);
    assert_int_equal(count(t, EPX_TOPO_NVSWITCH), 0);  /* in the switch trays */
    assert_int_equal(count(t, EPX_TOPO_NIC), 4);
    int cpu0 = named(t, h, "cpu0")->index, cpu1 = named(t, h, "cpu1")->index;
    assert_true(named(t, h, "cpu0")->memory_bytes == 515396075520ull);
    assert_null(named(t, h, "cpu1")->model);          /* no CPUModel info */
    static const char *const gpu_pci[] = { "0008:01:00.0", "0009:01:00.0",
                                           "0018:01:00.0", "0019:01:00.0" };
    static const char *const nic_pci[] = { "0000:03:00.0", "0002:03:00.0",
                                           "0010:03:00.0", "0012:03:00.0" };
    for (int g = 0; g < 4; g++) {
        char name[16];
        snprintf(name, sizeof(name), "gpu%d", g);
        const epx_topo_obj_t *o = named(t, h, name);
        assert_string_equal(o->pci, gpu_pci[g]);
        assert_string_equal(o->model, "NVIDIA GB200");  /* NVML OS device */
        assert_string_equal(o->arch, "blackwell");
        assert_true(o->memory_bytes == 195035136ull * 1024);  /* CUDA OS device */
        assert_int_equal(o->cpu, g < 2 ? cpu0 : cpu1);
        snprintf(name, sizeof(name), "mlx5_%d", g);
        o = named(t, h, name);
        assert_string_equal(o->pci, nic_pci[g]);
        assert_int_equal(o->cpu, g < 2 ? cpu0 : cpu1);
    }
    /* every device has a host bridge of its own */
    static const char *const gpu_gpu[] = {
        "X NODE SYS SYS", "NODE X SYS SYS", "SYS SYS X NODE", "SYS SYS NODE X",
    };
    static const char *const gpu_nic[] = {
        "NODE NODE SYS SYS", "NODE NODE SYS SYS",
        "SYS SYS NODE NODE", "SYS SYS NODE NODE",
    };
    check_matrix(t, h, "gpu%d", 4, gpu_gpu, 4);
    check_matrix(t, h, "mlx5_%d", 4, gpu_nic, 4);
    epx_topo_destroy(t);
}

static void bad_input(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("bad");
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "node0");
    assert_int_equal(epx__topo_probe_hwloc(t, h, DATA "no-such-file.xml"),
                     EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "no-such-file.xml"));
    assert_int_equal(epx__topo_probe_hwloc(t, h + 1, NULL), EPX_ERR_INVALID);
    assert_int_equal(epx_topo_num_objs(t), 1);
    char out[16];
    assert_int_equal(epx__topo_pci_norm("00000000:1B:00.0", out), 0);
    assert_string_equal(out, "0000:1b:00.0");
    assert_int_equal(epx__topo_pci_norm("1b:00.1", out), 0);
    assert_string_equal(out, "0000:1b:00.1");
    assert_int_equal(epx__topo_pci_norm("0000:1b:20.0", out), -1);
    assert_int_equal(epx__topo_pci_norm("gpu0", out), -1);
    assert_string_equal(epx__topo_arch_from_name("NVIDIA H100 80GB HBM3"), "hopper");
    assert_string_equal(epx__topo_arch_from_name("NVIDIA GB200"), "blackwell");
    assert_string_equal(epx__topo_arch_from_name("NVIDIA H20"), "hopper");
    assert_null(epx__topo_arch_from_name("NVIDIA GH100X"));
    epx_topo_destroy(t);
}

/* ---- NVML records into the map */

static void set_links(topo_nvml_gpu_t *g, int type, const char *const *remote,
                      const int *per_remote, int nremote)
{
    int l = 0;
    for (int r = 0; r < nremote; r++)
        for (int k = 0; k < per_remote[r]; k++, l++) {
            g->link[l].active = 1;
            g->link[l].version = 4;
            g->link[l].remote_type = type;
            snprintf(g->link[l].remote_pci, sizeof(g->link[l].remote_pci), "%s",
                     remote[r]);
        }
    g->nlinks = EPX_NVML_MAX_LINKS;
}

static topo_nvml_gpu_t gpu_record(int index, const char *pci, const char *name)
{
    topo_nvml_gpu_t g;
    memset(&g, 0, sizeof(g));
    g.index = index;
    snprintf(g.pci, sizeof(g.pci), "%s", pci);
    snprintf(g.name, sizeof(g.name), "%s", name);
    g.fabric_state = -1;
    g.health_summary = -1;
    g.slot = g.tray = g.host_id = g.module_id = -1;
    return g;
}

/* HGX H100 as NVML shows it: 18 active NVLinks per GPU spread 5/4/4/5
 * over the four NVSwitches, no GPU fabric (single-node NVSwitch system). */
static void nvml_hgx_switches(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "hgx-h100.xml", &h);
    int nlinks = epx_topo_num_links(t);
    static const char *const sw[] = { "0000:05:00.0", "0000:06:00.0",
                                      "0000:07:00.0", "0000:08:00.0" };
    static const int per[] = { 5, 4, 4, 5 };
    topo_nvml_gpu_t g[8];
    for (int k = 0; k < 8; k++) {
        char pci[32];
        snprintf(pci, sizeof(pci), "00000000:%s", hgx_gpu_pci[k] + 5);
        g[k] = gpu_record(k, "", "NVIDIA H100 80GB HBM3");
        assert_int_equal(epx__topo_pci_norm(pci, g[k].pci), 0);
        g[k].memory = 85520809984ull;
        g[k].arch = "hopper";
        g[k].fabric_state = TOPO_FABRIC_NOT_SUPPORTED;
        set_links(&g[k], 2, sw, per, 4);
    }
    assert_int_equal(epx__topo_nvml_apply(t, h, g, 8), EPX_OK);
    assert_int_equal(count(t, EPX_TOPO_GPU), 8);        /* matched, not added */
    assert_int_equal(epx_topo_num_links(t), nlinks + 8 * 4);
    const epx_topo_obj_t *g0 = named(t, h, "gpu0");
    assert_string_equal(g0->model, "NVIDIA H100 80GB HBM3");
    assert_true(g0->memory_bytes == 85520809984ull);
    assert_int_equal(g0->nvlinks, 18);
    assert_true(g0->nvlink_gbs == 450);
    assert_int_equal(named(t, h, "gpu5")->os_index, 5);
    double bw;
    int s0 = named(t, h, "nvswitch0")->index, s1 = named(t, h, "nvswitch1")->index;
    assert_int_equal(link_class(t, g0->index, s0, &bw), EPX_LINK_NVLINK);
    assert_true(bw == 5 * 25);
    for (int i = 0; i < epx_topo_num_links(t); i++) {
        const epx_topo_link_t *l = epx_topo_link(t, i);
        if ((l->a == g0->index && l->b == s1) || (l->b == g0->index && l->a == s1))
            assert_int_equal(l->count, 4);
    }
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    const epx_topo_domain_t *d = epx_topo_domain(t, 0);
    assert_int_equal(d->kind, EPX_DOMAIN_NVLINK);
    assert_string_equal(d->id, "node0/nvlink0");
    assert_int_equal(d->num_members, 8);
    assert_int_equal(d->num_cliques, 1);
    assert_true(d->nvlink_gbs == 450);
    epx_topo_path_t p;
    int g7 = named(t, h, "gpu7")->index, n0 = named(t, h, "mlx5_0")->index;
    assert_int_equal(epx_topo_path_between(t, g0->index, g7, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_NVLINK);
    assert_true(p.bw_gbs == 450);
    assert_int_equal(epx_topo_path_between(t, g0->index, n0, &p), EPX_OK);
    assert_int_equal(p.cls, EPX_LINK_PIX);
    epx_topo_destroy(t);
}

/* An NVL72 compute tray: NVLinks go to switch trays (not on this host),
 * the fabric names the rack's cluster and the GPU's clique, the platform
 * the tray and slot; one GPU's registration is still in progress. */
static void nvml_nvl72_fabric(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "nvl72-tray.xml", &h);
    int nlinks = epx_topo_num_links(t);
    static const char *const gpu_pci[] = { "0008:01:00.0", "0009:01:00.0",
                                           "0018:01:00.0", "0019:01:00.0" };
    static const char *const remote[] = { "0000:00:00.0" };
    static const int all[] = { 18 };
    topo_nvml_gpu_t g[4];
    for (int k = 0; k < 4; k++) {
        g[k] = gpu_record(k, gpu_pci[k], "NVIDIA GB200");
        g[k].arch = "blackwell";
        set_links(&g[k], 2, remote, all, 1);
        g[k].fabric_version = 3;
        g[k].fabric_state = TOPO_FABRIC_COMPLETED;
        g[k].fabric_status = 0;
        for (int b = 0; b < 16; b++)
            g[k].cluster_uuid[b] = (unsigned char)(0xa0 + b);
        g[k].clique = 32766;
        g[k].health_mask = 0x1aa;         /* all "no", configuration ok */
        g[k].health_summary = 1;
        g[k].has_platform = 1;
        g[k].tray = 5;
        g[k].slot = 12;
        g[k].module_id = k + 1;
        snprintf(g[k].chassis, sizeof(g[k].chassis), "1a2b3c");
    }
    g[3].fabric_state = TOPO_FABRIC_IN_PROGRESS;
    assert_int_equal(epx__topo_nvml_apply(t, h, g, 4), EPX_OK);
    assert_int_equal(epx_topo_num_links(t), nlinks);    /* no local switch */
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    const epx_topo_domain_t *d = epx_topo_domain(t, 0);
    assert_int_equal(d->kind, EPX_DOMAIN_NVLINK);
    assert_string_equal(d->id, "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf");
    assert_int_equal(d->num_members, 3);
    assert_int_equal(d->num_cliques, 1);
    assert_true(d->nvlink_gbs == 900);                  /* 18 x 50 GB/s */
    const epx_topo_obj_t *o = named(t, h, "gpu0");
    assert_int_equal(o->tray, 5);
    assert_non_null(o->chassis);
    assert_string_equal(o->chassis, "1a2b3c");
    assert_int_equal(o->slot, 0);                       /* module 1 */
    assert_int_equal(named(t, h, "gpu2")->slot, 2);
    assert_int_equal(o->domain, 0);
    assert_int_equal(o->clique, 0);
    assert_int_equal(named(t, h, "gpu3")->domain, -1);  /* not registered yet */
    char s[256];
    epx__topo_fabric_health_str(0x1aa, 1, s, sizeof(s));
    assert_string_equal(s, "degraded-bw=no route-recovery=no route-unhealthy=no "
                           "access-timeout-recovery=no config=ok "
                           "partition-assigned=n/a fabric-manager=n/a "
                           "summary=healthy");
    epx__topo_fabric_health_str(0x1 | 0x3 << 4 | 5 << 8 | 1 << 12 | 2 << 14, -1,
                                s, sizeof(s));
    assert_string_equal(s, "degraded-bw=yes route-recovery=n/a route-unhealthy=3 "
                           "access-timeout-recovery=n/a config=insufficient-nvlinks "
                           "partition-assigned=yes fabric-manager=disconnected");
    epx_topo_destroy(t);
}

/* Two GPUs NVML finds and hwloc did not, joined by four direct NVLinks,
 * and a third whose active NVLinks lead to a device NVML cannot name: no
 * domain of one. */
static void nvml_direct_pair(void **state)
{
    (void)state;
    epx_topo_t *t = epx__topo_new("pair");
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "node0");
    static const char *const pci[] = { "0000:41:00.0", "0000:c1:00.0" };
    static const char *const nowhere[] = { "" };
    static const int four[] = { 4 };
    topo_nvml_gpu_t g[3];
    for (int k = 0; k < 2; k++) {
        g[k] = gpu_record(k + 2, pci[k], "NVIDIA H100 NVL");
        set_links(&g[k], 0, &pci[1 - k], four, 1);
    }
    g[2] = gpu_record(4, "0000:e1:00.0", "NVIDIA H100 NVL");
    set_links(&g[2], -1, nowhere, four, 1);
    assert_int_equal(epx__topo_nvml_apply(t, h, g, 3), EPX_OK);
    assert_int_equal(count(t, EPX_TOPO_GPU), 3);
    const epx_topo_obj_t *a = named(t, h, "gpu0"), *b = named(t, h, "gpu1");
    assert_string_equal(a->pci, pci[0]);
    assert_int_equal(a->os_index, 2);
    assert_string_equal(a->arch, "hopper");
    assert_int_equal(named(t, h, "gpu2")->nvlinks, 4);
    assert_int_equal(epx_topo_num_links(t), 1);
    double bw;
    assert_int_equal(link_class(t, a->index, b->index, &bw), EPX_LINK_NVLINK);
    assert_int_equal(epx_topo_link(t, 0)->count, 4);
    assert_true(bw == 100);
    assert_int_equal(epx__topo_finish(t), EPX_OK);
    assert_int_equal(epx_topo_num_domains(t), 2);      /* + the host's */
    assert_string_equal(epx_topo_domain(t, 0)->id, "node0/nvlink2");
    assert_int_equal(epx_topo_domain(t, 0)->num_members, 2);
    assert_int_equal(named(t, h, "gpu2")->domain, -1);
    epx_topo_destroy(t);
}

/* A probed map (fixture plus NVML records) written as a description
 * loads back to the same map. */
static void export_round_trip(void **state)
{
    (void)state;
    static const char *const files[] = { DATA "hgx-h100.xml",
                                         DATA "nvl72-tray.xml" };
    for (int f = 0; f < 2; f++) {
        int h;
        epx_topo_t *t = load_fixture(files[f], &h);
        topo_nvml_gpu_t g[8];
        int n = 0;
        for (int i = 0; i < epx_topo_num_objs(t); i++) {
            const epx_topo_obj_t *o = epx_topo_obj(t, i);
            if (o->kind != EPX_TOPO_GPU)
                continue;
            static const char *const nowhere[] = { "" };
            static const int all[] = { 18 };
            g[n] = gpu_record(n, o->pci, f ? "NVIDIA GB200" : "NVIDIA H100 80GB HBM3");
            set_links(&g[n], 2, nowhere, all, 1);
            if (f) {
                g[n].fabric_state = TOPO_FABRIC_COMPLETED;
                g[n].cluster_uuid[0] = 0x5a;
                g[n].clique = 7;
                g[n].has_platform = 1;
                g[n].tray = 3;
                g[n].module_id = n + 1;
                snprintf(g[n].chassis, sizeof(g[n].chassis), "c0ffee");
            }
            n++;
        }
        assert_int_equal(epx__topo_nvml_apply(t, h, g, n), EPX_OK);
        assert_int_equal(epx__topo_finish(t), EPX_OK);
        char path[] = "/tmp/epx-probe-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
        if (epx_topo_export(t, path) != EPX_OK)
            fail_msg("export: %s", epx_last_error());
        epx_topo_t *b = NULL;
        epx_status_t st = epx_topo_load(path, &b);
        unlink(path);
        if (st != EPX_OK)
            fail_msg("load: %s", epx_last_error());
        assert_int_equal(epx_topo_num_objs(b), epx_topo_num_objs(t));
        assert_int_equal(epx_topo_num_links(b), epx_topo_num_links(t));
        assert_int_equal(epx_topo_num_domains(b), epx_topo_num_domains(t));
        for (int i = 0; i < epx_topo_num_objs(t); i++) {
            const epx_topo_obj_t *x = epx_topo_obj(t, i), *y = epx_topo_obj(b, i);
            assert_int_equal(x->kind, y->kind);
            assert_string_equal(x->name, y->name);
            assert_int_equal(x->cpu, y->cpu);
            assert_int_equal(x->domain, y->domain);
            assert_int_equal(x->clique, y->clique);
            assert_int_equal(x->tray, y->tray);
            assert_int_equal(x->slot, y->slot);
            assert_true(x->nvlink_gbs == y->nvlink_gbs);
            assert_true(x->memory_bytes == y->memory_bytes);
            if (x->pci || y->pci)
                assert_string_equal(x->pci, y->pci);
            if (x->chassis || y->chassis)
                assert_string_equal(x->chassis, y->chassis);
            if (x->model || y->model)
                assert_string_equal(x->model, y->model);
        }
        for (int i = 0; i < epx_topo_num_links(t); i++) {
            const epx_topo_link_t *x = epx_topo_link(t, i), *y = epx_topo_link(b, i);
            assert_int_equal(x->a, y->a);
            assert_int_equal(x->b, y->b);
            assert_int_equal(x->cls, y->cls);
            assert_int_equal(x->count, y->count);
            assert_true(x->bw_gbs == y->bw_gbs);
        }
        for (int d = 0; d < epx_topo_num_domains(t); d++)
            assert_string_equal(epx_topo_domain(t, d)->id,
                                epx_topo_domain(b, d)->id);
        epx_topo_destroy(b);
        epx_topo_destroy(t);
    }
}

/* ---- CUDA records into the map */

static void cuda_records(void **state)
{
    (void)state;
    int h;
    epx_topo_t *t = load_fixture(DATA "hgx-h100.xml", &h);
    topo_cuda_dev_t dev[2] = {
        { "0000:18:00.0", "NVIDIA H100 80GB HBM3", 85520809984ull, 9, 0, 1 },
        { "0000:e1:00.0", "NVIDIA L40S", 48305913856ull, 8, 9, 0 },
    };
    unsigned char peer[4] = { 0, 0, 0, 0 };
    topo_cuda_info_t info = { 2, dev, peer };
    assert_int_equal(epx__topo_cuda_apply(t, h, &info), EPX_OK);
    const epx_topo_obj_t *g0 = named(t, h, "gpu0");
    assert_string_equal(g0->model, "H100 SXM5 80GB");   /* hwloc's kept */
    assert_true(g0->memory_bytes == 85520809984ull);    /* unknown: filled */
    const epx_topo_obj_t *n = named(t, h, "gpu8");     /* unknown: added */
    assert_string_equal(n->pci, "0000:e1:00.0");
    assert_string_equal(n->arch, "ada");
    assert_string_equal(n->model, "NVIDIA L40S");
    epx_topo_destroy(t);
}

/* ---- the libraries on this machine */

static void nvml_here(void **state)
{
    (void)state;
    topo_nvml_gpu_t *g = NULL;
    int n = 0;
    epx_status_t q = epx__topo_nvml_query("libnvidia-ml.so.1", &g, &n);
    if (q != EPX_OK) {
        assert_int_equal(q, EPX_ERR_UNSUPPORTED);
        assert_non_null(strstr(epx_last_error(), "nvml"));
        print_message("NVML here: %s\n", epx_last_error());
    }
    epx_topo_t *t = epx__topo_new("here");
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "node0");
    assert_int_equal(epx__topo_probe_nvml(t, h), EPX_OK);
    /* without the library or a GPU it adds nothing; with them, the GPUs */
    assert_int_equal(count(t, EPX_TOPO_GPU), q == EPX_OK ? n : 0);
    assert_int_equal(epx_topo_num_objs(t), 1 + (q == EPX_OK ? n : 0));
    free(g);
    epx_topo_destroy(t);
}

static void cuda_here(void **state)
{
    (void)state;
    topo_cuda_info_t info;
    epx_status_t q = epx__topo_cuda_query("libcuda.so.1", &info);
    int n = q == EPX_OK ? info.ndev : 0;
    if (q != EPX_OK) {
        assert_int_equal(q, EPX_ERR_UNSUPPORTED);
        print_message("CUDA here: %s\n", epx_last_error());
    }
    epx__topo_cuda_info_free(&info);
    epx_topo_t *t = epx__topo_new("here");
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, "node0");
    assert_int_equal(epx__topo_probe_cuda(t, h), EPX_OK);
    assert_int_equal(count(t, EPX_TOPO_GPU), n);
    epx_topo_destroy(t);
    /* The toolkit's stub driver loads and has every symbol, but cuInit
     * refuses: the probe must say so and go on. */
    static const char stub[] = "/usr/local/cuda/lib64/stubs/libcuda.so";
    if (access(stub, R_OK) != 0) {
        print_message("no %s: stub driver not tried\n", stub);
        return;
    }
    assert_int_equal(epx__topo_cuda_query(stub, &info), EPX_ERR_UNSUPPORTED);
    assert_non_null(strstr(epx_last_error(), "cuInit"));
    assert_int_equal(info.ndev, 0);
}

static void live_probe(void **state)
{
    (void)state;
    char hostname[256] = "";
    assert_int_equal(gethostname(hostname, sizeof(hostname) - 1), 0);
    unsetenv("EPX_TOPO_XML");
    epx_topo_t *t = NULL;
    assert_int_equal(epx_topo_probe(&t), EPX_OK);
    assert_string_equal(epx_topo_name(t), "probe");
    assert_int_equal(count(t, EPX_TOPO_HOST), 1);
    assert_string_equal(epx_topo_obj(t, 0)->name, hostname);
    assert_true(count(t, EPX_TOPO_CPU) >= 1);
    /* GPUs only where hwloc, NVML or CUDA see one: none on a machine
     * without NVIDIA devices */
    int h;
    epx_topo_t *hw = epx__topo_new("hwloc");
    h = epx__topo_add(hw, EPX_TOPO_HOST, -1, hostname);
    assert_int_equal(epx__topo_probe_hwloc(hw, h, NULL), EPX_OK);
    topo_nvml_gpu_t *g = NULL;
    int n = 0;
    topo_cuda_info_t info;
    epx_status_t nv = epx__topo_nvml_query("libnvidia-ml.so.1", &g, &n);
    epx_status_t cu = epx__topo_cuda_query("libcuda.so.1", &info);
    if (nv != EPX_OK && cu != EPX_OK)
        assert_int_equal(count(t, EPX_TOPO_GPU), count(hw, EPX_TOPO_GPU));
    else
        assert_true(count(t, EPX_TOPO_GPU) >= 1);
    epx__topo_cuda_info_free(&info);
    print_message("live: %d objects (%d CPUs, %d GPUs, %d NICs), %d links, "
                  "%d domains\n", epx_topo_num_objs(t), count(t, EPX_TOPO_CPU),
                  count(t, EPX_TOPO_GPU), count(t, EPX_TOPO_NIC),
                  epx_topo_num_links(t), epx_topo_num_domains(t));
    /* finished: the host domain exists */
    assert_true(epx_topo_num_domains(t) >= 1);
    free(g);
    epx_topo_destroy(hw);
    epx_topo_destroy(t);
}

static void live_probe_from_xml(void **state)
{
    (void)state;
    setenv("EPX_TOPO_XML", DATA "hgx-h100.xml", 1);
    epx_topo_t *t = NULL;
    epx_status_t st = epx_topo_probe(&t);
    unsetenv("EPX_TOPO_XML");
    assert_int_equal(st, EPX_OK);
    assert_int_equal(count(t, EPX_TOPO_HOST), 1);
    assert_int_equal(count(t, EPX_TOPO_CPU), 2);
    assert_int_equal(count(t, EPX_TOPO_GPU), 8);
    assert_int_equal(count(t, EPX_TOPO_NVSWITCH), 4);
    assert_int_equal(count(t, EPX_TOPO_NIC), 8);
    epx_topo_destroy(t);
    setenv("EPX_TOPO_XML", DATA "no-such-file.xml", 1);
    assert_int_equal(epx_topo_probe(&t), EPX_ERR_INVALID);
    unsetenv("EPX_TOPO_XML");
    assert_null(t);
}

int main(void)
{
    epxt_init("test_probes");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hgx_objects),
        cmocka_unit_test(hgx_pcie_classes),
        cmocka_unit_test(nvl72_tray),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(nvml_hgx_switches),
        cmocka_unit_test(nvml_nvl72_fabric),
        cmocka_unit_test(nvml_direct_pair),
        cmocka_unit_test(export_round_trip),
        cmocka_unit_test(cuda_records),
        cmocka_unit_test(nvml_here),
        cmocka_unit_test(cuda_here),
        cmocka_unit_test(live_probe),
        cmocka_unit_test(live_probe_from_xml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

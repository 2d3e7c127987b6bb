/*
 * hwloc probe: NUMA nodes (as CPUs), GPUs, NVSwitches and NICs from the PCI
 * tree, each with its nearest NUMA node, and the PCIe path class of every
 * GPU-GPU and GPU-NIC pair of the host.
 *
 * I/O is loaded with HWLOC_TYPE_FILTER_KEEP_ALL: the default ("important")
 * filter drops PCI functions of class 0x0680 ("other bridge"), which is what
 * an NVSwitch is, and the bridges the path classes are computed from.
 */
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "topology/probe.h"

#define NVIDIA 0x10de
#define MELLANOX 0x15b3

/* NVSwitch PCI functions (class 0x0680) by device id, from pci.ids. */
static const struct { unsigned short id; const char *model; } nvswitches[] = {
    { 0x1ac2, "NVSwitch gen1 (V100)" },
    { 0x1af1, "NVSwitch gen2 (A100)" },
    { 0x22a3, "NVSwitch gen3 (H100)" },
};

/* GPU and NIC names by PCI id when no OS device names them. */
static const struct { unsigned short vendor, id; const char *model; } models[] = {
    { NVIDIA, 0x2330, "H100 SXM5 80GB" },
    { NVIDIA, 0x2331, "H100 PCIe" },
    { MELLANOX, 0x1017, "ConnectX-5" },
    { MELLANOX, 0x101b, "ConnectX-6" },
    { MELLANOX, 0x101d, "ConnectX-6 Dx" },
    { MELLANOX, 0x1021, "ConnectX-7" },
    { MELLANOX, 0x1023, "ConnectX-8" },
    { MELLANOX, 0xa2dc, "BlueField-3" },
};

typedef struct dev {
    hwloc_obj_t pci;
    int obj;                   /* map index */
} iodev_t;

typedef struct probe {
    hwloc_topology_t topo;
    epx_topo_t *t;
    int host;
    int live;                  /* the running machine, not an XML file */
    int nnuma;
    hwloc_obj_t *numa;         /* NUMA nodes that became CPU objects */
    int *numa_obj;
} probe_t;

static int is_io(hwloc_obj_t o)
{
    return o->type == HWLOC_OBJ_BRIDGE || o->type == HWLOC_OBJ_PCI_DEVICE ||
           o->type == HWLOC_OBJ_OS_DEVICE;
}

static int is_host_bridge(hwloc_obj_t o)
{
    return o->type == HWLOC_OBJ_BRIDGE &&
           o->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST;
}

static void busid(hwloc_obj_t o, char out[16])
{
    const struct hwloc_pcidev_attr_s *p = &o->attr->pcidev;
    snprintf(out, 16, "%04x:%02x:%02x.%x", (unsigned)p->domain, p->bus,
             p->dev, p->func);
}

static int busid_cmp(const void *a, const void *b)
{
    const struct hwloc_pcidev_attr_s *x = &((const iodev_t *)a)->pci->attr->pcidev;
    const struct hwloc_pcidev_attr_s *y = &((const iodev_t *)b)->pci->attr->pcidev;
    unsigned long kx = ((unsigned long)x->domain << 16) | (x->bus << 8) |
                       (x->dev << 3) | x->func;
    unsigned long ky = ((unsigned long)y->domain << 16) | (y->bus << 8) |
                       (y->dev << 3) | y->func;
    return kx < ky ? -1 : kx > ky;
}

/* First OS device child of `o` of type `type`, or NULL. */
static hwloc_obj_t osdev(hwloc_obj_t o, hwloc_obj_osdev_type_t type)
{
    for (hwloc_obj_t c = o->io_first_child; c; c = c->next_sibling)
        if (c->type == HWLOC_OBJ_OS_DEVICE && c->attr->osdev.type == type)
            return c;
    return NULL;
}

/* An OS device of the NVML or CUDA backend ("nvml0", "cuda0"). */
static hwloc_obj_t nvidia_osdev(hwloc_obj_t o)
{
    for (hwloc_obj_t c = o->io_first_child; c; c = c->next_sibling) {
        if (c->type != HWLOC_OBJ_OS_DEVICE ||
            (c->attr->osdev.type != HWLOC_OBJ_OSDEV_GPU &&
             c->attr->osdev.type != HWLOC_OBJ_OSDEV_COPROC))
            continue;
        const char *be = hwloc_obj_get_info_by_name(c, "Backend");
        if ((be && (!strcmp(be, "NVML") || !strcmp(be, "CUDA"))) ||
            (c->subtype && !strcmp(c->subtype, "CUDA")))
            return c;
    }
    return NULL;
}

static int is_gpu(hwloc_obj_t o)
{
    const struct hwloc_pcidev_attr_s *p = &o->attr->pcidev;
    return (p->vendor_id == NVIDIA &&
            (p->class_id == 0x0302 || p->class_id == 0x0300)) ||
           nvidia_osdev(o) != NULL;
}

static const char *nvswitch_model(hwloc_obj_t o)
{
    const struct hwloc_pcidev_attr_s *p = &o->attr->pcidev;
    if (p->vendor_id == NVIDIA && p->class_id == 0x0680)
        for (size_t i = 0; i < sizeof(nvswitches) / sizeof(nvswitches[0]); i++)
            if (p->device_id == nvswitches[i].id)
                return nvswitches[i].model;
    /* hwloc's NVML backend marks the NVLink peers it finds. */
    if (o->subtype && !strcmp(o->subtype, "NVSwitch"))
        return "NVSwitch";
    return NULL;
}

static const char *pci_model(hwloc_obj_t o)
{
    const struct hwloc_pcidev_attr_s *p = &o->attr->pcidev;
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        if (p->vendor_id == models[i].vendor && p->device_id == models[i].id)
            return models[i].model;
    return hwloc_obj_get_info_by_name(o, "PCIDevice");
}

/* ------------------------------------------------------------ NUMA nodes */

/* NUMA nodes with CPUs.  Memory-only nodes (GPU memory of Grace machines,
 * CXL) are not CPUs: hwloc 2.10+ marks GPU memory "GPUMemory"; older
 * versions attach such nodes to the machine itself while the others sit in
 * their packages, with the machine's cpuset. */
static epx_status_t add_cpus(probe_t *p)
{
    hwloc_topology_t topo = p->topo;
    hwloc_obj_t root = hwloc_get_root_obj(topo);
    int total = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    int below_root = 0;
    for (hwloc_obj_t n = NULL;
         (n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n));)
        below_root += n->parent != root;
    p->numa = calloc((size_t)(total > 0 ? total : 1), sizeof(*p->numa));
    p->numa_obj = calloc((size_t)(total > 0 ? total : 1), sizeof(int));
    if (!p->numa || !p->numa_obj)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    for (hwloc_obj_t n = NULL;
         (n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n));) {
        if ((n->subtype && !strcmp(n->subtype, "GPUMemory")) ||
            hwloc_bitmap_iszero(n->cpuset) || (n->parent == root && below_root)) {
            EPX_LOG(EPX_LOG_DEBUG, "topo", -1,
                    "hwloc: NUMA node %u has no CPUs of its own: not a CPU",
                    n->os_index);
            continue;
        }
        char name[32];
        snprintf(name, sizeof(name), "cpu%u", n->os_index);
        int i = epx__topo_add(p->t, EPX_TOPO_CPU, p->host, name);
        if (i < 0)
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(topo, HWLOC_OBJ_PACKAGE, n);
        const char *model = pkg ? hwloc_obj_get_info_by_name(pkg, "CPUModel") : NULL;
        epx_topo_obj_t *o = epx__topo_objw(p->t, i);
        o->cpu = i;
        o->os_index = (int)n->os_index;
        o->memory_bytes = n->attr->numanode.local_memory;
        if (model && !(o->model = epx__topo_str(p->t, model)))
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        p->numa[p->nnuma] = n;
        p->numa_obj[p->nnuma++] = i;
    }
    return EPX_OK;
}

/* The CPU object nearest to an I/O object: the NUMA node of the package
 * (or group) it hangs from; -1 when it hangs from the whole machine of
 * several NUMA nodes. */
static int nearest_cpu(const probe_t *p, hwloc_obj_t o)
{
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(p->topo, o);
    int first = -1, n = 0;
    for (int k = 0; anc && anc->nodeset && k < p->nnuma; k++)
        if (hwloc_bitmap_isincluded(p->numa[k]->nodeset, anc->nodeset)) {
            if (first < 0)
                first = p->numa_obj[k];
            n++;
        }
    return n == 1 || (n > 1 && anc->parent) ? first : -1;
}

/* ------------------------------------------------------------ PCIe paths */

/* PCI-to-PCI bridges from `b` up to its host bridge: the root port is 1.
 * Below a root port every PCIe switch shows as its upstream port followed
 * by its downstream ports, so depth parity tells which switch a bridge is
 * part of (the assumption: root ports are visible, as on bare metal). */
static int bridge_depth(hwloc_obj_t b)
{
    int d = 0;
    for (; b && b->type == HWLOC_OBJ_BRIDGE && !is_host_bridge(b); b = b->parent)
        d++;
    return d;
}

/* The upstream-port bridge of the switch `b` belongs to; NULL for a root
 * port or a host bridge. */
static hwloc_obj_t switch_of(hwloc_obj_t b)
{
    if (b->type != HWLOC_OBJ_BRIDGE || is_host_bridge(b))
        return NULL;
    int d = bridge_depth(b);
    if (d < 2)
        return NULL;
    return d % 2 == 0 ? b : b->parent;
}

static float link_speed(hwloc_obj_t o)
{
    if (o->type == HWLOC_OBJ_PCI_DEVICE)
        return o->attr->pcidev.linkspeed;
    if (o->type == HWLOC_OBJ_BRIDGE &&
        o->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_PCI)
        return o->attr->bridge.upstream.pci.linkspeed;
    return 0;
}

#define MAX_SWITCHES 64

static void add_switch(hwloc_obj_t s, hwloc_obj_t *set, int *n)
{
    if (!s)
        return;
    for (int i = 0; i < *n; i++)
        if (set[i] == s)
            return;
    if (*n < MAX_SWITCHES)
        set[(*n)++] = s;
}

/* Class of the PCIe path between devices a and b (on CPUs ca and cb) and
 * its bottleneck: the slowest PCIe link below the point where they meet
 * (0 when no link speed is known; the CPU interconnect is not measured). */
static epx_link_class_t pcie_class(hwloc_obj_t a, hwloc_obj_t b, int ca,
                                   int cb, double *bw)
{
    hwloc_obj_t lca = NULL, set[MAX_SWITCHES];
    for (hwloc_obj_t x = a; x && !lca; x = x->parent)
        for (hwloc_obj_t y = b; y; y = y->parent)
            if (x == y) {
                lca = x;
                break;
            }
    int nsw = 0;
    float slow = 0;
    for (int side = 0; side < 2; side++)
        for (hwloc_obj_t x = side ? b : a; x && x != lca; x = x->parent) {
            float s = link_speed(x);
            if (s > 0 && (slow == 0 || s < slow))
                slow = s;
            if (lca && is_io(lca))
                add_switch(switch_of(x), set, &nsw);
        }
    *bw = slow;
    if (!lca || !is_io(lca))         /* different host bridges */
        return ca >= 0 && ca == cb ? EPX_LINK_NODE : EPX_LINK_SYS;
    if (is_host_bridge(lca) || bridge_depth(lca) < 2)
        return EPX_LINK_PHB;         /* meet in the root complex */
    add_switch(switch_of(lca), set, &nsw);
    return nsw <= 1 ? EPX_LINK_PIX : EPX_LINK_PXB;
}

/* ------------------------------------------------------------ devices */

static int read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *s = fgets(buf, (int)len, f);
    fclose(f);
    return s ? 0 : -1;
}

/* Line rate of a NIC of the running machine, GB/s; 0 unknown.  InfiniBand
 * ports give "400 Gb/sec (4X NDR)", network interfaces Mb/s. */
static double nic_speed(const char *ofname, const char *netname)
{
    char path[512], buf[128];
    if (ofname) {
        snprintf(path, sizeof(path), "/sys/class/infiniband/%s/ports/1/rate", ofname);
        if (read_line(path, buf, sizeof(buf)) == 0 && atof(buf) > 0)
            return atof(buf) / 8;
    }
    if (netname) {
        snprintf(path, sizeof(path), "/sys/class/net/%s/speed", netname);
        if (read_line(path, buf, sizeof(buf)) == 0 && atof(buf) > 0)
            return atof(buf) / 8000;
    }
    return 0;
}

static epx_status_t set_str(epx_topo_t *t, const char **field, const char *s)
{
    if (s && !(*field = epx__topo_str(t, s)))
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    return EPX_OK;
}

/* One object per device of `devs`, in bus id order: GPUs and NVSwitches
 * named "<prefix><k>", NICs after their OpenFabrics or network device. */
static epx_status_t add_devs(probe_t *p, epx_topo_kind_t kind,
                             const char *prefix, iodev_t *devs, int n)
{
    qsort(devs, (size_t)n, sizeof(*devs), busid_cmp);
    for (int k = 0; k < n; k++) {
        hwloc_obj_t d = devs[k].pci;
        hwloc_obj_t of = osdev(d, HWLOC_OBJ_OSDEV_OPENFABRICS);
        hwloc_obj_t net = osdev(d, HWLOC_OBJ_OSDEV_NETWORK);
        char name[64], pci[16];
        if (kind == EPX_TOPO_NIC)
            snprintf(name, sizeof(name), "%s", of ? of->name : net->name);
        else
            snprintf(name, sizeof(name), "%s%d", prefix, k);
        if (epx__topo_find(p->t, p->host, name) >= 0) /* two ports, one name */
            snprintf(name + strlen(name), sizeof(name) - strlen(name), "-%d", k);
        int i = epx__topo_add(p->t, kind, p->host, name);
        if (i < 0)
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        devs[k].obj = i;
        busid(d, pci);
        epx_topo_obj_t *o = epx__topo_objw(p->t, i);
        o->os_index = k;
        o->cpu = nearest_cpu(p, d);
        const char *model = NULL;
        epx_status_t st = set_str(p->t, &o->pci, pci);
        if (kind == EPX_TOPO_GPU) {
            hwloc_obj_t nv = nvidia_osdev(d);
            const char *mem = NULL;
            for (hwloc_obj_t c = d->io_first_child; c; c = c->next_sibling)
                if (!mem)
                    mem = hwloc_obj_get_info_by_name(c, "CUDAGlobalMemorySize");
            model = nv ? hwloc_obj_get_info_by_name(nv, "GPUModel") : NULL;
            if (!model)
                model = pci_model(d);
            if (mem)                             /* KiB */
                o->memory_bytes = strtoull(mem, NULL, 10) * 1024;
            o->arch = epx__topo_arch_from_name(model);
        } else if (kind == EPX_TOPO_NVSWITCH) {
            model = nvswitch_model(d);
        } else {
            model = pci_model(d);
            if (p->live)
                o->nic_gbs = nic_speed(of ? of->name : NULL, net ? net->name : NULL);
        }
        if (st == EPX_OK)
            st = set_str(p->t, &o->model, model);
        if (st == EPX_OK && o->arch)
            st = set_str(p->t, &o->arch, o->arch);
        if (st != EPX_OK)
            return st;
    }
    return EPX_OK;
}

static epx_status_t add_links(probe_t *p, const iodev_t *gpu, int ngpu,
                              const iodev_t *nic, int nnic)
{
    for (int i = 0; i < ngpu; i++)
        for (int j = i + 1; j < ngpu + nnic; j++) {
            const iodev_t *a = &gpu[i], *b = j < ngpu ? &gpu[j] : &nic[j - ngpu];
            int ca = epx__topo_objw(p->t, a->obj)->cpu;
            int cb = epx__topo_objw(p->t, b->obj)->cpu;
            double bw;
            epx_link_class_t cls = pcie_class(a->pci, b->pci, ca, cb, &bw);
            epx_status_t st = epx__topo_link(p->t, a->obj, b->obj, cls, 1, bw, 0);
            if (st != EPX_OK)
                return st;
        }
    return EPX_OK;
}

static epx_status_t probe_devices(probe_t *p)
{
    int n = 0;
    for (hwloc_obj_t d = NULL; (d = hwloc_get_next_pcidev(p->topo, d));)
        n++;
    iodev_t *all = calloc((size_t)(3 * n + 1), sizeof(*all));
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    iodev_t *gpu = all, *sw = all + n, *nic = all + 2 * n;
    int ngpu = 0, nsw = 0, nnic = 0;
    for (hwloc_obj_t d = NULL; (d = hwloc_get_next_pcidev(p->topo, d));) {
        if (is_gpu(d))
            gpu[ngpu++].pci = d;
        else if (nvswitch_model(d))
            sw[nsw++].pci = d;
        else if (osdev(d, HWLOC_OBJ_OSDEV_OPENFABRICS) ||
                 osdev(d, HWLOC_OBJ_OSDEV_NETWORK))
            nic[nnic++].pci = d;
    }
    epx_status_t st = add_devs(p, EPX_TOPO_GPU, "gpu", gpu, ngpu);
    if (st == EPX_OK)
        st = add_devs(p, EPX_TOPO_NVSWITCH, "nvswitch", sw, nsw);
    if (st == EPX_OK)
        st = add_devs(p, EPX_TOPO_NIC, NULL, nic, nnic);
    if (st == EPX_OK)
        st = add_links(p, gpu, ngpu, nic, nnic);
    EPX_LOG(EPX_LOG_INFO, "topo", -1,
            "hwloc: %d CPUs, %d GPUs, %d NVSwitches, %d NICs, %d PCI devices",
            p->nnuma, ngpu, nsw, nnic, n);
    free(all);
    return st;
}

epx_status_t epx__topo_probe_hwloc(epx_topo_t *t, int host,
                                   const char *xml_path)
{
    if (!t || host < 0 || host >= t->nobjs || t->objs[host].kind != EPX_TOPO_HOST)
        return epx__error(EPX_ERR_INVALID, "topo: hwloc probe: %d is not a host",
                          host);
    probe_t p = { .t = t, .host = host, .live = xml_path == NULL };
    epx_status_t st = EPX_OK;
    if (hwloc_topology_init(&p.topo) != 0)
        return epx__syserror(EPX_ERR_SYSTEM, "topo: hwloc_topology_init");
    hwloc_topology_set_io_types_filter(p.topo, HWLOC_TYPE_FILTER_KEEP_ALL);
    if (xml_path && hwloc_topology_set_xml(p.topo, xml_path) != 0) {
        st = epx__syserror(EPX_ERR_INVALID, "topo: hwloc cannot use XML file '%s'",
                           xml_path);
        goto out;
    }
    if (hwloc_topology_load(p.topo) != 0) {
        st = xml_path
            ? epx__syserror(EPX_ERR_INVALID, "topo: hwloc cannot load XML file '%s'",
                            xml_path)
            : epx__syserror(EPX_ERR_SYSTEM, "topo: hwloc_topology_load");
        goto out;
    }
    if ((st = add_cpus(&p)) == EPX_OK)
        st = probe_devices(&p);
out:
    free(p.numa);
    free(p.numa_obj);
    hwloc_topology_destroy(p.topo);
    return st;
}

/* Helpers the probes share: PCI bus ids, lookups, architecture names. */
#include <dlfcn.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util/util.h"
#include "topology/probe.h"

int epx__topo_pci_norm(const char *in, char out[16])
{
    unsigned dom = 0, bus, dev, fn;
    char end;
    if (!in)
        return -1;
    if (sscanf(in, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &end) != 4) {
        dom = 0;
        if (sscanf(in, "%x:%x.%x%c", &bus, &dev, &fn, &end) != 3)
            return -1;
    }
    if (dom > 0xffff || bus > 0xff || dev > 0x1f || fn > 7)
        return -1;
    snprintf(out, 16, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
    return 0;
}

int epx__topo_find_pci(const epx_topo_t *t, int host, epx_topo_kind_t kind,
                       const char *pci)
{
    for (int i = 0; i < t->nobjs; i++) {
        const epx_topo_obj_t *o = &t->objs[i];
        if (o->kind == kind && o->host == host && o->pci && pci &&
            strcmp(o->pci, pci) == 0)
            return i;
    }
    return -1;
}

int epx__topo_count(const epx_topo_t *t, int host, epx_topo_kind_t kind)
{
    int n = 0;
    for (int i = 0; i < t->nobjs; i++)
        n += t->objs[i].kind == kind && t->objs[i].host == host;
    return n;
}

/* Whole-word, case-blind search: "H100" in "NVIDIA H100 80GB HBM3" but not
 * "GH100" in it; "GB200" does not contain the word "B200". */
static int has_word(const char *s, const char *w)
{
    size_t n = strlen(w);
    for (const char *p = s; *p; p++) {
        if (p != s && isalnum((unsigned char)p[-1]))
            continue;
        if (strncasecmp(p, w, n) == 0 && !isalnum((unsigned char)p[n]))
            return 1;
    }
    return 0;
}

const char *epx__topo_arch_from_name(const char *model)
{
    static const struct { const char *word, *arch; } names[] = {
        { "V100", "volta" },
        { "A100", "ampere" }, { "A800", "ampere" }, { "A30", "ampere" },
        { "H100", "hopper" }, { "H200", "hopper" }, { "H800", "hopper" },
        { "H20", "hopper" }, { "GH200", "hopper" },
        { "B100", "blackwell" }, { "B200", "blackwell" },
        { "B300", "blackwell" }, { "GB200", "blackwell" },
        { "GB300", "blackwell" },
    };
    if (!model)
        return NULL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (has_word(model, names[i].word))
            return names[i].arch;
    return NULL;
}

double epx__topo_nvlink_link_gbs(const char *arch)
{
    /* Per link and direction: NVLink 2 (Volta) 25, NVLink 3 (Ampere) 25,
     * NVLink 4 (Hopper) 25 (18 links = 450), NVLink 5 (Blackwell) 50
     * (18 links = 900), as NVIDIA's data sheets give them. */
    if (!arch)
        return 0;
    if (!strcmp(arch, "volta") || !strcmp(arch, "ampere") ||
        !strcmp(arch, "hopper"))
        return 25;
    if (!strcmp(arch, "blackwell"))
        return 50;
    return 0;
}

void *epx__topo_dlsym(void *lib, void *fn, const char *name)
{
    void *p = dlsym(lib, name);
    memcpy(fn, &p, sizeof(p));
    return p;
}

epx_status_t epx__topo_absent(epx_status_t st)
{
    if (st != EPX_ERR_UNSUPPORTED)
        return st;
    const char *why = epx_last_error();
    EPX_LOG(EPX_LOG_INFO, "topo", -1, "%s",
            strncmp(why, "topo: ", 6) ? why : why + 6);
    epx__error_clear();
    return EPX_OK;
}

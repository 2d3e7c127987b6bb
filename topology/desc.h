/*
 * What the description loader (load.c) and exporter (export.c) share: the
 * schema version, object kind names, link class names and the default
 * NVLink domain size.  The schema itself is topology/systems/README.md.
 */
#ifndef EPX_TOPO_DESC_H
#define EPX_TOPO_DESC_H

#include "epx.h"

#define DESC_SCHEMA 1
/* GPUs an NVLink domain may hold unless the description declares more:
 * the largest single-rack domain shipped (NVL72). */
#define DESC_DOMAIN_GPUS 72
/* Memory in descriptions is decimal GB (vendor figures), else bytes. */
#define DESC_GB 1000000000ULL
/* A description is read whole; larger files are refused. */
#define DESC_MAX_BYTES (64u << 20)

/* "host", "cpu", "gpu", "nvswitch", "nic"; NULL for an unknown kind. */
static inline const char *desc_kind_name(epx_topo_kind_t k)
{
    static const char *const n[] = { "host", "cpu", "gpu", "nvswitch", "nic" };
    return (unsigned)k <= EPX_TOPO_NIC ? n[k] : NULL;
}

#endif /* EPX_TOPO_DESC_H */

/*
 * epx-topo: what its views share.  Each view (tree, matrix, domains,
 * ranks, JSON, Graphviz) lives in its own tool_*.c and reads the map only
 * through the public API of epx.h.
 */
#ifndef EPX_TOPO_TOOL_H
#define EPX_TOPO_TOOL_H

#include <stdio.h>
#include "epx.h"

/* The map indexed the way every view walks it: hosts in map order, and
 * per object its position among its host's objects of the same kind
 * ("GPU2" is the host's third GPU). */
typedef struct tool_map {
    const epx_topo_t *topo;
    int nobjs;
    int nhosts;
    int *hosts;          /* [nhosts] object index of each host */
    int *host_pos;       /* [nobjs] position of the object's host in hosts */
    int *local;          /* [nobjs] index among the host's objects of its kind */
    int count[EPX_TOPO_NIC + 1];     /* objects of each kind */
    int ndomains_nvlink;
} tool_map_t;

int tool_map_init(tool_map_t *m, const epx_topo_t *topo);
void tool_map_free(tool_map_t *m);

/* Name of an object, never NULL ("gpu3", or "<kind><index>"). */
const char *tool_obj_name(const epx_topo_obj_t *o, char *buf, size_t len);
/* "host", "CPU", "GPU", "NVSwitch", "NIC". */
const char *tool_kind_str(epx_topo_kind_t k);
/* Decimal GB with at most one decimal ("80 GB", "85.5 GB"). */
const char *tool_fmt_gb(uint64_t bytes, char *buf, size_t len);
/* A number without trailing zeros ("900", "12.5"). */
const char *tool_fmt_num(double v, char *buf, size_t len);
/* Matrix label of a path: "X", "NV18" (NVLink with its link count),
 * "C2C", "PIX", ..., "NET". */
const char *tool_path_label(const epx_topo_t *t, int a, int b, char *buf,
                            size_t len);
/* NVLink links between two GPUs of one domain: an explicit link's count,
 * else the smaller of the two GPUs' active links (through NVSwitches every
 * link of a GPU reaches every other GPU); 0 unknown. */
int tool_nvlink_count(const epx_topo_t *t, int a, int b);

/* Views: write to `out`; return 0, or 1 after printing an error. */
int tool_view_tree(const tool_map_t *m, int host, FILE *out);
int tool_view_matrix(const tool_map_t *m, int host, FILE *out);
int tool_view_domains(const tool_map_t *m, FILE *out);
int tool_view_ranks(const tool_map_t *m, FILE *out);
int tool_view_json(const tool_map_t *m, FILE *out);
int tool_view_dot(const tool_map_t *m, FILE *out);
/* Render the Graphviz view to an SVG file with `dot`; 1 (after a hint how
 * to install Graphviz) when there is none. */
int tool_view_svg(const tool_map_t *m, const char *path);

#endif /* EPX_TOPO_TOOL_H */

/*
 * libFuzzer: system descriptions (topology/load.c, epx_topo_load), then
 * what a caller does with one that loads: place ranks, walk objects,
 * links, domains and rank paths.
 */
#include <stdint.h>
#include <stdlib.h>
#include "epx.h"
#include "fuzz_input.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("EPX_LOG", "error", 1);   /* every bad input warns otherwise */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    epx_topo_t *t = NULL;
    /* /proc/self/fd/N holds a '/': a path, not a system name. */
    if (epx_topo_load(fuzz_file(data, size, ""), &t) != EPX_OK)
        return 0;
    int nobj = epx_topo_num_objs(t), nlink = epx_topo_num_links(t);
    for (int i = 0; i < nobj; i++)
        (void)epx_topo_obj(t, i);
    for (int i = 0; i < nlink; i++)
        (void)epx_topo_link(t, i);
    for (int i = 0; i < epx_topo_num_domains(t); i++)
        (void)epx_topo_domain(t, i);
    epx_topo_path_t p;
    if (nobj > 1)
        (void)epx_topo_path_between(t, 0, nobj - 1, &p);
    (void)epx_topo_name(t);
    for (int r = 1; r <= 9; r += 8)
        if (epx_topo_place(t, r) == EPX_OK) {
            for (int a = 0; a < r; a++) {
                (void)epx_topo_rank_domain(t, a);
                (void)epx_topo_rank_path(t, 0, a, &p);
            }
        }
    epx_topo_destroy(t);
    return 0;
}

/*
 * The communicator's topology map (epx_comm_topology): with EPX_TOPO_FILE
 * every rank is placed by the documented rule on the description (8 ranks
 * on gb200-nvl72 share one 72-GPU NVLink domain); without it every rank's
 * probe is merged.  Either way every rank must compute the same map, which
 * the ranks check by comparing the exported text of their maps.  A
 * description that does not load fails the launch before any rank starts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "core/comm.h"
#include "topology/model.h"

/* Every rank's map exports to the same text. */
static int same_map_everywhere(epx_comm_t *comm, const epx_topo_t *t)
{
    char *text = NULL;
    CHECK_OK(epx__topo_to_json(t, &text));
    uint64_t h = epxt_hash_str(0, text), *all = calloc((size_t)comm->nranks, 8);
    free(text);
    CHECK(all != NULL);
    CHECK_OK(epx__comm_allgather(comm, &h, all, sizeof(h)));
    for (int r = 0; r < comm->nranks; r++)
        CHECKF(all[r] == h, "rank %d's map differs from rank %d's", r, comm->rank);
    free(all);
    return 0;
}

static int nvl72_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const epx_topo_t *t, *again;
    CHECK_OK(epx_comm_topology(comm, &t));
    CHECK_OK(epx_comm_topology(comm, &again));
    CHECK(t == again);                            /* built once */
    CHECK(epx_topo_num_ranks(t) == comm->nranks);
    int d = epx_topo_rank_domain(t, comm->rank);
    const epx_topo_domain_t *dom = epx_topo_domain(t, d);
    CHECK(dom != NULL && dom->kind == EPX_DOMAIN_NVLINK);
    CHECKF(dom->num_members == 72, "domain of %d GPUs", dom->num_members);
    CHECK(dom->nvlink_gbs == 900);
    for (int r = 0; r < comm->nranks; r++) {
        CHECK(epx_topo_rank_domain(t, r) == d);
        int g = epx_topo_rank_gpu(t, r);
        CHECK(g >= 0 && epx_topo_obj(t, g)->kind == EPX_TOPO_GPU);
        CHECK(epx_topo_obj(t, g)->tray == r / 4);  /* 4 GPUs per tray */
    }
    return same_map_everywhere(comm, t);
}

static int probed_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const epx_topo_t *t;
    CHECK_OK(epx_comm_topology(comm, &t));
    int hosts = 0;
    for (int i = 0; i < epx_topo_num_objs(t); i++)
        hosts += epx_topo_obj(t, i)->kind == EPX_TOPO_HOST;
    CHECKF(hosts == 1, "%d hosts for ranks on one machine", hosts);
    int d = epx_topo_rank_domain(t, comm->rank);
    CHECK(epx_topo_domain(t, d)->kind == EPX_DOMAIN_HOST);
    for (int r = 0; r < comm->nranks; r++)
        CHECK(epx_topo_rank_domain(t, r) == d && epx_topo_rank_gpu(t, r) == -1);
    return same_map_everywhere(comm, t);
}

/* Never reached: a description that does not load fails the launch. */
static int bad_file_rank(epx_comm_t *comm, void *arg)
{
    (void)comm;
    (void)arg;
    return 1;
}

static void topo_file_nvl72(void **state)
{
    (void)state;
    setenv("EPX_TOPO_FILE", "gb200-nvl72", 1);
    assert_int_equal(epxt_launch(8, 0, nvl72_rank, NULL, NULL), EPX_OK);
    unsetenv("EPX_TOPO_FILE");
}

static void probe_merged(void **state)
{
    (void)state;
    unsetenv("EPX_TOPO_FILE");
    assert_int_equal(epxt_launch(3, 0, probed_rank, NULL, NULL), EPX_OK);
}

/* A description that does not load is an error at communicator
 * creation, before any rank starts, naming the variable and the file; no
 * silent fall back to probing. */
static void topo_file_missing(void **state)
{
    (void)state;
    setenv("EPX_TOPO_FILE", "no-such-system", 1);
    assert_int_equal(epx_settings_check(), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "EPX_TOPO_FILE='no-such-system'"));
    assert_int_equal(epxt_launch(2, 0, bad_file_rank, NULL, NULL),
                     EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "EPX_TOPO_FILE='no-such-system'"));
    assert_null(strstr(epx_last_error(), "fall"));
    unsetenv("EPX_TOPO_FILE");
    assert_int_equal(epx_settings_check(), EPX_OK);
}

int main(void)
{
    epxt_init("test_topology");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(topo_file_nvl72),
        cmocka_unit_test(probe_merged),
        cmocka_unit_test(topo_file_missing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

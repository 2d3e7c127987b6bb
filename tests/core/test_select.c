/*
 * core: transport selection per rank pair (src/core/select.c).
 * EPX_TRANSPORTS parsing (allow and deny lists, bad values); the choice of
 * every pair under EPX_TOPO_FILE with two domains (tests/core/data
 * two-hosts.json at 2, 3, 4 ranks; hgx-h100-x16 at 16 ranks) against the
 * rule (shm inside a domain, ucx across), forced ucx, denied shm, one
 * host; a window over the mix (direct pointers only to shm peers, puts
 * and signals through both backends); and refusals every rank reports
 * alike: no allowed transport, a bad value, ranks disagreeing.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/proc_ranks.h"
#include "core/comm.h"

#define TWO_HOSTS EPX_TEST_SRCDIR "/tests/core/data/two-hosts.json"

static void parse_values(void **state)
{
    (void)state;
    unsigned m = 0;
    const unsigned SHM = 1u << EPX_TL_SHM, UCX = 1u << EPX_TL_UCX;
    struct { const char *s; unsigned want; } ok[] = {
        { "", SHM | UCX }, { "auto", SHM | UCX }, { "shm", SHM },
        { "ucx", UCX }, { "shm,ucx", SHM | UCX }, { "ucx,shm", SHM | UCX },
        { "^shm", UCX }, { "^ucx", SHM }, { "ucx,ucx", UCX },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(epx__select_parse(ok[i].s, &m), EPX_OK);
        assert_int_equal(m, ok[i].want);
    }
    const char *bad[] = { "tcp", "shm,", ",shm", "^", "^shm,ucx", "SHM",
                          "shm ucx", "^^shm", "auto,shm" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        m = 12345;
        assert_int_equal(epx__select_parse(bad[i], &m), EPX_ERR_INVALID);
        assert_int_equal(m, 12345);   /* untouched */
        assert_non_null(strstr(epx_last_error(), "EPX_TRANSPORTS"));
    }
    assert_int_equal(epx__select_parse("tcp", &m), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "'tcp'"));
    assert_int_equal(epx__select_parse("^shm,ucx", &m), EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "no transport"));
}

typedef struct expect {
    int per_domain;      /* ranks per domain; 0: one domain */
    int force_ucx;       /* every pair ucx */
} expect_t;

static const char *want_tl(const expect_t *e, int a, int b)
{
    if (e->force_ucx)
        return "ucx";
    if (e->per_domain && a / e->per_domain != b / e->per_domain)
        return "ucx";
    return "shm";
}

/* Every pair as the rule says; then a window over the mix: direct
 * pointers exactly to shm peers, and each rank's value reaches every peer
 * through put + signal, twice (slots 0 and 1). */
static int check_pairs(epx_comm_t *comm, void *arg)
{
    const expect_t *e = arg;
    int me = comm->rank, R = comm->nranks, nucx = 0;
    for (int p = 0; p < R; p++) {
        const char *got = epx__comm_peer_transport(comm, p);
        CHECKF(got && !strcmp(got, want_tl(e, me, p)),
               "rank %d -> %d: %s, want %s", me, p, got ? got : "(null)",
               want_tl(e, me, p));
        nucx += !strcmp(want_tl(e, me, p), "ucx");
    }
    CHECK(epx__comm_peer_transport(comm, R) == NULL);
    CHECK(epx__comm_peer_transport(comm, -1) == NULL);
    CHECK(comm->tl_peers[EPX_TL_UCX] == nucx);
    CHECK(comm->tl_peers[EPX_TL_SHM] == R - nucx);
    char sum[256];
    epx__select_summary(comm, sum, sizeof(sum));
    CHECKF(strstr(sum, nucx ? "ucx to " : "shm to ") != NULL, "summary '%s'",
           sum);

    epx_win_t *w;
    size_t size = 8 * (size_t)R * 2;
    CHECK_OK(epx__win_create(comm, size, 2, &w));
    CHECK(w->local != NULL);
    for (int p = 0; p < R; p++)
        CHECKF((epx__win_peer_ptr(w, p) != NULL) ==
                   !strcmp(want_tl(e, me, p), "shm"),
               "rank %d: direct pointer to %d is %p", me, p,
               epx__win_peer_ptr(w, p));
    for (int round = 0; round < 2; round++) {
        uint64_t v = epxt_hash(epxt_seed(), (uint64_t)me, (uint64_t)round, 0, 0);
        for (int i = 0; i < R; i++) {
            int p = (me + i) % R;
            CHECK_OK(epx__win_put_signal(w, p, (size_t)(round * R + me) * 8, &v,
                                         8, round, 1));
        }
        CHECK_OK(epx__win_wait(w, round, (uint64_t)R));
        for (int s = 0; s < R; s++) {
            uint64_t got, want = epxt_hash(epxt_seed(), (uint64_t)s,
                                           (uint64_t)round, 0, 0);
            memcpy(&got, (char *)w->local + (size_t)(round * R + s) * 8, 8);
            CHECKF(got == want, "round %d: value of rank %d is %016llx, want "
                   "%016llx", round, s, (unsigned long long)got,
                   (unsigned long long)want);
        }
    }
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

static void launch_expect(int nranks, const char *file, const char *tls,
                          expect_t e)
{
    if (file)
        setenv("EPX_TOPO_FILE", file, 1);
    if (tls)
        setenv("EPX_TRANSPORTS", tls, 1);
    epx_status_t st = epxt_launch(nranks, 0, check_pairs, &e, NULL);
    unsetenv("EPX_TOPO_FILE");
    unsetenv("EPX_TRANSPORTS");
    assert_int_equal(st, EPX_OK);
}

#ifdef EPX_HAVE_UCX
static void two_hosts_2(void **s) { (void)s; launch_expect(2, TWO_HOSTS, NULL, (expect_t){ 1, 0 }); }
static void two_hosts_3(void **s) { (void)s; launch_expect(3, TWO_HOSTS, NULL, (expect_t){ 2, 0 }); }
static void two_hosts_4(void **s) { (void)s; launch_expect(4, TWO_HOSTS, "shm,ucx", (expect_t){ 2, 0 }); }
static void hgx_x16_16(void **s) { (void)s; launch_expect(16, "hgx-h100-x16", NULL, (expect_t){ 8, 0 }); }
static void forced_ucx_3(void **s) { (void)s; launch_expect(3, NULL, "ucx", (expect_t){ 0, 1 }); }
static void denied_shm_4(void **s) { (void)s; launch_expect(4, TWO_HOSTS, "^shm", (expect_t){ 0, 1 }); }
#endif
static void one_host_3(void **s) { (void)s; launch_expect(3, NULL, NULL, (expect_t){ 0, 0 }); }
static void one_domain_file_1(void **s) { (void)s; launch_expect(1, TWO_HOSTS, NULL, (expect_t){ 0, 0 }); }

/* ---- refusals: every rank fails epx_comm_create with the same status */

typedef struct refusal {
    const char *tls[2];     /* EPX_TRANSPORTS of even / odd ranks; NULL unset */
    const char *file;
    epx_status_t want;
    const char *text;       /* in the message */
} refusal_t;

static int refused_rank(int rank, void *arg)
{
    const refusal_t *f = arg;
    if (f->tls[rank % 2])
        setenv("EPX_TRANSPORTS", f->tls[rank % 2], 1);
    if (f->file)
        setenv("EPX_TOPO_FILE", f->file, 1);
    epx_comm_t *comm = NULL;
    epx_status_t st = epxt_env_comm(&comm);
    CHECKF(st == f->want, "epx_comm_create: %s (%s), want %s",
           epx_status_str(st), epx_last_error(), epx_status_str(f->want));
    CHECK(comm == NULL);
    CHECKF(strstr(epx_last_error(), f->text), "message '%s' lacks '%s'",
           epx_last_error(), f->text);
    return 0;
}

static void refuse(refusal_t f, int nranks)
{
    int rc[4];
    assert_int_equal(epxt_proc_ranks(nranks, refused_rank, &f, 60, rc), 0);
}

static void refuse_shm_across(void **s)
{
    (void)s;
    refuse((refusal_t){ { "shm", "shm" }, TWO_HOSTS, EPX_ERR_UNSUPPORTED,
                        "EPX_TRANSPORTS='shm'" }, 3);
}
static void refuse_bad_value(void **s)
{
    (void)s;
    refuse((refusal_t){ { "udp", "udp" }, NULL, EPX_ERR_INVALID, "'udp'" }, 2);
}
static void refuse_disagreement(void **s)
{
    (void)s;
    refuse((refusal_t){ { "ucx", NULL }, NULL, EPX_ERR_MISMATCH,
                        "disagree on EPX_TRANSPORTS" }, 3);
}
/* The UCX transport is a module (src/module): a rank that cannot load it
 * fails, and so does every rank of the communicator, without waiting. */
typedef struct nomod {
    int odd_only;           /* only odd ranks lack the module */
    const char *tls;        /* EPX_TRANSPORTS, NULL unset */
    const char *file;       /* EPX_TOPO_FILE, NULL unset */
} nomod_t;

static int nomod_rank(int rank, void *arg)
{
    const nomod_t *f = arg;
    int lacks = !f->odd_only || rank % 2;
    if (lacks)
        setenv("EPX_MODULE_DIR", "/nonexistent/epx-modules", 1);
    if (f->tls)
        setenv("EPX_TRANSPORTS", f->tls, 1);
    if (f->file)
        setenv("EPX_TOPO_FILE", f->file, 1);
    epx_comm_t *comm = NULL;
    double t0 = epxt_now();
    epx_status_t st = epxt_env_comm(&comm);
    epx_status_t want = lacks ? EPX_ERR_UNSUPPORTED : EPX_ERR_PEER;
    CHECKF(st == want, "rank %d: epx_comm_create: %s (%s), want %s", rank,
           epx_status_str(st), epx_last_error(), epx_status_str(want));
    CHECK(comm == NULL);
    const char *text = lacks ? "no epx_ucx.so in /nonexistent/epx-modules"
                             : "rank 1 failed";
    CHECKF(strstr(epx_last_error(), text), "rank %d: message '%s' lacks '%s'",
           rank, epx_last_error(), text);
    CHECKF(epxt_now() - t0 < 20, "rank %d waited %.1f s", rank,
           epxt_now() - t0);
    return 0;
}

static void refuse_ucx_module_absent(void **s)
{
    (void)s;
    int rc[4];
    nomod_t all = { 0, "ucx", NULL }, odd = { 1, NULL, TWO_HOSTS };
    assert_int_equal(epxt_proc_ranks(2, nomod_rank, &all, 60, rc), 0);
    assert_int_equal(epxt_proc_ranks(3, nomod_rank, &odd, 60, rc), 0);
}

/* Ranks on one host with shm between them never load the module. */
static void no_module_needed(void **s)
{
    (void)s;
    setenv("EPX_MODULE_DIR", "/nonexistent/epx-modules", 1);
    launch_expect(3, NULL, NULL, (expect_t){ 0, 0 });
    unsetenv("EPX_MODULE_DIR");
}

int main(void)
{
    epxt_init("test_select");
    const struct CMUnitTest tests[] = {
#ifdef EPX_HAVE_UCX
        cmocka_unit_test(hgx_x16_16),
        cmocka_unit_test(two_hosts_2),
        cmocka_unit_test(two_hosts_3),
        cmocka_unit_test(two_hosts_4),
        cmocka_unit_test(forced_ucx_3),
        cmocka_unit_test(denied_shm_4),
#endif
        cmocka_unit_test(refuse_ucx_module_absent),
        cmocka_unit_test(no_module_needed),
        cmocka_unit_test(parse_values),
        cmocka_unit_test(one_host_3),
        cmocka_unit_test(one_domain_file_1),
        cmocka_unit_test(refuse_shm_across),
        cmocka_unit_test(refuse_bad_value),
        cmocka_unit_test(refuse_disagreement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

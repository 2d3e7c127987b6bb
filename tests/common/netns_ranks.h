/*
 * Ranks in separate network namespaces: two or more "hosts" with their own
 * network stacks on one machine (tests/moe/test-transports.sh sets them up
 * with ip netns and a veth pair).
 *
 * With EPX_TEST_NETNS="a,b,..." (names under /var/run/netns) and
 * EPX_TEST_NETNS_ROOT (an address of namespace a), epxt_launch starts
 * every rank as a process in the namespace of its domain (EPX_TOPO_FILE's
 * domain d -> the (d mod n)-th name; no file: the first), with /sys
 * remounted there so UCX sees that namespace's interfaces, and the ranks
 * meet through the env bootstrap at EPX_TEST_NETNS_ROOT.  Needs root
 * (CAP_SYS_ADMIN for setns and mounts).
 */
#ifndef EPX_TEST_NETNS_RANKS_H
#define EPX_TEST_NETNS_RANKS_H

#include "epx.h"

/* Whether EPX_TEST_NETNS asks for namespaces. */
int epxt_netns_wanted(void);

/* Like epx_launch_local over the namespaces: EPX_OK when every rank's fn
 * returned 0; else an error naming the first failed rank (*failed_rank). */
epx_status_t epxt_netns_launch(int nranks, double timeout_s, epx_rank_fn fn,
                               void *arg, int *failed_rank);

#endif /* EPX_TEST_NETNS_RANKS_H */

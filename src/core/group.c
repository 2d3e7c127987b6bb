/* The communicator's lower half (group.h): the bootstrap's collectives
 * and the count of its windows. */
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/util.h"
#include "core/group.h"

epx_status_t epx__comm_allgather(epx_comm_t *comm, const void *send,
                                 void *recv, size_t bytes)
{
    return comm->boot->allgather(comm->boot, send, recv, bytes);
}

epx_status_t epx__comm_agree(epx_comm_t *comm, epx_status_t mine,
                             int *bad_rank)
{
    int32_t v = mine, *all = malloc(sizeof(int32_t) * (size_t)comm->nranks);
    if (bad_rank)
        *bad_rank = -1;
    if (!all)   /* cannot take part: the peers' all-gather times out */
        return epx__error(EPX_ERR_NOMEM, "comm: out of memory");
    epx_status_t st = epx__comm_allgather(comm, &v, all, sizeof(v));
    for (int r = 0; r < comm->nranks && st == EPX_OK; r++)
        if (all[r] != EPX_OK) {
            st = (epx_status_t)all[r];
            if (bad_rank)
                *bad_rank = r;
        }
    free(all);
    return st;
}

epx_status_t epx__comm_agree_peer(epx_comm_t *comm, epx_status_t mine,
                                  const char *what)
{
    int bad = -1;
    epx_status_t st = epx__comm_agree(comm, mine, &bad);
    if (mine != EPX_OK || bad < 0)
        return mine != EPX_OK ? mine : st;
    return epx__error(EPX_ERR_PEER, "%s: rank %d failed (%s)", what, bad,
                      epx_status_str(st));
}

double epx__comm_timeout(const epx_comm_t *comm) { return comm->timeout_s; }

void epx__comm_hold(epx_comm_t *comm)
{
    comm->nwin++;
}

void epx__comm_win_gone(epx_comm_t *comm)
{
    if (--comm->nwin == 1 && comm->destroyed && !comm->tearing)
        comm->teardown(comm);
}


epx_status_t epx__comm_alive(epx_comm_t *comm)
{
    if (comm->dead_rank < 0) {
        int nd = __atomic_load_n(&comm->net_dead, __ATOMIC_ACQUIRE);
        if (nd >= 0) {
            comm->dead_rank = nd;
            return epx__error(EPX_ERR_PEER, "rank %d: %s", comm->rank,
                              comm->net_why);
        }
        if (!comm->alive)
            return EPX_OK;
        double now = epx__now();
        if (now < comm->next_alive)
            return EPX_OK;
        comm->next_alive = now + 0.05;
        /* A pidfd polls readable once its process has exited (zombie or
         * reaped); fds of -1 are skipped by poll. */
        if (poll(comm->alive, (nfds_t)comm->nranks, 0) <= 0)
            return EPX_OK;
        for (int r = 0; r < comm->nranks; r++) {
            if (!comm->alive[r].revents)
                continue;
            if (comm->peer_left && comm->peer_left[r] &&
                __atomic_load_n(comm->peer_left[r], __ATOMIC_ACQUIRE)) {
                close(comm->alive[r].fd);   /* done with us: stop watching */
                comm->alive[r].fd = -1;
                continue;
            }
            comm->dead_rank = r;
            break;
        }
        if (comm->dead_rank < 0)
            return EPX_OK;
    }
    if (comm->dead_rank == __atomic_load_n(&comm->net_dead, __ATOMIC_ACQUIRE))
        return epx__error(EPX_ERR_PEER, "rank %d: %s", comm->rank,
                          comm->net_why);
    return epx__error(EPX_ERR_PEER, "rank %d: rank %d (pid %d, this host) "
                      "has exited (epx_comm_shrink goes on without it)", comm->rank,
                      comm->dead_rank, comm->peer_pid
                      ? (int)comm->peer_pid[comm->dead_rank] : -1);
}

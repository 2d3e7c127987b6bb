/*
 * File descriptors between the ranks of one host: each rank binds an
 * abstract Unix datagram socket named after the job, a tag and its rank,
 * and sends its descriptor with SCM_RIGHTS to the ranks that want it.
 * Used for cuMem POSIX file-descriptor handles; plain C, tested on the host
 * with memfd descriptors (tests/cuda/test_fdpass).
 */
#ifndef EPX_CUDA_FDPASS_H
#define EPX_CUDA_FDPASS_H

#include "epx.h"

/* Collective over the comm.  send_to[d] != 0: send my_fd to rank d;
 * want_from[s] != 0: receive rank s's descriptor into fds[s] (a new
 * descriptor the caller closes); fds[] is -1 elsewhere.  Both maps must
 * agree between ranks (rank s sends to r iff r wants from s). */
epx_status_t epx__fd_exchange(epx_comm_t *comm, const char *tag, int my_fd,
                              const unsigned char *send_to,
                              const unsigned char *want_from, int *fds);

#endif /* EPX_CUDA_FDPASS_H */

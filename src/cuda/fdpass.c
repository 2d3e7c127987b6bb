/* Descriptor exchange between the ranks of one host (see fdpass.h). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "cuda/fdpass.h"
#include "core/comm.h"
#include "util/util.h"

typedef struct fd_msg {
    int32_t rank;
    char tag[28];
} fd_msg_t;

/* Abstract name "\0epx-<job>-<tag>-<rank>"; returns the address length. */
static socklen_t fd_addr(struct sockaddr_un *a, const epx_comm_t *comm,
                         const char *tag, int rank)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "epx-%s-%s-%d",
                     comm->job, tag, rank);
    if (n < 0 || (size_t)n >= sizeof(a->sun_path) - 1)
        n = (int)sizeof(a->sun_path) - 2;
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static epx_status_t fd_send(int sock, const struct sockaddr_un *to,
                            socklen_t len, const fd_msg_t *m, int fd)
{
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof(ctl));
    struct iovec iov = { (void *)m, sizeof(*m) };
    struct msghdr h = { 0 };
    h.msg_name = (void *)to;
    h.msg_namelen = len;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = ctl;
    h.msg_controllen = sizeof(ctl);
    struct cmsghdr *c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(sock, &h, 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(*m))
        return epx__syserror(EPX_ERR_SYSTEM, "fd exchange: sendmsg");
    return EPX_OK;
}

/* One message: the sender's rank and its descriptor (or -1). */
static epx_status_t fd_recv(int sock, double timeout_s, fd_msg_t *m, int *fd)
{
    struct pollfd p = { sock, POLLIN, 0 };
    int r;
    do
        r = poll(&p, 1, (int)(timeout_s * 1000));
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return epx__error(EPX_ERR_TIMEOUT,
                          "fd exchange: no descriptor from a local peer "
                          "within %.0f s", timeout_s);
    if (r < 0)
        return epx__syserror(EPX_ERR_SYSTEM, "fd exchange: poll");
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { m, sizeof(*m) };
    struct msghdr h = { 0 };
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = ctl;
    h.msg_controllen = sizeof(ctl);
    ssize_t n;
    do
        n = recvmsg(sock, &h, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return epx__syserror(EPX_ERR_SYSTEM, "fd exchange: recvmsg");
    *fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    if (n != (ssize_t)sizeof(*m) || *fd < 0 || (h.msg_flags & MSG_CTRUNC)) {
        if (*fd >= 0)
            close(*fd);
        return epx__error(EPX_ERR_SYSTEM,
                          "fd exchange: malformed message from a local peer");
    }
    return EPX_OK;
}

epx_status_t epx__fd_exchange(epx_comm_t *comm, const char *tag, int my_fd,
                              const unsigned char *send_to,
                              const unsigned char *want_from, int *fds)
{
    const int R = comm->nranks;
    int nwant = 0, sock = -1;
    epx_status_t st = EPX_OK;
    for (int s = 0; s < R; s++) {
        fds[s] = -1;
        nwant += want_from[s] != 0;
    }
    struct sockaddr_un a;
    socklen_t alen = fd_addr(&a, comm, tag, comm->rank);
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        st = epx__syserror(EPX_ERR_SYSTEM, "fd exchange: socket");
    else if (bind(sock, (struct sockaddr *)&a, alen) < 0)
        st = epx__syserror(EPX_ERR_SYSTEM, "fd exchange: bind %s",
                           a.sun_path + 1);
    /* Every socket is bound before anyone sends; a failure here still
     * takes part in the barriers so the peers do not hang. */
    epx_status_t bst = epx_comm_barrier(comm);
    if (st == EPX_OK)
        st = bst;
    fd_msg_t m = { comm->rank, { 0 } };
    snprintf(m.tag, sizeof(m.tag), "%s", tag);
    for (int d = 0; st == EPX_OK && d < R; d++) {
        if (!send_to[d])
            continue;
        struct sockaddr_un to;
        socklen_t tlen = fd_addr(&to, comm, tag, d);
        st = fd_send(sock, &to, tlen, &m, my_fd);
    }
    for (int i = 0; st == EPX_OK && i < nwant; i++) {
        fd_msg_t in;
        int fd = -1;
        st = fd_recv(sock, epx__comm_timeout(comm), &in, &fd);
        if (st != EPX_OK)
            break;
        if (in.rank < 0 || in.rank >= R || !want_from[in.rank] ||
            fds[in.rank] >= 0 || strncmp(in.tag, m.tag, sizeof(m.tag))) {
            close(fd);
            st = epx__error(EPX_ERR_SYSTEM,
                            "fd exchange: unexpected descriptor from rank %d",
                            (int)in.rank);
            break;
        }
        fds[in.rank] = fd;
    }
    bst = epx_comm_barrier(comm);
    if (st == EPX_OK)
        st = bst;
    if (sock >= 0)
        close(sock);
    if (st != EPX_OK)
        for (int s = 0; s < R; s++)
            if (fds[s] >= 0) {
                close(fds[s]);
                fds[s] = -1;
            }
    return st;
}

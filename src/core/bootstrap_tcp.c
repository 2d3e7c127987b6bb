/*
 * TCP bootstrap: a star rooted at rank 0.  Rank 0 listens; every other rank
 * connects, presents the job key and its rank, and is admitted or turned
 * away (EPX_ERR_AUTH) without disturbing the job.  The all-gather is a
 * gather to the root followed by a broadcast; it only runs at setup.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/util.h"
#include "core/bootstrap.h"

#define BOOT_MAGIC 0x65707862u   /* "epxb" */
#define BOOT_KEYMAX 128

typedef struct hello {
    uint32_t magic;
    int32_t rank, nranks;
    char key[BOOT_KEYMAX];
} hello_t;

typedef struct tcp_boot {
    epx_boot_t base;
    int *fds;                  /* root: [nranks] per peer; others: [0] root */
} tcp_boot_t;

static epx_status_t io_full(int fd, void *buf, size_t len, int writing,
                            double deadline, const char *what)
{
    char *p = buf;
    while (len) {
        struct pollfd pfd = { fd, writing ? POLLOUT : POLLIN, 0 };
        double left = deadline - epx__now();
        if (left <= 0)
            return epx__error(EPX_ERR_TIMEOUT, "bootstrap: timed out %s", what);
        int pr = poll(&pfd, 1, left > 1.0 ? 1000 : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR)
            return epx__syserror(EPX_ERR_SYSTEM, "bootstrap: poll (%s)", what);
        if (pr <= 0)
            continue;
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n == 0)
            return epx__error(EPX_ERR_BOOTSTRAP,
                              "bootstrap: peer closed the connection (%s)", what);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return epx__syserror(EPX_ERR_BOOTSTRAP, "bootstrap: %s", what);
        }
        p += n;
        len -= (size_t)n;
    }
    return EPX_OK;
}

static int parse_root(const char *root, char *host, size_t hostlen, char *port,
                      size_t portlen)
{
    const char *colon = root ? strrchr(root, ':') : NULL;
    if (!colon || colon == root || !colon[1] || (size_t)(colon - root) >= hostlen)
        return -1;
    memcpy(host, root, (size_t)(colon - root));
    host[colon - root] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return 0;
}

static epx_status_t root_listen(const char *root, int *out)
{
    char host[256], port[32];
    if (parse_root(root, host, sizeof(host), port, sizeof(port)))
        return epx__error(EPX_ERR_INVALID,
                          "bootstrap: EPX_ROOT '%s' is not host:port",
                          root ? root : "");
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc)
        return epx__error(EPX_ERR_BOOTSTRAP, "bootstrap: cannot resolve %s: %s",
                          root, gai_strerror(rc));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 128)) {
        epx_status_t st = epx__syserror(EPX_ERR_BOOTSTRAP,
                                        "bootstrap: cannot listen on %s", root);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return st;
    }
    freeaddrinfo(ai);
    *out = fd;
    return EPX_OK;
}

static epx_status_t root_accept(tcp_boot_t *b, int lfd, const char *key,
                                double deadline)
{
    int need = b->base.nranks - 1;
    while (need > 0) {
        struct pollfd pfd = { lfd, POLLIN, 0 };
        double left = deadline - epx__now();
        if (left <= 0)
            return epx__error(EPX_ERR_TIMEOUT,
                              "bootstrap: rank 0 still waits for %d of the %d "
                              "other ranks to connect", need,
                              b->base.nranks - 1);
        if (poll(&pfd, 1, left > 1.0 ? 1000 : (int)(left * 1000) + 1) <= 0)
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            usleep(10000);   /* e.g. out of descriptors: do not spin */
            continue;
        }
        hello_t h;
        int32_t verdict = EPX_OK;
        /* A stray client gets a short deadline so it cannot stall the job. */
        double d = epx__now() + 5.0;
        if (io_full(fd, &h, sizeof(h), 0, d < deadline ? d : deadline,
                    "reading a hello") != EPX_OK || h.magic != BOOT_MAGIC) {
            close(fd);
            continue;
        }
        h.key[BOOT_KEYMAX - 1] = '\0';
        if (strcmp(h.key, key) != 0)
            verdict = EPX_ERR_AUTH;
        else if (h.nranks != b->base.nranks || h.rank <= 0 ||
                 h.rank >= b->base.nranks || b->fds[h.rank] >= 0)
            verdict = EPX_ERR_MISMATCH;
        io_full(fd, &verdict, sizeof(verdict), 1, d, "answering a hello");
        if (verdict != EPX_OK) {
            EPX_LOG(EPX_LOG_WARN, "boot", 0,
                    "turned away a client claiming rank %d of %d: %s",
                    (int)h.rank, (int)h.nranks,
                    verdict == EPX_ERR_AUTH ? "wrong job key" : "bad rank");
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        b->fds[h.rank] = fd;
        need--;
    }
    return EPX_OK;
}

static epx_status_t peer_connect(tcp_boot_t *b, const char *root,
                                 const char *key, double deadline)
{
    char host[256], port[32];
    if (parse_root(root, host, sizeof(host), port, sizeof(port)))
        return epx__error(EPX_ERR_INVALID,
                          "bootstrap: EPX_ROOT '%s' is not host:port",
                          root ? root : "");
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM },
                    *ai = NULL;
    int fd = -1;
    /* The root may not be up yet: retry until the deadline. */
    while (fd < 0) {
        if (epx__now() > deadline)
            return epx__error(EPX_ERR_TIMEOUT,
                              "bootstrap: cannot reach rank 0 at %s", root);
        if (getaddrinfo(host, port, &hints, &ai) == 0) {
            fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
                close(fd);
                fd = -1;
            }
            freeaddrinfo(ai);
        }
        if (fd < 0)
            usleep(20000);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    hello_t h = { BOOT_MAGIC, b->base.rank, b->base.nranks, { 0 } };
    snprintf(h.key, sizeof(h.key), "%s", key);
    int32_t verdict;
    epx_status_t st = io_full(fd, &h, sizeof(h), 1, deadline, "sending hello");
    if (st == EPX_OK)
        st = io_full(fd, &verdict, sizeof(verdict), 0, deadline,
                     "waiting for rank 0 to admit us");
    if (st == EPX_OK && verdict == EPX_ERR_AUTH)
        st = epx__error(EPX_ERR_AUTH,
                        "bootstrap: rank 0 at %s rejected our job key", root);
    else if (st == EPX_OK && verdict != EPX_OK)
        st = epx__error(EPX_ERR_MISMATCH,
                        "bootstrap: rank 0 refused rank %d of %d (duplicate "
                        "rank or different job size)", b->base.rank,
                        b->base.nranks);
    if (st != EPX_OK) {
        close(fd);
        return st;
    }
    b->fds[0] = fd;
    return EPX_OK;
}

static epx_status_t tcp_allgather(epx_boot_t *base, const void *send,
                                  void *recv, size_t bytes)
{
    tcp_boot_t *b = (tcp_boot_t *)base;
    double deadline = epx__now() + base->timeout_s;
    char *out = recv;
    uint64_t len = bytes;
    epx_status_t st = EPX_OK;
    memcpy(out + (size_t)base->rank * bytes, send, bytes);
    if (base->rank != 0) {
        st = io_full(b->fds[0], &len, sizeof(len), 1, deadline, "all-gather");
        if (st == EPX_OK)
            st = io_full(b->fds[0], (void *)send, bytes, 1, deadline,
                         "all-gather");
        if (st == EPX_OK)
            st = io_full(b->fds[0], out, bytes * (size_t)base->nranks, 0,
                         deadline, "all-gather");
        return st;
    }
    for (int r = 1; r < base->nranks && st == EPX_OK; r++) {
        uint64_t theirs;
        st = io_full(b->fds[r], &theirs, sizeof(theirs), 0, deadline,
                     "all-gather");
        if (st == EPX_OK && theirs != len)
            st = epx__error(EPX_ERR_MISMATCH,
                            "bootstrap: rank %d all-gathers %llu bytes, rank 0 "
                            "%llu", r, (unsigned long long)theirs,
                            (unsigned long long)len);
        if (st == EPX_OK)
            st = io_full(b->fds[r], out + (size_t)r * bytes, bytes, 0,
                         deadline, "all-gather");
    }
    for (int r = 1; r < base->nranks && st == EPX_OK; r++)
        st = io_full(b->fds[r], out, bytes * (size_t)base->nranks, 1, deadline,
                     "all-gather");
    return st;
}

static void tcp_destroy(epx_boot_t *base)
{
    tcp_boot_t *b = (tcp_boot_t *)base;
    if (!b)
        return;
    int n = base->rank == 0 ? base->nranks : 1;
    for (int i = 0; i < n; i++)
        if (b->fds[i] >= 0)
            close(b->fds[i]);
    free(b->fds);
    free(b);
}

epx_status_t epx__boot_tcp_create(int rank, int nranks, const char *root,
                                  int listen_fd, const char *job_key,
                                  double timeout_s, epx_boot_t **out)
{
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return epx__error(EPX_ERR_INVALID,
                          "bootstrap: rank %d of %d is out of range", rank,
                          nranks);
    if (nranks > 1 && (!job_key || !*job_key))
        return epx__error(EPX_ERR_AUTH,
                          "bootstrap: no job key (set EPX_JOB_KEY to the same "
                          "secret on every rank)");
    if (!job_key)
        job_key = "";
    if (strlen(job_key) >= BOOT_KEYMAX)
        return epx__error(EPX_ERR_INVALID,
                          "bootstrap: job key longer than %d bytes",
                          BOOT_KEYMAX - 1);
    tcp_boot_t *b = calloc(1, sizeof(*b));
    int nfd = rank == 0 ? nranks : 1;
    if (!b || !(b->fds = malloc(sizeof(int) * (size_t)nfd))) {
        free(b);
        return epx__error(EPX_ERR_NOMEM, "bootstrap: out of memory");
    }
    for (int i = 0; i < nfd; i++)
        b->fds[i] = -1;
    b->base.rank = rank;
    b->base.nranks = nranks;
    b->base.allgather = tcp_allgather;
    b->base.destroy = tcp_destroy;
    b->base.timeout_s = timeout_s;
    double deadline = epx__now() + timeout_s;
    epx_status_t st = EPX_OK;
    if (rank == 0 && nranks > 1) {
        int lfd = listen_fd;
        if (lfd < 0)
            st = root_listen(root, &lfd);
        if (st == EPX_OK) {
            st = root_accept(b, lfd, job_key, deadline);
            close(lfd);
        }
    } else if (rank != 0) {
        st = peer_connect(b, root, job_key, deadline);
    } else if (listen_fd >= 0) {
        close(listen_fd);
    }
    if (st != EPX_OK) {
        tcp_destroy(&b->base);
        return st;
    }
    *out = &b->base;
    return EPX_OK;
}

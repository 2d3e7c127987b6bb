/*
 * TCP bootstrap: a star rooted at rank 0.  Rank 0 listens; every other rank
 * connects and proves it holds the job key by a challenge-response, and is
 * admitted or turned away (EPX_ERR_AUTH) without disturbing the job.  The
 * all-gather is a gather to the root followed by a broadcast; it only runs
 * at setup.
 *
 * Handshake (each message a fixed size, HMAC-SHA256 keyed by the job key):
 *   root -> peer  challenge: magic, root nonce
 *   peer -> root  hello: magic, rank, nranks, peer nonce,
 *                 mac = H(key, "hello" | root nonce | peer nonce | rank | nranks)
 *   root -> peer  admit, H(key, "admit" | peer nonce | root nonce | rank | nranks)
 *              or the one rejection, the same bytes whatever the reason.
 * The key never crosses the wire, the MACs are checked in constant time,
 * and the peer checks the root too, so neither side can be spoofed or
 * replayed.  Rank 0 serves every pending connection at once from one poll
 * loop, each with its own deadline, so idle or slow strays cannot delay
 * the job.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sodium.h>

#include "util/util.h"
#include "core/bootstrap.h"

#define BOOT_MAGIC   0x32707862u   /* "bxp2": the challenge-response protocol */
#define BOOT_ADMIT   0x746d6461u   /* "admt" */
#define BOOT_REJECT  0x746a6572u   /* "rejt" */
#define BOOT_NONCE   32
#define BOOT_MAC     crypto_auth_hmacsha256_BYTES
#define BOOT_KEYMAX  4096
/* Time a connection has to complete the handshake once accepted. */
#define BOOT_PEER_S  5.0
/* Handshakes in progress at once; beyond this the oldest is dropped. */
#define BOOT_PENDING 1024

typedef struct challenge {
    uint32_t magic;
    uint8_t nonce[BOOT_NONCE];
} challenge_t;

typedef struct hello {
    uint32_t magic;
    int32_t rank, nranks;
    uint8_t nonce[BOOT_NONCE];
    uint8_t mac[BOOT_MAC];
} hello_t;

typedef struct answer {
    uint32_t verdict;
    uint8_t mac[BOOT_MAC];
} answer_t;

typedef struct tcp_boot {
    epx_boot_t base;
    int *fds;                  /* root: [nranks] per peer; others: [0] root */
} tcp_boot_t;

/* `base` (NULL in the handshakes): its check, if set, is asked every
 * 100 ms whether to go on (a peer known dead never answers).  `peer`: the
 * rank at the other end, or -1 (not known yet). */
static epx_status_t io_full(const epx_boot_t *base, int peer, int fd,
                            void *buf, size_t len, int writing,
                            double deadline, const char *what)
{
    char *p = buf;
    int every = base && base->check ? 100 : 1000;
    while (len) {
        struct pollfd pfd = { fd, writing ? POLLOUT : POLLIN, 0 };
        double left = deadline - epx__now();
        if (left <= 0)
            return epx__error(EPX_ERR_TIMEOUT, "bootstrap: timed out %s", what);
        if (every < 1000) {
            epx_status_t st = base->check(base->check_arg);
            if (st != EPX_OK)
                return st;
        }
        int pr = poll(&pfd, 1, left * 1000 > every ? every
                                                   : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR)
            return epx__syserror(EPX_ERR_SYSTEM, "bootstrap: poll (%s)", what);
        if (pr <= 0)
            continue;
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE) && peer >= 0)
            n = 0;   /* killed: its connection was reset */
        if (n == 0 && peer >= 0) {   /* it exited, or gave up on the job */
            epx_status_t st = base && base->check ? base->check(base->check_arg)
                                                  : EPX_OK;
            return st != EPX_OK ? st
                : epx__error(EPX_ERR_PEER, "bootstrap: rank %d closed its "
                             "connection (%s)", peer, what);
        }
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

/* H(key, tag | a | b | rank | nranks) */
static void boot_mac(uint8_t out[BOOT_MAC], const char *key, const char *tag,
                     const uint8_t a[BOOT_NONCE], const uint8_t b[BOOT_NONCE],
                     int32_t rank, int32_t nranks)
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, strlen(key));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)tag,
                                  strlen(tag) + 1);
    crypto_auth_hmacsha256_update(&st, a, BOOT_NONCE);
    crypto_auth_hmacsha256_update(&st, b, BOOT_NONCE);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)&rank,
                                  sizeof(rank));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)&nranks,
                                  sizeof(nranks));
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
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
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) ||
        listen(fd, SOMAXCONN)) {
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

/* One handshake in progress at the root.  Its sockets are non-blocking:
 * the root never waits on one peer while others are ready. */
typedef struct pending {
    int fd;
    double deadline;
    size_t sent, got;          /* bytes of the challenge sent, hello read */
    challenge_t ch;
    hello_t h;
} pending_t;

/* The rejection: the same bytes for every reason (wrong key, bad rank,
 * job size, malformed hello, too slow), so a client learns nothing.  Best
 * effort, never blocks. */
static void pending_reject(pending_t *p)
{
    answer_t a;
    memset(&a, 0, sizeof(a));
    a.verdict = BOOT_REJECT;
    if (p->sent == sizeof(p->ch))
        (void)!send(p->fd, &a, sizeof(a), MSG_NOSIGNAL | MSG_DONTWAIT);
    close(p->fd);
    p->fd = -1;
}

/* Move what the socket takes now of buf[*done, len).  1: all done, 0: it
 * would block, -1: the peer is gone. */
static int nb_io(int fd, void *buf, size_t len, size_t *done, int writing)
{
    while (*done < len) {
        char *p = (char *)buf + *done;
        ssize_t n = writing
            ? send(fd, p, len - *done, MSG_NOSIGNAL | MSG_DONTWAIT)
            : recv(fd, p, len - *done, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        *done += (size_t)n;
    }
    return 1;
}

/* Advance one handshake.  Returns 1 when the hello is complete, 0 while it
 * is in progress, -1 when the connection is finished with (closed). */
static int pending_step(pending_t *p)
{
    int r = nb_io(p->fd, &p->ch, sizeof(p->ch), &p->sent, 1);
    if (r > 0)
        r = nb_io(p->fd, &p->h, sizeof(p->h), &p->got, 0);
    if (r < 0) {
        close(p->fd);
        p->fd = -1;
    }
    return r;
}

static void pending_drop(pending_t *pend, int *npend, int i)
{
    if (pend[i].fd >= 0)
        pending_reject(&pend[i]);
    pend[i] = pend[--*npend];
}

/* The handshake that started first (the earliest deadline). */
static void pending_drop_oldest(pending_t *pend, int *npend)
{
    int old = 0;
    for (int i = 1; i < *npend; i++)
        if (pend[i].deadline < pend[old].deadline)
            old = i;
    pending_drop(pend, npend, old);
}

/* Judge a complete hello.  Every check is made whatever the others say,
 * and the MAC comparison is constant-time, so the time taken does not
 * tell which check failed either. */
int epx__boot_judge_hello(const uint8_t nonce[32], const void *bytes,
                          size_t len, const char *key, int nranks,
                          const int *fds)
{
    hello_t h;
    uint8_t want[BOOT_MAC];
    if (len != sizeof(h))
        return -1;
    memcpy(&h, bytes, sizeof(h));
    boot_mac(want, key, "epx-boot-hello", nonce, h.nonce, h.rank, h.nranks);
    int mac_ok = sodium_memcmp(want, h.mac, BOOT_MAC) == 0;
    int shape_ok = (h.magic == BOOT_MAGIC) & (h.nranks == nranks) &
                   (h.rank > 0) & (h.rank < nranks);
    return mac_ok & shape_ok && fds[h.rank] < 0 ? h.rank : -1;
}

static int hello_admit(tcp_boot_t *b, const pending_t *p, const char *key)
{
    return epx__boot_judge_hello(p->ch.nonce, &p->h, sizeof(p->h), key,
                                 b->base.nranks, b->fds) > 0;
}

static epx_status_t root_accept(tcp_boot_t *b, int lfd, const char *key,
                                double deadline)
{
    int need = b->base.nranks - 1, npend = 0, turned_away = 0;
    pending_t *pend = malloc(sizeof(*pend) * BOOT_PENDING);
    struct pollfd *pfd = malloc(sizeof(*pfd) * (BOOT_PENDING + 1));
    if (!pend || !pfd) {
        free(pend);
        free(pfd);
        return epx__error(EPX_ERR_NOMEM, "bootstrap: out of memory");
    }
    int fl = fcntl(lfd, F_GETFL);
    if (fl >= 0)
        fcntl(lfd, F_SETFL, fl | O_NONBLOCK);
    epx_status_t st = EPX_OK;
    while (need > 0) {
        double now = epx__now();
        if (now >= deadline) {
            st = epx__error(EPX_ERR_TIMEOUT,
                            "bootstrap: rank 0 still waits for %d of the %d "
                            "other ranks to connect (%d connections turned "
                            "away)", need, b->base.nranks - 1, turned_away);
            break;
        }
        /* Past their own deadline: turned away. */
        double wake = deadline;
        for (int i = 0; i < npend;) {
            if (pend[i].deadline <= now) {
                turned_away++;
                pending_drop(pend, &npend, i);
                continue;
            }
            if (pend[i].deadline < wake)
                wake = pend[i].deadline;
            i++;
        }
        pfd[0] = (struct pollfd){ lfd, POLLIN, 0 };
        for (int i = 0; i < npend; i++)
            pfd[i + 1] = (struct pollfd){
                pend[i].fd, pend[i].sent < sizeof(pend[i].ch) ? POLLOUT : POLLIN,
                0 };
        double left = wake - now;
        int pr = poll(pfd, (nfds_t)npend + 1,
                      left > 1.0 ? 1000 : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR) {
            st = epx__syserror(EPX_ERR_SYSTEM, "bootstrap: poll");
            break;
        }
        if (pr <= 0)
            continue;
        /* Handshakes first (pfd is indexed as pend was at poll time; walk
         * down so removals do not disturb the indices still to visit). */
        for (int i = npend - 1; i >= 0 && need > 0; i--) {
            if (!pfd[i + 1].revents)
                continue;
            int r = pending_step(&pend[i]);
            if (r == 0)
                continue;
            if (r < 0) {
                turned_away++;
                pending_drop(pend, &npend, i);
                continue;
            }
            if (!hello_admit(b, &pend[i], key)) {
                EPX_LOG(EPX_LOG_WARN, "boot", 0,
                        "turned away a client (wrong job key, bad rank or "
                        "job size)");
                turned_away++;
                pending_drop(pend, &npend, i);
                continue;
            }
            answer_t a = { BOOT_ADMIT, { 0 } };
            boot_mac(a.mac, key, "epx-boot-admit", pend[i].h.nonce,
                     pend[i].ch.nonce, pend[i].h.rank, pend[i].h.nranks);
            int fd = pend[i].fd, rank = pend[i].h.rank;
            pend[i].fd = -1;
            pending_drop(pend, &npend, i);
            /* Back to blocking: the answer is small, the peer is waiting. */
            fl = fcntl(fd, F_GETFL);
            if (fl >= 0)
                fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
            double d = epx__now() + BOOT_PEER_S;
            if (io_full(NULL, -1, fd, &a, sizeof(a), 1, d < deadline ? d : deadline,
                        "admitting a rank") != EPX_OK) {
                close(fd);
                continue;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            b->fds[rank] = fd;
            need--;
        }
        if (!(pfd[0].revents & POLLIN) || need == 0)
            continue;
        /* Drain the backlog. */
        for (;;) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                if ((errno == EMFILE || errno == ENFILE) && npend > 0) {
                    /* Out of descriptors: the oldest handshake makes room. */
                    pending_drop_oldest(pend, &npend);
                    turned_away++;
                    continue;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    usleep(10000);   /* e.g. out of memory: do not spin */
                break;
            }
            if (npend == BOOT_PENDING) {
                pending_drop_oldest(pend, &npend);
                turned_away++;
            }
            pending_t *p = &pend[npend++];
            memset(p, 0, sizeof(*p));
            p->fd = fd;
            p->deadline = epx__now() + BOOT_PEER_S;
            p->ch.magic = BOOT_MAGIC;
            randombytes_buf(p->ch.nonce, sizeof(p->ch.nonce));
            /* The challenge goes out when poll says the socket is writable. */
        }
    }
    while (npend > 0)
        pending_drop(pend, &npend, npend - 1);
    free(pend);
    free(pfd);
    return st;
}

/* One attempt at the handshake.  *retry is set when the root went away
 * before it challenged us (not up yet, or it shed the connection). */
static epx_status_t peer_handshake(tcp_boot_t *b, int fd, const char *root,
                                   const char *key, double deadline,
                                   int *retry)
{
    challenge_t ch;
    *retry = 0;
    epx_status_t st = io_full(NULL, -1, fd, &ch, sizeof(ch), 0, deadline,
                              "waiting for rank 0's challenge");
    if (st == EPX_ERR_BOOTSTRAP) {
        *retry = 1;
        return st;
    }
    if (st != EPX_OK)
        return st;
    if (ch.magic != BOOT_MAGIC)
        return epx__error(EPX_ERR_BOOTSTRAP,
                          "bootstrap: %s does not speak this version of the "
                          "epx bootstrap", root);
    hello_t h;
    memset(&h, 0, sizeof(h));
    h.magic = BOOT_MAGIC;
    h.rank = b->base.rank;
    h.nranks = b->base.nranks;
    randombytes_buf(h.nonce, sizeof(h.nonce));
    boot_mac(h.mac, key, "epx-boot-hello", ch.nonce, h.nonce, h.rank, h.nranks);
    answer_t a;
    st = io_full(NULL, -1, fd, &h, sizeof(h), 1, deadline, "sending hello");
    if (st == EPX_OK)
        st = io_full(NULL, -1, fd, &a, sizeof(a), 0, deadline,
                     "waiting for rank 0 to admit us");
    if (st == EPX_ERR_BOOTSTRAP || (st == EPX_OK && a.verdict == BOOT_REJECT))
        return epx__error(EPX_ERR_AUTH,
                          "bootstrap: rank 0 at %s turned us away (rank %d of "
                          "%d): a different job key, a different job size, or "
                          "the rank is taken", root, b->base.rank,
                          b->base.nranks);
    if (st != EPX_OK)
        return st;
    uint8_t want[BOOT_MAC];
    boot_mac(want, key, "epx-boot-admit", h.nonce, ch.nonce, h.rank, h.nranks);
    if (a.verdict != BOOT_ADMIT || sodium_memcmp(want, a.mac, BOOT_MAC) != 0)
        return epx__error(EPX_ERR_AUTH,
                          "bootstrap: %s could not prove it holds the job key: "
                          "not our rank 0", root);
    return EPX_OK;
}

/* connect() that gives up after at most a second (or the deadline): a
 * blocking one whose SYN was dropped (the root's accept queue full while
 * hundreds of ranks start on a loaded host) would wait for the kernel's
 * SYN retries, about two minutes, past any deadline.  0, or -1 to retry. */
static int connect_bounded(int fd, const struct sockaddr *sa, socklen_t len,
                           double deadline)
{
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return connect(fd, sa, len);
    int rc = connect(fd, sa, len);
    if (rc != 0 && errno == EINPROGRESS) {
        double left = deadline - epx__now();
        int ms = left > 1.0 ? 1000 : left > 0 ? (int)(left * 1000) + 1 : 0;
        struct pollfd pfd = { fd, POLLOUT, 0 };
        int err = 0;
        socklen_t el = sizeof(err);
        rc = poll(&pfd, 1, ms) == 1 &&
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0
                 ? 0 : -1;
    }
    if (rc == 0 && fcntl(fd, F_SETFL, fl) != 0)
        rc = -1;
    return rc;
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
    for (;;) {
        int fd = -1;
        /* The root may not be up yet: retry until the deadline. */
        while (fd < 0) {
            if (epx__now() > deadline)
                return epx__error(EPX_ERR_TIMEOUT,
                                  "bootstrap: cannot reach rank 0 at %s", root);
            if (getaddrinfo(host, port, &hints, &ai) == 0) {
                fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd >= 0 && connect_bounded(fd, ai->ai_addr, ai->ai_addrlen,
                                               deadline) != 0) {
                    close(fd);
                    fd = -1;
                }
                freeaddrinfo(ai);
            }
            if (fd < 0)
                usleep(20000);
        }
        int one = 1, retry;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        epx_status_t st = peer_handshake(b, fd, root, key, deadline, &retry);
        if (st == EPX_OK) {
            b->fds[0] = fd;
            return EPX_OK;
        }
        close(fd);
        if (!retry)
            return st;
        usleep(20000);
    }
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
        st = io_full(base, 0, b->fds[0], &len, sizeof(len), 1, deadline, "all-gather");
        if (st == EPX_OK)
            st = io_full(base, 0, b->fds[0], (void *)send, bytes, 1, deadline,
                         "all-gather");
        if (st == EPX_OK)
            st = io_full(base, 0, b->fds[0], out, bytes * (size_t)base->nranks, 0,
                         deadline, "all-gather");
        return st;
    }
    for (int r = 1; r < base->nranks && st == EPX_OK; r++) {
        uint64_t theirs;
        st = io_full(base, r, b->fds[r], &theirs, sizeof(theirs), 0, deadline,
                     "all-gather");
        if (st == EPX_OK && theirs != len)
            st = epx__error(EPX_ERR_MISMATCH,
                            "bootstrap: rank %d all-gathers %llu bytes, rank 0 "
                            "%llu", r, (unsigned long long)theirs,
                            (unsigned long long)len);
        if (st == EPX_OK)
            st = io_full(base, r, b->fds[r], out + (size_t)r * bytes, bytes, 0,
                         deadline, "all-gather");
    }
    for (int r = 1; r < base->nranks && st == EPX_OK; r++)
        st = io_full(base, r, b->fds[r], out, bytes * (size_t)base->nranks, 1, deadline,
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
    if (nranks < 1 || nranks > EPX_MAX_RANKS || rank < 0 || rank >= nranks)
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
    if (nranks > 1 && sodium_init() < 0)
        return epx__error(EPX_ERR_SYSTEM, "bootstrap: libsodium did not start");
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

/*
 * Transport selection: one place decides which backend reaches each peer.
 *
 * Rule, per pair of ranks: shm when both run on the same real host (host
 * name and kernel boot id) and in the same domain, else ucx.  The domain
 * is the rank's domain in EPX_TOPO_FILE's description when that is set
 * (several hosts emulated on one machine), else the real host (no probe at
 * comm creation).  EPX_TRANSPORTS then narrows the choice: "ucx" (allow
 * list) or "^shm" (deny list).  Every rank computes the whole matrix from
 * the same gathered facts, so a refusal is reported by every rank alike.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "core/comm.h"
#include "transport/ucx/ucx_module.h"

static const char *const tl_names[EPX_TL_COUNT] = { "shm", "ucx" };

const epx_tl_ops_t *epx__tl_get(int tl)
{
    switch (tl) {
    case EPX_TL_SHM:
        return &epx__tl_shm;
    case EPX_TL_UCX:
        return epx__ucx_tl();       /* loads the module */
    default:
        return NULL;
    }
}

epx_status_t epx__select_parse(const char *spec, unsigned *allowed)
{
    unsigned all = (1u << EPX_TL_COUNT) - 1, set = 0;
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        *allowed = all;
        return EPX_OK;
    }
    int deny = spec[0] == '^';
    const char *p = spec + deny;
    while (1) {
        size_t n = strcspn(p, ",");
        int found = -1;
        for (int t = 0; t < EPX_TL_COUNT; t++)
            if (n == strlen(tl_names[t]) && !strncmp(p, tl_names[t], n))
                found = t;
        if (found < 0)
            return epx__error(EPX_ERR_INVALID,
                              "EPX_TRANSPORTS='%s': unknown transport '%.*s' "
                              "(known: shm, ucx; a leading ^ denies)", spec,
                              (int)n, p);
        set |= 1u << found;
        if (!p[n])
            break;
        p += n + 1;
    }
    set = deny ? all & ~set : set;
    if (!set)
        return epx__error(EPX_ERR_INVALID,
                          "EPX_TRANSPORTS='%s' leaves no transport", spec);
    *allowed = set;
    return EPX_OK;
}

void epx__select_local(int rank, int nranks, epx_rank_info_t *mine,
                       epx_topo_t **topo)
{
    const char *file = epx__cfg_str("EPX_TOPO_FILE");
    snprintf(mine->transports, sizeof(mine->transports), "%s",
             epx__cfg_str("EPX_TRANSPORTS"));
    mine->domain = -1;
    mine->topo_status = EPX_OK;
    *topo = NULL;
    if (!*file)
        return;
    epx_topo_t *t = NULL;
    epx_status_t st = epx_topo_load(file, &t);
    if (st == EPX_OK)
        st = epx_topo_place(t, nranks);
    if (st != EPX_OK) {
        /* No fallback to the real hosts: epx__select fails on every rank
         * alike, naming the first rank that could not use the file. */
        snprintf(mine->topo_err, sizeof(mine->topo_err), "%s",
                 epx_last_error());
        epx_topo_destroy(t);
        mine->topo_status = st;
        return;
    }
    mine->domain = epx_topo_rank_domain(t, rank);
    *topo = t;
}

/* Backends that can reach from rank a to rank b at all. */
static unsigned reachable(const epx_rank_info_t *all, int use_domains, int a,
                          int b)
{
    unsigned m = 1u << EPX_TL_UCX;
    if (!strcmp(all[a].host, all[b].host) &&
        !strcmp(all[a].boot_id, all[b].boot_id) &&
        (!use_domains || all[a].domain == all[b].domain))
        m |= 1u << EPX_TL_SHM;
    return m;
}

epx_status_t epx__select(epx_comm_t *c, const epx_rank_info_t *all)
{
    const int R = c->nranks;
    for (int r = 0; r < R; r++)
        if (strcmp(all[r].transports, all[0].transports))
            return epx__error(EPX_ERR_MISMATCH,
                              "comm: ranks disagree on EPX_TRANSPORTS (rank 0: "
                              "'%s', rank %d: '%s')", all[0].transports, r,
                              all[r].transports);
    unsigned allowed;
    epx_status_t st = epx__select_parse(all[0].transports, &allowed);
    if (st != EPX_OK)
        return st;
    for (int r = 0; r < R; r++)
        if (all[r].topo_status != EPX_OK)
            return epx__error((epx_status_t)all[r].topo_status,
                              "EPX_TOPO_FILE='%s' unusable on rank %d (%s); "
                              "unset it to probe the hosts",
                              epx__cfg_str("EPX_TOPO_FILE"), r,
                              all[r].topo_err);
    int use_domains = 1;
    for (int r = 0; r < R; r++)
        use_domains &= all[r].domain >= 0;
    if (!use_domains)
        for (int r = 0; r < R; r++)
            if (all[r].domain >= 0) {   /* set here, not everywhere */
                EPX_LOG(EPX_LOG_WARN, "core", c->rank,
                        "EPX_TOPO_FILE gave no domain to every rank: domains "
                        "are real hosts");
                break;
            }
    /* The whole matrix, so that every rank refuses the same pair.  UCX
     * counts as present: its module is loaded, and every rank agrees it
     * could, only once a pair needs it (epx__ucx_comm_init). */
    for (int a = 0; a < R; a++)
        for (int b = a; b < R; b++) {
            unsigned can = reachable(all, use_domains, a, b) & allowed;
            int t = -1;
            for (int i = 0; i < EPX_TL_COUNT && t < 0; i++)
                if (can & (1u << i))
                    t = i;
            if (t < 0)
                return epx__error(EPX_ERR_UNSUPPORTED,
                                  "comm: no allowed transport between ranks %d "
                                  "and %d (host %s / %s, domain %d / %d; "
                                  "EPX_TRANSPORTS='%s', shm needs one host "
                                  "and one domain)", a, b, all[a].host,
                                  all[b].host, (int)all[a].domain,
                                  (int)all[b].domain, all[0].transports);
            c->ucx_any |= t == EPX_TL_UCX;
            if (a == c->rank)
                c->peer_tl[b] = (uint8_t)t;
            if (b == c->rank)
                c->peer_tl[a] = (uint8_t)t;
        }
    for (int r = 0; r < R; r++)
        c->tl_peers[c->peer_tl[r]]++;
    return EPX_OK;   /* logged by the comm once it is up */
}

const char *epx__comm_peer_transport(const epx_comm_t *c, int peer)
{
    if (!c || peer < 0 || peer >= c->nranks)
        return NULL;
    return tl_names[c->peer_tl[peer]];
}

void epx__select_summary(const epx_comm_t *c, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int t = 0; t < EPX_TL_COUNT; t++) {
        if (!c->tl_peers[t])
            continue;
        at += (size_t)snprintf(buf + at, at < len ? len - at : 0, "%s%s to ",
                               at ? ", " : "", tl_names[t]);
        int first = 1;
        for (int r = 0; r < c->nranks; r++) {
            if (c->peer_tl[r] != t || (r > 0 && c->peer_tl[r - 1] == t))
                continue;
            int e = r;
            while (e + 1 < c->nranks && c->peer_tl[e + 1] == t)
                e++;
            at += (size_t)(e > r
                ? snprintf(buf + at, at < len ? len - at : 0, "%s%d-%d",
                           first ? "" : ",", r, e)
                : snprintf(buf + at, at < len ? len - at : 0, "%s%d",
                           first ? "" : ",", r));
            first = 0;
        }
    }
    if (at >= len && len > 4)
        memcpy(buf + len - 4, "...", 4);
}

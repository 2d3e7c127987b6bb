/* epx_balance_metrics: how even a placement spreads the load over ranks. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "util/util.h"
#include "balance/balance.h"

/* Rank loads of one layer into rl[R]; cnt[E] scratch.  lost (may be
 * NULL): [E], experts whose load is on no rank. */
static epx_status_t rank_loads(const epx_balance_params_t *p, int l,
                               const double *load, const int32_t *phy2log,
                               const uint8_t *lost, int32_t *cnt, double *rl)
{
    int E = p->num_experts, R = p->num_ranks, S = p->num_slots;
    for (int r = 0; r < R; r++)
        rl[r] = 0;
    if (!phy2log) {            /* contiguous blocks, as the moe layer places */
        for (int r = 0; r < R; r++)
            for (int e = (int)((int64_t)r * E / R);
                 e < (int)((int64_t)(r + 1) * E / R); e++)
                rl[r] += lost && lost[e] ? 0 : load[e];
        return EPX_OK;
    }
    const int32_t *p2l = phy2log + (size_t)l * S;
    for (int e = 0; e < E; e++)
        cnt[e] = 0;
    for (int s = 0; s < S; s++) {
        if (p2l[s] < 0 || p2l[s] >= E)
            return epx__error(EPX_ERR_INVALID,
                              "balance: phy2log[%d][%d] = %d is not an expert "
                              "(0..%d)", l, s, p2l[s], E - 1);
        cnt[p2l[s]]++;
    }
    for (int e = 0; e < E; e++) {
        if (lost && lost[e] && cnt[e])
            return epx__error(EPX_ERR_INVALID,
                              "balance: layer %d: phy2log gives expert %d a "
                              "slot but lost marks it as lost", l, e);
        if (!cnt[e] && load[e] > 0 && !(lost && lost[e]))
            return epx__error(EPX_ERR_INVALID,
                              "balance: layer %d: expert %d has load %g but no "
                              "slot in phy2log%s", l, e, load[e],
                              lost ? " (and is not marked lost)" : "");
    }
    for (int s = 0; s < S; s++)
        rl[s / (S / R)] += load[p2l[s]] / cnt[p2l[s]];
    return EPX_OK;
}

epx_status_t epx_balance_metrics(const epx_balance_params_t *p,
                                 const double *load, const int32_t *phy2log,
                                 double *balancedness, double *imbalance,
                                 double *layer_balancedness,
                                 double *layer_imbalance)
{
    bal_shape_t sh;
    epx_status_t st = epx__bal_shape(p, &sh);
    if (st != EPX_OK)
        return st;
    if (!load)
        return epx__error(EPX_ERR_INVALID, "balance: load is NULL");
    for (size_t i = 0; i < (size_t)sh.L * sh.E; i++)
        if (!isfinite(load[i]) || load[i] < 0)
            return epx__error(EPX_ERR_INVALID,
                              "balance: load[%zu][%zu] = %g must be finite "
                              "and >= 0", i / sh.E, i % sh.E, load[i]);
    const uint8_t *lost = epx__bal_lost(p);
    int32_t *cnt = malloc((size_t)sh.E * sizeof(int32_t));
    double *rl = malloc((size_t)sh.R * sizeof(double));
    double *lb = malloc((size_t)sh.L * 2 * sizeof(double));
    if (!cnt || !rl || !lb) {
        st = epx__error(EPX_ERR_NOMEM, "balance: out of memory");
        goto out;
    }
    double sum_mean = 0, sum_max = 0;
    for (int l = 0; l < sh.L && st == EPX_OK; l++) {
        st = rank_loads(p, l, load + (size_t)l * sh.E, phy2log,
                        lost ? lost + (size_t)l * sh.E : NULL, cnt, rl);
        if (st != EPX_OK)
            break;
        double tot = 0, mx = 0;
        for (int r = 0; r < sh.R; r++) {
            tot += rl[r];
            if (rl[r] > mx)
                mx = rl[r];
        }
        double mean = tot / sh.R;
        lb[2 * l] = mx > 0 ? mean / mx : 1.0;
        lb[2 * l + 1] = mean > 0 ? (mx - mean) / mean : 0.0;
        sum_mean += mean;
        sum_max += mx;
    }
    if (st != EPX_OK)
        goto out;
    if (balancedness)
        *balancedness = sum_max > 0 ? sum_mean / sum_max : 1.0;
    if (imbalance)
        *imbalance = sum_mean > 0 ? (sum_max - sum_mean) / sum_mean : 0.0;
    for (int l = 0; l < sh.L; l++) {
        if (layer_balancedness)
            layer_balancedness[l] = lb[2 * l];
        if (layer_imbalance)
            layer_imbalance[l] = lb[2 * l + 1];
    }
out:
    free(cnt);
    free(rl);
    free(lb);
    return st;
}

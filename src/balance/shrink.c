/* epx_balance_shrink: the placement that survives when ranks are gone.
 * The live ranks keep their slots as they are, renumbered densely in the
 * old order; an expert with no replica left on them is lost. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "balance/balance.h"

epx_status_t epx_balance_shrink(const epx_balance_params_t *p,
                                const int32_t *phy2log, const uint8_t *live,
                                int32_t *new_phy2log, uint8_t *lost,
                                int64_t *num_lost)
{
    if (!p || p->struct_size < offsetof(epx_balance_params_t, num_ranks) +
                                   sizeof(p->num_ranks))
        return epx__error(EPX_ERR_INVALID,
                          "balance: params NULL or not set up with "
                          "EPX_BALANCE_PARAMS_INIT");
    epx_status_t st = epx__check_version("balance params", p->version,
                                         EPX_BALANCE_PARAMS_VERSION);
    if (st != EPX_OK)
        return st;
    int L = p->num_layers, E = p->num_experts, S = p->num_slots;
    int R = p->num_ranks;
    if (L < 1 || E < 1 || S < 1 || R < 1)
        return epx__error(EPX_ERR_INVALID,
                          "balance: shrink: num_layers (%d), num_experts (%d), "
                          "num_slots (%d) and num_ranks (%d) must all be >= 1",
                          L, E, S, R);
    if (S % R)
        return epx__error(EPX_ERR_INVALID,
                          "balance: shrink: num_slots %d is not a multiple of "
                          "num_ranks %d", S, R);
    if ((int64_t)L * S > INT32_MAX || (int64_t)L * E > INT32_MAX)
        return epx__error(EPX_ERR_RANGE, "balance: shrink: problem too large");
    if (!phy2log || !live || !new_phy2log)
        return epx__error(EPX_ERR_INVALID, "balance: shrink: %s is NULL",
                          !phy2log ? "phy2log" : !live ? "live"
                                                       : "new_phy2log");
    int spr = S / R, nlive = 0;
    for (int r = 0; r < R; r++)
        nlive += live[r] != 0;
    if (nlive == 0)
        return epx__error(EPX_ERR_INVALID,
                          "balance: shrink: no live rank (live[0..%d] all 0)",
                          R - 1);
    for (size_t i = 0; i < (size_t)L * S; i++)
        if (phy2log[i] < 0 || phy2log[i] >= E)
            return epx__error(EPX_ERR_INVALID,
                              "balance: shrink: phy2log[%zu][%zu] = %d is not "
                              "an expert (0..%d)", i / S, i % S, phy2log[i],
                              E - 1);
    uint8_t *gone = malloc((size_t)E);
    if (!gone)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    /* Checked: write.  gone[e]: no kept slot holds e. */
    int64_t nl = 0;
    size_t ns = (size_t)nlive * spr;
    for (int l = 0; l < L; l++) {
        const int32_t *old = phy2log + (size_t)l * S;
        int32_t *out = new_phy2log + (size_t)l * ns;
        for (int r = 0, i = 0; r < R; r++)
            if (live[r])
                memcpy(out + (size_t)i++ * spr, old + (size_t)r * spr,
                       (size_t)spr * sizeof(int32_t));
        memset(gone, 1, (size_t)E);
        for (size_t s = 0; s < ns; s++)
            gone[out[s]] = 0;
        for (int e = 0; e < E; e++)
            nl += gone[e];
        if (lost)
            memcpy(lost + (size_t)l * E, gone, (size_t)E);
    }
    free(gone);
    if (num_lost)
        *num_lost = nl;
    return EPX_OK;
}

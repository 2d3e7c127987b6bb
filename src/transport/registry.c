/* The backends built into this library, by name (tests and the per-peer
 * selection ask which exist). */
#include <string.h>
#include "transport/transport.h"

static const epx_tl_ops_t *const builtin[] = {
    &epx__tl_shm,
};

const epx_tl_ops_t *epx__tl_find(const char *name)
{
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
        if (name && strcmp(builtin[i]->name, name) == 0)
            return builtin[i];
    return NULL;
}

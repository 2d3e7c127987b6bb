/* The one table of EPX_* environment settings (README's table is made from
 * it by scripts/gen-config-table; tests/util checks they agree). */
#include <stdlib.h>
#include <string.h>
#include "util.h"

static const epx_setting_t settings[] = {
    { "EPX_LOG", "warn",
      "log level: error, warn, info, debug or trace" },
    { "EPX_LOG_SUBSYS", "all",
      "comma-separated subsystems to log (core,boot,shm,moe) or all" },
    { "EPX_TIMEOUT", "120",
      "seconds a rank waits for a peer before its call fails with a timeout" },
    { "EPX_RANK", "",
      "env bootstrap: this process's rank" },
    { "EPX_NRANKS", "",
      "env bootstrap: number of ranks" },
    { "EPX_ROOT", "",
      "env bootstrap: host:port where rank 0 listens" },
    { "EPX_JOB_KEY", "",
      "env bootstrap: secret every joining rank must present" },
    { "EPX_TOPO_FILE", "",
      "system description (name in topology/systems or path) used instead of probing" },
    { "EPX_SYSTEMS_DIR", "",
      "directory searched first for system descriptions named by EPX_TOPO_FILE" },
    { "EPX_TOPO_XML", "",
      "hwloc XML file the probe reads instead of this machine (NVML and CUDA skipped)" },
    { "EPX_TRANSPORTS", "auto",
      "transports rank pairs may use: auto, an allow list (ucx; shm,ucx) or a deny list (^shm)" },
    { "EPX_SPIN", "2000",
      "polls of a signal before a waiting rank yields the CPU" },
    { "EPX_YIELD", "50",
      "sched_yield rounds after spinning before sleeping on a futex" },
    { "EPX_CUDA_WINDOW", "auto",
      "GPU windows: auto (probe), direct (one process), fabric, posix-fd or ipc" },
};

int epx_settings(const epx_setting_t **table)
{
    if (table)
        *table = settings;
    return (int)(sizeof(settings) / sizeof(settings[0]));
}

const char *epx__cfg_str(const char *name)
{
    const char *v = getenv(name);
    if (v && *v)
        return v;
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
        if (strcmp(settings[i].name, name) == 0)
            return settings[i].deflt;
    return "";
}

long epx__cfg_long(const char *name)
{
    return strtol(epx__cfg_str(name), NULL, 10);
}

double epx__cfg_double(const char *name)
{
    return strtod(epx__cfg_str(name), NULL);
}

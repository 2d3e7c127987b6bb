/* The one table of EPX_* environment settings (README's table is made from
 * it by scripts/gen-config-table; tests/util checks they agree). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

static const epx_setting_t settings[] = {
    { "EPX_LOG", "warn",
      "log level: error, warn, info, debug or trace" },
    { "EPX_LOG_SUBSYS", "all",
      "comma-separated subsystems whose info, debug and trace lines are logged "
      "(boot, comm, core, cuda, moe, shm, topo, ucx) or all; errors and "
      "warnings always are" },
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
    { "EPX_PEER_SILENCE", "5",
      "seconds a peer reached over UCX may send no heartbeat before it is taken for hung (0: never)" },
    { "EPX_MODULE_DIR", "",
      "colon-separated directories searched for the optional modules (UCX, CUDA, NCCL) instead of the installed ones" },
    { "EPX_CUDA_WINDOW", "auto",
      "GPU windows: auto (probe), direct (one process), fabric, posix-fd or ipc" },
    { "EPX_CUDA_KERNELS", "classic",
      "GPU kernels: classic (verified on a device) or fused (the single-pass data path, not yet verified on a device)" },
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

/* The numeric settings and the values they may take.  Checked, with the
 * word-valued ones below, when a communicator is made (epx__cfg_check, by
 * epx_settings_check), so a typo or a value that would wrap or allocate
 * absurdly fails there with the name, not later. */
typedef struct cfg_range {
    const char *name;
    int integer;
    double lo, hi;
} cfg_range_t;

static const cfg_range_t ranges[] = {
    { "EPX_TIMEOUT", 0, 0, 1e308 },   /* lo exclusive; huge = forever */
    { "EPX_RANK", 1, 0, EPX_MAX_RANKS - 1 },
    { "EPX_NRANKS", 1, 1, EPX_MAX_RANKS },
    { "EPX_SPIN", 1, 0, 1e9 },
    { "EPX_YIELD", 1, 0, 1e9 },
    { "EPX_PEER_SILENCE", 0, -1, 1e308 },   /* lo exclusive: 0 = never */
};

static const cfg_range_t *cfg_range(const char *name)
{
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if (strcmp(ranges[i].name, name) == 0)
            return &ranges[i];
    return NULL;
}

/* The settings that take one of a few words (EPX_LOG_SUBSYS: a
 * comma-separated list of them).  Kept with the numeric ranges so that
 * epx__cfg_check refuses a typo instead of falling back to the default. */
typedef struct cfg_words {
    const char *name;
    int list;
    const char *words;   /* space-separated */
} cfg_words_t;

static const cfg_words_t words[] = {
    { "EPX_LOG", 0, "error warn info debug trace" },
    { "EPX_LOG_SUBSYS", 1, "all boot comm core cuda moe shm topo ucx" },
    { "EPX_CUDA_WINDOW", 0, "auto direct fabric posix-fd ipc" },
    { "EPX_CUDA_KERNELS", 0, "classic fused" },
};

static int cfg_word_ok(const char *words_, const char *w, size_t n)
{
    for (const char *p = words_; *p;) {
        size_t k = strcspn(p, " ");
        if (k == n && strncmp(p, w, n) == 0)
            return 1;
        p += k + (p[k] == ' ');
    }
    return 0;
}

static int cfg_words_ok(const cfg_words_t *c, const char *v)
{
    if (!c->list)
        return cfg_word_ok(c->words, v, strlen(v));
    for (const char *p = v;; p++) {   /* no empty item, no stray comma */
        size_t n = strcspn(p, ",");
        if (n == 0 || !cfg_word_ok(c->words, p, n))
            return 0;
        p += n;
        if (!*p)
            return 1;
    }
}

/* Whole string, finite, in range (for EPX_TIMEOUT: > 0). */
static int cfg_parse(const cfg_range_t *r, const char *s, double *out)
{
    char *end;
    double v;
    errno = 0;
    if (*s == ' ' || (*s >= '\t' && *s <= '\r'))
        return -1;   /* strto* would skip it: "2" and " 2" must not differ */
    if (r->integer) {
        long long l = strtoll(s, &end, 10);
        v = (double)l;
    } else {
        v = strtod(s, &end);
    }
    if (end == s || *end || errno == ERANGE || !isfinite(v) || v < r->lo ||
        v > r->hi || (!r->integer && !(v > r->lo)))
        return -1;
    *out = v;
    return 0;
}

epx_status_t epx__cfg_check(void)
{
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        const char *v = getenv(ranges[i].name);
        double d;
        if (!v || !*v || cfg_parse(&ranges[i], v, &d) == 0)
            continue;
        if (ranges[i].integer)
            return epx__error(EPX_ERR_INVALID,
                              "%s='%s' is not an integer in [%.0f, %.0f]",
                              ranges[i].name, v, ranges[i].lo, ranges[i].hi);
        return epx__error(EPX_ERR_INVALID,
                          "%s='%s' is not a positive number of seconds",
                          ranges[i].name, v);
    }
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        const char *v = getenv(words[i].name);
        if (!v || !*v || cfg_words_ok(&words[i], v))
            continue;
        char list[160];
        size_t n = 0;
        for (const char *w = words[i].words; *w && n + 3 < sizeof(list); w++)
            n += (size_t)(*w == ' ' ? snprintf(list + n, sizeof(list) - n, ", ")
                                    : snprintf(list + n, sizeof(list) - n, "%c",
                                               *w));
        list[n] = '\0';
        return epx__error(EPX_ERR_INVALID, "%s='%s': want %s: %s",
                          words[i].name, v,
                          words[i].list ? "a comma-separated list of"
                                        : "one of", list);
    }
    return EPX_OK;
}

/* Unchecked readers for settings epx__cfg_check has vetted: a value that
 * changed since reads as the default, never as a wrapped number. */
static double cfg_number(const char *name)
{
    const cfg_range_t *r = cfg_range(name);
    const char *v = epx__cfg_str(name);
    double d;
    if (!r)
        return strtod(v, NULL);
    if (cfg_parse(r, v, &d) == 0)
        return d;
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
        if (strcmp(settings[i].name, name) == 0 &&
            cfg_parse(r, settings[i].deflt, &d) == 0)
            return d;
    return r->lo;
}

long epx__cfg_long(const char *name)
{
    return (long)cfg_number(name);
}

double epx__cfg_double(const char *name)
{
    return cfg_number(name);
}

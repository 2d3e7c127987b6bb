/* The module loader (module.h). */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "config.h"
#include "util/util.h"
#include "util/paths.h"
#include "core/group.h"
#include "core/module.h"
#include "transport/transport.h"

static const char *status_str(epx_status_t st) { return epx_status_str(st); }
static const char *last_error(void) { return epx_last_error(); }
static epx_status_t comm_barrier(struct epx_comm *c) { return epx_comm_barrier(c); }

static epx_status_t comm_rank_domains(struct epx_comm *c, int32_t *dom,
                                      const char **name)
{
    const epx_topo_t *t;
    epx_status_t st = epx_comm_topology(c, &t);
    if (st != EPX_OK)
        return st;
    for (int r = 0; r < c->nranks; r++)
        dom[r] = epx_topo_rank_domain(t, r);
    *name = epx_topo_name(t);
    return EPX_OK;
}

static const epx_module_host_t host = {
    .verror = epx__verror,
    .last_error = last_error,
    .status_str = status_str,
    .dtype_size = epx_dtype_size,
    .log_enabled = epx__log_enabled,
    .vlog = epx__vlog,
    .now = epx__now,
    .cfg_str = epx__cfg_str,
    .comm_allgather = epx__comm_allgather,
    .comm_agree_peer = epx__comm_agree_peer,
    .comm_timeout = epx__comm_timeout,
    .comm_alive = epx__comm_alive,
    .comm_barrier = comm_barrier,
    .win_peer_tl = epx__win_peer_tl,
    .win_poll_wait = epx__win_poll_wait,
    .win_bad_index = epx__win_bad_index,
    .module_load = epx__module_load,
    .comm_rank_domains = comm_rank_domains,
};

/* try_dir: no such file there (not a status callers ever see) */
#define NOT_HERE ((epx_status_t)1)
#define MAX_MODULES 4
static struct slot {
    char name[16];
    const void *ops;            /* NULL: failed, see why */
    epx_status_t st;
    char why[PATH_MAX + 1024];
} slots[MAX_MODULES];
static int nslots;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads dir/epx_<name>.so into s; EPX_OK, or why not in s->why. */
static epx_status_t try_dir(struct slot *s, const char *dir)
{
    char path[PATH_MAX + 32];
    struct stat sb;
    if (snprintf(path, sizeof(path), "%s/epx_%s.so", dir, s->name) >=
            (int)sizeof(path) || stat(path, &sb) != 0)
        return NOT_HERE;
    /* RTLD_LOCAL: its dependencies (libucp, libcudart) stay its own. */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(s->why, sizeof(s->why), "cannot load %s: %s", path,
                 dlerror());
        return EPX_ERR_UNSUPPORTED;
    }
    epx_module_get_fn get = (epx_module_get_fn)dlsym(h, EPX_MODULE_ENTRY);
    const epx_module_t *m = get ? get(&host) : NULL;
    if (!m || m->abi != EPX_MODULE_ABI || strcmp(m->version, PACKAGE_VERSION) ||
        m->comm_size != sizeof(struct epx_comm) ||
        m->win_size != sizeof(struct epx_win) || strcmp(m->name, s->name)) {
        if (m)
            snprintf(s->why, sizeof(s->why), "%s is not a module of this "
                     "build of epx %s (ABI %d): it is version %s, ABI %u",
                     path, PACKAGE_VERSION, EPX_MODULE_ABI, m->version,
                     m->abi);
        else
            snprintf(s->why, sizeof(s->why), "%s is not a module of this "
                     "build of epx %s (ABI %d): no %s entry", path,
                     PACKAGE_VERSION, EPX_MODULE_ABI, EPX_MODULE_ENTRY);
        dlclose(h);
        return EPX_ERR_UNSUPPORTED;
    }
    /* Never unloaded: its threads and handlers live as long as the process. */
    s->ops = m->ops;
    return EPX_OK;
}

static void load(struct slot *s)
{
    const char *dirs[8];
    int nd = 0;
    char envbuf[PATH_MAX * 2], tried[1024] = "";
    const char *env = epx__cfg_str("EPX_MODULE_DIR");
    if (*env) {                  /* a colon list, searched instead */
        snprintf(envbuf, sizeof(envbuf), "%s", env);
        char *save = NULL;
        for (char *d = strtok_r(envbuf, ":", &save); d && nd < 4;
             d = strtok_r(NULL, ":", &save))
            dirs[nd++] = d;
    }
    if (!nd)
        nd = epx__paths(EPX_PATH_MODULES, dirs, 8);
    s->st = NOT_HERE;
    for (int i = 0; i < nd && s->st == NOT_HERE; i++) {
        s->st = try_dir(s, dirs[i]);
        size_t l = strlen(tried);
        snprintf(tried + l, sizeof(tried) - l, "%s%s", l ? ", " : "", dirs[i]);
    }
    if (s->st == NOT_HERE) {
        s->st = EPX_ERR_UNSUPPORTED;
        char name[sizeof(s->name)];
        memcpy(name, s->name, sizeof(name));
        snprintf(s->why, sizeof(s->why), "no epx_%s.so in %s (this build of "
                 "epx has no %s support, or EPX_MODULE_DIR is wrong)", name,
                 tried, name);
    }
    if (s->st != EPX_OK)
        EPX_LOG(EPX_LOG_DEBUG, "core", -1, "module %s: %s", s->name, s->why);
}

epx_status_t epx__module_load(const char *name, const void **ops)
{
    pthread_mutex_lock(&lock);
    struct slot *s = NULL;
    for (int i = 0; i < nslots && !s; i++)
        if (!strcmp(slots[i].name, name))
            s = &slots[i];
    if (!s && nslots < MAX_MODULES && strlen(name) < sizeof(s->name)) {
        s = &slots[nslots++];
        snprintf(s->name, sizeof(s->name), "%s", name);
        load(s);
    }
    epx_status_t st = s ? s->st : EPX_ERR_INVALID;
    const void *o = s ? s->ops : NULL;
    char why[sizeof(s->why)];
    snprintf(why, sizeof(why), "%s", s ? s->why : "unknown module");
    pthread_mutex_unlock(&lock);
    *ops = o;
    return st == EPX_OK ? EPX_OK : epx__error(st, "%s module: %s", name, why);
}

/* Run-time paths (paths.h).  The configured directories come from
 * epx-paths.h, which make writes from the Makefile's variables (so a new
 * --prefix rebuilds what uses them). */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/paths.h"
#include "epx-paths.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char self_dir[PATH_MAX];     /* the directory of this object */
static int in_build_tree;
static int moved;                   /* installed, not where configured */
/* A moved install: <libdir>/epx beside the library, or <prefix>/lib/epx
 * from <prefix>/bin for a program that holds libepx statically. */
static char reloc_modules[2][PATH_MAX + 16], reloc_systems[PATH_MAX + 32];

/* Same directory after resolving links ("" never matches). */
static int same_dir(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

static void locate(void)
{
    Dl_info info;
    char real[PATH_MAX], tree[PATH_MAX];
    if (!dladdr((void *)locate, &info) || !info.dli_fname ||
        !realpath(info.dli_fname, real))
        return;             /* unknown: the configured directories */
    char *slash = strrchr(real, '/');
    if (!slash)
        return;
    *slash = '\0';
    snprintf(self_dir, sizeof(self_dir), "%s", real);
    /* A program or library under the build tree (tests, the tools before
     * make install) is that tree's. */
    size_t n = realpath(EPX_BUILDDIR, tree) ? strlen(tree) : 0;
    in_build_tree = n && !strncmp(real, tree, n) &&
                    (real[n] == '/' || real[n] == '\0');
    if (in_build_tree || same_dir(self_dir, EPX_LIBDIR))
        return;
    moved = 1;
    snprintf(reloc_modules[0], sizeof(reloc_modules[0]), "%s/epx", self_dir);
    snprintf(reloc_modules[1], sizeof(reloc_modules[1]), "%s/../lib/epx",
             self_dir);
    snprintf(reloc_systems, sizeof(reloc_systems), "%s/../share/epx/systems",
             self_dir);
}

int epx__paths(int kind, const char **dirs, int max)
{
    pthread_once(&once, locate);
    int n = 0;
#define ADD(d) do { if (n < max) dirs[n++] = (d); } while (0)
    if (kind == EPX_PATH_MODULES) {
        if (in_build_tree)
            ADD(EPX_BUILDDIR "/src/module/.libs");
        if (moved) {
            ADD(reloc_modules[0]);
            ADD(reloc_modules[1]);
        }
        ADD(EPX_PKGLIBDIR);
    } else {
        if (in_build_tree)
            ADD(EPX_SRCDIR "/topology/systems");
        if (moved)
            ADD(reloc_systems);
        ADD(EPX_PKGDATADIR "/systems");
    }
#undef ADD
    return n;
}

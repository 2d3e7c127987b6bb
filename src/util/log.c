/* Leveled, per-subsystem logging to stderr; one write per line so lines of
 * many ranks do not interleave. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "util.h"

static int log_level = EPX_LOG_WARN; /* parsed once from EPX_LOG */
static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static char log_subsys[256];

static void log_init(void)
{
    static const char *names[] = { "error", "warn", "info", "debug", "trace" };
    const char *v = epx__cfg_str("EPX_LOG");
    int lvl = EPX_LOG_WARN;
    for (int i = 0; i < 5; i++)
        if (strcmp(v, names[i]) == 0)
            lvl = i;
    snprintf(log_subsys, sizeof(log_subsys), ",%s,",
             epx__cfg_str("EPX_LOG_SUBSYS"));
    log_level = lvl;
}

int epx__log_enabled(int level, const char *subsys)
{
    pthread_once(&log_once, log_init);  /* ranks may be threads */
    if (level > log_level)
        return 0;
    if (level <= EPX_LOG_WARN || strcmp(log_subsys, ",all,") == 0)
        return 1;
    char key[64];
    snprintf(key, sizeof(key), ",%s,", subsys);
    return strstr(log_subsys, key) != NULL;
}

void epx__vlog(int level, const char *subsys, int rank, const char *fmt,
               va_list ap)
{
    static const char *names[] = { "ERROR", "WARN", "INFO", "DEBUG", "TRACE" };
    char host[64] = "?", line[1024];
    gethostname(host, sizeof(host) - 1);
    int n = rank >= 0
        ? snprintf(line, sizeof(line), "[%s:%d r%d] %s %s: ", host,
                   (int)getpid(), rank, subsys, names[level])
        : snprintf(line, sizeof(line), "[%s:%d] %s %s: ", host,
                   (int)getpid(), subsys, names[level]);
    if (n > 0 && (size_t)n < sizeof(line))
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    if (n >= (int)sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

void epx__log(int level, const char *subsys, int rank, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    epx__vlog(level, subsys, rank, fmt, ap);
    va_end(ap);
}

double epx__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * util layer: status/last-error, logging, the EPX_* settings table, time.
 * Internal; every other layer may include it, it includes nothing of theirs.
 */
#ifndef EPX_UTIL_H
#define EPX_UTIL_H

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>
#include "epx.h"

/* A spinning waiter's pause: lets a sibling hyperthread (or the peer it
 * waits for) run. */
static inline void epx__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#if defined(__GNUC__)
#define EPX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define EPX_LIKELY(x) __builtin_expect(!!(x), 1)
#define EPX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define EPX_PRINTF(a, b)
#define EPX_LIKELY(x) (x)
#define EPX_UNLIKELY(x) (x)
#endif

/* Hot loops built twice where the ISA allows it (baseline and AVX2),
 * picked at load time: the binary stays portable, the loops get wide.
 * GCC only: clang (14 at least) names an external multi-versioned
 * function "f.ifunc", so calls from other files to "f" do not link. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    defined(__has_attribute)
#if __has_attribute(target_clones)
#define EPX_CLONES __attribute__((target_clones("avx2", "default")))
#define EPX_CLONES_X86 1         /* AVX2 code may be built, picked at run time */
#endif
#endif
#ifndef EPX_CLONES
#define EPX_CLONES
#endif

/* Record a detailed message for epx_last_error() and return `st`. */
epx_status_t epx__error(epx_status_t st, const char *fmt, ...) EPX_PRINTF(2, 3);
/* Same, appending ": strerror(errno)". */
epx_status_t epx__syserror(epx_status_t st, const char *fmt, ...) EPX_PRINTF(2, 3);
/* The same with a va_list and errno value (0: none); modules reach these
 * through their host table. */
epx_status_t epx__verror(epx_status_t st, int errnum, const char *fmt,
                         va_list ap);
void epx__error_clear(void);
/* A parameter struct's version: 1 to `current` (a larger one comes from a
 * newer header or is garbage).  `what` names the struct and its INIT. */
epx_status_t epx__check_version(const char *what, unsigned version,
                                unsigned current);

/* ---- logging: EPX_LOG=error|warn|info|debug|trace, EPX_LOG_SUBSYS=a,b */
enum { EPX_LOG_ERROR = 0, EPX_LOG_WARN, EPX_LOG_INFO, EPX_LOG_DEBUG,
       EPX_LOG_TRACE };
int epx__log_enabled(int level, const char *subsys);
/* `rank` < 0 when unknown.  Lines: "[host:pid r<rank>] subsys level: msg". */
void epx__log(int level, const char *subsys, int rank, const char *fmt, ...)
    EPX_PRINTF(4, 5);
void epx__vlog(int level, const char *subsys, int rank, const char *fmt,
               va_list ap);
#define EPX_LOG(level, subsys, rank, ...)                                      \
    do {                                                                       \
        if (epx__log_enabled((level), (subsys)))                               \
            epx__log((level), (subsys), (rank), __VA_ARGS__);                  \
    } while (0)

/* ---- settings: values come from the environment, else the table default */
/* Largest job: bounds what a rank's claim of EPX_NRANKS can make rank 0
 * allocate before anyone has joined. */
#define EPX_MAX_RANKS 65536
const char *epx__cfg_str(const char *name);   /* never NULL for a known name */
/* Every numeric setting parses and is in range, else EPX_ERR_INVALID naming
 * it. */
epx_status_t epx__cfg_check(void);
long epx__cfg_long(const char *name);
double epx__cfg_double(const char *name);

/* ---- time */
double epx__now(void);  /* seconds, CLOCK_MONOTONIC */

/* ---- bf16 (round to nearest even; NaN stays NaN) */
static inline float epx__bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t epx__f32_to_bf16(float f)
{
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40u); /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

#endif /* EPX_UTIL_H */

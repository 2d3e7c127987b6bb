/* Status strings, the per-thread last-error message, version. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "util.h"

#define EPX_ERRMSG_LEN 512
static _Thread_local char errmsg[EPX_ERRMSG_LEN];

const char *epx_status_str(epx_status_t st)
{
    switch (st) {
    case EPX_OK: return "EPX_OK: success";
    case EPX_ERR_INVALID: return "EPX_ERR_INVALID: invalid argument";
    case EPX_ERR_NOMEM: return "EPX_ERR_NOMEM: out of memory";
    case EPX_ERR_SYSTEM: return "EPX_ERR_SYSTEM: system call failed";
    case EPX_ERR_TIMEOUT: return "EPX_ERR_TIMEOUT: timed out waiting for a peer";
    case EPX_ERR_AUTH: return "EPX_ERR_AUTH: job key rejected";
    case EPX_ERR_MISMATCH: return "EPX_ERR_MISMATCH: ranks disagree";
    case EPX_ERR_PEER: return "EPX_ERR_PEER: another rank failed";
    case EPX_ERR_STATE: return "EPX_ERR_STATE: call out of order";
    case EPX_ERR_UNSUPPORTED: return "EPX_ERR_UNSUPPORTED: not supported";
    case EPX_ERR_BOOTSTRAP: return "EPX_ERR_BOOTSTRAP: bootstrap failed";
    case EPX_ERR_RANGE: return "EPX_ERR_RANGE: value exceeds a limit";
    }
    return "EPX_ERR_?: unknown status";
}

const char *epx_last_error(void) { return errmsg; }

void epx__error_clear(void) { errmsg[0] = '\0'; }

epx_status_t epx__verror(epx_status_t st, int errnum, const char *fmt,
                         va_list ap)
{
    int n = vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
    if (errnum && n >= 0 && (size_t)n < sizeof(errmsg))
        snprintf(errmsg + n, sizeof(errmsg) - (size_t)n, ": %s",
                 strerror(errnum));
    EPX_LOG(EPX_LOG_DEBUG, "core", -1, "%s (%s)", errmsg, epx_status_str(st));
    return st;
}

epx_status_t epx__error(epx_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    epx__verror(st, 0, fmt, ap);
    va_end(ap);
    return st;
}

epx_status_t epx__syserror(epx_status_t st, const char *fmt, ...)
{
    int errnum = errno;
    va_list ap;
    va_start(ap, fmt);
    epx__verror(st, errnum, fmt, ap);
    va_end(ap);
    return st;
}

void epx_version(int *major, int *minor, int *patch)
{
    if (major) *major = EPX_VERSION_MAJOR;
    if (minor) *minor = EPX_VERSION_MINOR;
    if (patch) *patch = EPX_VERSION_PATCH;
}

#define EPX_STR_(x) #x
#define EPX_STR(x) EPX_STR_(x)
const char *epx_version_string(void)
{
    return EPX_STR(EPX_VERSION_MAJOR) "." EPX_STR(EPX_VERSION_MINOR) "."
        EPX_STR(EPX_VERSION_PATCH);
}

size_t epx_dtype_size(epx_dtype_t dt)
{
    switch (dt) {
    case EPX_DTYPE_BF16: return 2;
    case EPX_DTYPE_FP32: return 4;
    case EPX_DTYPE_INT32: return 4;
    case EPX_DTYPE_INT64:
    case EPX_DTYPE_FP64: return 8;
    case EPX_DTYPE_FP8_E4M3:
    case EPX_DTYPE_UE8M0:
    case EPX_DTYPE_FP4_E2M1X2: return 1;
    }
    return 0;
}

epx_status_t epx__check_version(const char *what, unsigned version,
                                unsigned current)
{
    if (version >= 1 && version <= current)
        return EPX_OK;
    return epx__error(EPX_ERR_INVALID,
                      "%s: version %u unknown to this library (1 to %u): set "
                      "it up with its _INIT macro", what, version, current);
}

/* Output checks shared by the tools (tool_io.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "util/tool_io.h"

int tool_stdout_close(const char *prog)
{
    errno = 0;
    int bad = fflush(stdout) != 0 || ferror(stdout), e = errno;
    if (fclose(stdout) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad)
        fprintf(stderr, "%s: cannot write stdout: %s\n", prog,
                e ? strerror(e) : "a write failed");
    return bad;
}

int tool_writable(const char *prog, const char *opt, const char *file)
{
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof(dir), "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else
        slash[slash == dir] = '\0';   /* "/x": the root */
    const char *why = NULL;
    if (stat(dir, &st) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(st.st_mode))
        why = "not a directory";
    else if (access(dir, W_OK | X_OK) != 0)
        why = strerror(errno);
    if (why) {
        fprintf(stderr, "%s: %s %s: cannot write in %s: %s\n", prog, opt,
                file, dir, why);
        return -1;
    }
    if (stat(file, &st) == 0 &&
        (!S_ISREG(st.st_mode) || access(file, W_OK) != 0)) {
        fprintf(stderr, "%s: %s %s: %s\n", prog, opt, file,
                S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
        return -1;
    }
    return 0;
}

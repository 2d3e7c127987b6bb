/* The fuzzed bytes as a file the parser under test opens by path (an
 * in-memory file: no disk traffic per input). */
#ifndef EPX_FUZZ_INPUT_H
#define EPX_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Path of a file holding data[0, size); "" when the file cannot be made. */
static inline const char *fuzz_file(const uint8_t *data, size_t size,
                                    const char *suffix)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("epx-fuzz", MFD_CLOEXEC);
        if (fd < 0)
            abort();
        /* A suffix the loader recognises (".json" means a path). */
        snprintf(path, sizeof(path), "/proc/self/fd/%d%s", fd, suffix);
    }
    if (ftruncate(fd, 0) != 0 ||
        (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    return path;
}

#endif

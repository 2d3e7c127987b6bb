/*
 * libFuzzer: epx-bench's trace inputs.  First byte even: a --load-trace
 * file (bench/load_trace.c) of L = 1 + byte 1 % 4 layers and E = 1 +
 * byte 2 % 16 experts, every load read back; odd: a .npy array of a
 * --trace directory (bench/npy.c), every element read back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "bench/bench.h"
#include "bench/npy.h"
#include "fuzz_input.h"

static volatile double sink;

/* The parsers write a line per bad input to stderr: point the stream at
 * /dev/null (glibc's stderr is assignable; libFuzzer keeps the stream it
 * saw at start for its own report, which freopen would silence too). */
static void quiet_stderr(void)
{
    static int done;
    FILE *null;
    if (!done && (null = fopen("/dev/null", "w"))) {
        stderr = null;
        done = 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    quiet_stderr();
    if (!(data[0] & 1)) {
        int L = 1 + data[1] % 4, E = 1 + data[2] % 16, steps = 0;
        double *load = NULL;
        const char *path = fuzz_file(data + 3, size - 3, "");
        if (bench_load_trace_read(path, L, E, &load, &steps) == 0) {
            if (steps < 1)
                abort();
            double s = 0;
            for (size_t i = 0; i < (size_t)steps * (size_t)L * (size_t)E; i++) {
                if (!(load[i] >= 0))
                    abort();   /* accepted a load the parser must refuse */
                s += load[i];
            }
            sink = s;
            free(load);
        }
        return 0;
    }
    char err[512];
    bench_npy_t a;
    const char *path = fuzz_file(data + 1, size - 1, "");
    if (bench_npy_map(path, &a, err, sizeof(err)) != 0)
        return 0;
    double s = 0;
    for (int64_t i = 0; a.shape[1] > 0 && i < a.shape[0]; i++)
        for (int64_t j = 0; j < a.shape[1]; j++)
            s += a.type == BENCH_NPY_F4 ? bench_npy_f32(&a, i, j)
                                        : (double)bench_npy_int(&a, i, j);
    sink = s;
    bench_npy_unmap(&a);
    return 0;
}

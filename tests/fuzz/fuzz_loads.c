/*
 * libFuzzer: epx-balance's inputs (src/balance/tool_input.c): loads as
 * .npy or JSON, a placement as JSON.  The first byte picks the reader.
 */
#include <stdint.h>
#include <stdlib.h>
#include "src/balance/tool.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    if (size < 1)
        return 0;
    const char *path = fuzz_file(data + 1, size - 1, "");
    if (data[0] & 1) {
        int32_t *p2l = NULL;
        int rows, cols;
        if (tool_read_phy2log(path, &p2l, &rows, &cols, err, sizeof(err)) == 0)
            free(p2l);
    } else {
        tool_matrix_t m;
        if (tool_read_loads(path, &m, err, sizeof(err)) == 0)
            free(m.v);
    }
    return 0;
}

/*
 * epx-balance: the tool's input readers (tool_input.c), shared with its
 * command line and output (tool.c).
 */
#ifndef EPX_BALANCE_TOOL_H
#define EPX_BALANCE_TOOL_H

#include <stddef.h>
#include <stdint.h>

/* A 2-D matrix, row-major. */
typedef struct tool_matrix {
    int rows, cols;
    double *v;            /* rows * cols, malloc'd */
} tool_matrix_t;

/* Loads [layers][experts] from a JSON array of arrays of numbers, or from
 * a .npy file (float32/float64/int32/int64, 2-D, C order), chosen by the
 * file's first bytes.  Every value must be finite and >= 0.  On failure
 * returns -1 and writes a message naming the file and the problem to err. */
int tool_read_loads(const char *path, tool_matrix_t *m, char *err,
                    size_t errlen);

/* A placement [layers][slots] from a JSON array of arrays of integers.
 * Same error convention. */
int tool_read_phy2log(const char *path, int32_t **phy2log, int *rows,
                      int *cols, char *err, size_t errlen);

#endif

/*
 * A small reader/writer for NumPy .npy files: format 1.0 (reads 2.0 too),
 * little-endian '<i4', '<i8', '<f4', C order, 1-D or 2-D.  Errors name the
 * file.  Arrays are read by mapping the file, so peers can look up rows of
 * another rank's file without copying it.
 */
#ifndef EPX_BENCH_NPY_H
#define EPX_BENCH_NPY_H

#include <stddef.h>
#include <stdint.h>

/* U1 (bytes: quantized rows and scales) is written, not read. */
typedef enum { BENCH_NPY_I4 = 0, BENCH_NPY_I8, BENCH_NPY_F4, BENCH_NPY_U1 }
    bench_npy_type_t;

typedef struct bench_npy {
    bench_npy_type_t type;
    size_t esize;
    int ndim;
    int64_t shape[2];          /* shape[1] = 1 for a 1-D array */
    const unsigned char *data; /* may be unaligned: read with memcpy */
    size_t nbytes;
    void *map;
    size_t maplen;
} bench_npy_t;

/* 0 on success; -2 if the file does not exist; -1 on any other error
 * (message in err, naming the file). */
int bench_npy_map(const char *path, bench_npy_t *a, char *err, size_t errlen);
void bench_npy_unmap(bench_npy_t *a);
/* Element (i, j) as int64 / float (type-checked by the caller). */
int64_t bench_npy_int(const bench_npy_t *a, int64_t i, int64_t j);
float bench_npy_f32(const bench_npy_t *a, int64_t i, int64_t j);

int bench_npy_write(const char *path, bench_npy_type_t type, int ndim,
                    const int64_t *shape, const void *data, char *err,
                    size_t errlen);
const char *bench_npy_descr(bench_npy_type_t type);

#endif /* EPX_BENCH_NPY_H */

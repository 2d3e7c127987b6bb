/*
 * epx-balance input: loads as JSON or .npy, a current placement as JSON.
 * Every message names the file and what is wrong with it, so that a user
 * with several inputs can tell which one to fix.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "src/balance/tool.h"

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------------ JSON */

/* Checks that root is a non-empty array of equally long, non-empty arrays
 * of numbers; sets the shape. */
static int json_shape(const char *path, json_t *root, int *rows, int *cols,
                      char *err, size_t errlen)
{
    if (!json_is_array(root) || json_array_size(root) == 0)
        return fail(err, errlen, "%s: expected a non-empty array of arrays "
                    "([layers][...])", path);
    size_t n = json_array_size(root), w = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(root, i);
        if (!json_is_array(row))
            return fail(err, errlen, "%s: [%zu] is not an array", path, i);
        size_t rw = json_array_size(row);
        if (i == 0)
            w = rw;
        if (rw == 0)
            return fail(err, errlen, "%s: [%zu] is empty", path, i);
        if (rw != w)
            return fail(err, errlen, "%s: ragged: [%zu] has %zu entries, [0] "
                        "has %zu", path, i, rw, w);
        for (size_t j = 0; j < rw; j++)
            if (!json_is_number(json_array_get(row, j)))
                return fail(err, errlen, "%s: [%zu][%zu] is not a number",
                            path, i, j);
    }
    if (n > INT32_MAX || w > INT32_MAX || n * w > (size_t)INT32_MAX)
        return fail(err, errlen, "%s: %zu x %zu entries: too many", path, n,
                    w);
    *rows = (int)n;
    *cols = (int)w;
    return 0;
}

/* A file we can read, or a message saying why not (jansson's own for a
 * missing file or a directory are about its parser). */
static int readable(const char *path, char *err, size_t errlen)
{
    struct stat st;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errlen, "%s: %s", path, strerror(errno));
    int isdir = fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode);
    fclose(f);
    return isdir ? fail(err, errlen, "%s: is a directory", path) : 0;
}

static json_t *json_open(const char *path, char *err, size_t errlen)
{
    json_error_t je;
    if (readable(path, err, errlen))
        return NULL;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        fail(err, errlen, "%s: %s (line %d, column %d)", path, je.text,
             je.line, je.column);
    return root;
}

static int read_loads_json(const char *path, tool_matrix_t *m, char *err,
                           size_t errlen)
{
    json_t *root = json_open(path, err, errlen);
    if (!root)
        return -1;
    int rc = json_shape(path, root, &m->rows, &m->cols, err, errlen);
    if (rc == 0) {
        m->v = malloc((size_t)m->rows * m->cols * sizeof(double));
        if (!m->v)
            rc = fail(err, errlen, "%s: out of memory", path);
    }
    for (int i = 0; rc == 0 && i < m->rows; i++)
        for (int j = 0; j < m->cols; j++)
            m->v[(size_t)i * m->cols + j] =
                json_number_value(json_array_get(json_array_get(root, i), j));
    json_decref(root);
    return rc;
}

int tool_read_phy2log(const char *path, int32_t **phy2log, int *rows,
                      int *cols, char *err, size_t errlen)
{
    json_t *root = json_open(path, err, errlen);
    if (!root)
        return -1;
    int rc = json_shape(path, root, rows, cols, err, errlen);
    int32_t *p = NULL;
    if (rc == 0 && !(p = malloc((size_t)*rows * *cols * sizeof(int32_t))))
        rc = fail(err, errlen, "%s: out of memory", path);
    for (int i = 0; rc == 0 && i < *rows; i++)
        for (int j = 0; rc == 0 && j < *cols; j++) {
            json_t *x = json_array_get(json_array_get(root, i), j);
            if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                json_integer_value(x) > INT32_MAX)
                rc = fail(err, errlen, "%s: [%d][%d] is not an expert index "
                          "(an integer >= 0)", path, i, j);
            else
                p[(size_t)i * *cols + j] = (int32_t)json_integer_value(x);
        }
    json_decref(root);
    if (rc)
        free(p);
    else
        *phy2log = p;
    return rc;
}

/* ------------------------------------------------------------------- npy */

/* The value of `key` in the header dict, as the text up to the next ',' or
 * '}' outside parentheses (the format is a Python literal written by numpy,
 * so this small parser is enough for what numpy.save writes). */
static int npy_field(const char *hdr, const char *key, char *val, size_t vlen)
{
    char pat[32];
    snprintf(pat, sizeof(pat), "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ' || *p == ':')
        p++;
    size_t n = 0;
    int depth = 0;
    for (; *p && n + 1 < vlen; p++) {
        if (*p == '(')
            depth++;
        else if (*p == ')')
            depth--;
        else if ((*p == ',' || *p == '}') && depth == 0)
            break;
        val[n++] = *p;
        if (depth < 0)
            return -1;
    }
    val[n] = '\0';
    return 0;
}

/* The shape tuple "(2, 12)" as written by numpy ("(12,)" for 1-D, "()"
 * for a scalar): the number of sizes (at most max kept), or -1 when it is
 * not a tuple of non-negative integers. */
static int npy_shape(const char *s, long *dims, int max)
{
    int n = 0;
    while (*s == ' ')
        s++;
    if (*s++ != '(')
        return -1;
    for (;;) {
        while (*s == ' ')
            s++;
        if (*s == ')')
            break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || *s == '-' || *s == '+')
            return -1;
        if (n < max)
            dims[n] = v;
        n++;
        s = end;
        while (*s == ' ')
            s++;
        if (*s == ',')
            s++;
        else if (*s != ')')
            return -1;
    }
    for (s++; *s == ' '; s++)
        ;
    return *s ? -1 : n;
}

static int read_loads_npy(const char *path, FILE *f, tool_matrix_t *m,
                          char *err, size_t errlen)
{
    unsigned char pre[10];
    if (fread(pre, 1, 8, f) != 8)
        return fail(err, errlen, "%s: truncated .npy preamble", path);
    int major = pre[6];
    size_t hlen;
    if (major == 1) {
        if (fread(pre + 8, 1, 2, f) != 2)
            return fail(err, errlen, "%s: truncated .npy preamble", path);
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else if (major == 2 || major == 3) {
        unsigned char b[4];
        if (fread(b, 1, 4, f) != 4)
            return fail(err, errlen, "%s: truncated .npy preamble", path);
        hlen = b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16 |
               (size_t)b[3] << 24;
    } else {
        return fail(err, errlen, "%s: .npy format version %d.%d not "
                    "supported (1, 2 or 3)", path, major, pre[7]);
    }
    if (hlen > 65536)
        return fail(err, errlen, "%s: .npy header of %zu bytes: too long",
                    path, hlen);
    char *hdr = malloc(hlen + 1);
    if (!hdr)
        return fail(err, errlen, "%s: out of memory", path);
    if (fread(hdr, 1, hlen, f) != hlen) {
        free(hdr);
        return fail(err, errlen, "%s: truncated .npy header", path);
    }
    hdr[hlen] = '\0';

    char descr[32], order[32], shape[128];
    int rc = 0;
    if (npy_field(hdr, "descr", descr, sizeof(descr)) ||
        npy_field(hdr, "fortran_order", order, sizeof(order)) ||
        npy_field(hdr, "shape", shape, sizeof(shape)))
        rc = fail(err, errlen, "%s: .npy header lacks descr, fortran_order "
                  "or shape: %s", path, hdr);
    free(hdr);
    if (rc)
        return rc;

    /* dtype: little-endian (or single-byte-order-free) f4, f8, i4, i8. */
    static const struct { const char *d; int size, is_float; } types[] = {
        { "'<f4'", 4, 1 }, { "'<f8'", 8, 1 }, { "'<i4'", 4, 0 },
        { "'<i8'", 8, 0 },
    };
    int t = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(descr, types[i].d) == 0)
            t = i;
    if (t < 0)
        return fail(err, errlen, "%s: .npy dtype %s not supported (float32, "
                    "float64, int32 or int64, little-endian)", path, descr);
    if (strcmp(order, "False") != 0)
        return fail(err, errlen, "%s: .npy array in Fortran order; save it "
                    "in C order", path);
    long dims[8];
    int nd = npy_shape(shape, dims, 8);
    if (nd < 0)
        return fail(err, errlen, "%s: .npy shape %s is not a tuple of sizes",
                    path, shape);
    if (nd != 2)
        return fail(err, errlen, "%s: .npy shape %s is %d-D, want 2-D "
                    "[layers][experts]", path, shape, nd);
    long r = dims[0], c = dims[1];
    if (r < 1 || c < 1 || r > INT32_MAX || c > INT32_MAX ||
        r * c > INT32_MAX)
        return fail(err, errlen, "%s: .npy shape %s: empty or too large",
                    path, shape);

    size_t n = (size_t)r * c, sz = types[t].size;
    /* The header is outside input: check the data is there before
     * allocating for the shape it claims. */
    struct stat stt;
    long at = ftell(f);
    if (fstat(fileno(f), &stt) == 0 && S_ISREG(stt.st_mode) && at >= 0 &&
        (uint64_t)stt.st_size - (uint64_t)at != (uint64_t)n * sz) {
        uint64_t have = ((uint64_t)stt.st_size - (uint64_t)at) / sz;
        return fail(err, errlen, "%s: .npy data holds %s %llu values for "
                    "shape (%ld, %ld)", path, have < n ? "only" : "more than",
                    (unsigned long long)have, r, c);
    }
    unsigned char *raw = malloc(n * sz);
    m->v = malloc(n * sizeof(double));
    if (!raw || !m->v) {
        free(raw);
        free(m->v);
        m->v = NULL;
        return fail(err, errlen, "%s: out of memory", path);
    }
    size_t got = fread(raw, sz, n, f);
    if (got != n || fgetc(f) != EOF) {
        free(raw);
        free(m->v);
        m->v = NULL;
        return fail(err, errlen, "%s: .npy data holds %s %zu values for "
                    "shape (%ld, %ld)", path, got != n ? "only" : "more than",
                    got, r, c);
    }
    for (size_t i = 0; i < n; i++) {
        /* Assemble little-endian bytes, so the host order does not matter. */
        uint64_t u = 0;
        for (size_t b = 0; b < sz; b++)
            u |= (uint64_t)raw[i * sz + b] << (8 * b);
        double x;
        if (types[t].is_float && sz == 4) {
            uint32_t u32 = (uint32_t)u;
            float fl;
            memcpy(&fl, &u32, 4);
            x = fl;
        } else if (types[t].is_float) {
            memcpy(&x, &u, 8);
        } else if (sz == 4) {
            x = (int32_t)(uint32_t)u;
        } else {
            x = (double)(int64_t)u;
        }
        m->v[i] = x;
    }
    free(raw);
    m->rows = (int)r;
    m->cols = (int)c;
    return 0;
}

/* ---------------------------------------------------------------- loads */

int tool_read_loads(const char *path, tool_matrix_t *m, char *err,
                    size_t errlen)
{
    m->rows = m->cols = 0;
    m->v = NULL;
    if (readable(path, err, errlen))
        return -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errlen, "%s: %s", path, strerror(errno));
    unsigned char magic[6];
    size_t got = fread(magic, 1, 6, f);
    int rc;
    if (got == 6 && memcmp(magic, "\x93NUMPY", 6) == 0) {
        rewind(f);
        rc = read_loads_npy(path, f, m, err, errlen);
        fclose(f);
    } else {
        fclose(f);
        rc = read_loads_json(path, m, err, errlen);
    }
    if (rc)
        return rc;
    for (int i = 0; i < m->rows; i++)
        for (int j = 0; j < m->cols; j++) {
            double x = m->v[(size_t)i * m->cols + j];
            if (!isfinite(x) || x < 0) {
                free(m->v);
                m->v = NULL;
                return fail(err, errlen, "%s: load [%d][%d] = %g: loads must "
                            "be finite and >= 0", path, i, j, x);
            }
        }
    return 0;
}

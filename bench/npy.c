/* .npy read (by mapping) and write; see npy.h for what is supported. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "npy.h"

static const char npy_magic[6] = { (char)0x93, 'N', 'U', 'M', 'P', 'Y' };
static const char *const npy_descrs[] = { "<i4", "<i8", "<f4", "|u1" };
static const size_t npy_esizes[] = { 4, 8, 4, 1 };

const char *bench_npy_descr(bench_npy_type_t type)
{
    return npy_descrs[type];
}

/* Value text after "'key':" in the header dict, or NULL. */
static const char *npy_find_key(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof(pat), "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

static int npy_parse_header(const char *path, const char *hdr, bench_npy_t *a,
                            char *err, size_t errlen)
{
    const char *d = npy_find_key(hdr, "descr");
    if (!d || (*d != '\'' && *d != '"')) {
        snprintf(err, errlen, "%s: header has no 'descr'", path);
        return -1;
    }
    char descr[16] = "";
    const char *end = strchr(d + 1, *d);
    if (!end || (size_t)(end - d - 1) >= sizeof(descr)) {
        snprintf(err, errlen, "%s: malformed 'descr'", path);
        return -1;
    }
    memcpy(descr, d + 1, (size_t)(end - d - 1));
    int found = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(descr, npy_descrs[i]) == 0)
            found = i;
    if (found < 0) {
        snprintf(err, errlen,
                 "%s: dtype '%s' not supported (want '<i4', '<i8' or '<f4')",
                 path, descr);
        return -1;
    }
    a->type = (bench_npy_type_t)found;
    a->esize = npy_esizes[found];

    const char *f = npy_find_key(hdr, "fortran_order");
    if (!f || strncmp(f, "False", 5) != 0) {
        snprintf(err, errlen, "%s: only C-order arrays are supported "
                 "(fortran_order must be False)", path);
        return -1;
    }

    const char *s = npy_find_key(hdr, "shape");
    if (!s || *s != '(') {
        snprintf(err, errlen, "%s: header has no 'shape'", path);
        return -1;
    }
    s++;
    a->ndim = 0;
    a->shape[0] = a->shape[1] = 1;
    for (;;) {
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ')')
            break;
        char *e;
        errno = 0;
        long long v = strtoll(s, &e, 10);
        if (e == s || errno || v < 0) {
            snprintf(err, errlen, "%s: malformed 'shape'", path);
            return -1;
        }
        /* Beyond any trace (a dimension with none beside it still costs
         * a loop per row to whoever walks it). */
        if (v > INT32_MAX) {
            snprintf(err, errlen, "%s: a dimension of %lld is above 2^31 - 1",
                     path, v);
            return -1;
        }
        if (a->ndim == 2) {
            snprintf(err, errlen, "%s: more than 2 dimensions", path);
            return -1;
        }
        a->shape[a->ndim++] = v;
        s = e;
    }
    if (a->ndim == 0) {
        snprintf(err, errlen, "%s: 0-d arrays are not supported", path);
        return -1;
    }
    return 0;
}

int bench_npy_map(const char *path, bench_npy_t *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? -2 : -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    if (len < 10) {
        snprintf(err, errlen, "%s: too short for a .npy file", path);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    const unsigned char *p = map;
    size_t hlen, hoff;
    if (memcmp(p, npy_magic, 6) != 0) {
        snprintf(err, errlen, "%s: not a .npy file (bad magic)", path);
        goto fail_unmap;
    }
    if (p[6] == 1) {
        hlen = (size_t)p[8] | (size_t)p[9] << 8;
        hoff = 10;
    } else if (p[6] == 2 || p[6] == 3) {
        if (len < 12) {
            snprintf(err, errlen, "%s: truncated header", path);
            goto fail_unmap;
        }
        hlen = (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 |
               (size_t)p[11] << 24;
        hoff = 12;
    } else {
        snprintf(err, errlen, "%s: .npy format version %d.%d not supported",
                 path, p[6], p[7]);
        goto fail_unmap;
    }
    if (hoff + hlen > len) {
        snprintf(err, errlen, "%s: truncated header", path);
        goto fail_unmap;
    }
    char *hdr = malloc(hlen + 1);
    if (!hdr) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail_unmap;
    }
    memcpy(hdr, p + hoff, hlen);
    hdr[hlen] = '\0';
    int rc = npy_parse_header(path, hdr, a, err, errlen);
    free(hdr);
    if (rc != 0)
        goto fail_unmap;
    if (a->shape[1] != 0 &&
        (uint64_t)a->shape[0] > (uint64_t)len / (uint64_t)a->shape[1]) {
        snprintf(err, errlen, "%s: shape larger than the file", path);
        goto fail_unmap;
    }
    a->nbytes = (size_t)a->shape[0] * (size_t)a->shape[1] * a->esize;
    if (len - hoff - hlen < a->nbytes) {
        snprintf(err, errlen, "%s: %zu data bytes, shape needs %zu", path,
                 len - hoff - hlen, a->nbytes);
        goto fail_unmap;
    }
    a->data = p + hoff + hlen;
    a->map = map;
    a->maplen = len;
    return 0;

fail_unmap:
    munmap(map, len);
    memset(a, 0, sizeof(*a));
    return -1;
}

void bench_npy_unmap(bench_npy_t *a)
{
    if (a && a->map)
        munmap(a->map, a->maplen);
    if (a)
        memset(a, 0, sizeof(*a));
}

int64_t bench_npy_int(const bench_npy_t *a, int64_t i, int64_t j)
{
    const unsigned char *p = a->data + ((size_t)i * (size_t)a->shape[1] +
                                        (size_t)j) * a->esize;
    if (a->type == BENCH_NPY_I4) {
        int32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

float bench_npy_f32(const bench_npy_t *a, int64_t i, int64_t j)
{
    float v;
    memcpy(&v, a->data + ((size_t)i * (size_t)a->shape[1] + (size_t)j) * 4,
           4);
    return v;
}

int bench_npy_write(const char *path, bench_npy_type_t type, int ndim,
                    const int64_t *shape, const void *data, char *err,
                    size_t errlen)
{
    char dict[256];
    int n;
    if (ndim == 1)
        n = snprintf(dict, sizeof(dict),
                     "{'descr': '%s', 'fortran_order': False, "
                     "'shape': (%lld,), }", npy_descrs[type],
                     (long long)shape[0]);
    else
        n = snprintf(dict, sizeof(dict),
                     "{'descr': '%s', 'fortran_order': False, "
                     "'shape': (%lld, %lld), }", npy_descrs[type],
                     (long long)shape[0], (long long)shape[1]);
    /* magic(6) + version(2) + len(2) + dict + pad + '\n', multiple of 64 */
    size_t total = ((size_t)10 + (size_t)n + 1 + 63) / 64 * 64;
    size_t hlen = total - 10;
    unsigned char head[320];
    memcpy(head, npy_magic, 6);
    head[6] = 1;
    head[7] = 0;
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)n);
    memset(head + 10 + n, ' ', hlen - (size_t)n - 1);
    head[total - 1] = '\n';

    size_t nbytes = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1) *
                    npy_esizes[type];
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(head, 1, total, f) == total &&
             (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

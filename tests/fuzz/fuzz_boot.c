/*
 * libFuzzer: the bootstrap hello as rank 0 judges it
 * (src/core/bootstrap_tcp.c): any bytes, against a fixed challenge and
 * key.  A hello the fuzzer could get admitted without the key's MAC would
 * be a forgery: that aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include "core/bootstrap.h"

static const char key[] = "fuzz-job-key";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t nonce[32];
    int fds[4] = { 0, -1, 3, -1 };   /* rank 2 taken */
    memset(nonce, 0x5a, sizeof(nonce));
    int r = epx__boot_judge_hello(nonce, data, size, key, 4, fds);
    if (r == -1)
        return 0;
    /* Admitted: it must carry the key's MAC over this challenge, for a
     * free rank of this job (layout: magic, rank, nranks, nonce, mac). */
    int32_t rank, nranks;
    memcpy(&rank, data + 4, 4);
    memcpy(&nranks, data + 8, 4);
    uint8_t msg[64 + 8], mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, strlen(key));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)"epx-boot-hello",
                                  15);
    memcpy(msg, nonce, 32);
    memcpy(msg + 32, data + 12, 32);
    memcpy(msg + 64, &rank, 4);
    memcpy(msg + 68, &nranks, 4);
    crypto_auth_hmacsha256_update(&st, msg, sizeof(msg));
    crypto_auth_hmacsha256_final(&st, mac);
    if (r != rank || nranks != 4 || rank < 1 || rank > 3 || rank == 2 ||
        memcmp(mac, data + 44, sizeof(mac)) != 0)
        abort();
    return 0;
}

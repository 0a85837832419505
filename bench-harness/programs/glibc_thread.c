/* glibc-thread: the per-thread loop of glibc's bench-malloc-thread. Each
 * thread keeps a working set of slots and replaces a random one per step
 * with a block of a random size, small sizes far more likely than large
 * (a power-law over 8 B .. 32 KiB), touching each block.
 *
 * usage: glibc_thread THREADS STEPS SLOTS */
#include "bench.h"

static long steps, nslots;
static uint64_t sums[256];

static size_t pick_size(rng_t *r) {
    /* exponent 3..15, weighted towards small: min of two draws. */
    unsigned a = (unsigned)rng_range(r, 3, 15), b = (unsigned)rng_range(r, 3, 15);
    unsigned e = a < b ? a : b;
    return ((size_t)1 << e) + rng_range(r, 0, ((size_t)1 << e) - 1);
}

static void *work(void *arg) {
    intptr_t id = (intptr_t)arg;
    rng_t r;
    rng_seed(&r, (uint64_t)id + 7);
    void **slots = calloc((size_t)nslots, sizeof(void *));
    uint64_t sum = 0;
    for (long i = 0; i < steps; i++) {
        long k = (long)(rng_next(&r) % (uint64_t)nslots);
        if (slots[k]) {
            sum += *(unsigned char *)slots[k];
            free(slots[k]);
        }
        size_t n = pick_size(&r);
        unsigned char *p = malloc(n);
        if (!p) { fprintf(stderr, "glibc_thread: out of memory\n"); exit(3); }
        touch(p, n, (unsigned char)i);
        slots[k] = p;
    }
    for (long k = 0; k < nslots; k++) free(slots[k]);
    free(slots);
    sums[id % 256] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 2);
    steps = arg_or(argc, argv, 2, 3000000);
    nslots = arg_or(argc, argv, 3, 1024);
    run_threads(threads, work, NULL);
    uint64_t sum = 0;
    for (int i = 0; i < 256; i++) sum += sums[i];
    printf("glibc_thread: %d threads, checksum %llu\n", threads, (unsigned long long)sum);
    return 0;
}

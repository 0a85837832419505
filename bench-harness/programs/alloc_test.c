/* alloc-test: each thread keeps a ring of live blocks and replaces the
 * oldest one per step, with sizes drawn from a skewed distribution (most
 * 16-128 B, some up to 4 KiB, a few up to 64 KiB): long-lived and
 * short-lived objects mixed, as in an application's steady state.
 *
 * usage: alloc_test THREADS STEPS RING */
#include "bench.h"

static long steps, ring;

static size_t pick_size(rng_t *r) {
    uint64_t x = rng_next(r) % 1000;
    if (x < 800) return rng_range(r, 16, 128);
    if (x < 990) return rng_range(r, 129, 4096);
    return rng_range(r, 4097, 64 << 10);
}

static void *work(void *arg) {
    rng_t r;
    rng_seed(&r, (uint64_t)(intptr_t)arg + 99);
    void **live = calloc((size_t)ring, sizeof(void *));
    uint64_t sum = 0;
    for (long i = 0; i < steps; i++) {
        long k = i % ring;
        if (live[k]) {
            sum += *(unsigned char *)live[k];
            free(live[k]);
        }
        size_t n = pick_size(&r);
        unsigned char *p = malloc(n);
        if (!p) { fprintf(stderr, "alloc_test: out of memory\n"); exit(3); }
        touch(p, n, (unsigned char)i);
        live[k] = p;
    }
    for (long k = 0; k < ring; k++) free(live[k]);
    free(live);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 1);
    steps = arg_or(argc, argv, 2, 5000000);
    ring = arg_or(argc, argv, 3, 10000);
    run_threads(threads, work, NULL);
    printf("alloc_test: %d threads\n", threads);
    return 0;
}

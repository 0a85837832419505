/* mstress: random sizes and lifetimes across threads, with thread churn
 * (after mimalloc's test-stress). Rounds of short-lived workers; each
 * keeps a local array of blocks (mostly small, now and then up to 1 MiB),
 * frees and replaces random ones, and swaps blocks with a shared transfer
 * array, so blocks are freed by threads that did not allocate them and
 * outlive the threads that did.
 *
 * usage: mstress THREADS ROUNDS STEPS */
#include "bench.h"

#define TRANSFER 1000
static void *_Atomic transfer[TRANSFER];
static long steps;

static size_t pick_size(rng_t *r) {
    uint64_t x = rng_next(r) % 1000;
    if (x == 0) return rng_range(r, 64 << 10, 1 << 20);  /* 0.1%: big */
    if (x < 50) return rng_range(r, 1024, 16 << 10);     /* 5%: medium */
    return rng_range(r, 8, 256);                          /* small */
}

static unsigned char *alloc_block(rng_t *r) {
    size_t n = pick_size(r);
    unsigned char *p = malloc(n);
    if (!p) { fprintf(stderr, "mstress: out of memory\n"); exit(3); }
    memset(p, (int)(n & 0xff), n < 64 ? n : 64);
    return p;
}

static void *work(void *arg) {
    rng_t r;
    rng_seed(&r, (uint64_t)(intptr_t)arg * 31 + 1);
    long cap = 500, n = 0;
    unsigned char **local = xmalloc(sizeof(void *) * (size_t)cap);
    for (long i = 0; i < steps; i++) {
        uint64_t what = rng_next(&r) % 100;
        if (what < 50 || n == 0) {
            if (n == cap) {
                free(local[--n]);
            }
            local[n++] = alloc_block(&r);
        } else if (what < 90) {
            long k = (long)(rng_next(&r) % (uint64_t)n);
            free(local[k]);
            local[k] = local[--n];
        } else {
            /* Swap one of ours with a shared slot: whoever takes it frees it. */
            long k = (long)(rng_next(&r) % (uint64_t)n);
            long t = (long)(rng_next(&r) % TRANSFER);
            void *mine = local[k];
            void *theirs = __atomic_exchange_n(&transfer[t], mine, __ATOMIC_ACQ_REL);
            if (theirs) {
                local[k] = theirs;
            } else {
                local[k] = local[--n];
            }
        }
    }
    while (n > 0) free(local[--n]);
    free(local);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 2);
    long rounds = arg_or(argc, argv, 2, 20);
    steps = arg_or(argc, argv, 3, 200000);
    for (long round = 0; round < rounds; round++) {
        void **args = xmalloc(sizeof(void *) * (size_t)threads);
        for (int t = 0; t < threads; t++) args[t] = (void *)(intptr_t)(round * threads + t);
        run_threads(threads, work, args);
        free(args);
    }
    long left = 0;
    for (int t = 0; t < TRANSFER; t++) {
        if (transfer[t]) left++;
        free(transfer[t]);
    }
    printf("mstress: %d threads, %ld rounds, %ld blocks in transfer at the end\n", threads,
           rounds, left);
    return 0;
}

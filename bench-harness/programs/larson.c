/* larson: a server simulation (after Larson & Krishnan's benchmark).
 * Each worker owns an array of slots holding blocks of random sizes and
 * repeatedly replaces a random slot: free the old block, allocate a new one
 * and write it. When a generation of workers finishes, the next generation
 * inherits their arrays, so most frees hit blocks another (now dead) thread
 * allocated: the pattern of a server whose requests move between threads.
 *
 * usage: larson THREADS GENERATIONS SLOTS OPS MIN MAX */
#include "bench.h"

typedef struct {
    void **slots;
    size_t *sizes;
    long nslots, ops;
    size_t min, max;
    uint64_t seed, sum;
} worker_t;

static void *work(void *arg) {
    worker_t *w = arg;
    rng_t r;
    rng_seed(&r, w->seed);
    for (long i = 0; i < w->ops; i++) {
        long k = (long)(rng_next(&r) % (uint64_t)w->nslots);
        unsigned char *old = w->slots[k];
        w->sum += old[0] + old[w->sizes[k] - 1];
        free(old);
        size_t n = rng_range(&r, w->min, w->max);
        unsigned char *p = malloc(n);
        if (!p) { fprintf(stderr, "larson: out of memory\n"); exit(3); }
        touch(p, n, (unsigned char)i);
        w->slots[k] = p;
        w->sizes[k] = n;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 2);
    long gens = arg_or(argc, argv, 2, 50);
    long nslots = arg_or(argc, argv, 3, 1000);
    long ops = arg_or(argc, argv, 4, 200000);
    size_t min = (size_t)arg_or(argc, argv, 5, 8);
    size_t max = (size_t)arg_or(argc, argv, 6, 1000);
    worker_t *w = xmalloc(sizeof(worker_t) * (size_t)threads);
    void **args = xmalloc(sizeof(void *) * (size_t)threads);
    rng_t r;
    rng_seed(&r, 4141);
    for (int t = 0; t < threads; t++) {
        w[t].slots = xmalloc(sizeof(void *) * (size_t)nslots);
        w[t].sizes = xmalloc(sizeof(size_t) * (size_t)nslots);
        for (long k = 0; k < nslots; k++) {
            size_t n = rng_range(&r, min, max);
            w[t].slots[k] = xmalloc(n);
            touch(w[t].slots[k], n, 1);
            w[t].sizes[k] = n;
        }
        w[t].nslots = nslots;
        w[t].ops = ops;
        w[t].min = min;
        w[t].max = max;
        w[t].sum = 0;
        args[t] = &w[t];
    }
    for (long g = 0; g < gens; g++) {
        for (int t = 0; t < threads; t++) w[t].seed = (uint64_t)(g * threads + t + 1);
        run_threads(threads, work, args);
        /* Hand each array to the next worker: its blocks change threads. */
        worker_t first = w[0];
        for (int t = 0; t + 1 < threads; t++) {
            w[t].slots = w[t + 1].slots;
            w[t].sizes = w[t + 1].sizes;
        }
        w[threads - 1].slots = first.slots;
        w[threads - 1].sizes = first.sizes;
    }
    uint64_t sum = 0;
    for (int t = 0; t < threads; t++) {
        sum += w[t].sum;
        for (long k = 0; k < nslots; k++) free(w[t].slots[k]);
        free(w[t].slots);
        free(w[t].sizes);
    }
    printf("larson: %d threads, %ld generations, checksum %llu\n", threads, gens,
           (unsigned long long)sum);
    free(args);
    free(w);
    return 0;
}

/* Shared scaffolding of heapkit's standard allocator benchmark programs:
 * a small fast PRNG, argument parsing and a thread launcher. Each program
 * does a fixed amount of work (never a fixed time), so its wall time under
 * `heapkit-bench preload` is what compares allocators; it prints one line
 * with a checksum so that a broken allocator is noticed, not timed. */
#ifndef HEAPKIT_BENCH_H
#define HEAPKIT_BENCH_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xorshift64*: good enough for choosing sizes and slots, and cheap. */
typedef struct { uint64_t s; } rng_t;

static inline void rng_seed(rng_t *r, uint64_t seed) {
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (r->s == 0) r->s = 1;
}

static inline uint64_t rng_next(rng_t *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [lo, hi]. */
static inline size_t rng_range(rng_t *r, size_t lo, size_t hi) {
    return lo + (size_t)(rng_next(r) % (hi - lo + 1));
}

/* argv[i] as a number, or `dflt` when absent. */
static inline long arg_or(int argc, char **argv, int i, long dflt) {
    return argc > i ? strtol(argv[i], NULL, 10) : dflt;
}

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(3);
    }
    return p;
}

/* Runs fn(i) for i in 0..n on n threads and joins them. */
static inline void run_threads(int n, void *(*fn)(void *), void **args) {
    pthread_t *t = xmalloc(sizeof(pthread_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&t[i], NULL, fn, args ? args[i] : (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(3);
        }
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    free(t);
}

/* Touches a block the way a program would: its first and last bytes. */
static inline void touch(void *p, size_t n, unsigned char v) {
    unsigned char *b = p;
    b[0] = v;
    b[n - 1] = v;
}

/* The loop of Hoard's cache-scratch and cache-thrash: allocate a small
 * object, write every byte of it `reps` times, free it; `iters` times. */
static inline uint64_t alloc_write_free(long iters, size_t size, long reps) {
    uint64_t sum = 0;
    for (long i = 0; i < iters; i++) {
        volatile unsigned char *p = malloc(size);
        if (!p) {
            fprintf(stderr, "out of memory (%zu bytes)\n", size);
            exit(3);
        }
        for (long r = 0; r < reps; r++)
            for (size_t b = 0; b < size; b++) p[b] = (unsigned char)(p[b] + r);
        sum += p[0];
        free((void *)p);
    }
    return sum;
}

#endif

/* A multi-threaded C program for the record/replay tests: THREADS workers
 * allocate with every malloc-family call (malloc, calloc, realloc,
 * posix_memalign, aligned_alloc, memalign), free most blocks themselves and
 * hand the rest to the next worker through a locked ring, which frees them:
 * cross-thread frees. Deterministic work per thread; prints a checksum.
 *
 *   cc -O1 -pthread -o mt mt.c && ./mt [iterations]
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define RING 256

struct ring {
    pthread_mutex_t lock;
    void *slot[RING];
    int head, tail;
};

static struct ring rings[THREADS];
static long iterations = 20000;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Hands p to ring r; if the ring is full, frees it here instead. */
static void give(struct ring *r, void *p) {
    pthread_mutex_lock(&r->lock);
    int ok = (r->head + 1) % RING != r->tail;
    if (ok) {
        r->slot[r->head] = p;
        r->head = (r->head + 1) % RING;
    }
    pthread_mutex_unlock(&r->lock);
    if (!ok) free(p);
}

/* Frees everything waiting in ring r (blocks other threads allocated). */
static void drain(struct ring *r) {
    pthread_mutex_lock(&r->lock);
    while (r->tail != r->head) {
        free(r->slot[r->tail]);
        r->tail = (r->tail + 1) % RING;
    }
    pthread_mutex_unlock(&r->lock);
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1);
    void *keep[64] = {0};
    uint64_t sum = 0;
    for (long i = 0; i < iterations; i++) {
        size_t size = 1 + next(&s) % (i % 100 == 0 ? 70000 : 600);
        void *p = NULL;
        switch (next(&s) % 8) {
        case 0: p = calloc(1 + size / 16, 16); break;
        case 1: if (posix_memalign(&p, 64, size) != 0) p = NULL; break;
        case 2: p = aligned_alloc(256, (size + 255) & ~(size_t)255); break;
        case 3: p = memalign(4096, size); break;
        default: p = malloc(size); break;
        }
        if (!p) { fprintf(stderr, "allocation failed\n"); exit(1); }
        memset(p, (int)i, size < 64 ? size : 64);
        sum += ((unsigned char *)p)[0];
        int k = (int)(next(&s) % 64);
        if (keep[k]) {
            if (next(&s) % 4 == 0) {
                void *q = realloc(keep[k], 1 + next(&s) % 3000);
                if (!q) { fprintf(stderr, "realloc failed\n"); exit(1); }
                keep[k] = q;
            }
            if (next(&s) % 3 == 0)
                give(&rings[(id + 1) % THREADS], keep[k]);
            else
                free(keep[k]);
        }
        keep[k] = p;
        if (i % 32 == 0) drain(&rings[id]);
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc > 1) iterations = atol(argv[1]);
    for (int t = 0; t < THREADS; t++) pthread_mutex_init(&rings[t].lock, NULL);
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t total = 0;
    for (int t = 0; t < THREADS; t++) {
        void *r;
        pthread_join(th[t], &r);
        total += (uintptr_t)r;
    }
    for (int t = 0; t < THREADS; t++) drain(&rings[t]);
    char *grow = NULL;
    for (int i = 1; i <= 64; i++) {
        grow = realloc(grow, (size_t)i * 1000);
        if (!grow) return 1;
        grow[0] = 1;
    }
    free(grow);
    printf("%llu\n", (unsigned long long)total);
    return 0;
}

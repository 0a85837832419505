/* A worker thread allocates 100 MB of small blocks (64 B-2 KiB) and hands
 * them to the main thread, which frees them all and then goes on with small
 * allocations for a second while the worker stays idle. Prints the peak RSS
 * and the RSS after that second (allocators/shim/tests/preload/c_api.rs:
 * remote_frees_of_an_idle_owner_are_given_back). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N 100000
static void *blocks[N];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int stage;

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) { if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0; fclose(f); }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < N; i++) {
        size_t size = 64 + (size_t)(i % 32) * 64; /* 64 B .. 2 KiB: 1056 B mean: 100 MB */
        blocks[i] = malloc(size);
        memset(blocks[i], 1, size);
    }
    pthread_mutex_lock(&m);
    stage = 1;
    pthread_cond_broadcast(&c);
    while (stage != 2) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_mutex_lock(&m);
    while (stage != 1) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    long peak = rss_kb();
    for (int i = 0; i < N; i++) free(blocks[i]);
    double start = now();
    long after = 0;
    void *small[64] = {0};
    int k = 0;
    while (now() - start < 1.0) {
        /* The main thread goes on with small allocations. */
        for (int j = 0; j < 100; j++) {
            free(small[k]);
            small[k] = malloc(32 + (size_t)(j % 8) * 16);
            k = (k + 1) % 64;
        }
        usleep(1000);
    }
    after = rss_kb();
    printf("peak %ld KiB, after 1 s %ld KiB (%.0f%%)\n", peak, after, 100.0 * after / peak);
    pthread_mutex_lock(&m);
    stage = 2;
    pthread_cond_broadcast(&c);
    pthread_mutex_unlock(&m);
    pthread_join(t, NULL);
    for (int i = 0; i < 64; i++) free(small[i]);
    return 0;
}

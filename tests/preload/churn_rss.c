/* churn_rss: 4 threads churn blocks of 16 B-64 KiB for SECONDS (default
 * 180), each keeping a window of live blocks and handing every fourth one
 * to the next thread to free (cross-thread frees), with the same live size
 * throughout. Prints RSS every 10 s and, at the end, the growth from the
 * first minute's mean to the last minute's ("RSS growth ... %"), which a
 * bounded allocator keeps near 0 (issue 14: at most 10%).
 *
 *   ./churn_rss [SECONDS] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4
#define WINDOW 20000
#define MAILBOX 4096

struct mailbox {
    pthread_mutex_t lock;
    void *items[MAILBOX];
    int n;
};

static struct mailbox boxes[THREADS];
static atomic_int stop;

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t size_of(uint64_t r) {
    /* Mostly small, sometimes up to 64 KiB. */
    if (r % 64 == 0) return 4096 + (r >> 8) % 61440;
    return 16 + (r >> 8) % 1000;
}

static void drain(int me) {
    struct mailbox *b = &boxes[me];
    pthread_mutex_lock(&b->lock);
    for (int i = 0; i < b->n; i++) free(b->items[i]);
    b->n = 0;
    pthread_mutex_unlock(&b->lock);
}

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(me + 1);
    void **window = calloc(WINDOW, sizeof(void *));
    while (!atomic_load(&stop)) {
        for (int k = 0; k < 1000; k++) {
            uint64_t r = next(&seed);
            int slot = (int)(r % WINDOW);
            void *old = window[slot];
            if (old) {
                if (r % 4 == 0) {
                    struct mailbox *b = &boxes[(me + 1) % THREADS];
                    pthread_mutex_lock(&b->lock);
                    if (b->n < MAILBOX) {
                        b->items[b->n++] = old;
                        old = NULL;
                    }
                    pthread_mutex_unlock(&b->lock);
                }
                free(old);
            }
            size_t n = size_of(next(&seed));
            window[slot] = malloc(n);
            memset(window[slot], me, n < 64 ? n : 64);
        }
        drain(me);
    }
    for (int i = 0; i < WINDOW; i++) free(window[i]);
    drain(me);
    free(window);
    return NULL;
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 180;
    for (int i = 0; i < THREADS; i++) pthread_mutex_init(&boxes[i].lock, NULL);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    int samples = seconds / 10;
    double first = 0, last = 0;
    int per_minute = 6 < samples / 3 ? 6 : (samples / 3 > 0 ? samples / 3 : 1);
    for (int s = 1; s <= samples; s++) {
        sleep(10);
        long rss = rss_kib();
        printf("t=%ds rss=%ld KiB\n", s * 10, rss);
        fflush(stdout);
        if (s <= per_minute) first += rss;
        if (s > samples - per_minute) last += rss;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    first /= per_minute;
    last /= per_minute;
    printf("RSS growth first minute %.0f KiB -> last minute %.0f KiB: %.1f %%\n", first, last,
           100.0 * (last - first) / first);
    return 0;
}

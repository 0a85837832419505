/* xmalloc: producers allocate, consumers free (after xmalloc-test).
 * PAIRS producer threads allocate batches of random-sized blocks and hand
 * each batch through a locked queue to one of PAIRS consumer threads, which
 * write-check and free every block: threads that only ever free, and
 * memory that always changes threads.
 *
 * usage: xmalloc PAIRS BATCHES BATCH MIN MAX */
#include "bench.h"

#define QCAP 64

typedef struct {
    void **items[QCAP];
    int head, len, producers_left;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
} queue_t;

static queue_t q = {.lock = PTHREAD_MUTEX_INITIALIZER,
                    .not_empty = PTHREAD_COND_INITIALIZER,
                    .not_full = PTHREAD_COND_INITIALIZER};
static long batches, batch;
static size_t min_size, max_size;
static uint64_t checksum;
static pthread_mutex_t sum_lock = PTHREAD_MUTEX_INITIALIZER;

static void *produce(void *arg) {
    rng_t r;
    rng_seed(&r, (uint64_t)(intptr_t)arg + 1);
    for (long b = 0; b < batches; b++) {
        void **items = xmalloc(sizeof(void *) * (size_t)batch);
        for (long i = 0; i < batch; i++) {
            size_t n = rng_range(&r, min_size, max_size);
            unsigned char *p = malloc(n);
            if (!p) { fprintf(stderr, "xmalloc: out of memory\n"); exit(3); }
            p[0] = (unsigned char)n;
            items[i] = p;
        }
        pthread_mutex_lock(&q.lock);
        while (q.len == QCAP) pthread_cond_wait(&q.not_full, &q.lock);
        q.items[(q.head + q.len) % QCAP] = items;
        q.len++;
        pthread_cond_signal(&q.not_empty);
        pthread_mutex_unlock(&q.lock);
    }
    pthread_mutex_lock(&q.lock);
    q.producers_left--;
    pthread_cond_broadcast(&q.not_empty);
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

static void *consume(void *arg) {
    (void)arg;
    uint64_t sum = 0;
    for (;;) {
        pthread_mutex_lock(&q.lock);
        while (q.len == 0 && q.producers_left > 0) pthread_cond_wait(&q.not_empty, &q.lock);
        if (q.len == 0) {
            pthread_mutex_unlock(&q.lock);
            break;
        }
        void **items = q.items[q.head];
        q.head = (q.head + 1) % QCAP;
        q.len--;
        pthread_cond_signal(&q.not_full);
        pthread_mutex_unlock(&q.lock);
        for (long i = 0; i < batch; i++) {
            sum += *(unsigned char *)items[i];
            free(items[i]);
        }
        free(items);
    }
    pthread_mutex_lock(&sum_lock);
    checksum += sum;
    pthread_mutex_unlock(&sum_lock);
    return NULL;
}

static void *role(void *arg) {
    intptr_t i = (intptr_t)arg;
    return (i % 2 == 0) ? produce((void *)(i / 2)) : consume(NULL);
}

int main(int argc, char **argv) {
    int pairs = (int)arg_or(argc, argv, 1, 1);
    batches = arg_or(argc, argv, 2, 60000);
    batch = arg_or(argc, argv, 3, 100);
    min_size = (size_t)arg_or(argc, argv, 4, 16);
    max_size = (size_t)arg_or(argc, argv, 5, 256);
    q.producers_left = pairs;
    run_threads(2 * pairs, role, NULL);
    printf("xmalloc: %d pairs, checksum %llu\n", pairs, (unsigned long long)checksum);
    return 0;
}

/* handoff.c: blocks allocated by one thread in bursts and freed by
 * another right after a wait, for `heapkit-bench profile --every`
 * (bench-harness/tests/profile.rs). Nothing leaks and one burst is live
 * at a time: a profile that stamped a free earlier than its allocation on
 * the other thread would order it after later allocations (a peak of many
 * bursts).
 * Usage: handoff ROUNDS */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BURST = 2000 };
static void *blocks[BURST];
static int round_ready, round_done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

static void pause_ms(long ms) {
    struct timespec t = {0, ms * 1000000L};
    nanosleep(&t, NULL);
}

__attribute__((noinline)) static void allocate_burst(void) {
    for (int i = 0; i < BURST; i++) {
        blocks[i] = malloc(16 + i % 200);
        memset(blocks[i], 1, 16);
    }
}

static void *freer(void *arg) {
    int rounds = *(int *)arg;
    for (int r = 1; r <= rounds; r++) {
        /* Fast records of this thread's own, then a wait during which the
         * other thread allocates: the frees that follow come long after
         * this thread's last clock read, and after the allocations. */
        for (int i = 0; i < 64; i++) free(malloc(24));
        pthread_mutex_lock(&lock);
        while (round_ready < r) pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        for (int i = 0; i < BURST; i++) free(blocks[i]);
        pthread_mutex_lock(&lock);
        round_done = r;
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    pthread_t t;
    pthread_create(&t, NULL, freer, &rounds);
    for (int r = 1; r <= rounds; r++) {
        pause_ms(2);
        allocate_burst();
        pthread_mutex_lock(&lock);
        round_ready = r;
        pthread_cond_broadcast(&cond);
        while (round_done < r) pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
    }
    pthread_join(t, NULL);
    return 0;
}

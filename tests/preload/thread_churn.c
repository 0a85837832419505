/* thread_churn.c: short-lived threads one after another, each mallocing
 * and freeing one small block: the cost of a thread's heap set-up and
 * exit (what a thread-per-task program pays). A row of heapkit-bench
 * preload reports:
 *
 *   cc -O2 -pthread -o /tmp/hk-thread-churn tests/preload/thread_churn.c
 *   LD_PRELOAD=libheapkit.so HEAPKIT_ALLOC=x /tmp/hk-thread-churn [threads]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *work(void *arg) {
    char *p = malloc(64);
    if (!p) abort();
    p[0] = 1;
    p[63] = 2;
    free(p);
    return arg;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, work, NULL) != 0 || pthread_join(t, NULL) != 0) {
            fprintf(stderr, "thread %ld failed\n", i);
            return 1;
        }
    }
    printf("ok %ld threads\n", n);
    return 0;
}

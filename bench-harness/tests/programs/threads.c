/* threads.c: THREADS threads, one after another, each allocating and
 * freeing through a few nested calls; the last leaks one 4096-byte block in
 * a named function. Prints the process's resident KiB at the end, so a
 * profiler that keeps each dead thread's memory shows it
 * (bench-harness/tests/profile.rs). Usage: threads THREADS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *volatile keep;

__attribute__((noinline)) void thread_leak_in_named_function(void) {
    keep = malloc(4096);
}

__attribute__((noinline)) static void churn(int depth, int n) {
    if (depth > 0) {
        churn(depth - 1, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        void *volatile p = malloc(16 + i % 512);
        free(p);
    }
}

static void *body(void *last) {
    for (int d = 0; d < 8; d++) churn(d, 200);
    if (last) thread_leak_in_named_function();
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 10;
    for (int t = 0; t < threads; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, body, t == threads - 1 ? (void *)1 : NULL)) return 1;
        pthread_join(th, NULL);
    }
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) return 1;
    fclose(f);
    printf("resident_kib %ld\n", resident * 4);
    return 0;
}

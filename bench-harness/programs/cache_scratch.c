/* cache-scratch: passive false sharing (after Hoard's cache-scratch). The
 * main thread allocates one small object per worker, side by side, and
 * hands each worker its own; the worker frees it and then allocates,
 * writes and frees small objects again and again. An allocator that gives
 * the worker the freed neighbour's memory back makes the workers write the
 * same cache lines; one that serves each thread from its own pages does not.
 *
 * usage: cache_scratch THREADS ITERATIONS SIZE REPETITIONS */
#include "bench.h"

static long iters, reps;
static size_t size;

static void *work(void *arg) {
    free(arg);
    return (void *)(uintptr_t)alloc_write_free(iters, size, reps);
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 2);
    iters = arg_or(argc, argv, 2, 400000);
    size = (size_t)arg_or(argc, argv, 3, 8);
    reps = arg_or(argc, argv, 4, 100);
    void **objs = xmalloc(sizeof(void *) * (size_t)threads);
    for (int t = 0; t < threads; t++) objs[t] = xmalloc(size);
    run_threads(threads, work, objs);
    printf("cache_scratch: %d threads\n", threads);
    free(objs);
    return 0;
}

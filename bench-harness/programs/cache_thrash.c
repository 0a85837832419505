/* cache-thrash: active false sharing (after Hoard's cache-thrash). Each
 * worker allocates a small object, writes it many times and frees it, over
 * and over. An allocator that carves objects of different threads from the
 * same cache line makes their writes fight over it.
 *
 * usage: cache_thrash THREADS ITERATIONS SIZE REPETITIONS */
#include "bench.h"

static long iters, reps;
static size_t size;

static void *work(void *arg) {
    (void)arg;
    return (void *)(uintptr_t)alloc_write_free(iters, size, reps);
}

int main(int argc, char **argv) {
    int threads = (int)arg_or(argc, argv, 1, 2);
    iters = arg_or(argc, argv, 2, 400000);
    size = (size_t)arg_or(argc, argv, 3, 8);
    reps = arg_or(argc, argv, 4, 100);
    run_threads(threads, work, NULL);
    printf("cache_thrash: %d threads\n", threads);
    return 0;
}

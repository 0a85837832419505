/* Threads whose last pthread-key destructor allocates after heapkit's own
 * thread-exit hook has run (in every destructor round, the last included),
 * then the main thread frees many blocks another thread allocated, so that
 * heapkit walks its registry of heaps for pages to reclaim. A heap left
 * registered after its thread died would be touched after its memory is
 * gone (allocators/shim/tests/preload/c_api.rs: late_destructors_allocate_safely). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_key_t late;

static void late_destructor(void *value) {
    long round = (long)value;
    char *p = malloc(64 + (size_t)round * 32);
    memset(p, 1, 64);
    free(p);
    void *kept = malloc(200);   /* allocated after the exit hook, kept */
    (void)kept;
    if (round < 4) pthread_setspecific(late, (void *)(round + 1));
}

static void *short_lived(void *arg) {
    (void)arg;
    free(malloc(100));
    pthread_setspecific(late, (void *)1L);
    return NULL;
}

#define BLOCKS 20000
static void *blocks[BLOCKS];

static void *producer(void *arg) {
    (void)arg;
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(512);
        memset(blocks[i], 2, 512);
    }
    return NULL;
}

int main(void) {
    free(malloc(10)); /* heapkit's key first: its destructor runs first */
    pthread_key_create(&late, late_destructor);
    for (int round = 0; round < 20; round++) {
        pthread_t t[8];
        for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, short_lived, NULL);
        for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
        /* 10 MB of frees into an exited thread's pages: each 4 MiB walks
         * the registry of heaps. */
        pthread_t p;
        pthread_create(&p, NULL, producer, NULL);
        pthread_join(p, NULL);
        for (int i = 0; i < BLOCKS; i++) free(blocks[i]);
    }
    puts("ok late destructors");
    return 0;
}

/* leak.c: a program that leaks N blocks of 4096 bytes in one named
 * function, for `heapkit-bench profile` (bench-harness/tests/profile.rs).
 * Usage: leak N [kill [SIZE]]; with "kill" it ends with SIGKILL (no exit
 * handlers run), to check that a killed process's profile is still read;
 * with "pause-kill" it first allocates slowly for 2.5 s (what was
 * recorded before must reach the file without a full buffer); SIZE
 * (default 4096) is the bytes of each leaked block. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *volatile keep[1 << 16];

__attribute__((noinline)) void leak_in_named_function(int n, size_t size) {
    for (int i = 0; i < n; i++) {
        char *p = malloc(size);
        memset(p, 1, size);
        keep[i] = p;
    }
}

__attribute__((noinline)) void allocate_and_free(int n) {
    for (int i = 0; i < n; i++) {
        void *volatile p = malloc(100 + i % 1000);
        free(p);
    }
}

/* Grows blocks by realloc to 1 MiB and frees them: nothing of it leaks
 * (a sampled profile must see the frees of blocks a realloc made). */
__attribute__((noinline)) void grow_and_free(int n) {
    for (int i = 0; i < n; i++) {
        char *p = malloc(64);
        for (size_t size = 128; size <= (1 << 20); size *= 2) {
            p = realloc(p, size);
            p[size - 1] = 1;
        }
        free(p);
    }
}

/* Allocates and frees a small block every 10 ms for 2.5 s. */
__attribute__((noinline)) void allocate_slowly(void) {
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 250; i++) {
        void *volatile p = malloc(32);
        free(p);
        nanosleep(&tick, NULL);
    }
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4096;
    if (n > (1 << 16)) n = 1 << 16;
    allocate_and_free(100000);
    grow_and_free(200);
    size_t size = argc > 3 ? (size_t)atol(argv[3]) : 4096;
    leak_in_named_function(n, size);
    for (int i = 0; i < n; i++) keep[i] = 0; /* the last pointers are gone */
    if (argc > 2 && !strcmp(argv[2], "pause-kill")) {
        allocate_slowly();
        raise(SIGKILL);
    }
    if (argc > 2 && !strcmp(argv[2], "kill")) raise(SIGKILL);
    return 0;
}

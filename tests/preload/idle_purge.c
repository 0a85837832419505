/* A program that allocates 48 MiB in 2 MiB blocks and 16 MiB in small
 * blocks, frees everything and goes idle for a second without calling the
 * allocator. Prints RSS at start, right after the frees, and after the
 * idle second (allocators/shim/tests/preload/c_api.rs: background_purger). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void) {
    static void *large[24], *small[16384];
    long start = rss_kib();
    for (int i = 0; i < 24; i++) {
        large[i] = malloc(2 << 20);
        memset(large[i], 1, 2 << 20);
    }
    for (int i = 0; i < 16384; i++) {
        small[i] = malloc(1024);
        memset(small[i], 2, 1024);
    }
    for (int i = 0; i < 24; i++) free(large[i]);
    for (int i = 0; i < 16384; i++) free(small[i]);
    long freed = rss_kib();
    sleep(1);
    long idle = rss_kib();
    printf("start %ld KiB, after free %ld KiB, after 1 s idle %ld KiB\n", start, freed, idle);
    return 0;
}

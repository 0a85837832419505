/* huge_pages.c: allocates 96 MiB in 64-byte blocks and 8 MiB blocks,
 * touches every byte, and prints the process's AnonHugePages (kB) from
 * /proc/self/smaps_rollup: with HEAPKIT_HUGE_PAGES=1 heapkit asks for
 * transparent huge pages (allocators/shim/tests/preload/library.rs). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    enum { SMALL = (96 << 20) / 64, BIG = 4 };
    static void *keep[SMALL + BIG];
    for (int i = 0; i < SMALL; i++) {
        keep[i] = malloc(64);
        if (!keep[i]) return 1;
        memset(keep[i], 1, 64);
    }
    for (int i = 0; i < BIG; i++) {
        keep[SMALL + i] = malloc(8 << 20);
        if (!keep[SMALL + i]) return 1;
        memset(keep[SMALL + i], 1, 8 << 20);
    }
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return 2;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    fclose(f);
    printf("anon_huge_kb %ld\n", kb);
    for (int i = 0; i < SMALL + BIG; i++) free(keep[i]);
    return 0;
}

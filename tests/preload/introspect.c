/* glibc's introspection API under the shim (allocators/shim/tests/preload/c_api.rs:
 * introspection_api). `./introspect full` checks that mallinfo2 counts what
 * the program holds (within 1%) and that freeing and malloc_trim(0) give the
 * memory back; `counts` checks mallinfo2 only; `run` only calls everything.
 * Prints "ok introspect" on success. */
#define _GNU_SOURCE
/* mallinfo is deprecated but still called by programs: it is tested too. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N 20000
#define SIZE 1000

static long rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static void *blocks[N];

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "full";
    int counts = strcmp(mode, "run") != 0, trim = strcmp(mode, "full") == 0;
    struct mallinfo2 before = mallinfo2();
    size_t usable = 0;
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(SIZE);
        memset(blocks[i], 1, SIZE);
        usable += malloc_usable_size(blocks[i]);
    }
    struct mallinfo2 after = mallinfo2();
    struct mallinfo old = mallinfo(); /* before printf allocates its buffer */
    long delta = (long)after.uordblks - (long)before.uordblks;
    printf("mallinfo2: uordblks +%ld for %zu usable bytes held; arena %zu fordblks %zu\n", delta,
           usable, after.arena, after.fordblks);
    if (counts && labs(delta - (long)usable) > (long)usable / 100) {
        printf("FAIL: uordblks is not within 1%% of what the program holds\n");
        return 1;
    }
    if (counts && (size_t)old.uordblks != after.uordblks) {
        printf("FAIL: mallinfo and mallinfo2 disagree\n");
        return 1;
    }
    long rss_full = rss_bytes();
    for (int i = 0; i < N; i++) free(blocks[i]);
    long rss_freed = rss_bytes();
    int trimmed = malloc_trim(0);
    long rss_trimmed = rss_bytes();
    printf("rss: full %ld, freed %ld, after malloc_trim %ld (returned %d)\n", rss_full, rss_freed,
           rss_trimmed, trimmed);
    /* malloc_trim may fault in a few pages of its own (code run for the
     * first time, metadata it walks): 64 KiB of slack, far below the 20 MB
     * the program freed. */
    if (trim && (rss_trimmed > rss_freed + (64 << 10) || rss_full - rss_trimmed < (long)usable / 2)) {
        printf("FAIL: freeing and malloc_trim(0) did not give the memory back\n");
        return 1;
    }
    if (mallopt(M_ARENA_MAX, 1) != 1) {
        printf("FAIL: mallopt refused M_ARENA_MAX\n");
        return 1;
    }
    malloc_stats();
    char *xml = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&xml, &len);
    if (!mem || malloc_info(0, mem) != 0) {
        printf("FAIL: malloc_info\n");
        return 1;
    }
    fclose(mem);
    if (!strstr(xml, "<malloc version=\"1\">") || !strstr(xml, "</malloc>")) {
        printf("FAIL: malloc_info wrote %s\n", xml);
        return 1;
    }
    free(xml);
    printf("ok introspect\n");
    return 0;
}

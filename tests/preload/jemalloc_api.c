/* jemalloc's non-standard API under libheapkit.so (allocators/shim/src/
 * jemalloc_api.rs): mallocx and friends, nallocx, mallctl and its MIB
 * forms, malloc_stats_print. Programs linked against libjemalloc.so
 * (Debian's redis-server) call these; under LD_PRELOAD they must reach the
 * selected backend.
 *
 * The functions are found with dlsym, so the program also builds and runs
 * without jemalloc; without the library it prints "SKIP".
 *
 *   LD_PRELOAD=libheapkit.so HEAPKIT_ALLOC=x ./jemalloc_api [sizes] [stats] [active]
 *
 * `sizes`: the backend's usable size is a function of the request (every
 * backend but glibc's, whose chunks keep remainders too small to split),
 * so nallocx must equal the usable size of the block mallocx returns.
 * `stats`: the backend counts live bytes exactly, so stats.allocated must
 * follow an 8 MiB allocation and its free.
 * `active`: the backend counts the memory holding blocks (stats.active), so
 * freeing every other one of many small blocks halves stats.allocated and
 * leaves stats.active where it was (the fragmentation redis reports as
 * allocator_frag_ratio), and freeing the rest brings it down. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                            \
    do {                                                                    \
        if (!(c)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #c);                                                    \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

#define MALLOCX_LG_ALIGN(la) ((int)(la))
#define MALLOCX_ZERO ((int)0x40)
#define MALLCTL_ARENAS_ALL 4096

static void *(*mallocx_)(size_t, int);
static void *(*rallocx_)(void *, size_t, int);
static size_t (*xallocx_)(void *, size_t, size_t, int);
static size_t (*sallocx_)(const void *, int);
static void (*dallocx_)(void *, int);
static void (*sdallocx_)(void *, size_t, int);
static size_t (*nallocx_)(size_t, int);
static int (*mallctl_)(const char *, void *, size_t *, void *, size_t);
static int (*nametomib_)(const char *, size_t *, size_t *);
static int (*bymib_)(const size_t *, size_t, void *, size_t *, void *, size_t);
static void (*stats_print_)(void (*)(void *, const char *), void *, const char *);

static bool find_all(void) {
#define FIND(var, name)                       \
    *(void **)&var = dlsym(RTLD_DEFAULT, name); \
    if (!var) return false;
    FIND(mallocx_, "mallocx");
    FIND(rallocx_, "rallocx");
    FIND(xallocx_, "xallocx");
    FIND(sallocx_, "sallocx");
    FIND(dallocx_, "dallocx");
    FIND(sdallocx_, "sdallocx");
    FIND(nallocx_, "nallocx");
    FIND(mallctl_, "mallctl");
    FIND(nametomib_, "mallctlnametomib");
    FIND(bymib_, "mallctlbymib");
    FIND(stats_print_, "malloc_stats_print");
    return true;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + seed);
}
static bool filled(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed)) return false;
    return true;
}
static bool zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

static const size_t sizes[] = {1, 24, 100, 1000, 4096, 70000, 300000, 3 << 20};
static const int aligns[] = {0, 4, 6, 12, 16, 21};
#define COUNT(a) (sizeof(a) / sizeof *(a))

static void allocation(bool exact_sizes) {
    for (size_t i = 0; i < COUNT(sizes); i++) {
        for (size_t j = 0; j < COUNT(aligns); j++) {
            size_t n = sizes[i];
            int flags = MALLOCX_LG_ALIGN(aligns[j]);
            size_t align = (size_t)1 << aligns[j];
            /* A dirty block of the size first, so a zeroed one is tested
             * on memory that held something. */
            unsigned char *d = mallocx_(n, flags);
            CHECK(d && (uintptr_t)d % align == 0);
            memset(d, 0xAB, n);
            dallocx_(d, 0);
            unsigned char *z = mallocx_(n, flags | MALLOCX_ZERO);
            CHECK(z && (uintptr_t)z % align == 0 && zero(z, n));
            unsigned char *p = mallocx_(n, flags);
            CHECK(p && (uintptr_t)p % align == 0 && p != z);
            size_t usable = sallocx_(p, 0);
            CHECK(usable >= n && usable == malloc_usable_size(p));
            size_t predicted = nallocx_(n, flags);
            CHECK(predicted >= n && (!exact_sizes || predicted == usable));
            fill(p, usable, (unsigned)i);
            CHECK(xallocx_(p, n, 0, 0) == usable);
            CHECK(xallocx_(p, usable + 1, 0, 0) < usable + 1 ||
                  sallocx_(p, 0) >= usable + 1);
            CHECK(filled(p, usable, (unsigned)i));
            CHECK(filled(p, usable, (unsigned)i) && zero(z, n));
            sdallocx_(p, n, flags);
            free(z); /* mallocx blocks are malloc blocks */
        }
    }
    CHECK(nallocx_(0, 0) >= 1);
    CHECK(nallocx_((size_t)1 << 62, 0) == 0);
    CHECK(nallocx_(16, MALLOCX_LG_ALIGN(63)) == 0 && mallocx_(16, MALLOCX_LG_ALIGN(63)) == NULL);
    /* realloc through rallocx: contents kept across growth and shrinking,
     * the alignment kept, MALLOCX_ZERO zeroes what is new. */
    static const size_t steps[] = {16, 300, 5000, 90000, 600000, 5 << 20, 700, 40};
    for (size_t j = 0; j < COUNT(aligns); j++) {
        int flags = MALLOCX_LG_ALIGN(aligns[j]);
        size_t align = (size_t)1 << aligns[j];
        unsigned char *p = mallocx_(8, flags);
        CHECK(p);
        size_t have = 8;
        fill(p, have, 7);
        for (size_t s = 0; s < COUNT(steps); s++) {
            size_t n = steps[s];
            size_t old_usable = sallocx_(p, 0);
            int zflag = (s % 2) ? MALLOCX_ZERO : 0;
            p = rallocx_(p, n, flags | zflag);
            CHECK(p && (uintptr_t)p % align == 0 && sallocx_(p, 0) >= n);
            size_t keep = have < n ? have : n;
            CHECK(filled(p, keep, 7));
            if (zflag && n > old_usable) CHECK(zero(p + old_usable, n - old_usable));
            fill(p, n, 7);
            have = n;
        }
        dallocx_(p, flags);
    }
    /* Out of memory: null, and the block intact. */
    unsigned char *p = mallocx_(100, 0);
    fill(p, 100, 3);
    CHECK(mallocx_((size_t)1 << 60, 0) == NULL);
    CHECK(rallocx_(p, (size_t)1 << 60, 0) == NULL && filled(p, 100, 3));
    dallocx_(p, 0);
}

static size_t stat(const char *name) {
    size_t v = 0, len = sizeof v;
    CHECK(mallctl_(name, &v, &len, NULL, 0) == 0 && len == sizeof v);
    return v;
}

static void refresh(void) {
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    CHECK(mallctl_("epoch", &epoch, &len, &epoch, sizeof epoch) == 0);
}

struct text {
    char buf[8192];
    size_t len;
    int calls;
};
static void collect(void *opaque, const char *s) {
    struct text *t = opaque;
    size_t n = strlen(s);
    if (t->len + n < sizeof t->buf) {
        memcpy(t->buf + t->len, s, n + 1);
        t->len += n;
    }
    t->calls++;
}

static void control(bool exact) {
    uint64_t e1 = 0, e2 = 0;
    size_t len = sizeof e1;
    CHECK(mallctl_("epoch", &e1, &len, NULL, 0) == 0);
    refresh();
    CHECK(mallctl_("epoch", &e2, &len, NULL, 0) == 0 && e2 > e1);
    uint32_t short_epoch = 1;
    CHECK(mallctl_("epoch", NULL, NULL, &short_epoch, sizeof short_epoch) == EINVAL);

    bool config = false;
    len = sizeof config;
    CHECK(mallctl_("config.stats", &config, &len, NULL, 0) == 0 && config);
    unsigned narenas = 0;
    len = sizeof narenas;
    CHECK(mallctl_("arenas.narenas", &narenas, &len, NULL, 0) == 0 && narenas == 1);

    void *keep = malloc(1000);
    CHECK(keep);
    memset(keep, 1, 1000);
    refresh();
    size_t allocated = stat("stats.allocated"), active = stat("stats.active");
    size_t resident = stat("stats.resident"), mapped = stat("stats.mapped");
    CHECK(stat("stats.retained") == 0);
    CHECK(active >= allocated);
    if (exact) CHECK(allocated >= 1000 && mapped >= allocated && resident <= mapped);

    /* 8 MiB more in live blocks, then back. */
    enum { N = 64, SIZE = 128 << 10 };
    void *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(SIZE);
        CHECK(blocks[i]);
        memset(blocks[i], i, SIZE);
    }
    refresh();
    size_t with = stat("stats.allocated");
    for (int i = 0; i < N; i++) free(blocks[i]);
    refresh();
    size_t without = stat("stats.allocated");
    if (exact) {
        CHECK(with >= allocated + (size_t)N * SIZE - (1 << 20));
        CHECK(without + (size_t)N * SIZE <= with + (1 << 20));
        CHECK(stat("stats.mapped") >= with - (1 << 20) || stat("stats.mapped") >= without);
    }

    free(keep);

    /* Errors as jemalloc's manual gives them. */
    size_t v = 0;
    len = 4;
    CHECK(mallctl_("stats.allocated", &v, &len, NULL, 0) == EINVAL && len == 4);
    len = sizeof v;
    CHECK(mallctl_("stats.allocated", NULL, NULL, &v, sizeof v) == EPERM);
    CHECK(mallctl_("opt.narenas", &v, &len, NULL, 0) == ENOENT);
    CHECK(mallctl_("stats.nothing", &v, &len, NULL, 0) == ENOENT);
    CHECK(mallctl_("stats.allocated.more", &v, &len, NULL, 0) == ENOENT);
    CHECK(mallctl_("", &v, &len, NULL, 0) == ENOENT);
    CHECK(mallctl_("arena.7.purge", NULL, NULL, NULL, 0) == ENOENT);
    CHECK(mallctl_("arena.1.purge", NULL, NULL, NULL, 0) == 0); /* = narenas: all */
    CHECK(mallctl_("arena.4096.purge", &v, &len, NULL, 0) == EPERM);
    CHECK(mallctl_("arena.4096.purge", NULL, NULL, NULL, 0) == 0);
    CHECK(mallctl_("arena.0.decay", NULL, NULL, NULL, 0) == 0);
    CHECK(mallctl_("thread.tcache.flush", NULL, NULL, NULL, 0) == 0);

    /* The MIB forms. */
    size_t mib[4], miblen = 4;
    CHECK(nametomib_("arena.0.purge", mib, &miblen) == 0 && miblen == 3);
    mib[1] = MALLCTL_ARENAS_ALL;
    CHECK(bymib_(mib, miblen, NULL, NULL, NULL, 0) == 0);
    mib[1] = 3;
    CHECK(bymib_(mib, miblen, NULL, NULL, NULL, 0) == ENOENT);
    mib[1] = 0;
    mib[2] = 2; /* "stats": not an action under arena.0 */
    CHECK(bymib_(mib, miblen, NULL, NULL, NULL, 0) == ENOENT);
    miblen = 4;
    CHECK(nametomib_("stats.mapped", mib, &miblen) == 0 && miblen == 2);
    len = sizeof v;
    CHECK(bymib_(mib, miblen, &v, &len, NULL, 0) == 0 && (!exact || v > 0));
    miblen = 4;
    CHECK(nametomib_("stats.nothing", mib, &miblen) == ENOENT);
    mib[0] = 1000;
    CHECK(bymib_(mib, 2, &v, &len, NULL, 0) == ENOENT);

    /* malloc_stats_print, as text and as JSON. */
    static struct text t;
    stats_print_(collect, &t, NULL);
    CHECK(t.calls >= 1 && strstr(t.buf, "heapkit statistics") && strstr(t.buf, "Backend: "));
    memset(&t, 0, sizeof t);
    stats_print_(collect, &t, "J");
    CHECK(t.buf[0] == '{' && strstr(t.buf, "\"allocated\": ") && strstr(t.buf, "\"counters\": {"));
    /* No callback: to stderr (the test reads it there). */
    stats_print_(NULL, NULL, NULL);
}

/* stats.active against stats.allocated over 12.8 MB of 64-byte blocks. */
static void active_pages(void) {
    enum { N = 200000, SIZE = 64 };
    void **blocks = malloc(N * sizeof *blocks);
    CHECK(blocks);
    refresh();
    size_t allocated0 = stat("stats.allocated"), active0 = stat("stats.active");
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(SIZE);
        CHECK(blocks[i]);
        memset(blocks[i], i, SIZE);
    }
    refresh();
    size_t allocated1 = stat("stats.allocated"), active1 = stat("stats.active");
    size_t added = (size_t)N * SIZE;
    CHECK(allocated1 >= allocated0 + added - (1 << 20));
    CHECK(active1 >= allocated1 && active1 >= active0 + added - (1 << 20));
    for (int i = 0; i < N; i += 2) free(blocks[i]);
    refresh();
    size_t allocated2 = stat("stats.allocated"), active2 = stat("stats.active");
    CHECK(allocated2 + added / 2 <= allocated1 + (1 << 20));
    CHECK(active2 + (1 << 20) >= active1);
    CHECK(active2 - allocated2 >= added / 2 - (1 << 20));
    for (int i = 1; i < N; i += 2) free(blocks[i]);
    malloc_trim(0);
    refresh();
    CHECK(stat("stats.active") + added - (2 << 20) <= active1);
    free(blocks);
}

int main(int argc, char **argv) {
    if (!find_all()) {
        printf("SKIP jemalloc_api: no jemalloc API in this process\n");
        return 0;
    }
    bool sizes = false, stats = false, active = false;
    for (int i = 1; i < argc; i++) {
        sizes |= !strcmp(argv[i], "sizes");
        stats |= !strcmp(argv[i], "stats");
        active |= !strcmp(argv[i], "active");
    }
    allocation(sizes);
    control(stats);
    if (active) active_pages();
    printf("ok jemalloc_api\n");
    return 0;
}

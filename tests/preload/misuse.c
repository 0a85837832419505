/* Heap misuse cases, one per run, for the misuse test under every backend
 * (allocators/shim/tests/preload/misuse.rs: misuse_default_mode). Each case does
 * one wrong thing and then keeps using the heap; the expected outcome per
 * backend is in the test: "detected" (the program stops with a one-line
 * message), or, where default mode makes no promise, only that it ends
 * (never hangs).
 *
 *   ./misuse foreign | large-double | large-interior | remote-double | exhaust-recover
 *            | small-double-32 | small-double-100k | small-interior | uaf-write
 *            | overflow | realloc-freed
 *
 * Exit 0 means the misuse went unnoticed and the program went on. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

static void keep_using_the_heap(void) {
    void *p[1000];
    for (int i = 0; i < 1000; i++) {
        p[i] = malloc(16 + (size_t)(i % 50) * 16);
        memset(p[i], 1, 16);
    }
    for (int i = 0; i < 1000; i++) free(p[i]);
}

/* The compiler knows free: launder pointers through a volatile so that it
 * keeps every wrong call as written. */
static void *launder(void *p) {
    void *volatile v = p;
    return v;
}

/* free() of a pointer inside a 4 MiB-aligned mapping heapkit never made,
 * whose first words look like a header (sizes, pointers). */
static int foreign(void) {
    size_t seg = 4 << 20;
    char *raw = mmap(NULL, 2 * seg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return 2;
    uintptr_t base = ((uintptr_t)raw + seg - 1) & ~(uintptr_t)(seg - 1);
    uint64_t *w = (uint64_t *)base;
    w[0] = 0x1234;          /* no heapkit tag */
    w[1] = 64 << 20;        /* a plausible "map size" */
    w[2] = 64;              /* a plausible "offset" */
    free(launder((void *)(base + 64)));
    keep_using_the_heap();
    printf("foreign free went unnoticed\n");
    return 0;
}

/* free(), realloc() and malloc_usable_size() of pointers into 4 MiB
 * regions where nothing is mapped at all (heapkit must not read a "tag"
 * there). */
static int unmapped(const char *call) {
    size_t seg = 4 << 20;
    char *raw = mmap(NULL, 3 * seg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return 2;
    uintptr_t base = ((uintptr_t)raw + seg - 1) & ~(uintptr_t)(seg - 1);
    munmap(raw, 3 * seg);
    void *p = launder((void *)(base + 4096));
    if (!strcmp(call, "free")) free(p);
    else if (!strcmp(call, "realloc")) p = realloc(p, 100);
    else printf("%zu\n", malloc_usable_size(p));
    keep_using_the_heap();
    printf("unmapped %s went unnoticed\n", call);
    return 0;
}

static int large_double(void) {
    char *p = malloc(1 << 20);
    memset(p, 2, 1 << 20);
    free(launder(p));
    free(launder(p));
    char *a = launder(malloc(1 << 20)), *b = launder(malloc(1 << 20));
    printf("large double free went unnoticed (%s)\n", a == b ? "same block twice" : "distinct");
    return 0;
}

static int large_interior(void) {
    char *p = malloc(1 << 20);
    memset(p, 3, 1 << 20);
    free(launder(p + 4096));
    keep_using_the_heap();
    printf("large interior free went unnoticed\n");
    return 0;
}

/* Thread B frees one of thread A's small blocks twice; A then allocates on. */
static void *volatile shared_block;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int stage;

static void *freer(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (stage != 1) pthread_cond_wait(&cond, &lock);
    free(launder(shared_block));
    free(launder(shared_block));
    stage = 2;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int remote_double(void) {
    pthread_t t;
    pthread_create(&t, NULL, freer, NULL);
    void *keep[64];
    for (int i = 0; i < 64; i++) keep[i] = malloc(32);
    shared_block = malloc(32);
    pthread_mutex_lock(&lock);
    stage = 1;
    pthread_cond_broadcast(&cond);
    while (stage != 2) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    pthread_join(t, NULL);
    /* Allocate on until the owner collects its remote frees. */
    void *seen = NULL;
    int twice = 0;
    for (int i = 0; i < 200000; i++) {
        void *p = malloc(32);
        if (p == shared_block) {
            if (seen) twice = 1;
            seen = p;
        }
    }
    for (int i = 0; i < 64; i++) free(keep[i]);
    printf("remote double free went unnoticed%s\n", twice ? " (block handed out twice)" : "");
    return 0;
}

/* Thread B frees one of thread A's 200-byte blocks, which A overflowed by
 * one byte (or B frees a pointer into its middle). Past 64 bytes, sizeclass
 * leaves the check of a remote free's canary to the block's owner, which
 * makes it before it hands the block out again, or before it retires the
 * block's page: `reuse` has A allocate 200-byte blocks on (the block comes
 * back), otherwise A frees the page's other blocks, allocates another size
 * (the page empties) and calls malloc_trim (the page retires). */
static char *volatile remote_target;
static void *remote_freer(void *arg) {
    (void)arg;
    free(launder(remote_target));
    return NULL;
}

static int remote_misuse(int interior, int reuse) {
    enum { KEEP = 64, MORE = 2000 };
    static void *keep[KEEP], *more[MORE];
    for (int i = 0; i < KEEP; i++) keep[i] = malloc(200);
    char *p = malloc(200);
    memset(p, 8, 200);
    if (interior) {
        remote_target = p + 16;
    } else {
        ((volatile char *)launder(p))[200] = 'x';
        remote_target = p;
    }
    pthread_t t;
    pthread_create(&t, NULL, remote_freer, NULL);
    pthread_join(t, NULL);
    if (reuse) {
        for (int i = 0; i < MORE; i++) more[i] = malloc(200);
        for (int i = 0; i < MORE; i++) free(more[i]);
    } else {
        /* Blocks of another size, enough to need new pages: the owner's
         * slow path collects the remote free, and the page empties; the
         * trim retires it. */
        for (int i = 0; i < KEEP; i++) free(keep[i]);
        for (int i = 0; i < MORE; i++) more[i] = malloc(48);
        for (int i = 0; i < MORE; i++) free(more[i]);
        malloc_trim(0);
    }
    printf("remote %s went unnoticed\n", interior ? "interior free" : "one-byte overflow");
    return 0;
}

/* A small block freed twice by its owner; then two allocations of its
 * size (the same pointer twice means the heap hands one block out twice). */
static int small_double(size_t size) {
    char *keep = malloc(size);
    char *p = malloc(size);
    memset(p, 4, size);
    free(launder(p));
    free(launder(p));
    /* Laundered: two live mallocs cannot alias, so the compiler would
     * fold the comparison. */
    char *a = launder(malloc(size)), *b = launder(malloc(size));
    printf("small double free went unnoticed (%s)\n", a == b ? "same block twice" : "distinct");
    free(keep);
    return 0;
}

/* free() of a pointer 16 bytes into a small block. */
static int small_interior(void) {
    char *p = malloc(64);
    memset(p, 5, 64);
    free(launder(p + 16));
    keep_using_the_heap();
    printf("small interior free went unnoticed\n");
    return 0;
}

/* A use-after-free write of an address into a freed block's first word:
 * does a later malloc return that address? */
static char forged_target[256] __attribute__((aligned(64)));
static int uaf_write(void) {
    void *hold[64];
    for (int i = 0; i < 64; i++) hold[i] = malloc(32);
    char *p = hold[10];
    free(launder(p));
    /* Volatile: a store into freed memory is otherwise dead to the
     * compiler; the target is laundered so the comparison below is not
     * folded (malloc never returns a static object's address). */
    char *target = launder(forged_target + 64);
    *(void *volatile *)launder(p) = target;
    int hit = 0;
    for (int i = 0; i < 10000 && !hit; i++) {
        char *q = launder(malloc(32));
        if (q == target) hit = 1;
    }
    printf("use-after-free write went unnoticed%s\n", hit ? " (malloc returned the forged address)" : "");
    return 0;
}

/* One byte written past a 24-byte request, then freed. */
/* A write into a freed block, then enough frees to push it out of a
 * hardened quarantine (HEAPKIT_QUARANTINE_KB), which checks its junk. */
static int quarantine_uaf(void) {
    char *p = malloc(64);
    memset(p, 1, 64);
    free(launder(p));
    ((volatile char *)launder(p))[40] = 'x';
    keep_using_the_heap();
    printf("write after free went unnoticed\n");
    return 0;
}

/* A write one byte past the usable size of the large block p: hardened
 * heapkit ends such a block at an inaccessible page, so the write faults. */
static int write_past_large_block(char *p) {
    size_t usable = malloc_usable_size(p);
    memset(p, 7, usable);
    ((volatile char *)launder(p))[usable] = 'x';
    free(launder(p));
    printf("large overflow went unnoticed\n");
    return 0;
}

static int large_overflow(void) {
    return write_past_large_block(malloc(1 << 20));
}

/* The same past a block of more than 4 MiB that reuses a larger freed one
 * (hardened heapkit serves it from the cached mapping's start and moves
 * the guard to the block's end). */
static int large_overflow_reused(void) {
    char *big = malloc(6 << 20);
    memset(big, 5, 6 << 20);
    free(launder(big));
    return write_past_large_block(malloc((9 << 20) / 2));
}

static int overflow(void) {
    char *p = malloc(24);
    memset(p, 6, 24);
    ((volatile char *)launder(p))[24] = 'x';
    free(launder(p));
    keep_using_the_heap();
    printf("one-byte overflow went unnoticed\n");
    return 0;
}

/* realloc() of a block already freed. */
static int realloc_freed(void) {
    char *keep = malloc(32);
    char *p = malloc(32);
    free(launder(p));
    p = realloc(launder(p), 40);
    keep_using_the_heap();
    printf("realloc of a freed block went unnoticed\n");
    free(keep);
    return 0;
}

/* Under a capped address space: fill it with 4 MiB blocks, free one, and
 * allocate small and medium blocks again (must succeed), then refill. */
static int exhaust_recover(void) {
    struct rlimit rl = {.rlim_cur = 512 << 20, .rlim_max = 512 << 20};
    if (setrlimit(RLIMIT_AS, &rl) != 0) return 2;
    static void *blocks[1024];
    int n = 0;
    while (n < 1024 && (blocks[n] = malloc(4 << 20)) != NULL) n++;
    if (n == 0 || n == 1024) {
        printf("could not exhaust (%d blocks)\n", n);
        return 2;
    }
    free(blocks[--n]);
    free(blocks[--n]);
    void *s = malloc(24), *m = malloc(4096), *l = malloc(100000);
    if (!s || !m || !l) {
        printf("after freeing 8 MiB: malloc(24)=%p malloc(4096)=%p malloc(100000)=%p\n", s, m, l);
        return 1;
    }
    free(s);
    free(m);
    free(l);
    while (n > 0) free(blocks[--n]);
    void *again = malloc(64 << 20);
    if (!again) {
        printf("after freeing everything: malloc(64 MiB) failed\n");
        return 1;
    }
    free(again);
    printf("ok exhaust-recover\n");
    return 0;
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    if (!strcmp(c, "foreign")) return foreign();
    if (!strcmp(c, "unmapped-free")) return unmapped("free");
    if (!strcmp(c, "unmapped-realloc")) return unmapped("realloc");
    if (!strcmp(c, "unmapped-usable-size")) return unmapped("usable-size");
    if (!strcmp(c, "large-double")) return large_double();
    if (!strcmp(c, "large-interior")) return large_interior();
    if (!strcmp(c, "remote-double")) return remote_double();
    if (!strcmp(c, "remote-overflow")) return remote_misuse(0, 1);
    if (!strcmp(c, "remote-overflow-retire")) return remote_misuse(0, 0);
    if (!strcmp(c, "remote-interior")) return remote_misuse(1, 1);
    if (!strcmp(c, "exhaust-recover")) return exhaust_recover();
    if (!strcmp(c, "small-double-32")) return small_double(32);
    if (!strcmp(c, "small-double-100k")) return small_double(100000);
    if (!strcmp(c, "small-interior")) return small_interior();
    if (!strcmp(c, "uaf-write")) return uaf_write();
    if (!strcmp(c, "overflow")) return overflow();
    if (!strcmp(c, "large-overflow")) return large_overflow();
    if (!strcmp(c, "large-overflow-reused")) return large_overflow_reused();
    if (!strcmp(c, "quarantine-uaf")) return quarantine_uaf();
    if (!strcmp(c, "realloc-freed")) return realloc_freed();
    fprintf(stderr, "usage: misuse foreign|unmapped-free|unmapped-realloc|unmapped-usable-size|large-double|large-interior|remote-double|remote-overflow|remote-overflow-retire|remote-interior|exhaust-recover|small-double-32|small-double-100k|small-interior|uaf-write|overflow|large-overflow|large-overflow-reused|quarantine-uaf|realloc-freed\n");
    return 2;
}

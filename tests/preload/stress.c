/* stress.c: the C malloc API under libheapkit.so, every entry point and
 * edge case, threads, cross-thread frees, fork from a threaded parent,
 * dlopen of a TLS-using library, and blocks handed between libraries.
 *
 *   cc -O2 -pthread -o stress stress.c -ldl
 *   LD_PRELOAD=libheapkit.so HEAPKIT_ALLOC=x ./stress [all|edge|threads|fork|dlopen|exhaust|bench] [scale] [libtls.so]
 *
 * Prints "ok <section>" per section, exits 0 on success; any failed check
 * prints "FAIL file:line: what" and exits 1. scale multiplies the thread
 * workloads (default 1; the bump backend is run with a light scale). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);  \
            fflush(stderr);                                               \
            _exit(1);                                                     \
        }                                                                 \
    } while (0)

static double scale = 1.0;
/* 16 (the x86-64 ABI, which libheapkit.so guarantees); bench mode lowers it
 * to 8 and skips posix_memalign so the same run can measure Debian's real
 * libmimalloc 2.0.9, which aligns blocks under 16 bytes to 8 only and whose
 * posix_memalign fails some of the checks here. */
static uintptr_t min_align = 16;
static int under_shim; /* malloc is not glibc's: checks of heapkit-defined behaviour apply */
/* volatile so the compiler neither warns about nor folds the impossible sizes */
static volatile size_t huge = SIZE_MAX, half = SIZE_MAX / 2;
static const char *tls_lib_path;

/* xorshift, per caller */
static uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* a size distribution like real programs: mostly small, some medium, rare large */
static size_t pick_size(uint64_t *s) {
    uint64_t r = rnd(s) % 1000;
    if (r < 800) return 1 + rnd(s) % 128;
    if (r < 980) return 129 + rnd(s) % 8000;
    if (r < 998) return 8192 + rnd(s) % (256 << 10);
    return (256 << 10) + rnd(s) % (2 << 20);
}

static void fill(unsigned char *p, size_t n, unsigned char tag) {
    if (n == 0) return;
    p[0] = tag;
    p[n - 1] = tag;
    if (n > 2) p[n / 2] = tag;
}
static int check_fill(const unsigned char *p, size_t n, unsigned char tag) {
    if (n == 0) return 1;
    return p[0] == tag && p[n - 1] == tag && (n <= 2 || p[n / 2] == tag);
}

/* ---------------------------------------------------------------- edge */
static void edge(void) {
    const char *backend = getenv("HEAPKIT_ALLOC");
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    /* malloc(0): unique, freeable */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    CHECK((uintptr_t)z1 % 16 == 0);
    free(z1);
    free(z2);
    /* free(NULL) and free keeps errno */
    errno = 1234;
    free(NULL);
    CHECK(errno == 1234);
    void *k = malloc(100);
    errno = 4321;
    free(k);
    CHECK(errno == 4321);
    /* heapkit's allocators keep errno through the system calls of their slow
     * paths too (munmap/madvise of large blocks and emptied pages), since
     * free no longer saves it: free many large and small blocks. */
    int heapkit_backend = under_shim && (!backend || !*backend ||
                          (strcmp(backend, "system") && strcmp(backend, "jemalloc") &&
                           strcmp(backend, "mimalloc")));
    if (heapkit_backend) {
        void *bigs[40];
        for (int i = 0; i < 40; i++) bigs[i] = malloc((size_t)(i + 1) << 20);
        void *smalls[20000];
        for (int i = 0; i < 20000; i++) smalls[i] = malloc(64 + (size_t)(i % 7) * 500);
        errno = 5555;
        for (int i = 0; i < 40; i++) free(bigs[i]);
        for (int i = 0; i < 20000; i++) free(smalls[i]);
        CHECK(errno == 5555);
        void *again = malloc(100);
        CHECK(again && errno == 5555);
        free(again);
    }
    /* realloc(NULL, n) = malloc(n); realloc(p, 0) frees and returns NULL */
    char *r = realloc(NULL, 40);
    CHECK(r);
    memset(r, 7, 40);
    CHECK(realloc(r, 0) == NULL);
    /* calloc: zeroed, overflow -> NULL + ENOMEM */
    for (int i = 0; i < 64; i++) {
        size_t n = 1 + (size_t)i * 97;
        unsigned char *d = malloc(n);
        memset(d, 0xAB, n);
        free(d);
        unsigned char *c = calloc(n, 1);
        CHECK(c);
        for (size_t j = 0; j < n; j++) CHECK(c[j] == 0);
        free(c);
    }
    unsigned char *bigc = calloc(1, 3 << 20);
    CHECK(bigc && bigc[0] == 0 && bigc[(3 << 20) - 1] == 0);
    free(bigc);
    errno = 0;
    CHECK(calloc(half, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, half, 3) == NULL && errno == ENOMEM);
    int *ra = reallocarray(NULL, 10, sizeof(int));
    CHECK(ra);
    ra[9] = 9;
    ra = reallocarray(ra, 1000, sizeof(int));
    CHECK(ra && ra[9] == 9);
    free(ra);
    /* exhaustion by size: NULL + ENOMEM */
    errno = 0;
    CHECK(malloc(huge) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(half) == NULL && errno == ENOMEM);
    errno = 0;
    void *keep = malloc(64);
    CHECK(realloc(keep, huge - 4096) == NULL && errno == ENOMEM);
    free(keep); /* the failed realloc left it live */
    /* posix_memalign: bad alignments -> EINVAL, good ones aligned */
    void *out = (void *)0x1;
    CHECK(posix_memalign(&out, 24, 8) == EINVAL);
    CHECK(posix_memalign(&out, 4, 8) == EINVAL);
    CHECK(posix_memalign(&out, 0, 8) == EINVAL);
    CHECK(out == (void *)0x1);
    for (size_t a = sizeof(void *); a <= (2 << 20); a <<= 1) {
        void *p = NULL;
        CHECK(posix_memalign(&p, a, 100) == 0);
        CHECK(p && (uintptr_t)p % a == 0);
        CHECK(malloc_usable_size(p) >= 100);
        memset(p, 1, 100);
        free(p);
    }
    /* aligned_alloc, memalign */
    /* C11 / glibc >= 2.38: a non-power-of-two alignment fails (older glibc rounds it) */
    errno = 0;
    if (under_shim) CHECK(aligned_alloc(3, 8) == NULL && errno == EINVAL);
    for (size_t a = 1; a <= (1 << 20); a <<= 1) {
        void *p = aligned_alloc(a, 3 * a);
        CHECK(p && (uintptr_t)p % a == 0 && (uintptr_t)p % 16 == 0);
        memset(p, 2, 3 * a);
        free(p);
        p = memalign(a, 50);
        CHECK(p && (uintptr_t)p % a == 0);
        free(p);
    }
    /* every alignment with sizes below, at and above it (power-of-two
     * classes must be carved at addresses aligned to the alignment) */
    for (size_t a = 16; a <= (2 << 20); a <<= 1) {
        size_t sizes[] = {1, a / 2, a - 1, a, a + 1, 2 * a - 8, 3 * a + 5, 1000, 5000, 70000, 300000};
        for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            void *p = NULL, *q = memalign(a, sizes[i]);
            CHECK(posix_memalign(&p, a, sizes[i]) == 0);
            if ((uintptr_t)p % a || (uintptr_t)q % a)
                fprintf(stderr, "align %zu size %zu: %p %p\n", a, sizes[i], p, q);
            CHECK(p && (uintptr_t)p % a == 0 && malloc_usable_size(p) >= sizes[i]);
            CHECK(q && (uintptr_t)q % a == 0 && malloc_usable_size(q) >= sizes[i]);
            memset(p, 3, sizes[i]);
            memset(q, 4, sizes[i]);
            free(p);
            free(q);
        }
    }
    void *m3 = memalign(3000, 10); /* rounded up to 4096 like glibc */
    CHECK(m3 && (uintptr_t)m3 % 4096 == 0);
    free(m3);
    /* valloc / pvalloc */
    void *v = valloc(10);
    CHECK(v && (uintptr_t)v % page == 0);
    free(v);
    void *pv = pvalloc(0);
    CHECK(pv && (uintptr_t)pv % page == 0);
    if (under_shim) CHECK(malloc_usable_size(pv) >= page); /* heapkit: one page for 0 */
    free(pv);
    pv = pvalloc(page + 1);
    CHECK(pv && malloc_usable_size(pv) >= 2 * page);
    free(pv);
    /* 16-byte alignment and usable size >= requested for every small size */
    CHECK(malloc_usable_size(NULL) == 0);
    size_t (*libc_usable)(void *) = NULL;
    if (backend && strcmp(backend, "system") == 0) {
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        CHECK(libc);
        libc_usable = (size_t(*)(void *))dlsym(libc, "malloc_usable_size");
        CHECK(libc_usable && libc_usable != malloc_usable_size);
    }
    for (size_t n = 0; n <= 70000; n += (n < 1100 ? 1 : 997)) {
        unsigned char *p = malloc(n);
        CHECK(p && (uintptr_t)p % 16 == 0);
        size_t u = malloc_usable_size(p);
        CHECK(u >= n);
        if (libc_usable) CHECK(libc_usable(p) == u);
        if (u) {
            p[0] = 1;
            p[u - 1] = 2; /* the whole usable size is ours */
        }
        free(p);
    }
    for (size_t n = 128 << 10; n <= (8 << 20); n = n * 3 / 2) {
        void *p = malloc(n);
        CHECK(p && malloc_usable_size(p) >= n);
        if (libc_usable) CHECK(libc_usable(p) == malloc_usable_size(p));
        free(p);
    }
    /* realloc keeps contents across growth and shrinking (small, medium, huge) */
    size_t sizes[] = {1, 24, 100, 1000, 5000, 70000, 300000, 5 << 20, 12 << 20, 800, 3, 20 << 20, 16};
    unsigned char *g = NULL;
    size_t have = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        g = realloc(g, n);
        CHECK(g && (uintptr_t)g % 16 == 0 && malloc_usable_size(g) >= n);
        size_t keep_n = have < n ? have : n;
        for (size_t j = 0; j < keep_n; j++) CHECK(g[j] == (unsigned char)(j * 7 + 1));
        for (size_t j = 0; j < n; j++) g[j] = (unsigned char)(j * 7 + 1);
        have = n;
    }
    free(g);
    /* cfree, if the linker gives it to us (glibc keeps it as a compat symbol) */
    void (*cf)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    if (cf) cf(malloc(10));
    printf("ok edge\n");
}

/* ------------------------------------------------------------- threads */
#define RING 1024
static void *ring[RING];
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
#define LEFT 4096
static void *left_behind[64][LEFT]; /* live blocks of exited threads */
static size_t left_sizes[64][LEFT];

struct worker {
    int id;
    long ops;
};

static void *churn(void *arg) {
    struct worker *w = arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(w->id + 1);
    enum { SLOTS = 512 };
    unsigned char *slot[SLOTS] = {0};
    size_t len[SLOTS] = {0};
    for (long i = 0; i < w->ops; i++) {
        unsigned j = rnd(&s) % SLOTS;
        if (slot[j]) {
            CHECK(check_fill(slot[j], len[j], (unsigned char)j));
            uint64_t what = rnd(&s) % 8;
            if (what == 0) { /* hand it to another thread through the ring */
                pthread_mutex_lock(&ring_lock);
                unsigned k = rnd(&s) % RING;
                void *old = ring[k];
                ring[k] = slot[j];
                pthread_mutex_unlock(&ring_lock);
                free(old); /* a block some other thread allocated */
            } else if (what == 1) {
                size_t n = pick_size(&s);
                slot[j] = realloc(slot[j], n);
                CHECK(slot[j]);
                size_t keep = len[j] < n ? len[j] : n;
                if (keep) CHECK(slot[j][0] == (unsigned char)j);
                len[j] = n;
                fill(slot[j], n, (unsigned char)j);
                continue;
            } else {
                free(slot[j]);
            }
            slot[j] = NULL;
        } else {
            size_t n = pick_size(&s);
            uint64_t how = rnd(&s) % 16;
            if (how == 0) {
                slot[j] = calloc(1, n);
                CHECK(slot[j] && slot[j][0] == 0 && slot[j][n - 1] == 0);
            } else if (how == 1 && min_align == 16) { /* not in bench mode (see min_align) */
                size_t a = (size_t)16 << (rnd(&s) % 9);
                CHECK(posix_memalign((void **)&slot[j], a, n) == 0 && (uintptr_t)slot[j] % a == 0);
            } else {
                slot[j] = malloc(n);
                CHECK(slot[j] && (uintptr_t)slot[j] % min_align == 0);
            }
            len[j] = n;
            fill(slot[j], n, (unsigned char)j);
        }
    }
    /* exit with live blocks: leave them for main to check and free */
    for (unsigned j = 0; j < SLOTS && j < LEFT; j++) {
        left_behind[w->id][j] = slot[j];
        left_sizes[w->id][j] = len[j];
    }
    return NULL;
}

static void run_threads(int nthreads, long ops) {
    pthread_t t[64];
    struct worker w[64];
    for (int i = 0; i < nthreads; i++) {
        w[i].id = i;
        w[i].ops = ops;
        CHECK(pthread_create(&t[i], NULL, churn, &w[i]) == 0);
    }
    for (int i = 0; i < nthreads; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < nthreads; i++) {
        for (unsigned j = 0; j < LEFT; j++) {
            if (left_behind[i][j]) {
                CHECK(check_fill(left_behind[i][j], left_sizes[i][j], (unsigned char)j));
                free(left_behind[i][j]);
                left_behind[i][j] = NULL;
            }
        }
    }
    for (int k = 0; k < RING; k++) {
        free(ring[k]);
        ring[k] = NULL;
    }
}

static void threads(void) {
    long ops = (long)(200000 * scale);
    run_threads(8, ops);
    /* a second wave reuses what the first wave's threads left behind */
    run_threads(4, ops);
    printf("ok threads\n");
}

/* ---------------------------------------------------------------- fork */
static volatile int stop_background;
static void *background(void *arg) {
    uint64_t s = (uintptr_t)arg | 1;
    void *held[64] = {0};
    while (!stop_background) {
        unsigned j = rnd(&s) % 64;
        free(held[j]);
        held[j] = malloc(pick_size(&s) % 4096 + 1);
        CHECK(held[j]);
    }
    for (int j = 0; j < 64; j++) free(held[j]);
    return NULL;
}

static void *child_thread(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) free(malloc(i * 3 + 1));
    return malloc(77);
}

static void forks(void) {
    pthread_t bg[4];
    stop_background = 0;
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&bg[i], NULL, background, (void *)(uintptr_t)(i * 7919 + 1)) == 0);
    /* blocks allocated before the fork, by this thread */
    char *before[256];
    for (int i = 0; i < 256; i++) {
        before[i] = malloc(i * 33 + 1);
        memset(before[i], i, i * 33 + 1);
    }
    int rounds = scale < 1 ? 8 : 24;
    for (int f = 0; f < rounds; f++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* the child of a multi-threaded parent allocates, frees the
             * parent's blocks, reallocs, and starts a thread */
            uint64_t s = (uint64_t)f * 131 + 7;
            void *mine[512];
            for (int i = 0; i < 512; i++) {
                mine[i] = malloc(pick_size(&s) % 100000 + 1);
                CHECK(mine[i]);
            }
            for (int i = 0; i < 256; i++) {
                CHECK(before[i][0] == (char)i && before[i][i * 33] == (char)i);
                before[i] = realloc(before[i], i * 33 + 5000);
                CHECK(before[i] && before[i][0] == (char)i);
                free(before[i]);
            }
            for (int i = 0; i < 512; i++) free(mine[i]);
            pthread_t t;
            void *res = NULL;
            CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0);
            CHECK(pthread_join(t, &res) == 0);
            free(res);
            _exit(0);
        }
        for (int i = 0; i < 200; i++) free(malloc(i + 1));
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    stop_background = 1;
    for (int i = 0; i < 4; i++) CHECK(pthread_join(bg[i], NULL) == 0);
    for (int i = 0; i < 256; i++) free(before[i]);
    printf("ok fork\n");
}

/* -------------------------------------------------------------- dlopen */
struct dl_api {
    void *(*lib_alloc)(size_t);
    void (*lib_free)(void *);
    long (*lib_touch_tls)(long);
};

static void *dl_worker(void *arg) {
    struct dl_api *api = arg;
    uint64_t s = (uintptr_t)pthread_self() | 1;
    for (int i = 0; i < 2000; i++) {
        /* dynamic TLS of the dlopened library: first touch per thread
         * allocates through __tls_get_addr -> malloc */
        CHECK(api->lib_touch_tls(i) == i);
        /* malloc in one library, free in another, both ways */
        char *a = api->lib_alloc(pick_size(&s) % 5000 + 1);
        CHECK(a);
        a[0] = 1;
        free(a);
        char *b = malloc(pick_size(&s) % 5000 + 1);
        CHECK(b);
        b[0] = 2;
        api->lib_free(b);
    }
    return NULL;
}

static void dlopens(void) {
    if (!tls_lib_path) {
        printf("SKIP dlopen (no TLS library given)\n");
        return;
    }
    /* threads running before the dlopen: their DTVs must grow */
    stop_background = 0;
    pthread_t bg[3];
    for (int i = 0; i < 3; i++) CHECK(pthread_create(&bg[i], NULL, background, (void *)(uintptr_t)(i + 11)) == 0);
    for (int round = 0; round < 3; round++) {
        void *h = dlopen(tls_lib_path, RTLD_NOW | RTLD_LOCAL);
        if (!h) fprintf(stderr, "dlopen: %s\n", dlerror());
        CHECK(h);
        struct dl_api api;
        *(void **)&api.lib_alloc = dlsym(h, "lib_alloc");
        *(void **)&api.lib_free = dlsym(h, "lib_free");
        *(void **)&api.lib_touch_tls = dlsym(h, "lib_touch_tls");
        CHECK(api.lib_alloc && api.lib_free && api.lib_touch_tls);
        pthread_t t[6];
        for (int i = 0; i < 6; i++) CHECK(pthread_create(&t[i], NULL, dl_worker, &api) == 0);
        dl_worker(&api);
        for (int i = 0; i < 6; i++) CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(dlclose(h) == 0);
    }
    stop_background = 1;
    for (int i = 0; i < 3; i++) CHECK(pthread_join(bg[i], NULL) == 0);
    printf("ok dlopen\n");
}

/* ------------------------------------------------------------- exhaust */
static void exhaust(void) {
    /* in a child: cap the address space, allocate until NULL */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct rlimit rl;
        FILE *f = fopen("/proc/self/statm", "r");
        unsigned long vm_pages = 0;
        CHECK(f && fscanf(f, "%lu", &vm_pages) == 1);
        fclose(f);
        rl.rlim_cur = rl.rlim_max = vm_pages * sysconf(_SC_PAGESIZE) + (256ul << 20);
        CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
        enum { MAX = 1 << 20 };
        static void *held[MAX];
        int n = 0;
        errno = 0;
        size_t sizes[] = {1 << 20, 64 << 10, 5000, 100};
        for (int k = 0; k < 4; k++) {
            for (;;) {
                CHECK(n < MAX);
                void *p = malloc(sizes[k]);
                if (!p) break;
                memset(p, 1, 64);
                held[n++] = p;
            }
            CHECK(errno == ENOMEM);
            errno = 0;
        }
        for (int i = 0; i < n; i++) free(held[i]);
        void *again = malloc(1000);
        CHECK(again);
        free(again);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status)) fprintf(stderr, "exhaust child: signal %d\n", WTERMSIG(status));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("ok exhaust\n");
}

/* the benchmark mode: threads only, no checks beyond the fill tags */
static void bench(void) {
    run_threads(4, (long)(1000000 * scale));
    printf("ok bench\n");
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2) scale = atof(argv[2]);
    if (argc > 3) tls_lib_path = argv[3];
    int all = strcmp(what, "all") == 0;
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    CHECK(libc);
    under_shim = dlsym(RTLD_DEFAULT, "malloc") != dlsym(libc, "malloc");
    printf("malloc from %s\n", under_shim ? "the preloaded library" : "glibc");
    if (all || !strcmp(what, "edge")) edge();
    if (all || !strcmp(what, "threads")) threads();
    if (all || !strcmp(what, "fork")) forks();
    if (all || !strcmp(what, "dlopen")) dlopens();
    if (all || !strcmp(what, "exhaust")) exhaust();
    if (!strcmp(what, "bench")) {
        min_align = 8;
        bench();
    }
    return 0;
}

/* libc_aliases.c: glibc's internal allocation names (__libc_malloc, ...),
 * which some programs call directly, reach the same allocator as malloc:
 * blocks of one family are freed and resized by the other, contents and
 * alignment are kept. Under heapkit without the aliases, free() of a block
 * from __libc_malloc is a foreign pointer (reported, process stopped).
 * Prints "ok libc aliases". */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

#define CHECK(c) do { if (!(c)) { printf("FAILED %s (line %d)\n", #c, __LINE__); return 1; } } while (0)

int main(void) {
    for (size_t i = 1; i < 3000; i++) {
        size_t n = i * 37 % 70000 + 1;
        unsigned char *p = __libc_malloc(n);
        CHECK(p);
        memset(p, (int)(i & 0xff), n);
        unsigned char *q = realloc(p, n * 2);
        CHECK(q);
        CHECK(q[0] == (unsigned char)(i & 0xff) && q[n - 1] == (unsigned char)(i & 0xff));
        free(q);
        p = malloc(n);
        CHECK(p);
        p[n - 1] = 1;
        p = __libc_realloc(p, n + 100);
        CHECK(p && p[n - 1] == 1);
        __libc_free(p);
    }
    unsigned long long *z = __libc_calloc(1000, 8);
    CHECK(z);
    for (int i = 0; i < 1000; i++) CHECK(z[i] == 0);
    free(z);
    char *r = __libc_realloc(NULL, 50);
    CHECK(r);
    strcpy(r, "heapkit");
    r = __libc_realloc(r, 1 << 20);
    CHECK(r && !strcmp(r, "heapkit"));
    CHECK(malloc_usable_size(r) >= 1 << 20);
    __libc_free(r);
    void *m = __libc_memalign(4096, 100);
    CHECK(m && (uintptr_t)m % 4096 == 0);
    free(m);
    void *v = __libc_valloc(10);
    CHECK(v && (uintptr_t)v % 4096 == 0);
    __libc_free(v);
    void *pv = __libc_pvalloc(10);
    CHECK(pv && (uintptr_t)pv % 4096 == 0 && malloc_usable_size(pv) >= 4096);
    free(pv);
    __libc_free(NULL);
    printf("ok libc aliases\n");
    return 0;
}

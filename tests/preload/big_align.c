/* posix_memalign, aligned_alloc and memalign with alignments from 4 MiB to
 * 1 GiB (glibc, jemalloc and mimalloc serve them), each block written,
 * checked, grown with realloc and freed; then malloc_usable_size and a free
 * of a pointer inside such a block (allocators/shim/tests/preload/c_api.rs:
 * alignments_up_to_a_gibibyte). */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    for (int shift = 22; shift <= 30; shift += 2) {
        size_t align = (size_t)1 << shift;
        void *p = NULL;
        if (posix_memalign(&p, align, 100000) != 0 || p == NULL || (uintptr_t)p % align) {
            printf("posix_memalign(%zu) failed\n", align);
            return 1;
        }
        memset(p, 7, 100000);
        if (malloc_usable_size(p) < 100000) return 1;
        char *q = realloc(p, 300000);
        if (!q || q[99999] != 7) return 1;
        free(q);
        void *a = aligned_alloc(align, align);
        void *m = memalign(align, 1);
        if (!a || !m || (uintptr_t)a % align || (uintptr_t)m % align) {
            printf("aligned_alloc/memalign(%zu) failed\n", align);
            return 1;
        }
        memset(a, 1, align < (64 << 20) ? align : (64 << 20));
        free(a);
        free(m);
    }
    if (argc > 1) {
        /* A pointer into an over-aligned block. */
        void *p = NULL;
        posix_memalign(&p, 8 << 20, 1 << 20);
        free((char *)p + 4096);
    }
    puts("ok big alignments");
    return 0;
}

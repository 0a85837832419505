/* glibc-simple: the tight single-thread loop of glibc's bench-malloc-simple.
 * Allocate COUNT blocks of one size, free them in order; repeat for sizes
 * from 16 B to 4 KiB.
 *
 * usage: glibc_simple ITERATIONS COUNT */
#include "bench.h"

int main(int argc, char **argv) {
    long iters = arg_or(argc, argv, 1, 600);
    long count = arg_or(argc, argv, 2, 400);
    static const size_t sizes[] = {16, 32, 64, 128, 256, 512, 1024, 4096};
    void **blocks = xmalloc(sizeof(void *) * (size_t)count);
    uint64_t sum = 0;
    for (long it = 0; it < iters; it++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            for (long i = 0; i < count; i++) {
                unsigned char *p = malloc(sizes[s]);
                if (!p) { fprintf(stderr, "glibc_simple: out of memory\n"); return 3; }
                p[0] = (unsigned char)i;
                blocks[i] = p;
            }
            for (long i = 0; i < count; i++) {
                sum += *(unsigned char *)blocks[i];
                free(blocks[i]);
            }
        }
    }
    printf("glibc_simple: checksum %llu\n", (unsigned long long)sum);
    free(blocks);
    return 0;
}

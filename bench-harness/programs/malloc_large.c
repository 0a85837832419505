/* malloc-large: large blocks (after mimalloc-bench's malloc-large). Keeps
 * up to SLOTS blocks of 2-20 MiB alive, replacing a random one per step and
 * writing one byte per page of its first 1 MiB, so the allocator's large
 * path (mapping, reuse, purging) is what is measured.
 *
 * usage: malloc_large STEPS SLOTS */
#include "bench.h"

int main(int argc, char **argv) {
    long steps = arg_or(argc, argv, 1, 2000);
    long nslots = arg_or(argc, argv, 2, 20);
    rng_t r;
    rng_seed(&r, 42);
    void **slots = calloc((size_t)nslots, sizeof(void *));
    uint64_t sum = 0;
    for (long i = 0; i < steps; i++) {
        long k = (long)(rng_next(&r) % (uint64_t)nslots);
        if (slots[k]) {
            sum += *(unsigned char *)slots[k];
            free(slots[k]);
        }
        size_t n = rng_range(&r, 2 << 20, 20 << 20);
        unsigned char *p = malloc(n);
        if (!p) { fprintf(stderr, "malloc_large: out of memory\n"); return 3; }
        size_t touched = n < (1 << 20) ? n : (1 << 20);
        for (size_t b = 0; b < touched; b += 4096) p[b] = (unsigned char)i;
        p[n - 1] = 1;
        slots[k] = p;
    }
    for (long k = 0; k < nslots; k++) free(slots[k]);
    free(slots);
    printf("malloc_large: checksum %llu\n", (unsigned long long)sum);
    return 0;
}

/* calloc_loop: `calloc`s blocks of recycled memory and uses them densely
 * or sparsely; exits 1 if any byte it reads before writing is not zero.
 *
 *   cc -O2 -o calloc_loop calloc_loop.c
 *   ./calloc_loop LIVE ITERS [LO_KIB HI_KIB [sparse]]
 *
 * LIVE slots (at most 256); each step frees a random slot and `calloc`s a
 * block of LO_KIB..HI_KIB KiB (default 64..256) into it, then either reads
 * and writes one byte in every 4 KiB page (dense: the block's pages are
 * all used) or reads and writes three bytes, at its start, middle and end
 * (sparse). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int live = argc > 1 ? atoi(argv[1]) : 2;
    long iters = argc > 2 ? atol(argv[2]) : 200000;
    int lo = argc > 3 ? atoi(argv[3]) : 64, hi = argc > 4 ? atoi(argv[4]) : 256;
    void *slot[256] = {0};
    uint64_t s = 88172645463325252ull;
    unsigned long sum = 0;
    for (long i = 0; i < iters; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        int j = s % live;
        size_t n = ((size_t)lo << 10) + (s >> 20) % ((size_t)(hi - lo) << 10);
        free(slot[j]);
        char *p = calloc(1, n);
        if (argc > 5) {
            sum += p[0] + p[n / 2] + p[n - 1];
            p[0] = p[n / 2] = p[n - 1] = 1;
        } else {
            for (size_t k = 0; k < n; k += 4096) {
                sum += p[k];
                p[k] = 1;
            }
        }
        slot[j] = p;
    }
    for (int j = 0; j < live; j++) free(slot[j]);
    return sum == 0 ? 0 : 1;
}

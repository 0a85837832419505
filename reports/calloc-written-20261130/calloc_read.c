/* calloc_read: `calloc`s blocks of recycled memory that it reads whole and
 * writes a few bytes of (a table of counters, mostly zero, summed at the
 * end: the pattern that reads every page of a block its user wrote little
 * of); exits 1 if any byte it reads before writing is not zero.
 *
 *   cc -O2 -o calloc_read calloc_read.c
 *   ./calloc_read LIVE ITERS [LO_KIB HI_KIB]
 *
 * LIVE slots (at most 256); each step frees a random slot and `calloc`s a
 * block of LO_KIB..HI_KIB KiB (default 64..256) into it, reads one word in
 * every 64 bytes of it, then writes three bytes (start, middle, end). */
#include <stdint.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int live = argc > 1 ? atoi(argv[1]) : 2;
    long iters = argc > 2 ? atol(argv[2]) : 20000;
    int lo = argc > 3 ? atoi(argv[3]) : 64, hi = argc > 4 ? atoi(argv[4]) : 256;
    void *slot[256] = {0};
    uint64_t s = 88172645463325252ull;
    unsigned long bad = 0;
    for (long i = 0; i < iters; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        int j = s % live;
        size_t n = ((size_t)lo << 10) + (s >> 20) % ((size_t)(hi - lo) << 10);
        free(slot[j]);
        unsigned char *p = calloc(1, n);
        for (size_t k = 0; k + 8 <= n; k += 64) bad |= *(volatile uint64_t *)(p + k);
        bad |= p[n - 1];
        p[0] = p[n / 2] = p[n - 1] = 1;
        slot[j] = p;
    }
    for (int j = 0; j < live; j++) free(slot[j]);
    return bad != 0;
}

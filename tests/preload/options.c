/* options.c: the HEAPKIT_* options reach the backend. Frees an 8 MiB block
 * and prints how many bytes the allocator still has mapped (mallinfo2's
 * arena): with the default large cache the block stays mapped for reuse,
 * with HEAPKIT_LARGE_CACHE_MB=0 it goes back to the OS at once. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t before = mallinfo2().arena;
    char *p = malloc(8 << 20);
    if (!p) return 1;
    memset(p, 1, 8 << 20);
    free(p);
    size_t after = mallinfo2().arena;
    printf("kept %zu\n", after > before ? after - before : 0);
    return 0;
}

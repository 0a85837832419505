/* tls_lib.c: a library that stress.c dlopens. It owns dynamic TLS (so
 * glibc grows each thread's DTV and allocates TLS blocks through malloc on
 * first touch) and allocates/frees on the other side of a library boundary. */
#include <stdlib.h>

static __thread long tls_counter;
static __thread char tls_block[4096];

void *lib_alloc(size_t n) { return malloc(n); }
void lib_free(void *p) { free(p); }
long lib_touch_tls(long v) {
    tls_block[v % 4096] = (char)v;
    tls_counter = v;
    return tls_counter;
}

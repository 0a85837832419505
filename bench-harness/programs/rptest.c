/* rptest: bursts of random-sized blocks across threads (after rpmalloc's
 * benchmark). Each cycle a thread allocates a burst of blocks (sizes
 * 16 B .. 8 KiB, small ones likelier), frees a random half of them at once,
 * and passes the rest to the next thread through a per-thread mailbox; it
 * frees what its neighbour passed it. Working sets rise and fall, and a
 * third of the frees cross threads.
 *
 * usage: rptest THREADS CYCLES BURST */
#include "bench.h"

typedef struct {
    pthread_mutex_t lock;
    void **items;
    long len, cap;
} mailbox_t;

static mailbox_t *boxes;
static int threads;
static long cycles, burst;

static size_t pick_size(rng_t *r) {
    unsigned e = (unsigned)rng_range(r, 4, 13);
    unsigned f = (unsigned)rng_range(r, 4, 13);
    e = e < f ? e : f;
    return rng_range(r, (size_t)1 << (e - 1), (size_t)1 << e);
}

static void *work(void *arg) {
    int id = (int)(intptr_t)arg;
    rng_t r;
    rng_seed(&r, (uint64_t)id * 977 + 3);
    void **mine = xmalloc(sizeof(void *) * (size_t)burst);
    mailbox_t *out = &boxes[(id + 1) % threads], *in = &boxes[id];
    for (long c = 0; c < cycles; c++) {
        long n = (long)rng_range(&r, (size_t)burst / 2, (size_t)burst);
        for (long i = 0; i < n; i++) {
            size_t sz = pick_size(&r);
            unsigned char *p = malloc(sz);
            if (!p) { fprintf(stderr, "rptest: out of memory\n"); exit(3); }
            touch(p, sz, (unsigned char)i);
            mine[i] = p;
        }
        /* Free a random half now (shuffled order). */
        long kept = 0;
        for (long i = 0; i < n; i++) {
            if (rng_next(&r) & 1) free(mine[i]);
            else mine[kept++] = mine[i];
        }
        /* Pass the rest on; free what was passed to us. */
        pthread_mutex_lock(&out->lock);
        if (out->len + kept > out->cap) {
            out->cap = (out->len + kept) * 2;
            out->items = realloc(out->items, sizeof(void *) * (size_t)out->cap);
        }
        memcpy(out->items + out->len, mine, sizeof(void *) * (size_t)kept);
        out->len += kept;
        pthread_mutex_unlock(&out->lock);
        pthread_mutex_lock(&in->lock);
        void **got = in->items;
        long ngot = in->len;
        in->items = NULL;
        in->len = in->cap = 0;
        pthread_mutex_unlock(&in->lock);
        for (long i = 0; i < ngot; i++) free(got[i]);
        free(got);
    }
    free(mine);
    return NULL;
}

int main(int argc, char **argv) {
    threads = (int)arg_or(argc, argv, 1, 2);
    cycles = arg_or(argc, argv, 2, 1000);
    burst = arg_or(argc, argv, 3, 2000);
    boxes = calloc((size_t)threads, sizeof(mailbox_t));
    for (int t = 0; t < threads; t++) pthread_mutex_init(&boxes[t].lock, NULL);
    run_threads(threads, work, NULL);
    long left = 0;
    for (int t = 0; t < threads; t++) {
        for (long i = 0; i < boxes[t].len; i++) free(boxes[t].items[i]);
        left += boxes[t].len;
        free(boxes[t].items);
    }
    free(boxes);
    printf("rptest: %d threads, %ld left in mailboxes\n", threads, left);
    return 0;
}

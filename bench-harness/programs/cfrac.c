/* cfrac: small-bignum churn (modelled on cfrac, which factors integers by
 * continued fractions with a bignum library that allocates a fresh number
 * for every intermediate result). Here: the continued-fraction expansion
 * of sqrt(N) for many N, with every bignum a malloc'ed limb array (16 B to
 * a few hundred bytes) freed as soon as the next value replaces it. The
 * recurrences of the expansion (m, d, a) and of the convergents' numerators
 * (p = a*p1 + p0) grow the numbers limb by limb, as cfrac does.
 *
 * usage: cfrac COUNT TERMS */
#include "bench.h"

typedef struct {
    int len;       /* limbs in use */
    uint32_t l[];  /* little-endian base 2^32 */
} big;

static big *big_new(int len) {
    big *b = malloc(sizeof(big) + sizeof(uint32_t) * (size_t)len);
    if (!b) { fprintf(stderr, "cfrac: out of memory\n"); exit(3); }
    b->len = len;
    return b;
}

static big *big_from(uint64_t v) {
    big *b = big_new(2);
    b->l[0] = (uint32_t)v;
    b->l[1] = (uint32_t)(v >> 32);
    b->len = b->l[1] ? 2 : 1;
    return b;
}

/* a * k + c, as a new number. */
static big *big_muladd(const big *a, uint32_t k, const big *c) {
    int n = (a->len > c->len ? a->len : c->len) + 1;
    big *r = big_new(n);
    uint64_t carry = 0;
    for (int i = 0; i < n; i++) {
        uint64_t x = carry;
        if (i < a->len) x += (uint64_t)a->l[i] * k;
        if (i < c->len) x += c->l[i];
        r->l[i] = (uint32_t)x;
        carry = x >> 32;
    }
    while (r->len > 1 && r->l[r->len - 1] == 0) r->len--;
    return r;
}

/* The low 32 bits, folded into a checksum. */
static uint32_t big_low(const big *a) { return a->l[0]; }

static uint64_t isqrt(uint64_t n) {
    /* Newton's method from above; n < 2^40 here, so no overflow. */
    uint64_t x = n, y = (x + 1) / 2;
    while (y < x) {
        x = y;
        y = (x + n / x) / 2;
    }
    return x;
}

int main(int argc, char **argv) {
    long count = arg_or(argc, argv, 1, 15000);
    long terms = arg_or(argc, argv, 2, 400);
    uint64_t sum = 0;
    for (long c = 0; c < count; c++) {
        uint64_t n = 1000003ull * (uint64_t)(c + 2) + 12345;
        uint64_t a0 = isqrt(n);
        if (a0 * a0 == n) continue;
        /* Expansion state fits a machine word (m, d < 2 sqrt(n)); the
         * convergents p, q grow without bound and live as bignums. */
        uint64_t m = 0, d = 1, a = a0;
        big *p0 = big_from(1), *p1 = big_from(a0);
        big *q0 = big_from(0), *q1 = big_from(1);
        for (long t = 0; t < terms; t++) {
            m = d * a - m;
            d = (n - m * m) / d;
            a = (a0 + m) / d;
            big *p2 = big_muladd(p1, (uint32_t)a, p0);
            big *q2 = big_muladd(q1, (uint32_t)a, q0);
            free(p0);
            free(q0);
            p0 = p1;
            p1 = p2;
            q0 = q1;
            q1 = q2;
            sum += big_low(p1) ^ big_low(q1);
            if (p1->len > 24) {
                /* Restart the convergents: keep numbers cfrac-sized. */
                free(p0);
                free(q0);
                p0 = big_from(1);
                q0 = big_from(0);
                big *np = big_from(a), *nq = big_from(1);
                free(p1);
                free(q1);
                p1 = np;
                q1 = nq;
            }
        }
        free(p0);
        free(p1);
        free(q0);
        free(q1);
    }
    printf("cfrac: checksum %llu\n", (unsigned long long)sum);
    return 0;
}

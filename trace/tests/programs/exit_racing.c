/* exit_racing.c: four threads allocate and free without pause while the
 * main thread calls exit(): the recorder's exit handler flushes every
 * thread's buffer while their owners are recording
 * (trace/tests/record_replay_programs.rs). */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static void *spin(void *arg) {
    (void)arg;
    void *keep[64] = {0};
    for (unsigned i = 0;; i++) {
        free(keep[i % 64]);
        keep[i % 64] = malloc(16 + i % 700);
    }
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, spin, NULL);
    struct timespec d = {0, 20 * 1000 * 1000};
    nanosleep(&d, NULL);
    exit(0);
}

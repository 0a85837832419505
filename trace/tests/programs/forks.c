/* forks.c: a process that forks children which never exec: one leaves
 * through exit(), one through _exit(), one is killed with SIGKILL after its
 * buffer filled once; the parent then leaves through _exit() too. Each
 * child allocates a known number of blocks of a known size. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>

static void work(int n, size_t size) {
    for (int i = 0; i < n; i++) {
        void *volatile p = malloc(size);
        free(p);
    }
}

int main(void) {
    work(100, 24);
    pid_t a = fork();
    if (a == 0) { work(1000, 40); exit(0); }
    pid_t b = fork();
    if (b == 0) { work(2000, 56); _exit(0); }
    pid_t c = fork();
    if (c == 0) { work(200000, 72); raise(SIGKILL); }
    waitpid(a, 0, 0);
    waitpid(b, 0, 0);
    waitpid(c, 0, 0);
    printf("%d %d %d\n", (int)a, (int)b, (int)c);
    fflush(stdout);
    work(300, 88);
    _exit(0);
}

/* What a context switch costs under qemu's TCG, between two threads of one process and
 * between two processes (docs/BENCHMARKS.md, propagation Round 15).
 *
 * Two sides hand a byte back and forth over pipes, both pinned to CPU 0, so every hand-off is a
 * context switch on that CPU; after each hand-off a side calls CODE small functions, each on
 * its own 4 KiB page, and writes to DATA pages. "solo" runs the same work with no hand-off.
 * TCG flushes its software TLB (and the jump cache indexed by virtual address) whenever the
 * guest loads CR3, i.e. on every switch to another process, so the pages touched after such a
 * switch are looked up again; between threads of one process no flush happens.
 *
 *   gcc -O2 -static -pthread -o tcg_switch_cost tests/scripts/tcg_switch_cost.c
 *   ./tcg_switch_cost thread|proc|solo CODE DATA ROUNDS     # prints µs per round trip
 *
 * In the VM: XTASK_VM_EXTRA=./tcg_switch_cost cargo xtask vm run "tcg_switch_cost proc 256 0 1000"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAGES 1024
typedef unsigned long (*fn_t)(unsigned long);
static fn_t fns[MAX_PAGES];
static char *data;
static int ncode, ndata, rounds;
static int to_b[2], to_a[2];
static volatile unsigned long sink;

/* mov rax, rdi; imul rax, rax, 0x5851f42d; add rax, 1; ret */
static const unsigned char body[] = {0x48, 0x89, 0xf8, 0x48, 0x69, 0xc0, 0x2d, 0xf4, 0x51, 0x58, 0x48, 0x83, 0xc0, 0x01, 0xc3};

static void work(void) {
    unsigned long x = 1;
    for (int i = 0; i < ncode; i++) x = fns[i](x);
    for (int i = 0; i < ndata; i++) { x += data[(long)i * 4096]; data[(long)i * 4096] = (char)x; }
    sink = x;
}

static void *side_b(void *arg) {
    (void)arg;
    char c;
    for (int i = 0; i < rounds; i++) {
        if (read(to_b[0], &c, 1) != 1) exit(1);
        work();
        if (write(to_a[1], &c, 1) != 1) exit(1);
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5 || (ncode = atoi(argv[2])) < 0 || ncode > MAX_PAGES || (ndata = atoi(argv[3])) < 0 ||
        ndata > MAX_PAGES || (rounds = atoi(argv[4])) <= 0) {
        fprintf(stderr, "usage: %s thread|proc|solo CODE(0-%d) DATA(0-%d) ROUNDS\n", argv[0], MAX_PAGES, MAX_PAGES);
        return 2;
    }
    const char *mode = argv[1];
    unsigned char *code = mmap(0, 4096L * MAX_PAGES, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data = mmap(0, 4096L * MAX_PAGES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (code == MAP_FAILED || data == MAP_FAILED) { perror("mmap"); return 1; }
    for (int i = 0; i < MAX_PAGES; i++) {
        memcpy(code + 4096L * i, body, sizeof body);
        fns[i] = (fn_t)(code + 4096L * i);
    }
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus);
    const int warmup = 50;
    if (strcmp(mode, "solo") == 0) {
        for (int i = 0; i < warmup; i++) work();
        double t0 = now();
        for (int i = 0; i < rounds; i++) { work(); work(); }
        printf("solo code=%d data=%d us_per_round=%.1f\n", ncode, ndata, (now() - t0) / rounds * 1e6);
        return 0;
    }
    if (pipe(to_b) || pipe(to_a)) { perror("pipe"); return 1; }
    rounds += warmup;
    pthread_t th;
    pid_t pid = 0;
    if (strcmp(mode, "thread") == 0) {
        pthread_create(&th, NULL, side_b, NULL);
    } else if (strcmp(mode, "proc") == 0) {
        pid = fork();
        if (pid == 0) { side_b(NULL); _exit(0); }
    } else {
        fprintf(stderr, "mode must be thread, proc or solo\n");
        return 2;
    }
    char c = 'x';
    double t0 = 0;
    for (int i = 0; i < rounds; i++) {
        if (i == warmup) t0 = now();
        if (write(to_b[1], &c, 1) != 1) return 1;
        work();
        if (read(to_a[0], &c, 1) != 1) return 1;
    }
    printf("%s code=%d data=%d us_per_round=%.1f\n", mode, ncode, ndata, (now() - t0) / (rounds - warmup) * 1e6);
    if (pid) waitpid(pid, NULL, 0); else pthread_join(th, NULL);
    return 0;
}

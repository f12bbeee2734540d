/*
 * ssv-io: the small measuring tool of the VMM lab tests, built static for
 * the inner guest (and the lab VM, same architecture). Busybox has no fio
 * and no clock finer than /proc/uptime, so:
 *
 *   ssv-io randread DEV SPAN_MIB SECONDS [JOBS [RATE]]
 *       4 KiB reads at random 4 KiB-aligned offsets below SPAN_MIB, with
 *       O_DIRECT (no page cache), one outstanding read per job, JOBS
 *       processes (default 1) for SECONDS; with RATE, each job reads at
 *       most RATE times a second (0: as fast as it can). Prints
 *       "SSV-IO: randread jobs=J ios=N secs=S iops=I".
 *
 *   ssv-io stamp [-t SECONDS] MARKER CMD [ARGS...]
 *       Runs CMD with its stdout and stderr through a pipe, copies every
 *       line to stdout, and prints "SSV-IO: stamp MARKER S" with the
 *       seconds from just before CMD started to the first line containing
 *       MARKER. With -t, CMD is killed (SIGKILL) after SECONDS, and first
 *       each of its threads is printed ("SSV-IO: thread TID NAME STATE
 *       WCHAN" and its kernel stack), to see where a hung VMM waits.
 *       Exits with CMD's status (128+signal if killed).
 *
 * The same binary serves both sides of the benchmark, so both are measured
 * the same way.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "ssv-io: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* xorshift64*: cheap and good enough to scatter offsets. */
static uint64_t next_random(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* One job: reads until `secs` have passed; writes its count to `out`. */
static void randread_job(const char *dev, uint64_t blocks, double secs, double rate, int seed,
                         int out)
{
    int fd = open(dev, O_RDONLY | O_DIRECT);
    if (fd < 0)
        die(dev);
    void *buf;
    if (posix_memalign(&buf, BLOCK, BLOCK) != 0)
        die("posix_memalign");
    uint64_t state = 0x9E3779B97F4A7C15ULL * (uint64_t)(seed + 1);
    uint64_t ios = 0;
    double start = now(), end = start + secs;
    for (;;) {
        /* Paced: sleep until this read's turn. */
        double due = rate > 0 ? start + ios / rate : 0;
        for (double t = now(); due > t; t = now()) {
            double wait = due - t;
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        /* Check the clock every 64 reads, a read takes far longer; every
         * read when paced. */
        if (((ios & 63) == 0 || rate > 0) && now() >= end)
            break;
        off_t at = (off_t)(next_random(&state) % blocks) * BLOCK;
        ssize_t n = pread(fd, buf, BLOCK, at);
        if (n != BLOCK) {
            if (n < 0)
                die("pread");
            fprintf(stderr, "ssv-io: short read of %zd at %lld\n", n, (long long)at);
            exit(2);
        }
        ios++;
    }
    if (write(out, &ios, sizeof ios) != sizeof ios)
        die("write to the parent");
}

static int randread(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: ssv-io randread DEV SPAN_MIB SECONDS [JOBS [RATE]]\n");
        return 2;
    }
    const char *dev = argv[2];
    uint64_t blocks = strtoull(argv[3], NULL, 10) * (1024 * 1024 / BLOCK);
    double secs = atof(argv[4]);
    int jobs = argc > 5 ? atoi(argv[5]) : 1;
    double rate = argc > 6 ? atof(argv[6]) : 0;
    if (blocks == 0 || secs <= 0 || jobs < 1 || jobs > 64 || rate < 0) {
        fprintf(stderr, "ssv-io randread: bad span, time, job count or rate\n");
        return 2;
    }
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    double start = now();
    for (int j = 0; j < jobs; j++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(p[0]);
            randread_job(dev, blocks, secs, rate, j, p[1]);
            _exit(0);
        }
    }
    close(p[1]);
    uint64_t total = 0, ios;
    int got = 0;
    while (read(p[0], &ios, sizeof ios) == sizeof ios) {
        total += ios;
        got++;
    }
    int status, failed = 0;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    double elapsed = now() - start;
    if (failed || got != jobs) {
        fprintf(stderr, "ssv-io randread: a job failed\n");
        return 1;
    }
    printf("SSV-IO: randread jobs=%d ios=%llu secs=%.3f iops=%.1f\n", jobs,
           (unsigned long long)total, elapsed, total / elapsed);
    return 0;
}

static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
    (void)sig;
    timed_out = 1;
}

/* Prints /proc/PID/task/TID/FILE's first lines, each prefixed. */
static void print_proc(pid_t pid, const char *tid, const char *file, int lines)
{
    char path[512], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task/%s/%s", (int)pid, tid, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (lines-- > 0 && fgets(buf, sizeof buf, f))
        printf("SSV-IO:   %s %s", file, buf);
    fclose(f);
}

/* Each thread of PID: name, state (field 3 of stat) and wait channel. */
static void print_threads(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[512], comm[64] = "?", state = '?', wchan[64] = "?";
        snprintf(p, sizeof p, "%s/%s/comm", path, e->d_name);
        FILE *f = fopen(p, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
        }
        snprintf(p, sizeof p, "%s/%s/stat", path, e->d_name);
        if ((f = fopen(p, "r"))) {
            char buf[512];
            char *rp = fgets(buf, sizeof buf, f) ? strrchr(buf, ')') : NULL;
            if (rp && rp[1] == ' ')
                state = rp[2];
            fclose(f);
        }
        snprintf(p, sizeof p, "%s/%s/wchan", path, e->d_name);
        if ((f = fopen(p, "r"))) {
            if (!fgets(wchan, sizeof wchan, f))
                strcpy(wchan, "?");
            fclose(f);
        }
        printf("SSV-IO: thread %s %s %c %s\n", e->d_name, comm, state, wchan);
        print_proc(pid, e->d_name, "stack", 6);
    }
    closedir(d);
    fflush(stdout);
}

static int stamp(int argc, char **argv)
{
    unsigned limit = 0;
    if (argc >= 3 && strcmp(argv[2], "-t") == 0) {
        if (argc < 4)
            argc = 0;
        else
            limit = (unsigned)strtoul(argv[3], NULL, 10);
        argv += 2;
        argc -= 2;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: ssv-io stamp [-t SECONDS] MARKER CMD [ARGS...]\n");
        return 2;
    }
    const char *marker = argv[2];
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    double start = now();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execvp(argv[3], argv + 3);
        fprintf(stderr, "ssv-io: exec %s: %s\n", argv[3], strerror(errno));
        _exit(127);
    }
    close(p[1]);
    if (limit > 0) {
        /* No SA_RESTART: the alarm ends the read below. */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, NULL);
        alarm(limit);
    }
    FILE *in = fdopen(p[0], "r");
    if (!in)
        die("fdopen");
    char *line = NULL;
    size_t cap = 0;
    int seen = 0;
    while (getline(&line, &cap, in) >= 0) {
        double t = now() - start;
        fputs(line, stdout);
        if (!seen && strstr(line, marker)) {
            seen = 1;
            printf("SSV-IO: stamp %s %.3f\n", marker, t);
        }
        fflush(stdout);
    }
    if (timed_out) {
        printf("SSV-IO: stamp: %s still runs after %u s; its threads:\n", argv[3], limit);
        print_threads(pid);
        kill(pid, SIGKILL);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            die("waitpid");
    alarm(0);
    if (!seen)
        printf("SSV-IO: stamp %s never seen\n", marker);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "randread") == 0)
        return randread(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "stamp") == 0)
        return stamp(argc, argv);
    fprintf(stderr, "usage: ssv-io randread DEV SPAN_MIB SECONDS [JOBS [RATE]] | stamp [-t SECONDS] MARKER CMD [ARGS...]\n");
    return 2;
}

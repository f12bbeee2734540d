/*
 * sanlock's in-process client API, timed: registers with the daemon (whose
 * run dir comes from SANLOCK_RUN_DIR), then acquires and releases one
 * resource exclusively N times, printing one line per iteration:
 *
 *     iter <acquire ns> <release ns>
 *
 * Usage: sanlk_acquire_loop LOCKSPACE:RESOURCE:PATH:OFFSET N
 * Exit status 0 on success; on a failed call prints "error <call> <rv>" and
 * exits 1. Built by the ssv-tests harness at bench time (needs libsanlock-dev).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <sanlock.h>
#include <sanlock_resource.h>

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct sanlk_resource *res = NULL;
	int64_t t0, t1, t2;
	int sock, rv, i, n;

	if (argc != 3) {
		fprintf(stderr, "usage: %s LOCKSPACE:RESOURCE:PATH:OFFSET N\n", argv[0]);
		return 2;
	}
	n = atoi(argv[2]);
	rv = sanlock_str_to_res(argv[1], &res);
	if (rv < 0) {
		printf("error str_to_res %d\n", rv);
		return 1;
	}
	sock = sanlock_register();
	if (sock < 0) {
		printf("error register %d\n", sock);
		return 1;
	}
	for (i = 0; i < n; i++) {
		t0 = now_ns();
		rv = sanlock_acquire(sock, -1, 0, 1, &res, NULL);
		t1 = now_ns();
		if (rv < 0) {
			printf("error acquire %d\n", rv);
			return 1;
		}
		rv = sanlock_release(sock, -1, 0, 1, &res);
		t2 = now_ns();
		if (rv < 0) {
			printf("error release %d\n", rv);
			return 1;
		}
		printf("iter %lld %lld\n", (long long)(t1 - t0), (long long)(t2 - t1));
	}
	fflush(stdout);
	free(res);
	return 0;
}

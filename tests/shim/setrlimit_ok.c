/*
 * LD_PRELOAD shim for running the sanlock daemon in a test container.
 *
 * sanlock 3.8 raises RLIMIT_MEMLOCK, RLIMIT_RTPRIO and RLIMIT_CORE to
 * unlimited at start-up and exits if that fails, which it does without
 * CAP_SYS_RESOURCE. The tests run it with `-l 0` (no mlockall) and `-h 0`
 * (no realtime priority), so the limits are never used: pretending they were
 * set changes nothing else. Built by the ssv-tests harness at test time.
 */
#include <sys/resource.h>

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
	(void)resource;
	(void)rlim;
	return 0;
}

/*
 * cni-bridge-launch: the executable runtimes exec, in front of the PyInstaller bundle.
 *
 * It only relays, as Mercurial's chg client does for its command server: it connects to its own
 * build's agent in its network namespace, checks that root listens there, and sends its argv,
 * whole environment and umask, and as descriptors its stdin, stdout, stderr, the CNI_NETNS it
 * can open and its mount namespace (protocol: cni_bridge/resident/protocol.py). The agent decides
 * everything: it runs the request, writing our stdout and stderr itself, and sends the exit
 * code; or it tells us to exec the bundle, with a directive. With no agent we exec the bundle,
 * whose Python client starts one.
 *
 * At most once: the agent runs the request, and reads stdin, only after our GO. Before GO every
 * failure execs the bundle with stdin untouched; after GO we exec it only with
 * RELAY_VAR=lost:<cniVersion>:<what happened>, which it words as "try again later".
 * Every constant shared with Python comes from the header build.sh generates from it
 * (naming.launcher_header), with the build identity the bundle carries too. C and Linux only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cni-bridge-launch.h"

#define ENGINE_NAME "cni-bridge"
enum { LOST_TIMEOUT = -1, LOST_CLOSED = -2, LOST_BAD = -3 };

extern char **environ;
static char engine[PATH_MAX]; /* the bundle's own executable, beside us */

/* Exec the bundle with our argv and environment, plus what it must know. Never returns. */
static void __attribute__((noreturn)) run_bundle(char **argv, const char *relay)
{
    if (setenv(LAUNCHER_VAR, AGENT_IDENTITY, 1) == 0 && (!relay || setenv(RELAY_VAR, relay, 1) == 0))
        execv(engine, argv);
    /* No bundle: a CNI error all the same ("try again later" if the request may have run). */
    dprintf(1, "{\"cniVersion\":\"1.1.0\",\"code\":%d,\"msg\":\"cni-bridge: cannot execute %s\"}\n",
            relay && !strncmp(relay, RELAY_LOST ":", sizeof RELAY_LOST) ? ERR_TRY_AGAIN_LATER
                                                                        : ERR_INTERNAL,
            engine);
    _exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Socket timeouts for what is left until the deadline (INFINITY: none); -1 once it passed. */
static int arm(int sock, double deadline)
{
    double left = deadline - now();
    long long us = isinf(deadline) ? 0 : (long long)(left * 1e6) + 1;
    struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};
    if (left <= 0)
        return -1;
    if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return -1;
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* All of buf, the first segment with the descriptors if any (nfds > 0); 0 or -1. */
static int send_all(int sock, const unsigned char *buf, size_t len, const int *fds, size_t nfds,
                    double deadline)
{
    union {
        char buf[CMSG_SPACE(8 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    while (len) {
        struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n;
        if (nfds) {
            struct cmsghdr *c;
            memset(&ctl, 0, sizeof ctl);
            msg.msg_control = ctl.buf;
            msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
            c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
            memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
        }
        if (arm(sock, deadline) != 0)
            return -1;
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
        nfds = 0;
    }
    return 0;
}

static int recv_exact(int sock, unsigned char *buf, size_t len, double deadline)
{
    while (len) {
        ssize_t n;
        if (arm(sock, deadline) != 0)
            return LOST_TIMEOUT;
        n = recv(sock, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return LOST_TIMEOUT;
        if (n <= 0)
            return LOST_CLOSED;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One frame into buf (MAX_REPLY + 1 bytes; the payload is NUL-terminated): its kind, or < 0. */
static int recv_frame(int sock, unsigned char *buf, uint32_t *len, double deadline)
{
    unsigned char h[HEADER_SIZE];
    int st = recv_exact(sock, h, sizeof h, deadline);
    if (st)
        return st;
    *len = get32(h + 3);
    if (h[0] != 'C' || h[1] != 'B' || *len > MAX_REPLY)
        return LOST_BAD;
    st = recv_exact(sock, buf, *len, deadline);
    buf[st ? 0 : *len] = 0;
    return st ? st : h[2];
}

int main(int argc, char **argv)
{
    static const unsigned char go[HEADER_SIZE] = {'C', 'B', K_GO, 0, 0, 0, 0};
    static unsigned char reply[MAX_REPLY + 1];
    char self[PATH_MAX], version[MAX_REPLY + 1] = "", relay[2 * MAX_REPLY + 64], *slash;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct ucred cred;
    socklen_t clen = sizeof cred;
    struct stat st;
    int fds[5] = {0, 1, 2, -1, -1}, sock, kind, i;
    size_t nfds = 3, idlen = strlen(AGENT_IDENTITY), alen = 0, elen = 0, paylen;
    const char *netns = getenv("CNI_NETNS");
    unsigned char *frame, *p;
    uint32_t flags = 0, len;
    double deadline;
    mode_t mask;
    char **e;

    /* A runtime may exec us with 0-2 closed: the socket must not become our stdout. */
    for (i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != i)
            _exit(1);
    if (!realpath("/proc/self/exe", self) || !(slash = strrchr(self, '/')) ||
        (size_t)(slash - self) + sizeof "/" ENGINE_NAME > sizeof engine)
        run_bundle(argv, NULL); /* execv(""): fails, and says so */
    memcpy(engine, self, (size_t)(slash - self));
    strcpy(engine + (slash - self), "/" ENGINE_NAME);

    /* This build's agent in this network namespace (naming.name_for), if root listens there. */
    if (stat("/proc/self/ns/net", &st) != 0 ||
        snprintf(addr.sun_path, sizeof addr.sun_path, AGENT_SOCKET_PREFIX "%llu.sock",
                 (unsigned long long)st.st_ino) >= (int)sizeof addr.sun_path)
        run_bundle(argv, NULL);
    deadline = now() + READY_TIMEOUT;
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || arm(sock, deadline) != 0 ||
        connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.uid != 0)
        run_bundle(argv, NULL);

    if (netns && *netns && (fds[nfds] = open(netns, O_PATH | O_CLOEXEC)) >= 0) {
        flags |= FLAG_NETNS_FD;
        nfds++;
    }
    if ((fds[nfds] = open("/proc/self/ns/mnt", O_PATH | O_CLOEXEC)) >= 0) {
        flags |= FLAG_MNTNS_FD;
        nfds++;
    }
    mask = umask(077);
    umask(mask);
    for (i = 1; i < argc; i++)
        alen += strlen(argv[i]) + 1;
    for (e = environ; *e; e++)
        elen += strlen(*e) + 1;
    paylen = REQUEST_HEAD + idlen + alen + elen;
    if (paylen > UINT32_MAX || !(frame = malloc(HEADER_SIZE + paylen)))
        run_bundle(argv, NULL);
    memcpy(frame, "CB", 2);
    frame[2] = K_REQUEST;
    put32(frame + 3, (uint32_t)paylen);
    put32(frame + 7, flags);
    put32(frame + 11, (uint32_t)mask & 0777);
    frame[15] = (unsigned char)(idlen >> 8);
    frame[16] = (unsigned char)idlen;
    put32(frame + 17, (uint32_t)alen);
    put32(frame + 21, (uint32_t)elen);
    p = frame + HEADER_SIZE + REQUEST_HEAD;
    memcpy(p, AGENT_IDENTITY, idlen);
    p += idlen;
    for (i = 1; i < argc; i++)
        p = (unsigned char *)stpcpy((char *)p, argv[i]) + 1;
    for (e = environ; *e; e++)
        p = (unsigned char *)stpcpy((char *)p, *e) + 1;

    /* Not READY in time, or anything odd: nothing ran; the bundle runs it (or starts an agent). */
    if (send_all(sock, frame, HEADER_SIZE + paylen, fds, nfds, deadline) != 0)
        run_bundle(argv, NULL);
    kind = recv_frame(sock, reply, &len, deadline);
    if (kind == K_EXEC)
        run_bundle(argv, (const char *)reply);
    if (kind != K_READY || len != 4 || send_all(sock, go, sizeof go, NULL, 0, now() + READY_TIMEOUT))
        run_bundle(argv, NULL); /* GO not sent whole: the agent cannot have read it */

    /* Committed: the request runs (or ran) in the agent; never run it again from here. */
    deadline = get32(reply) ? now() + get32(reply) / 1000.0 : INFINITY;
    while ((kind = recv_frame(sock, reply, &len, deadline)) == K_RUNNING)
        memcpy(version, reply, len + 1);
    if (kind == K_RESULT && len == 4)
        _exit((int)get32(reply));
    snprintf(relay, sizeof relay, RELAY_LOST ":%s:%s", version,
             kind == LOST_TIMEOUT ? "timeout" : kind == LOST_CLOSED ? "closed" : "bad frame");
    run_bundle(argv, relay);
}

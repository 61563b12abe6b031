/*
 * cni-bridge-launch: the executable runtimes exec, in front of the PyInstaller bundle.
 *
 * Starting the bundle costs ~14 ms before its first line of Python runs (bootloader re-exec,
 * interpreter start-up, module archive); a warm ADD through the resident is ~8 ms of work.
 * This launcher does only the thin client's happy path, natively: connect to the resident's
 * socket, send the request (protocol of cni_bridge/resident/protocol.py), relay the answer.
 * Anything else -- operator commands, no resident, a refusal, a non-root peer, odd input --
 * execs the bundle's own `cni-bridge`, which then behaves exactly as if exec'd directly
 * (it may start a resident, or run the request in-process). So the launcher holds no logic the
 * bundle lacks, and the bundle alone remains a complete plugin.
 *
 * The one-run guarantee is the protocol's: the request runs only after GO. Before GO, every
 * failure falls back to the bundle (with the stdin already read handed over in a memfd).
 * After GO it never runs the request again: it execs the bundle with CNI_BRIDGE_RELAY_FAILED
 * set, and the bundle only writes the CNI "try again later" error for it (error JSON in the
 * request's cniVersion needs a JSON parser, which the bundle has).
 *
 * Two things it does not try to be clever about: after a refusal the bundle's own client asks
 * the resident once more (one extra round trip on a rare path), and without /proc it cannot find
 * the bundle at all and answers a CNI error.
 *
 * Standard C and Linux only; built by build/build.sh with -O2 -Wall -Wextra -Werror.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* These mirror cni_bridge/resident/protocol.py, cni_bridge/resident/client.py,
 * cni_bridge/limits.py and cni_bridge/cli.py; tests/unit/test_launcher_constants.py compares
 * them, tests/integration/test_launcher.py fails if the socket name or framing drift. */
#define PROTOCOL_VERSION 1
#define K_REQUEST 1
#define K_READY 2
#define K_GO 3
#define K_RESULT 4
#define K_REFUSE 5
#define FLAG_NETNS_FD 0x1u
#define MAX_IDENTITY 4096
#define MAX_ENV_BYTES (64 * 1024)
#define MAX_ENV_VARS 256
#define MAX_STDIN_BYTES (1 << 20)
#define MAX_STDOUT (8 * 1024 * 1024)
#define MAX_STDERR (64 * 1024)
#define MAX_REASON 4096
#define HEADER_SIZE 7      /* "CB", kind, u32 length */
#define REQUEST_HEAD 14    /* u32 flags, u32 umask, u16 identity length, u32 env length */
#define RESULT_HEAD 8      /* i32 exit code, u32 stderr length */
#define DEFAULT_READY_TIMEOUT 1.0
#define DEFAULT_TIMEOUT 120.0
#define MAX_SECONDS 1e9 /* client.MAX_SECONDS */
#define RELAY_FAILED_VAR "CNI_BRIDGE_RELAY_FAILED"
#define ENGINE_NAME "cni-bridge"
#define AGENT_DIR "/run/cni-bridge" /* client.AGENT_DIR */

extern char **environ;

static char engine[PATH_MAX];     /* the bundle's own executable */
static int committed;             /* GO was sent: the request may have run */

static int write_all(int fd, const void *buf, size_t len);
static char *stdin_data;          /* what was read from fd 0, once read */
static size_t stdin_len;
static int stdin_read;

/* ---------------------------------------------------------------- falling back to the bundle */

static void __attribute__((noreturn)) die_no_engine(const char *what)
{
    /* Without the bundle nothing can answer properly; a CNI error on stdout all the same:
     * "try again later" once the request may have run (a retry is then the runtime's call),
     * an internal error before. */
    char msg[PATH_MAX + 256];
    int n = snprintf(msg, sizeof msg,
                     "{\"cniVersion\":\"1.1.0\",\"code\":%d,\"msg\":\"cni-bridge: %s\"}\n",
                     committed ? 11 : 999, what);
    if (n > 0)
        write_all(1, msg, (size_t)n); /* if that fails, nothing is left to report it to */
    _exit(1);
}

/* Exec the bundle with the same argv and environment. If stdin was consumed, the bundle gets
 * the same bytes back on fd 0 from a memfd. Never returns. */
static void __attribute__((noreturn)) run_engine(char **argv)
{
    if (stdin_read) {
        int fd = memfd_create("cni-bridge-stdin", MFD_CLOEXEC);
        if (fd < 0 || write_all(fd, stdin_data, stdin_len) != 0)
            die_no_engine("cannot hand stdin over to the bundle");
        /* fds 0-2 are open (main), so the memfd is above them and dup2 is a real copy. */
        if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0)
            die_no_engine("cannot hand stdin over to the bundle");
        close(fd);
    }
    execv(engine, argv);
    die_no_engine("cannot execute the bundle next to the launcher");
}

static void __attribute__((noreturn)) relay_failed(char **argv, const char *reason)
{
    if (setenv(RELAY_FAILED_VAR, reason, 1) != 0)
        die_no_engine("the resident did not complete the request");
    run_engine(argv);
}

/* ---------------------------------------------------------------- small helpers */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int ascii_space(char c)
{
    /* str.strip()'s ASCII whitespace */
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

/* client.env_seconds: a decimal number from 0 to MAX_SECONDS, else the default. */
static double env_seconds(const char *name, double dflt)
{
    const char *s = getenv(name);
    char *end;
    double v;
    if (!s || !*s || strpbrk(s, "xX_"))
        return dflt;
    errno = 0;
    v = strtod(s, &end);
    while (ascii_space(*end))
        end++;
    if (errno || *end || end == s || !(v >= 0) || v > MAX_SECONDS)
        return dflt;
    return v;
}

/* client._MODES: these values of CNI_BRIDGE_RESIDENT turn the resident off. */
static int resident_off(void)
{
    static const char *const off[] = {"0", "off", "no", "false"};
    const char *s = getenv("CNI_BRIDGE_RESIDENT");
    size_t n, i, j;
    if (!s)
        return 0;
    while (ascii_space(*s))
        s++;
    n = strlen(s);
    while (n && ascii_space(s[n - 1]))
        n--;
    for (i = 0; i < sizeof off / sizeof off[0]; i++) {
        if (strlen(off[i]) != n)
            continue;
        for (j = 0; j < n; j++)
            if ((s[j] >= 'A' && s[j] <= 'Z' ? s[j] - 'A' + 'a' : s[j]) != off[i][j])
                break;
        if (j == n)
            return 1;
    }
    return 0;
}

static int resident_verb(const char *cmd)
{
    static const char *const verbs[] = {"ADD", "DEL", "CHECK", "STATUS", "GC"};
    size_t i;
    if (!cmd)
        return 0;
    for (i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (!strcmp(cmd, verbs[i]))
            return 1;
    return 0;
}

static int netns_verb(const char *cmd)
{
    return cmd && (!strcmp(cmd, "ADD") || !strcmp(cmd, "DEL") || !strcmp(cmd, "CHECK"));
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Wait until fd is ready for `events` or the deadline (INFINITY: none) passes: 0 ready,
 * -1 timeout/error. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        double left = deadline - now();
        int ms, r;
        if (left <= 0)
            return -1;
        ms = left > 86400.0 ? 86400000 : (int)(left * 1000.0) + 1;
        r = poll(&p, 1, ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* All of buf, through EINTR and a descriptor someone handed us in non-blocking mode. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, INFINITY) != 0)
                return -1;
            continue;
        }
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* IO_BAD: a whole frame arrived but is not what the protocol allows. */
enum io_status { IO_OK = 0, IO_TIMEOUT, IO_CLOSED, IO_ERROR, IO_BAD };

static enum io_status send_all(int fd, const unsigned char *buf, size_t len, double deadline)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0)
                return now() >= deadline ? IO_TIMEOUT : IO_ERROR;
        } else {
            return IO_ERROR;
        }
    }
    return IO_OK;
}

static enum io_status recv_exact(int fd, unsigned char *buf, size_t len, double deadline)
{
    while (len) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n == 0) {
            return IO_CLOSED;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(fd, POLLIN, deadline) != 0)
                return now() >= deadline ? IO_TIMEOUT : IO_ERROR;
        } else {
            return IO_ERROR;
        }
    }
    return IO_OK;
}

/* One frame header; returns its kind and checks its length against the kind's bound. */
static enum io_status recv_header(int fd, int *kind, uint32_t *len, uint32_t limit,
                                  double deadline)
{
    unsigned char h[HEADER_SIZE];
    enum io_status st = recv_exact(fd, h, sizeof h, deadline);
    if (st != IO_OK)
        return st;
    if (h[0] != 'C' || h[1] != 'B')
        return IO_BAD;
    *kind = h[2];
    *len = get32(h + 3);
    if (*len > limit)
        return IO_BAD;
    return IO_OK;
}

/* ---------------------------------------------------------------- the request */

/* All of stdin up to one byte over the bound, which is enough for the engine to tell "too
 * large" (cli._read_stdin). One allocation: pages never touched cost nothing, and a failure
 * can only happen before anything was read, so the bundle still gets stdin whole. */
static int read_stdin(void)
{
    const size_t cap = (size_t)MAX_STDIN_BYTES + 1;
    stdin_data = malloc(cap);
    if (!stdin_data)
        return -1;
    stdin_read = 1;
    while (stdin_len < cap) {
        ssize_t n = read(0, stdin_data + stdin_len, cap - stdin_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
            wait_fd(0, POLLIN, INFINITY) == 0)
            continue; /* a non-blocking stdin someone handed us */
        if (n < 0)
            return -1; /* an unreadable stdin: the bundle reports it */
        if (n == 0)
            break;
        stdin_len += (size_t)n;
    }
    return 0;
}

/* protocol.is_forwarded */
static int forwarded(const char *name, size_t len)
{
    return (len >= 4 && !memcmp(name, "CNI_", 4)) ||
           (len == 4 && !memcmp(name, "PATH", 4)) || (len == 4 && !memcmp(name, "LANG", 4)) ||
           (len == 6 && !memcmp(name, "LC_ALL", 6)) || (len == 2 && !memcmp(name, "TZ", 2));
}

/* protocol.encode_env over os.environ: first occurrence of a name wins, as in CPython.
 * Returns the blob length, or -1 if it cannot be sent (the bundle then decides). */
static long env_blob(unsigned char *out, size_t cap)
{
    const char *seen[MAX_ENV_VARS];
    size_t seen_len[MAX_ENV_VARS];
    size_t count = 0, used = 0;
    char **e;
    for (e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t nlen, vlen, i;
        int dup = 0;
        if (!eq || eq == *e)
            continue;
        nlen = (size_t)(eq - *e);
        if (!forwarded(*e, nlen))
            continue;
        for (i = 0; i < count; i++)
            if (seen_len[i] == nlen && !memcmp(seen[i], *e, nlen))
                dup = 1;
        if (dup)
            continue;
        if (count == MAX_ENV_VARS)
            return -1;
        seen[count] = *e;
        seen_len[count++] = nlen;
        vlen = strlen(eq + 1);
        if (used + nlen + vlen + 2 > cap)
            return -1;
        memcpy(out + used, *e, nlen + 1 + vlen); /* NAME=value */
        used += nlen + 1 + vlen;
        out[used++] = 0;
    }
    return (long)used;
}

/* client.build_identity + client.name_for for a frozen build. */
static int socket_name(struct sockaddr_un *addr, socklen_t *alen, char *ident, size_t cap)
{
    char exe[PATH_MAX];
    struct stat st;
    uint64_t h = 0xCBF29CE484222325ULL;
    long long mtime_ns;
    const unsigned char *p;
    int n;
    if (!realpath(engine, exe) || stat(exe, &st) != 0) /* os.path.realpath(sys.executable) */
        return -1;
    mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    n = snprintf(ident, cap, "v%d|%s|%llu:%llu:%lld:%lld", PROTOCOL_VERSION, exe,
                 (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                 (long long)st.st_size, mtime_ns);
    if (n < 0 || (size_t)n >= cap || n > MAX_IDENTITY)
        return -1;
    for (p = (const unsigned char *)ident; *p; p++)
        h = (h ^ *p) * 0x100000001B3ULL;
    if (stat("/proc/self/ns/net", &st) != 0)
        return -1;
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    n = snprintf(addr->sun_path, sizeof addr->sun_path, AGENT_DIR "/v%d-%016llx-%llu.sock",
                 PROTOCOL_VERSION, (unsigned long long)h, (unsigned long long)st.st_ino);
    if (n < 0 || (size_t)n >= sizeof addr->sun_path)
        return -1;
    *alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
    return 0;
}

/* client._open_netns: an O_PATH descriptor of a namespace file; -2 if not one (the bundle
 * reports that as it always does). */
static int open_netns(void)
{
    const char *path = getenv("CNI_NETNS");
    struct stat a, b;
    int fd;
    if (!path || !*path)
        return -1;
    fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return -2;
    if (fstat(fd, &a) != 0 || stat("/proc/self/ns/net", &b) != 0 || a.st_dev != b.st_dev) {
        close(fd);
        return -2;
    }
    return fd;
}

static enum io_status send_request(int sock, const unsigned char *frame, size_t len, int nsfd,
                                   double deadline)
{
    size_t sent = 0;
    if (nsfd >= 0) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {.iov_base = (void *)frame, .iov_len = len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *c;
        ssize_t n;
        memset(&ctl, 0, sizeof ctl);
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &nsfd, sizeof nsfd);
        /* The descriptor rides on the first segment; the rest follows plainly. */
        for (;;) {
            n = sendmsg(sock, &msg, MSG_NOSIGNAL);
            if (n > 0)
                break;
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
                wait_fd(sock, POLLOUT, deadline) == 0)
                continue;
            return IO_ERROR;
        }
        sent = (size_t)n;
    }
    return send_all(sock, frame + sent, len - sent, deadline);
}

int main(int argc, char **argv)
{
    static const unsigned char go[HEADER_SIZE] = {'C', 'B', K_GO, 0, 0, 0, 0};
    const char *cmd = getenv("CNI_COMMAND");
    char self[PATH_MAX], ident[PATH_MAX + 128], reason[256];
    struct sockaddr_un addr;
    socklen_t alen;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    double ready_timeout, request_timeout, deadline;
    unsigned char *frame, *env, *payload;
    long envlen;
    size_t identlen, paylen;
    uint32_t rlen, errlen;
    int sock, nsfd, kind;
    mode_t mask;
    enum io_status st;
    char *slash;

    /* A runtime may exec us with 0-2 closed: the socket must not become our stdout. */
    for (kind = 0; kind < 3; kind++)
        if (fcntl(kind, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != kind)
            _exit(1);
    if (!realpath("/proc/self/exe", self) || !(slash = strrchr(self, '/')) ||
        (size_t)(slash - self) + sizeof "/" ENGINE_NAME > sizeof engine)
        die_no_engine("cannot locate the bundle next to the launcher");
    memcpy(engine, self, (size_t)(slash - self));
    strcpy(engine + (slash - self), "/" ENGINE_NAME);

    if (argc > 1 || !resident_verb(cmd) || resident_off() || geteuid() != 0 ||
        getenv(RELAY_FAILED_VAR))
        run_engine(argv);
    ready_timeout = env_seconds("CNI_BRIDGE_RESIDENT_READY_TIMEOUT", DEFAULT_READY_TIMEOUT);
    request_timeout = env_seconds("CNI_BRIDGE_RESIDENT_TIMEOUT", DEFAULT_TIMEOUT);
    if (ready_timeout <= 0 || socket_name(&addr, &alen, ident, sizeof ident) != 0)
        run_engine(argv);

    nsfd = netns_verb(cmd) ? open_netns() : -1;
    if (nsfd == -2)
        run_engine(argv);

    /* No resident (refused, absent, backlog full): the bundle starts one or runs in-process. */
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, alen) != 0)
        run_engine(argv);
    /* Only a root resident may answer (AGENT_DIR is root's alone; this holds regardless). */
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.uid != 0)
        run_engine(argv);

    if (read_stdin() != 0)
        run_engine(argv);
    mask = umask(077);
    umask(mask);

    identlen = strlen(ident);
    env = malloc(MAX_ENV_BYTES);
    if (!env)
        run_engine(argv);
    envlen = env_blob(env, MAX_ENV_BYTES);
    if (envlen < 0)
        run_engine(argv);
    paylen = REQUEST_HEAD + identlen + (size_t)envlen + stdin_len;
    frame = malloc(HEADER_SIZE + paylen);
    if (!frame)
        run_engine(argv);
    frame[0] = 'C';
    frame[1] = 'B';
    frame[2] = K_REQUEST;
    put32(frame + 3, (uint32_t)paylen);
    put32(frame + 7, nsfd >= 0 ? FLAG_NETNS_FD : 0);
    put32(frame + 11, (uint32_t)mask & 0777);
    frame[15] = (unsigned char)(identlen >> 8);
    frame[16] = (unsigned char)identlen;
    put32(frame + 17, (uint32_t)envlen);
    memcpy(frame + HEADER_SIZE + REQUEST_HEAD, ident, identlen);
    memcpy(frame + HEADER_SIZE + REQUEST_HEAD + identlen, env, (size_t)envlen);
    if (stdin_len)
        memcpy(frame + HEADER_SIZE + REQUEST_HEAD + identlen + (size_t)envlen, stdin_data,
               stdin_len);

    deadline = now() + ready_timeout;
    if (send_request(sock, frame, HEADER_SIZE + paylen, nsfd, deadline) != IO_OK)
        run_engine(argv);
    if (recv_header(sock, &kind, &rlen, MAX_REASON, deadline) != IO_OK || kind != K_READY ||
        rlen != 0)
        run_engine(argv); /* REFUSE or anything else: nothing ran */
    /* If GO cannot be sent whole, the server cannot have read it, so nothing runs. */
    if (send_all(sock, go, sizeof go, now() + ready_timeout) != IO_OK)
        run_engine(argv);
    committed = 1;
    if (nsfd >= 0)
        close(nsfd);

    /* Committed: the request runs (or ran) in the resident; never run it again from here. */
    deadline = now() + request_timeout;
    st = recv_header(sock, &kind, &rlen, RESULT_HEAD + MAX_STDERR + MAX_STDOUT, deadline);
    if (st == IO_OK && (kind != K_RESULT || rlen < RESULT_HEAD))
        st = IO_BAD;
    payload = st == IO_OK ? malloc(rlen) : NULL;
    if (st == IO_OK && !payload)
        relay_failed(argv, "connection lost mid-request: out of memory");
    if (st == IO_OK)
        st = recv_exact(sock, payload, rlen, deadline);
    if (st == IO_OK) {
        errlen = get32(payload + 4);
        if (errlen > MAX_STDERR || errlen > rlen - RESULT_HEAD ||
            rlen - RESULT_HEAD - errlen > MAX_STDOUT)
            st = IO_BAD;
    }
    if (st == IO_TIMEOUT) {
        snprintf(reason, sizeof reason, "no answer within %gs", request_timeout);
        relay_failed(argv, reason);
    }
    if (st != IO_OK)
        relay_failed(argv, st == IO_CLOSED ? "connection lost mid-request: peer closed"
                           : st == IO_BAD  ? "connection lost mid-request: bad RESULT frame"
                                           : "connection lost mid-request: receive failed");

    /* As cli.run: stderr text first, then the answer, then exit with the code. A runtime
     * that stopped reading must not turn that code into death by SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    write_all(2, payload + RESULT_HEAD, errlen);
    write_all(1, payload + RESULT_HEAD + errlen, rlen - RESULT_HEAD - errlen);
    _exit((int)get32(payload));
}

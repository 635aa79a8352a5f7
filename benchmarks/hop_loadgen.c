/* Open-loop HTTP/1.1 load at a constant rate, latency measured from each request's intended send time.
 *
 * Built and run by benchmarks/hop_fixed_rate.py (cc -O2). Request i is due at t0 + i/rate, whatever happened to
 * request i-1: it goes out on the first idle kept-alive connection at or after that time, and its latency is
 * counted from when it was due, not from when it could be sent (the correction for coordinated omission that
 * wrk2 makes). A request due while every connection is busy waits, and that wait is part of its latency.
 * h2load --rps is not used for this: it stamps a request when it is submitted, after such a wait, and reports
 * no percentiles.
 *
 * usage: hop_loadgen IP PORT HOST RATE SECONDS CONNECTIONS WARMUP_SECONDS OUTFILE
 * OUTFILE gets one line per answered request after the warm-up: "due_to_answer_ns sent_to_answer_ns status".
 * stdout gets one summary line of key=value pairs.
 * One thread, epoll, a timerfd armed at the next due time (timer slack 1 ns). Loopback use only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { IDLE, BUSY, DEAD };

typedef struct {
    int fd;
    int state;
    int64_t due, sent;
    char buf[8192];
    size_t len;
} Conn;

static struct sockaddr_in addr;
static char request[512];
static size_t request_len;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_conn(Conn *c, int ep, int index) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    c->fd = fd;
    c->state = IDLE;
    c->len = 0;
    return 0;
}

static void drop_conn(Conn *c, int ep) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = DEAD;
    c->len = 0;
}

/* A complete answer in c->buf: its total length and status, 0 if more is needed, -1 if it is not HTTP. */
static long answer_length(Conn *c, int *status, int *closing) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL) return c->len >= sizeof c->buf ? -1 : 0;
    if (c->len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long body = 0;
    *closing = 0;
    for (char *line = memchr(c->buf, '\n', (size_t)(end - c->buf)); line != NULL && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        char *h = line + 1;
        if (strncasecmp(h, "content-length:", 15) == 0) body = atol(h + 15);
        else if (strncasecmp(h, "connection:", 11) == 0 && strncasecmp(h + 11, " close", 6) == 0) *closing = 1;
    }
    long total = (long)(end + 4 - c->buf) + body;
    return (long)c->len >= total ? total : 0;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s IP PORT HOST RATE SECONDS CONNECTIONS WARMUP_SECONDS OUTFILE\n", argv[0]);
        return 2;
    }
    double rate = atof(argv[4]), seconds = atof(argv[5]), warmup = atof(argv[7]);
    int nconn = atoi(argv[6]);
    if (rate <= 0 || seconds <= 0 || nconn <= 0 || warmup < 0) { fprintf(stderr, "bad arguments\n"); return 2; }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "bad IP\n"); return 2; }
    request_len = (size_t)snprintf(request, sizeof request, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", argv[3]);
    FILE *out = fopen(argv[8], "w");
    if (out == NULL) { perror("OUTFILE"); return 2; }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

    int ep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    Conn *conns = calloc((size_t)nconn, sizeof(Conn));
    int *idle = calloc((size_t)nconn, sizeof(int));   /* a FIFO ring of idle connections */
    int idle_head = 0, idle_count = 0;
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = -1;
        if (open_conn(&conns[i], ep, i) < 0) { fprintf(stderr, "cannot connect to %s:%s\n", argv[1], argv[2]); return 1; }
        idle[(idle_head + idle_count++) % nconn] = i;
    }

    const double interval = 1e9 / rate;
    const int64_t t0 = now_ns() + 1000000;  /* 1 ms from now */
    const int64_t record_from = t0 + (int64_t)(warmup * 1e9);
    const int64_t end = record_from + (int64_t)(seconds * 1e9);
    const int64_t grace = 2000000000LL;   /* answers still awaited 2 s after the end are timeouts */
    int64_t next = 0;                       /* index of the next request due */
    long answered = 0, failed = 0, non2xx = 0, due_total = 0, reconnects = 0;
    int inflight = 0;
    struct epoll_event events[64];

    for (;;) {
        int64_t now = now_ns();
        int64_t due = t0 + (int64_t)((double)next * interval);
        /* dispatch every request due, while a connection is free */
        while (due <= now && due < end && idle_count > 0) {
            int i = idle[idle_head];
            idle_head = (idle_head + 1) % nconn;
            idle_count--;
            Conn *c = &conns[i];
            if (c->state == DEAD && open_conn(c, ep, i) < 0) {
                reconnects++;
                if (due >= record_from) failed++;
                next++;
                idle[(idle_head + idle_count++) % nconn] = i;   /* try it again for the next request */
                due = t0 + (int64_t)((double)next * interval);
                continue;
            }
            c->due = due;
            c->sent = now_ns();
            c->state = BUSY;
            inflight++;
            if (write(c->fd, request, request_len) != (ssize_t)request_len) {
                drop_conn(c, ep);
                inflight--;
                if (due >= record_from) failed++;
                idle[(idle_head + idle_count++) % nconn] = i;
            }
            next++;
            due = t0 + (int64_t)((double)next * interval);
        }
        if (due >= end && inflight == 0) break;
        if (now > end + grace) break;
        /* sleep until the next due time (if a connection is free to take it) or an answer */
        struct itimerspec its = {0};
        if (due < end && idle_count > 0) {
            its.it_value.tv_sec = due / 1000000000LL;
            its.it_value.tv_nsec = due % 1000000000LL;
        } else if (due >= end) {
            int64_t stop = end + grace;
            its.it_value.tv_sec = stop / 1000000000LL;
            its.it_value.tv_nsec = stop % 1000000000LL;
        }
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int k = 0; k < n; k++) {
            uint32_t index = events[k].data.u32;
            if (index == UINT32_MAX) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0) { /* nothing: spurious wake-up */ }
                continue;
            }
            Conn *c = &conns[index];
            if (c->state != BUSY) {   /* the server closed an idle connection */
                char scratch[256];
                if (read(c->fd, scratch, sizeof scratch) <= 0) {
                    drop_conn(c, ep);   /* stays in the idle ring, reconnected when taken */
                }
                continue;
            }
            ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            int status = 0, closing = 0;
            long total = 0;
            if (got > 0) {
                c->len += (size_t)got;
                total = answer_length(c, &status, &closing);
                if (total == 0) continue;
            }
            int64_t done = now_ns();
            inflight--;
            if (got <= 0 || total < 0) {
                if (c->due >= record_from) failed++;
                drop_conn(c, ep);
            } else {
                if (c->due >= record_from) {
                    answered++;
                    if (status < 200 || status > 299) non2xx++;
                    fprintf(out, "%lld %lld %d\n", (long long)(done - c->due), (long long)(done - c->sent), status);
                }
                memmove(c->buf, c->buf + total, c->len - (size_t)total);
                c->len -= (size_t)total;
                c->state = IDLE;
                if (closing) drop_conn(c, ep);
            }
            idle[(idle_head + idle_count++) % nconn] = (int)index;
        }
    }
    for (int64_t i = 0; i < next; i++) {
        if (t0 + (int64_t)((double)i * interval) >= record_from) due_total++;
    }
    long unfinished = 0;
    for (int i = 0; i < nconn; i++) {
        if (conns[i].state == BUSY && conns[i].due >= record_from) unfinished++;
    }
    /* requests due before the end that were never sent (every connection busy until the grace ran out) */
    int64_t never = 0;
    for (int64_t i = next;; i++) {
        int64_t d = t0 + (int64_t)((double)i * interval);
        if (d >= end) break;
        if (d >= record_from) never++;
    }
    fclose(out);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("due=%lld answered=%ld non2xx=%ld failed=%ld timeouts=%ld unsent=%lld reconnect_failures=%ld "
           "requests_total=%lld cpu_s=%.6f\n",
           (long long)(due_total + never), answered, non2xx, failed, unfinished, (long long)never, reconnects,
           (long long)next,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}

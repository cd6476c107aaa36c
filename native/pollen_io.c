/*
 * pollen_io — chunk I/O: synchronous calls, and the io_uring and Linux AIO engines. See
 * pollen_io.h for the conventions: every function returns 0 or a positive errno and writes its
 * results into caller-owned memory.
 *
 * No liburing or libaio: both engines talk to the kernel through raw system calls and the
 * structures of <linux/io_uring.h> and <linux/aio_abi.h>, so the only build dependencies are
 * libc and the kernel headers.
 */
#define _GNU_SOURCE /* O_DIRECT */
#define _FILE_OFFSET_BITS 64

#include "pollen_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <linux/aio_abi.h>
#include <linux/io_uring.h>

int pollen_version(void)
{
    return POLLEN_IO_VERSION;
}

int pollen_o_direct(void)
{
#ifdef O_DIRECT
    return O_DIRECT;
#else
    return 0;
#endif
}

/* A range [offset, offset + len) must be addressable as off_t; checked once up front so the
 * loops below can add without overflow. */
static int check_range(int64_t offset, size_t len)
{
    if (offset < 0)
        return EINVAL;
    if ((uint64_t)len > (uint64_t)(INT64_MAX - offset))
        return EOVERFLOW;
    return 0;
}

int pollen_pread_full(int fd, void *buf, size_t len, int64_t offset, size_t *done)
{
    size_t total = 0;
    int status;

    if (done == NULL || (buf == NULL && len > 0))
        return EINVAL;
    *done = 0;
    status = check_range(offset, len);
    if (status != 0)
        return status;

    while (total < len) {
        ssize_t n = pread(fd, (char *)buf + total, len - total, (off_t)(offset + (int64_t)total));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            status = errno;
            break;
        }
        if (n == 0)
            break; /* end of file: a short result, not an error */
        total += (size_t)n;
    }
    *done = total;
    return status;
}

int pollen_pwrite_full(int fd, const void *buf, size_t len, int64_t offset, size_t *done)
{
    size_t total = 0;
    int status;

    if (done == NULL || (buf == NULL && len > 0))
        return EINVAL;
    *done = 0;
    status = check_range(offset, len);
    if (status != 0)
        return status;

    while (total < len) {
        ssize_t n = pwrite(fd, (const char *)buf + total, len - total,
                           (off_t)(offset + (int64_t)total));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            status = errno;
            break;
        }
        if (n == 0) {
            /* pwrite never returns 0 for a non-empty write on a regular file; treat it as an
             * I/O error rather than spin forever. */
            status = EIO;
            break;
        }
        total += (size_t)n;
    }
    *done = total;
    return status;
}

int pollen_fallocate(int fd, int64_t offset, int64_t len)
{
    int status;

    if (offset < 0 || len <= 0)
        return EINVAL;
    do {
        /* posix_fallocate returns the error number; it does not set errno. */
        status = posix_fallocate(fd, (off_t)offset, (off_t)len);
    } while (status == EINTR);
    return status;
}

int pollen_open(const char *path, int flags, int mode, int *fd_out)
{
    int fd;

    if (path == NULL || fd_out == NULL)
        return EINVAL;
    *fd_out = -1;
    do {
        fd = open(path, flags, (mode_t)mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    *fd_out = fd;
    return 0;
}

int pollen_close(int fd)
{
    if (close(fd) == 0)
        return 0;
    /* On Linux the fd is released even when close() reports EINTR, and retrying could close
     * an fd another thread has just been given, so EINTR counts as closed. */
    if (errno == EINTR)
        return 0;
    return errno;
}

int pollen_fsync(int fd)
{
    int rc;

    do {
        rc = fsync(fd);
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
}

/* ---- asynchronous engines ------------------------------------------------------------ */

/*
 * Theory of operation.
 *
 * Both engines have the same shape: submit() hands one operation to the kernel and returns;
 * the kernel signals the engine's eventfd when an operation finishes (io_uring through
 * IORING_REGISTER_EVENTFD, AIO through IOCB_FLAG_RESFD on every iocb); reap() clears the
 * eventfd and collects what has finished, without blocking. The Python side waits for the
 * eventfd in the trio event loop, so no thread waits per request.
 *
 * io_uring: the ring is set up with io_uring_setup and the three regions (SQ ring, CQ ring,
 * SQE array) are mmap-ed. We are the only producer of SQEs and the only consumer of CQEs, on
 * one thread: the SQ tail and CQ head are ours (published with release stores), the SQ head
 * and CQ tail are the kernel's (read with acquire loads). Each submit() enters the kernel with
 * one SQE, so the SQ never holds more than that one entry. The CQ has twice as many entries
 * as the SQ and in_flight never exceeds queue_depth <= SQ entries, so the CQ cannot overflow.
 *
 * AIO: io_setup for queue_depth events, io_submit one iocb at a time (the kernel copies it, so
 * it lives on the stack), io_getevents with a zero timeout to reap. Linux AIO is only truly
 * asynchronous with O_DIRECT; on a buffered fd io_submit does the I/O before returning.
 *
 * in_flight counts operations the kernel has accepted and we have not reaped; close() waits
 * for it to reach zero before tearing down, so the kernel never writes into memory after the
 * caller was told the engine is closed.
 */

#define POLLEN_MAX_DEPTH 4096u
/* The most a single read or write may transfer (MAX_RW_COUNT in the kernel). */
#define POLLEN_MAX_IO ((size_t)0x7ffff000)

struct pollen_engine {
    int kind;
    int eventfd;
    unsigned int depth;
    unsigned int in_flight;

    /* io_uring */
    int ring_fd;
    void *sq_map;
    size_t sq_map_size;
    void *cq_map; /* == sq_map with IORING_FEAT_SINGLE_MMAP */
    size_t cq_map_size;
    struct io_uring_sqe *sqes;
    size_t sqes_size;
    unsigned int *sq_head, *sq_tail, *sq_array;
    unsigned int sq_mask, sq_entries;
    unsigned int *cq_head, *cq_tail;
    unsigned int cq_mask;
    struct io_uring_cqe *cqes;

    /* AIO */
    aio_context_t aio_ctx;
    struct io_event *events; /* depth entries, scratch for io_getevents */
};

static void clear_eventfd(int fd)
{
    uint64_t value;
    ssize_t n;

    do {
        n = read(fd, &value, sizeof value);
    } while (n < 0 && errno == EINTR);
    /* EAGAIN: nothing was pending, which is fine. */
}

/* -- io_uring -- */

#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter) && \
    defined(__NR_io_uring_register)
#define POLLEN_HAVE_URING 1

static int uring_setup(unsigned int entries, struct io_uring_params *params)
{
    return (int)syscall(__NR_io_uring_setup, entries, params);
}

static int uring_enter(int fd, unsigned int to_submit, unsigned int min_complete,
                       unsigned int flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static int uring_register(int fd, unsigned int opcode, void *arg, unsigned int nr_args)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

/* Whether the kernel's io_uring knows IORING_OP_READ and IORING_OP_WRITE (Linux 5.6+). */
static int uring_probe(int ring_fd)
{
    size_t size = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, size);
    int status = 0;

    if (probe == NULL)
        return ENOMEM;
    if (uring_register(ring_fd, IORING_REGISTER_PROBE, probe, 256) < 0) {
        status = errno == EINVAL ? EOPNOTSUPP : errno; /* EINVAL: no probe, kernel < 5.6 */
    } else if (probe->last_op < IORING_OP_WRITE ||
               !(probe->ops[IORING_OP_READ].flags & IO_URING_OP_SUPPORTED) ||
               !(probe->ops[IORING_OP_WRITE].flags & IO_URING_OP_SUPPORTED)) {
        status = EOPNOTSUPP;
    }
    free(probe);
    return status;
}

static void uring_unmap(struct pollen_engine *e)
{
    if (e->sqes != NULL)
        munmap(e->sqes, e->sqes_size);
    if (e->cq_map != NULL && e->cq_map != e->sq_map)
        munmap(e->cq_map, e->cq_map_size);
    if (e->sq_map != NULL)
        munmap(e->sq_map, e->sq_map_size);
    e->sqes = NULL;
    e->cq_map = e->sq_map = NULL;
}

static int uring_open(struct pollen_engine *e)
{
    struct io_uring_params p;
    char *sq, *cq;
    int status;

    memset(&p, 0, sizeof p);
    e->ring_fd = uring_setup(e->depth, &p);
    if (e->ring_fd < 0)
        return errno;
    status = uring_probe(e->ring_fd);
    if (status != 0)
        return status;

    e->sq_map_size = p.sq_off.array + p.sq_entries * sizeof(unsigned int);
    e->cq_map_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (e->cq_map_size > e->sq_map_size)
            e->sq_map_size = e->cq_map_size;
        e->cq_map_size = e->sq_map_size;
    }
    e->sq_map = mmap(NULL, e->sq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     e->ring_fd, IORING_OFF_SQ_RING);
    if (e->sq_map == MAP_FAILED) {
        e->sq_map = NULL;
        return errno;
    }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        e->cq_map = e->sq_map;
    } else {
        e->cq_map = mmap(NULL, e->cq_map_size, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_POPULATE, e->ring_fd, IORING_OFF_CQ_RING);
        if (e->cq_map == MAP_FAILED) {
            e->cq_map = NULL;
            return errno;
        }
    }
    e->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    e->sqes = mmap(NULL, e->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   e->ring_fd, IORING_OFF_SQES);
    if (e->sqes == MAP_FAILED) {
        e->sqes = NULL;
        return errno;
    }

    sq = e->sq_map;
    cq = e->cq_map;
    e->sq_head = (unsigned int *)(sq + p.sq_off.head);
    e->sq_tail = (unsigned int *)(sq + p.sq_off.tail);
    e->sq_mask = *(unsigned int *)(sq + p.sq_off.ring_mask);
    e->sq_entries = *(unsigned int *)(sq + p.sq_off.ring_entries);
    e->sq_array = (unsigned int *)(sq + p.sq_off.array);
    e->cq_head = (unsigned int *)(cq + p.cq_off.head);
    e->cq_tail = (unsigned int *)(cq + p.cq_off.tail);
    e->cq_mask = *(unsigned int *)(cq + p.cq_off.ring_mask);
    e->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    if (uring_register(e->ring_fd, IORING_REGISTER_EVENTFD, &e->eventfd, 1) < 0)
        return errno;
    return 0;
}

static int uring_submit(struct pollen_engine *e, int op, int fd, void *buf, size_t len,
                        int64_t offset, uint64_t tag)
{
    unsigned int tail = *e->sq_tail; /* ours: no other writer */
    unsigned int head = __atomic_load_n(e->sq_head, __ATOMIC_ACQUIRE);
    unsigned int index;
    struct io_uring_sqe *sqe;
    int rc;

    if (tail - head >= e->sq_entries)
        return EBUSY; /* cannot happen: every submit is consumed before returning */
    index = tail & e->sq_mask;
    sqe = &e->sqes[index];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = op == POLLEN_OP_READ ? IORING_OP_READ : IORING_OP_WRITE;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = (uint32_t)len;
    sqe->off = (uint64_t)offset;
    sqe->user_data = tag;
    e->sq_array[index] = index;
    __atomic_store_n(e->sq_tail, tail + 1, __ATOMIC_RELEASE);

    do {
        rc = uring_enter(e->ring_fd, 1, 0, 0);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        int status = errno;
        /* Not consumed (EAGAIN, EBUSY, ENOMEM...): take the SQE back, so it is not submitted
         * later behind the caller's back. Nothing else reads the tail between our calls. */
        if (__atomic_load_n(e->sq_head, __ATOMIC_ACQUIRE) == tail)
            __atomic_store_n(e->sq_tail, tail, __ATOMIC_RELEASE);
        return status;
    }
    if (rc == 0) {
        if (__atomic_load_n(e->sq_head, __ATOMIC_ACQUIRE) == tail)
            __atomic_store_n(e->sq_tail, tail, __ATOMIC_RELEASE);
        return EAGAIN;
    }
    return 0;
}

static size_t uring_reap(struct pollen_engine *e, struct pollen_completion *out, size_t max)
{
    unsigned int head = *e->cq_head; /* ours */
    unsigned int tail = __atomic_load_n(e->cq_tail, __ATOMIC_ACQUIRE);
    size_t n = 0;

    while (head != tail && n < max) {
        const struct io_uring_cqe *cqe = &e->cqes[head & e->cq_mask];
        if (out != NULL) {
            out[n].tag = cqe->user_data;
            out[n].status = cqe->res < 0 ? -cqe->res : 0;
            out[n].result = cqe->res < 0 ? 0 : cqe->res;
        }
        head++;
        n++;
    }
    __atomic_store_n(e->cq_head, head, __ATOMIC_RELEASE);
    return n;
}

static void uring_drain(struct pollen_engine *e)
{
    while (e->in_flight > 0) {
        size_t n = uring_reap(e, NULL, e->in_flight);
        if (n > 0) {
            e->in_flight -= (unsigned int)n;
            continue;
        }
        if (uring_enter(e->ring_fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            break; /* the ring is unusable; closing it makes the kernel cancel what is left */
    }
}

static void uring_close(struct pollen_engine *e)
{
    uring_unmap(e);
    if (e->ring_fd >= 0)
        close(e->ring_fd);
    e->ring_fd = -1;
}
#else
#define POLLEN_HAVE_URING 0
#endif

/* -- Linux AIO -- */

#if defined(__NR_io_setup) && defined(__NR_io_destroy) && defined(__NR_io_submit) && \
    (defined(__NR_io_getevents) || defined(__NR_io_pgetevents))
#define POLLEN_HAVE_AIO 1

static int aio_setup(unsigned int nr, aio_context_t *ctx)
{
    return (int)syscall(__NR_io_setup, nr, ctx);
}

static int aio_destroy(aio_context_t ctx)
{
    return (int)syscall(__NR_io_destroy, ctx);
}

static int aio_submit(aio_context_t ctx, long nr, struct iocb **iocbs)
{
    return (int)syscall(__NR_io_submit, ctx, nr, iocbs);
}

static int aio_getevents(aio_context_t ctx, long min_nr, long nr, struct io_event *events,
                         struct timespec *timeout)
{
#ifdef __NR_io_getevents
    return (int)syscall(__NR_io_getevents, ctx, min_nr, nr, events, timeout);
#else
    return (int)syscall(__NR_io_pgetevents, ctx, min_nr, nr, events, timeout, NULL);
#endif
}

static int aio_open(struct pollen_engine *e)
{
    e->events = calloc(e->depth, sizeof *e->events);
    if (e->events == NULL)
        return ENOMEM;
    if (aio_setup(e->depth, &e->aio_ctx) < 0) {
        e->aio_ctx = 0;
        return errno;
    }
    return 0;
}

static int aio_submit_one(struct pollen_engine *e, int op, int fd, void *buf, size_t len,
                          int64_t offset, uint64_t tag)
{
    struct iocb cb;
    struct iocb *list[1] = {&cb};
    int rc;

    memset(&cb, 0, sizeof cb);
    cb.aio_data = tag;
    cb.aio_lio_opcode = op == POLLEN_OP_READ ? IOCB_CMD_PREAD : IOCB_CMD_PWRITE;
    cb.aio_fildes = (uint32_t)fd;
    cb.aio_buf = (uint64_t)(uintptr_t)buf;
    cb.aio_nbytes = len;
    cb.aio_offset = offset;
    cb.aio_flags = IOCB_FLAG_RESFD;
    cb.aio_resfd = (uint32_t)e->eventfd;
    do {
        rc = aio_submit(e->aio_ctx, 1, list);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return errno;
    return rc == 1 ? 0 : EAGAIN;
}

static size_t aio_reap(struct pollen_engine *e, struct pollen_completion *out, size_t max)
{
    struct timespec zero = {0, 0};
    size_t total = 0;

    while (total < max) {
        size_t want = max - total;
        int n, i;

        if (want > e->depth)
            want = e->depth;
        n = aio_getevents(e->aio_ctx, 0, (long)want, e->events, &zero);
        if (n <= 0)
            break; /* nothing finished (or EINTR: the eventfd stays readable if there is) */
        for (i = 0; i < n; i++) {
            int64_t res = (int64_t)e->events[i].res;
            out[total + i].tag = e->events[i].data;
            out[total + i].status = res < 0 ? (int32_t)-res : 0;
            out[total + i].result = res < 0 ? 0 : res;
        }
        total += (size_t)n;
        if ((size_t)n < want)
            break;
    }
    return total;
}

static void aio_drain(struct pollen_engine *e)
{
    while (e->in_flight > 0) {
        int n = aio_getevents(e->aio_ctx, 1, e->depth, e->events, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* io_destroy below still waits for whatever is left */
        }
        e->in_flight -= (unsigned int)n;
    }
}

static void aio_close(struct pollen_engine *e)
{
    if (e->aio_ctx != 0)
        aio_destroy(e->aio_ctx); /* waits for operations still running */
    e->aio_ctx = 0;
    free(e->events);
    e->events = NULL;
}
#else
#define POLLEN_HAVE_AIO 0
#endif

/* -- the common interface -- */

static void engine_free(struct pollen_engine *e)
{
#if POLLEN_HAVE_URING
    if (e->kind == POLLEN_ENGINE_IO_URING)
        uring_close(e);
#endif
#if POLLEN_HAVE_AIO
    if (e->kind == POLLEN_ENGINE_AIO)
        aio_close(e);
#endif
    if (e->eventfd >= 0)
        close(e->eventfd);
    free(e);
}

int pollen_engine_open(int kind, unsigned int queue_depth, struct pollen_engine **engine_out,
                       int *eventfd_out)
{
    struct pollen_engine *e;
    int status;

    if (engine_out == NULL || eventfd_out == NULL)
        return EINVAL;
    *engine_out = NULL;
    *eventfd_out = -1;
    if (queue_depth == 0 || queue_depth > POLLEN_MAX_DEPTH)
        return EINVAL;
    if (kind != POLLEN_ENGINE_IO_URING && kind != POLLEN_ENGINE_AIO)
        return EINVAL;
    if ((kind == POLLEN_ENGINE_IO_URING && !POLLEN_HAVE_URING) ||
        (kind == POLLEN_ENGINE_AIO && !POLLEN_HAVE_AIO))
        return ENOSYS;

    e = calloc(1, sizeof *e);
    if (e == NULL)
        return ENOMEM;
    e->kind = kind;
    e->depth = queue_depth;
    e->ring_fd = -1;
    e->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->eventfd < 0) {
        status = errno;
        free(e);
        return status;
    }
    status = ENOSYS;
#if POLLEN_HAVE_URING
    if (kind == POLLEN_ENGINE_IO_URING)
        status = uring_open(e);
#endif
#if POLLEN_HAVE_AIO
    if (kind == POLLEN_ENGINE_AIO)
        status = aio_open(e);
#endif
    if (status != 0) {
        engine_free(e);
        return status;
    }
    *engine_out = e;
    *eventfd_out = e->eventfd;
    return 0;
}

int pollen_engine_submit(struct pollen_engine *engine, int op, int fd, void *buf, size_t len,
                         int64_t offset, uint64_t tag)
{
    int status = ENOSYS;

    if (engine == NULL || (buf == NULL && len > 0))
        return EINVAL;
    if (op != POLLEN_OP_READ && op != POLLEN_OP_WRITE)
        return EINVAL;
    status = check_range(offset, len);
    if (status != 0)
        return status;
    if (engine->in_flight >= engine->depth)
        return EBUSY;
    if (len > POLLEN_MAX_IO)
        len = POLLEN_MAX_IO; /* a short transfer; the caller continues */

#if POLLEN_HAVE_URING
    if (engine->kind == POLLEN_ENGINE_IO_URING)
        status = uring_submit(engine, op, fd, buf, len, offset, tag);
#endif
#if POLLEN_HAVE_AIO
    if (engine->kind == POLLEN_ENGINE_AIO)
        status = aio_submit_one(engine, op, fd, buf, len, offset, tag);
#endif
    if (status == 0)
        engine->in_flight++;
    return status;
}

int pollen_engine_reap(struct pollen_engine *engine, struct pollen_completion *out, size_t max,
                       size_t *count)
{
    size_t n = 0;

    if (count == NULL)
        return EINVAL;
    *count = 0;
    if (engine == NULL || (out == NULL && max > 0))
        return EINVAL;
    /* Clear first: a completion that lands after the clear either is collected below or
     * makes the eventfd readable again. */
    clear_eventfd(engine->eventfd);
#if POLLEN_HAVE_URING
    if (engine->kind == POLLEN_ENGINE_IO_URING)
        n = uring_reap(engine, out, max);
#endif
#if POLLEN_HAVE_AIO
    if (engine->kind == POLLEN_ENGINE_AIO)
        n = aio_reap(engine, out, max);
#endif
    engine->in_flight -= (unsigned int)n;
    *count = n;
    return 0;
}

int pollen_engine_close(struct pollen_engine *engine)
{
    if (engine == NULL)
        return EINVAL;
#if POLLEN_HAVE_URING
    if (engine->kind == POLLEN_ENGINE_IO_URING)
        uring_drain(engine);
#endif
#if POLLEN_HAVE_AIO
    if (engine->kind == POLLEN_ENGINE_AIO)
        aio_drain(engine);
#endif
    engine_free(engine);
    return 0;
}

/*
 * pollen_io — the native chunk I/O used by agent/native.py (through cffi).
 *
 * Conventions (the same for every function, present and future):
 *   - Every exported symbol starts with "pollen_".
 *   - A function returns an int status: 0 on success, or a positive errno value. errno itself
 *     is never the interface, because the caller (cffi, on a worker thread) must not have to
 *     race to read it.
 *   - Results go into caller-owned buffers and out-parameters; this library never allocates
 *     memory the caller must free (the engine handle, freed by pollen_engine_close, is the one
 *     exception), and keeps no global state.
 *
 * build.py feeds this file to ffibuilder.cdef() after dropping every line that starts with
 * '#', so outside preprocessor lines this header must stay plain declarations that cffi's
 * parser accepts: no macros in declarations, no multi-line preprocessor directives.
 *
 * Versioning: POLLEN_IO_VERSION is baked into the compiled module and returned by
 * pollen_version(). agent/native.py refuses to load a module whose version differs from its
 * EXPECTED_NATIVE_VERSION, which catches a stale build after `git pull`. Bump it whenever a
 * declaration here is added or changes meaning.
 *
 * Two families of calls:
 *   - synchronous calls (pollen_pread_full, pollen_open, ...) that may block on the disk;
 *     Python runs them on worker threads with the GIL released (the plain pread engine);
 *   - the asynchronous engines, io_uring and Linux AIO, behind one opaque handle
 *     (struct pollen_engine). pollen_engine_open() sets one up together with an eventfd that
 *     becomes readable when completions are waiting; pollen_engine_submit() queues one read or
 *     write and returns at once; pollen_engine_reap() collects finished operations without
 *     blocking; pollen_engine_close() waits for the operations still in flight and releases
 *     everything. The engine handle is the one thing this library allocates: it is freed by
 *     pollen_engine_close(), and nothing else is kept between calls.
 *
 * The caller (agent/native.py) keeps every buffer handed to pollen_engine_submit() alive until
 * that operation's completion has been reaped (or pollen_engine_close() has returned), and never
 * has more than queue_depth operations in flight (pollen_engine_submit() refuses with EBUSY).
 * A handle is used by one thread at a time (the trio thread); it is not thread-safe.
 */
#ifndef POLLEN_IO_H
#define POLLEN_IO_H

#include <stddef.h>
#include <stdint.h>

#define POLLEN_IO_VERSION 2

/* The POLLEN_IO_VERSION this module was compiled with. (Not a status.) */
int pollen_version(void);

/* The platform's O_DIRECT open flag, or 0 where the platform has none. (Not a status.) */
int pollen_o_direct(void);

/*
 * Read up to len bytes at offset into buf, looping over short reads and EINTR until len bytes
 * are read or end of file. *done is the number of bytes read, also when an error is returned
 * (the bytes before the error are in buf). Fewer than len bytes with status 0 means EOF.
 */
int pollen_pread_full(int fd, void *buf, size_t len, int64_t offset, size_t *done);

/*
 * Write all len bytes of buf at offset, looping over short writes and EINTR. *done is the
 * number of bytes written, also when an error is returned.
 */
int pollen_pwrite_full(int fd, const void *buf, size_t len, int64_t offset, size_t *done);

/* Reserve disk blocks for [offset, offset + len) with posix_fallocate; returns its status. */
int pollen_fallocate(int fd, int64_t offset, int64_t len);

/* open(2) with flags and mode as the platform defines them; the new fd goes to *fd_out. */
int pollen_open(const char *path, int flags, int mode, int *fd_out);

/* close(2). The fd is released even when an error is returned. */
int pollen_close(int fd);

/* fsync(2), retried on EINTR. */
int pollen_fsync(int fd);

/* ---- asynchronous engines ------------------------------------------------------------ */

/* Engine kinds for pollen_engine_open. */
enum pollen_engine_kind { POLLEN_ENGINE_IO_URING = 1, POLLEN_ENGINE_AIO = 2 };

/* Operations for pollen_engine_submit. */
enum pollen_op { POLLEN_OP_READ = 1, POLLEN_OP_WRITE = 2 };

/* An io_uring ring or a Linux AIO context, with its eventfd. Opaque. */
struct pollen_engine;

/* One finished operation, as pollen_engine_reap reports it. */
struct pollen_completion {
    uint64_t tag;    /* the tag given to pollen_engine_submit */
    int64_t result;  /* bytes transferred when status is 0 (fewer than asked: EOF or short) */
    int32_t status;  /* 0, or the positive errno the operation failed with */
};

/*
 * Open an engine of the given kind for at most queue_depth (1..4096) operations in flight.
 * On success *engine_out is the handle and *eventfd_out an eventfd (non-blocking, close-on-exec,
 * owned by the engine: do not close or read it) that is readable while completions wait.
 * Fails with the kernel's errno when the kind is unavailable (ENOSYS or EPERM when io_uring
 * or AIO is compiled out or forbidden by seccomp, EOPNOTSUPP when the kernel's io_uring lacks
 * plain read/write, EAGAIN when fs.aio-max-nr is exhausted), EINVAL for a bad argument.
 */
int pollen_engine_open(int kind, unsigned int queue_depth, struct pollen_engine **engine_out,
                       int *eventfd_out);

/*
 * Start one read or write of len bytes at offset on fd, from or into buf, and return without
 * waiting. tag comes back in the completion. An operation may transfer less than asked (at
 * most 0x7ffff000 bytes are asked of the kernel at once); the caller continues from there.
 * A status here means the operation was not started (EBUSY: queue_depth already in flight;
 * with AIO also EBADF, EINVAL for a bad fd or request); errors found once started (ENOSPC,
 * EIO, and with io_uring EBADF...) arrive in the completion instead. Linux AIO returns at
 * once only for O_DIRECT I/O that needs no block allocation; otherwise io_submit itself
 * waits for the disk (buffered I/O, or writes that extend a file on ext4).
 */
int pollen_engine_submit(struct pollen_engine *engine, int op, int fd, void *buf, size_t len,
                         int64_t offset, uint64_t tag);

/*
 * Collect up to max finished operations into out, without blocking; *count is how many.
 * Clears the eventfd first, so after a call that returned fewer than max, the eventfd becomes
 * readable again only for completions that arrive later.
 */
int pollen_engine_reap(struct pollen_engine *engine, struct pollen_completion *out, size_t max,
                       size_t *count);

/*
 * Wait (blocking) for the operations still in flight, discard their completions, and release
 * the ring or context, the eventfd and the handle. The handle is invalid afterwards, also when
 * an error is returned. Waiting means the kernel can no longer write into a caller's buffer
 * once this returns; it also means an operation that never completes (a read from an idle
 * pipe) blocks it, so engines are for files.
 */
int pollen_engine_close(struct pollen_engine *engine);

#endif /* POLLEN_IO_H */

/*
 * pollen_io — the native chunk I/O used by agent/native.py (through cffi).
 *
 * Conventions (the same for every function, present and future):
 *   - Every exported symbol starts with "pollen_".
 *   - A function returns an int status: 0 on success, or a positive errno value. errno itself
 *     is never the interface, because the caller (cffi, on a worker thread) must not have to
 *     race to read it.
 *   - Results go into caller-owned buffers and out-parameters; this library never allocates
 *     memory the caller must free, and keeps no global state.
 *   - Calls may block on the disk; Python runs them on worker threads with the GIL released.
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
 * Room for the asynchronous engines (a later issue): io_uring and Linux AIO engines will be
 * added beside, not instead of, the calls below. The plan is an opaque handle, declared
 * here as "struct pollen_engine;", with functions such as
 *     pollen_engine_open(kind, queue_depth, &engine, &eventfd)   (eventfd: readable when
 *                                                                 completions are ready)
 *     pollen_engine_submit(engine, op, fd, buf, len, offset, tag)
 *     pollen_engine_reap(engine, completions, max, &count)       (tag, status, bytes)
 *     pollen_engine_close(engine)
 * keeping the status/out-parameter convention. The synchronous calls below keep their
 * signatures and meaning, so the plain pread engine stays the fallback everywhere.
 */
#ifndef POLLEN_IO_H
#define POLLEN_IO_H

#include <stddef.h>
#include <stdint.h>

#define POLLEN_IO_VERSION 1

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

#endif /* POLLEN_IO_H */

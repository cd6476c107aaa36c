/*
 * pollen_io — synchronous chunk I/O. See pollen_io.h for the conventions: every function
 * returns 0 or a positive errno and writes its results into caller-owned memory.
 */
#define _GNU_SOURCE /* O_DIRECT */
#define _FILE_OFFSET_BITS 64

#include "pollen_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

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

"""A FUSE filesystem that forgets everything not fsynced when its process dies: a page
cache that a power cut takes with it, for testing what `--flush-policy always` promises.

    python3 syncfs.py BACKING_DIR MOUNTPOINT      # foreground; SIGKILL = power cut

A mirror of BACKING_DIR. Writes and truncations stay in this process's memory (per file:
its content and the byte ranges changed since the last fsync) until the file is fsynced
(fsync or fdatasync), which writes those ranges and the length to the backing file and
fsyncs it. Reads see the unsynced content, as a page cache would. Closing a file does not
make it durable. Kill the process with SIGKILL and what was not fsynced is gone; the next
mount over the same BACKING_DIR shows only what was.

Simplification: namespace operations (create, mkdir, rename, unlink) are durable at once,
as on a journalling filesystem that commits them before later data; the data of a new file
is not (it is empty after a power cut unless fsynced). Single-threaded (requests are
served one at a time).
"""

from __future__ import annotations

import errno
import os
import sys

import mfusepy as fuse


class Dirty:
    """A file's unsynced content: all of it, and the ranges changed since the last sync."""

    def __init__(self, content: bytes):
        self.content = bytearray(content)
        self.ranges: list[tuple[int, int]] = []
        # The shortest the file was since the last sync: the backing file is cut there
        # first, so bytes beyond it never survive a shrink-then-grow.
        self.min_len = len(self.content)

    def write(self, data: bytes, offset: int) -> None:
        end = offset + len(data)
        if end > len(self.content):
            self.content.extend(b"\0" * (end - len(self.content)))
        self.content[offset:end] = data
        self.ranges.append((offset, end))

    def truncate(self, length: int) -> None:
        if length < len(self.content):
            del self.content[length:]
        else:
            self.content.extend(b"\0" * (length - len(self.content)))
        self.min_len = min(self.min_len, length)


class SyncFs(fuse.Operations):
    use_ns = True  # utimens gets integer nanoseconds
    def __init__(self, backing: str):
        self.backing = os.path.realpath(backing)
        self.dirty: dict[str, Dirty] = {}

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _load(self, path: str) -> Dirty:
        d = self.dirty.get(path)
        if d is None:
            with open(self._real(path), "rb") as f:
                d = Dirty(f.read())
            self.dirty[path] = d
        return d

    # ---- namespace -------------------------------------------------------------------
    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._real(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno) from None
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid",
                                             "st_size", "st_atime", "st_mtime", "st_ctime")}
        if path in self.dirty:
            attrs["st_size"] = len(self.dirty[path].content)
        return attrs

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._real(path))]

    def mkdir(self, path, mode):
        os.mkdir(self._real(path), mode)

    def rmdir(self, path):
        os.rmdir(self._real(path))

    def unlink(self, path):
        os.unlink(self._real(path))
        self.dirty.pop(path, None)

    def rename(self, old, new):
        os.rename(self._real(old), self._real(new))
        self.dirty.pop(new, None)
        if old in self.dirty:
            self.dirty[new] = self.dirty.pop(old)

    def link(self, target, source):
        os.link(self._real(source), self._real(target))

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)

    def utimens(self, path, times=None):
        os.utime(self._real(path), ns=times)

    def access(self, path, amode):
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)

    def statfs(self, path):
        st = os.statvfs(self._real(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    # ---- data --------------------------------------------------------------------------
    def create(self, path, mode, fi=None):
        fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(fd)
        self.dirty[path] = Dirty(b"")
        return 0

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self._load(path).truncate(0)
        return 0

    def read(self, path, size, offset, fh):
        d = self.dirty.get(path)
        if d is not None:
            return bytes(d.content[offset:offset + size])
        with open(self._real(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write(self, path, data, offset, fh):
        self._load(path).write(bytes(data), offset)
        return len(data)

    def truncate(self, path, length, fh=None):
        self._load(path).truncate(length)

    def fallocate(self, path, mode, offset, length, fh):
        # FALLOC_FL_KEEP_SIZE (1) preallocation changes nothing visible; others grow it.
        if not mode & 1 and offset + length > len(self._load(path).content):
            self._load(path).truncate(offset + length)
        return 0

    def fsync(self, path, datasync, fh):
        d = self.dirty.pop(path, None)
        if d is None:
            return 0
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            if d.min_len < os.fstat(fd).st_size:
                os.ftruncate(fd, d.min_len)
            for start, end in d.ranges:
                os.pwrite(fd, bytes(d.content[start:end]), start)
            os.ftruncate(fd, len(d.content))
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path, fh):
        return 0  # close() is not a sync

    def release(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fuse.FUSE(SyncFs(backing), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
